"""What a person sees of one instance: its input, each task's label and the model's prediction,
as pictures and text, and why it is suspect. The report and the review app show instances
through these.

Pictures are PNG data URIs (no file is served from a path a page names): masks colour-coded one
colour per class, depth maps through a colormap, and where the network and a mask disagree
outlined on the image (:func:`outline_rgb`). Predictions come from the run's checkpoint,
loaded with ``weights_only=True``, for the requested instances only. Why a label is suspect is
one line of text (:func:`why_text`) from the evidence of :func:`ilt_audit.audit.explanation.explain`.

Example:
    >>> found = predict_instances(run, manifest, ["img_0001"])  # doctest: +SKIP
    >>> found["shape"]["img_0001"].name  # doctest: +SKIP
    'circle'
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from PIL import Image

from ilt_audit.audit.calibration import SUSPECT
from ilt_audit.audit.ranking import SCORES
from ilt_audit.dataset.card import TaskSpec
from ilt_audit.dataset.manifest import Manifest
from ilt_audit.errors import CardError, RunDirError
from ilt_audit.run.directory import CHECKPOINT, Run

THUMB = 96  # the longest side of a thumbnail, in pixels (larger inputs are shrunk)
FEATURES_SHOWN = 8  # feature values written out for a features input
# Where the network and a mask disagree, drawn over the image (far from tab10's class colours)
MISSING_COLOUR = (255, 0, 255)  # magenta: an object the network sees and the mask leaves out
EXTRA_COLOUR = (255, 200, 0)  # amber: a mask object the network does not see
OUTLINE_TEXT = {
    "missing": "missing: the network sees an object the mask leaves out",
    "extra": "extra: the mask has an object the network does not see",
}


NO_TAG = "no tag"  # how an empty tag set is shown


class PredictionsUnavailable(Exception):
    """The model's predictions cannot be shown; the message says why, in one sentence."""


@dataclass(frozen=True)
class ClassGuess:
    """The predicted class of a classification task and its probability."""

    name: str
    probability: float

    def __str__(self) -> str:
        return f"{self.name} ({self.probability:.0%})"


@dataclass(frozen=True)
class TagGuess:
    """A multi-label task's prediction: every tag's probability, in the card's tag order."""

    names: tuple[str, ...]
    probabilities: tuple[float, ...]

    @property
    def tags(self) -> list[str]:
        """The tags the network predicts: those above even odds."""
        return [n for n, p in zip(self.names, self.probabilities, strict=True) if p > 0.5]

    def probability(self, tag: str) -> float:
        return self.probabilities[self.names.index(tag)]

    def __str__(self) -> str:
        shown = [
            f"{n} ({p:.0%})" for n, p in zip(self.names, self.probabilities, strict=True) if p > 0.5
        ]
        return ", ".join(shown) or NO_TAG


@dataclass(frozen=True)
class Numbers:
    """Predicted or labelled regression values, in the label's units."""

    columns: tuple[str, ...]
    values: tuple[float, ...]

    def __str__(self) -> str:
        return ", ".join(f"{c}={v:.4g}" for c, v in zip(self.columns, self.values, strict=True))


# --- pictures --------------------------------------------------------------------------------


def png_uri(image: np.ndarray, size: int = THUMB) -> str:
    """An (H, W, 3) or (H, W, 4) uint8 array as a PNG data URI, shrunk so that its longest side
    is at most ``size`` (colours of masks are never blended)."""
    picture = Image.fromarray(image)
    picture.thumbnail(
        (size, size),
        Image.Resampling.LANCZOS if picture.mode == "RGB" else Image.Resampling.NEAREST,
    )
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def class_colours(count: int) -> np.ndarray:
    """One colour per class index: (count, 3) uint8, tab10 repeated."""
    palette = (np.array(colormaps["tab10"].colors) * 255).astype(np.uint8)  # (10, 3)
    return palette[np.arange(count) % len(palette)]


def mask_rgb(mask: np.ndarray, task: TaskSpec) -> np.ndarray:
    """A mask as colours, one per class; unlabelled (ignore) pixels black."""
    palette = class_colours(10)
    rgb = palette[np.mod(mask, len(palette))]
    if task.ignore_index is not None:
        rgb[mask == task.ignore_index] = 0
    return rgb


def mask_rgba(mask: np.ndarray, task: TaskSpec) -> np.ndarray:
    """A mask to lay over its image: class colours, background (class 0) and unlabelled pixels
    transparent."""
    rgba = np.dstack([mask_rgb(mask, task), np.full(mask.shape, 255, np.uint8)])
    rgba[mask == 0, 3] = 0
    if task.ignore_index is not None:
        rgba[mask == task.ignore_index, 3] = 0
    return rgba


