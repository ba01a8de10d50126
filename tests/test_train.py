"""Training: the run directory (SPEC 5), determinism, interruption and resume, divergence."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers_data import whole_batch

import ilt_audit
import ilt_audit.training.loop as training
from ilt_audit.errors import OptionError, RunDirError, TrainingDiverged
from ilt_audit.run.directory import read_config, read_metrics
from ilt_audit.run.evidence import COLUMNS as EVIDENCE_COLUMNS
from ilt_audit.training.loop import TrainConfig, train

N, K = 40, 2  # rows and tasks of the features fixture


def _trajectories(run) -> pd.DataFrame:
    return pd.read_parquet(run / "trajectories").sort_values(
        ["epoch", "id", "task"], ignore_index=True
    )


def _checkpoint_unsafe(run) -> dict:
    """Read a checkpoint without weights_only (this test's own file), to look inside it."""
    return torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)


def _stop_at(epoch: int):
    def on_epoch(row: dict) -> None:
        if row["epoch"] == epoch:
            raise KeyboardInterrupt

    return on_epoch


@pytest.fixture
def reference_run(features_card, tmp_path, tiny):
    """An uninterrupted 4-epoch run, to compare resumed runs with."""
    run = tmp_path / "reference"
    train(features_card, run, config=tiny(epochs=4))
    return run


# --- the run directory ----------------------------------------------------------------------------


def test_run_directory_has_config_metrics_checkpoint_and_trajectories(
    features_card, tmp_path, tiny
):
    config = tiny(epochs=3, seed=7)
    run = tmp_path / "run"
    result = train(features_card, run, config=config)

    assert result.run_dir == run and result.epochs == 3
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint.pt",
        "config.json",
        "inputs.parquet",
        "metrics.jsonl",
        "trajectories",
    ]
    assert sorted(p.name for p in (run / "trajectories").iterdir()) == [
        "epoch-0001.parquet",
        "epoch-0002.parquet",
        "epoch-0003.parquet",
    ]


def test_config_records_card_hash_options_and_versions(features_card, tmp_path, tiny):
    config = tiny(epochs=1, seed=7, ilt_lr=0.3)
    run = tmp_path / "run"
    train(features_card, run, config=config)

    saved = json.loads((run / "config.json").read_text())
    digest = hashlib.sha256(
        features_card.read_bytes() + (features_card.parent / "manifest.csv").read_bytes()
    )
    assert saved["card"] == {"path": str(features_card.resolve()), "sha256": digest.hexdigest()}
    assert saved["options"] == json.loads(json.dumps(dataclasses.asdict(config)))
    assert saved["options"]["seed"] == 7 and saved["options"]["ilt_lr"] == 0.3
    assert saved["versions"]["ilt_audit"] == ilt_audit.__version__
    assert saved["versions"]["torch"] == torch.__version__
    assert saved["versions"]["python"].count(".") == 2
    assert [t["name"] for t in saved["tasks"]] == ["label", "target"]
    assert saved["class_names"] == {"label": ["a", "b", "c"]}
    assert read_config(run) == saved


def test_metrics_has_one_line_per_epoch_with_per_task_loss(features_card, tmp_path, tiny):
    run = tmp_path / "run"
    train(features_card, run, config=tiny(epochs=3))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    rows = [json.loads(line) for line in lines]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    for row in rows:
        assert set(row["loss"]) == {"label", "target"}
        assert all(math.isfinite(v) and v >= 0 for v in row["loss"].values())
        assert row["time_s"] >= 0
    assert read_metrics(run) == rows
    # the metrics' per-task loss is the epoch's mean of the instances' losses in the trajectories
    frame = _trajectories(run)
    for row in rows:
        means = frame[frame.epoch == row["epoch"]].groupby("task").loss.mean()
        for task, value in row["loss"].items():
            assert math.isclose(means[task], value, rel_tol=1e-5)


