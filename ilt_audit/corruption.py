"""Plant wrong labels in a clean dataset on purpose, so that their detection can be measured.

:func:`corrupt` follows the paper's protocol (section 4.6). For each requested task it picks
exactly ``round(fraction * N)`` of the training instances (rows with ``split == "train"`` when
the card has a split column, otherwise all rows) and changes their label:

- classification and segmentation: one random permutation of the class ids that moves every
  class (a derangement), applied to the label, or to every labelled pixel of the mask, so every
  corrupted label really changes; ``ignore_index`` pixels are kept (a mask with no labelled
  pixel cannot change and is never chosen);
- regression: uniform noise whose range is ``[min, max]`` of the target column over the training
  rows;
- dense regression: uniform noise over ``[0, max]`` of the target over all training maps, drawn
  per pixel; the new map is a float32 ``.npy`` in the task's units (a 16-bit PNG's values divided
  by ``scale``), and since ``.npy`` maps are never scaled the card keeps its ``scale``.

"Noise" is *added* to the label by default (``noise="add"``): the paper says "We **add** uniform
noise in the range -2.0 to 2.0 for pose and shape annotations ... We obtained the range by
identifying the minimum and maximum values for pose and shape labels", and likewise "add uniform
noise in the range 0.0 to 0.2 to disparity labels". So a corrupted target is ``y + u`` with
``u ~ U(min, max)`` (dense: ``u ~ U(0, max)`` per pixel). For a target far from zero this moves
labels out of the data's range, which makes them easy to find; ``noise="replace"`` instead draws
the new label itself from ``U(min, max)`` (dense: ``U(0, max)``), which keeps it in range and
carries no information about the old one.

Each task draws from its own generator, seeded by ``(seed, crc32(task name))``, so a task's
selection does not depend on which other tasks are corrupted nor on their order. The output
folder holds a new card (same content, same table name), a manifest in the original format whose
paths still point at the original input files (nothing is copied or modified), new mask/depth
files for the corrupted dense labels, and ``corruption.parquet`` (``id, task, corrupted``) naming
exactly the labels that were changed. Everything is written into a temporary sibling folder that
is renamed onto ``out`` at the end, so a crash leaves nothing half-written.

Example:
    >>> result = corrupt("sample_manifests/shapes/card.toml", tasks=["shape"], fraction=0.4,
    ...                  out="/tmp/shapes-noisy")  # doctest: +SKIP
    >>> result.counts  # doctest: +SKIP
    {'shape': 240}
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from ilt_audit.card import ESCAPING_PATH, TABLE_READERS, Card, TaskSpec
from ilt_audit.errors import CardError, OptionError, TruthError
from ilt_audit.internal.console import track
from ilt_audit.manifest import Manifest, load_manifest, read_table

TRUTH_FILE = "corruption.parquet"
TRUTH_SCHEMA = pa.schema([("id", pa.string()), ("task", pa.string()), ("corrupted", pa.bool_())])


@dataclass(frozen=True)
class CorruptionResult:
    """Where :func:`corrupt` wrote the new dataset, and how many labels of each task it changed."""

    card_path: Path  # the new dataset card
    truth_path: Path  # corruption.parquet: id, task, corrupted
    counts: dict[str, int]  # task -> number of corrupted labels, in the card's task order
    eligible: int  # N: the rows that could be corrupted (the training rows)


Noise = Callable[[np.ndarray, Any, Any, np.random.Generator], np.ndarray]


def _add_noise(old: np.ndarray, low: Any, high: Any, rng: np.random.Generator) -> np.ndarray:
    return old + rng.uniform(low, high, size=old.shape)


def _replace_noise(old: np.ndarray, low: Any, high: Any, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(low, high, size=old.shape)


NOISES: dict[str, Noise] = {
    "add": _add_noise,  # the paper: y + U(min, max)
    "replace": _replace_noise,  # a fresh value: U(min, max)
}


def corrupt(
    card: Card | str | Path,
    *,
    tasks: Sequence[str],
    fraction: float,
    seed: int = 0,
    out: str | Path,
    noise: str = "add",
) -> CorruptionResult:
    """Write a copy of a dataset with a fraction of the labels of some tasks corrupted.

    Everything is validated (card, manifest, options, the label files to corrupt) before anything
    is written; on any error nothing is left behind.

    Example:
        >>> corrupt("sample_manifests/penguins/card.toml", tasks=["species", "body_mass"],
        ...         fraction=0.2, seed=1, out="/tmp/penguins-noisy").counts  # doctest: +SKIP
        {'species': 67, 'body_mass': 67}
    """
    manifest = load_manifest(card)
    card = manifest.card
    specs = _check_options(manifest, tasks, fraction, seed, noise)
    out = Path(out).resolve()
    _check_out(out)

    eligible = _eligible_rows(manifest)
    n = len(eligible)
    k = round(fraction * n)
    if k == 0:
        raise OptionError(
            f"fraction {fraction} of the {n} training instances rounds to 0 labels; "
            "nothing would be corrupted"
        )
    plans = []
    for task in specs:
        candidates, stats = _CORRUPTIONS[task.type].plan(manifest, task, eligible)
        if len(candidates) < k:
            raise CardError(
                f"{card.table_path}: task {task.name!r}: only {len(candidates)} of the {n} "
                f"training instances have a label that can be changed, fewer than the {k} to "
                "corrupt"
            )
        rng = np.random.default_rng([seed, zlib.crc32(task.name.encode("utf-8"))])
        chosen = np.sort(rng.choice(candidates, size=k, replace=False))
        plans.append(_Plan(task, stats, chosen, rng))
    names = ", ".join(t.name for t in specs)
    note = f"tasks: {names}; fraction: {fraction}; seed: {seed}; noise: {noise}"
    _write_dataset(manifest, eligible, plans, out, NOISES[noise], note)
    counts = {plan.task.name: len(plan.chosen) for plan in plans}
    return CorruptionResult(out / card.path.name, out / TRUTH_FILE, counts, n)


@dataclass(frozen=True)
class _Plan:
    """What to do to one task: its statistics (see ``_Corruption.plan``) and the rows to change."""

    task: TaskSpec
    stats: Any
    chosen: np.ndarray  # (k,) sorted row numbers
    rng: np.random.Generator  # the task's generator, after drawing ``chosen``


def _write_dataset(
    manifest: Manifest, eligible: np.ndarray, plans: list[_Plan], out: Path, noise: Noise, note: str
) -> None:
    """Write the corrupted dataset into a temporary sibling of ``out``, then rename it."""
    card = manifest.card
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        table = read_table(card.table_path, card.id).reset_index(drop=True)  # original dtypes
        output = _Output(manifest, table, out, staging, noise)
        _rewrite_paths(output)
        for plan in plans:
            _CORRUPTIONS[plan.task.type].apply(output, plan.task, plan.stats, plan.chosen, plan.rng)
        raw, header = _new_card(card, note)
        _write_table(output.frame, staging / raw["table"])
        (staging / card.path.name).write_text(header + toml_dumps(raw), encoding="utf-8")
        _write_truth(staging / TRUTH_FILE, manifest, eligible, plans)
        try:  # one rename: two runs on one --out never mix, the second to finish is refused
            os.replace(staging, out)
        except OSError:
            if not out.exists():
                raise
            raise OptionError(
                f"{out} exists and is not empty: another process wrote it while this one ran"
            ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _new_card(card: Card, note: str) -> tuple[dict[str, Any], str]:
    """The new card's content and its header comment: the original's, with the table next to it
    and, for an image card, ``allow_outside_paths`` and the reason."""
    raw = dict(card.raw)
    # a path is quoted: a newline in it must not end the comment (task names are [a-z0-9_-])
    header = f"# Written by ilt-audit corrupt from {_toml_string(str(card.path))}\n# {note}\n"
    raw["table"] = Path(card.table).name if re.search(ESCAPING_PATH, card.table) else card.table
    if card.input.type == "image":
        # Honest rather than tidy: the new manifest names the original dataset's input files,
        # never copied (it may be large), and they lie outside this folder. Links to them would
        # be refused as any path that leaves the folder is, so the card opts in and says why.
        # The original's own paths passed its card's rule when its manifest was read.
        raw["allow_outside_paths"] = True
        header += (
            "# allow_outside_paths: the inputs are the original dataset's files in "
            f"{_toml_string(str(card.root))}\n"
        )
    return raw, header


def _check_options(
    manifest: Manifest, tasks: Sequence[str], fraction: float, seed: int, noise: str
) -> list[TaskSpec]:
    card = manifest.card
    if isinstance(tasks, str):
        tasks = [tasks]
    if not tasks:
        raise OptionError("name at least one task to corrupt")
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction < 1:
        raise OptionError(f"fraction must be a number strictly between 0 and 1, got {fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise OptionError(f"seed must be a non-negative integer, got {seed!r}")
    if noise not in NOISES:
        raise OptionError(f"unknown noise {noise!r}; choose one of {', '.join(NOISES)}")
    wanted = {card.task(name).name for name in tasks}
    specs = [t for t in card.tasks if t.name in wanted]  # card order, whatever the order asked
    for task in specs:
        for other in card.tasks:
            shared = set(task.columns) & set(other.columns)
            if other is not task and shared:
                raise OptionError(
                    f"task {task.name!r} shares column {sorted(shared)[0]!r} with task "
                    f"{other.name!r}; corrupting it would change both tasks' labels"
                )
    return specs


def _check_out(out: Path) -> None:
    if out.is_dir():
        if any(out.iterdir()):
            raise OptionError(f"{out} exists and is not empty")
    elif out.exists():
        raise OptionError(f"{out} exists and is not a directory")


def _eligible_rows(manifest: Manifest) -> np.ndarray:
    """Rows that may be corrupted: the training rows (paper: "a subset of training dataset")."""
    card = manifest.card
    if card.split is None:
        return np.arange(len(manifest.frame))
    rows = np.flatnonzero((manifest.frame[card.split] == "train").to_numpy())
    if len(rows) == 0:
        raise CardError(f"{card.table_path}: column {card.split!r}: no row has split 'train'")
    return rows


@dataclass
class _Output:
    """The dataset being written: the new table and where its files go."""

    manifest: Manifest
    frame: pd.DataFrame  # the new manifest table, edited in place
    root: Path  # the final output folder: paths in the table are relative to it
    staging: Path  # where files are written until the folder is renamed to ``root``
    noise: Noise
    ids: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.ids = self.manifest.ids

    def write_file(
        self, task: TaskSpec, row: int, suffix: str, write: Callable[[Path], None]
    ) -> None:
        """Write a new label file for a row and point the row's label column at it."""
        name = f"{task.name}/{_file_stem(self.ids[row])}{suffix}"
        path = self.staging / name
        path.parent.mkdir(exist_ok=True)
        write(path)
        self.frame.loc[row, task.column] = name


