"""Trajectory files: the Parquet schema of SPEC 5, atomic writes, readers that skip temp files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ilt_audit.errors import RunDirError
from ilt_audit.trajectories import (
    SCHEMA,
    epoch_file,
    epoch_files,
    last_epoch,
    read_trajectories,
    write_epoch,
)

IDS = ["x1", "x2", "x3"]
TASKS = ["cls", "reg"]
EXPECTED_SCHEMA = [
    ("epoch", pa.int32()),
    ("id", pa.string()),
    ("task", pa.string()),
    ("log_sigma2", pa.float32()),
    ("loss", pa.float32()),
]


def _write(run, epoch, offset=0.0, **kwargs):
    log_sigma2 = np.arange(6, dtype=np.float64).reshape(3, 2) + offset  # (N, K)
    loss = -log_sigma2
    return write_epoch(run, epoch, IDS, TASKS, log_sigma2, loss, **kwargs)


def test_epoch_file_has_the_exact_schema_and_one_row_per_instance_and_task(tmp_path):
    path = _write(tmp_path, 1)
    assert path == tmp_path / "trajectories" / "epoch-0001.parquet"
    schema = pq.read_schema(path)
    assert [(f.name, f.type) for f in schema] == EXPECTED_SCHEMA
    assert [(f.name, f.type) for f in SCHEMA] == EXPECTED_SCHEMA
    frame = pq.read_table(path).to_pandas()
    assert len(frame) == len(IDS) * len(TASKS)
    # row-major: instance i, task k holds log_sigma2[i, k]
    assert frame.id.tolist() == ["x1", "x1", "x2", "x2", "x3", "x3"]
    assert frame.task.tolist() == TASKS * 3
    assert frame.log_sigma2.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert frame.loss.tolist() == [-0.0, -1.0, -2.0, -3.0, -4.0, -5.0]
    assert set(frame.epoch) == {1}


def test_pandas_reads_the_folder_as_one_table(tmp_path):
    for epoch in (1, 2, 3):
        _write(tmp_path, epoch, offset=epoch)
    frame = pd.read_parquet(tmp_path / "trajectories")
    assert len(frame) == 3 * 6
    assert sorted(frame.epoch.unique().tolist()) == [1, 2, 3]
    mine = read_trajectories(tmp_path)
    assert mine.epoch.tolist() == [1] * 6 + [2] * 6 + [3] * 6
    assert str(mine.epoch.dtype) == "int32" and str(mine.log_sigma2.dtype) == "float32"


def test_readers_ignore_leftover_temporary_files(tmp_path):
    for epoch in (1, 2):
        _write(tmp_path, epoch)
    folder = tmp_path / "trajectories"
    (folder / ".epoch-0003.parquet.tmp-123").write_bytes(b"PAR1 half a file")
    (folder / ".epoch-0002.parquet.tmp-99").write_bytes(b"")

    assert sorted(epoch_files(tmp_path)) == [1, 2]
    assert last_epoch(tmp_path) == 2
    assert sorted(read_trajectories(tmp_path).epoch.unique().tolist()) == [1, 2]
    assert sorted(pd.read_parquet(folder).epoch.unique().tolist()) == [1, 2]


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def broken(table, where, **kwargs):
        with open(where, "wb") as handle:
            handle.write(b"PAR1 partial")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        _write(tmp_path, 1)
    assert list((tmp_path / "trajectories").iterdir()) == []


def test_rewriting_an_epoch_replaces_it(tmp_path):
    _write(tmp_path, 1)
    _write(tmp_path, 1, offset=10)
    assert read_trajectories(tmp_path).log_sigma2.min() == 10.0


def test_rank_files_of_one_epoch_are_read_together(tmp_path):
    _write(tmp_path, 1, rank=0)
    _write(tmp_path, 1, rank=1, offset=100)
    assert epoch_file(tmp_path, 1, rank=1).name == "epoch-0001-rank1.parquet"
    assert [len(paths) for paths in epoch_files(tmp_path).values()] == [2]
    assert len(read_trajectories(tmp_path)) == 12


def test_reading_chosen_epochs(tmp_path):
    for epoch in (1, 2, 3):
        _write(tmp_path, epoch)
    assert sorted(read_trajectories(tmp_path, epochs=[1, 3]).epoch.unique().tolist()) == [1, 3]


def test_epochs_past_9999_keep_their_order(tmp_path):
    _write(tmp_path, 9999)
    _write(tmp_path, 10000)
    assert sorted(epoch_files(tmp_path)) == [9999, 10000]
    assert last_epoch(tmp_path) == 10000


def test_a_folder_without_trajectories_is_not_a_run(tmp_path):
    with pytest.raises(RunDirError, match="no trajectory files"):
        read_trajectories(tmp_path)
    assert last_epoch(tmp_path) == 0
