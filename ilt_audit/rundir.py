"""The run directory's small files: ``config.json`` and ``metrics.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ilt_audit.errors import RunDirError
from ilt_audit.internal.files import write_text_atomic

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
        config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{path}: unreadable run configuration: {exc}") from None
    return config


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    write_text_atomic(Path(run_dir) / CONFIG, json.dumps(config, indent=2, sort_keys=True) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """One dict per finished epoch, in order."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` whole (it is small), atomically."""
    text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
    write_text_atomic(Path(run_dir) / METRICS, text)
