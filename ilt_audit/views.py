"""What a person sees of one instance: its input, each task's label and the model's prediction,
as pictures and text. The report and the review app show instances through these.

Pictures are PNG data URIs (no file is served from a path a page names): masks colour-coded one
colour per class, depth maps through a colormap. Predictions come from the run's checkpoint,
loaded with ``weights_only=True``, for the requested instances only.

Example:
    >>> found = predict_instances(run, manifest, ["img_0001"])  # doctest: +SKIP
    >>> found["shape"]["img_0001"].name  # doctest: +SKIP
    'circle'
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from PIL import Image

from ilt_audit.card import TaskSpec
from ilt_audit.errors import CardError, RunDirError
from ilt_audit.manifest import Manifest
from ilt_audit.rundir import CHECKPOINT, Run

THUMB = 96  # the longest side of a thumbnail, in pixels (larger inputs are shrunk)
FEATURES_SHOWN = 8  # feature values written out for a features input


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


def depth_rgb(depth: np.ndarray, low: float, high: float) -> np.ndarray:
    """A depth map through the viridis colormap, ``low``..``high`` spanning it."""
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


# --- reading an instance's files -------------------------------------------------------------


def read_row_file(
    manifest: Manifest, instance_id: str, column: str, read: Callable[[], Any]
) -> Any:
    """A file an instance's row names, read; a file that cannot be (gone, changed, a bomb) is a
    :class:`CardError` naming the manifest, the row id and the column."""
    from ilt_audit.data import DECODE_ERRORS

    try:
        return read()
    except DECODE_ERRORS as exc:
        raise CardError(
            f"{manifest.card.table_path}: row id {instance_id!r}: column {column!r}: cannot read "
            f"its file: {exc}"
        ) from None


def input_image(manifest: Manifest, row: int) -> np.ndarray:
    """The input image of manifest row ``row`` as (H, W, 3) uint8."""
    from ilt_audit.data import read_image

    column = manifest.card.input.columns[0]
    value = manifest.frame.iloc[row][column]
    image = read_row_file(
        manifest, manifest.ids[row], column, lambda: read_image(manifest.file_path(value))
    )
    return np.ascontiguousarray(image.permute(1, 2, 0).numpy())


def feature_text(manifest: Manifest, row: int) -> str:
    """The first feature values of a features input, as ``name=value`` text."""
    values = manifest.frame.iloc[row]
    shown = ", ".join(f"{c}={values[c]:.4g}" for c in manifest.input_columns[:FEATURES_SHOWN])
    more = len(manifest.input_columns) - FEATURES_SHOWN
    return shown + (f" … (+{more})" if more > 0 else "")


def label_map(manifest: Manifest, task: TaskSpec, row: int) -> np.ndarray:
    """The mask (class indices) or depth map (the label's units) of a dense task's row."""
    from ilt_audit.data import read_depth, read_mask

    value = manifest.frame.iloc[row][task.column]
    path = manifest.file_path(value)
    if task.type == "segmentation":
        return np.asarray(
            read_row_file(manifest, manifest.ids[row], task.column, lambda: read_mask(path))
        )
    return np.asarray(
        read_row_file(
            manifest, manifest.ids[row], task.column, lambda: read_depth(path, task.scale)
        )
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
        from ilt_audit.data import Normalisation, load_dataset
        from ilt_audit.training import load_model

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

        from ilt_audit.training import predict

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
}