def test_trajectory_files_have_the_exact_schema_and_n_times_k_rows(features_card, tmp_path, tiny):
    run = tmp_path / "run"
    train(features_card, run, config=tiny(epochs=2))
    expected = pa.schema(
        [
            ("epoch", pa.int32()),
            ("id", pa.string()),
            ("task", pa.string()),
            ("log_sigma2", pa.float32()),
            ("loss", pa.float32()),
            *((name, pa.float32()) for name in EVIDENCE_COLUMNS),
        ]
    )
    ids = set(pd.read_csv(features_card.parent / "manifest.csv", dtype={"id": str}).id)
    for epoch in (1, 2):
        path = run / "trajectories" / f"epoch-{epoch:04d}.parquet"
        assert pq.read_schema(path).remove_metadata().equals(expected)
        frame = pq.read_table(path).to_pandas()
        assert len(frame) == N * K
        assert set(frame.epoch) == {epoch}
        assert set(frame.id) == ids
        assert frame.groupby("id").task.apply(sorted).map(tuple).unique().tolist() == [
            ("label", "target")
        ]
        assert frame.log_sigma2.between(-4, 4).all()
        assert np.isfinite(frame.loss).all() and (frame.loss >= 0).all()
    everything = pd.read_parquet(run / "trajectories")
    assert len(everything) == 2 * N * K
    assert sorted(everything.epoch.unique().tolist()) == [1, 2]


def test_ilt_parameters_move_away_from_zero(features_card, tmp_path, tiny):
    run = tmp_path / "run"
    train(features_card, run, config=tiny(epochs=1))
    assert (_trajectories(run).log_sigma2 != 0).all()


def test_checkpoint_loads_with_weights_only(features_card, tmp_path, tiny):
    run = tmp_path / "run"
    train(features_card, run, config=tiny(epochs=2))
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 2
    final = (
        _trajectories(run)
        .query("epoch == 2")
        .pivot(index="id", columns="task", values="log_sigma2")
    )
    ids = pd.read_csv(features_card.parent / "manifest.csv", dtype={"id": str}).id
    table = state["ilt"]["log_sigma2"].numpy()  # (N, K) in manifest order
    assert np.array_equal(final.loc[ids, ["label", "target"]].to_numpy(), table)


def test_image_card_trains_all_four_task_types(image_card, tmp_path, tiny):
    run = tmp_path / "run"
    train(image_card, run, config=tiny(epochs=1, batch_size=4))
    frame = _trajectories(run)
    assert sorted(frame.task.unique()) == ["colour", "depth", "geometry", "seg"]
    assert len(frame) == 12 * 4
    assert frame.log_sigma2.between(-4, 4).all() and np.isfinite(frame.loss).all()
    assert read_config(run)["model"] == "MultiTaskUNet"
    assert set(read_metrics(run)[0]["loss"]) == {"colour", "depth", "geometry", "seg"}


def test_validation_rows_are_held_out(features_card, tmp_path, tiny):
    table = features_card.parent / "manifest.csv"
    frame = pd.read_csv(table, dtype={"id": str})
    frame["split"] = ["val" if i % 4 == 0 else "train" for i in range(len(frame))]
    frame.to_csv(table, index=False)
    features_card.write_text('split = "split"\n' + features_card.read_text())

    run = tmp_path / "run"
    train(features_card, run, config=tiny(epochs=1))
    trained = set(_trajectories(run).id)
    assert trained == set(frame.id[frame.split == "train"])
    assert read_config(run)["instances"] == {"train": 30, "val": 10}
    val = read_metrics(run)[0]["val"]
    assert 0 <= val["label"]["accuracy"] <= 1
    assert val["target"]["mae"] >= 0


# --- determinism and weightings -------------------------------------------------------------------


def test_same_seed_same_trajectories_different_seed_different(features_card, tmp_path, tiny):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        train(features_card, tmp_path / name, config=tiny(epochs=2, seed=seed))
    a, b, c = (_trajectories(tmp_path / name) for name in "abc")
    pd.testing.assert_frame_equal(a, b)
    assert not np.array_equal(a.log_sigma2.to_numpy(), c.log_sigma2.to_numpy())


def test_equal_weighting_writes_nan_log_sigma2_and_finite_loss(features_card, tmp_path, tiny):
    run = tmp_path / "run"
    train(features_card, run, config=tiny(epochs=2, weighting="equal"))
    frame = _trajectories(run)
    assert len(frame) == 2 * N * K
    assert frame.log_sigma2.isna().all()
    assert np.isfinite(frame.loss).all()


def test_uncertainty_weighting_shares_log_sigma2_across_instances(features_card, tmp_path, tiny):
    run = tmp_path / "run"
    train(features_card, run, config=tiny(epochs=2, weighting="uncertainty"))
    frame = _trajectories(run)
    assert np.isfinite(frame.log_sigma2).all()
    assert (frame.groupby(["epoch", "task"]).log_sigma2.nunique() == 1).all()


