"""The kinds of error :func:`ilt_audit.corruption.planting.corrupt` plants, per task type.

:data:`MODES` maps each task type to its modes, the paper's mode first (the default). A
:class:`Mode` is two functions: ``plan`` reads and checks the training labels and finds the rows
whose label it can change (and the statistics it needs, such as a column's range), writing
nothing; ``apply`` changes the chosen rows' labels in the :class:`Output` being written and says
what changed in each. Both get the task's resolved :class:`Setting` (its magnitude and options).

- classification: ``permutation`` (paper), ``uniform``, ``confusion`` (the class it is most
  confused with, from a CSV matrix or :func:`model_confusion`), ``pairs``;
- segmentation: ``permutation`` (paper), ``drop-object``, ``shift``, ``boundary``, ``merge``;
- regression: ``uniform`` (paper), ``gaussian``, ``scale`` (a unit error), ``swap``;
- dense regression: ``uniform`` (paper), ``offset``, ``scale``, ``shift``, ``holes``;
- multi-label: ``swap-tag`` (the default), ``drop-tag``, ``add-tag``.

The paper has no multi-label task. Its classification errors are a permutation of the classes
that moves every class, so that every corrupted label really becomes another class. A
permutation of the tags would not do that for a tag set ({cat, dog} under cat↔dog is itself),
and the smallest change that, like a class flip, puts a wrong tag where a right one was is one
tag replaced by another: ``swap-tag``, the default. ``drop-tag`` (an omission, the most common
error of real tag sets) and ``add-tag`` plant each half of it alone.

The masks' morphology (connected regions, erosion, dilation) is written with numpy
sliding-window max filters: masks are small, and scipy is not a dependency.

Example:
    >>> list(MODES["segmentation"])
    ['permutation', 'drop-object', 'shift', 'boundary', 'merge']
    >>> MODES["regression"]["gaussian"].magnitude
    0.5
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from ilt_audit.dataset.card import TaskSpec
from ilt_audit.dataset.derived import Output, save_npy, save_png, write_classes, write_tags
from ilt_audit.dataset.manifest import Manifest
from ilt_audit.errors import CardError, OptionError
from ilt_audit.internal.console import track

Noise = Callable[[np.ndarray, Any, Any, np.random.Generator], np.ndarray]


def _add_noise(old: np.ndarray, low: Any, high: Any, rng: np.random.Generator) -> np.ndarray:
    return old + rng.uniform(low, high, size=old.shape)


def _replace_noise(old: np.ndarray, low: Any, high: Any, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(low, high, size=old.shape)


NOISES: dict[str, Noise] = {
    "add": _add_noise,  # the paper: y + U(min, max)
    "replace": _replace_noise,  # a fresh value: U(min, max)
}


FILLS = ("background", "ignore")  # what drop-object and a mask's shift leave behind


@dataclass(frozen=True)
class Mode:
    """One kind of error: which labels it can change (``plan``) and how (``apply``)."""

    about: str  # one line: what the mode does to a label
    # (manifest, task, eligible rows, setting) -> (rows whose label the mode can change,
    # statistics for apply); reads and checks the labels, raises CardError; writes nothing
    plan: Callable[[Manifest, TaskSpec, np.ndarray, Setting], tuple[np.ndarray, Any]]
    # (output, task, statistics, chosen rows, rng, setting) -> what changed, one per chosen row
    apply: Callable[[Output, TaskSpec, Any, np.ndarray, np.random.Generator, Setting], list[str]]
    magnitude: float | None = None  # the default magnitude; None: the mode takes none
    pixels: bool = False  # the magnitude is a whole number of pixels
    share: bool = False  # the magnitude is a share, in (0, 1)


@dataclass(frozen=True)
class Setting:
    """How one task is corrupted: its mode and the mode's options, resolved and checked."""

    mode: str
    method: Mode
    magnitude: float | None  # None: the mode takes no magnitude
    default: bool  # the paper's mode with its default options: the card's note stays as it was
    seed: int
    drop_to: str  # "background" | "ignore": what drop-object and a mask's shift leave behind
    confusion: Path | None  # the confusion mode's matrix, when the user gives one
    pairs: Path | None  # the pairs mode's mapping, when the user gives one
    noise: Noise  # the uniform modes: add the noise to the label (paper) or replace it

    def describe(self) -> str:
        text = self.mode
        if self.magnitude is not None:
            text += f"({self.magnitude:g})"
        return text


def _derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of 0..n-1 without a fixed point (n >= 2); about e draws on average."""
    while True:
        perm = rng.permutation(n)
        if not (perm == np.arange(n)).any():
            return perm


# classification: every mode maps the chosen rows' class indices to new ones


def _relabel(
    choose: Callable[[np.ndarray, Any, np.random.Generator], np.ndarray],
) -> Callable[[Output, TaskSpec, Any, np.ndarray, np.random.Generator, Setting], list[str]]:
    """A classification mode's apply from ``choose(old class indices, stats, rng) -> new``."""

    def apply(
        output: Output,
        task: TaskSpec,
        stats: Any,
        rows: np.ndarray,
        rng: np.random.Generator,
        setting: Setting,
    ) -> list[str]:
        names = output.manifest.class_names[task.name]
        index = output.manifest.class_index(task)  # (N,)
        new = choose(index[rows], stats, rng)  # (k,)
        assert (new != index[rows]).all()
        write_classes(output, task, rows.tolist(), [names[target] for target in new])
        return [f"{names[a]}→{names[b]}" for a, b in zip(index[rows], new, strict=True)]

    return apply