def _file_stem(instance_id: str) -> str:
    """A file name for an instance: its id when that is a safe name, else a sanitised id + hash."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", instance_id):
        return instance_id
    digest = hashlib.sha1(instance_id.encode("utf-8")).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', instance_id)[:60].strip('._')}-{digest}"


def _rewrite_paths(output: _Output) -> None:
    """Point every file column at the original files, relative to the new card's folder."""
    card = output.manifest.card
    columns = [t.column for t in card.tasks if t.dense]
    if card.input.type == "image":
        columns.insert(0, card.input.columns[0])
    for column in dict.fromkeys(columns):
        output.frame[column] = [
            value
            if os.path.isabs(value)
            else Path(os.path.relpath(card.root / value, output.root)).as_posix()
            for value in output.frame[column]
        ]


# --- one corruption per task type -----------------------------------------------------------


@dataclass(frozen=True)
class _Corruption:
    # (manifest, task, eligible rows) -> (rows whose label can change, statistics for apply);
    # reads and checks the labels, raises CardError; writes nothing
    plan: Callable[[Manifest, TaskSpec, np.ndarray], tuple[np.ndarray, Any]]
    # (output, task, statistics, chosen rows, rng) -> None: changes the chosen labels
    apply: Callable[[_Output, TaskSpec, Any, np.ndarray, np.random.Generator], None]


