"""Evidence: how the network's own output compares with each label, per instance, task and epoch.

``log σ²`` says how hard a label is to fit. An omitted object, a consistent confusion or a small
systematic offset is *easy* to fit, so the run also records what the network itself predicts for
each instance next to its label. ILT's weighting is what makes that view worth having: the
labels it down-weights are the ones the network does not learn, so its prediction for them stays
its own.

Every signal is computed on the device from the outputs the training step already has, for a
whole batch at once (no per-instance Python), and written as a column of the trajectory files
beside ``log_sigma2`` and ``loss``. Which signals a task type has is one table,
:data:`SIGNALS`; a column a task type lacks is NaN.

- classification: ``margin``, the given class's logit minus the largest other (AUM's margin);
  ``p_label``, the probability the network gives the given class; ``predicted``, the class it
  prefers (its index in the card's order);
- segmentation (class 0 is background): ``missing``, the share of labelled pixels the network
  confidently (p > 0.5) calls an object class where the label has background or another class;
  ``extra``, the share the label calls an object where the network confidently says background
  or another class; ``iou``, the IoU of the predicted and the labelled objects;
- multi-label (a probability per tag, the sigmoid of its logit): ``missing_tag``, the largest
  probability among the tags the label lacks (a tag the network is sure of and the label leaves
  out; 0 when the label has every tag) and ``missing_tag_index``, which tag that is (its index
  in the card's order, -1 for none); ``extra_tag``, 1 − the smallest probability among the tags
  the label has (a tag the label gives that the network denies; 0 when the label has none) and
  ``extra_tag_index``;
- regression: ``residual``, the root mean square of prediction − label over the task's columns
  in its z units; ``log_ratio``, the mean over the columns of log(|prediction| / |label|) in the
  data's own units (a unit error's signature);
- dense regression: ``residual``, the median over the map's pixels of prediction − label in z
  units (signed: a constant offset is testable from thousands of pixels); ``log_ratio``, the
  median over the pixels of log(|prediction| / |label|); ``holes``, the share of pixels where one
  of label and prediction is about 0 and the other is not. Pixels without a target (the card's
  ``invalid``, NaN in a batch) are left out of each.

Example:
    >>> from ilt_audit.run.evidence import SIGNALS
    >>> [s.column for s in SIGNALS["segmentation"]]
    ['missing', 'extra', 'iou']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ilt_audit.dataset.card import TaskSpec

if TYPE_CHECKING:  # torch is imported where a batch is computed: readers of COLUMNS need none
    import torch

IGNORE = -100  # torch's default ignore index (ilt_audit.training.losses uses the same)
CONFIDENT = 0.5  # a pixel is the network's when its class has more than this probability
# A dense value counts as "about zero" below this share of the task's typical magnitude
# (|mean| + std of its labels): what a hole (a 0 written over the map) looks like.
ZERO_SHARE = 0.1


@dataclass(frozen=True)
class Scale:
    """A regression task's label statistics, to read outputs in the data's own units."""

    mean: torch.Tensor  # (D,) per column, or (1,) for a map
    std: torch.Tensor

    @property
    def typical(self) -> torch.Tensor:
        """The typical magnitude of a label: |mean| + std, (D,)."""
        return self.mean.abs() + self.std


SignalFn = Callable[..., Any]  # (output, target, task, scale) -> (B,) tensor


@dataclass(frozen=True)
class Signal:
    """One column of evidence: its name and how to compute it for a batch, (B,) float32."""

    column: str
    compute: SignalFn


# --- classification: logits (B, C), target (B,) ----------------------------------------------


def margin(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The margin of each instance: the logit of its assigned class minus the largest other logit.

    Pleiss et al., "Identifying Mislabeled Data using the Area Under the Margin Ranking"
    (NeurIPS 2020), eq. (1). Negative when another class scores higher. logits (B, C), target (B,)
    → (B,); with a single class there is no other logit, and the margin is +inf.
    """
    assigned = logits.gather(1, target[:, None]).squeeze(1)  # (B,)
    others = logits.scatter(1, target[:, None], float("-inf"))  # (B, C), the assigned class out
    return assigned - others.max(dim=1).values


def _margin(out: torch.Tensor, target: torch.Tensor, task: TaskSpec, scale: Scale | None):
    return margin(out, target)


