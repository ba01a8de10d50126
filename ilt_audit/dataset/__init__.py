"""The dataset stage: what the data is, read and checked before anything trains on it.

- :mod:`~ilt_audit.dataset.card`: the dataset card (TOML), parsed and checked on its own;
- :mod:`~ilt_audit.dataset.manifest`: the card's table, every row checked;
- :mod:`~ilt_audit.dataset.tags`: a multi-label task's tag sets, read into a multi-hot table
  and written back in their column's form;
- :mod:`~ilt_audit.dataset.opening`: :func:`open_dataset`, the one door: reads a card and its
  manifest once, for training, ``corrupt``, ``fix``, ``init`` and a run's view of its data;
- :mod:`~ilt_audit.dataset.files`: the files the table names: one ``stat`` each, one parallel
  pass that decodes and checks them all;
- :mod:`~ilt_audit.dataset.huggingface`: tables as the Hugging Face ``datasets`` library writes
  them: ``save_to_disk`` folders (memory-mapped), files stored in the table, ``ClassLabel`` names;
- :mod:`~ilt_audit.dataset.record`: what a run records of its inputs, so that ``--resume``
  refuses data that changed;
- :mod:`~ilt_audit.dataset.loader`: the validated data set and its batches;
- :mod:`~ilt_audit.dataset.derived`: writing a corrupted or corrected copy of a dataset, or one
  with a train/val split column added (cross-validation folds);
- :mod:`~ilt_audit.dataset.layouts`: reading a folder or a table into a new card (``init``).

May import: :mod:`ilt_audit.internal` and :mod:`ilt_audit.errors` only (it is the first stage;
``pyproject.toml``'s import-linter contract checks this).

The names below are imported lazily, so that opening a card for its manifest never imports torch.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "open_dataset": "ilt_audit.dataset.opening",
    "load_dataset": "ilt_audit.dataset.opening",
    "Source": "ilt_audit.dataset.opening",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ilt_audit.dataset' has no attribute {name!r}")
