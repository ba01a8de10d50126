"""Preemption: a scheduler's SIGTERM asks training to stop at the next batch boundary.

Slurm sends SIGTERM some time before it kills a job (``#SBATCH --signal=TERM@120``), and torchrun's
agent passes the SIGTERM it gets on to every process of the job. While :func:`watch` is active
the signal only raises a flag; the training loop reads it between batches (:meth:`Stop.now`), so
that the epoch being trained is dropped whole and every finished one stays on disk.

Under torchrun the ranks must stop at the same batch, or one would wait for the others in DDP's
next gradient exchange: every ``every`` batches (and before an epoch's first) they agree through
one all-reduce of the flag. A job of one reads its flag at every batch, which costs nothing.

Example:
    >>> with watch(place) as stop:  # doctest: +SKIP
    ...     for step, batch in enumerate(loader, start=1):
    ...         if stop.now(step):
    ...             break
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from ilt_audit.internal import distributed
from ilt_audit.internal.distributed import Place

EVERY = 8  # batches between two agreements of the ranks on the flag (one 4-byte all-reduce)


class Stop:
    """Whether SIGTERM came, as the ranks of the job agree on it at batch boundaries."""

    def __init__(self, place: Place, every: int = EVERY) -> None:
        self.place = place
        self.every = every
        self.signalled = False  # set by the signal handler, on this rank

    def now(self, step: int) -> bool:
        """Whether to stop before batch ``step`` (1-based) of an epoch; the same answer on every
        rank."""
        if not self.place.active:
            return self.signalled
        if (step - 1) % self.every:
            return False
        return distributed.any_(self.signalled, self.place)


@contextmanager
def watch(place: Place) -> Iterator[Stop]:
    """Catch SIGTERM for the block: it sets the returned :class:`Stop`'s flag instead of ending
    the process; the previous handler is back afterwards.

    Signal handlers belong to the main thread: a ``train`` called in another thread gets a
    :class:`Stop` that never fires.
    """
    stop = Stop(place)
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.signalled = True

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)
