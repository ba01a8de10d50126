"""The named exceptions of ilt-audit; the CLI turns each into ``Error: …`` and exit code 2
(:class:`Preempted`: 75)."""

from __future__ import annotations


class IltAuditError(Exception):
    """Base class of the errors that are the user's input, not a bug."""


class CardError(IltAuditError):
    """The dataset card, its manifest or a file it points at is invalid."""


class RunDirError(IltAuditError):
    """A run directory is missing, incomplete or does not match the request."""


class TruthError(IltAuditError):
    """A corruption (ground-truth) file is missing or does not match the run."""


class OptionError(IltAuditError):
    """An option has a value outside what it accepts."""


class TrainingDiverged(IltAuditError):
    """Training produced a non-finite loss; the epochs finished before it are kept."""


class OutputError(IltAuditError):
    """An output file cannot be written: its folder is missing or not writable, or the disk is
    full."""


class Preempted(IltAuditError):
    """Training stopped on SIGTERM (a scheduler's preemption) at a batch boundary; the epochs
    finished before it are kept and ``--resume`` continues (exit 75, "try again later")."""
