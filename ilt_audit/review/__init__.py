"""The review stage: what people read, decide and correct.

- :mod:`~ilt_audit.review.report`: the one-page HTML report of a run;
- :mod:`~ilt_audit.review.app`: the local review app (Starlette), its decisions kept in
  :mod:`~ilt_audit.review.decisions` (``review.sqlite``);
- :mod:`~ilt_audit.review.fix`: the decisions applied to a corrected copy of the dataset;
- :mod:`~ilt_audit.review.export`: suspects exported to labelling tools (Label Studio);
- :mod:`~ilt_audit.review.instances`: what the report and the app draw of one instance (its
  input, its labels, the model's prediction, the why line);
- :mod:`~ilt_audit.review.pages`: the Jinja2 environment of ``templates/``; ``static/`` holds
  the app's script.

May import: every stage below it (:mod:`ilt_audit.audit`, :mod:`ilt_audit.training`,
:mod:`ilt_audit.corruption`, :mod:`ilt_audit.run`, :mod:`ilt_audit.dataset`,
:mod:`ilt_audit.internal`) and :mod:`ilt_audit.errors`; never :mod:`ilt_audit.cli`.
"""
