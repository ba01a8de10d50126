"""The audit stage: from a run's trajectories and evidence to which labels look wrong.

- :mod:`~ilt_audit.audit.calibration`: :func:`~ilt_audit.audit.calibration.audit`, the
  evidence turned into ``p_wrong`` and an estimated error rate per task;
- :mod:`~ilt_audit.audit.ranking`: every score (:data:`~ilt_audit.audit.ranking.SCORES`) and
  :func:`~ilt_audit.audit.ranking.rank`;
- :mod:`~ilt_audit.audit.explanation`: why a label is suspect, in plain values;
- :mod:`~ilt_audit.audit.gate`: the CI gate (suspects, limits, JSON/JUnit/Markdown);
- :mod:`~ilt_audit.audit.evaluation`: how well the scores find planted errors (AUROC, AP, the
  paper's Table 7);
- :mod:`~ilt_audit.audit.baselines`: what ILT is compared with on the same data: cleanlab on
  cross-validated predictions, and the ceiling (networks that never saw the instance they score).

May import: :mod:`ilt_audit.training`, :mod:`ilt_audit.corruption`, :mod:`ilt_audit.run`,
:mod:`ilt_audit.dataset`, :mod:`ilt_audit.internal`, :mod:`ilt_audit.errors`.
"""