def _derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of 0..n-1 without a fixed point (n >= 2); about e draws on average."""
    while True:
        perm = rng.permutation(n)
        if not (perm == np.arange(n)).any():
            return perm


def _plan_all(manifest: Manifest, task: TaskSpec, eligible: np.ndarray) -> tuple[np.ndarray, None]:
    return eligible, None


def _corrupt_classification(
    output: _Output, task: TaskSpec, _: None, rows: np.ndarray, rng: np.random.Generator
) -> None:
    names = output.manifest.class_names[task.name]
    perm = _derangement(len(names), rng)
    index = output.manifest.class_index(task)  # (N,)
    column = output.frame[task.column]
    as_found = {names[i]: value for i, value in zip(index, column, strict=True)}
    values = column.tolist()
    for row in rows:
        values[row] = _label_value(names[perm[index[row]]], column.dtype, as_found)
    output.frame[task.column] = pd.Series(values, index=column.index, dtype=column.dtype)


def _label_value(name: str, dtype: Any, as_found: dict[str, Any]) -> Any:
    """A class name in the representation of the label column (ints stay ints, text stays text)."""
    if pd.api.types.is_bool_dtype(dtype):
        return name == "True"
    if pd.api.types.is_integer_dtype(dtype):
        return int(name)
    if pd.api.types.is_float_dtype(dtype):
        return float(name)
    return as_found.get(name, name)


def _read_label_file(manifest: Manifest, task: TaskSpec, row: int) -> np.ndarray:
    # ilt_audit.data imports torch; importing it here keeps read_truth (and evaluation) light
    from ilt_audit.data import read_depth, read_mask

    value = manifest.frame.at[row, task.column]
    path = manifest.file_path(value)
    try:
        array = read_mask(path) if task.type == "segmentation" else read_depth(path, task.scale)
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


def _plan_masks(
    manifest: Manifest, task: TaskSpec, eligible: np.ndarray
) -> tuple[np.ndarray, None]:
    """Masks with at least one labelled pixel: the others cannot be changed by a permutation."""
    assert isinstance(task.classes, int)
    keep = []
    for row in track(eligible, f"Checking {task.name}", total=len(eligible)):
        mask = _read_label_file(manifest, task, row)
        labelled = _labelled(task, mask)
        outside = labelled & ((mask < 0) | (mask >= task.classes))
        if outside.any():
            why = f"mask value {int(mask[outside][0])} is outside the classes 0..{task.classes - 1}"
            raise _row_error(manifest, row, task, why)
        if labelled.any():
            keep.append(row)
    return np.array(keep, dtype=np.int64), None


def _corrupt_segmentation(
    output: _Output, task: TaskSpec, _: None, rows: np.ndarray, rng: np.random.Generator
) -> None:
    assert isinstance(task.classes, int)
    perm = _derangement(task.classes, rng)
    for row in track(rows, f"Corrupting {task.name}", total=len(rows)):
        mask = _read_label_file(output.manifest, task, row)  # (H, W)
        labelled = _labelled(task, mask)
        new = np.where(labelled, perm[np.where(labelled, mask, 0)], mask)
        assert (new != mask).any()
        dtype = np.uint8 if new.max() <= 255 else np.uint16  # uint16 gives a 16-bit PNG
        output.write_file(
            task, row, ".png", lambda path, new=new, dtype=dtype: _save_png(new, dtype, path)
        )


def _save_png(array: np.ndarray, dtype: Any, path: Path) -> None:
    Image.fromarray(np.ascontiguousarray(array.astype(dtype))).save(path, format="PNG")


def _plan_range(
    manifest: Manifest, task: TaskSpec, eligible: np.ndarray
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """The noise range of each target column: its [min, max] over the training rows."""
    values = manifest.frame[list(task.columns)].to_numpy(dtype=np.float64)[eligible]  # (N, D)
    low, high = values.min(axis=0), values.max(axis=0)
    for column, lo, hi in zip(task.columns, low, high, strict=True):
        if lo == hi:
            raise CardError(
                f"{manifest.card.table_path}: column {column!r} (task {task.name!r}) has the same "
                f"value {lo:g} on every training row; its range [min, max] gives no noise to "
                "corrupt it with"
            )
    return eligible, (low, high)


def _corrupt_regression(
    output: _Output,
    task: TaskSpec,
    value_range: tuple[np.ndarray, np.ndarray],
    rows: np.ndarray,
    rng: np.random.Generator,
) -> None:
    columns = list(task.columns)
    old = output.frame[columns].to_numpy(dtype=np.float64)[rows]  # (k, D)
    new = output.noise(old, value_range[0], value_range[1], rng)
    assert (new != old).any(axis=1).all()
    for j, column in enumerate(columns):
        values = output.frame[column].to_numpy(dtype=np.float64, copy=True)
        values[rows] = new[:, j]
        output.frame[column] = values


def _plan_depth_max(
    manifest: Manifest, task: TaskSpec, eligible: np.ndarray
) -> tuple[np.ndarray, float]:
    """The noise range [0, max]: max over every pixel of the training maps."""
    high = -math.inf
    for row in track(eligible, f"Checking {task.name}", total=len(eligible)):
        array = _read_label_file(manifest, task, row)
        if not np.isfinite(array).all():
            raise _row_error(manifest, row, task, "the map contains NaN or infinite values")
        high = max(high, float(array.max()))
    if high <= 0:
        raise CardError(
            f"{manifest.card.table_path}: column {task.column!r} (task {task.name!r}): the largest "
            f"value of the training maps is {high:g}; the noise range [0, max] needs max > 0"
        )
    return eligible, high


def _corrupt_dense_regression(
    output: _Output, task: TaskSpec, high: float, rows: np.ndarray, rng: np.random.Generator
) -> None:
    # A 16-bit PNG map is read divided by the task's scale; the new .npy holds those values and
    # read_depth never scales a .npy, so the card keeps its scale for the rows left as PNG.
    for row in track(rows, f"Corrupting {task.name}", total=len(rows)):
        old = _read_label_file(output.manifest, task, row)  # (H, W) float32
        new = output.noise(old.astype(np.float64), 0.0, high, rng).astype(np.float32)
        assert (new != old).any()
        output.write_file(task, row, ".npy", lambda path, new=new: _save_npy(new, path))


def _save_npy(array: np.ndarray, path: Path) -> None:
    with path.open("wb") as handle:
        np.save(handle, array, allow_pickle=False)


_CORRUPTIONS: dict[str, _Corruption] = {
    "classification": _Corruption(_plan_all, _corrupt_classification),
    "segmentation": _Corruption(_plan_masks, _corrupt_segmentation),
    "regression": _Corruption(_plan_range, _corrupt_regression),
    "dense-regression": _Corruption(_plan_depth_max, _corrupt_dense_regression),
}


# --- writing --------------------------------------------------------------------------------


def _write_table(frame: pd.DataFrame, path: Path) -> None:
    """Write a manifest in the format its name says, so that ``read_table`` reads it back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kind = TABLE_READERS[path.suffix.lower()]
    if kind == "csv":
        frame.to_csv(path, index=False)
    elif kind == "parquet":
        frame.to_parquet(path, index=False)
    else:
        # json.dumps writes floats with repr, so they read back exactly (to_json rounds them)
        with path.open("w", encoding="utf-8") as handle:
            for record in frame.to_dict(orient="records"):
                clean = {
                    str(k): (None if isinstance(v, float) and math.isnan(v) else v)
                    for k, v in record.items()
                }
                handle.write(json.dumps(clean, ensure_ascii=False, default=str) + "\n")


