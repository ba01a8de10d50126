"""One writer per run directory: an OS lock on ``RUN_DIR/.lock``, held while a run is written.

The lock is ``flock(LOCK_EX | LOCK_NB)`` on POSIX (``msvcrt.locking`` on Windows). The operating
system drops it when the process holding it ends, however it ends, so a run killed with
``kill -9`` never leaves a stale lock: the file it leaves behind means nothing on its own (it
holds the pid of its last holder, for the error message only). Meant for local file systems.

``flock`` locks belong to an open file, not a process: a second attempt in the same process (two
``train`` calls in two threads) is refused too. A forked child (a DataLoader worker) closes its
copy of the lock's descriptor, so that the lock ends with the process that took it.

A holder removes the lock file when it is done, and the folder too if it created it and wrote
nothing in it, so a failed ``train`` leaves nothing behind. Removing a lock file is safe because
every holder checks, once it has the lock, that the file it locked is still the one at
``RUN_DIR/.lock``, and starts again if it is not (a file removed while it was being locked).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ilt_audit.errors import RunDirError

LOCK_FILE = ".lock"

_held: set[int] = set()  # descriptors of the locks this process holds; forked children close them

if sys.platform == "win32":
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def _close_in_child() -> None:
    # closing the child's copy leaves the parent's lock held (never unlock here: that would
    # release it for the parent too)
    for fd in _held:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


def _holder(path: Path) -> str:
    """Who holds the lock, from the pid its holder wrote (purely informational)."""
    try:
        pid = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        pid = ""
    if not pid.isdigit():  # not written yet, or unreadable
        return "another process"
    if int(pid) == os.getpid():
        return "another training in this process"
    return f"another process (pid {pid})"


def _acquire(folder: Path) -> tuple[int, bool]:
    """Lock ``folder/.lock``; return its descriptor and whether the folder was created."""
    path = folder / LOCK_FILE
    while True:
        created = not folder.exists()
        if not created and not folder.is_dir():
            raise RunDirError(f"{folder}: exists and is not a directory; choose another --out")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(
                f"{folder}: cannot create the run directory: {exc.strerror}"
            ) from None
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder was removed by a holder that gave up: again
            continue
        except OSError as exc:
            raise RunDirError(f"{path}: cannot open the run directory's lock: {exc}") from None
        if not _try_lock(fd):
            os.close(fd)
            raise RunDirError(
                f"{folder}: {_holder(path)} is training this run directory; "
                "wait for it to finish or choose another --out"
            )
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        mine = os.fstat(fd)
        if current is not None and (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev):
            return fd, created
        os.close(fd)  # its holder removed the file as we locked it: lock the new one


def _remove(folder: Path, created: bool) -> None:
    """Remove the lock file, and the folder if this call created it and it is empty.

    Called while the lock is held: whoever opened the file meanwhile finds, once it gets the
    lock, that the file is gone, and starts again.
    """
    with contextlib.suppress(OSError):  # Windows cannot remove an open file: then it stays
        (folder / LOCK_FILE).unlink()
        if created and not any(folder.iterdir()):
            folder.rmdir()


@contextmanager
def run_lock(folder: str | Path) -> Iterator[None]:
    """Hold the lock of the run directory ``folder`` (created if missing) for the block.

    Raises :class:`~ilt_audit.errors.RunDirError` naming the folder when another process, or
    another thread of this one, holds it. Afterwards the lock file is removed, and the folder too
    if this call created it and nothing was written in it.

    Example:
        >>> with run_lock("runs/shapes"):  # doctest: +SKIP
        ...     ...  # only this block writes into runs/shapes
    """
    folder = Path(folder)
    fd, created = _acquire(folder)
    _held.add(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))  # for the message of a second writer
        yield
    finally:
        _remove(folder, created)
        _held.discard(fd)
        os.close(fd)