def depth_range(depth: np.ndarray) -> tuple[float, float]:
    """The lowest and highest value of a depth label, leaving out its pixels without one (NaN);
    ``(0, 0)`` for a map with none."""
    values = depth[~np.isnan(depth)]
    return (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)


def depth_rgb(depth: np.ndarray, low: float, high: float) -> np.ndarray:
    """A depth map through the viridis colormap, ``low``..``high`` spanning it; pixels without a
    value (NaN) black."""
    scaled = (depth - low) / (high - low) if high > low else np.zeros_like(depth)
    return (colormaps["viridis"](np.clip(scaled, 0, 1))[..., :3] * 255).astype(np.uint8)


def legend(task: TaskSpec) -> list[tuple[str, str]]:
    """A segmentation task's classes with a swatch of their colour each (a tiny PNG: the page's
    policy allows no inline style)."""
    if task.type != "segmentation" or task.classes is None:
        return []
    names = (
        [str(c) for c in range(task.classes)]
        if isinstance(task.classes, int)
        else list(task.classes)
    )
    colours = class_colours(len(names))
    return [
        (n, png_uri(np.full((8, 8, 3), c, np.uint8))) for n, c in zip(names, colours, strict=True)
    ]


def outline_legend() -> list[tuple[str, str]]:
    """The colours of :func:`outline_rgb`, each with a swatch, as :func:`legend` gives them."""
    return [
        (OUTLINE_TEXT[kind], png_uri(np.full((8, 8, 3), colour, np.uint8)))
        for kind, colour in (("missing", MISSING_COLOUR), ("extra", EXTRA_COLOUR))
    ]


