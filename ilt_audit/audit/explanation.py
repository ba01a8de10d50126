"""Why a label is suspect: the evidence behind its ``p_wrong``, in plain values, for the rows a
person looks at (the report's tables, the review app's pages).

For each (id, task) asked about, :func:`explain` says which signal weighs most (the one whose
probability of a wrong label is highest, :mod:`ilt_audit.audit.calibration`), its text for people and
its value against the task's typical label, and per task type what the network itself makes of
the instance, averaged over the late epochs (the second half, where calibration reads them):

- classification: the class the network prefers (the one it predicted in most late epochs) and
  its probability, and the given label's probability. The trajectory files keep the label's
  probability ``q`` and the margin ``m``, so the largest other class's probability is
  ``q · e^(−m)``: that is the preferred class's when the network does not prefer the label;
- regression: the residual in the labels' standard deviations (its root mean square over the
  task's columns), and for a one-column task in the data's own units;
- dense regression: the median offset of the label from the network's map (label − prediction)
  in the data's units and in standard deviations, the factor between them (label / prediction),
  and the share of pixels where one of them is about 0 and the other is not (holes);
- multi-label: the tag the network sees most surely among those the label lacks (the one its
  ``missing_tag`` named in most late epochs) and its probability, and the tag the label has that
  the network doubts most (``extra_tag``'s) and the probability it gives that tag;
- segmentation: the share of labelled pixels the network confidently calls an object the mask
  leaves out (``missing``), the share of the mask's objects it does not see (``extra``), and the
  IoU of its mask with the label.

Only the asked rows' trajectories are read (``read_matrix(..., ids=...)``), each column once.

Example:
    >>> keys = pd.DataFrame({"id": ["r003"], "task": ["label"]})  # doctest: +SKIP
    >>> explain("runs/features", keys).loc[0, ["preferred", "p_preferred"]]  # doctest: +SKIP
    preferred       c
    p_preferred    0.91
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ilt_audit.audit.calibration import (
    LOG_SIGMA2,
    LOSS,
    SUSPICIONS,
    Audit,
    Suspicion,
    _late,  # the epochs the evidence is read over
    audit,
)
from ilt_audit.run.directory import Run, RunLike, open_run
from ilt_audit.run.trajectories import read_matrix

# What :func:`explain` returns, per task type, besides the columns every row has
# (id, task, type, p_wrong, signal, why, p_signal, value, typical); NaN where not the row's type.
TYPE_COLUMNS: dict[str, tuple[str, ...]] = {
    "classification": ("preferred", "p_preferred", "p_label"),
    "regression": ("residual_sd", "residual"),
    "dense-regression": ("offset", "offset_sd", "ratio", "holes"),
    "segmentation": ("missing", "extra", "iou"),
    "multi-label": ("tag_missing", "p_tag_missing", "tag_extra", "p_tag_extra"),
}
_TEXT_COLUMNS = {"preferred", "tag_missing", "tag_extra"}  # names; the others are numbers


@dataclass
class _Reader:
    """The asked rows' trajectories, each (column, epochs) read once: (E, n) per column."""

    run: Run
    keys: pd.MultiIndex  # (id, task) of the asked rows
    read: dict[tuple[str, tuple[int, ...]], np.ndarray]

    def matrix(self, column: str, epochs: tuple[int, ...]) -> np.ndarray:
        """(E, n) float64: NaN where a row has no value (an epoch it missed, an older run)."""
        if (column, epochs) not in self.read:
            ids = pd.unique(self.keys.get_level_values(0)).tolist()
            found = read_matrix(self.run.path, column, epochs=epochs, ids=ids)
            names, codes = found.task_codes()
            stored = pd.MultiIndex.from_arrays(
                [found.keys["id"].to_pandas(), np.asarray(names, dtype=object)[codes]]
            )
            where = stored.get_indexer(self.keys)  # (n,) -1: not stored
            values = np.full((len(epochs), len(self.keys)), np.nan)
            values[:, where >= 0] = found.values[:, where[where >= 0]]
            self.read[(column, epochs)] = values
        return self.read[(column, epochs)]

    def mean(self, column: str, epochs: tuple[int, ...]) -> np.ndarray:
        """(n,) the mean over the epochs, NaN where a row has none."""
        values = self.matrix(column, epochs)
        count = (~np.isnan(values)).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.nansum(values, axis=0) / count


