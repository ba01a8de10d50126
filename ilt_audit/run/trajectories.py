"""The trajectory files of a run: one Parquet file per epoch, written atomically.

Schema (SPEC 5): ``epoch`` int32, ``id`` string, ``task`` string, ``log_sigma2`` float32,
``loss`` float32, then one float32 column per evidence signal (:data:`ilt_audit.run.evidence.COLUMNS`:
``margin``, ``p_label``, ``predicted``, ``missing``, ``extra``, ``iou``, ``residual``,
``log_ratio``, ``holes``): one row per trained instance per task. ``loss`` is the instance's
unweighted task loss ``l_ik`` when it was last seen in a batch of that epoch; the evidence comes
from that same forward pass, and a signal its task type does not have is NaN. Files written
before a column existed read as if the column held NaN.

Example:
    >>> read_trajectories("runs/shapes").groupby("task").log_sigma2.max()  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ilt_audit.errors import RunDirError
from ilt_audit.internal.files import Staging, write_atomic
from ilt_audit.run.evidence import COLUMNS as EVIDENCE_COLUMNS

SCHEMA = pa.schema(
    [
        ("epoch", pa.int32()),
        ("id", pa.string()),
        ("task", pa.string()),
        ("log_sigma2", pa.float32()),
        ("loss", pa.float32()),
        *((column, pa.float32()) for column in EVIDENCE_COLUMNS),
    ]
)
OPTIONAL_COLUMNS = EVIDENCE_COLUMNS  # absent from older files: read as NaN
KEYS_METADATA = b"ilt_audit.row_order"  # fingerprint of the (id, task) row order
_FILE = re.compile(r"^epoch-(\d{4,})(?:-rank(\d+))?\.parquet$")
VALUE_COLUMNS = ("log_sigma2", "loss", *EVIDENCE_COLUMNS)
_ROW = "__row"  # a column of row numbers, carried through joins


def trajectories_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "trajectories"


def epoch_file(run_dir: Path, epoch: int, rank: int | None = None) -> Path:
    suffix = f"-rank{rank}" if rank is not None else ""
    return trajectories_dir(run_dir) / f"epoch-{epoch:04d}{suffix}.parquet"


class TrajectoryWriter:
    """Writes a run's epochs: the ``id`` and ``task`` columns are built once, as Arrow arrays.

    Each epoch then costs three float columns and one Parquet write, whatever N is. Rows are
    instance-major, in the order of ``ids`` (row ``i·K + k`` is instance ``i``, task ``k``); the
    file's metadata carries a fingerprint of that order so that readers can line epochs up without
    joining on the ids.
    """

    def __init__(self, run_dir: Path, ids: list[str] | pa.Array, tasks: list[str]) -> None:
        self.run_dir = Path(run_dir)
        id_array = ids if isinstance(ids, pa.Array) else pa.array(ids, pa.string())
        n, k = len(id_array), len(tasks)
        self.shape = (n, k)
        self.ids = id_array.take(pa.array(np.repeat(np.arange(n, dtype=np.int64), k)))
        task_index = pa.array(np.tile(np.arange(k, dtype=np.int32), n))
        self.tasks = pa.DictionaryArray.from_arrays(task_index, pa.array(tasks, pa.string())).cast(
            pa.string()
        )
        self.metadata = {KEYS_METADATA: _fingerprint(id_array, tasks)}

    def write(
        self,
        epoch: int,
        log_sigma2: np.ndarray,
        loss: np.ndarray,
        rank: int | None = None,
        *,
        margin: np.ndarray | None = None,
        evidence: Mapping[str, np.ndarray] | None = None,
        into: Staging | None = None,
    ) -> Path:
        """Write one epoch's (N, K) ``log σ²``, losses and evidence columns (missing: NaN),
        atomically. ``margin`` is the evidence column of that name; with ``into``, the file is
        one of the files staged together (:func:`~ilt_audit.internal.files.staged`)."""
        given = dict(evidence or {})
        if margin is not None:
            given["margin"] = margin
        unknown = [name for name in given if name not in EVIDENCE_COLUMNS]
        if unknown:
            raise ValueError(f"no evidence column {unknown[0]!r}; they are {EVIDENCE_COLUMNS}")
        shapes = [a.shape for a in (log_sigma2, loss, *given.values())]
        if any(shape != self.shape for shape in shapes):
            raise ValueError(f"expected ({self.shape}) arrays, got {', '.join(map(str, shapes))}")
        rows = self.shape[0] * self.shape[1]
        values = [log_sigma2, loss, *(given.get(name) for name in EVIDENCE_COLUMNS)]
        arrays = [_floats(v, rows) if v is not None else _nan_column(rows) for v in values]
        table = pa.Table.from_arrays(
            [pa.array(np.full(rows, epoch, dtype=np.int32)), self.ids, self.tasks, *arrays],
            schema=SCHEMA.with_metadata(self.metadata),
        )
        path = epoch_file(self.run_dir, epoch, rank)
        if into is not None:
            into.write(path, lambda handle: pq.write_table(table, handle), make_folder=True)
        else:
            write_atomic(path, lambda tmp: pq.write_table(table, tmp), make_folder=True)
        return path


def _floats(values: np.ndarray, rows: int) -> pa.Array:
    return pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(rows))


def _nan_column(rows: int) -> pa.Array:
    return pa.array(np.full(rows, np.nan, dtype=np.float32))


def _fingerprint(ids: pa.Array, tasks: list[str]) -> str:
    """A hash of the row order (ids, then tasks): equal fingerprints mean rows line up."""
    digest = hashlib.sha256()
    for buffer in pa.concat_arrays([ids, pa.array(tasks, pa.string())]).buffers():
        if buffer is not None:
            digest.update(buffer)
    digest.update(f"{len(ids)}:{len(tasks)}".encode())
    return digest.hexdigest()


def write_epoch(
    run_dir: Path,
    epoch: int,
    ids: list[str],
    tasks: list[str],
    log_sigma2: np.ndarray,
    loss: np.ndarray,
    rank: int | None = None,
    *,
    margin: np.ndarray | None = None,
    evidence: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write one epoch's (N, K) ``log σ²``, losses and evidence as a tidy table, atomically."""
    writer = TrajectoryWriter(run_dir, ids, tasks)
    return writer.write(epoch, log_sigma2, loss, rank, margin=margin, evidence=evidence)