def _permute_classes(old: np.ndarray, classes: int, rng: np.random.Generator) -> np.ndarray:
    return _derangement(classes, rng)[old]


def _plan_count(
    manifest: Manifest, task: TaskSpec, eligible: np.ndarray, setting: Setting
) -> tuple[np.ndarray, int]:
    return eligible, len(manifest.class_names[task.name])


def _other_class(old: np.ndarray, classes: int, rng: np.random.Generator) -> np.ndarray:
    return (old + rng.integers(1, classes, size=len(old))) % classes


def _mapped(old: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return target[old]


def _plan_targets(
    find: Callable[[Manifest, TaskSpec, np.ndarray, Setting], np.ndarray],
) -> Callable[[Manifest, TaskSpec, np.ndarray, Setting], tuple[np.ndarray, np.ndarray]]:
    """A plan from ``find(...) -> (C,) new class per class, -1 for none``: the rows whose class
    has a new one."""

    def plan(
        manifest: Manifest, task: TaskSpec, eligible: np.ndarray, setting: Setting
    ) -> tuple[np.ndarray, np.ndarray]:
        target = find(manifest, task, eligible, setting)  # (C,)
        index = manifest.class_index(task)[eligible]
        return eligible[target[index] >= 0], target

    return plan


def _pair_targets(
    manifest: Manifest, task: TaskSpec, eligible: np.ndarray, setting: Setting
) -> np.ndarray:
    """Class i -> class (i + 1) mod C in the card's class order, or the user's ``from,to`` CSV."""
    names = manifest.class_names[task.name]
    if setting.pairs is None:
        return (np.arange(len(names)) + 1) % len(names)
    table = _read_class_csv(setting.pairs, index=False)
    if table.shape[1] != 2:
        raise OptionError(
            f"{setting.pairs}: a pairs file has two columns, from and to; found {table.shape[1]}"
        )
    target = np.full(len(names), -1)
    for line, (source, dest) in enumerate(table.itertuples(index=False), start=2):
        for value in (source, dest):
            _known_class(setting.pairs, f"line {line}", value, names, task)
        if source == dest:
            raise OptionError(
                f"{setting.pairs}: line {line}: class {source!r} is paired with itself"
            )
        if target[names.index(source)] >= 0:
            raise OptionError(f"{setting.pairs}: line {line}: class {source!r} is paired twice")
        target[names.index(source)] = names.index(dest)
    return target


def _read_class_csv(path: Path, *, index: bool) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, index_col=0 if index else None)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise OptionError(f"{path}: cannot read the CSV file: {exc}") from None


def _known_class(path: Path, where: str, name: str, names: tuple[str, ...], task: TaskSpec) -> None:
    if name not in names:
        raise OptionError(
            f"{path}: {where}: {name!r} is not a class of task {task.name!r} "
            f"(classes: {', '.join(names)})"
        )


def _confusion_targets(
    manifest: Manifest, task: TaskSpec, eligible: np.ndarray, setting: Setting
) -> np.ndarray:
    """Each class's most confused other class: argmax of its confusion matrix row, the diagonal
    left out (the first class in card order on a tie)."""
    names = manifest.class_names[task.name]
    if setting.confusion is None:
        matrix = model_confusion(manifest, task, eligible, seed=setting.seed)
    else:
        matrix = _read_confusion(setting.confusion, names, task)
    off = matrix.copy()
    np.fill_diagonal(off, -1.0)
    return np.where(off.max(axis=1) > 0, off.argmax(axis=1), -1)


def _read_confusion(path: Path, names: tuple[str, ...], task: TaskSpec) -> np.ndarray:
    """A user's confusion matrix: rows the true class, columns the class it is mistaken for;
    counts or rates. Classes it leaves out are never corrupted."""
    table = _read_class_csv(path, index=True)
    for name in table.index:
        _known_class(path, "row", name, names, task)
    for name in table.columns:
        _known_class(path, "column", name, names, task)
    matrix = np.zeros((len(names), len(names)))
    for row_name, row in table.iterrows():
        for column_name, text in row.items():
            cell = f"cell ({row_name!r}, {column_name!r})"
            try:
                value = float(text) if text.strip() else 0.0
            except ValueError:
                raise OptionError(f"{path}: {cell}: {text!r} is not a number") from None
            if not math.isfinite(value) or value < 0:
                raise OptionError(f"{path}: {cell}: {text!r} is not a count or rate >= 0")
            matrix[names.index(row_name), names.index(column_name)] = value
        own = matrix[names.index(row_name)].copy()
        own[names.index(row_name)] = 0
        if not (own > 0).any():
            raise OptionError(
                f"{path}: row {row_name!r}: the class is confused only with itself (every other "
                "cell is 0), so there is no class to move it to"
            )
    return matrix