def explain(run: RunLike, keys: pd.DataFrame, *, found: Audit | None = None) -> pd.DataFrame:
    """The evidence behind each asked label's ``p_wrong``, one row per row of ``keys``.

    ``keys`` has the columns ``id`` and ``task``; ``found`` is the run's audit when the caller
    has it (:attr:`ilt_audit.audit.ranking.Scores.audit`), computed otherwise. Columns: ``id, task,
    type, p_wrong``; ``signal`` (the column whose probability is highest), ``why`` (what a high
    value means, for people), ``p_signal`` (its probability), ``value`` (the signal's mean over
    its epochs) and ``typical`` (the task's typical label's, :attr:`Audit.typical`); then the
    values of :data:`TYPE_COLUMNS`, NaN where not the row's task type. A row the audit does not
    know (an id not trained on) has NaN values and no signal.

    Example:
        >>> evidence = explain("runs/shapes", ranked[["id", "task"]])  # doctest: +SKIP
        >>> evidence.loc[0, ["signal", "missing"]].tolist()  # doctest: +SKIP
        ['missing', 0.21]
    """
    run = open_run(run)
    if found is None:
        found = audit(run)
    asked = pd.MultiIndex.from_arrays(
        [keys["id"].astype(str).to_numpy(), keys["task"].astype(str).to_numpy()]
    )
    return _compute_explanation(run, asked, found)


def _compute_explanation(run: Run, asked: pd.MultiIndex, found: Audit) -> pd.DataFrame:
    n = len(asked)
    tasks = pd.Series(asked.get_level_values(1), dtype=object)
    frame = pd.DataFrame(
        {
            "id": asked.get_level_values(0).to_numpy(dtype=object),
            "task": tasks.to_numpy(),
            "type": tasks.map(run.task_types).fillna("").to_numpy(dtype=object),
        }
    )
    rows = _audit_rows(found, asked)  # (n,) row of the audit, -1 where it has none
    known = rows >= 0
    frame["p_wrong"] = np.where(known, found.p_wrong[np.maximum(rows, 0)], np.nan)
    _deciding(frame, found, rows)
    for column in (c for columns in TYPE_COLUMNS.values() for c in columns):
        frame[column] = np.full(n, np.nan, dtype=object if column in _TEXT_COLUMNS else float)
    reader = _Reader(run, asked, {})
    late = tuple(_late(list(run.epochs)))
    for (kind, column), here in _groups(frame).items():
        if (kind, column) in _SUSPICION:
            epochs = tuple(_SUSPICION[kind, column].epochs(list(run.epochs)))
            frame.loc[here, "value"] = reader.mean(column, epochs)[here]
    for kind, compute in _BY_TYPE.items():
        here = (frame["type"] == kind).to_numpy()
        if here.any():
            compute(frame, here, reader, late, run)
    return frame


def _audit_rows(found: Audit, asked: pd.MultiIndex) -> np.ndarray:
    """The audit's row of each asked (id, task), -1 where it has none; only the asked ids'
    rows of the audit are indexed."""
    ids = pa.array(pd.unique(asked.get_level_values(0)), pa.string())
    near = np.flatnonzero(pc.is_in(found.keys["id"], value_set=ids).to_numpy(zero_copy_only=False))
    picked = found.keys.take(pa.array(near))
    index = pd.MultiIndex.from_arrays(
        [picked["id"].to_pandas(), picked["task"].cast(pa.string()).to_pandas()]
    )
    where = index.get_indexer(asked)
    return np.where(where >= 0, near[np.maximum(where, 0)], -1)


