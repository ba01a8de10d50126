"""Trajectory files: the Parquet schema of SPEC 5, atomic writes, readers that skip temp files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ilt_audit.errors import OutputError, RunDirError
from ilt_audit.run.trajectories import (
    SCHEMA,
    epoch_file,
    epoch_files,
    last_epoch,
    read_epochs,
    read_matrix,
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
    ("margin", pa.float32()),
    ("p_label", pa.float32()),
    ("predicted", pa.float32()),
    ("missing", pa.float32()),
    ("extra", pa.float32()),
    ("iou", pa.float32()),
    ("residual", pa.float32()),
    ("log_ratio", pa.float32()),
    ("holes", pa.float32()),
    ("missing_tag", pa.float32()),
    ("missing_tag_index", pa.float32()),
    ("extra_tag", pa.float32()),
    ("extra_tag_index", pa.float32()),
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
    with pytest.raises(OutputError, match="cannot write .*epoch-0001.parquet: disk full"):
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


# --- reading some columns, epochs, tasks or ids ---------------------------------------------------


def test_read_epochs_reads_the_chosen_columns_epochs_tasks_and_ids(tmp_path):
    for epoch in (1, 2, 3):
        _write(tmp_path, epoch, offset=10 * epoch)
    table = read_epochs(
        tmp_path, epochs=[3, 1], columns=["epoch", "log_sigma2"], tasks=["reg"], ids=["x1", "x3"]
    )
    assert table.column_names == ["epoch", "log_sigma2"]
    assert table.schema.field("epoch").type == pa.int32()
    # x1/reg holds 1, x3/reg holds 5 (plus 10 per epoch), epochs in ascending order
    assert table.to_pydict() == {"epoch": [1, 1, 3, 3], "log_sigma2": [11.0, 15.0, 31.0, 35.0]}
    frame = read_trajectories(tmp_path, epochs=[2], columns=["id", "task"], ids=["x2"])
    assert frame.to_dict("list") == {"id": ["x2", "x2"], "task": TASKS}


def test_reading_an_epoch_the_run_does_not_have_is_an_error(tmp_path):
    _write(tmp_path, 1)
    with pytest.raises(
        RunDirError, match="no trajectory file for epoch 4; the run's last epoch is 1"
    ):
        read_epochs(tmp_path, epochs=[4])
    with pytest.raises(ValueError, match="no trajectory column 'sigma'"):
        read_epochs(tmp_path, columns=["sigma"])


# --- the (E, R) matrix: fingerprints line epochs up, a join when they cannot -----------------------


def _strip_fingerprint(path):
    """Rewrite a file as runs from before the fingerprint wrote it."""
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata(None), path)


def _by_key(matrix):
    """The matrix as {(id, task): [value per epoch]}, whatever the order of its keys."""
    ids = matrix.keys["id"].to_pylist()
    tasks = matrix.keys["task"].cast(pa.string()).to_pylist()
    return {
        (i, t): matrix.values[:, r].tolist()
        for r, (i, t) in enumerate(zip(ids, tasks, strict=True))
    }


def _permuted_run(run, epochs=4):
    """Epochs written in two different row orders, values known per (instance, task)."""
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(epochs, 5, 2)).astype(np.float32)  # (E, N, K)
    ids = [f"i{i}" for i in range(5)]
    for epoch in range(1, epochs + 1):
        order = np.arange(5) if epoch % 2 else np.array([3, 0, 4, 1, 2])
        values = truth[epoch - 1][order]
        write_epoch(run, epoch, [ids[i] for i in order], TASKS, values, -values)
    return ids, truth


def test_matrix_lines_up_fingerprinted_epochs_without_a_join(tmp_path):
    for epoch in (1, 2, 3):
        _write(tmp_path, epoch, offset=epoch)
    matrix = read_matrix(tmp_path, "log_sigma2")
    assert matrix.aligned
    assert matrix.epochs == (1, 2, 3)
    assert matrix.values.dtype == np.float32 and matrix.values.shape == (3, 6)
    assert matrix.keys["id"].to_pylist() == ["x1", "x1", "x2", "x2", "x3", "x3"]
    expected = np.arange(6, dtype=np.float32)
    assert (matrix.values == np.stack([expected + e for e in (1, 2, 3)])).all()
    loss = read_matrix(tmp_path, "loss", epochs=[2], tasks=["cls"], ids=["x2", "x3"])
    assert _by_key(loss) == {("x2", "cls"): [-4.0], ("x3", "cls"): [-6.0]}


def test_epochs_in_different_row_orders_are_joined_on_the_keys(tmp_path):
    ids, truth = _permuted_run(tmp_path)
    matrix = read_matrix(tmp_path, "log_sigma2")
    assert not matrix.aligned  # the two row orders have different fingerprints
    found = _by_key(matrix)
    assert len(found) == 10
    for i, row_id in enumerate(ids):
        for k, task in enumerate(TASKS):
            assert found[(row_id, task)] == truth[:, i, k].tolist()


def test_the_join_and_the_fingerprint_path_agree(tmp_path):
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    for run in (fast, slow):
        for epoch in (1, 2, 3):
            _write(run, epoch, offset=epoch * 1.5)
    for path in (slow / "trajectories").iterdir():
        _strip_fingerprint(path)
    for filters in ({}, {"tasks": ["reg"]}, {"ids": ["x3", "x1"]}, {"epochs": [1, 3]}):
        aligned = read_matrix(fast, "log_sigma2", **filters)
        joined = read_matrix(slow, "log_sigma2", **filters)
        assert aligned.aligned and not joined.aligned
        assert aligned.epochs == joined.epochs
        assert _by_key(aligned) == _by_key(joined)
        assert len(_by_key(aligned)) == aligned.values.shape[1]


def test_a_key_missing_from_an_epoch_is_nan(tmp_path):
    _write(tmp_path, 1)
    write_epoch(tmp_path, 2, IDS[:2], TASKS, np.ones((2, 2)), np.ones((2, 2)))  # x3 missing
    found = _by_key(read_matrix(tmp_path, "log_sigma2"))
    assert found[("x2", "reg")] == [3.0, 1.0]
    assert found[("x3", "cls")][0] == 4.0 and np.isnan(found[("x3", "cls")][1])


def test_matrix_reads_the_rank_files_of_an_epoch_together(tmp_path):
    for epoch in (1, 2):
        write_epoch(tmp_path, epoch, ["a"], ["t"], np.full((1, 1), epoch), np.zeros((1, 1)), rank=0)
        write_epoch(
            tmp_path, epoch, ["b"], ["t"], np.full((1, 1), -epoch), np.zeros((1, 1)), rank=1
        )
    matrix = read_matrix(tmp_path, "log_sigma2")
    assert matrix.aligned  # every epoch has the same two files' row orders
    assert _by_key(matrix) == {("a", "t"): [1.0, 2.0], ("b", "t"): [-1.0, -2.0]}


def test_matrix_refuses_a_key_column(tmp_path):
    _write(tmp_path, 1)
    with pytest.raises(ValueError, match="value column"):
        read_matrix(tmp_path, "id")