def epoch_files(run_dir: Path) -> dict[int, list[Path]]:
    """The finished trajectory files of a run by epoch (temporary files are ignored)."""
    folder = trajectories_dir(run_dir)
    found: dict[int, list[Path]] = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            match = _FILE.match(path.name)
            if match:
                found.setdefault(int(match.group(1)), []).append(path)
    return found


def run_epochs(run_dir: str | Path) -> list[int]:
    """The finished epochs of a run, ascending; a :class:`RunDirError` when there is none."""
    epochs = sorted(epoch_files(Path(run_dir)))
    if not epochs:
        raise RunDirError(
            f"{run_dir}: no trajectory files; is this a run directory of `ilt-audit train`?"
        )
    return epochs


def _chosen(run_dir: Path, epochs: Iterable[int] | None) -> dict[int, list[Path]]:
    """The files of the chosen epochs (all when None), by epoch in ascending order."""
    files = epoch_files(run_dir)
    known = run_epochs(run_dir)
    wanted = known if epochs is None else sorted(set(epochs))
    missing = [e for e in wanted if e not in files]
    if missing:
        raise RunDirError(
            f"{run_dir}: no trajectory file for epoch {missing[0]}; the run's last epoch is "
            f"{known[-1]}"
        )
    return {e: files[e] for e in wanted}


def _read_file(path: Path, columns: list[str]) -> pa.Table:
    """Some columns of one trajectory file; ``task`` comes back dictionary-encoded (it is stored so).

    A column of :data:`OPTIONAL_COLUMNS` that the file lacks (written before it existed) comes
    back as NaN.
    """
    with _reading(path):
        file = pq.ParquetFile(path, read_dictionary=["task"])
        stored = set(file.schema_arrow.names)
        missing = [c for c in columns if c not in stored and c in OPTIONAL_COLUMNS]
        table = file.read(columns=[c for c in columns if c not in missing])
        rows = file.metadata.num_rows
    for name in missing:
        table = table.append_column(name, pa.array(np.full(rows, np.nan, dtype=np.float32)))
    return table.select(columns).cast(_schema(columns, dictionary=True))


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """A file that cannot be read is an error of the run directory, named, not a crash."""
    try:
        yield
    except (pa.ArrowException, OSError) as exc:
        raise RunDirError(f"{path}: unreadable trajectory file: {exc}") from None


def _schema(columns: list[str], *, dictionary: bool = False) -> pa.Schema:
    """:data:`SCHEMA`'s fields of ``columns``; with ``dictionary``, ``task`` dictionary-encoded."""
    fields = [SCHEMA.field(name) for name in columns]
    if dictionary:
        fields = [
            f.with_type(pa.dictionary(pa.int32(), pa.string())) if f.name == "task" else f
            for f in fields
        ]
    return pa.schema(fields)