@pytest.mark.parametrize("weighting", ["dwa", "gls"])
def test_other_baselines_train(features_card, tmp_path, tiny, weighting):
    run = tmp_path / "run"
    train(features_card, run, config=tiny(epochs=3, weighting=weighting))
    assert len(read_metrics(run)) == 3
    assert np.isfinite(_trajectories(run).loss).all()


# --- options and the output folder ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epochs": 0}, "--epochs must be at least 1, got 0"),
        ({"batch_size": 0}, "--batch-size must be at least 1, got 0"),
        ({"ilt_lr": 0.0}, "--ilt-lr must be positive, got 0.0"),
        ({"lr": -1.0}, "--lr must be positive, got -1.0"),
        ({"weighting": "median"}, "unknown weighting 'median'; choose one of ilt, equal"),
        ({"device": "tpu"}, "--device 'tpu': choose auto, cpu or cuda"),
    ],
)
def test_bad_options_are_rejected_before_anything_is_written(
    features_card, tmp_path, tiny, changes, message
):
    with pytest.raises(OptionError) as info:
        train(features_card, tmp_path / "run", config=tiny(**changes))
    assert message in str(info.value)
    assert not (tmp_path / "run").exists()


def test_existing_non_empty_output_needs_resume(features_card, tmp_path, tiny, files_of):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="exists and is not empty; pass --resume"):
        train(features_card, run, config=tiny())
    assert files_of(run) == {"notes.txt": b"mine"}


def test_existing_empty_output_is_used(features_card, tmp_path, tiny):
    run = tmp_path / "run"
    run.mkdir()
    train(features_card, run, config=tiny(epochs=1))
    assert (run / "trajectories" / "epoch-0001.parquet").is_file()


def test_default_config_is_the_documented_one():
    config = TrainConfig()
    assert config.weighting == "ilt" and config.seed == 0 and config.device == "auto"
    assert config.epochs == 30 and config.batch_size == 32 and config.ilt_lr == 0.1


# --- interruption and resume ----------------------------------------------------------------------


def test_interrupted_run_keeps_every_finished_epoch(features_card, tmp_path, tiny):
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(features_card, run, config=tiny(epochs=4), on_epoch=_stop_at(2))
    assert sorted(p.name for p in (run / "trajectories").iterdir()) == [
        "epoch-0001.parquet",
        "epoch-0002.parquet",
    ]
    assert sorted(_trajectories(run).epoch.unique().tolist()) == [1, 2]
    assert [row["epoch"] for row in read_metrics(run)] == [1, 2]
    assert _checkpoint_unsafe(run)["epoch"] == 2
    assert not [p for p in run.rglob("*") if ".tmp-" in p.name]


@pytest.mark.parametrize("stop", [1, 3])
def test_resume_finishes_like_an_uninterrupted_run(
    features_card, tmp_path, tiny, reference_run, stop
):
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(features_card, run, config=tiny(epochs=4), on_epoch=_stop_at(stop))

    result = train(features_card, run, config=tiny(epochs=4), resume=True)

    assert result.epochs == 4
    pd.testing.assert_frame_equal(_trajectories(run), _trajectories(reference_run))
    assert [row["epoch"] for row in read_metrics(run)] == [1, 2, 3, 4]
    assert _checkpoint_unsafe(run)["epoch"] == 4


def test_resume_redoes_epochs_written_after_the_last_checkpoint(
    features_card, tmp_path, tiny, reference_run
):
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(features_card, run, config=tiny(epochs=4), on_epoch=_stop_at(2))
    # a crash between epoch 3's trajectory file and its checkpoint: a stale file and metrics line
    folder = run / "trajectories"
    shutil.copy(folder / "epoch-0002.parquet", folder / "epoch-0003.parquet")
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write(json.dumps({"epoch": 3, "loss": {"label": 9.0, "target": 9.0}}) + "\n")
    (folder / ".epoch-0004.parquet.tmp-123").write_bytes(b"half a file")

    train(features_card, run, config=tiny(epochs=4), resume=True)

    pd.testing.assert_frame_equal(_trajectories(run), _trajectories(reference_run))
    assert [row["epoch"] for row in read_metrics(run)] == [1, 2, 3, 4]
    assert read_metrics(run)[2]["loss"] != {"label": 9.0, "target": 9.0}