def _deciding(frame: pd.DataFrame, found: Audit, rows: np.ndarray) -> None:
    """The signal whose probability is highest, per row: signal, why, p_signal, typical (and
    room for its value)."""
    columns = list(found.signals)
    known = rows >= 0
    n = len(frame)
    frame["signal"] = ""
    frame["why"] = ""
    frame["p_signal"] = np.nan
    frame["value"] = np.nan
    frame["typical"] = np.nan
    if not columns or not known.any():
        return
    stacked = np.stack([found.signals[c][rows[known]] for c in columns])  # (S, k)
    has = ~np.isnan(stacked).all(axis=0)
    best = np.argmax(np.nan_to_num(stacked, nan=-1.0), axis=0)  # (k,)
    signal = np.full(n, "", dtype=object)
    p_signal = np.full(n, np.nan)
    signal[np.flatnonzero(known)[has]] = np.asarray(columns, dtype=object)[best[has]]
    p_signal[np.flatnonzero(known)[has]] = stacked[best[has], np.flatnonzero(has)]
    frame["signal"] = signal
    frame["p_signal"] = p_signal
    for (kind, column), here in _groups(frame).items():
        suspicion = _SUSPICION.get((kind, column))
        frame.loc[here, "why"] = suspicion.why if suspicion is not None else ""
        for task in pd.unique(frame.task[here]):
            value = found.typical.get(task, {}).get(column, math.nan)
            frame.loc[here & (frame.task == task).to_numpy(), "typical"] = value


def _groups(frame: pd.DataFrame) -> dict[tuple[str, str], np.ndarray]:
    """The rows of each (task type, deciding signal), as (n,) masks."""
    pairs = frame[["type", "signal"]].drop_duplicates().itertuples(index=False)
    return {
        (kind, column): ((frame["type"] == kind) & (frame["signal"] == column)).to_numpy()
        for kind, column in pairs
        if column
    }


# (task type, column) -> the suspicion that reads it, the fallbacks of older runs included
_SUSPICION: dict[tuple[str, str], Suspicion] = {
    **{(kind, s.column): s for kind in SUSPICIONS for s in (LOG_SIGMA2, LOSS)},
    **{(kind, s.column): s for kind, suspicions in SUSPICIONS.items() for s in suspicions},
}


# --- per task type ---------------------------------------------------------------------------


def _scale(run: Run, task: str) -> tuple[np.ndarray, np.ndarray] | None:
    """A regression task's label mean and standard deviation per column (None: not saved)."""
    saved = (run.config.get("normalisation") or {}).get("targets", {}).get(task)
    if not saved:
        return None
    return np.asarray(saved[0], dtype=np.float64), np.asarray(saved[1], dtype=np.float64)


def _classification(
    frame: pd.DataFrame, here: np.ndarray, reader: _Reader, late: tuple[int, ...], run: Run
) -> None:
    p_label = reader.matrix("p_label", late)[:, here]  # (E, k)
    margin = reader.matrix("margin", late)[:, here]
    predicted = reader.matrix("predicted", late)[:, here]
    preferred, known = _most_often(predicted)  # (k,) each
    label = _label_index(margin, predicted)
    with np.errstate(invalid="ignore", over="ignore"):
        other = p_label * np.exp(-margin)  # (E, k) the largest other class's probability
        chosen = np.where(preferred == label, p_label, other)
        count = (~np.isnan(chosen)).sum(axis=0)
        p_preferred = np.nansum(chosen, axis=0) / count
        frame.loc[here, "p_label"] = np.nansum(p_label, axis=0) / (~np.isnan(p_label)).sum(axis=0)
    frame.loc[here, "preferred"] = _names(frame, here, run, preferred, known)
    frame.loc[here, "p_preferred"] = np.where(known, p_preferred, np.nan)


