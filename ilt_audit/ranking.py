"""Scores and rankings: which instances' labels look wrong, per task.

A score aggregates an instance's ``log σ²`` trajectory (or, for the small-loss baseline, its loss
trajectory) into one number; higher means more likely a wrong label. The aggregates are looked up
by name in :data:`SCORES`.

Example:
    >>> rank("runs/shapes", task="shape", top="10%")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from ilt_audit.errors import CardError, OptionError, RunDirError
from ilt_audit.manifest import Manifest, load_manifest
from ilt_audit.rundir import read_config
from ilt_audit.trajectories import read_trajectories


def _final(t: pd.DataFrame) -> pd.Series:
    last = t[t.epoch == t.epoch.max()]
    return last.set_index(["id", "task"]).log_sigma2


def _mean(t: pd.DataFrame) -> pd.Series:
    return t.groupby(["id", "task"]).log_sigma2.mean()


def _tail(t: pd.DataFrame) -> pd.Series:
    epochs = t.epoch.max()
    keep = max(1, math.ceil(epochs / 4))
    return _mean(t[t.epoch > epochs - keep])


def _loss(t: pd.DataFrame) -> pd.Series:
    last = t[t.epoch == t.epoch.max()]
    return last.set_index(["id", "task"]).loss


SCORES: dict[str, Callable[[pd.DataFrame], pd.Series]] = {
    "final": _final,  # log σ² after the last epoch (the paper's choice)
    "tail": _tail,  # mean log σ² over the last quarter of the epochs
    "mean": _mean,  # mean log σ² over all epochs: the area under the trajectory
    "loss": _loss,  # the last epoch's unweighted loss: the small-loss baseline
}
DEFAULT_BY = "final"


def check_by(by: str) -> str:
    if by not in SCORES:
        raise OptionError(f"unknown score {by!r}; choose one of {', '.join(SCORES)}")
    return by


def scores(run_dir: str | Path, *, by: str = DEFAULT_BY) -> pd.DataFrame:
    """One score per trained instance per task: columns ``id, task, score``."""
    check_by(by)
    series = SCORES[by](read_trajectories(run_dir))
    if series.isna().all():
        weighting = read_config(run_dir)["options"]["weighting"]
        raise OptionError(
            f"{run_dir} was trained with --weighting {weighting}, which has no per-instance "
            "log σ²; rank it with --by loss"
        )
    return series.rename("score").reset_index()


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


def run_manifest(run_dir: Path, purpose: str) -> Manifest:
    """The manifest of the card a run was trained on; ``purpose`` says why, in the error."""
    config = read_config(run_dir)
    try:
        return load_manifest(config["card"]["path"], check_files=False)
    except CardError as exc:
        raise RunDirError(
            f"{run_dir}: cannot read the run's dataset card {purpose}: {exc}"
        ) from None


def _label_column(run_dir: Path, frame: pd.DataFrame) -> pd.Series:
    """The label of each (id, task) as found in the manifest, as text."""
    manifest = run_manifest(run_dir, "to show labels")
    by_id = manifest.frame.set_index(manifest.card.id)
    labels: dict[str, pd.Series] = {}
    for task in manifest.card.tasks:
        values = manifest.labels(task)
        if isinstance(values, pd.DataFrame):
            text = values.apply(lambda row: ", ".join(f"{c}={v:g}" for c, v in row.items()), axis=1)
        else:
            text = values.map(str)
        labels[task.name] = pd.Series(text.to_numpy(), index=by_id.index)
    return pd.Series(
        [
            labels[task].get(i, "") if task in labels else ""
            for i, task in zip(frame.id, frame.task, strict=True)
        ],
        index=frame.index,
        dtype=str,
    )


def rank(
    run_dir: str | Path,
    *,
    task: str | None = None,
    top: str | int | None = None,
    by: str = DEFAULT_BY,
    labels: bool = True,
) -> pd.DataFrame:
    """Per task, the instances with the highest score, highest first.

    Columns: ``rank, id, task, score, label``. ``top`` is a count (``500``) or a share of the
    task's instances (``"40%"``); None keeps every instance.

    Example:
        >>> rank("runs/shapes", top="5%").head(3)  # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    cut = parse_top(top)
    table = scores(run_dir, by=by)
    if task is not None:
        known = sorted(table.task.unique())
        if task not in known:
            raise OptionError(
                f"--task {task!r}: the run has no such task; its tasks are: {', '.join(known)}"
            )
        table = table[table.task == task]
    order = read_config(run_dir)["tasks"]
    parts = []
    for name in [t["name"] for t in order if t["name"] in set(table.task)]:
        part = table[table.task == name].sort_values(
            ["score", "id"], ascending=[False, True], kind="stable"
        )
        if cut is not None:
            keep = cut[1] if cut[0] == "count" else math.ceil(cut[1] * len(part))
            part = part.head(int(keep))
        parts.append(part.assign(rank=range(1, len(part) + 1)))
    result = pd.concat(parts, ignore_index=True)[["rank", "id", "task", "score"]]
    if labels:
        result["label"] = _label_column(run_dir, result)
    return result
