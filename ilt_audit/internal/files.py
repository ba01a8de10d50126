"""Atomic, durable file writing: a crash or a power cut never leaves a half-written file behind.

A file is written to a temporary name in its folder, flushed to disk (``fsync``), renamed onto
its name in one step (``os.replace``), and the folder itself is flushed so that the rename is on
disk too: once a write returns, the file survives a power cut whole, and before it returns the
old file (or none) is what a reader sees.

The folder must exist: a file the user named (``--output``, ``--summary``, ``report --out``) in
a folder that does not exist is refused with :class:`~ilt_audit.errors.OutputError`, naming the
folder, as is a file that cannot be written. Folders the library owns (a run directory, its
``trajectories/``) are created with ``make_folder=True``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ilt_audit.errors import OutputError


def _fsync(path: Path, *, folder: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if folder else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_output(path: Path) -> None:
    """Refuse, before any work, a file that cannot be written: its folder missing, not a folder,
    or the path itself a folder."""
    path = Path(path)
    folder = path.parent
    if not folder.exists():
        raise OutputError(f"cannot write {path}: the folder {folder} does not exist")
    if not folder.is_dir():
        raise OutputError(f"cannot write {path}: {folder} is not a folder")
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder")
    probe = folder / f".{path.name}.probe-{os.getpid()}"
    try:  # os.access says yes to root everywhere: a file created and removed at once says true
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"cannot write {path}: the folder {folder} is not writable ({exc.strerror or exc})"
        ) from None


@contextmanager
def atomic_path(path: Path, *, make_folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; if the block succeeds, flush it to disk and
    rename it onto ``path``. The temporary file never outlives the block."""
    path = Path(path)
    if make_folder:
        path.parent.mkdir(parents=True, exist_ok=True)
    else:
        check_output(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent, folder=True)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, write: Callable[[Path], object], *, make_folder: bool = False) -> None:
    """Call ``write(tmp)`` and move the result onto ``path`` in one rename, durably."""
    with atomic_path(path, make_folder=make_folder) as tmp:
        write(tmp)


def write_text_atomic(path: Path, text: str, *, make_folder: bool = False) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), make_folder=make_folder)
