"""How well a run's scores find the labels that :mod:`ilt_audit.corruption.planting` planted.

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
import pyarrow as pa
import pyarrow.compute as pc

from ilt_audit.audit.ranking import DEFAULT_BY, SCORES, scores
from ilt_audit.corruption.planting import read_truth
from ilt_audit.errors import TruthError
from ilt_audit.run.directory import RunLike, open_run

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
    order = np.lexsort((corrupted, -scores))
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
        "auroc": _auroc(scores[order], hits),
        "average_precision": float(np.mean(cumulative[positive_ranks - 1] / positive_ranks))
        if k
        else nan,
    }


def _auroc(descending: np.ndarray, hits: np.ndarray) -> float:
    """AUROC from the scores sorted high to low and whether each is corrupted."""
    k = int(hits.sum())
    clean = len(hits) - k
    if k == 0 or clean == 0:
        return float("nan")
    ranks = _average_ranks(descending)
    u = ranks[hits].sum() - k * (k + 1) / 2  # Mann–Whitney U of the corrupted instances
    return float(u / (k * clean))


def _average_ranks(descending: np.ndarray) -> np.ndarray:
    """1-based ascending ranks of values sorted high to low; tied values share their mean rank."""
    n = len(descending)
    starts = np.flatnonzero(np.r_[True, descending[1:] != descending[:-1]])  # tie groups
    ends = np.r_[starts[1:], n]
    # positions a..b-1 (0-based, descending) hold ascending ranks n-a .. n-b+1
    return np.repeat(n - (starts + ends - 1) / 2, ends - starts)


def evaluate(run: RunLike, truth: str | Path, *, by: str = DEFAULT_BY) -> pd.DataFrame:
    """Detection figures per corrupted task of a run, against a corruption file.

    One row per task of the truth file that has at least one corrupted label, with columns
    ``task, n, corrupted, fraction, detection_accuracy, precision, recall, auroc,
    average_precision``. The instances are those the truth file names; instances the run trained
    on that the truth file does not name are left out (a truth file may cover a verified subset).

    Example:
        >>> truth = "/tmp/penguins-noisy/corruption.parquet"
        >>> evaluate("runs/penguins", truth, by="final")  # doctest: +SKIP
    """
    table, expected = scores(run, by=by), read_truth(truth)
    if SCORES[by].column == "margin":  # aum: only classification tasks have a margin
        unscored = set(open_run(run).task_names) - set(table.task.unique())
        expected = expected[~expected.task.isin(unscored)]
    return detection_table(table, expected, source=truth)


def detection_table(
    table: pd.DataFrame, expected: pd.DataFrame, *, source: str | Path
) -> pd.DataFrame:
    """:func:`evaluate` on scores (``id, task, score``) and a read corruption file (``source``).

    Example:
        >>> truth = "/tmp/shapes-noisy/corruption.parquet"
        >>> detection_table(scores("runs/shapes"), read_truth(truth), source=truth)  # doctest: +SKIP
    """
    rows = []
    for task in expected.task.unique():
        labels = expected[expected.task == task]
        if not labels.corrupted.any():
            continue
        task_scores = table[table.task == task]
        if task_scores.empty:
            known = ", ".join(sorted(table.task.unique()))
            raise TruthError(
                f"truth file {source} names task {task!r} that the run did not train; "
                f"the run's tasks are: {known}"
            )
        # each truth row's instance among the task's scores (a left join on the id)
        found = pc.index_in(
            pa.array(labels.id, pa.string()), value_set=pa.array(task_scores.id, pa.string())
        )
        unknown = found.is_null().to_numpy(zero_copy_only=False)
        if unknown.any():
            raise TruthError(
                f"truth file {source} names id {labels.id.iloc[int(np.argmax(unknown))]!r} that the "
                f"run did not train on (task {task!r}; {int(unknown.sum())} such id(s))"
            )
        score = task_scores.score.to_numpy()[found.to_numpy()]
        metrics = detection_metrics(score, labels.corrupted.to_numpy())
        rows.append({"task": task, **metrics})
    if not rows:
        raise TruthError(
            f"truth file {source} marks no label as corrupted; there is nothing to evaluate"
        )
    return pd.DataFrame(rows, columns=COLUMNS)
