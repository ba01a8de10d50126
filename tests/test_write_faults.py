"""A full disk, a quota or a read-only run directory mid-run: the epoch being written is abandoned
whole (no trajectory file, metrics line or checkpoint of it, no temporary file), its error names
the file and the space left (exit 2, one `Error:` line), and `--resume` finishes the run with the
trajectories of an uninterrupted one once there is room."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from conftest import normalise

from ilt_audit.errors import OutputError
from ilt_audit.internal import files
from ilt_audit.run.directory import open_run, read_metrics
from ilt_audit.training.loop import load_checkpoint, train

TRAIN = ("--epochs", "3", "--batch-size", "8", "--device", "cpu")
EPOCH_FILES = ("trajectories/epoch-0002.parquet", "metrics.jsonl", "checkpoint.pt")  # in order


def _trajectories(run: Path) -> pd.DataFrame:
    return pd.read_parquet(run / "trajectories").sort_values(
        ["epoch", "id", "task"], ignore_index=True
    )


def _temporary_files(run: Path) -> list[Path]:
    return [p for p in run.rglob("*") if ".tmp-" in p.name]


class _FullAt:
    """A file whose writes stop with ENOSPC once ``room`` bytes are written (a disk filling up)."""

    def __init__(self, handle, room: int) -> None:
        self.handle, self.room = handle, room

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.room:
            self.handle.write(data[: self.room])  # a half-written temporary file
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()


def _fail_staged_write(monkeypatch, number: int) -> None:
    """Fail the ``number``-th file an epoch stages (counting from the run's first), half-written."""
    real_open = files._open
    opened = []

    def open_(path):
        opened.append(path)
        handle = real_open(path)
        return _FullAt(handle, room=100) if len(opened) == number else handle

    monkeypatch.setattr(files, "_open", open_)


@pytest.fixture
def reference(features_card, tmp_path, cli):
    """An uninterrupted 3-epoch run, to compare resumed runs with."""
    run = tmp_path / "reference"
    assert cli("train", features_card, "--out", run, *TRAIN).exit_code == 0
    return run


@pytest.mark.parametrize("failing", range(3), ids=["trajectory", "metrics", "checkpoint"])
def test_a_full_disk_abandons_the_epoch_whole_and_resume_finishes_the_run(
    failing, features_card, tmp_path, cli, reference, monkeypatch
):
    run = tmp_path / "run"
    with monkeypatch.context() as patched:
        _fail_staged_write(patched, number=3 + failing + 1)  # epoch 1 stages three files
        result = cli("train", features_card, "--out", run, *TRAIN)

    assert result.exit_code == 2, result.err
    assert "Traceback" not in result.err
    assert result.err.count("Error:") == 1
    message = normalise(result.err)
    assert f"cannot write {run / EPOCH_FILES[failing]}: No space left on device (" in message
    assert f"free on the file system of {(run / EPOCH_FILES[failing]).parent})" in message
    assert "epoch 2 is not recorded, the 1 finished epoch(s) are kept" in message
    assert f"--out {run} --resume" in message
    # epoch 1 whole, nothing of epoch 2
    assert sorted(p.name for p in (run / "trajectories").iterdir()) == ["epoch-0001.parquet"]
    assert [row["epoch"] for row in read_metrics(run)] == [1]
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1
    assert _temporary_files(run) == []
    assert open_run(run, allow_partial=True).epochs == (1,)
    pd.testing.assert_frame_equal(
        _trajectories(run), _trajectories(reference).query("epoch == 1").reset_index(drop=True)
    )

    assert cli("train", features_card, "--out", run, *TRAIN, "--resume").exit_code == 0
    pd.testing.assert_frame_equal(_trajectories(run), _trajectories(reference))
    assert [row["epoch"] for row in read_metrics(run)] == [1, 2, 3]


def test_a_checkpoint_that_fails_inside_torch_save_names_the_disk_not_torch(tmp_path, monkeypatch):
    # torch.save turns the OSError of its file into a RuntimeError; the staging keeps the first
    import torch

    _fail_staged_write(monkeypatch, number=1)
    target = tmp_path / "checkpoint.pt"
    with pytest.raises(OutputError, match=r"checkpoint.pt: No space left on device \(.* free"):
        with files.staged() as staging:
            staging.write(target, lambda h: torch.save({"w": torch.zeros(10_000)}, h))
    assert list(tmp_path.iterdir()) == []


def test_files_staged_together_are_all_written_or_none(tmp_path, monkeypatch):
    (tmp_path / "b.txt").write_text("old")
    _fail_staged_write(monkeypatch, number=2)
    with pytest.raises(OutputError, match="b.txt: No space left on device"):
        with files.staged() as staging:
            staging.write(tmp_path / "a.txt", lambda h: h.write(b"new a"))
            staging.write(tmp_path / "b.txt", lambda h: h.write(b"new b" * 100))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt"]
    assert (tmp_path / "b.txt").read_text() == "old"

    with files.staged() as staging:
        staging.write(tmp_path / "a.txt", lambda h: h.write(b"new a"))
        staging.write(tmp_path / "b.txt", lambda h: h.write(b"new b"))
    assert [(tmp_path / n).read_text() for n in ("a.txt", "b.txt")] == ["new a", "new b"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_run_directory_made_read_only_mid_run(features_card, tmp_path, tiny, cli):
    run, reference_run = tmp_path / "run", tmp_path / "reference"
    train(features_card, reference_run, config=tiny(epochs=3))

    def read_only_after_first(row: dict) -> None:
        if row["epoch"] == 1:
            run.chmod(stat.S_IRUSR | stat.S_IXUSR)
            (run / "trajectories").chmod(stat.S_IRUSR | stat.S_IXUSR)

    try:
        with pytest.raises(OutputError, match="Permission denied; epoch 2 is not recorded"):
            train(features_card, run, config=tiny(epochs=3), on_epoch=read_only_after_first)
    finally:
        run.chmod(stat.S_IRWXU)
        (run / "trajectories").chmod(stat.S_IRWXU)
    assert [row["epoch"] for row in read_metrics(run)] == [1]
    assert sorted(p.name for p in (run / "trajectories").iterdir()) == ["epoch-0001.parquet"]
    assert _temporary_files(run) == []
    train(features_card, run, config=tiny(epochs=3), resume=True)
    pd.testing.assert_frame_equal(_trajectories(run), _trajectories(reference_run))


# --- a real file system: a small tmpfs in a user namespace, where the kernel allows it ---------

_DRIVER = """
import os, subprocess, sys
fault = sys.argv[1]
import ilt_audit.training.loop as loop
real = loop._train_epoch
def epoch_then_fault(run, epoch, *rest):
    out = real(run, epoch, *rest)
    if epoch == 2:  # epoch 1 is on disk; the disk fills up (or turns read-only) before epoch 2's
        if fault == "full":
            with open(os.environ["FILLER"], "wb", buffering=0) as filler:
                try:
                    while True:
                        filler.write(b"\\0" * 4096)
                except OSError:
                    pass
        else:
            # a read-only mount over the run directory (the lock's open file keeps the disk
            # itself from being remounted read-only)
            run_dir = os.environ["DISK"] + "/run"
            subprocess.run(["mount", "--bind", run_dir, run_dir], check=True)
            subprocess.run(["mount", "-o", "remount,bind,ro", run_dir], check=True)
    return out
loop._train_epoch = epoch_then_fault
sys.argv = ["ilt-audit", *sys.argv[2:]]
from ilt_audit.cli import main
main()
"""

_SCENARIO = """
set -u
mkdir -p "$DISK" && mount -t tmpfs -o size=2m tmpfs "$DISK" || exit 77
"$PYTHON" -c "$DRIVER" "$FAULT" train "$CARD" --out "$DISK/run" $TRAIN 2> "$RESULT/stderr"
echo $? > "$RESULT/code"
ls -A "$DISK/run" "$DISK/run/trajectories" > "$RESULT/listing"
umount "$DISK/run" 2> /dev/null; rm -f "$FILLER"
"$PYTHON" -m ilt_audit train "$CARD" --out "$DISK/run" $TRAIN --resume 2>> "$RESULT/stderr"
echo $? > "$RESULT/resumed"
cp -r "$DISK/run/trajectories" "$RESULT/trajectories"
"""


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_real_full_or_read_only_disk_mid_run(fault, features_card, tmp_path, reference):
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) here")
    result = tmp_path / "result"
    result.mkdir()
    disk = tmp_path / "disk"
    env = {
        **os.environ,
        "DISK": str(disk),
        "FILLER": str(disk / "filler"),
        "PYTHON": sys.executable,
        "DRIVER": textwrap.dedent(_DRIVER),
        "FAULT": fault,
        "CARD": str(features_card),
        "TRAIN": " ".join(TRAIN),
        "RESULT": str(result),
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "COLUMNS": "200",
        "NO_COLOR": "1",
    }
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", _SCENARIO],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    mounted = (result / "code").exists()  # the scenario got past unshare and mount
    if not mounted and (done.returncode == 77 or done.stderr.startswith("unshare:")):
        pytest.skip(f"no tmpfs for an unprivileged test here: {done.stderr.strip()[:200]}")
    assert mounted, done.stderr  # anything else that stopped the scenario is a failure

    err = (result / "stderr").read_text()
    assert (result / "code").read_text().strip() == "2", err
    assert "Traceback" not in err
    reason = "No space left on device" if fault == "full" else "Read-only file system"
    assert f"cannot write {disk / 'run' / 'trajectories' / 'epoch-0002.parquet'}: {reason}" in (
        normalise(err)
    )
    if fault == "full":
        assert "free on the file system of" in normalise(err)
    listing = (result / "listing").read_text().split()
    assert "epoch-0001.parquet" in listing
    assert "epoch-0002.parquet" not in listing
    assert not [name for name in listing if ".tmp-" in name]
    assert (result / "resumed").read_text().strip() == "0", err
    pd.testing.assert_frame_equal(_trajectories(result), _trajectories(reference))


# --- the other commands' outputs ------------------------------------------------------------------


def test_corrupt_on_a_full_disk_writes_nothing(features_card, tmp_path, cli, monkeypatch):
    import pyarrow.parquet as pq

    real_write = pq.write_table

    def half_then_full(table, where, **kwargs):
        real_write(table, where, **kwargs)
        Path(where).write_bytes(Path(where).read_bytes()[:100])
        raise OSError(errno.ENOSPC, "Error writing bytes to file")  # as Arrow raises it

    monkeypatch.setattr(pq, "write_table", half_then_full)
    out = tmp_path / "noisy"
    result = cli("corrupt", features_card, "--task", "label", "--fraction", "0.2", "--out", out)
    assert result.exit_code == 2, result.err
    assert "Traceback" not in result.err
    message = normalise(result.err)
    # Arrow does not say which file it was writing: the folder that was not written is named
    assert f"Error: cannot write {out}: No space left on device (" in message
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_decisions_on_a_full_disk_name_the_database(planted_run, tmp_path, monkeypatch):
    import sqlite3

    from ilt_audit.review import decisions
    from ilt_audit.review.decisions import Decision, DecisionStore

    run = tmp_path / "run"
    shutil.copytree(planted_run.run, run)
    store = DecisionStore(run)
    real_connect = sqlite3.connect

    def full_connect(*args, **kwargs):  # SQLite's own full disk: no page past the current ones
        db = real_connect(*args, **kwargs)
        db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
        return db

    monkeypatch.setattr(decisions.sqlite3, "connect", full_connect)
    many = [Decision(f"r{i:03d}", "label", "keep", reviewer="x" * 2000) for i in range(60)]
    with pytest.raises(OutputError, match=r"review.sqlite: No space left on device \("):
        store.record(many)
    monkeypatch.undo()
    assert store.latest().empty  # the transaction is rolled back whole
