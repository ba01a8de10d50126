"""Detection metrics on hand-computed cases, and evaluate()'s join of scores with the truth."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import ilt_audit.audit.evaluation as evaluation
from ilt_audit.audit.evaluation import COLUMNS, detection_metrics, evaluate
from ilt_audit.corruption.planting import TRUTH_SCHEMA
from ilt_audit.errors import TruthError


def test_hand_computed_case() -> None:
    # Ranked by score: a 0.9 (corrupted), b 0.8, c 0.7 (corrupted), d 0.6, e 0.5; k = 2 of n = 5.
    # Top 2 = {a, b}: 1 corrupted -> accuracy = precision = recall = 1/2.
    # AUROC: a beats b, d, e (3 of 3); c beats d, e but not b (2 of 3) -> 5/6.
    # AP: corrupted at ranks 1 and 3 -> precision 1/1 and 2/3 -> (1 + 2/3) / 2 = 5/6.
    scores = np.array([0.6, 0.9, 0.5, 0.7, 0.8])  # d, a, e, c, b: the input order must not matter
    corrupted = np.array([False, True, False, True, False])
    m = detection_metrics(scores, corrupted)
    assert m["n"] == 5 and m["corrupted"] == 2 and m["fraction"] == pytest.approx(2 / 5)
    assert m["detection_accuracy"] == pytest.approx(1 / 2)
    assert m["precision"] == pytest.approx(1 / 2) and m["recall"] == pytest.approx(1 / 2)
    assert m["auroc"] == pytest.approx(5 / 6)
    assert m["average_precision"] == pytest.approx(5 / 6)


def test_perfect_and_reversed_rankings() -> None:
    corrupted = np.array([True, True, False, False, False, False])
    perfect = detection_metrics(np.array([6.0, 5, 4, 3, 2, 1]), corrupted)
    assert perfect["detection_accuracy"] == 1 and perfect["auroc"] == 1
    assert perfect["average_precision"] == 1
    reversed_ = detection_metrics(np.array([1.0, 2, 3, 4, 5, 6]), corrupted)
    assert reversed_["detection_accuracy"] == 0 and reversed_["auroc"] == 0
    # corrupted at ranks 5 and 6: (1/5 + 2/6) / 2
    assert reversed_["average_precision"] == pytest.approx((1 / 5 + 2 / 6) / 2)


def test_ties_count_half_in_auroc_and_rank_clean_first() -> None:
    # Scores a 0.9 (clean), b 0.5 (corrupted), c 0.5 (clean), d 0.1 (corrupted); k = 2.
    # AUROC pairs (corrupted, clean): b-a 0, b-c 1/2, d-a 0, d-c 0 -> 0.5 / 4 = 1/8.
    # Ranking with clean first among ties: a, c, b, d -> top 2 holds no corrupted -> accuracy 0;
    # AP: corrupted at ranks 3 and 4 -> (1/3 + 2/4) / 2 = 5/12.
    m = detection_metrics(np.array([0.9, 0.5, 0.5, 0.1]), np.array([False, True, False, True]))
    assert m["auroc"] == pytest.approx(1 / 8)
    assert m["detection_accuracy"] == 0
    assert m["average_precision"] == pytest.approx(5 / 12)


def test_a_constant_score_detects_nothing_whatever_the_order() -> None:
    corrupted = np.array([True, False, False, False])
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 0, 3, 2]):
        m = detection_metrics(np.zeros(4), corrupted[order])
        assert m["auroc"] == 0.5
        assert m["detection_accuracy"] == 0
        assert m["average_precision"] == pytest.approx(1 / 4)  # the corrupted one ranks last


def test_auroc_is_nan_when_a_class_is_empty() -> None:
    none = detection_metrics(np.array([1.0, 2.0]), np.array([False, False]))
    assert math.isnan(none["auroc"]) and math.isnan(none["detection_accuracy"])
    assert math.isnan(none["average_precision"])
    every = detection_metrics(np.array([1.0, 2.0]), np.array([True, True]))
    assert math.isnan(every["auroc"])
    assert every["detection_accuracy"] == 1 and every["average_precision"] == 1


def test_mismatched_inputs_are_a_bug() -> None:
    with pytest.raises(ValueError, match="must be 1-D and match"):
        detection_metrics(np.zeros(3), np.zeros(2, dtype=bool))


# --- evaluate: join of the run's scores with the truth file -----------------------------------


def write_truth(path: Path, rows: list[tuple[str, str, bool]]) -> Path:
    ids, tasks, corrupted = zip(*rows, strict=True)
    pq.write_table(pa.table([list(ids), list(tasks), list(corrupted)], schema=TRUTH_SCHEMA), path)
    return path


@pytest.fixture
def run_scores(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Replace the run's scores: ids a..e for tasks 'kind' and 'size'; records the call."""
    calls: dict[str, object] = {}
    frame = pd.DataFrame(
        {
            "id": list("abcde") * 2 + ["x"],
            "task": ["kind"] * 5 + ["size"] * 5 + ["kind"],
            "score": [0.6, 0.9, 0.5, 0.7, 0.8] + [5.0, 4.0, 3.0, 2.0, 1.0] + [9.0],
        }
    )

    def fake_scores(run_dir: str | Path, *, by: str) -> pd.DataFrame:
        calls.update(run_dir=run_dir, by=by)
        return frame.copy()

    monkeypatch.setattr(evaluation, "scores", fake_scores)
    return calls


