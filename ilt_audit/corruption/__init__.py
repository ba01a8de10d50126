"""The corruption stage: plant wrong labels in a clean dataset, so that detection can be measured.

- :mod:`~ilt_audit.corruption.planting`: :func:`~ilt_audit.corruption.planting.corrupt` (which
  labels, how many, the record of what was planted: ``corruption.parquet``) and
  :func:`~ilt_audit.corruption.planting.read_truth`;
- :mod:`~ilt_audit.corruption.modes`: the kinds of error, per task type (:data:`MODES`).

May import: :mod:`ilt_audit.run`, :mod:`ilt_audit.dataset`, :mod:`ilt_audit.internal`,
:mod:`ilt_audit.errors`; never :mod:`ilt_audit.training`, which sits beside it.
"""
