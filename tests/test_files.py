"""Atomic, durable writes: fsync before the rename and of the folder after it; outputs checked."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ilt_audit.errors import OutputError
from ilt_audit.internal import files
from ilt_audit.internal.files import check_output, write_text_atomic


def test_a_write_flushes_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_open = os.fsync, os.replace, os.open
    opened: dict[int, str] = {}

    def record_open(path, flags, *args):
        fd = real_open(path, flags, *args)
        opened[fd] = os.fspath(path)
        return fd

    def record_fsync(fd):
        events.append(("fsync", opened[fd]))
        real_fsync(fd)

    def record_replace(src, dst):
        events.append(("replace", os.fspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "open", record_open)
    monkeypatch.setattr(files.os, "fsync", record_fsync)
    monkeypatch.setattr(files.os, "replace", record_replace)
    target = tmp_path / "out.txt"
    write_text_atomic(target, "hello")
    assert target.read_text() == "hello"
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "replace", "fsync"]
    assert events[0][1].startswith(str(tmp_path / ".out.txt.tmp-"))  # the data, before the rename
    assert events[2][1] == str(tmp_path)  # the folder's entry, after it


def test_a_missing_folder_is_refused_and_not_created(tmp_path):
    target = tmp_path / "nowhere" / "out.txt"
    with pytest.raises(OutputError, match=f"the folder {tmp_path / 'nowhere'} does not exist"):
        write_text_atomic(target, "x")
    assert not target.parent.exists()


def test_library_folders_are_created_when_asked(tmp_path):
    target = tmp_path / "run" / "trajectories" / "x.txt"
    write_text_atomic(target, "x", make_folder=True)
    assert target.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_output(folder / "out.txt")
    finally:
        folder.chmod(stat.S_IRWXU)


def test_a_folder_as_the_output_file_is_refused(tmp_path):
    with pytest.raises(OutputError, match="it is a folder"):
        write_text_atomic(tmp_path, "x")


def test_a_folder_no_file_can_be_created_in_is_refused_even_for_root():
    # os.access says yes to root everywhere; /proc takes no new file whoever asks
    with pytest.raises(OutputError, match="the folder /proc is not writable"):
        check_output(Path("/proc/ilt-audit-summary.md"))
