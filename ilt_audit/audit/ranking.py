"""Scores and rankings: which instances' labels look wrong, per task.

The default score, ``p_wrong``, is the probability that a label is wrong, from the network's own
view of each instance and its ``log σ²`` (:mod:`ilt_audit.audit.calibration`). The other scores of
:data:`SCORES` aggregate one trajectory alone, for comparison: ``log σ²`` (the paper's ``final``),
the loss (the small-loss baseline), the margin (AUM); higher means more likely a wrong label.

Example:
    >>> rank("runs/shapes", task="shape", top="10%")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ilt_audit.audit.calibration import Audit, audit
from ilt_audit.dataset.manifest import Manifest
from ilt_audit.errors import OptionError
from ilt_audit.run.directory import RunLike, open_run
from ilt_audit.run.trajectories import read_matrix, task_codes


def _last(epochs: list[int]) -> list[int]:
    return epochs[-1:]


def _last_quarter(epochs: list[int]) -> list[int]:
    keep = max(1, math.ceil(epochs[-1] / 4))
    return [e for e in epochs if e > epochs[-1] - keep]


def _every(epochs: list[int]) -> list[int]:
    return epochs


@dataclass(frozen=True)
class Score:
    """A score: the mean of one trajectory column over some of the run's epochs, or (``audited``)
    ``p_wrong`` from :func:`ilt_audit.audit.calibration.audit`, whose ``column`` is then the trajectory
    a report plots."""

    column: str  # "log_sigma2", "loss" or "margin" (scored as its negative: low is suspect)
    epochs: Callable[[list[int]], list[int]]  # the run's epochs (ascending) -> the epochs it reads
    audited: bool = False


SCORES: dict[str, Score] = {
    # the probability that the label is wrong, from the evidence and log σ² (ilt_audit.audit.calibration)
    "p_wrong": Score("log_sigma2", _every, audited=True),
    "final": Score("log_sigma2", _last),  # log σ² after the last epoch (the paper's choice)
    "tail": Score("log_sigma2", _last_quarter),  # mean log σ² over the last quarter of the epochs
    "mean": Score(
        "log_sigma2", _every
    ),  # mean log σ² over all epochs: the area under the trajectory
    "loss": Score("loss", _last),  # the last epoch's unweighted loss: the small-loss baseline
    # minus the area under the margin (Pleiss et al. 2020): the mean over all epochs of the
    # assigned class's logit minus the largest other; classification tasks only
    "aum": Score("margin", _every),
}
DEFAULT_BY = "p_wrong"
TIE = 1e-6  # p_wrong's ties (labels certain either way) are ordered within this (Audit.order)


def check_by(by: str) -> str:
    if by not in SCORES:
        raise OptionError(f"unknown score {by!r}; choose one of {', '.join(SCORES)}")
    return by


@dataclass(frozen=True, eq=False)  # eq=False: it holds arrays
class Scores:
    """One score per (id, task) of a run, as arrays: what ranks, gates and evaluations start from."""

    keys: pa.Table  # id (string), task (dictionary of strings): R rows
    values: np.ndarray  # (R,) the score of each key
    audit: Audit | None = None  # the evidence behind a p_wrong score, with the error rates

    def by_task(self) -> dict[str, np.ndarray]:
        """Each task's rows (indices into ``keys``), in key order; tasks without rows left out."""
        names, codes = task_codes(self.keys)
        rows = {name: np.flatnonzero(codes == i) for i, name in enumerate(names)}
        return {name: r for name, r in rows.items() if len(r)}

    def highest(self, rows: np.ndarray, keep: int) -> np.ndarray:
        """The ``keep`` rows of ``rows`` with the highest scores, highest first, ties by id.

        Only the rows that can make the cut are sorted: those scoring at least the ``keep``-th
        highest score (NaN scores come last, as if lowest).
        """
        if keep <= 0:
            return rows[:0]
        scores = self.values[rows]
        candidates = np.arange(len(rows))
        if keep < len(rows):
            kth = np.partition(-scores, keep - 1)[keep - 1]  # NaN sort last
            if not np.isnan(kth):
                candidates = np.flatnonzero(-scores <= kth)
        chosen = rows[candidates]
        table = pa.table(
            {"score": scores[candidates], "id": self.keys["id"].take(pa.array(chosen))}
        )
        order = pc.sort_indices(table, sort_keys=[("score", "descending"), ("id", "ascending")])
        return chosen[order.to_numpy()[:keep]]

    def frame(self, parts: Iterable[np.ndarray]) -> pd.DataFrame:
        """The rows of each part as ``rank, id, task, score``, ranked from 1 within each part."""
        parts = list(parts)
        rows = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        picked = self.keys.take(pa.array(rows))
        return pd.DataFrame(
            {
                "rank": np.concatenate([np.arange(1, len(p) + 1) for p in parts])
                if parts
                else np.zeros(0, dtype=np.int64),
                "id": picked["id"].to_pandas(),
                "task": picked["task"].cast(pa.string()).to_pandas(),
                "score": self.values[rows],
            }
        )

    def to_frame(self) -> pd.DataFrame:
        """Every key with its score: ``id, task, score``."""
        return pd.DataFrame(
            {
                "id": self.keys["id"].to_pandas(),
                "task": self.keys["task"].cast(pa.string()).to_pandas(),
                "score": self.values,
            }
        )


