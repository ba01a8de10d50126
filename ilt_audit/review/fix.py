"""Turn a run's review decisions into a corrected copy of its dataset.

A reviewer decides, per suspect instance and task, to keep the label, relabel it or drop the
instance (:mod:`ilt_audit.review.decisions`, ``RUN/review.sqlite``). :func:`fix` applies the decision
that counts for each (instance, task), the latest one, to the dataset the run was trained on
and writes the result as a derived dataset (:mod:`ilt_audit.dataset.derived`): a new card, a
manifest in the original format whose paths still point at the original files, the new mask
and depth files where a label was replaced by the model's prediction, and ``changes.parquet``
(``id, task, decision, old, new, reviewer, time``), one row per decision that counts. The
original dataset is never modified.

- ``keep``: nothing changes (the row in ``changes.parquet`` has ``old == new``);
- ``relabel``: a class is written back in the table's own representation (text stays text,
  integers stay integers), a tag set likewise (a list stays a list, text is joined by the
  task's separator), a regression task's numbers go into its columns, and a mask or depth
  map is replaced by the trained model's prediction for that instance (an argmax PNG, or a
  float32 ``.npy`` in the label's units), at the size of the instance's image;
- ``drop``: the instance leaves the new manifest, whatever the decisions on its other tasks.

Every decision is checked again against the card before anything is written (the database may
come from another version of ilt-audit, or be edited by hand); the first that does not fit stops
the command with its id, task and column, and nothing is written.

Example:
    >>> result = fix("sample_manifests/shapes/card.toml", decisions="runs/shapes",
    ...              out="/tmp/shapes-fixed")  # doctest: +SKIP
    >>> result.counts, result.dropped  # doctest: +SKIP
    ({'keep': 3, 'relabel': 5, 'drop': 2}, 2)
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ilt_audit.dataset.card import Card, TaskSpec
from ilt_audit.dataset.derived import (
    Output,
    check_out,
    save_npy,
    save_png,
    write_classes,
    write_derived,
    write_tags,
)
from ilt_audit.dataset.manifest import Manifest, label_texts
from ilt_audit.dataset.opening import open_dataset
from ilt_audit.dataset.tags import read_tags, tags_json
from ilt_audit.errors import RunDirError
from ilt_audit.internal.toml import toml_string
from ilt_audit.review.decisions import (
    DECISIONS_FILE,
    KINDS,
    PREDICTION,
    Decision,
    DecisionError,
    DecisionStore,
    check_decision,
)
from ilt_audit.review.instances import PredictionsUnavailable, predict_instances
from ilt_audit.run.directory import CHECKPOINT, Run, RunLike, open_run

CHANGES_FILE = "changes.parquet"
CHANGES_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("task", pa.string()),
        ("decision", pa.string()),
        # a class name, a JSON list of tags or numbers, or a file path (from DIR)
        ("old", pa.string()),
        ("new", pa.string()),  # the same; null where the instance was dropped
        ("reviewer", pa.string()),
        ("time", pa.string()),
    ]
)


@dataclass(frozen=True)
class FixResult:
    """Where :func:`fix` wrote the corrected dataset, and what it applied."""

    card_path: Path  # the new dataset card
    changes_path: Path  # changes.parquet: id, task, decision, old, new, reviewer, time
    counts: dict[str, int]  # decision kind -> decisions that count (every kind, 0 included)
    dropped: int  # instances removed from the manifest


def fix(card: Card | str | Path, *, decisions: RunLike, out: str | Path) -> FixResult:
    """Write a corrected copy of a dataset from the review decisions recorded in a run.

    ``decisions`` is the run directory trained on ``card`` whose ``review.sqlite`` holds the
    decisions (``ilt-audit review``). The run must have been trained on this very card and
    manifest (their sha256 is in its ``config.json``); relabelling a mask or a depth map with the
    model's prediction needs the run's ``checkpoint.pt``. ``out`` must be new or empty.

    Example:
        >>> fix("data/card.toml", decisions="runs/audit", out="data-fixed").counts  # doctest: +SKIP
        {'keep': 12, 'relabel': 7, 'drop': 3}
    """
    manifest = open_dataset(card).manifest
    card = manifest.card
    out = Path(out).resolve()
    check_out(out)
    run = open_run(decisions, allow_partial=True)
    trained_on = run.config.get("card", {}).get("sha256")
    if trained_on != card.sha256():
        raise RunDirError(
            f"{run.path} was trained on another card, or {card.path} or its manifest changed "
            "since; its decisions do not apply to this dataset"
        )
    chosen = _checked_decisions(run, manifest)
    rows = pd.Index(manifest.ids).get_indexer([d.id for d in chosen])  # (D,)
    dropped = sorted({int(r) for r, d in zip(rows, chosen, strict=True) if d.decision == "drop"})
    if len(dropped) == len(manifest):
        raise DecisionError(
            f"every one of the {len(manifest)} instances is dropped; the corrected dataset "
            "would be empty"
        )
    tasks = {t.name: t for t in card.tasks}
    gone = set(dropped)
    replaced = [  # (task, row) of the masks and depth maps the model's prediction replaces
        (tasks[d.task], int(r))
        for r, d in zip(rows, chosen, strict=True)
        if d.decision == "relabel" and tasks[d.task].dense and r not in gone
    ]
    predictions = _predictions(run, manifest, replaced) if replaced else {}
    changes: list[dict[str, Any]] = []

    def edit(output: Output) -> None:
        for task in card.tasks:
            mine = [i for i, d in enumerate(chosen) if d.task == task.name]
            if not mine:
                continue
            at = rows[mine]  # (m,) table rows of this task's decisions
            old = _describe(output, task, at)
            relabel = [
                (int(rows[i]), chosen[i].value)
                for i in mine
                if chosen[i].decision == "relabel" and rows[i] not in gone
            ]
            if relabel:
                _RELABEL[task.type](output, task, relabel, predictions)
            new = _describe(output, task, at)
            for i, before, after in zip(mine, old, new, strict=True):
                decision = chosen[i]
                changes.append(
                    {
                        "id": decision.id,
                        "task": decision.task,
                        "decision": decision.decision,
                        "old": before,
                        "new": None if rows[i] in gone else after,
                        "reviewer": decision.reviewer,
                        "time": decision.time,
                    }
                )
        output.frame = output.frame.drop(index=dropped)  # rows keep their numbers: see derived

    counts = {kind: sum(d.decision == kind for d in chosen) for kind in KINDS}
    note = (
        f"decisions: {toml_string(str(run.path / DECISIONS_FILE))}; "  # quoted: one line
        + ", ".join(f"{kind}: {n}" for kind, n in counts.items())
        + f"; instances dropped: {len(dropped)}"
    )
    write_derived(
        manifest,
        out,
        command="fix",
        note=note,
        edit=edit,
        record=lambda staging: pq.write_table(
            pa.Table.from_pylist(changes, schema=CHANGES_SCHEMA), staging / CHANGES_FILE
        ),
    )
    return FixResult(out / card.path.name, out / CHANGES_FILE, counts, len(dropped))


def _checked_decisions(run: Run, manifest: Manifest) -> list[Decision]:
    """The decisions that count, each checked against the card, in card task and table order."""
    path = run.path / DECISIONS_FILE
    if not path.is_file():  # DecisionStore would create an empty database: say what to do instead
        raise RunDirError(
            f"{run.path}: no {DECISIONS_FILE}: review the run first (`ilt-audit review "
            f"{run.path}`), or import decisions with `ilt-audit review {run.path} --import "
            "decisions.csv`"
        )
    try:
        latest = DecisionStore(run.path).latest()
    except sqlite3.DatabaseError as exc:
        raise RunDirError(f"{path}: not a readable decisions database ({exc})") from None
    ids = pd.Index(manifest.ids)
    checked = []
    for row in latest.itertuples(index=False):
        # a database written by hand may hold numbers where text belongs
        fields = {name: None if pd.isna(v) else str(v) for name, v in row._asdict().items()}
        decision = Decision(
            id=fields["id"] or "",
            task=fields["task"] or "",
            decision=fields["decision"] or "",
            value=fields["value"],
            reviewer=fields["reviewer"] or "",
            time=fields["time"] or "",
        )
        try:
            checked.append(check_decision(manifest, decision, ids=ids))
        except DecisionError as exc:
            where = f", column {exc.column!r}" if exc.column else ""
            raise DecisionError(
                f"{path}: id {decision.id!r}, task {decision.task!r}{where}: {exc}", exc.column
            ) from None
    order = {t.name: i for i, t in enumerate(manifest.card.tasks)}
    position = ids.get_indexer([d.id for d in checked])
    keys = sorted(range(len(checked)), key=lambda i: (order[checked[i].task], position[i]))
    return [checked[i] for i in keys]


def _describe(output: Output, task: TaskSpec, rows: np.ndarray) -> list[str]:
    """Some rows' labels as text: the class name, the tags or numbers as JSON, or the file (from
    DIR)."""
    if task.type == "classification":
        return [str(v) for v in label_texts(output.frame[task.column].iloc[rows])]
    if task.type == "multi-label":
        names = output.manifest.class_names[task.name]
        cells = read_tags(output.frame[task.column].iloc[rows], task.separator)
        return tags_json(cells.matrix(names), names)
    if task.type == "regression":
        values = output.frame[list(task.columns)].to_numpy(dtype=np.float64)[rows]  # (m, D)
        return [json.dumps(v) for v in values.tolist()]
    return [str(v) for v in output.frame[task.column].iloc[rows]]


Relabel = list[tuple[int, str | None]]  # (table row, the decision's checked value)
Predictions = dict[tuple[str, int], np.ndarray]  # (task, row) -> (H, W) in the label's units


def _relabel_class(output: Output, task: TaskSpec, relabel: Relabel, _: Predictions) -> None:
    """The new class in the column's own representation (ints stay ints, text stays text)."""
    write_classes(output, task, [row for row, _ in relabel], [str(name) for _, name in relabel])


