"""Instance-level task parameters ``log σ²`` (N, K) and their sparse SGD-with-momentum optimizer.

Paper sections 3.1 and 4.1: initialised to 0, clamped to [-4, 4] after every update, updated only
for the rows of the instances in the current batch; the momentum of every other row is neither
applied nor decayed. The parameters are not part of the model and can stay on the CPU while only
a batch's rows travel to the accelerator (section 4.4).
"""

from __future__ import annotations

import torch

CLAMP = 4.0  # log σ² is kept within [-CLAMP, CLAMP] (paper 4.1)
ON_CPU_ABOVE = 10_000_000  # keep the table on the CPU when N·K exceeds this many entries


class InstanceParams:
    """A table of ``log σ²`` with a per-row momentum buffer.

    Example:
        >>> params = InstanceParams(5, 2, lr=0.1)
        >>> rows = torch.tensor([0, 3])
        >>> params.step(rows, torch.ones(2, 2))
        >>> params.log_sigma2[1].tolist()  # untouched: row 1 was not in the batch
        [0.0, 0.0]
    """

    def __init__(
        self,
        n: int,
        k: int,
        *,
        lr: float,
        momentum: float = 0.9,
        grad_clip: float | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.lr = lr
        self.momentum = momentum
        self.grad_clip = grad_clip
        self.log_sigma2 = torch.zeros(n, k, device=device)  # (N, K)
        self.momentum_buffer = torch.zeros(n, k, device=device)  # (N, K)

    @property
    def device(self) -> torch.device:
        return self.log_sigma2.device

    @torch.no_grad()
    def step(self, index: torch.Tensor, grad: torch.Tensor) -> None:
        """Sparse SGD with momentum on the rows ``index`` only, given their gradient (B, K).

        buf ← μ·buf + g;  s ← clamp(s − lr·buf, −4, 4). Rows outside ``index`` keep their value
        and their momentum.

        Two guards, both off in the paper's plain form (``grad_clip=None``): ``g`` is clipped to
        [−grad_clip, grad_clip] (``∂L/∂s = 1 − l·e^(−s)`` is at most 1 but unbounded below, so
        one loss spike of a well-fit instance would throw its ``s`` to the clamp), and when
        ``grad_clip`` is set the momentum of an entry that hits the clamp is reset, so that it
        does not keep pushing against the bound for many epochs after the spike.

        The step is written as ``index_select`` / ``index_copy_`` on the rows it moves: it
        reads and writes each of them once.
        """
        if grad.device != self.device:  # the table lives on the CPU, the batch on the GPU
            index, grad = index.to(self.device), grad.to(self.device)
        elif index.device != self.device:
            index = index.to(self.device)
        if self.grad_clip is not None:
            grad = grad.clamp(-self.grad_clip, self.grad_clip)
        buf = torch.index_select(self.momentum_buffer, 0, index).mul_(self.momentum).add_(grad)
        current = torch.index_select(self.log_sigma2, 0, index)
        moved = current.sub(buf, alpha=self.lr)  # (B, K)
        if self.grad_clip is not None:
            buf.masked_fill_(moved.abs() > CLAMP, 0.0)
        self.momentum_buffer.index_copy_(0, index, buf)
        self.log_sigma2.index_copy_(0, index, moved.clamp_(-CLAMP, CLAMP))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"log_sigma2": self.log_sigma2.cpu(), "momentum_buffer": self.momentum_buffer.cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.log_sigma2.copy_(state["log_sigma2"])
        self.momentum_buffer.copy_(state["momentum_buffer"])


def storage_device(n: int, k: int, compute: torch.device) -> torch.device:
    """Where the table lives: on the compute device while small, on the CPU when N·K is large."""
    return torch.device("cpu") if n * k > ON_CPU_ABOVE else compute
