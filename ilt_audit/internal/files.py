"""Atomic, durable file writing: a crash or a power cut never leaves a half-written file behind.

A file is written to a temporary name in its folder, flushed to disk (``fsync``), renamed onto
its name in one step (``os.replace``), and the folder itself is flushed so that the rename is on
disk too: once a write returns, the file survives a power cut whole, and before it returns the
old file (or none) is what a reader sees.

The folder must exist: a file the user named (``--output``, ``--summary``, ``report --out``) in
a folder that does not exist is refused with :class:`~ilt_audit.errors.OutputError`, naming the
folder, as is a file that cannot be written. Folders the library owns (a run directory, its
``trajectories/``) are created with ``make_folder=True``.

A write that fails (a full disk, a quota, a read-only file system, a permission) is an
:class:`~ilt_audit.errors.OutputError` naming the file and the reason, with the space left when
the disk is full; its temporary file is removed. :func:`staged` writes several files that belong
together (an epoch's trajectory file, metrics and checkpoint): all of them, or none.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from ilt_audit.errors import OutputError


def _fsync(path: Path, *, folder: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if folder else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
WRITE_ERRNOS = {*_NO_SPACE, errno.EROFS}  # errors only a write meets (a read may meet EACCES)


def _size(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def write_error(path: Path, exc: OSError) -> OutputError:
    """The error of a file that could not be written: its name, the reason, and the space left on
    its file system when the disk (or a quota) is full."""
    reason = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))
    if exc.errno in _NO_SPACE:
        try:
            free = _size(shutil.disk_usage(path.parent).free)
        except OSError:
            free = "unknown"
        reason += f" ({free} free on the file system of {path.parent})"
    return OutputError(f"cannot write {path}: {reason}")


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
    _prepare(path, make_folder)
    tmp = _tmp(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent, folder=True)
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        _discard(tmp)


def _prepare(path: Path, make_folder: bool) -> None:
    if not make_folder:
        check_output(path)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(path, exc) from None


def _discard(path: Path) -> None:
    """Remove a temporary file if it is there; on a read-only file system even the attempt fails
    (and there is nothing to remove): the error being raised is the one to report."""
    with suppress(OSError):
        path.unlink(missing_ok=True)


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_atomic(path: Path, write: Callable[[Path], object], *, make_folder: bool = False) -> None:
    """Call ``write(tmp)`` and move the result onto ``path`` in one rename, durably."""
    with atomic_path(path, make_folder=make_folder) as tmp:
        write(tmp)


def write_text_atomic(path: Path, text: str, *, make_folder: bool = False) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), make_folder=make_folder)


class _Kept:
    """A file opened for writing that keeps the first error of a write: ``torch.save`` turns it
    into a ``RuntimeError`` that no longer says the disk is full."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.handle.flush()

    def tell(self) -> int:
        return self.handle.tell()

    @property
    def closed(self) -> bool:
        return self.handle.closed


def _open(path: Path) -> BinaryIO:
    """The one place a staged file is opened for writing (tests fail its writes)."""
    return open(path, "xb")


class Staging:
    """Files written under temporary names by :func:`staged`, renamed onto their names at its end."""

    def __init__(self) -> None:
        self.files: list[tuple[Path, Path]] = []  # (temporary name, name)

    def write(
        self, path: Path, write: Callable[[BinaryIO], object], *, make_folder: bool = False
    ) -> None:
        """Call ``write(file)`` on a new temporary file beside ``path`` and flush it to disk; the
        rename waits for the end of the block."""
        path = Path(path)
        _prepare(path, make_folder)
        tmp = _tmp(path)
        self.files.append((tmp, path))
        kept: _Kept | None = None
        try:
            with _open(tmp) as handle:
                kept = _Kept(handle)
                write(kept)  # type: ignore[arg-type]
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise write_error(path, exc) from None
        except Exception:
            if kept is None or kept.error is None:
                raise
            raise write_error(path, kept.error) from None

    def commit(self) -> None:
        """Rename every file onto its name, in the order written, and flush their folders.

        A rename that fails after others succeeded (it needs no space, so hardly ever) leaves the
        earlier ones in place when one of them replaced a file, as a crash between them would,
        and removes them when all were new."""
        done: list[Path] = []
        replaced = False
        for tmp, path in self.files:
            existed = path.exists()
            try:
                os.replace(tmp, path)
            except OSError as exc:
                if not replaced:
                    for new in done:
                        _discard(new)
                raise write_error(path, exc) from None
            done.append(path)
            replaced = replaced or existed
        try:
            for folder in dict.fromkeys(path.parent for _, path in self.files):
                _fsync(folder, folder=True)
        except OSError as exc:
            raise write_error(self.files[-1][1], exc) from None


@contextmanager
def staged() -> Iterator[Staging]:
    """Write several files that belong together: all of them, or none.

    Each file is written and flushed under a temporary name inside the block (a full disk fails
    there, before any file is replaced); when the block succeeds they are renamed onto their
    names in the order they were written. When it fails, every temporary file is removed and
    no file has changed.

    Example:
        >>> with staged() as files:  # doctest: +SKIP
        ...     files.write(run / "a.bin", lambda f: f.write(b"a"))
        ...     files.write(run / "b.bin", lambda f: f.write(b"b"))
    """
    staging = Staging()
    try:
        yield staging
        staging.commit()
    finally:
        for tmp, _ in staging.files:
            _discard(tmp)