def test_resume_keeps_the_saved_options_but_may_train_longer(
    features_card, tmp_path, tiny, reference_run
):
    run = tmp_path / "run"
    train(features_card, run, config=tiny(epochs=2))
    # only epochs (and device) may change on resume; another seed or lr is ignored
    train(features_card, run, config=tiny(epochs=4, seed=99, lr=0.5), resume=True)
    assert read_config(run)["options"]["seed"] == 0
    pd.testing.assert_frame_equal(_trajectories(run), _trajectories(reference_run))


def test_resume_with_dwa(features_card, tmp_path, tiny):
    reference, run = tmp_path / "reference", tmp_path / "run"
    train(features_card, reference, config=tiny(epochs=4, weighting="dwa"))
    with pytest.raises(KeyboardInterrupt):
        train(features_card, run, config=tiny(epochs=4, weighting="dwa"), on_epoch=_stop_at(3))
    train(features_card, run, config=tiny(epochs=4, weighting="dwa"), resume=True)
    pd.testing.assert_frame_equal(_trajectories(run), _trajectories(reference))


def test_resume_after_the_card_changed_is_an_error(features_card, tmp_path, tiny, files_of):
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(features_card, run, config=tiny(epochs=3), on_epoch=_stop_at(1))
    before = files_of(run)
    table = features_card.parent / "manifest.csv"
    table.write_text(table.read_text().replace(",a,", ",b,", 1))

    with pytest.raises(
        RunDirError, match="the dataset card or its manifest changed since this run started"
    ):
        train(features_card, run, config=tiny(epochs=3), resume=True)
    assert files_of(run) == before


def test_resume_without_a_checkpoint_is_an_error(features_card, tmp_path, tiny):
    with pytest.raises(RunDirError, match=r"nothing to resume \(no checkpoint.pt\)"):
        train(features_card, tmp_path / "run", config=tiny(), resume=True)
    assert not (tmp_path / "run").exists()


# --- divergence -----------------------------------------------------------------------------------


def test_non_finite_loss_stops_training_and_keeps_earlier_epochs(
    features_card, tmp_path, tiny, monkeypatch
):
    poisoned = {"on": False}
    real_losses = training.instance_losses

    def losses(*args):
        l_ik = real_losses(*args)
        return l_ik * float("nan") if poisoned["on"] else l_ik

    def on_epoch(row: dict) -> None:
        poisoned["on"] = row["epoch"] == 1  # from epoch 2 on, the loss is NaN

    monkeypatch.setattr(training, "instance_losses", losses)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as info:
        train(features_card, run, config=tiny(epochs=3), on_epoch=on_epoch)

    message = str(info.value)
    assert "epoch 2, batch 1: the training loss became nan" in message
    assert "the 1 finished epoch(s) are kept" in message
    assert "Try a lower --lr or --ilt-lr" in message
    assert sorted(p.name for p in (run / "trajectories").iterdir()) == ["epoch-0001.parquet"]
    assert [row["epoch"] for row in read_metrics(run)] == [1]
    assert _checkpoint_unsafe(run)["epoch"] == 1


def test_predict_rebuilds_the_trained_network(planted_run):
    from ilt_audit.dataset import load_dataset
    from ilt_audit.training.loop import predict, saved_normalisation

    data = load_dataset(planted_run.card, norm=saved_normalisation(planted_run.run))
    rows = torch.arange(len(data))
    outputs = predict(planted_run.run, data, rows)
    labels = whole_batch(data)["targets"]["label"]
    clean = torch.tensor([i not in planted_run.flipped for i in data.ids])
    predicted = outputs["label"].argmax(dim=1)
    # the network learned the clean rule, so it predicts the manifest's label where that is right
    assert (predicted[clean] == labels[clean]).float().mean() > 0.8
    # and disagrees with most planted wrong labels
    assert (predicted[~clean] != labels[~clean]).float().mean() > 0.5


def test_predict_refuses_a_checkpoint_of_another_dataset(planted_run, image_card):
    from ilt_audit.dataset import load_dataset
    from ilt_audit.training.loop import predict

    with pytest.raises(RunDirError, match="does not fit this dataset"):
        predict(planted_run.run, load_dataset(image_card), torch.arange(2))