def model_confusion(
    manifest: Manifest, task: TaskSpec, rows: np.ndarray, *, seed: int = 0, folds: int = 5
) -> np.ndarray:
    """A cross-validated soft confusion matrix of a classification task: (C, C), row i the summed
    out-of-fold class probabilities of the instances labelled i.

    The model is a multinomial logistic regression (torch, full-batch L-BFGS from zero weights,
    a small L2 penalty) on the z-scored features, or on the images shrunk to 16x16 grey;
    ``folds``-fold cross-validation with a seeded assignment of the rows to folds. It is meant to
    say which classes look alike, fast, not to be a good classifier.

    Example:
        >>> m = load_manifest("sample_manifests/penguins/card.toml")  # doctest: +SKIP
        >>> model_confusion(m, m.card.task("species"), np.arange(len(m)))  # doctest: +SKIP
    """
    import torch

    names = manifest.class_names[task.name]
    x = _model_inputs(manifest, rows)  # (N, D)
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    y = manifest.class_index(task)[rows]  # (N,)
    fold = np.random.default_rng([seed, zlib.crc32(task.name.encode("utf-8")), 1]).permutation(
        len(rows)
    ) % max(2, min(folds, len(rows)))
    inputs, labels = torch.from_numpy(x), torch.from_numpy(y)
    matrix = np.zeros((len(names), len(names)))
    for k in np.unique(fold):
        train, test = torch.from_numpy(fold != k), torch.from_numpy(fold == k)
        weight, bias = _fit_logistic(inputs[train], labels[train], len(names))
        with torch.no_grad():
            probs = torch.softmax(inputs[test] @ weight + bias, dim=1).numpy()  # (m, C)
        np.add.at(matrix, y[fold == k], probs)
    return matrix


