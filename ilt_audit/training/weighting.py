"""How per-instance task losses ``l`` (B, K) become one training loss: ILT and the baselines.

A weighting is looked up by name in :data:`WEIGHTINGS`. ``ilt`` (the default) is the paper's
method; ``equal``, ``uncertainty`` (Kendall et al.), ``dwa`` (Liu et al.), ``gls`` (geometric
loss strategy) and ``mao`` (multi-adaptive optimization, Hervella et al.) are the baselines it is
compared with.

Most weightings turn ``l`` into one scalar and the loop calls ``backward`` on it. A weighting whose
``own_gradients`` is True (``mao``) writes the network's gradients itself instead
(:meth:`Weighting.backward`), from one gradient per task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ilt_audit.errors import OptionError
from ilt_audit.training.ilt_params import InstanceParams


def nll(l: torch.Tensor, log_sigma2: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The paper's per-instance loss: eq. (2) for scale 1/2, eq. (4) for scale 1.

    L = scale · l · exp(−log σ²) + log σ². Shapes broadcast: l (B, K), log σ² (B, K) or (K,).
    """
    return scale * l * torch.exp(-log_sigma2) + log_sigma2


class Weighting(nn.Module):
    """Base class. ``forward`` turns (B, K) per-instance losses into the scalar to minimise."""

    name = "base"
    own_gradients = False  # True: backward() writes the gradients, the loop does not

    def __init__(self, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale)  # (K,) 1 for classification-like, 1/2 for regression

    def forward(self, l: torch.Tensor, index: torch.Tensor) -> torch.Tensor:  # noqa: ARG002
        raise NotImplementedError

    def end_epoch(self, losses: torch.Tensor, seen: torch.Tensor) -> None:
        """Called after each epoch with every instance's unweighted loss of that epoch (N, K)
        and which instances the epoch trained, (N,) bool (ILT updates its parameters here)."""

    def backward(
        self,
        l: torch.Tensor,
        parameters: Sequence[torch.Tensor],
        average: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """Write ``parameters``' gradients from the (B, K) losses; only where ``own_gradients``.

        ``average`` averages a tensor over the ranks in place (under torchrun; None alone).
        """
        raise NotImplementedError


class EqualWeighting(Weighting):
    """Every task weighs 1: the mean over the batch of the sum over tasks."""

    name = "equal"

    def forward(self, l: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return l.sum(dim=1).mean()


class ILTWeighting(Weighting):
    """Instance-level task parameters: one ``log σ²`` per instance per task (paper eq. 1, 6).

    The parameters are not trained by autograd: their gradient has a closed form,
    ``∂L_i/∂s_i = 1 − scale·l·e^(−s)`` (eq. 2 and 4 differentiated), and the sparse update
    (:class:`ilt_audit.training.ilt_params.InstanceParams`) touches only the rows of instances trained.
    Every instance is in exactly one batch of an epoch, so its row is updated once per epoch and
    read by no other batch of that epoch: updating it right after its batch or at the end of the
    epoch gives the same values. The update is applied at the end of the epoch, for every row at
    once, from the losses the loop records anyway.

    The parameters are constant within an epoch, so each instance's weight ``scale·e^(−s)`` is
    too: it is computed once for the whole table (``weights``, (N, K), recomputed whenever the
    table has changed, however it was written) and a batch costs one gather and one dot product.
    ``forward`` returns ``Σ_k scale·l·e^(−s)`` averaged over the batch: eq. (1) without its
    ``+ log σ²`` term, which is constant for the network and would cost a second gather.
    """

    name = "ilt"

    def __init__(self, scale: torch.Tensor, params: InstanceParams) -> None:
        super().__init__(scale)
        self.params = params
        self.register_buffer("log_scale", torch.log(scale))  # (K,)
        self._weights = torch.empty(0)
        self._weights_of: tuple[int, int] | None = None  # (id, version) of the table they match

    @property
    def weights(self) -> torch.Tensor:
        """Every instance's weight ``scale·e^(−s)``, (N, K), on the table's device.

        Kept in step with the table through its identity and PyTorch's version counter, which
        every in-place write (the update, ``load_state_dict``, an indexed assignment) advances.
        """
        table = self.params.log_sigma2
        key = (id(table), table._version)
        if key != self._weights_of:
            self._weights = torch.exp(self.log_scale.to(table.device) - table)
            self._weights_of = key
        return self._weights

    def forward(self, l: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        weights = self.weights
        if index.device != weights.device:
            index = index.to(weights.device)
        weight = torch.index_select(weights, 0, index)  # (B, K), no gradient
        if weight.device != l.device:
            weight = weight.to(l.device, non_blocking=True)
        return torch.dot(l.float().reshape(-1), weight.reshape(-1)) / len(index)

    @torch.no_grad()
    def end_epoch(self, losses: torch.Tensor, seen: torch.Tensor) -> None:
        rows = torch.nonzero(seen.to(self.params.device)).squeeze(1)  # (R,)
        l = torch.index_select(losses.to(self.params.device), 0, rows)  # (R, K)
        weight = torch.index_select(self.weights, 0, rows)  # scale·e^(−s) of the epoch
        # The instance's own gradient 1 − scale·l/σ², not the batch mean's 1/B share of it, so
        # that the learning rate does not depend on the batch size.
        self.params.step(rows, 1.0 - l * weight)


class UncertaintyWeighting(Weighting):
    """Kendall et al.: one learnable ``log σ²`` per task, shared by all instances."""

    name = "uncertainty"

    def __init__(self, scale: torch.Tensor) -> None:
        super().__init__(scale)
        self.log_sigma2 = nn.Parameter(torch.zeros(len(scale)))  # (K,)

    def forward(self, l: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return nll(l, self.log_sigma2, self.scale).sum(dim=1).mean()


class DWAWeighting(Weighting):
    """Dynamic weight averaging (Liu et al.): w_k = K·softmax(r_k / T), r_k = L_k(t−1) / L_k(t−2)."""

    name = "dwa"

    def __init__(self, scale: torch.Tensor, temperature: float = 2.0) -> None:
        super().__init__(scale)
        self.temperature = temperature
        self.register_buffer(
            "history", torch.zeros(2, len(scale))
        )  # (2, K): last two epochs' losses
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))  # epochs recorded, up to 2
        self.register_buffer("weights", torch.ones(len(scale)))  # (K,)

    def forward(self, l: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return (l * self.weights).sum(dim=1).mean()

    def end_epoch(self, losses: torch.Tensor, seen: torch.Tensor) -> None:
        mean_losses = losses[seen.to(losses.device)].mean(dim=0)  # (K,)
        self.history = torch.stack([self.history[1], mean_losses.to(self.history)])
        self.seen = (self.seen + 1).clamp(max=2)
        if int(self.seen) == 2:
            ratio = self.history[1] / self.history[0].clamp(min=1e-12)  # (K,)
            k = len(ratio)
            self.weights = k * torch.softmax(ratio / self.temperature, dim=0)


class GLSWeighting(Weighting):
    """Geometric loss strategy: the geometric mean of the batch's mean task losses."""

    name = "gls"

    def forward(self, l: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        task_means = l.mean(dim=0).clamp(min=1e-12)  # (K,)
        return torch.exp(torch.log(task_means).mean())


class MAOWeighting(Weighting):
    """Multi-adaptive optimization: each task's gradient scaled per parameter by its own running
    second moment, then the tasks summed.

    Á. S. Hervella, J. Rouco, J. Novo, M. Ortega, "Multi-Adaptive Optimization for multi-task
    learning with deep neural networks", Neural Networks 170 (2024) 254–265,
    doi:10.1016/j.neunet.2023.11.038. The paper's equations were not available to us; this
    follows its abstract ("dynamically adjusts the contribution of each task to the training of
    each individual parameter") with Adam's second-moment estimate kept per task (Kingma & Ba,
    ICLR 2015, Algorithm 1: ``v_t`` and its bias correction ``v̂_t``):

        g_k = ∂L_k/∂θ,  L_k = mean over the batch of l_ik                  (one backward per task)
        v_k ← β·v_k + (1 − β)·g_k²,  v̂_k = v_k / (1 − β^t)                 (per task, per parameter)
        d = Σ_k g_k / (√v̂_k + ε)                                          (the network's gradient)

    Every task then moves each parameter by about as much as every other task, whatever the
    scale of its loss. ``d`` is handed to the network's optimizer (AdamW, the gradient clip)
    like any weighting's gradient. Under torchrun each task's gradient is averaged over the ranks
    before the moments see it (one all-reduce of the (K, P) gradients a step), so every rank holds
    the same moments, as a single process would.
    """

    name = "mao"
    own_gradients = True
    beta = 0.999  # decay of the running second moment (Adam's β2)
    eps = 1e-8
    v: torch.Tensor
    step: torch.Tensor

    def __init__(self, scale: torch.Tensor, parameters: int) -> None:
        super().__init__(scale)
        self.register_buffer("v", torch.zeros(len(scale), parameters))  # (K, P) second moments
        # t, the steps taken, for the bias correction
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self, l: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return l.sum(dim=1).mean()  # what the loop reports and checks; not differentiated

    def task_gradients(self, l: torch.Tensor, parameters: Sequence[torch.Tensor]) -> torch.Tensor:
        """Each task's gradient ``∂L_k/∂θ`` over all ``parameters`` flattened: (K, P)."""
        k = l.shape[1]
        rows = []
        for task in range(k):
            grads = torch.autograd.grad(
                l[:, task].mean(), parameters, retain_graph=task < k - 1, allow_unused=True
            )
            rows.append(
                torch.cat(
                    [
                        (torch.zeros_like(p) if g is None else g).reshape(-1)
                        for p, g in zip(parameters, grads, strict=True)
                    ]
                )
            )
        return torch.stack(rows)  # (K, P)

    @torch.no_grad()
    def combine(self, g: torch.Tensor) -> torch.Tensor:
        """Update the moments with the (K, P) task gradients; return the gradient ``d``, (P,)."""
        self.step += 1
        self.v.mul_(self.beta).addcmul_(g, g, value=1 - self.beta)
        v_hat = self.v / (1 - self.beta ** int(self.step))
        return (g / (v_hat.sqrt_() + self.eps)).sum(dim=0)

    def backward(
        self,
        l: torch.Tensor,
        parameters: Sequence[torch.Tensor],
        average: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        g = self.task_gradients(l.float(), parameters)  # (K, P)
        if average is not None:
            average(g)
        combined = self.combine(g)  # (P,)
        offset = 0
        for p in parameters:
            p.grad = combined[offset : offset + p.numel()].view_as(p).to(p.dtype)
            offset += p.numel()


WEIGHTINGS: dict[str, type[Weighting]] = {
    w.name: w
    for w in (
        ILTWeighting,
        EqualWeighting,
        UncertaintyWeighting,
        DWAWeighting,
        GLSWeighting,
        MAOWeighting,
    )
}


def check_weighting(name: str) -> str:
    if name not in WEIGHTINGS:
        raise OptionError(f"unknown weighting {name!r}; choose one of {', '.join(WEIGHTINGS)}")
    return name
