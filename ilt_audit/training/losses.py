"""Per-instance, unweighted task losses ``l_ik``: one function per task type, in one table.

Every loss is returned per instance, shape (B,), so that a weighting can scale each instance's
loss on its own (which ILT needs). Which likelihood a task type follows (paper eq. 2 or eq. 4) is
in :data:`LIKELIHOOD`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ilt_audit.dataset.card import TaskSpec

IGNORE = -100  # torch's default ignore index, used when the card sets none


def _classification(output: torch.Tensor, target: torch.Tensor, task: TaskSpec) -> torch.Tensor:
    return F.cross_entropy(output, target, reduction="none")  # l_cls: (B,)


def _multi_label(output: torch.Tensor, target: torch.Tensor, task: TaskSpec) -> torch.Tensor:
    # l_cls of a tag set: the binary cross-entropy of each tag, averaged over the C tags: (B,)
    return F.binary_cross_entropy_with_logits(output, target, reduction="none").mean(dim=1)


def _regression(output: torch.Tensor, target: torch.Tensor, task: TaskSpec) -> torch.Tensor:
    return (output - target).pow(2).sum(dim=1)  # l_reg, squared L2 over the target vector: (B,)


def _segmentation(output: torch.Tensor, target: torch.Tensor, task: TaskSpec) -> torch.Tensor:
    ignore = task.ignore_index if task.ignore_index is not None else IGNORE
    pixel = F.cross_entropy(output, target, ignore_index=ignore, reduction="none")  # (B, H, W)
    valid = (target != ignore).flatten(1).sum(dim=1).clamp(min=1)  # (B,)
    return pixel.flatten(1).sum(dim=1) / valid  # mean over labelled pixels: (B,)


def _dense_regression(output: torch.Tensor, target: torch.Tensor, task: TaskSpec) -> torch.Tensor:
    if task.invalid is None:
        return (output[:, 0] - target).pow(2).flatten(1).mean(dim=1)  # MSE over pixels: (B,)
    # A NaN target is a pixel without one (the card's ``invalid``): the mean over the others.
    # NaN is replaced before the difference, so that no NaN reaches the gradient.
    valid = ~target.isnan()  # (B, H, W)
    error = (output[:, 0] - target.nan_to_num()).pow(2) * valid  # (B, H, W)
    return error.flatten(1).sum(dim=1) / valid.flatten(1).sum(dim=1).clamp(min=1)  # (B,)


InstanceLoss = Callable[[torch.Tensor, torch.Tensor, TaskSpec], torch.Tensor]

INSTANCE_LOSS: dict[str, InstanceLoss] = {
    "classification": _classification,
    "regression": _regression,
    "segmentation": _segmentation,
    "dense-regression": _dense_regression,
    "multi-label": _multi_label,
}

# Which negative log-likelihood a task type follows: "cls" is eq. (4), L = l / σ² + log σ²;
# "reg" is eq. (2), L = l / (2σ²) + log σ².
LIKELIHOOD = {
    "classification": "cls",
    "segmentation": "cls",
    "regression": "reg",
    "dense-regression": "reg",
    "multi-label": "cls",  # a sum of Bernoulli likelihoods, as cross-entropy's categorical one
}


def likelihood_scale(tasks: tuple[TaskSpec, ...]) -> torch.Tensor:
    """The factor in front of ``l / σ²`` per task: 1 for eq. (4), 1/2 for eq. (2). Shape (K,)."""
    return torch.tensor([1.0 if LIKELIHOOD[t.type] == "cls" else 0.5 for t in tasks])


def instance_losses(
    tasks: tuple[TaskSpec, ...], outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Stack every task's per-instance loss into ``l``: (B, K), in the card's task order."""
    return torch.stack(
        [INSTANCE_LOSS[t.type](outputs[t.name], targets[t.name], t) for t in tasks], dim=1
    )
