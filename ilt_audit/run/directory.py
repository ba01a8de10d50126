"""The run directory: its small files (``config.json``, ``metrics.jsonl``) and the one door
readers open it through.

Every reader (``rank``, ``evaluate``, ``gate``, ``report``) receives an opened :class:`Run` from
:func:`open_run`: the configuration and the finished epochs read once, and an unfinished run
refused there, in one place, unless the reader was told to read it as it is (``--allow-partial``).

Example:
    >>> run = open_run("runs/shapes")  # doctest: +SKIP
    >>> run.epochs[-1], run.task_names  # doctest: +SKIP
    (30, ['shape', 'size'])
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ilt_audit.errors import CardError, RunDirError
from ilt_audit.internal.files import Staging, write_text_atomic

if TYPE_CHECKING:
    from ilt_audit.dataset.manifest import Manifest

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The resolved configuration a run was trained with."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise RunDirError(
            f"{run_dir}: not a run directory (no {CONFIG}); create one with `ilt-audit train`"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path}: unreadable run configuration: {exc}") from None
    if not isinstance(config, dict):
        raise RunDirError(f"{path}: unreadable run configuration: not a JSON object")
    return config


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    write_text_atomic(Path(run_dir) / CONFIG, json.dumps(config, indent=2, sort_keys=True) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """One dict per finished epoch, in order."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    rows = []
    try:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                row = json.loads(line)
                if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
                    raise ValueError(f"line {number} is not an epoch's record")
                rows.append(row)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise RunDirError(f"{path}: unreadable metrics: {exc}") from None
    return rows


def write_metrics(
    run_dir: Path, rows: list[dict[str, Any]], *, into: Staging | None = None
) -> None:
    """Rewrite ``metrics.jsonl`` whole (it is small), atomically; with ``into``, as one of the
    files staged together (:func:`~ilt_audit.internal.files.staged`)."""
    text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
    if into is not None:
        into.write(Path(run_dir) / METRICS, lambda handle: handle.write(text.encode("utf-8")))
    else:
        write_text_atomic(Path(run_dir) / METRICS, text)


@dataclass(frozen=True, eq=False)
class Run:
    """A run directory opened for reading: what every reader needs, read once.

    ``epochs`` are the finished epochs, ascending: those ``metrics.jsonl`` records (it is written
    after the epoch's trajectory file and before its checkpoint), each with its trajectory file.
    A run is *finished* when it finished the epochs it planned; a reader given an unfinished run
    (``allow_partial``) says so in what it writes (:attr:`partial_note`).
    """

    path: Path
    config: dict[str, Any]
    metrics: tuple[dict[str, Any], ...]
    epochs: tuple[int, ...]
    planned: int  # the epochs the run was asked to train
    _read: dict[str, Any] = field(default_factory=dict, repr=False)  # what was read on demand

    @property
    def finished(self) -> bool:
        return len(self.epochs) >= self.planned

    @property
    def partial_note(self) -> str | None:
        """One sentence for outputs read from an unfinished run, None for a finished one."""
        if self.finished:
            return None
        return (
            f"Unfinished run, read as it is (--allow-partial): {len(self.epochs)} of "
            f"{self.planned} epochs finished; scores are those of epoch {self.epochs[-1]}."
        )

    @property
    def weighting(self) -> str:
        return str(self.config.get("options", {}).get("weighting", "ilt"))

    @property
    def task_names(self) -> list[str]:
        return [t["name"] for t in self.config.get("tasks", [])]

    @property
    def task_types(self) -> dict[str, str]:
        return {t["name"]: t["type"] for t in self.config.get("tasks", [])}

    @property
    def resume_command(self) -> str:
        card = self.config.get("card", {}).get("path", "CARD")
        return (
            f"ilt-audit train {shlex.quote(str(card))} --out {shlex.quote(str(self.path))} --resume"
        )

    def manifest(self, purpose: str) -> Manifest:
        """The manifest of the card the run was trained on, read once; ``purpose`` says why, in
        the error when it cannot be read."""
        if "manifest" not in self._read:
            from ilt_audit.dataset.opening import open_dataset

            try:
                self._read["manifest"] = open_dataset(
                    self.config["card"]["path"], check_files=False
                ).manifest
            except (CardError, KeyError, TypeError) as exc:
                raise RunDirError(
                    f"{self.path}: cannot read the run's dataset card {purpose}: {exc}"
                ) from None
        manifest: Manifest = self._read["manifest"]
        return manifest


RunLike = Run | str | Path


def open_run(run: RunLike, *, allow_partial: bool = False) -> Run:
    """Open a run directory for reading (a :class:`Run` is returned as it is).

    A run that did not finish its planned epochs is a :class:`RunDirError` naming the epochs
    finished and the command that resumes it, unless ``allow_partial``; a run with no finished
    epoch is refused either way.
    """
    if isinstance(run, Run):
        return run
    from ilt_audit.run.trajectories import epoch_files

    path = Path(run)
    config = read_config(path)
    metrics = tuple(read_metrics(path))
    try:
        planned = int(config["options"]["epochs"])
    except (KeyError, TypeError, ValueError):
        raise RunDirError(f"{path / CONFIG}: no planned epoch count (options.epochs)") from None
    files = epoch_files(path)
    recorded = [row["epoch"] for row in metrics]
    missing = [e for e in recorded if e not in files]
    if missing:
        raise RunDirError(
            f"{path}: epoch {missing[0]} is recorded in {METRICS} but its trajectory file is "
            "missing; the run directory was changed after training"
        )
    opened = Run(path, config, metrics, tuple(recorded), planned)
    if not opened.finished and not (allow_partial and recorded):
        done = f"{len(recorded)} of {planned} epochs finished"
        if not recorded:
            raise RunDirError(
                f"{path}: the run has no finished epoch ({done}); resume it with "
                f"`{opened.resume_command}`"
            )
        raise RunDirError(
            f"{path}: unfinished run: {done}. Resume it with `{opened.resume_command}`, or read "
            "it as it is with --allow-partial"
        )
    return opened