def read_scores(run: RunLike, *, by: str = DEFAULT_BY) -> Scores:
    """The scores of a run, reading only the epochs and the column the score needs.

    A score by margin (``aum``) keeps the classification tasks only: the others have no margin.
    """
    check_by(by)
    score = SCORES[by]
    run = open_run(run)
    if score.audited:
        found = audit(run)
        return Scores(found.keys, found.p_wrong * (1 - TIE) + TIE * found.order, found)
    matrix = read_matrix(run.path, score.column, epochs=score.epochs(list(run.epochs)))
    if len(matrix.epochs) == 1:
        values = matrix.values[0]  # (R,) as stored: float32
    else:
        present = ~np.isnan(matrix.values)  # (E, R); a missing value does not count
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.nansum(matrix.values, axis=0, dtype=np.float64) / present.sum(axis=0)
    if np.isnan(values).all():
        if score.column == "margin":
            raise OptionError(
                f"--by {by}: {run.path} has no classification margins (no classification task, "
                "or a run trained before margins were recorded); use another --by"
            )
        raise OptionError(
            f"{run.path} was trained with --weighting {run.weighting}, which has no per-instance "
            "log σ²; rank it with --by loss"
        )
    if score.column == "margin":  # only classification tasks have one: the others are left out
        kept = np.flatnonzero(~np.isnan(values))
        return Scores(matrix.keys.take(pa.array(kept)), -values[kept])
    return Scores(matrix.keys, values)


def scores(run: RunLike, *, by: str = DEFAULT_BY) -> pd.DataFrame:
    """One score per trained instance per task: columns ``id, task, score``."""
    return read_scores(run, by=by).to_frame()


def task_order(run: RunLike, present: Collection[str], task: str | None) -> list[str]:
    """The tasks to list, in the card's order: ``task`` alone when given (checked), else all."""
    if task is not None and task not in present:
        raise OptionError(
            f"--task {task!r}: the run has no such task; its tasks are: {', '.join(sorted(present))}"
        )
    names = open_run(run).task_names
    return [name for name in names if name in present and (task is None or name == task)]


def parse_top(top: str | int | None) -> tuple[str, float] | None:
    """``"40%"`` → ("share", 0.4); ``"500"`` → ("count", 500); None → None."""
    if top is None:
        return None
    text = str(top).strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", text)
    if match:
        share = float(match.group(1)) / 100
        if not 0 < share <= 1:
            raise OptionError(f"--top {text}: a share must be within (0%, 100%]")
        return ("share", share)
    if re.fullmatch(r"\d+", text) and int(text) > 0:
        return ("count", int(text))
    raise OptionError(f"--top {text!r}: give a count (500) or a share of the instances (40%)")


