"""kill -9 at random moments of `train`: every reader then answers with a defined exit code, and
`--resume` finishes the run.

A run killed at any moment keeps every epoch it finished (SPEC section 5); an unfinished run is
refused by the readers (exit 2) and read with ``--allow-partial``; a run with no finished epoch,
or no run at all yet, is refused either way. No reader may end in a traceback, exit 1 or exit 3.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from ilt_audit.corruption.planting import corrupt
from ilt_audit.run.directory import read_metrics

KILLS = 4  # kill moments, seeded; each costs a `train` start-up (about 3 s on 2 cores)
EPOCHS = 6
SPAN = 1.2  # kill moments are drawn from [-1, SPAN] s around the moment training starts; a
# negative moment kills the process during its start-up


def _readers(run, truth, out):
    return [
        ["rank", run, "--allow-partial", "--format", "csv"],
        ["evaluate", run, "--truth", truth, "--allow-partial"],
        ["gate", run, "--allow-partial", "--max-suspect", "100%", "--junit", out / "g.xml"],
        ["report", run, "--allow-partial", "--out", out / "r.html"],
    ]


@pytest.fixture
def noisy(tmp_path, make_features_card):
    card = make_features_card(tmp_path / "clean", n=3000)
    return corrupt(card, tasks=["label"], fraction=0.2, seed=0, out=tmp_path / "noisy")


def _train(card, run, *extra):
    command = [
        sys.executable,
        "-m",
        "ilt_audit",
        "train",
        str(card),
        "--out",
        str(run),
        "--epochs",
        str(EPOCHS),
        "--batch-size",
        "8",
        "--device",
        "cpu",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def test_kill_9_at_random_moments_then_every_reader_then_resume(noisy, tmp_path, cli):
    moments = random.Random(0)
    resumed_one = False
    for attempt in range(KILLS):
        run, out = tmp_path / f"run{attempt}", tmp_path / f"out{attempt}"
        out.mkdir()
        process = _train(noisy.card_path, run)
        moment = moments.uniform(-1.0, SPAN)
        if moment < 0:
            time.sleep(1.0 + moment)
        else:
            _wait_for(run / "config.json", process)
            time.sleep(moment)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        finished = [row["epoch"] for row in read_metrics(run)] if run.exists() else []
        assert finished == list(range(1, len(finished) + 1))  # whole epochs, in order
        for args in _readers(run, noisy.truth_path, out):
            result = cli(*args)
            assert "Traceback" not in result.err, (args, result.err)
            if finished and len(finished) < EPOCHS:
                assert result.exit_code == 0, (args, result.err)
                assert "Unfinished run" in result.err
            elif finished:  # killed after its last epoch was recorded
                assert result.exit_code == 0, (args, result.err)
            else:  # killed before its first epoch: nothing to read
                assert result.exit_code == 2, (args, result.err)
                assert result.err.count("Error:") == 1
        if 0 < len(finished) < EPOCHS:
            assert cli("gate", run).exit_code == 2  # refused without --allow-partial
        if not resumed_one and (run / "config.json").exists():  # one resume is enough to show it
            resumed_one = True
            resumed = _train(noisy.card_path, run, "--resume")
            _, err = resumed.communicate(timeout=300)
            assert resumed.returncode == 0, err.decode()
            assert [row["epoch"] for row in read_metrics(run)] == list(range(1, EPOCHS + 1))
            assert cli("gate", run, "--max-suspect", "100%").exit_code == 0


def _wait_for(path, process, timeout=120.0):
    """Until ``path`` exists (training has started), or the process ended."""
    end = time.monotonic() + timeout
    while not path.exists() and process.poll() is None and time.monotonic() < end:
        time.sleep(0.02)
