"""What a run was trained from, so that ``--resume`` refuses inputs that changed since.

Two checks, both cheap, made in this one place before a resumed run reads or writes anything:

- the dataset card and its manifest, by content: their sha256, recorded in ``config.json``;
- every file the manifest names (images, masks, depth maps), by size and modification time:
  one ``stat`` a file (:func:`ilt_audit.dataset.files.file_stats`), recorded before the first
  epoch in ``RUN_DIR/inputs.parquet``, one row per file in table order::

      id string, column string, path string, size int64, mtime_ns int64

A features card names no files: its table is empty and the manifest's hash is the whole
fingerprint. A changed card or manifest always stops a resume (the rows and labels the
checkpoint was trained on are gone); changed files stop it unless ``accept_changed=True``.

Example:
    >>> files = open_dataset("card.toml", check_files=False).files  # doctest: +SKIP
    >>> check_files("runs/shapes", files, accept_changed=False)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ilt_audit.dataset.card import Card
from ilt_audit.dataset.manifest import Manifest
from ilt_audit.errors import RunDirError
from ilt_audit.internal.files import write_atomic

if TYPE_CHECKING:
    from ilt_audit.dataset.files import FileStats

INPUTS = "inputs.parquet"
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("column", pa.string()),
        ("path", pa.string()),  # as the manifest writes it, relative to the data folder
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
    ]
)


def record_files(manifest: Manifest, found: FileStats | None = None) -> pa.Table:
    """The fingerprint of every file the manifest names, in table order (see the module);
    ``found``: the files' :func:`~ilt_audit.dataset.files.file_stats`, when the caller took them."""
    if found is None:
        from ilt_audit.dataset.files import file_stats  # imports torch: only when stat-ing

        found = file_stats(manifest)
    n, c = found.stats.shape[:2]
    row = np.repeat(np.arange(n), c)  # (N*C,) row by row, columns in order within a row
    column = np.tile(np.arange(c), n)
    paths = pa.concat_arrays(found.paths) if c else pa.array([], pa.string())
    return pa.table(
        [
            pa.array(manifest.ids, pa.string()).take(row),
            pa.array(np.array(found.columns, dtype=object)[column], pa.string()),
            paths.take(column * n + row),
            found.stats[..., 0].ravel(),
            found.stats[..., 1].ravel(),
        ],
        schema=SCHEMA,
    )


def write_files(run_dir: Path, files: pa.Table) -> None:
    """Record the fingerprint in the run directory (atomically)."""
    write_atomic(Path(run_dir) / INPUTS, lambda tmp: pq.write_table(files, tmp))


def check_card(run_dir: Path, saved_config: dict[str, Any], card: Card) -> None:
    """Refuse to resume when the card or its manifest changed since the run started."""
    if saved_config["card"]["sha256"] != card.sha256():
        raise RunDirError(
            f"{run_dir}: the dataset card or its manifest changed since this run started "
            f"({saved_config['card']['path']}); start a new run instead of --resume"
        )


def check_files(run_dir: Path, files: pa.Table, *, accept_changed: bool) -> str | None:
    """Compare the files as they are now (:func:`record_files`) with the run's record.

    Raises :class:`RunDirError` naming the first changed file in table order, its row id and
    column, unless ``accept_changed``; then returns a warning saying how many changed (None when
    none did, or when the run predates the record).
    """
    path = Path(run_dir) / INPUTS
    if not path.is_file():  # a run written before runs recorded their files
        return None
    try:
        saved = pq.read_table(path, columns=["size", "mtime_ns"])
    except (OSError, pa.ArrowException) as exc:
        raise RunDirError(f"{path}: unreadable record of the run's files: {exc}") from None
    if saved.num_rows != files.num_rows:
        raise RunDirError(
            f"{path}: records {saved.num_rows} files but the manifest names {files.num_rows}; "
            "start a new run instead of --resume"
        )
    before = np.stack([saved[name].to_numpy() for name in ("size", "mtime_ns")], axis=1)
    now = np.stack([files[name].to_numpy() for name in ("size", "mtime_ns")], axis=1)
    changed = np.flatnonzero((before != now).any(axis=1))  # (M,) in table order
    if len(changed) == 0:
        return None
    first = int(changed[0])
    size_then, size_now = int(before[first, 0]), int(now[first, 0])
    how = (
        "is gone"
        if size_now < 0
        else f"is {size_now} bytes, was {size_then}"
        if size_now != size_then
        else "was modified"
    )
    what = (
        f"{len(changed)} of {files.num_rows} files the manifest names changed since this run "
        f"started; the first: row id {files['id'][first].as_py()!r}, column "
        f"{files['column'][first].as_py()!r}, file {files['path'][first].as_py()!r} {how}"
    )
    if not accept_changed:
        raise RunDirError(
            f"{run_dir}: {what}. Start a new run, or pass --accept-changed-files to resume "
            "with the files as they are now"
        )
    return f"{what}; resuming with the files as they are now (--accept-changed-files)"
