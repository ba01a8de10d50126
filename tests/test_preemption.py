"""SIGTERM (a scheduler's preemption) stops `train` at a batch boundary with exit code 75: every
finished epoch kept, the lock released, and `--resume` ends with the trajectories of a run that
was never stopped; under torchrun every process stops, none waits for the others."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_features_dataset

from ilt_audit.run.directory import read_metrics

HELPER = str(Path(__file__).with_name("helpers_faults.py"))
EPOCHS = 4
OPTIONS = ["--epochs", str(EPOCHS), "--batch-size", "8", "--device", "cpu"]


def _start(command: list[str], **env: str) -> subprocess.Popen[str]:
    # every batch 50 ms slower (tests/helpers_faults.py), so that the signal comes mid-run
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ILT_AUDIT_TEST_FAULT": "slow:0.05", **env}
    return subprocess.Popen([sys.executable, *command], stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_first_epoch(run: Path, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while not (run / "trajectories" / "epoch-0001.parquet").exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _trajectories(run: Path) -> pd.DataFrame:
    return pd.read_parquet(run / "trajectories").sort_values(
        ["epoch", "id", "task"], ignore_index=True
    )


@pytest.fixture
def card(tmp_path):
    return write_features_dataset(tmp_path / "data", n=60)


def test_sigterm_exits_75_keeps_finished_epochs_and_resume_finishes_the_run(card, tmp_path, cli):
    run = tmp_path / "run"
    process = _start([HELPER, "train", str(card), "--out", str(run), *OPTIONS])
    _wait_for_first_epoch(run, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)

    assert process.returncode == 75, err
    assert "Stopped: stopped by SIGTERM in epoch" in " ".join(err.split())
    assert "--resume" in err and "Traceback" not in err
    finished = [row["epoch"] for row in read_metrics(run)]
    assert 1 <= len(finished) < EPOCHS and finished == list(range(1, len(finished) + 1))
    assert sorted(int(p.stem[-4:]) for p in (run / "trajectories").iterdir()) == finished
    assert not (run / ".lock").exists()  # released

    assert cli("train", card, "--out", run, "--resume").exit_code == 0
    reference = tmp_path / "reference"
    assert cli("train", card, "--out", reference, *OPTIONS).exit_code == 0
    resumed, uninterrupted = _trajectories(run), _trajectories(reference)
    assert np.array_equal(resumed.log_sigma2.to_numpy(), uninterrupted.log_sigma2.to_numpy())
    assert np.array_equal(resumed.loss.to_numpy(), uninterrupted.loss.to_numpy())


def test_sigterm_before_the_first_epoch_leaves_nothing(card, tmp_path):
    run = tmp_path / "run"
    process = _start(
        [HELPER, "train", str(card), "--out", str(run), *OPTIONS], ILT_AUDIT_TEST_FAULT="slow:5"
    )
    deadline = time.monotonic() + 120
    while not (run / "config.json").exists():  # training has started: epoch 1 takes minutes
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 75, err
    assert "no epoch had finished, so nothing is kept" in " ".join(err.split())
    assert not run.exists()  # the same command starts it again


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_sigterm_stops_every_rank_of_a_job_at_the_same_batch_with_75(card, tmp_path):
    # the ranks as `srun` starts them (one task per process, no torchrun): the job's exit code
    # is its tasks' code, 75
    run, port = tmp_path / "run", str(_free_port())
    ranks = [
        _start(
            [HELPER, "train", str(card), "--out", str(run), *OPTIONS],
            RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    _wait_for_first_epoch(run, ranks[0])
    for process in ranks:
        process.send_signal(signal.SIGTERM)
    errors = [process.communicate(timeout=120)[1] for process in ranks]  # none hangs
    assert [process.returncode for process in ranks] == [75, 75], errors
    assert all("stopped by SIGTERM" in err for err in errors)
    assert read_metrics(run) and not (run / ".lock").exists()


def test_sigterm_to_torchrun_stops_every_process(card, tmp_path):
    run = tmp_path / "run"
    command = [
        "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", HELPER,
        "train", str(card), "--out", str(run), *OPTIONS,
    ]  # fmt: skip
    job = _start(command)
    _wait_for_first_epoch(run, job)
    job.send_signal(signal.SIGTERM)  # torchrun's agent passes it on to every process
    _, err = job.communicate(timeout=120)  # no process waits for another
    assert err.count("Stopped: stopped by SIGTERM") == 2, err  # each rank at the same batch
    # torchrun itself exits 1 on the signal it got (its SignalException), whatever its processes
    # return: a job script that requeues on 75 starts the ranks with srun (docs/distributed.md)
    assert job.returncode == 1, err
    assert read_metrics(run) and not (run / ".lock").exists()