def labels_of(manifest: Manifest, frame: pd.DataFrame) -> pd.Series:
    """The label of each row's ``(id, task)`` as the manifest gives it, as text ("" if none; a
    tag set as its tags in the card's order, joined by the task's separator).

    Only ``frame``'s rows are looked up and formatted: call it after cutting the ranking.
    """
    known = pa.array(manifest.frame[manifest.card.id], pa.string())
    found = pc.index_in(pa.array(frame["id"], pa.string()), value_set=known)
    positions = found.fill_null(-1).to_numpy()  # (rows,) manifest row, -1 where absent
    text = np.full(len(frame), "", dtype=object)
    tasks = frame["task"].to_numpy()
    for task in manifest.card.tasks:
        here = (tasks == task.name) & (positions >= 0)
        if here.any() and task.type == "multi-label":
            text[here] = manifest.tag_texts(task, positions[here])
        elif here.any():
            text[here] = _label_text(manifest.labels(task), positions[here])
    return pd.Series(text, index=frame.index, dtype=str)


def _label_text(values: pd.Series | pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    """Labels of some manifest rows as text: ``str(value)``, or ``"c=v, …"`` over columns."""
    if isinstance(values, pd.Series):
        return _as_text(values.iloc[rows])
    parts = [f"{c}=" + _as_g(values[c].iloc[rows]) for c in values.columns]
    text = parts[0]
    for part in parts[1:]:
        text = text + ", " + part
    return text


def _as_text(values: pd.Series) -> np.ndarray:
    """``str(value)`` of each value, with numbers as Python numbers (a float32 0.1 reads 0.1000…01)."""
    if values.dtype.kind == "f":
        values = values.astype(np.float64)
    return values.astype(str).to_numpy(dtype=object)


def _as_g(values: pd.Series) -> np.ndarray:
    """``f"{value:g}"`` of each value (there is no vectorised ``%g``; only shown rows get here)."""
    return np.array([f"{v:g}" for v in values.tolist()], dtype=object)


def rank(
    run: RunLike,
    *,
    task: str | None = None,
    top: str | int | None = None,
    by: str = DEFAULT_BY,
    labels: bool = True,
) -> pd.DataFrame:
    """Per task, the instances with the highest score, highest first.

    Columns: ``rank, id, task, score, label``. ``top`` is a count (``500``) or a share of the
    task's instances (``"40%"``); None keeps every instance. By ``p_wrong`` (the default) the
    score is the probability that the label is wrong, and ``frame.attrs["error_rates"]`` holds
    each task's estimated error rate (:meth:`ilt_audit.audit.calibration.ErrorRate.to_dict`). A score by
    margin (``by="aum"``) lists the classification tasks only.

    Example:
        >>> rank("runs/shapes", top="5%").head(3)  # doctest: +SKIP
    """
    run = open_run(run)
    cut = parse_top(top)
    scored = read_scores(run, by=by)
    rows = scored.by_task()
    if task is not None and task not in rows and task in run.task_names:
        raise OptionError(
            f"--task {task!r} has no classification margin, so no --by {by} score; "
            f"the tasks with one are: {', '.join(rows)}"
        )
    parts = []
    for name in task_order(run, rows, task):
        n = len(rows[name])
        keep = n if cut is None else cut[1] if cut[0] == "count" else math.ceil(cut[1] * n)
        parts.append(scored.highest(rows[name], int(min(keep, n))))
    result = scored.frame(parts)
    if labels:
        result["label"] = labels_of(run.manifest("to show labels"), result)
    if scored.audit is not None:  # p_wrong: each task's estimated error rate, and what it used
        result.attrs["error_rates"] = {  # plain data: pandas writes attrs into Parquet files
            name: scored.audit.rates[name].to_dict() for name in task_order(run, rows, task)
        }
        result.attrs["notes"] = list(scored.audit.notes)
    return result
