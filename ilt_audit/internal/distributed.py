"""Training under ``torchrun``: this process's place in the job, and the few exchanges it needs.

``torchrun --nproc-per-node N -m ilt_audit train …`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment; :func:`from_env` reads them, and a plain
``ilt-audit train`` is a job of one. The exchanges are collective calls of
``torch.distributed`` (gloo on the CPU, nccl on CUDA) on tensors only: nothing is pickled.

What travels, per epoch: DDP's gradient all-reduce (every step, as in any DDP job) and, once at the
epoch's end, one sum of the ``(N, K)`` losses and the ``(N,)`` trained flags (:func:`sum_`), after
which every rank applies the same ILT update to the whole table. A job of one calls none of them.

Every collective call waits at most :data:`TIMEOUT` for the other ranks (the process group's
timeout, under gloo and nccl alike); a rank that died or stopped answering ends the wait with
:class:`PeerFailed` naming what the job was doing (:func:`watching`), not a hang or a traceback.

Example:
    >>> place = from_env()  # doctest: +SKIP
    >>> place.rank, place.world  # doctest: +SKIP
    (0, 2)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ilt_audit.errors import IltAuditError, OptionError

TIMEOUT = timedelta(
    minutes=30
)  # a collective call waits this long for the other ranks (gloo, nccl)


class PeerFailed(IltAuditError):
    """Another rank of the job stopped on an error; this rank stops too (exit 2)."""


@dataclass(frozen=True)
class Place:
    """This process's place in a ``torchrun`` job: its rank among ``world`` processes, and how
    many times torchrun restarted the job's processes (``--max-restarts``)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    restarts: int = 0  # TORCHELASTIC_RESTART_COUNT: > 0 in a process torchrun restarted
    job: str | None = None  # TORCHELASTIC_RUN_ID: the same in every restart of one torchrun job

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the run directory and shows progress."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def from_env() -> Place:
    """The place ``torchrun`` gave this process (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``TORCHELASTIC_RESTART_COUNT``, ``TORCHELASTIC_RUN_ID``), or a job of one."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        raise OptionError(
            "WORLD_SIZE, RANK, LOCAL_RANK and TORCHELASTIC_RESTART_COUNT must be integers "
            "(they are set by torchrun)"
        ) from None
    if world < 1 or not 0 <= rank < world:
        raise OptionError(f"RANK {rank} is not within WORLD_SIZE {world} (set by torchrun)")
    return Place(rank, world, local_rank, restarts, os.environ.get("TORCHELASTIC_RUN_ID"))


def start(place: Place, device: torch.device) -> None:
    """Join the job's process group (once per process): nccl on CUDA, gloo on the CPU."""
    if not place.active or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # torchrun's agent keeps one store for every attempt of a job: the keys of the attempt before
    # a restart (a dead rank's address) would send the new ranks to ports nobody listens on, so
    # each attempt joins under its own prefix
    store, _, _ = next(dist.rendezvous("env://", place.rank, place.world, timeout=TIMEOUT))
    store.set_timeout(TIMEOUT)
    store = dist.PrefixStore(f"ilt-audit/attempt-{place.restarts}", store)
    dist.init_process_group(
        backend, store=store, rank=place.rank, world_size=place.world, timeout=TIMEOUT
    )


def stop() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _all_reduce(tensor: torch.Tensor, op: dist.ReduceOp.RedOpType) -> None:
    """``all_reduce`` in place; under nccl a CPU tensor (the ILT table's losses, a flag) makes
    the trip through the process's GPU, since nccl reduces CUDA tensors only."""
    if tensor.device.type != "cuda" and dist.get_backend() == "nccl":
        on_gpu = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_gpu, op=op)
        tensor.copy_(on_gpu)
    else:
        dist.all_reduce(tensor, op=op)


def sum_(tensor: torch.Tensor, place: Place) -> torch.Tensor:
    """Sum ``tensor`` over the ranks, in place (nothing to do in a job of one)."""
    if place.active:
        _all_reduce(tensor, dist.ReduceOp.SUM)
    return tensor


def agree(ok: bool, place: Place, what: str) -> None:
    """Every rank says whether it got through ``what``; if one did not, the others stop too.

    The rank that failed raises its own error (with the message that names the file and row);
    the others raise :class:`PeerFailed`, so that every rank of the job ends with exit code 2
    instead of waiting for a collective call that never comes.
    """
    if not place.active:
        return
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
    _all_reduce(flag, dist.ReduceOp.MIN)
    if ok and int(flag) == 0:
        raise PeerFailed(f"rank {place.rank}: another rank stopped during {what}; see its error")


def first(value: int, place: Place) -> int:
    """The smallest of each rank's ``value`` (e.g. the first bad row each rank found)."""
    if not place.active:
        return value
    tensor = torch.tensor([value], dtype=torch.int64)
    _all_reduce(tensor, dist.ReduceOp.MIN)
    return int(tensor)


def any_(flag: bool, place: Place) -> bool:
    """Whether ``flag`` is set on any rank (the flag itself in a job of one)."""
    if not place.active:
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32)
    _all_reduce(tensor, dist.ReduceOp.MAX)
    return bool(tensor)


def from_main(flag: bool, place: Place) -> bool:
    """Rank 0's ``flag``, on every rank (a decision rank 0 takes under the run's lock)."""
    if not place.active:
        return flag
    tensor = torch.tensor([1 if flag and place.main else 0], dtype=torch.int32)
    _all_reduce(tensor, dist.ReduceOp.MAX)
    return bool(tensor)


@contextmanager
def watching(place: Place, what: str) -> Iterator[None]:
    """Turn a collective call that failed (another rank died, or none answered within
    :data:`TIMEOUT`) during ``what`` into :class:`PeerFailed`, with the backend's own reason."""
    try:
        yield
    except RuntimeError as exc:  # gloo's errors are plain RuntimeErrors that name gloo
        if not place.active or not (isinstance(exc, dist.DistError) or "gloo" in str(exc)):
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PeerFailed(
            f"rank {place.rank}: lost the other ranks during {what} ({reason}); one of them died "
            f"or did not answer within {int(TIMEOUT.total_seconds())} s. Every finished epoch is "
            "kept: run the job again with --resume"
        ) from None
