"""The trajectory files of a run: one Parquet file per epoch, written atomically.

Schema (SPEC 5): ``epoch`` int32, ``id`` string, ``task`` string, ``log_sigma2`` float32,
``loss`` float32: one row per trained instance per task. ``loss`` is the instance's unweighted
task loss ``l_ik`` when it was last seen in a batch of that epoch.

Example:
    >>> read_trajectories("runs/shapes").groupby("task").log_sigma2.max()  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ilt_audit.errors import RunDirError
from ilt_audit.internal.files import write_atomic

SCHEMA = pa.schema(
    [
        ("epoch", pa.int32()),
        ("id", pa.string()),
        ("task", pa.string()),
        ("log_sigma2", pa.float32()),
        ("loss", pa.float32()),
    ]
)
KEYS_METADATA = b"ilt_audit.row_order"  # fingerprint of the (id, task) row order
_FILE = re.compile(r"^epoch-(\d{4,})(?:-rank(\d+))?\.parquet$")


def trajectories_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "trajectories"


def epoch_file(run_dir: Path, epoch: int, rank: int | None = None) -> Path:
    suffix = f"-rank{rank}" if rank is not None else ""
    return trajectories_dir(run_dir) / f"epoch-{epoch:04d}{suffix}.parquet"


class TrajectoryWriter:
    """Writes a run's epochs: the ``id`` and ``task`` columns are built once, as Arrow arrays.

    Each epoch then costs two float columns and one Parquet write, whatever N is. Rows are
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
    ) -> Path:
        """Write one epoch's (N, K) ``log σ²`` and losses, atomically."""
        if log_sigma2.shape != self.shape or loss.shape != self.shape:
            raise ValueError(
                f"expected ({self.shape}) arrays, got {log_sigma2.shape}, {loss.shape}"
            )
        rows = self.shape[0] * self.shape[1]
        table = pa.Table.from_arrays(
            [
                pa.array(np.full(rows, epoch, dtype=np.int32)),
                self.ids,
                self.tasks,
                pa.array(np.ascontiguousarray(log_sigma2, dtype=np.float32).reshape(-1)),
                pa.array(np.ascontiguousarray(loss, dtype=np.float32).reshape(-1)),
            ],
            schema=SCHEMA.with_metadata(self.metadata),
        )
        path = epoch_file(self.run_dir, epoch, rank)
        write_atomic(path, lambda tmp: pq.write_table(table, tmp))
        return path


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
) -> Path:
    """Write one epoch's (N, K) ``log σ²`` and losses as a tidy table, atomically."""
    return TrajectoryWriter(run_dir, ids, tasks).write(epoch, log_sigma2, loss, rank)


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


def read_trajectories(run_dir: str | Path, *, epochs: list[int] | None = None) -> pd.DataFrame:
    """The whole tidy trajectory table of a run (or of the given epochs)."""
    run_dir = Path(run_dir)
    files = epoch_files(run_dir)
    if not files:
        raise RunDirError(
            f"{run_dir}: no trajectory files; is this a run directory of `ilt-audit train`?"
        )
    chosen = [p for e in sorted(files) if epochs is None or e in epochs for p in files[e]]
    table = pa.concat_tables([pq.read_table(p, schema=SCHEMA) for p in chosen])
    return table.to_pandas()


def last_epoch(run_dir: Path) -> int:
    files = epoch_files(run_dir)
    return max(files) if files else 0