def disagreement(
    label: np.ndarray, predicted: np.ndarray, task: TaskSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Where a predicted mask and its label disagree, (H, W) bool each: ``missing``, pixels the
    network gives an object class the label does not; ``extra``, label objects the network
    gives another class or background (as :mod:`ilt_audit.run.evidence` counts them; unlabelled
    pixels neither). A prediction of another size is resized to the label's first."""
    if predicted.shape != label.shape:
        resized = Image.fromarray(predicted.astype(np.int32)).resize(
            label.shape[::-1], Image.Resampling.NEAREST
        )
        predicted = np.asarray(resized)
    valid = (
        label != task.ignore_index if task.ignore_index is not None else np.ones_like(label, bool)
    )
    differ = valid & (predicted != label)
    return differ & (predicted > 0), differ & (label > 0)


def outline_rgb(
    image: np.ndarray, label: np.ndarray, predicted: np.ndarray, task: TaskSpec, size: int = THUMB
) -> np.ndarray:
    """The input, greyed, at ``size`` pixels on its longest side, with the regions of
    :func:`disagreement` tinted and outlined: :data:`MISSING_COLOUR` and :data:`EXTRA_COLOUR`."""
    missing, extra = disagreement(label, predicted, task)
    h, w = label.shape
    shape = (max(1, round(h * size / max(h, w))), max(1, round(w * size / max(h, w))))  # (H, W)
    grey = Image.fromarray(image).convert("L").resize(shape[::-1], Image.Resampling.BILINEAR)
    rgb = np.repeat(40 + 0.6 * np.asarray(grey, np.float64)[..., None], 3, axis=2)  # (H, W, 3)
    width = max(1, round(size / 64))  # the outline, in pixels of the picture
    for region, colour in ((extra, EXTRA_COLOUR), (missing, MISSING_COLOUR)):
        inside = _resized_region(region, shape)
        edge = inside & ~_eroded(inside, width)
        rgb[inside] = 0.55 * rgb[inside] + 0.45 * np.asarray(colour)
        rgb[edge] = colour
    return rgb.round().astype(np.uint8)


def _resized_region(region: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A region at another size: a pixel is in it when any part of it was (no region shrunk away)."""
    grow = shape[0] >= region.shape[0]
    picture = Image.fromarray(region.astype(np.uint8) * 255).resize(
        shape[::-1], Image.Resampling.NEAREST if grow else Image.Resampling.BOX
    )
    return np.asarray(picture) > 0


def _eroded(region: np.ndarray, steps: int) -> np.ndarray:
    """A region shrunk by ``steps`` pixels (4-neighbours); outside the picture counts as outside."""
    inner = region
    for _ in range(steps):
        padded = np.pad(inner, 1)
        inner = (
            padded[1:-1, 1:-1]
            & padded[:-2, 1:-1]
            & padded[2:, 1:-1]
            & padded[1:-1, :-2]
            & padded[1:-1, 2:]
        )
    return inner


# --- reading an instance's files -------------------------------------------------------------


def read_row_file(
    manifest: Manifest, instance_id: str, column: str, read: Callable[[], Any]
) -> Any:
    """A file an instance's row names, read; a file that cannot be (gone, changed, a bomb) is a
    :class:`CardError` naming the manifest, the row id and the column."""
    from ilt_audit.dataset.files import DECODE_ERRORS

    try:
        return read()
    except DECODE_ERRORS as exc:
        raise CardError(
            f"{manifest.card.table_path}: row id {instance_id!r}: column {column!r}: cannot read "
            f"its file: {exc}"
        ) from None


def input_image(manifest: Manifest, row: int) -> np.ndarray:
    """The input image of manifest row ``row`` as (H, W, 3) uint8."""
    from ilt_audit.dataset.files import read_image

    column = manifest.card.input.columns[0]
    image = read_row_file(
        manifest, manifest.ids[row], column, lambda: read_image(manifest.source(column, row))
    )
    return np.ascontiguousarray(image.permute(1, 2, 0).numpy())


def feature_text(manifest: Manifest, row: int) -> str:
    """The first feature values of a features input, as ``name=value`` text."""
    values = manifest.frame.iloc[row]
    shown = ", ".join(f"{c}={values[c]:.4g}" for c in manifest.input_columns[:FEATURES_SHOWN])
    more = len(manifest.input_columns) - FEATURES_SHOWN
    return shown + (f" … (+{more})" if more > 0 else "")


def label_numbers(manifest: Manifest, task: TaskSpec, row: int) -> Numbers:
    """The values of a regression task's row, as the manifest gives them."""
    values = manifest.frame.iloc[row][list(task.columns)]
    return Numbers(task.columns, tuple(float(v) for v in values))


def label_map(manifest: Manifest, task: TaskSpec, row: int) -> np.ndarray:
    """The mask (class indices) or depth map (the label's units, NaN where it has none) of a
    dense task's row."""
    from ilt_audit.dataset.files import read_label

    path = manifest.source(task.column, row)
    return np.asarray(
        read_row_file(manifest, manifest.ids[row], task.column, lambda: read_label(task, path))
    )


# --- predictions -----------------------------------------------------------------------------


class Predictor:
    """A run's network and the data it reads, loaded once: the model's output for any
    instances, per task, in the label's units (a :class:`ClassGuess`, :class:`Numbers`, a mask of
    class indices or a depth map).

    The model is rebuilt as training built it and loaded from ``checkpoint.pt`` with
    ``weights_only=True``; the inputs are normalised with the statistics saved in ``config.json``
    (runs from before 0.2 have none: their data set is scanned again). Raises
    :class:`PredictionsUnavailable` when that is impossible (no checkpoint, the card changed, a
    checkpoint that does not fit).
    """

    def __init__(self, run: Run, manifest: Manifest) -> None:
        if not (run.path / CHECKPOINT).is_file():
            raise PredictionsUnavailable(
                f"No {CHECKPOINT} in the run directory: the model's predictions are not shown."
            )
        if manifest.card.sha256() != run.config["card"].get("sha256"):
            raise PredictionsUnavailable(
                f"The dataset card or its manifest changed since training ({manifest.card.path}): "
                "labels are shown as they are now, and the model's predictions are not shown."
            )
        from ilt_audit.dataset import load_dataset
        from ilt_audit.dataset.files import Normalisation
        from ilt_audit.training.loop import load_model

        saved = run.config.get("normalisation")
        if saved:
            self.data = load_dataset(manifest, norm=Normalisation.from_dict(saved), scan=False)
        else:
            self.data = load_dataset(manifest)
        try:
            self.model = load_model(run.path, self.data)
        except RunDirError as exc:
            reason = re.sub(r"\x1b\[[0-9;]*m", "", str(exc).splitlines()[0])[:200]  # no colours
            raise PredictionsUnavailable(
                f"The model could not be loaded ({reason}); predictions are not shown."
            ) from None
        self.ids = pd.Index(self.data.ids)

    def __call__(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Per task, per instance id, the model's output in the label's units."""
        import torch

        from ilt_audit.training.loop import predict

        wanted = pd.Index(pd.unique(pd.Series(list(ids), dtype=object)))
        rows = torch.from_numpy(self.ids.get_indexer(wanted).astype("int64"))
        outputs = predict(self.model, self.data, rows)
        keys = wanted.tolist()
        return {
            task.name: dict(
                zip(keys, _DECODE[task.type](task, self.data, outputs[task.name]), strict=True)
            )
            for task in self.data.card.tasks
        }


def predict_instances(
    run: Run, manifest: Manifest, ids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """The model's output for some instances, loading the model for them alone
    (:class:`Predictor` keeps it for more)."""
    return Predictor(run, manifest)(ids)


def _unscale(task: TaskSpec, data: Any, y: Any) -> np.ndarray:
    mean, std = data.norm.target(task.name)
    return np.asarray((y * std + mean).numpy())


def _decode_class(task: TaskSpec, data: Any, out: Any) -> list[ClassGuess]:
    probability = out.softmax(dim=1)  # (B, C)
    best = probability.argmax(dim=1)
    names = data.manifest.class_names[task.name]
    return [ClassGuess(names[int(c)], float(p[c])) for c, p in zip(best, probability, strict=True)]


def _decode_tags(task: TaskSpec, data: Any, out: Any) -> list[TagGuess]:
    names = data.manifest.class_names[task.name]
    probability = out.sigmoid().tolist()  # (B, C)
    return [TagGuess(names, tuple(row)) for row in probability]


def _decode_vector(task: TaskSpec, data: Any, out: Any) -> list[Numbers]:
    values = _unscale(task, data, out)  # (B, D)
    return [Numbers(task.columns, tuple(float(v) for v in row)) for row in values]


def _decode_mask(task: TaskSpec, data: Any, out: Any) -> list[np.ndarray]:
    return list(out.argmax(dim=1).numpy())  # (B, H, W) class indices


def _decode_depth(task: TaskSpec, data: Any, out: Any) -> list[np.ndarray]:
    return list(_unscale(task, data, out[:, 0]))  # (B, H, W) in the label's units


_DECODE: dict[str, Callable[[TaskSpec, Any, Any], list[Any]]] = {
    "classification": _decode_class,
    "regression": _decode_vector,
    "segmentation": _decode_mask,
    "dense-regression": _decode_depth,
    "multi-label": _decode_tags,
}


# --- why a label is suspect ------------------------------------------------------------------


def plotted_column(run: Run, score: str) -> str:
    """The trajectory a page draws for a score: the score's column, or the loss for a run
    trained without per-instance ``log σ²``."""
    column = SCORES[score].column
    return "loss" if column == "log_sigma2" and run.weighting != "ilt" else column


def error_rate_text(rate: Mapping[str, float] | None) -> tuple[str, str]:
    """A task's estimated error rate and its 95% interval as text
    (:meth:`ilt_audit.audit.calibration.ErrorRate.to_dict`); an interval of [0, 1] is no estimate.

    Example:
        >>> error_rate_text({"estimate": 0.082, "low": 0.012, "high": 0.152})
        ('8.2%', '1.2%–15.2%')
    """
    if rate is None or rate["high"] - rate["low"] >= 1:
        return "unknown", "–"
    return f"{rate['estimate']:.1%}", f"{rate['low']:.1%}–{rate['high']:.1%}"


def why_text(
    evidence: Mapping[str, Any] | None,
    label: str,
    *,
    predicted: Any = None,
    labelled: Numbers | None = None,
) -> str:
    """One line for people from a row of :func:`ilt_audit.audit.explanation.explain`: for a suspect
    (``p_wrong`` above :data:`ilt_audit.audit.calibration.SUSPECT`), what the deciding signal means; then
    what the network makes of the instance, the deciding signal against the task's typical
    label. ``label`` is the label as shown; for regression, ``predicted`` and ``labelled`` (the
    network's prediction now and the label, as :class:`Numbers`) add how far apart they are per
    column, in the data's units.

    Example:
        >>> why_text({"type": "classification", "signal": "margin", "p_wrong": 0.97,
        ...           "why": "the network prefers another class", "preferred": "c",
        ...           "p_preferred": 0.91, "p_label": 0.04}, "a")
        'the network prefers c (91%) over the label a (4%)'
    """
    if not evidence or not evidence.get("signal"):
        return "–"
    e = {k: None if _absent(v) else v for k, v in evidence.items()}
    column, value, typical = e["signal"], e.get("value"), e.get("typical")
    pairs = _DETAILS[e["type"]](e, label)  # (column, text) of what the network makes of it
    if column in _SIGNAL_TEXT:
        shown = _SIGNAL_TEXT[column]
        if value is not None and column not in {c for c, _ in pairs}:
            pairs.append((column, shown(value)))
        if typical is not None:
            pairs = [
                (c, f"{t} (typical label: {shown(typical)})" if c == column else t)
                for c, t in pairs
            ]
    text = " · ".join(t for _, t in pairs)
    if isinstance(predicted, Numbers) and labelled is not None:
        gaps = ", ".join(
            f"{c} {v - p:+.3g}"
            for c, v, p in zip(labelled.columns, labelled.values, predicted.values, strict=True)
        )
        text += (" · " if text else "") + f"label − prediction now: {gaps}"
    suspect = (e.get("p_wrong") or 0.0) > SUSPECT
    if suspect and e.get("why") and column not in _SAYS_ITSELF:
        return f"{e['why']}: {text}" if text else str(e["why"])
    return text or "–"


def _absent(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _chance(p: float | None) -> str:
    if p is None:
        return "–"
    return "<1%" if p < 0.01 else ">99%" if p > 0.99 else f"{p:.0%}"


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _class_details(e: dict[str, Any], label: str) -> list[tuple[str, str]]:
    if e.get("preferred") is None:
        return []
    if e["preferred"] == label:
        return [
            ("margin", f"the network agrees with the label {label} ({_chance(e.get('p_label'))})")
        ]
    return [
        (
            "margin",
            f"the network prefers {e['preferred']} ({_chance(e.get('p_preferred'))}) over the "
            f"label {label} ({_chance(e.get('p_label'))})",
        )
    ]


def _tag_details(e: dict[str, Any], label: str) -> list[tuple[str, str]]:
    pairs = []
    if e.get("tag_missing") is not None:
        tag, p = e["tag_missing"], e.get("p_tag_missing")
        text = (
            f"the network sees {tag} ({_chance(p)}), which the label lacks"
            if (p or 0.0) > 0.5
            else f"no tag looks missing (the likeliest absent one, {tag}: {_chance(p)})"
        )
        pairs.append(("missing_tag", text))
    if e.get("tag_extra") is not None:
        tag, p = e["tag_extra"], e.get("p_tag_extra")
        doubt = None if p is None else 1.0 - p  # extra_tag: how sure the network is it is absent
        text = (
            f"the label has {tag}, which the network rules out ({_chance(doubt)})"
            if (doubt or 0.0) > 0.5
            else f"the network sees every tag of the label (the most doubted, {tag}: "
            f"{_chance(doubt)})"
        )
        pairs.append(("extra_tag", text))
    return sorted(pairs, key=lambda pair: pair[0] != e.get("signal"))  # the deciding one first


def _regression_details(e: dict[str, Any], label: str) -> list[tuple[str, str]]:
    if e.get("residual_sd") is None:
        return []
    units = f" ({e['residual']:.4g} in the data's units)" if e.get("residual") is not None else ""
    return [("residual", f"{e['residual_sd']:.2f} label SDs{units} from the network's prediction")]


def _dense_details(e: dict[str, Any], label: str) -> list[tuple[str, str]]:
    if e.get("offset_sd") is None:
        return []
    offset = f"{e['offset']:+.3g} = " if e.get("offset") is not None else ""
    return [
        ("residual", f"median label − prediction {offset}{e['offset_sd']:+.2f} SD"),
        ("log_ratio", f"label / prediction ×{e['ratio']:.3g}"),
        ("holes", f"holes {_share(e.get('holes'))}"),
    ]


def _segmentation_details(e: dict[str, Any], label: str) -> list[tuple[str, str]]:
    if e.get("iou") is None:
        return []
    return [
        ("missing", f"missing {_share(e.get('missing'))}"),
        ("extra", f"extra {_share(e.get('extra'))}"),
        ("iou", f"IoU {e['iou']:.2f}"),
    ]


# what the network makes of an instance, per task type: (the signal it tells, text) pairs
_DETAILS: dict[str, Callable[[dict[str, Any], str], list[tuple[str, str]]]] = {
    "classification": _class_details,
    "regression": _regression_details,
    "dense-regression": _dense_details,
    "segmentation": _segmentation_details,
    "multi-label": _tag_details,
}
# a deciding signal's value and a typical label's, as people read them
_SIGNAL_TEXT: dict[str, Callable[[float | None], str]] = {
    "missing": _share,
    "extra": _share,
    "holes": _share,
    "missing_tag": _chance,
    "extra_tag": _chance,
    "iou": lambda v: "–" if v is None else f"{v:.2f}",
    "residual": lambda v: "–" if v is None else f"{abs(v):.2g} SD",
    "log_ratio": lambda v: "–" if v is None else f"×{math.exp(abs(v)):.3g}",
    "loss": lambda v: "–" if v is None else f"loss {v:.3g}",
    "log_sigma2": lambda v: "–" if v is None else f"mean log σ² {v:.2f}",
}
# signals whose details already say what the deciding text would
_SAYS_ITSELF = {"margin", "missing_tag", "extra_tag"}
