"""The training stage: one multi-task network with instance-level task parameters.

- :mod:`~ilt_audit.training.loop`: :func:`~ilt_audit.training.loop.train`, the epoch loop that
  writes the run directory (resume, torchrun, the checkpoint);
- :mod:`~ilt_audit.training.model`: the networks (an MLP for features, a small CNN or a
  torchvision backbone for images) and their heads;
- :mod:`~ilt_audit.training.losses`: per-instance, unweighted losses per task type;
- :mod:`~ilt_audit.training.weighting`: how the (B, K) losses become one (ILT, uncertainty,
  Mao's, equal);
- :mod:`~ilt_audit.training.ilt_params`: the (N, K) table of ``log σ²`` and its update;
- :mod:`~ilt_audit.training.metrics`: the model's quality per task on the validation split.

May import: :mod:`ilt_audit.run`, :mod:`ilt_audit.dataset`, :mod:`ilt_audit.internal`,
:mod:`ilt_audit.errors`; never :mod:`ilt_audit.corruption`, which sits beside it.
"""