def _p_label(out: torch.Tensor, target: torch.Tensor, task: TaskSpec, scale: Scale | None):
    return out.softmax(dim=1).gather(1, target[:, None]).squeeze(1)  # (B,)


def _predicted(out: torch.Tensor, target: torch.Tensor, task: TaskSpec, scale: Scale | None):
    return out.argmax(dim=1).float()  # (B,)


# --- segmentation: logits (B, C, H, W), target (B, H, W) -------------------------------------


def _pixels(out: torch.Tensor, target: torch.Tensor, task: TaskSpec):
    """The network's confident class per pixel (-1 where it is not confident), the labelled
    pixels, and their count per instance."""
    ignore = task.ignore_index if task.ignore_index is not None else IGNORE
    confidence, predicted = out.softmax(dim=1).max(dim=1)  # (B, H, W) each
    predicted = predicted.masked_fill(confidence <= CONFIDENT, -1)
    valid = target != ignore  # (B, H, W)
    count = valid.flatten(1).sum(dim=1).clamp(min=1)  # (B,)
    return predicted, valid, count


def _share(pixels: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return pixels.flatten(1).sum(dim=1) / count  # (B,)


def _missing(out: torch.Tensor, target: torch.Tensor, task: TaskSpec, scale: Scale | None):
    predicted, valid, count = _pixels(out, target, task)
    return _share(valid & (predicted > 0) & (predicted != target), count)


def _extra(out: torch.Tensor, target: torch.Tensor, task: TaskSpec, scale: Scale | None):
    predicted, valid, count = _pixels(out, target, task)
    return _share(valid & (target != 0) & (predicted >= 0) & (predicted != target), count)


def _iou(out: torch.Tensor, target: torch.Tensor, task: TaskSpec, scale: Scale | None):
    ignore = task.ignore_index if task.ignore_index is not None else IGNORE
    predicted = out.argmax(dim=1)  # (B, H, W)
    valid = target != ignore
    objects = valid & (target != 0)
    both = (objects & (predicted == target)).flatten(1).sum(dim=1)
    either = (valid & ((predicted != 0) | (target != 0))).flatten(1).sum(dim=1)
    return both.to(out.dtype).div(either.clamp(min=1)).masked_fill(either == 0, 1.0)


# --- multi-label: logits (B, C), targets (B, C) multi-hot -------------------------------------


def _absent_probabilities(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Each tag's probability where the label lacks it, 0 where it has it: (B, C)."""
    return out.sigmoid().masked_fill(target > 0.5, 0.0)


def _present_probabilities(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Each tag's probability where the label has it, 1 where it lacks it: (B, C)."""
    return out.sigmoid().masked_fill(target < 0.5, 1.0)


def _missing_tag(out: torch.Tensor, target: torch.Tensor, task: TaskSpec, scale: Scale | None):
    return _absent_probabilities(out, target).max(dim=1).values  # (B,)


def _missing_tag_index(
    out: torch.Tensor, target: torch.Tensor, task: TaskSpec, scale: Scale | None
):
    index = _absent_probabilities(out, target).argmax(dim=1).float()  # (B,)
    return index.masked_fill((target > 0.5).all(dim=1), -1.0)


def _extra_tag(out: torch.Tensor, target: torch.Tensor, task: TaskSpec, scale: Scale | None):
    return 1.0 - _present_probabilities(out, target).min(dim=1).values  # (B,)


def _extra_tag_index(out: torch.Tensor, target: torch.Tensor, task: TaskSpec, scale: Scale | None):
    index = _present_probabilities(out, target).argmin(dim=1).float()  # (B,)
    return index.masked_fill((target < 0.5).all(dim=1), -1.0)


# --- regression: outputs (B, D), targets (B, D) in z units -----------------------------------


def _in_units(values: torch.Tensor, scale: Scale) -> torch.Tensor:
    return values * scale.std + scale.mean


def _log_ratio(out: torch.Tensor, target: torch.Tensor, scale: Scale) -> torch.Tensor:
    """log(|prediction| / |label|) per value, in the data's own units: a unit error's signature."""
    tiny = 1e-3 * scale.typical
    return ((_in_units(out, scale).abs() + tiny) / (_in_units(target, scale).abs() + tiny)).log()


def _residual(out: torch.Tensor, target: torch.Tensor, task: TaskSpec, scale: Scale | None):
    return (out - target).pow(2).mean(dim=1).sqrt()  # (B,)


def _regression_log_ratio(
    out: torch.Tensor, target: torch.Tensor, task: TaskSpec, scale: Scale | None
):
    assert scale is not None
    return _log_ratio(out, target, scale).mean(dim=1)  # (B,)


# --- dense regression: outputs (B, 1, H, W), targets (B, H, W) in z units --------------------
# A NaN target is a pixel without one (the card's ``invalid``): the signals read the others, and
# a map with none has NaN signals (no evidence), as a column a task type lacks.


def _pixel_median(values: torch.Tensor, task: TaskSpec) -> torch.Tensor:
    """The median over each map's pixels, (B, H, W) → (B,); NaN pixels left out (invalid)."""
    flat = values.flatten(1)
    return (flat.median(dim=1) if task.invalid is None else flat.nanmedian(dim=1)).values


def _dense_residual(out: torch.Tensor, target: torch.Tensor, task: TaskSpec, scale: Scale | None):
    return _pixel_median(out[:, 0] - target, task)  # (B,)


def _dense_log_ratio(out: torch.Tensor, target: torch.Tensor, task: TaskSpec, scale: Scale | None):
    assert scale is not None
    return _pixel_median(_log_ratio(out[:, 0], target, scale), task)  # (B,)


def _holes(out: torch.Tensor, target: torch.Tensor, task: TaskSpec, scale: Scale | None):
    assert scale is not None
    zero = ZERO_SHARE * scale.typical
    label_zero = _in_units(target, scale).abs() < zero  # (B, H, W)
    predicted_zero = _in_units(out[:, 0], scale).abs() < zero
    holes = (label_zero != predicted_zero).float()  # (B, H, W)
    if task.invalid is not None:
        holes = holes.masked_fill(target.isnan(), float("nan"))
    return holes.flatten(1).nanmean(dim=1)  # (B,); with no NaN the plain mean


SIGNALS: dict[str, tuple[Signal, ...]] = {
    "classification": (
        Signal("margin", _margin),
        Signal("p_label", _p_label),
        Signal("predicted", _predicted),
    ),
    "segmentation": (
        Signal("missing", _missing),
        Signal("extra", _extra),
        Signal("iou", _iou),
    ),
    "regression": (
        Signal("residual", _residual),
        Signal("log_ratio", _regression_log_ratio),
    ),
    "dense-regression": (
        Signal("residual", _dense_residual),
        Signal("log_ratio", _dense_log_ratio),
        Signal("holes", _holes),
    ),
    "multi-label": (
        Signal("missing_tag", _missing_tag),
        Signal("missing_tag_index", _missing_tag_index),
        Signal("extra_tag", _extra_tag),
        Signal("extra_tag_index", _extra_tag_index),
    ),
}
# Every evidence column of the trajectory files, in the order they are stored.
COLUMNS: tuple[str, ...] = tuple(
    dict.fromkeys(signal.column for signals in SIGNALS.values() for signal in signals)
)


@dataclass(frozen=True)
class Slot:
    """One (task, signal) pair of a run: where its values go in the (N, S) table."""

    task: int  # position of the task in the card's order
    signal: Signal


def slots(tasks: tuple[TaskSpec, ...]) -> list[Slot]:
    """The (task, signal) pairs of a card's tasks, task by task in the card's order."""
    return [Slot(k, signal) for k, task in enumerate(tasks) for signal in SIGNALS[task.type]]


def compute(
    tasks: tuple[TaskSpec, ...],
    outputs: dict[str, torch.Tensor],
    targets: dict[str, torch.Tensor],
    scales: dict[str, Scale],
) -> torch.Tensor:
    """Every slot's signal for a batch: (B, S) float32, in the order of :func:`slots`."""
    import torch

    columns = []
    with torch.no_grad():
        for task in tasks:
            out = outputs[task.name].detach().float()
            for signal in SIGNALS[task.type]:
                value = signal.compute(out, targets[task.name], task, scales.get(task.name))
                columns.append(value.float())
        return torch.stack(columns, dim=1)
