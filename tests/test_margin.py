"""The classification margin of every instance in every epoch, and the AUM score built on it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ilt_audit.audit.ranking import rank, scores
from ilt_audit.errors import OptionError
from ilt_audit.run.evidence import COLUMNS, margin
from ilt_audit.run.trajectories import read_epochs, read_matrix, write_epoch


def test_margin_is_the_assigned_logit_minus_the_largest_other():
    logits = torch.tensor(
        [
            [2.0, 1.0, 0.5],  # assigned 0, the highest: 2 - 1
            [2.0, 1.0, 0.5],  # assigned 2, below both others: 0.5 - 2
            [0.0, 3.0, 3.0],  # assigned 1, tied with 2: 0
            [-1.0, -4.0, -2.0],  # assigned 1: -4 - (-1)
        ]
    )
    target = torch.tensor([0, 2, 1, 1])
    assert margin(logits, target).tolist() == [1.0, -1.5, 0.0, -3.0]


def test_every_epoch_records_the_margin_of_classification_tasks_only(planted_run):
    frame = pd.read_parquet(planted_run.run / "trajectories")
    assert frame.margin.dtype == np.float32
    label, target = frame[frame.task == "label"], frame[frame.task == "target"]
    assert label.margin.notna().all()
    assert target.margin.isna().all()


def test_a_flipped_label_has_a_negative_mean_margin(planted_run):
    frame = pd.read_parquet(planted_run.run / "trajectories", columns=["id", "task", "margin"])
    mean = frame[frame.task == "label"].groupby("id").margin.mean()
    assert (mean[list(planted_run.flipped)] < 0).all()
    assert (mean.drop(list(planted_run.flipped)) > 0).mean() > 0.9


def test_rank_by_aum_puts_the_flipped_labels_on_top_of_the_classification_task(planted_run):
    ranked = rank(planted_run.run, by="aum", top=len(planted_run.flipped))
    assert set(ranked.task) == {"label"}  # the regression task has no margin: not listed
    assert set(ranked.id) == set(planted_run.flipped)
    frame = pd.read_parquet(planted_run.run / "trajectories", columns=["id", "task", "margin"])
    mean = frame[frame.task == "label"].groupby("id").margin.mean()
    assert np.allclose(ranked.score, -mean[ranked.id].to_numpy(), rtol=1e-5)
    assert set(scores(planted_run.run, by="aum").task) == {"label"}


def test_gate_by_aum_judges_the_classification_task_only(planted_run, cli):
    result = cli("gate", planted_run.run, "--by", "aum", "--max-suspect", "50%", "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert '"target"' not in result.stdout and '"label"' in result.stdout


def test_rank_by_aum_on_a_task_without_margin_says_so(planted_run):
    with pytest.raises(OptionError, match="--task 'target' has no classification margin"):
        rank(planted_run.run, by="aum", task="target")


def test_cli_rank_by_aum(planted_run, cli):
    result = cli("rank", planted_run.run, "--by", "aum", "--top", "5", "--format", "csv")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.strip().splitlines()[1:]
    assert {line.split(",")[1] for line in lines} == set(planted_run.flipped)


# --- files written before the margin existed ----------------------------------------------------


def _old_file(run, epoch, ids, tasks, log_sigma2, loss):
    """A trajectory file of the old schema: no ``margin`` column."""
    n, k = log_sigma2.shape
    table = pa.table(
        {
            "epoch": pa.array(np.full(n * k, epoch, dtype=np.int32)),
            "id": pa.array(np.repeat(ids, k)),
            "task": pa.array(tasks * n),
            "log_sigma2": pa.array(log_sigma2.reshape(-1).astype(np.float32)),
            "loss": pa.array(loss.reshape(-1).astype(np.float32)),
        }
    )
    path = run / "trajectories" / f"epoch-{epoch:04d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def test_files_without_the_margin_column_still_read_with_nan_margins(tmp_path):
    ids, tasks = ["x1", "x2"], ["cls", "reg"]
    values = np.arange(4, dtype=np.float32).reshape(2, 2)
    _old_file(tmp_path, 1, ids, tasks, values, -values)
    write_epoch(tmp_path, 2, ids, tasks, values, -values, margin=values + 10)
    table = read_epochs(tmp_path, columns=["epoch", "margin", "loss"])
    assert table.schema.field("margin").type == pa.float32()
    margins = table.to_pandas()
    assert margins.query("epoch == 1").margin.isna().all()
    assert margins.query("epoch == 2").margin.tolist() == [10.0, 11.0, 12.0, 13.0]
    assert read_epochs(tmp_path, epochs=[1], columns=["loss"])["loss"].to_pylist() == [
        0.0,
        -1.0,
        -2.0,
        -3.0,
    ]
    matrix = read_matrix(tmp_path, "margin")
    assert np.isnan(matrix.values[0]).all()
    assert matrix.values[1].tolist() == [10.0, 11.0, 12.0, 13.0]
    frame = read_epochs(tmp_path, epochs=[1]).to_pandas()  # every column, the evidence as NaN
    assert list(frame.columns) == ["epoch", "id", "task", "log_sigma2", "loss", *COLUMNS]
    assert frame[list(COLUMNS)].isna().all().all()


def test_evaluate_by_aum_judges_the_classification_tasks_of_a_truth_file(planted_run, tmp_path):
    import pandas as pd

    from ilt_audit.audit.evaluation import evaluate

    ids = [f"r{i:03d}" for i in range(60)]
    truth = pd.DataFrame(
        {
            "id": ids * 2,
            "task": ["label"] * 60 + ["target"] * 60,
            "corrupted": [i in planted_run.flipped for i in ids]
            + [i in planted_run.shifted for i in ids],
        }
    )
    path = tmp_path / "corruption.parquet"
    truth.to_parquet(path, index=False)
    table = evaluate(planted_run.run, path, by="aum")
    assert table.task.tolist() == ["label"]  # `target` has no margin: not judged, not an error
    assert table.detection_accuracy.iloc[0] >= 0.8
