"""Plant wrong labels in a clean dataset on purpose, so that their detection can be measured.

:func:`corrupt` follows the paper's protocol (section 4.6) by default. For each requested task
it picks exactly ``round(fraction * N)`` of the training instances (rows with ``split == "train"``
when the card has a split column, otherwise all rows) and changes their label:

- classification and segmentation: one random permutation of the class ids that moves every
  class (a derangement), applied to the label, or to every labelled pixel of the mask, so every
  corrupted label really changes; ``ignore_index`` pixels are kept (a mask with no labelled
  pixel cannot change and is never chosen);
- regression: uniform noise whose range is ``[min, max]`` of the target column over the training
  rows;
- dense regression: uniform noise over ``[0, max]`` of the target over all training maps, drawn
  per pixel; the new map is a float32 ``.npy`` in the task's units (a 16-bit PNG's values divided
  by ``scale``), and since ``.npy`` maps are never scaled the card keeps its ``scale``.
- multi-label (the paper has none): one tag the label has replaced by one it lacks
  (``swap-tag``; why in :mod:`ilt_audit.corruption.modes`), so every corrupted tag set changes
  and keeps its size; the set is written back in its column's form.

``mode`` plants other, structured errors instead (a near class, a dropped object, a mask drawn
a few pixels off, a value in the wrong unit). The modes themselves, each with its ``plan`` and
``apply``, live in :mod:`ilt_audit.corruption.modes` (:data:`~ilt_audit.corruption.modes.MODES`);
this module resolves and checks the options, picks the rows, and writes the dataset and the
truth file, which :func:`read_truth` reads back.

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
files for the corrupted dense labels, and ``corruption.parquet`` (``id, task, corrupted`` and, on
the changed rows, ``mode, magnitude, detail``) naming exactly the labels that were changed.
Everything is written into a temporary sibling folder that is renamed onto ``out`` at the end,
so a crash leaves nothing half-written.

Example:
    >>> result = corrupt("sample_manifests/shapes/card.toml", tasks=["shape"], fraction=0.4,
    ...                  out="/tmp/shapes-noisy")  # doctest: +SKIP
    >>> result.counts  # doctest: +SKIP
    {'shape': 240}
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ilt_audit.corruption.modes import FILLS, MODES, NOISES, Mode, Setting
from ilt_audit.dataset.card import Card, TaskSpec
from ilt_audit.dataset.derived import Output, check_out, write_derived
from ilt_audit.dataset.manifest import Manifest
from ilt_audit.dataset.opening import open_dataset
from ilt_audit.errors import CardError, OptionError, TruthError

TRUTH_FILE = "corruption.parquet"
# What every corruption file holds (a file written before the modes holds only this) ...
TRUTH_SCHEMA = pa.schema([("id", pa.string()), ("task", pa.string()), ("corrupted", pa.bool_())])
# ... and what corrupt() writes: each changed label's mode, magnitude and what changed
WRITTEN_TRUTH_SCHEMA = (
    TRUTH_SCHEMA.append(pa.field("mode", pa.string()))
    .append(
        pa.field("magnitude", pa.float64())  # NaN where the mode takes none, and on clean rows
    )
    .append(pa.field("detail", pa.string()))
)  # e.g. "ant→bee", "dx=3,dy=-3"; null on clean rows


@dataclass(frozen=True)
class CorruptionResult:
    """Where :func:`corrupt` wrote the new dataset, and how many labels of each task it changed."""

    card_path: Path  # the new dataset card
    truth_path: Path  # corruption.parquet: id, task, corrupted
    counts: dict[str, int]  # task -> number of corrupted labels, in the card's task order
    eligible: int  # N: the rows that could be corrupted (the training rows)


def corrupt(
    card: Card | str | Path,
    *,
    tasks: Sequence[str],
    fraction: float,
    seed: int = 0,
    out: str | Path,
    noise: str = "add",
    mode: str | Mapping[str | None, str] | None = None,
    magnitude: float | Mapping[str | None, float] | None = None,
    drop_to: str = "background",
    confusion: str | Path | None = None,
    pairs: str | Path | None = None,
) -> CorruptionResult:
    """Write a copy of a dataset with a fraction of the labels of some tasks corrupted.

    ``mode`` chooses the kind of error (see :data:`MODES`): a mode name applies to every task
    whose type has it (the others keep the paper's mode), a mapping ``{task: mode}`` sets it per
    task, and the key ``None`` of a mapping is the bare mode. ``magnitude`` likewise (a number,
    or ``{task: number}``), for the modes that take one. ``drop_to`` is what ``drop-object`` and
    a segmentation ``shift`` leave behind: ``"background"`` (class 0) or ``"ignore"`` (the
    task's ``ignore_index``). ``confusion`` is a CSV confusion matrix for the ``confusion``
    mode (without it, a cross-validated model's confusion is used), ``pairs`` a CSV mapping
    ``from,to`` for the ``pairs`` mode (without it, class i becomes class i + 1).

    Everything is validated (card, manifest, options, the label files to corrupt) before anything
    is written; on any error nothing is left behind.

    Example:
        >>> corrupt("sample_manifests/penguins/card.toml", tasks=["species", "body_mass"],
        ...         fraction=0.2, seed=1, out="/tmp/penguins-noisy").counts  # doctest: +SKIP
        {'species': 67, 'body_mass': 67}
        >>> corrupt("sample_manifests/shapes/card.toml", tasks=["shape", "seg"], fraction=0.4,
        ...         mode={"shape": "confusion", "seg": "drop-object"},
        ...         out="/tmp/shapes-realistic").counts  # doctest: +SKIP
        {'shape': 240, 'seg': 240}
    """
    manifest = open_dataset(card).manifest
    card = manifest.card
    specs = _check_options(manifest, tasks, fraction, seed, noise)
    settings = _resolve_settings(
        specs,
        seed,
        noise=noise,
        mode=mode,
        magnitude=magnitude,
        drop_to=drop_to,
        confusion=confusion,
        pairs=pairs,
    )
    out = Path(out).resolve()
    check_out(out)

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
        setting = settings[task.name]
        candidates, stats = setting.method.plan(manifest, task, eligible, setting)
        if len(candidates) < k:
            raise CardError(
                f"{card.table_path}: task {task.name!r}: only {len(candidates)} of the {n} "
                f"training instances have a label that can be changed, fewer than the {k} to "
                f"corrupt (mode {setting.mode!r})"
            )
        rng = np.random.default_rng([seed, zlib.crc32(task.name.encode("utf-8"))])
        chosen = np.sort(rng.choice(candidates, size=k, replace=False))
        plans.append(_Plan(task, setting, stats, chosen, rng))
    names = ", ".join(t.name for t in specs)
    note = f"tasks: {names}; fraction: {fraction}; seed: {seed}; noise: {noise}"
    chosen_modes = [
        f"{t.name}={settings[t.name].describe()}" for t in specs if not settings[t.name].default
    ]
    if chosen_modes:  # the paper's modes keep the note, and the card, as they always were
        note += f"; modes: {', '.join(chosen_modes)}"

    def edit(output: Output) -> None:
        for plan in plans:
            method = plan.setting.method
            plan.details.extend(
                method.apply(output, plan.task, plan.stats, plan.chosen, plan.rng, plan.setting)
            )

    write_derived(
        manifest,
        out,
        command="corrupt",
        note=note,
        edit=edit,
        record=lambda staging: _write_truth(staging / TRUTH_FILE, manifest, eligible, plans),
    )
    counts = {plan.task.name: len(plan.chosen) for plan in plans}
    return CorruptionResult(out / card.path.name, out / TRUTH_FILE, counts, n)


@dataclass(frozen=True)
class _Plan:
    """What to do to one task: its settings, statistics (see ``Mode.plan``), rows to change."""

    task: TaskSpec
    setting: Setting
    stats: Any
    chosen: np.ndarray  # (k,) sorted row numbers
    rng: np.random.Generator  # the task's generator, after drawing ``chosen``
    details: list[str] = field(default_factory=list)  # filled by apply: one per chosen row


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


def per_task_option(
    values: Sequence[str], option: str, *, number: bool = False
) -> dict[str | None, Any]:
    """Parse a repeatable option given as ``VALUE`` (every task it fits) or ``TASK=VALUE``.

    The result has the key ``None`` for the bare value; ``number`` reads the values as floats.

    Example:
        >>> per_task_option(["shift", "seg=drop-object"], "--mode")
        {None: 'shift', 'seg': 'drop-object'}
    """
    parsed: dict[str | None, Any] = {}
    for value in values:
        task, sep, text = value.rpartition("=")
        key = task if sep else None
        if key in parsed:
            which = "a bare value" if key is None else f"task {key!r}"
            raise OptionError(f"{option} is given twice for {which}: {parsed[key]!r} and {text!r}")
        if number:
            try:
                parsed[key] = float(text)
            except ValueError:
                raise OptionError(f"{option} {value!r}: {text!r} is not a number") from None
        else:
            parsed[key] = text
    return parsed


def _per_task(value: Any, specs: list[TaskSpec], what: str) -> tuple[Any, dict[str, Any]]:
    """Split a bare-or-per-task option into its bare value and ``{task: value}``."""
    if not isinstance(value, Mapping):
        return value, {}
    names = [t.name for t in specs]
    per_task = {key: v for key, v in value.items() if key is not None}
    for key in per_task:
        if key not in names:
            raise OptionError(
                f"{what} names task {key!r}, which is not corrupted; the tasks corrupted are: "
                f"{', '.join(names)}"
            )
    return value.get(None), per_task


def _modes_of(task: TaskSpec) -> str:
    return f"task {task.name!r} ({task.type}) takes {', '.join(MODES[task.type])}"


def _resolve_settings(
    specs: list[TaskSpec],
    seed: int,
    *,
    noise: str,
    mode: Any,
    magnitude: Any,
    drop_to: str,
    confusion: str | Path | None,
    pairs: str | Path | None,
) -> dict[str, Setting]:
    """Each task's mode and options, from the bare and per-task values; every misfit refused."""
    bare_mode, task_modes = _per_task(mode, specs, "--mode")
    for name, chosen in task_modes.items():
        task = next(t for t in specs if t.name == name)
        if chosen not in MODES[task.type]:
            raise OptionError(f"mode {chosen!r} does not apply to {_modes_of(task)}")
    if bare_mode is not None and not any(
        bare_mode in MODES[t.type] for t in specs if t.name not in task_modes
    ):
        raise OptionError(
            f"mode {bare_mode!r} applies to none of the tasks: "
            + "; ".join(_modes_of(t) for t in specs)
        )
    modes = {
        t.name: task_modes.get(
            t.name, bare_mode if bare_mode in MODES[t.type] else next(iter(MODES[t.type]))
        )
        for t in specs
    }
    bare_size, task_sizes = _per_task(magnitude, specs, "--magnitude")
    for name in task_sizes:
        if MODES[next(t for t in specs if t.name == name).type][modes[name]].magnitude is None:
            raise OptionError(f"--magnitude: mode {modes[name]!r} of task {name!r} takes none")
    takers = [t.name for t in specs if MODES[t.type][modes[t.name]].magnitude is not None]
    if bare_size is not None and not set(takers) - set(task_sizes):
        chosen = ", ".join(f"{name}: {m}" for name, m in modes.items())
        raise OptionError(f"--magnitude applies to none of the tasks' modes ({chosen})")
    if drop_to not in FILLS:
        raise OptionError(f"unknown --drop-to {drop_to!r}; choose one of {', '.join(FILLS)}")
    settings = {}
    for task in specs:
        method = MODES[task.type][modes[task.name]]
        size = task_sizes.get(task.name, bare_size)
        if method.magnitude is None:
            size = None
        elif size is None:
            size = method.magnitude
        else:
            size = _check_magnitude(task, modes[task.name], method, size)
        settings[task.name] = Setting(
            modes[task.name],
            method,
            size,
            default=modes[task.name] == next(iter(MODES[task.type])),
            seed=seed,
            drop_to=drop_to,
            confusion=None if confusion is None else Path(confusion),
            pairs=None if pairs is None else Path(pairs),
            noise=NOISES[noise],
        )
    uses = {  # an option is refused where no task's mode reads it
        "--drop-to": drop_to != "background",
        "--confusion": confusion is not None,
        "--pairs": pairs is not None,
    }
    readers = {
        "--drop-to": ("segmentation", ("drop-object", "shift")),
        "--confusion": ("classification", ("confusion",)),
        "--pairs": ("classification", ("pairs",)),
    }
    for option, given in uses.items():
        kind, names = readers[option]
        if given and not any(t.type == kind and modes[t.name] in names for t in specs):
            raise OptionError(
                f"{option} applies only to {kind} tasks in mode {' or '.join(names)}; "
                f"the modes are: {', '.join(f'{n}: {m}' for n, m in modes.items())}"
            )
    for task in specs:
        if modes[task.name] == "swap" and len(task.columns) < 2:
            raise OptionError(
                f"mode 'swap' exchanges two columns, and task {task.name!r} has one "
                f"({task.column!r}); {_modes_of(task)}"
            )
        if (
            task.type == "segmentation"
            and modes[task.name] in ("drop-object", "shift")
            and drop_to == "ignore"
            and task.ignore_index is None
        ):
            raise OptionError(
                f"--drop-to ignore: task {task.name!r} has no ignore_index in its card"
            )
    return settings


def _check_magnitude(task: TaskSpec, mode: str, method: Mode, value: Any) -> float:
    where = f"--magnitude of task {task.name!r} (mode {mode!r})"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise OptionError(f"{where} must be a number, got {value!r}")
    if method.pixels and (value != int(value) or value < 1):
        raise OptionError(f"{where} is a number of pixels, a whole number >= 1; got {value!r}")
    if method.share and not 0 < value < 1:
        raise OptionError(f"{where} is a share of the map, strictly between 0 and 1; got {value!r}")
    if value <= 0:
        raise OptionError(f"{where} must be positive, got {value!r}")
    return float(value)


def _eligible_rows(manifest: Manifest) -> np.ndarray:
    """Rows that may be corrupted: the training rows (paper: "a subset of training dataset")."""
    card = manifest.card
    if card.split is None:
        return np.arange(len(manifest.frame))
    rows = np.flatnonzero((manifest.frame[card.split] == "train").to_numpy())
    if len(rows) == 0:
        raise CardError(f"{card.table_path}: column {card.split!r}: no row has split 'train'")
    return rows


def _write_truth(path: Path, manifest: Manifest, eligible: np.ndarray, plans: list[_Plan]) -> None:
    """One row per (training instance, corrupted task), True exactly where the label changed,
    with the mode, magnitude and what changed on the changed ones."""
    ids = np.asarray(manifest.ids, dtype=object)[eligible]
    columns: dict[str, list[Any]] = {name: [] for name in WRITTEN_TRUTH_SCHEMA.names}
    for plan in plans:
        changed = np.isin(eligible, plan.chosen)
        detail = np.full(len(eligible), None, dtype=object)
        detail[np.searchsorted(eligible, plan.chosen)] = [d or None for d in plan.details]
        size = math.nan if plan.setting.magnitude is None else plan.setting.magnitude
        columns["id"].extend(ids)
        columns["task"].extend([plan.task.name] * len(ids))
        columns["corrupted"].extend(changed.tolist())
        columns["mode"].extend(plan.setting.mode if c else None for c in changed)
        columns["magnitude"].extend(np.where(changed, size, math.nan).tolist())
        columns["detail"].extend(detail.tolist())
    pq.write_table(pa.table(columns, schema=WRITTEN_TRUTH_SCHEMA), path)


def read_truth(path: str | Path) -> pd.DataFrame:
    """Read and check a corruption file: columns ``id`` (str), ``task`` (str), ``corrupted`` (bool),
    ``mode`` (str), ``magnitude`` (float) and ``detail`` (str).

    ``path`` may also be the folder :func:`corrupt` wrote (its ``corruption.parquet`` is read). A
    file written before the modes existed has no ``mode``, ``magnitude`` or ``detail``: they read
    as empty (None, NaN, None).

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
    text = ("string", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t))
    checks = {  # column -> (what it must be, the check of its Arrow type)
        "id": text,
        "task": text,
        "corrupted": ("boolean", pa.types.is_boolean),
        "mode": text,
        "magnitude": ("a number", lambda t: pa.types.is_floating(t) or pa.types.is_integer(t)),
        "detail": text,
    }
    for name, (want, check) in checks.items():
        if name not in table.column_names:
            continue
        column = table.column(name)
        if not (
            check(column.type) or pa.types.is_null(column.type) and name not in TRUTH_SCHEMA.names
        ):
            raise TruthError(f"{path}: column {name!r} must be {want}, found {column.type}")
        if column.null_count and name in TRUTH_SCHEMA.names:
            raise TruthError(f"{path}: column {name!r} has {column.null_count} empty value(s)")
    n = table.num_rows
    optional = {
        "mode": lambda c: pd.Series(c.to_pylist(), dtype=object),  # None where empty
        "magnitude": lambda c: c.to_pandas().astype(np.float64),
        "detail": lambda c: pd.Series(c.to_pylist(), dtype=object),
    }
    empty = {"mode": [None] * n, "magnitude": np.full(n, math.nan), "detail": [None] * n}
    frame = pd.DataFrame(
        {
            "id": table.column("id").to_pandas().astype(str),
            "task": table.column("task").to_pandas().astype(str),
            "corrupted": table.column("corrupted").to_pandas().astype(bool),
            **{
                name: read(table.column(name)) if name in table.column_names else empty[name]
                for name, read in optional.items()
            },
        }
    )
    duplicated = frame[frame.duplicated(["id", "task"])]
    if not duplicated.empty:
        row = duplicated.iloc[0]
        raise TruthError(f"{path}: id {row.id!r} appears more than once for task {row.task!r}")
    return frame
