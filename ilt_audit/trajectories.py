"""The trajectory files of a run: one Parquet file per epoch, written atomically.

Schema (SPEC 5): ``epoch`` int32, ``id`` string, ``task`` string, ``log_sigma2`` float32,
``loss`` float32: one row per trained instance per task. ``loss`` is the instance's unweighted
task loss ``l_ik`` when it was last seen in a batch of that epoch.

Example:
    >>> read_trajectories("runs/shapes").groupby("task").log_sigma2.max()  # doctest: +SKIP
"""

from __future__ import annotations

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
_FILE = re.compile(r"^epoch-(\d{4,})(?:-rank(\d+))?\.parquet$")


def trajectories_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "trajectories"


def epoch_file(run_dir: Path, epoch: int, rank: int | None = None) -> Path:
    suffix = f"-rank{rank}" if rank is not None else ""
    return trajectories_dir(run_dir) / f"epoch-{epoch:04d}{suffix}.parquet"


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
    n, k = log_sigma2.shape
    table = pa.table(
        {
            "epoch": pa.array(np.full(n * k, epoch, dtype=np.int32)),
            "id": pa.array(np.repeat(np.asarray(ids, dtype=object), k), pa.string()),
            "task": pa.array(np.tile(np.asarray(tasks, dtype=object), n), pa.string()),
            "log_sigma2": pa.array(log_sigma2.astype(np.float32).reshape(-1)),
            "loss": pa.array(loss.astype(np.float32).reshape(-1)),
        },
        schema=SCHEMA,
    )
    path = epoch_file(run_dir, epoch, rank)
    write_atomic(path, lambda tmp: pq.write_table(table, tmp))
    return path


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
