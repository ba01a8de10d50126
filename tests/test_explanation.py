"""Why a label is suspect: the evidence of `explain` on planted errors, the line people read, and
where a mask and the network disagree, drawn."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import CLASSES, tiny_config, write_image_dataset

from ilt_audit.audit.calibration import SUSPICIONS, audit
from ilt_audit.audit.explanation import TYPE_COLUMNS, explain, records
from ilt_audit.dataset.card import TaskSpec
from ilt_audit.review.instances import (
    EXTRA_COLOUR,
    MISSING_COLOUR,
    Numbers,
    disagreement,
    error_rate_text,
    outline_rgb,
    why_text,
)
from ilt_audit.training.loop import train

CLEAN = ("r000", "r001", "r002")  # not planted (conftest's FLIPPED and SHIFTED name the others)


def _true_class(given: str) -> str:
    """The class a flipped label had: the features dataset moves it to the next one."""
    return CLASSES[(CLASSES.index(given) - 1) % len(CLASSES)]


def _given(card: Path) -> pd.Series:
    return pd.read_csv(card.parent / "manifest.csv", dtype=str).set_index("id")["label"]


@pytest.fixture(scope="module")
def explained(planted_run) -> pd.DataFrame:
    ids = [*planted_run.flipped, *planted_run.shifted, *CLEAN]
    keys = pd.DataFrame({"id": [*ids, *ids], "task": ["label"] * len(ids) + ["target"] * len(ids)})
    return explain(planted_run.run, keys).set_index(["task", "id"])


def test_a_flipped_label_names_the_class_the_network_prefers_with_its_probability(
    planted_run, explained
):
    given = _given(planted_run.card)
    for row_id in planted_run.flipped:
        row = explained.loc[("label", row_id)]
        assert row.signal == "margin"
        assert row.why == SUSPICIONS["classification"][0].why
        assert row.preferred == _true_class(given[row_id])
        assert row.p_preferred > 0.5 > row.p_label
        assert row.p_wrong > 0.5
    for row_id in CLEAN:
        row = explained.loc[("label", row_id)]
        assert row.preferred == given[row_id] and row.p_preferred == row.p_label > 0.5


def test_a_shifted_target_is_far_from_the_prediction_against_the_tasks_typical_label(
    planted_run, explained
):
    for row_id in planted_run.shifted:
        row = explained.loc[("target", row_id)]
        assert row.signal == "residual" and row.p_wrong > 0.5
        assert row.residual_sd == row.value > 10 * row.typical
        assert math.isnan(row.residual)  # two columns: no single figure in the data's units
    for row_id in CLEAN:
        assert explained.loc[("target", row_id)].residual_sd < 3 * explained.typical.max()


def test_each_row_carries_only_its_task_types_values(explained):
    for kind, task in (("classification", "label"), ("regression", "target")):
        rows = explained.loc[task]
        assert (rows.type == kind).all()
        assert rows[TYPE_COLUMNS[kind][0]].notna().all()
        for other, columns in TYPE_COLUMNS.items():
            if other != kind:
                assert rows[list(columns)].isna().all(axis=None), other


def test_an_unknown_key_has_no_evidence_and_records_are_plain_json(planted_run):
    keys = pd.DataFrame({"id": ["r003", "nobody"], "task": ["label", "label"]})
    found = explain(planted_run.run, keys, found=audit(planted_run.run))
    assert found.id.tolist() == ["r003", "nobody"]  # the asked order
    assert found.loc[1, "signal"] == "" and math.isnan(found.loc[1, "p_wrong"])
    plain = records(found)
    assert plain[1]["p_wrong"] is None and plain[1]["preferred"] is None
    assert json.loads(json.dumps(plain, allow_nan=False)) == plain


def test_a_run_from_before_the_evidence_is_explained_by_log_sigma2(planted_run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(planted_run.run, old)
    for path in (old / "trajectories").glob("*.parquet"):  # the schema before the evidence
        table = pq.read_table(path)
        pq.write_table(table.select(["epoch", "id", "task", "log_sigma2", "loss"]), path)
    keys = pd.DataFrame({"id": list(planted_run.flipped), "task": "label"})
    found = explain(old, keys)
    assert (found.signal == "log_sigma2").all() and found.preferred.isna().all()
    line = why_text(records(found)[0], "a")
    assert line.startswith("hard to fit (high log σ²): mean log σ² ")
    assert "(typical label: mean log σ² " in line


def test_an_image_run_has_mask_shares_and_map_offsets_in_the_datas_units(tmp_path):
    card = write_image_dataset(tmp_path / "data")
    train(card, tmp_path / "run", config=tiny_config(epochs=2))
    ids = pd.read_csv(card.parent / "manifest.csv").id.tolist()
    keys = pd.DataFrame({"id": ids * 2, "task": ["seg"] * len(ids) + ["depth"] * len(ids)})
    found = explain(tmp_path / "run", keys).set_index("task")
    masks, maps = found.loc["seg"], found.loc["depth"]
    assert masks[["missing", "extra", "iou"]].stack().between(0, 1).all()
    std = json.loads((tmp_path / "run" / "config.json").read_text())["normalisation"]
    std = std["targets"]["depth"][1][0]
    assert np.allclose(maps.offset, maps.offset_sd * std)
    assert (maps.ratio > 0).all() and maps.holes.between(0, 1).all()


# --- the line people read -------------------------------------------------------------------


def test_a_suspect_line_says_why_then_what_the_network_makes_of_it():
    evidence = {
        "type": "segmentation",
        "signal": "missing",
        "why": "objects the mask leaves out",
        "p_wrong": 0.9,
        "value": 0.21,
        "typical": 0.004,
        "missing": 0.21,
        "extra": 0.01,
        "iou": 0.55,
    }
    assert why_text(evidence, "masks/a.png") == (
        "objects the mask leaves out: missing 21.0% (typical label: 0.4%) · extra 1.0% · IoU 0.55"
    )
    calm = {**evidence, "p_wrong": 0.1}
    assert why_text(calm, "masks/a.png").startswith("missing 21.0%")  # not a suspect: no verdict


def test_a_regression_line_gives_the_gap_per_column_in_the_datas_units():
    evidence = {
        "type": "regression",
        "signal": "residual",
        "why": "far from the prediction",
        "p_wrong": 1.0,
        "value": 2.0,
        "typical": 0.05,
        "residual_sd": 2.0,
        "residual": float("nan"),
    }
    line = why_text(
        evidence,
        "y0=9, y1=1",
        predicted=Numbers(("y0", "y1"), (1.0, 1.5)),
        labelled=Numbers(("y0", "y1"), (9.0, 1.0)),
    )
    assert line == (
        "far from the prediction: 2.00 label SDs from the network's prediction "
        "(typical label: 0.05 SD) · label − prediction now: y0 +8, y1 -0.5"
    )


def test_a_classification_line_names_both_classes_and_the_error_rate_reads_as_a_share():
    evidence = {"type": "classification", "signal": "margin", "p_wrong": 0.2, "why": "x"}
    agree = {**evidence, "preferred": "cat", "p_preferred": 0.97, "p_label": 0.97}
    assert why_text(agree, "cat") == "the network agrees with the label cat (97%)"
    other = {**evidence, "preferred": "dog", "p_preferred": 0.995, "p_label": 0.004}
    assert why_text(other, "cat") == "the network prefers dog (>99%) over the label cat (<1%)"
    assert why_text(None, "cat") == "–"
    assert error_rate_text({"estimate": 0.05, "low": 0.0, "high": 0.105}) == ("5.0%", "0.0%–10.5%")
    assert error_rate_text({"estimate": 0.0, "low": 0.0, "high": 1.0}) == ("unknown", "–")


# --- where a mask and the network disagree --------------------------------------------------


def _colours(picture: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in c) for c in np.unique(picture.reshape(-1, 3), axis=0)}


def test_an_object_the_mask_leaves_out_and_one_it_adds_are_outlined_in_their_colours():
    task = TaskSpec("seg", "segmentation", ("mask",), classes=3, ignore_index=255)
    label = np.zeros((16, 16), np.int64)
    label[2:6, 2:6] = 1  # the network does not see this one: extra
    label[10:14, 10:14] = 2  # both agree on this one
    label[0, :] = 255  # unlabelled: never counted
    predicted = np.zeros((16, 16), np.int64)
    predicted[10:14, 10:14] = 2
    predicted[9:13, 1:5] = 1  # the mask leaves this one out: missing
    predicted[0, :] = 1
    missing, extra = disagreement(label, predicted, task)
    assert missing.sum() == 16 and missing[9:13, 1:5].all()
    assert extra.sum() == 16 and extra[2:6, 2:6].all()
    image = np.full((16, 16, 3), 128, np.uint8)
    drawn = outline_rgb(image, label, predicted, task, size=64)
    assert drawn.shape == (64, 64, 3)
    assert {MISSING_COLOUR, EXTRA_COLOUR} <= _colours(drawn)
    assert tuple(drawn[4 * 11, 4 * 1]) == MISSING_COLOUR  # the left edge of the left-out object
    assert tuple(drawn[4 * 2, 4 * 4]) == EXTRA_COLOUR  # the top edge of the added one
    agreed = drawn[4 * 11 + 4, 4 * 11 + 4]  # inside the object both see: only greyed
    assert agreed[0] == agreed[1] == agreed[2]
    same = outline_rgb(image, label, label, task, size=64)
    assert not {MISSING_COLOUR, EXTRA_COLOUR} & _colours(same)