def _key_mask(
    table: pa.Table, tasks: Collection[str] | None, ids: Collection[str] | pa.Array | None
) -> np.ndarray | None:
    """Rows of ``table`` whose task is in ``tasks`` and id in ``ids``: (rows,) bool; None: all."""
    mask = None
    for column, values in (("task", tasks), ("id", ids)):
        if values is not None:
            found = _is_in(table[column], values)
            mask = found if mask is None else mask & found
    return mask


def _is_in(column: pa.ChunkedArray, values: Collection[str] | pa.Array) -> np.ndarray:
    value_set = values if isinstance(values, pa.Array) else pa.array(list(values), pa.string())
    if not pa.types.is_dictionary(column.type):
        return pc.is_in(column, value_set=value_set).to_numpy(zero_copy_only=False)
    combined = column.combine_chunks()  # a dictionary column: test each distinct value once
    known = pc.is_in(combined.dictionary, value_set=value_set).to_numpy(zero_copy_only=False)
    return known[combined.indices.to_numpy(zero_copy_only=False)]


def read_epochs(
    run_dir: str | Path,
    *,
    epochs: Iterable[int] | None = None,
    columns: Iterable[str] | None = None,
    tasks: Collection[str] | None = None,
    ids: Collection[str] | pa.Array | None = None,
) -> pa.Table:
    """Some columns of some epochs as one Arrow table, in file order (epoch by epoch).

    Only the files of ``epochs`` (all when None) and only ``columns`` (the whole schema when None)
    are read; ``tasks`` and ``ids`` keep the rows of those tasks and instances. Columns have the
    types of :data:`SCHEMA`.

    Example:
        >>> last = read_epochs("runs/shapes", epochs=[30], columns=["id", "log_sigma2"])  # doctest: +SKIP
        >>> read_epochs("runs/shapes", columns=["epoch", "loss"], ids=["s007"])  # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    names = list(SCHEMA.names if columns is None else columns)
    unknown = [name for name in names if name not in SCHEMA.names]
    if unknown:
        raise ValueError(f"no trajectory column {unknown[0]!r}; the columns are {SCHEMA.names}")
    filters = [c for c, v in (("task", tasks), ("id", ids)) if v is not None and c not in names]
    parts = []
    for paths in _chosen(run_dir, epochs).values():
        for path in paths:
            table = _read_file(path, names + filters)
            mask = _key_mask(table, tasks, ids)
            parts.append((table if mask is None else table.filter(mask)).select(names))
    return pa.concat_tables(parts).cast(_schema(names))


def read_trajectories(
    run_dir: str | Path,
    *,
    epochs: Iterable[int] | None = None,
    columns: Iterable[str] | None = None,
    tasks: Collection[str] | None = None,
    ids: Collection[str] | None = None,
) -> pd.DataFrame:
    """The tidy trajectory table of a run as a DataFrame: :func:`read_epochs`, in pandas.

    Every epoch of a large run in one frame is large (90 million rows for a million instances, 3
    tasks and 30 epochs): choose the epochs and columns, or use :func:`read_matrix`.
    """
    return read_epochs(run_dir, epochs=epochs, columns=columns, tasks=tasks, ids=ids).to_pandas()


@dataclass(frozen=True, eq=False)  # eq=False: it holds arrays
class TrajectoryMatrix:
    """One value column of some epochs, lined up per (id, task): the keys once, the values (E, R).

    ``values[e, r]`` is the value of ``keys`` row ``r`` in epoch ``epochs[e]``; NaN where that
    epoch has no row for the key.
    """

    keys: pa.Table  # id (string), task (dictionary of strings): R rows
    epochs: tuple[int, ...]
    values: np.ndarray  # (E, R) float32
    aligned: bool  # True: the row-order fingerprints lined the epochs up, without a join

    def task_codes(self) -> tuple[list[str], np.ndarray]:
        """The task names and, per row, the index of its task among them: (R,) int32."""
        return task_codes(self.keys)


def task_codes(keys: pa.Table) -> tuple[list[str], np.ndarray]:
    """The task names of a key table and, per row, the index of its task among them."""
    column = keys["task"]
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    combined = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    codes = combined.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return combined.dictionary.to_pylist(), codes


def _fingerprints(paths: list[Path]) -> tuple[bytes | None, ...]:
    """The row-order fingerprints of an epoch's files (None for a file written without one)."""
    found = []
    for path in paths:
        with _reading(path):
            found.append((pq.read_schema(path).metadata or {}).get(KEYS_METADATA))
    return tuple(found)


