"""The run stage: what a training run leaves behind, and the one way to read it back.

- :mod:`~ilt_audit.run.directory`: the run directory (``config.json``, ``metrics.json``, the
  checkpoint) and :func:`~ilt_audit.run.directory.open_run`, the one door into a finished or
  running run;
- :mod:`~ilt_audit.run.trajectories`: one Parquet file per epoch, every instance's ``log σ²``,
  loss and evidence; read as tables or as (N, epochs) matrices;
- :mod:`~ilt_audit.run.evidence`: the evidence columns those files hold, each with how it is
  computed from a batch of the network's outputs (so that the schema and the computation are
  one table, :data:`~ilt_audit.run.evidence.SIGNALS`).

May import: :mod:`ilt_audit.dataset`, :mod:`ilt_audit.internal`, :mod:`ilt_audit.errors`.
"""
