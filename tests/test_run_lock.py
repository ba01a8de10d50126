"""One writer per run directory (SPEC 8): an OS lock that a second writer runs into and that ends
with its holder, however the holder ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import ilt_audit.corruption.planting as corruption
import ilt_audit.internal.lock as lock
from ilt_audit.errors import RunDirError
from ilt_audit.internal.lock import LOCK_FILE, run_lock
from ilt_audit.run.directory import read_metrics
from ilt_audit.training.loop import train

HOLDER = """
    import os, sys, time
    from ilt_audit.internal.lock import run_lock

    with run_lock(sys.argv[1]):
        child = 0
        if sys.argv[2] == "fork":  # a child that outlives its parent, as a DataLoader worker can
            child = os.fork()
            if child == 0:
                time.sleep(120)
                os._exit(0)
        print(child, flush=True)
        time.sleep(120)
"""


class Holder:
    """Another process holding a run directory's lock (and maybe a forked child of it)."""

    def __init__(self, folder: Path, fork: bool) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(HOLDER), str(folder), "fork" if fork else ""],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # printed once the lock is held
        assert line.strip().isdigit(), self.process.stderr.read() if self.process.stderr else ""
        self.pid = self.process.pid
        self.child = int(line)

    def kill(self) -> None:
        """kill -9: no clean-up runs in the holder."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def end(self) -> None:
        for pid in (self.pid, self.child):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.process.wait(timeout=30)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def hold() -> Iterator[Callable[..., Holder]]:
    holders: list[Holder] = []

    def start(folder: Path, *, fork: bool = False) -> Holder:
        holders.append(Holder(folder, fork))
        return holders[-1]

    yield start
    for holder in holders:
        holder.end()


def _held_message(run: Path, pid: int) -> str:
    return (
        f"Error: {run}: another process (pid {pid}) is training this run directory; wait for it "
        "to finish or choose another --out"
    )


def test_train_into_a_directory_another_process_trains_exits_2_and_writes_nothing(
    features_card, tmp_path, cli, files_of, hold
):
    run = tmp_path / "run"
    holder = hold(run)
    before = files_of(run)

    result = cli("train", features_card, "--out", run, "--epochs", "1", "--device", "cpu")

    assert result.exit_code == 2
    assert result.err == _held_message(run, holder.pid)
    assert files_of(run) == before == {LOCK_FILE: f"{holder.pid}\n".encode()}


def test_resume_while_another_process_trains_exits_2_and_writes_nothing(
    features_card, tmp_path, tiny, cli, files_of, hold
):
    run = tmp_path / "run"
    train(features_card, run, config=tiny(epochs=1))
    holder = hold(run)
    before = files_of(run)

    result = cli("train", features_card, "--out", run, "--resume", "--epochs", "2")

    assert result.exit_code == 2
    assert result.err == _held_message(run, holder.pid)
    assert files_of(run) == before
    assert [row["epoch"] for row in read_metrics(run)] == [1]


def test_a_holder_killed_with_sigkill_leaves_no_stale_lock(
    features_card, tmp_path, tiny, cli, hold
):
    run = tmp_path / "run"
    train(features_card, run, config=tiny(epochs=1))
    holder = hold(run)
    holder.kill()
    assert (run / LOCK_FILE).is_file()  # the file stays behind; the lock went with its holder

    result = cli("train", features_card, "--out", run, "--resume", "--epochs", "2")

    assert result.exit_code == 0, result.stderr
    assert [row["epoch"] for row in read_metrics(run)] == [1, 2]
    assert not (run / LOCK_FILE).exists()


def test_a_forked_child_of_the_holder_does_not_keep_the_lock(features_card, tmp_path, cli, hold):
    run = tmp_path / "run"
    holder = hold(run, fork=True)
    holder.kill()
    os.kill(holder.child, 0)  # the child still runs

    result = cli("train", features_card, "--out", run, "--epochs", "1", "--device", "cpu")

    assert result.exit_code == 0, result.stderr
    assert [row["epoch"] for row in read_metrics(run)] == [1]


def test_a_second_lock_in_the_same_process_is_refused(tmp_path):
    run = tmp_path / "run"
    with run_lock(run):
        with pytest.raises(
            RunDirError, match="another training in this process is training this run directory"
        ):
            with run_lock(run):
                pass
        assert (run / LOCK_FILE).is_file()  # the refused attempt took nothing away
    with run_lock(run):  # released
        pass
    assert not run.exists()  # created for the lock, nothing written: removed again


def test_a_lock_file_removed_while_it_was_being_locked_is_locked_anew(tmp_path, monkeypatch):
    # the holder removes the file as it ends; one who opened it just before then locks a file
    # that is no longer there, and must start again rather than think it holds the directory
    run = tmp_path / "run"
    run.mkdir()
    real_try_lock, calls = lock._try_lock, []

    def holder_ends_meanwhile(fd: int) -> bool:
        calls.append(fd)
        if len(calls) == 1:
            (run / LOCK_FILE).unlink()
        return real_try_lock(fd)

    monkeypatch.setattr(lock, "_try_lock", holder_ends_meanwhile)
    with run_lock(run):
        assert len(calls) == 2
        assert os.stat(run / LOCK_FILE).st_ino == os.fstat(calls[1]).st_ino
        with pytest.raises(RunDirError, match="is training this run directory"):
            with run_lock(run):
                pass


def test_train_through_the_cli_while_this_process_holds_the_lock_exits_2(
    features_card, tmp_path, cli
):
    run = tmp_path / "run"
    with run_lock(run):
        result = cli("train", features_card, "--out", run, "--epochs", "1", "--device", "cpu")
    assert result.exit_code == 2
    assert f"Error: {run}: another training in this process is training" in result.err
    assert not run.exists()


def test_two_trainings_in_two_threads_of_one_process_are_exclusive(features_card, tmp_path, tiny):
    run = tmp_path / "run"
    in_epoch, go_on = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def first() -> None:
        def on_epoch(row: dict) -> None:
            in_epoch.set()
            go_on.wait(60)

        try:
            train(features_card, run, config=tiny(epochs=2), on_epoch=on_epoch)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert in_epoch.wait(60)
        for resume in (False, True):
            with pytest.raises(RunDirError, match="is training this run directory"):
                train(features_card, run, config=tiny(epochs=3), resume=resume)
    finally:
        go_on.set()
        thread.join(60)
    assert not failures
    assert [row["epoch"] for row in read_metrics(run)] == [1, 2]


def test_a_run_leaves_no_lock_file_however_it_ends(features_card, tmp_path, tiny):
    def stop(row: dict) -> None:
        raise KeyboardInterrupt

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(features_card, run, config=tiny(epochs=2), on_epoch=stop)
    assert (run / "checkpoint.pt").is_file() and not (run / LOCK_FILE).exists()
    train(features_card, run, config=tiny(epochs=2), resume=True)
    assert not (run / LOCK_FILE).exists()


def test_corrupt_into_a_folder_another_process_filled_meanwhile_exits_2(
    features_card, tmp_path, cli, files_of, monkeypatch
):
    # corrupt writes a staging folder and renames it onto --out in one step: two runs never mix;
    # the one that finishes second finds --out taken and is refused
    out = tmp_path / "noisy"
    real_write_truth = corruption._write_truth

    def other_process_finishes_first(*args):
        real_write_truth(*args)
        out.mkdir()
        (out / "card.toml").write_text("# the other run's\n")

    monkeypatch.setattr(corruption, "_write_truth", other_process_finishes_first)

    result = cli("corrupt", features_card, "--task", "label", "--fraction", "0.2", "--out", out)

    assert result.exit_code == 2
    assert result.err == (
        f"Error: {out} exists and is not empty: another process wrote it while this one ran"
    )
    assert files_of(out) == {"card.toml": b"# the other run's\n"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features", "noisy"]  # no staging
