"""`train` under torchrun: 2 CPU processes (gloo), started through `torch.distributed.run`.

One run directory whatever the world size: N·K trajectory rows per epoch with every id once per
task, the whole (N, K) table in the checkpoint, the planted errors on top as in a 1-process run,
the same trajectories for the same seed, a resume in 1 process, and a bad card stopping both
ranks with exit 2; under `torchrun --max-restarts`, a process that died (SIGKILL) is restarted
with the others and the job resumes by itself, to the trajectories of a run never interrupted.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FLIPPED, SHIFTED, tiny_config, write_features_dataset

from ilt_audit.audit.ranking import rank
from ilt_audit.dataset.loader import EpochBatches
from ilt_audit.errors import OptionError
from ilt_audit.run.directory import read_config, read_metrics
from ilt_audit.training.loop import train

N, EPOCHS = 60, 20
HELPER = Path(__file__).with_name("helpers_faults.py")
TRAIN_OPTIONS = ["--epochs", str(EPOCHS), "--batch-size", "8", "--lr", "1e-2", "--device", "cpu"]


def torchrun(
    *args: object, processes: int = 2, restarts: int = 0, fault: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``torchrun … -m ilt_audit ARGS``; with ``fault``, through tests/helpers_faults.py."""
    entry = ["-m", "ilt_audit"] if fault is None else [str(HELPER)]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={processes}", f"--max-restarts={restarts}", *entry, *map(str, args),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    if fault is not None:
        env["ILT_AUDIT_TEST_FAULT"] = fault
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same planted card trained by 2 processes (twice) and by 1."""
    root = tmp_path_factory.mktemp("ddp")
    card = write_features_dataset(root / "data", n=N, flip=FLIPPED, shift=SHIFTED)
    for name in ("two", "again"):
        done = torchrun("train", card, "--out", root / name, *TRAIN_OPTIONS)
        assert done.returncode == 0, done.stderr
    config = tiny_config(epochs=EPOCHS, lr=1e-2, batch_size=8)
    train(card, root / "one", config=config)
    return root, card


def _trajectories(run):
    return pd.read_parquet(run / "trajectories")


def test_one_row_per_instance_per_task_per_epoch(runs):
    root, _ = runs
    frame = _trajectories(root / "two")
    assert sorted(frame.epoch.unique()) == list(range(1, EPOCHS + 1))
    assert (frame.groupby("epoch").size() == N * 2).all()
    per_task = frame.groupby(["epoch", "task"]).id
    assert (per_task.nunique() == N).all() and (per_task.size() == N).all()
    assert [row["epoch"] for row in read_metrics(root / "two")] == list(range(1, EPOCHS + 1))
    assert read_config(root / "two")["world_size"] == 2
    assert sorted(p.name for p in (root / "two" / "trajectories").iterdir()) == [
        f"epoch-{e:04d}.parquet" for e in range(1, EPOCHS + 1)
    ]  # rank 0 wrote every file, the other rank none


def test_the_checkpoint_holds_the_whole_table(runs):
    root, _ = runs
    state = torch.load(root / "two" / "checkpoint.pt", map_location="cpu", weights_only=True)
    table = state["ilt"]["log_sigma2"].numpy()  # (N, K) in manifest order
    assert table.shape == (N, 2)
    last = _trajectories(root / "two").query(f"epoch == {EPOCHS}")
    pivot = last.pivot(index="id", columns="task", values="log_sigma2")
    ids = [f"r{i:03d}" for i in range(N)]
    assert np.array_equal(pivot.loc[ids, ["label", "target"]].to_numpy(), table)
    assert (table != 0).all()  # every row trained, on one rank or the other


def test_planted_errors_rank_on_top_as_in_one_process(runs):
    root, _ = runs
    for task, planted in (("label", FLIPPED), ("target", SHIFTED)):
        flagged = {}
        for name in ("one", "two"):
            ranked = rank(root / name, task=task, top=len(planted))
            flagged[name] = set(ranked.id)
        overlap = len(flagged["one"] & flagged["two"]) / len(planted)
        assert overlap >= 0.8, (task, flagged)
        assert len(flagged["two"] & set(planted)) >= len(planted) - 1, (task, flagged["two"])


def test_same_seed_same_world_size_same_trajectories(runs):
    root, _ = runs
    a, b = _trajectories(root / "two"), _trajectories(root / "again")
    assert np.array_equal(a.log_sigma2.to_numpy(), b.log_sigma2.to_numpy())
    assert np.array_equal(a.loss.to_numpy(), b.loss.to_numpy())


@pytest.mark.parametrize(
    ("epoch", "said"),
    [(2, "torchrun restart 1: resuming"), (1, "no epoch of .* had finished; starting it over")],
)
def test_a_torchrun_restart_resumes_by_itself_to_the_same_trajectories(runs, tmp_path, epoch, said):
    root, card = runs
    run = tmp_path / "restarted"
    # rank 1 kills itself (SIGKILL) before batch 3 of the epoch; torchrun restarts both processes
    done = torchrun(
        "train", card, "--out", run, *TRAIN_OPTIONS, restarts=1, fault=f"sigkill:1:{epoch}:3"
    )
    assert done.returncode == 0, done.stderr
    assert re.search(said, done.stderr), done.stderr
    assert re.search(r"exitcode\s*:\s*-9|\(exitcode: -9\)", done.stderr), done.stderr  # it died
    assert [row["epoch"] for row in read_metrics(run)] == list(range(1, EPOCHS + 1))
    a, b = _trajectories(root / "two"), _trajectories(run)
    assert np.array_equal(a.log_sigma2.to_numpy(), b.log_sigma2.to_numpy())
    assert np.array_equal(a.loss.to_numpy(), b.loss.to_numpy())


def test_a_two_process_checkpoint_resumes_in_one_process(runs, tmp_path, cli):
    root, _ = runs
    run = tmp_path / "resumed"
    run.mkdir()
    for path in (root / "two").rglob("*"):
        if path.is_file():
            target = run / path.relative_to(root / "two")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    result = cli(
        "train", root / "data" / "card.toml", "--out", run, "--resume", "--epochs", EPOCHS + 2
    )
    assert result.exit_code == 0, result.stderr
    assert [row["epoch"] for row in read_metrics(run)] == list(range(1, EPOCHS + 3))
    assert read_config(run)["world_size"] == 1


def test_a_bad_file_stops_both_ranks_with_exit_2_and_writes_nothing(make_image_card, tmp_path):
    card = make_image_card(tmp_path / "data")
    (card.parent / "masks" / "i009.png").write_bytes(b"not a png")  # a row of rank 1's block
    run = tmp_path / "run"
    done = torchrun("train", card, "--out", run, "--epochs", "1", "--device", "cpu")
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 2, done.stderr  # one per rank, the same line
    assert errors[0] == errors[1] and "row id 'i009'" in errors[0] and "'mask'" in errors[0]
    # each rank exits 2 of its own; torchrun may stop the slower one first (SIGTERM), so its
    # summary names exit code 2 for at least the first failure and nothing but 2 or a stop
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", done.stderr)
    assert "2" in codes and set(codes) <= {"2", "-15"}, done.stderr
    # torchrun prints its own traceback (ChildFailedError) for any failed worker; the workers
    # print none: no frame of ilt_audit in the output
    assert not re.search(r'File ".*ilt_audit[/\\]', done.stderr), done.stderr
    assert not run.exists()


@pytest.mark.parametrize(("n", "world"), [(10, 2), (11, 2), (1000, 3), (257, 2)])
def test_each_instance_goes_to_one_rank_per_epoch_in_as_many_batches(n, world):
    shares = [EpochBatches(n, 8, seed=3, rank=r, world=world) for r in range(world)]
    for epoch in (1, 2):
        seen = []
        for share in shares:
            share.set_epoch(epoch)
            batches = list(share)
            assert len(batches) == len(share) == len(shares[0])  # DDP steps pair up
            assert all(len(batch) >= 2 for batch in batches)  # batch norm needs two
            seen += [row for batch in batches for row in batch]
        assert sorted(seen) == list(range(n))  # each once: none repeated, none dropped


def test_too_few_instances_for_the_processes_is_an_option_error():
    with pytest.raises(OptionError, match="3 training instances cannot be shared by 2"):
        EpochBatches(3, 8, world=2)