def _relabel_tags(output: Output, task: TaskSpec, relabel: Relabel, _: Predictions) -> None:
    """The new tag set in the column's own form (a list, or text joined by the separator)."""
    names = output.manifest.class_names[task.name]
    chosen = [set(json.loads(value or "[]")) for _, value in relabel]
    table = np.array([[n in tags for n in names] for tags in chosen], dtype=bool)  # (m, C)
    write_tags(output, task, [row for row, _ in relabel], table.reshape(len(chosen), len(names)))


def _relabel_numbers(output: Output, task: TaskSpec, relabel: Relabel, _: Predictions) -> None:
    at = [row for row, _ in relabel]
    new = np.array([json.loads(value or "") for _, value in relabel], dtype=np.float64)  # (m, D)
    for j, column in enumerate(task.columns):
        values = output.frame[column].to_numpy(dtype=np.float64, copy=True)
        values[at] = new[:, j]
        output.frame[column] = values


def _relabel_map(
    output: Output, task: TaskSpec, relabel: Relabel, predictions: Predictions
) -> None:
    """The model's prediction as a new file: a PNG of class indices (stored through the card's
    ``label_map``, if it has one), or a float32 ``.npy``."""
    from ilt_audit.dataset.files import stored_mask

    for row, _ in relabel:
        new = predictions[task.name, row]  # (H, W)
        if task.type == "segmentation":
            new = stored_mask(task, new)
            dtype = np.uint8 if new.max() <= 255 else np.uint16  # uint16: a 16-bit PNG
            output.write_file(task, row, ".png", partial(save_png, new, dtype))
        else:
            output.write_file(task, row, ".npy", partial(save_npy, new.astype(np.float32)))


