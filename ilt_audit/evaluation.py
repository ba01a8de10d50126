"""How well a run's scores find the labels that :mod:`ilt_audit.corruption` planted.

Per task, with ``k`` corrupted among ``n`` instances (``p = k / n``):

- ``detection_accuracy``: the share of corrupted instances among the top ``p·n = k`` instances by
  score, as in the paper's Table 7 ("how many samples with corrupt labels were found in top 20%
  and 40% of training data for 20% and 40% label corruption"). With the cut at exactly ``k`` it
  equals ``precision`` and ``recall`` at that cut, which are reported too.
- ``auroc``: the probability that a corrupted instance scores higher than a clean one
  (Mann–Whitney U with average ranks, so a tie counts one half); NaN when either class is empty.
- ``average_precision``: the mean, over the corrupted instances, of the precision at their rank.

Ties in the ranking (the top-``k`` cut and average precision) are broken pessimistically: among
equal scores clean instances come first, then the order of the input. So a constant score never
looks like a detector, and the figures do not depend on the order of the rows.

Example:
    >>> evaluate("runs/shapes", "/tmp/shapes-noisy/corruption.parquet")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ilt_audit.corruption import read_truth
from ilt_audit.errors import TruthError
from ilt_audit.ranking import DEFAULT_BY, scores

COLUMNS = [
    "task",
    "n",
    "corrupted",
    "fraction",
    "detection_accuracy",
    "precision",
    "recall",
    "auroc",
    "average_precision",
]


def detection_metrics(scores: np.ndarray, corrupted: np.ndarray) -> dict[str, float | int]:
    """Detection figures of one task: higher scores should mean corrupted labels.

    Example:
        >>> scores = np.array([0.9, 0.1, 0.8, 0.3])
        >>> m = detection_metrics(scores, np.array([True, False, True, False]))
        >>> m["detection_accuracy"], m["auroc"], m["average_precision"]
        (1.0, 1.0, 1.0)
    """
    scores = np.asarray(scores, dtype=np.float64)
    corrupted = np.asarray(corrupted, dtype=bool)
    if scores.ndim != 1 or scores.shape != corrupted.shape:
        raise ValueError(
            f"scores {scores.shape} and corrupted {corrupted.shape} must be 1-D and match"
        )
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    n = len(scores)
    k = int(corrupted.sum())
    nan = float("nan")
    # descending score; among ties clean (False) first, then input order: np.lexsort sorts by the
    # last key first and is stable
    order = np.lexsort((np.arange(n), corrupted, -scores))
    hits = corrupted[order]  # (n,) ranked
    found = int(hits[:k].sum())
    cumulative = np.cumsum(hits)
    positive_ranks = np.flatnonzero(hits) + 1  # 1-based ranks of the corrupted instances
    return {
        "n": n,
        "corrupted": k,
        "fraction": k / n if n else nan,
        "detection_accuracy": found / k if k else nan,
        "precision": found / k if k else nan,
        "recall": found / k if k else nan,
        "auroc": _auroc(scores, corrupted),
        "average_precision": float(np.mean(cumulative[positive_ranks - 1] / positive_ranks))
        if k
        else nan,
    }


def _auroc(scores: np.ndarray, corrupted: np.ndarray) -> float:
    k = int(corrupted.sum())
    clean = len(scores) - k
    if k == 0 or clean == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    u = ranks[corrupted].sum() - k * (k + 1) / 2  # Mann–Whitney U of the corrupted instances
    return float(u / (k * clean))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ascending ranks; tied values share the mean of their ranks."""
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts + 1  # rank of the first member of each tie group
    return (first + (counts - 1) / 2)[inverse]


def evaluate(run_dir: str | Path, truth: str | Path, *, by: str = DEFAULT_BY) -> pd.DataFrame:
    """Detection figures per corrupted task of a run, against a corruption file.

    One row per task of the truth file that has at least one corrupted label, with columns
    ``task, n, corrupted, fraction, detection_accuracy, precision, recall, auroc,
    average_precision``. The instances are those the truth file names; instances the run trained
    on that the truth file does not name are left out (a truth file may cover a verified subset).

    Example:
        >>> truth = "/tmp/penguins-noisy/corruption.parquet"
        >>> evaluate("runs/penguins", truth, by="final")  # doctest: +SKIP
    """
    expected = read_truth(truth)
    table = scores(run_dir, by=by)
    rows = []
    for task, labels in expected.groupby("task", sort=False):
        if not labels.corrupted.any():
            continue
        task_scores = table[table.task == task]
        if task_scores.empty:
            known = ", ".join(sorted(table.task.unique()))
            raise TruthError(
                f"truth file {truth} names task {task!r} that the run did not train; "
                f"the run's tasks are: {known}"
            )
        joined = labels.merge(task_scores[["id", "score"]], on="id", how="left", indicator=True)
        unknown = joined[joined["_merge"] == "left_only"]
        if not unknown.empty:
            raise TruthError(
                f"truth file {truth} names id {unknown.id.iloc[0]!r} that the run did not train on "
                f"(task {task!r}; {len(unknown)} such id(s))"
            )
        metrics = detection_metrics(joined.score.to_numpy(), joined.corrupted.to_numpy())
        rows.append({"task": task, **metrics})
    if not rows:
        raise TruthError(
            f"truth file {truth} marks no label as corrupted; there is nothing to evaluate"
        )
    return pd.DataFrame(rows, columns=COLUMNS)