def _write_truth(path: Path, manifest: Manifest, eligible: np.ndarray, plans: list[_Plan]) -> None:
    """One row per (training instance, corrupted task), True exactly where the label changed."""
    ids = np.asarray(manifest.ids, dtype=object)[eligible]
    id_column, task_column, corrupted_column = [], [], []
    for plan in plans:
        id_column.extend(ids)
        task_column.extend([plan.task.name] * len(ids))
        corrupted_column.extend(np.isin(eligible, plan.chosen).tolist())
    table = pa.table([id_column, task_column, corrupted_column], schema=TRUTH_SCHEMA)
    pq.write_table(table, path)


def read_truth(path: str | Path) -> pd.DataFrame:
    """Read and check a corruption file: columns ``id`` (str), ``task`` (str), ``corrupted`` (bool).

    ``path`` may also be the folder :func:`corrupt` wrote (its ``corruption.parquet`` is read).

    Example:
        >>> truth = read_truth("/tmp/shapes-noisy/corruption.parquet")  # doctest: +SKIP
        >>> truth.groupby("task").corrupted.sum()  # doctest: +SKIP
    """
    path = Path(path)
    if path.is_dir() and (path / TRUTH_FILE).is_file():
        path = path / TRUTH_FILE
    if not path.is_file():
        raise TruthError(f"{path}: corruption file not found")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise TruthError(f"{path}: not a readable Parquet file: {exc}") from None
    missing = [name for name in TRUTH_SCHEMA.names if name not in table.column_names]
    if missing:
        raise TruthError(
            f"{path}: missing column {missing[0]!r}; a corruption file has the columns id, task, "
            f"corrupted (found: {', '.join(table.column_names)})"
        )
    checks = {
        "id": pa.types.is_string,
        "task": pa.types.is_string,
        "corrupted": pa.types.is_boolean,
    }
    for name, check in checks.items():
        column = table.column(name)
        if not (
            check(column.type) or (name != "corrupted" and pa.types.is_large_string(column.type))
        ):
            want = "boolean" if name == "corrupted" else "string"
            raise TruthError(f"{path}: column {name!r} must be {want}, found {column.type}")
        if column.null_count:
            raise TruthError(f"{path}: column {name!r} has {column.null_count} empty value(s)")
    frame = pd.DataFrame(
        {
            "id": table.column("id").to_pandas().astype(str),
            "task": table.column("task").to_pandas().astype(str),
            "corrupted": table.column("corrupted").to_pandas().astype(bool),
        }
    )
    duplicated = frame[frame.duplicated(["id", "task"])]
    if not duplicated.empty:
        row = duplicated.iloc[0]
        raise TruthError(f"{path}: id {row.id!r} appears more than once for task {row.task!r}")
    return frame


# --- a small TOML writer (tomllib only reads) ----------------------------------------------


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_dumps(data: dict[str, Any]) -> str:
    """Write a shallow TOML document: scalars, lists and nested tables (as a dataset card uses).

    ``tomllib.loads(toml_dumps(d)) == d`` for such documents.
    """
    lines: list[str] = []
    _toml_table(data, (), lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_table(table: dict[str, Any], path: tuple[str, ...], lines: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    if path and (scalars or not tables):
        lines += ["", f"[{'.'.join(_toml_key(k) for k in path)}]"]
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in scalars.items()]
    for key, value in tables.items():
        _toml_table(value, (*path, key), lines)


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} values to TOML: {value!r}")