def _fit_logistic(inputs: Any, labels: Any, classes: int) -> tuple[Any, Any]:
    """A multinomial logistic regression, full-batch L-BFGS from zero: (D, C) weights, (C,) bias."""
    import torch

    weight = torch.zeros(inputs.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> Any:
        optimizer.zero_grad()
        logits = inputs @ weight + bias  # (n, C)
        loss = torch.nn.functional.cross_entropy(logits, labels) + 1e-3 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def _model_inputs(manifest: Manifest, rows: np.ndarray) -> np.ndarray:
    """(N, D) float64: the feature columns, or each image as 16x16 grey pixels."""
    card = manifest.card
    if card.input.type == "features":
        return manifest.frame[list(manifest.input_columns)].to_numpy(dtype=np.float64)[rows]
    pixels = []
    for row in track(rows, "Reading images for the confusion model", total=len(rows)):
        with Image.open(manifest.source(card.input.columns[0], row)) as image:
            small = image.convert("L").resize((16, 16), Image.Resampling.BILINEAR)
            pixels.append(np.asarray(small, dtype=np.float64).ravel() / 255.0)
    return np.stack(pixels)


# dense labels: read, checked and (for candidates) tested once per map in plan; changed per map


def _read_label_file(manifest: Manifest, task: TaskSpec, row: int) -> np.ndarray:
    # ilt_audit.dataset.loader imports torch; importing it here keeps read_truth (and evaluation) light
    from ilt_audit.dataset.files import read_label

    path = manifest.source(task.column, row)
    try:
        array = read_label(task, path)  # classes, or values in the label's units (NaN: invalid)
    except (ValueError, OSError, UnidentifiedImageError) as exc:
        raise _row_error(manifest, row, task, f"cannot read the {task.type} map ({exc})") from None
    return array


def _row_error(manifest: Manifest, row: int, task: TaskSpec, why: str) -> CardError:
    row_id, value = manifest.frame.at[row, manifest.card.id], manifest.frame.at[row, task.column]
    return CardError(
        f"{manifest.card.table_path}: row id {row_id!r}: column {task.column!r}: {why} "
        f"(file: {value!r})"
    )


def _labelled(task: TaskSpec, mask: np.ndarray) -> np.ndarray:
    if task.ignore_index is None:
        return np.ones(mask.shape, dtype=bool)
    return mask != task.ignore_index


def _objects(task: TaskSpec, mask: np.ndarray) -> np.ndarray:
    """Pixels of a non-background class (not 0, not ignore_index)."""
    return _labelled(task, mask) & (mask != 0)


# Can a mode change this map (mask or depth map)? (array, task, setting) -> bool
Changeable = Callable[[np.ndarray, TaskSpec, Setting], bool]
# One map's corruption: (array, task, setting, stats, rng) -> (new array, what changed)
MapChange = Callable[
    [np.ndarray, TaskSpec, Setting, Any, np.random.Generator], tuple[np.ndarray, str]
]


@dataclass
class _MapStats:
    """Statistics of the training maps, for the dense-regression modes that scale by them."""

    high: float = -math.inf  # the largest value
    total: float = 0.0  # sum of the values (float64)
    total_sq: float = 0.0  # sum of their squares
    count: int = 0

    @property
    def std(self) -> float:
        mean = self.total / self.count
        return math.sqrt(max(self.total_sq / self.count - mean * mean, 0.0))


def _plan_maps(
    changeable: Changeable, need: str | None = None
) -> Callable[[Manifest, TaskSpec, np.ndarray, Setting], tuple[np.ndarray, _MapStats]]:
    """A dense plan: read and check every training map, keep those the mode can change.

    ``need`` names a statistic the mode divides by: ``"max"`` (uniform noise over [0, max])
    or ``"std"`` (an offset of magnitude x std); a zero one is refused.
    """

    def plan(
        manifest: Manifest, task: TaskSpec, eligible: np.ndarray, setting: Setting
    ) -> tuple[np.ndarray, _MapStats]:
        keep, stats = [], _MapStats()
        for row in track(eligible, f"Checking {task.name}", total=len(eligible)):
            array = _read_label_file(manifest, task, row)
            _CHECKS[task.type](manifest, task, row, array, stats)
            if changeable(array, task, setting):
                keep.append(row)
        if need == "max" and stats.high <= 0:
            raise CardError(
                f"{manifest.card.table_path}: column {task.column!r} (task {task.name!r}): the "
                f"largest value of the training maps is {stats.high:g}; the noise range [0, max] "
                "needs max > 0"
            )
        if need == "std" and stats.std == 0:
            raise CardError(
                f"{manifest.card.table_path}: column {task.column!r} (task {task.name!r}): every "
                f"pixel of the training maps is {stats.high:g}; an offset of a share of their "
                "standard deviation would be 0"
            )
        return np.array(keep, dtype=np.int64), stats

    return plan


def _check_mask(
    manifest: Manifest, task: TaskSpec, row: int, mask: np.ndarray, stats: _MapStats
) -> None:
    count = task.class_count
    outside = _labelled(task, mask) & ((mask < 0) | (mask >= count))
    if outside.any():
        why = f"mask value {int(mask[outside][0])} is outside the classes 0..{count - 1}"
        raise _row_error(manifest, row, task, why)


def _check_depth(
    manifest: Manifest, task: TaskSpec, row: int, array: np.ndarray, stats: _MapStats
) -> None:
    if np.isinf(array).any() or (task.invalid is None and np.isnan(array).any()):
        raise _row_error(manifest, row, task, "the map contains NaN or infinite values")
    values = array[~np.isnan(array)].astype(np.float64)  # NaN: a pixel without a target
    if not values.size:
        return
    stats.high = max(stats.high, float(values.max()))
    stats.total += float(values.sum())
    stats.total_sq += float(np.square(values).sum())
    stats.count += values.size


_CHECKS = {"segmentation": _check_mask, "dense-regression": _check_depth}


def _rewrite_maps(
    change: MapChange,
) -> Callable[[Output, TaskSpec, Any, np.ndarray, np.random.Generator, Setting], list[str]]:
    """A dense mode's apply: each chosen map changed by ``change`` and written to a new file."""

    def apply(
        output: Output,
        task: TaskSpec,
        stats: Any,
        rows: np.ndarray,
        rng: np.random.Generator,
        setting: Setting,
    ) -> list[str]:
        from ilt_audit.dataset.files import stored_mask  # imports torch: only when maps change

        details = []
        for row in track(rows, f"Corrupting {task.name}", total=len(rows)):
            old = _read_label_file(output.manifest, task, row)  # (H, W)
            new, detail = change(old, task, setting, stats, rng)
            assert new.shape == old.shape and (new != old).any()
            details.append(detail)
            if task.type == "segmentation":
                new = stored_mask(task, new)  # through the card's label_map, if it has one
                dtype = np.uint8 if new.max() <= 255 else np.uint16  # uint16: a 16-bit PNG
                save = partial(save_png, new, dtype)
                output.write_file(task, row, ".png", save)
            else:
                # A 16-bit PNG map is read as (value - offset) / scale, NaN where it stores the
                # card's invalid; the new .npy holds those values (NaN still meaning no target)
                # and read_depth takes a .npy as it is, so the card keeps scale, offset, invalid.
                output.write_file(task, row, ".npy", partial(save_npy, new.astype(np.float32)))
        return details

    return apply


def _max_filter(array: np.ndarray, k: int) -> np.ndarray:
    """The largest value in each pixel's (2k+1) x (2k+1) window; outside the map counts as none."""
    low = np.iinfo(np.int64).min
    padded = np.pad(array.astype(np.int64), k, constant_values=low)
    rows = np.lib.stride_tricks.sliding_window_view(padded, 2 * k + 1, axis=0).max(axis=-1)
    return np.lib.stride_tricks.sliding_window_view(rows, 2 * k + 1, axis=1).max(axis=-1)


def _components(mask: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Connected regions (8-connected, one class each) of the ``pixels`` of a mask: (H, W) int64,
    0 outside ``pixels``, one positive id per region. Each region's ids flood to its largest by
    repeated 3x3 max filters (masks are small; it takes the regions' diameter in steps)."""
    ids = np.where(pixels, np.arange(1, mask.size + 1).reshape(mask.shape), 0)
    for value in np.unique(mask[pixels]):
        inside = pixels & (mask == value)
        while True:
            grown = np.where(inside, _max_filter(np.where(inside, ids, 0), 1), ids)
            if (grown == ids).all():
                break
            ids = grown
    return ids


def _fill_value(task: TaskSpec, setting: Setting) -> int:
    return 0 if setting.drop_to == "background" else int(task.ignore_index or 0)


def _has_labelled(mask: np.ndarray, task: TaskSpec, setting: Setting) -> bool:
    return bool(_labelled(task, mask).any())


def _has_object(mask: np.ndarray, task: TaskSpec, setting: Setting) -> bool:
    return bool(_objects(task, mask).any())


def _permute_mask(
    mask: np.ndarray, task: TaskSpec, setting: Setting, perm: Any, rng: np.random.Generator
) -> tuple[np.ndarray, str]:
    labelled = _labelled(task, mask)
    detail = " ".join(f"{a}→{b}" for a, b in enumerate(perm))
    return np.where(labelled, perm[np.where(labelled, mask, 0)], mask), detail


def _permute_masks(
    output: Output,
    task: TaskSpec,
    stats: Any,
    rows: np.ndarray,
    rng: np.random.Generator,
    setting: Setting,
) -> list[str]:
    perm = _derangement(task.class_count, rng)  # one for the task, as in the paper
    return _rewrite_maps(_permute_mask)(output, task, perm, rows, rng, setting)


def _drop_object(
    mask: np.ndarray, task: TaskSpec, setting: Setting, stats: Any, rng: np.random.Generator
) -> tuple[np.ndarray, str]:
    ids = _components(mask, _objects(task, mask))
    regions = np.unique(ids[ids > 0])
    region = ids == regions[rng.integers(len(regions))]
    fill = _fill_value(task, setting)
    value = int(mask[region][0])
    return np.where(region, fill, mask), f"class {value}, {int(region.sum())} px → {fill}"


def _differs_from_fill(array: np.ndarray, task: TaskSpec, setting: Setting) -> bool:
    fill = _fill_value(task, setting) if task.type == "segmentation" else 0
    return bool((array != fill).any())


def _shifted(array: np.ndarray, dy: int, dx: int, fill: float) -> np.ndarray:
    """The map moved by (dy, dx) pixels; what it uncovers is ``fill``."""
    h, w = array.shape
    new = np.full_like(array, fill)
    if abs(dy) < h and abs(dx) < w:
        new[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = array[
            max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
        ]
    return new


_DIRECTIONS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _shift(
    array: np.ndarray, task: TaskSpec, setting: Setting, stats: Any, rng: np.random.Generator
) -> tuple[np.ndarray, str]:
    """Moved by k pixels in one of the 8 directions: a map that differs from the fill changes
    whatever the direction (an unchanged map would equal its own shift, hence the fill)."""
    k = int(setting.magnitude or 0)
    dy, dx = (k * d for d in _DIRECTIONS[rng.integers(len(_DIRECTIONS))])
    fill = _fill_value(task, setting) if task.type == "segmentation" else 0
    return _shifted(array, dy, dx, fill), f"dx={dx},dy={dy}"


def _eroded(mask: np.ndarray, task: TaskSpec, k: int) -> np.ndarray:
    """Objects lose the pixels within k of another value (not the map's edge): to background."""
    high, low = _max_filter(mask, k), -_max_filter(-mask, k)
    edge = _objects(task, mask) & ((high != mask) | (low != mask))
    return np.where(edge, 0, mask)


def _dilated(mask: np.ndarray, task: TaskSpec, k: int) -> np.ndarray:
    """Background pixels within k of an object take its class (the largest, where several)."""
    grown = _max_filter(np.where(_objects(task, mask), mask, -1), k)
    return np.where(_labelled(task, mask) & (mask == 0) & (grown > 0), grown, mask)


_MORPHOLOGY = {"erode": _eroded, "dilate": _dilated}


def _boundary_options(mask: np.ndarray, task: TaskSpec, k: int) -> list[str]:
    return [name for name, op in _MORPHOLOGY.items() if (op(mask, task, k) != mask).any()]


def _has_boundary(mask: np.ndarray, task: TaskSpec, setting: Setting) -> bool:
    return bool(_boundary_options(mask, task, int(setting.magnitude or 0)))


def _boundary(
    mask: np.ndarray, task: TaskSpec, setting: Setting, stats: Any, rng: np.random.Generator
) -> tuple[np.ndarray, str]:
    k = int(setting.magnitude or 0)
    options = _boundary_options(mask, task, k)
    name = options[rng.integers(len(options))]
    return _MORPHOLOGY[name](mask, task, k), f"{name} {k} px"


def _merge_pairs(mask: np.ndarray, task: TaskSpec) -> list[tuple[int, int]]:
    """(b, a): object class b may be drawn as class a, both present in the mask; a is another
    object class where the mask has two, else the background (b's objects left unlabelled)."""
    present = [c for c in np.unique(mask[_labelled(task, mask)]).tolist() if c != 0]
    if len(present) >= 2:
        return [(b, a) for b in present for a in present if a != b]
    return [(b, 0) for b in present if (mask == 0).any()]


def _can_merge(mask: np.ndarray, task: TaskSpec, setting: Setting) -> bool:
    return bool(_merge_pairs(mask, task))


def _merge(
    mask: np.ndarray, task: TaskSpec, setting: Setting, stats: Any, rng: np.random.Generator
) -> tuple[np.ndarray, str]:
    pairs = _merge_pairs(mask, task)
    b, a = pairs[rng.integers(len(pairs))]
    return np.where(mask == b, a, mask), f"{b}→{a}"


def _always(array: np.ndarray, task: TaskSpec, setting: Setting) -> bool:
    return True


def _has_nonzero(array: np.ndarray, task: TaskSpec, setting: Setting) -> bool:
    return bool((array != 0).any())


def _uniform_map(
    old: np.ndarray, task: TaskSpec, setting: Setting, stats: _MapStats, rng: np.random.Generator
) -> tuple[np.ndarray, str]:
    return setting.noise(old.astype(np.float64), 0.0, stats.high, rng).astype(np.float32), ""


def _offset_map(
    old: np.ndarray, task: TaskSpec, setting: Setting, stats: _MapStats, rng: np.random.Generator
) -> tuple[np.ndarray, str]:
    delta = float(rng.choice([-1.0, 1.0])) * (setting.magnitude or 0) * stats.std
    return (old.astype(np.float64) + delta).astype(np.float32), f"{delta:+.4g}"


def _scale_map(
    old: np.ndarray, task: TaskSpec, setting: Setting, stats: _MapStats, rng: np.random.Generator
) -> tuple[np.ndarray, str]:
    factor = float(rng.choice([10.0, 0.1]))
    return (old.astype(np.float64) * factor).astype(np.float32), f"×{factor:g}"


def _holes(
    old: np.ndarray, task: TaskSpec, setting: Setting, stats: _MapStats, rng: np.random.Generator
) -> tuple[np.ndarray, str]:
    """Three rectangles of about ``magnitude / 3`` of the map each (aspect 1:2 to 2:1) set to 0;
    the first is centred on a non-zero pixel, so the map changes."""
    h, w = old.shape
    new = old.copy()
    nonzero = np.flatnonzero(old)
    boxes = []
    for hole in range(3):
        area = (setting.magnitude or 0) * h * w / 3
        aspect = float(np.exp(rng.uniform(-np.log(2), np.log(2))))
        bh = int(min(h, max(1, round(math.sqrt(area * aspect)))))
        bw = int(min(w, max(1, round(math.sqrt(area / aspect)))))
        if hole == 0:
            cy, cx = divmod(int(nonzero[rng.integers(len(nonzero))]), w)
            top, left = min(max(cy - bh // 2, 0), h - bh), min(max(cx - bw // 2, 0), w - bw)
        else:
            top, left = int(rng.integers(h - bh + 1)), int(rng.integers(w - bw + 1))
        new[top : top + bh, left : left + bw] = 0
        boxes.append(f"{bh}x{bw}@{top},{left}")
    return new, " ".join(boxes)


# regression: the chosen rows' target vectors (k, D) changed in the table


def _plan_range(
    manifest: Manifest, task: TaskSpec, eligible: np.ndarray, setting: Setting
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each target column's [min, max] and standard deviation over the training rows."""
    values = manifest.frame[list(task.columns)].to_numpy(dtype=np.float64)[eligible]  # (N, D)
    low, high = values.min(axis=0), values.max(axis=0)
    for column, lo, hi in zip(task.columns, low, high, strict=True):
        if lo == hi:
            raise CardError(
                f"{manifest.card.table_path}: column {column!r} (task {task.name!r}) has the same "
                f"value {lo:g} on every training row; its range [min, max] gives no noise to "
                "corrupt it with"
            )
    return eligible, (low, high, values.std(axis=0))


def _plan_rows(
    changeable: Callable[[np.ndarray], np.ndarray],
) -> Callable[[Manifest, TaskSpec, np.ndarray, Setting], tuple[np.ndarray, None]]:
    """A regression plan keeping the rows whose target vector ``changeable((N, D)) -> (N,)``."""

    def plan(
        manifest: Manifest, task: TaskSpec, eligible: np.ndarray, setting: Setting
    ) -> tuple[np.ndarray, None]:
        values = manifest.frame[list(task.columns)].to_numpy(dtype=np.float64)[eligible]
        return eligible[changeable(values)], None

    return plan


def _rewrite_rows(
    change: Callable[
        [np.ndarray, TaskSpec, Any, np.random.Generator, Setting], tuple[np.ndarray, list[str]]
    ],
) -> Callable[[Output, TaskSpec, Any, np.ndarray, np.random.Generator, Setting], list[str]]:
    """A regression mode's apply from ``change(old (k, D), task, stats, rng, setting)``, which
    gives the new values and what changed in each row."""

    def apply(
        output: Output,
        task: TaskSpec,
        stats: Any,
        rows: np.ndarray,
        rng: np.random.Generator,
        setting: Setting,
    ) -> list[str]:
        columns = list(task.columns)
        old = output.frame[columns].to_numpy(dtype=np.float64)[rows]  # (k, D)
        new, details = change(old, task, stats, rng, setting)
        assert (new != old).any(axis=1).all()
        for j, column in enumerate(columns):
            values = output.frame[column].to_numpy(dtype=np.float64, copy=True)
            values[rows] = new[:, j]
            output.frame[column] = values
        return details

    return apply


def _uniform_rows(
    old: np.ndarray, task: TaskSpec, stats: Any, rng: np.random.Generator, setting: Setting
) -> tuple[np.ndarray, list[str]]:
    return setting.noise(old, stats[0], stats[1], rng), [""] * len(old)


def _gaussian_rows(
    old: np.ndarray, task: TaskSpec, stats: Any, rng: np.random.Generator, setting: Setting
) -> tuple[np.ndarray, list[str]]:
    sigma = (setting.magnitude or 0) * stats[2]  # (D,)
    return old + rng.normal(0.0, sigma, size=old.shape), [""] * len(old)


UNIT_ERRORS = (10.0, 0.1, 2.54, 1 / 2.54)  # a value in the wrong unit: x10, /10, inch <-> cm


def _scale_rows(
    old: np.ndarray, task: TaskSpec, stats: Any, rng: np.random.Generator, setting: Setting
) -> tuple[np.ndarray, list[str]]:
    factor = np.array(UNIT_ERRORS)[rng.integers(len(UNIT_ERRORS), size=len(old))]  # (k,)
    return old * factor[:, None], [f"×{f:.4g}" for f in factor]


def _swappable(values: np.ndarray) -> np.ndarray:
    return (values != values[:, :1]).any(axis=1)


def _swap_rows(
    old: np.ndarray, task: TaskSpec, stats: Any, rng: np.random.Generator, setting: Setting
) -> tuple[np.ndarray, list[str]]:
    """Two columns exchanged, drawn per row among the pairs whose values differ."""
    new, details = old.copy(), []
    for row, values in enumerate(old):
        pairs = [
            (i, j)
            for i in range(len(values))
            for j in range(i + 1, len(values))
            if values[i] != values[j]
        ]
        i, j = pairs[rng.integers(len(pairs))]
        new[row, [i, j]] = values[[j, i]]
        details.append(f"{task.columns[i]}↔{task.columns[j]}")
    return new, details


def _nonzero_rows(values: np.ndarray) -> np.ndarray:
    return (values != 0).any(axis=1)


# multi-label: the chosen rows' tag sets (k, C) changed by one tag each


def _plan_tags(
    changeable: Callable[[np.ndarray], np.ndarray],
) -> Callable[[Manifest, TaskSpec, np.ndarray, Setting], tuple[np.ndarray, None]]:
    """A multi-label plan keeping the rows whose tag set ``changeable((N, C) bool) -> (N,)``."""

    def plan(
        manifest: Manifest, task: TaskSpec, eligible: np.ndarray, setting: Setting
    ) -> tuple[np.ndarray, None]:
        return eligible[changeable(manifest.tag_matrix(task)[eligible])], None

    return plan


def _has_tag(table: np.ndarray) -> np.ndarray:
    return table.any(axis=1)


def _lacks_tag(table: np.ndarray) -> np.ndarray:
    return ~table.all(axis=1)


def _has_and_lacks_tag(table: np.ndarray) -> np.ndarray:
    return table.any(axis=1) & ~table.all(axis=1)


def _pick(allowed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One allowed tag per row, uniformly among the row's: (k, C) bool -> (k,) tag index."""
    return np.where(allowed, rng.random(allowed.shape), -1.0).argmax(axis=1)


def _rewrite_tags(
    change: Callable[
        [np.ndarray, tuple[str, ...], np.random.Generator], tuple[np.ndarray, list[str]]
    ],
) -> Callable[[Output, TaskSpec, Any, np.ndarray, np.random.Generator, Setting], list[str]]:
    """A multi-label mode's apply from ``change(old (k, C) bool, tags, rng)``, which gives the
    new tag sets and what changed in each row."""

    def apply(
        output: Output,
        task: TaskSpec,
        stats: Any,
        rows: np.ndarray,
        rng: np.random.Generator,
        setting: Setting,
    ) -> list[str]:
        names = output.manifest.class_names[task.name]
        old = output.manifest.tag_matrix(task)[rows]  # (k, C)
        new, details = change(old, names, rng)
        assert (new != old).any(axis=1).all()
        write_tags(output, task, rows.tolist(), new)
        return details

    return apply


def _drop_tag(
    old: np.ndarray, names: tuple[str, ...], rng: np.random.Generator
) -> tuple[np.ndarray, list[str]]:
    gone = _pick(old, rng)  # (k,)
    new = old.copy()
    new[np.arange(len(old)), gone] = False
    return new, [f"-{names[c]}" for c in gone]


def _add_tag(
    old: np.ndarray, names: tuple[str, ...], rng: np.random.Generator
) -> tuple[np.ndarray, list[str]]:
    added = _pick(~old, rng)  # (k,)
    new = old.copy()
    new[np.arange(len(old)), added] = True
    return new, [f"+{names[c]}" for c in added]


def _swap_tag(
    old: np.ndarray, names: tuple[str, ...], rng: np.random.Generator
) -> tuple[np.ndarray, list[str]]:
    gone, added = _pick(old, rng), _pick(~old, rng)  # (k,) each
    new = old.copy()
    new[np.arange(len(old)), gone] = False
    new[np.arange(len(old)), added] = True
    return new, [f"{names[a]}→{names[b]}" for a, b in zip(gone, added, strict=True)]


MODES: dict[str, dict[str, Mode]] = {  # per task type, the paper's mode first (the default)
    "classification": {
        "permutation": Mode(
            "one random permutation of the classes that moves every class (paper)",
            _plan_count,
            _relabel(_permute_classes),
        ),
        "uniform": Mode("any other class, uniformly", _plan_count, _relabel(_other_class)),
        "confusion": Mode(
            "the class it is most confused with (--confusion FILE, or a cross-validated model)",
            _plan_targets(_confusion_targets),
            _relabel(_mapped),
        ),
        "pairs": Mode(
            "class i becomes class i + 1 in the card's order (or --pairs FILE)",
            _plan_targets(_pair_targets),
            _relabel(_mapped),
        ),
    },
    "segmentation": {
        "permutation": Mode(
            "one random permutation of the classes, on every labelled pixel (paper)",
            _plan_maps(_has_labelled),
            _permute_masks,
        ),
        "drop-object": Mode(
            "one connected object relabelled as background (or ignore, --drop-to ignore)",
            _plan_maps(_has_object),
            _rewrite_maps(_drop_object),
        ),
        "shift": Mode(
            "the mask moved by k pixels in one of 8 directions",
            _plan_maps(_differs_from_fill),
            _rewrite_maps(_shift),
            magnitude=3,
            pixels=True,
        ),
        "boundary": Mode(
            "every object eroded or dilated by k pixels",
            _plan_maps(_has_boundary),
            _rewrite_maps(_boundary),
            magnitude=2,
            pixels=True,
        ),
        "merge": Mode(
            "two classes drawn as one: object class b becomes a, another present (else background)",
            _plan_maps(_can_merge),
            _rewrite_maps(_merge),
        ),
    },
    "regression": {
        "uniform": Mode(
            "uniform noise over the column's [min, max], added (paper) or replacing (--noise)",
            _plan_range,
            _rewrite_rows(_uniform_rows),
        ),
        "gaussian": Mode(
            "gaussian noise, sigma = magnitude x the column's std",
            _plan_range,
            _rewrite_rows(_gaussian_rows),
            magnitude=0.5,
        ),
        "scale": Mode(
            "a unit error: the row x10, x0.1, x2.54 or /2.54",
            _plan_rows(_nonzero_rows),
            _rewrite_rows(_scale_rows),
        ),
        "swap": Mode(
            "two of the task's columns exchanged",
            _plan_rows(_swappable),
            _rewrite_rows(_swap_rows),
        ),
    },
    "dense-regression": {
        "uniform": Mode(
            "uniform noise over [0, max] per pixel, added (paper) or replacing (--noise)",
            _plan_maps(_always, need="max"),
            _rewrite_maps(_uniform_map),
        ),
        "offset": Mode(
            "+ or - magnitude x the maps' std on every pixel",
            _plan_maps(_always, need="std"),
            _rewrite_maps(_offset_map),
            magnitude=0.5,
        ),
        "scale": Mode(
            "the map x10 or x0.1",
            _plan_maps(_has_nonzero),
            _rewrite_maps(_scale_map),
        ),
        "shift": Mode(
            "the map moved by k pixels in one of 8 directions, the uncovered border 0",
            _plan_maps(_has_nonzero),
            _rewrite_maps(_shift),
            magnitude=3,
            pixels=True,
        ),
        "holes": Mode(
            "three rectangles set to 0, covering about magnitude of the map",
            _plan_maps(_has_nonzero),
            _rewrite_maps(_holes),
            magnitude=0.25,
            share=True,
        ),
    },
    "multi-label": {
        "swap-tag": Mode(
            "one tag the label has replaced by one it lacks (the paper's class flip, for a tag)",
            _plan_tags(_has_and_lacks_tag),
            _rewrite_tags(_swap_tag),
        ),
        "drop-tag": Mode(
            "one tag the label has removed (an omission)",
            _plan_tags(_has_tag),
            _rewrite_tags(_drop_tag),
        ),
        "add-tag": Mode(
            "one tag the label lacks added",
            _plan_tags(_lacks_tag),
            _rewrite_tags(_add_tag),
        ),
    },
}