def read_matrix(
    run_dir: str | Path,
    column: str,
    *,
    epochs: Iterable[int] | None = None,
    tasks: Collection[str] | None = None,
    ids: Collection[str] | pa.Array | None = None,
) -> TrajectoryMatrix:
    """One value column (``log_sigma2``, ``loss`` or an evidence column) of some epochs as an
    (E, R) float32 matrix.

    When every chosen epoch's files carry the same row-order fingerprint (runs written by
    :class:`TrajectoryWriter`), the keys are read once and each epoch costs one float column.
    Otherwise (files from before the fingerprint, or epochs whose rows differ) each epoch is
    joined on ``(id, task)``; the keys are then every key of the chosen epochs, in order of first
    appearance.

    Example:
        >>> m = read_matrix("runs/shapes", "log_sigma2", epochs=range(23, 31))  # doctest: +SKIP
        >>> m.values.mean(axis=0)  # the mean of the last 8 epochs, per (id, task)  # doctest: +SKIP
    """
    if column not in VALUE_COLUMNS:
        raise ValueError(
            f"read_matrix reads a value column ({', '.join(VALUE_COLUMNS)}), not {column!r}"
        )
    chosen = _chosen(Path(run_dir), epochs)
    signatures = {_fingerprints(paths) for paths in chosen.values()}
    if len(signatures) == 1 and None not in next(iter(signatures)):
        return _aligned(chosen, column, tasks, ids)
    return _joined(chosen, column, tasks, ids)


def _aligned(
    chosen: dict[int, list[Path]],
    column: str,
    tasks: Collection[str] | None,
    ids: Collection[str] | pa.Array | None,
) -> TrajectoryMatrix:
    """Every epoch has the same rows in the same order: keys once, then one column per epoch."""
    first = next(iter(chosen.values()))
    keys = pa.concat_tables([_read_file(p, ["id", "task"]) for p in first])
    mask = _key_mask(keys, tasks, ids)
    rows = None
    if mask is not None:
        rows = np.flatnonzero(mask)
        keys = keys.take(pa.array(rows))
    values = np.empty((len(chosen), keys.num_rows), dtype=np.float32)  # (E, R)
    for e, paths in enumerate(chosen.values()):
        epoch = np.concatenate(
            [_read_file(p, [column])[column].to_numpy() for p in paths]
        )  # (all rows,)
        values[e] = epoch if rows is None else epoch[rows]
    return TrajectoryMatrix(keys.combine_chunks(), tuple(chosen), values, aligned=True)


def _joined(
    chosen: dict[int, list[Path]],
    column: str,
    tasks: Collection[str] | None,
    ids: Collection[str] | pa.Array | None,
) -> TrajectoryMatrix:
    """Rows may differ between epochs: collect the keys, then join each epoch on (id, task)."""

    def rows_of(paths: list[Path], names: list[str]) -> pa.Table:
        table = pa.concat_tables([_read_file(p, names) for p in paths])
        table = table.cast(_schema(names))  # plain strings, to join on
        mask = _key_mask(table, tasks, ids)
        return table if mask is None else table.filter(mask)

    keys = None
    for paths in chosen.values():  # the keys of every chosen epoch, in order of first appearance
        found = rows_of(paths, ["id", "task"])
        keys = _distinct(found if keys is None else pa.concat_tables([keys, found]))
    assert keys is not None
    indexed = keys.append_column(_ROW, pa.array(np.arange(keys.num_rows, dtype=np.int64)))
    values = np.full((len(chosen), keys.num_rows), np.nan, dtype=np.float32)  # (E, R)
    for e, paths in enumerate(chosen.values()):
        joined = rows_of(paths, ["id", "task", column]).join(
            indexed, ["id", "task"], join_type="inner"
        )
        values[e, joined[_ROW].to_numpy()] = joined[column].to_numpy()
    keys = keys.cast(_schema(["id", "task"], dictionary=True))
    return TrajectoryMatrix(keys.combine_chunks(), tuple(chosen), values, aligned=False)


def _distinct(keys: pa.Table) -> pa.Table:
    """The distinct (id, task) pairs of a table, in order of first appearance."""
    return keys.group_by(["id", "task"], use_threads=False).aggregate([])


def last_epoch(run_dir: Path) -> int:
    files = epoch_files(run_dir)
    return max(files) if files else 0