def _most_often(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The index an (E, k) matrix of class or tag indices holds in most epochs, per row, and
    whether the row has one at all (NaN and -1, none, are not counted): (k,) each."""
    present = ~np.isnan(index) & (np.nan_to_num(index, nan=-1) >= 0)  # (E, k)
    count = int(np.nanmax(np.where(present, index, 0), initial=0)) + 1
    votes = np.zeros((index.shape[1], count))  # (k, C) late epochs naming each index
    columns = np.broadcast_to(np.arange(index.shape[1]), index.shape)
    np.add.at(votes, (columns[present], index[present].astype(int)), 1)
    return votes.argmax(axis=1), present.any(axis=0)


def _names(
    frame: pd.DataFrame, here: np.ndarray, run: Run, index: np.ndarray, known: np.ndarray
) -> np.ndarray:
    """Class or tag indices of the rows ``here`` as their names (the run's ``class_names``; an
    index without a name as itself), None where ``known`` is False: (k,) object."""
    names = run.config.get("class_names", {})
    text = np.full(here.sum(), None, dtype=object)
    for task in pd.unique(frame.task[here]):
        mine = (frame.task[here] == task).to_numpy() & known
        listed = list(names.get(task) or [])
        listed += [str(c) for c in range(len(listed), int(index.max(initial=0)) + 1)]
        text[mine] = np.asarray(listed, dtype=object)[index[mine]]
    return text


def _multi_label(
    frame: pd.DataFrame, here: np.ndarray, reader: _Reader, late: tuple[int, ...], run: Run
) -> None:
    for which in ("missing", "extra"):
        tag, known = _most_often(reader.matrix(f"{which}_tag_index", late)[:, here])  # (k,)
        value = reader.mean(f"{which}_tag", late)[here]  # (k,)
        probability = value if which == "missing" else 1.0 - value  # the network's, of the tag
        frame.loc[here, f"tag_{which}"] = _names(frame, here, run, tag, known)
        frame.loc[here, f"p_tag_{which}"] = np.where(known, probability, np.nan)


def _label_index(margin: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """The given class's index per row, as the trajectories tell it: the predicted class of an
    epoch whose margin is positive; -1 where there is none (the network never preferred the
    label, so the class it prefers most often is another)."""
    agrees = margin > 0  # (E, k) the network preferred the given class in that epoch
    first = np.argmax(agrees, axis=0)
    found = agrees.any(axis=0)
    picked = predicted[first, np.arange(predicted.shape[1])]
    return np.where(found & ~np.isnan(picked), np.nan_to_num(picked), -1).astype(int)


def _regression(
    frame: pd.DataFrame, here: np.ndarray, reader: _Reader, late: tuple[int, ...], run: Run
) -> None:
    residual = reader.mean("residual", late)[here]  # (k,) root mean square, in label SDs
    frame.loc[here, "residual_sd"] = residual
    units = np.full(len(residual), np.nan)
    for task in pd.unique(frame.task[here]):
        scale = _scale(run, task)
        mine = (frame.task[here] == task).to_numpy()
        if scale is not None and len(scale[1]) == 1:  # one column: exact in the data's units
            units[mine] = residual[mine] * scale[1][0]
    frame.loc[here, "residual"] = units


def _dense_regression(
    frame: pd.DataFrame, here: np.ndarray, reader: _Reader, late: tuple[int, ...], run: Run
) -> None:
    offset = -reader.mean("residual", late)[here]  # (k,) label − prediction, median, in SDs
    frame.loc[here, "offset_sd"] = offset
    frame.loc[here, "ratio"] = np.exp(-reader.mean("log_ratio", late)[here])  # label / prediction
    frame.loc[here, "holes"] = reader.mean("holes", late)[here]
    units = np.full(len(offset), np.nan)
    for task in pd.unique(frame.task[here]):
        scale = _scale(run, task)
        mine = (frame.task[here] == task).to_numpy()
        if scale is not None:
            units[mine] = offset[mine] * scale[1][0]
    frame.loc[here, "offset"] = units


def _segmentation(
    frame: pd.DataFrame, here: np.ndarray, reader: _Reader, late: tuple[int, ...], run: Run
) -> None:
    for column in TYPE_COLUMNS["segmentation"]:
        frame.loc[here, column] = reader.mean(column, late)[here]


_BY_TYPE: dict[str, Callable[[pd.DataFrame, np.ndarray, _Reader, tuple[int, ...], Run], None]] = {
    "classification": _classification,
    "regression": _regression,
    "dense-regression": _dense_regression,
    "segmentation": _segmentation,
    "multi-label": _multi_label,
}


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows of :func:`explain` as plain dicts, NaN as None (for JSON and templates)."""
    plain = frame.astype(object).where(frame.notna(), None)
    return plain.to_dict(orient="records")