_RELABEL: dict[str, Callable[[Output, TaskSpec, Relabel, Predictions], None]] = {
    "classification": _relabel_class,
    "regression": _relabel_numbers,
    "segmentation": _relabel_map,
    "dense-regression": _relabel_map,
    "multi-label": _relabel_tags,
}


def _predictions(run: Run, manifest: Manifest, wanted: list[tuple[TaskSpec, int]]) -> Predictions:
    """The model's masks (argmax) and depth maps (in the label's units) for some rows, each at
    the size of its row's image.

    The network is rebuilt from ``checkpoint.pt`` as the report does
    (:func:`ilt_audit.review.instances.predict_instances`); only these rows are decoded.
    """
    if not (run.path / CHECKPOINT).is_file():
        raise RunDirError(
            f"{run.path}: no {CHECKPOINT}: a mask or depth map relabelled with the model's "
            f"{PREDICTION!r} needs the trained model"
        )
    import torch  # only now: a fix without predictions never pays for it
    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms import InterpolationMode

    from ilt_audit.dataset.files import open_image

    try:
        found = predict_instances(run, manifest, [manifest.ids[row] for _, row in wanted])
    except PredictionsUnavailable as exc:
        raise RunDirError(
            f"{run.path}: a mask or depth map relabelled with the model's {PREDICTION!r} needs "
            f"the trained model: {exc}"
        ) from None
    image_column = manifest.card.input.columns[0]
    result: Predictions = {}
    for task, row in wanted:
        new = torch.from_numpy(np.asarray(found[task.name][manifest.ids[row]]))[None]  # (1, H, W)
        with open_image(manifest.source(image_column, row)) as image:
            own = [image.height, image.width]  # the map must have its image's size
        if list(new.shape[1:]) != own:
            mode = (
                InterpolationMode.NEAREST
                if task.type == "segmentation"
                else InterpolationMode.BILINEAR
            )
            new = TF.resize(new, own, interpolation=mode, antialias=False)
        result[task.name, row] = new[0].numpy()
    return result