def test_evaluate_one_row_per_corrupted_task(tmp_path: Path, run_scores: dict[str, object]) -> None:
    # kind: same case as test_hand_computed_case (b and d corrupted); the run's extra instance
    # 'x' is not in the truth file and is left out. size: nothing corrupted -> no row.
    truth = write_truth(
        tmp_path / "truth.parquet",
        [(i, "kind", i in "bd") for i in "abcde"] + [(i, "size", False) for i in "abcde"],
    )
    result = evaluate(tmp_path / "run", truth, by="final")
    assert run_scores == {"run_dir": tmp_path / "run", "by": "final"}
    assert list(result.columns) == COLUMNS
    assert result.task.tolist() == ["kind"]
    row = result.iloc[0]
    assert row.n == 5 and row.corrupted == 2
    assert row.detection_accuracy == pytest.approx(1 / 2)
    assert row.auroc == pytest.approx(5 / 6)
    assert row.average_precision == pytest.approx(5 / 6)


def test_evaluate_keeps_the_truth_files_task_order(
    tmp_path: Path, run_scores: dict[str, object]
) -> None:
    truth = write_truth(
        tmp_path / "truth.parquet",
        [(i, "size", i == "a") for i in "abcde"] + [(i, "kind", i == "a") for i in "abcde"],
    )
    result = evaluate(tmp_path / "run", truth)
    assert result.task.tolist() == ["size", "kind"]
    # size: a has the highest score (1); kind: a (0.6) beats only c (0.5) of the 4 clean (1/4)
    assert result.set_index("task").auroc.to_dict() == {"size": 1.0, "kind": 0.25}


def test_evaluate_rejects_an_id_the_run_did_not_train_on(
    tmp_path: Path, run_scores: dict[str, object]
) -> None:
    truth = write_truth(tmp_path / "truth.parquet", [("a", "kind", True), ("p001", "kind", False)])
    with pytest.raises(TruthError, match="names id 'p001' that the run did not train on"):
        evaluate(tmp_path / "run", truth)


def test_evaluate_rejects_a_task_the_run_did_not_train(
    tmp_path: Path, run_scores: dict[str, object]
) -> None:
    truth = write_truth(tmp_path / "truth.parquet", [("a", "seg", True), ("b", "seg", False)])
    with pytest.raises(
        TruthError,
        match="names task 'seg' that the run did not train; the run's tasks are: kind, size",
    ):
        evaluate(tmp_path / "run", truth)


def test_evaluate_needs_a_corrupted_label(tmp_path: Path, run_scores: dict[str, object]) -> None:
    truth = write_truth(tmp_path / "truth.parquet", [("a", "kind", False)])
    with pytest.raises(TruthError, match="marks no label as corrupted"):
        evaluate(tmp_path / "run", truth)
