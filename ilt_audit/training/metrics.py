"""Model quality per task on held-out rows: accuracy, mIoU, micro F1, mean absolute error.

Multi-label tasks report the micro-averaged F1 of the tags: every (instance, tag) pair counts
once, a tag is predicted where its probability is above 0.5, and F1 = 2 TP / (2 TP + FP + FN)
(NaN when the rows have no tag and none is predicted).

Regression and dense-regression errors are reported in the label's own units (the normalisation
applied for training is undone); a map's pixels without a target (the card's ``invalid``) are
not counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

import torch
from torch import nn

from ilt_audit.dataset.card import TaskSpec
from ilt_audit.dataset.loader import Dataset, to_device
from ilt_audit.training.losses import IGNORE


class _Evaluable(Protocol):
    data: Dataset
    model: nn.Module
    device: torch.device

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]: ...


def _unscale(data: Dataset, task: TaskSpec, y: torch.Tensor) -> torch.Tensor:
    mean, std = data.norm.target(task.name)
    return y * std.to(y) + mean.to(y)


def _accuracy(
    task: TaskSpec, data: Dataset, out: torch.Tensor, y: torch.Tensor
) -> dict[str, float]:
    return {"correct": float((out.argmax(dim=1) == y).sum()), "count": float(len(y))}


def _tag_counts(
    task: TaskSpec, data: Dataset, out: torch.Tensor, y: torch.Tensor
) -> dict[str, float]:
    predicted, given = out > 0, y > 0.5  # (B, C) each: a logit above 0 is a probability above 0.5
    return {
        "tp": float((predicted & given).sum()),
        "fp": float((predicted & ~given).sum()),
        "fn": float((~predicted & given).sum()),
    }


def _abs_error(
    task: TaskSpec, data: Dataset, out: torch.Tensor, y: torch.Tensor
) -> dict[str, float]:
    if task.type == "dense-regression":
        out = out[:, 0]
    error = (_unscale(data, task, out) - _unscale(data, task, y)).abs()
    if task.invalid is not None:  # a NaN target is a pixel without one: not counted
        error = error[~error.isnan()]
    return {"abs_error": float(error.sum()), "count": float(error.numel())}


def _confusion(task: TaskSpec, data: Dataset, out: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    ignore = task.ignore_index if task.ignore_index is not None else IGNORE
    valid = y != ignore
    pred, true = out.argmax(dim=1)[valid], y[valid]
    c = task.class_count
    counts = torch.bincount(true * c + pred, minlength=c * c).reshape(c, c)  # (C true, C pred)
    return {"confusion": counts.cpu()}


_PARTS: dict[str, Callable[[TaskSpec, Dataset, torch.Tensor, torch.Tensor], dict[str, Any]]] = {
    "classification": _accuracy,
    "regression": _abs_error,
    "segmentation": _confusion,
    "dense-regression": _abs_error,
    "multi-label": _tag_counts,
}


def _finish(task: TaskSpec, totals: dict[str, Any]) -> dict[str, float]:
    if task.type == "classification":
        return {"accuracy": totals["correct"] / totals["count"]}
    if task.type == "multi-label":
        counted = 2 * totals["tp"] + totals["fp"] + totals["fn"]
        return {"micro_f1": 2 * totals["tp"] / counted if counted else float("nan")}
    if task.type == "segmentation":
        confusion = totals["confusion"].double()
        union = confusion.sum(0) + confusion.sum(1) - confusion.diag()
        present = union > 0
        iou = confusion.diag()[present] / union[present]
        return {"miou": float(iou.mean()) if len(iou) else float("nan")}
    return {"mae": totals["abs_error"] / totals["count"]}


@torch.no_grad()
def task_metrics(run: _Evaluable, loader: Iterable[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per task, the quality of the model's predictions on the rows ``loader`` reads."""
    run.model.eval()
    tasks = run.data.card.tasks
    totals: dict[str, dict[str, Any]] = {}
    for batch in loader:
        x, targets = to_device(batch, tasks, run.device)
        outputs = run.forward(x)
        for task in tasks:
            part = _PARTS[task.type](task, run.data, outputs[task.name].float(), targets[task.name])
            acc = totals.setdefault(task.name, {})
            for key, value in part.items():
                acc[key] = acc[key] + value if key in acc else value
    run.model.train()
    return {task.name: _finish(task, totals[task.name]) for task in tasks}
