"""ilt-audit: find wrong labels in multi-task datasets with instance-level task parameters.

The public functions are imported lazily so that ``import ilt_audit`` (and the CLI's ``--help``)
never pays for importing torch.

Example:
    >>> from ilt_audit import train, rank
    >>> run = train("sample_manifests/shapes/card.toml", out="runs/shapes")  # doctest: +SKIP
    >>> rank("runs/shapes", top="10%").head()  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "open_dataset": "ilt_audit.dataset.opening",
    "load_card": "ilt_audit.dataset.card",
    "load_manifest": "ilt_audit.dataset.manifest",
    "load_dataset": "ilt_audit.dataset.opening",
    "TrainConfig": "ilt_audit.training.loop",
    "train": "ilt_audit.training.loop",
    "rank": "ilt_audit.audit.ranking",
    "scores": "ilt_audit.audit.ranking",
    "corrupt": "ilt_audit.corruption.planting",
    "evaluate": "ilt_audit.audit.evaluation",
    "read_trajectories": "ilt_audit.run.trajectories",
    "read_epochs": "ilt_audit.run.trajectories",
    "read_matrix": "ilt_audit.run.trajectories",
    "DecisionStore": "ilt_audit.review.decisions",
    "label_studio_tasks": "ilt_audit.review.export",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ilt_audit' has no attribute {name!r}")
