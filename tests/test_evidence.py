"""Evidence signals: each checked against a value computed by hand on a tiny batch."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ilt_audit.dataset.card import TASK_TYPES, TaskSpec
from ilt_audit.run.evidence import COLUMNS, SIGNALS, Scale, compute, slots
from ilt_audit.training.loop import train

CLS = TaskSpec("c", "classification", ("c",))
SEG = TaskSpec("s", "segmentation", ("s",), classes=3, ignore_index=255)
REG = TaskSpec("r", "regression", ("r0", "r1"))
DENSE = TaskSpec("d", "dense-regression", ("d",))


def _signals(task: TaskSpec, out: torch.Tensor, target: torch.Tensor, scale=None) -> dict:
    values = compute(
        (task,), {task.name: out}, {task.name: target}, {task.name: scale} if scale else {}
    )
    return {s.signal.column: values[:, i].tolist() for i, s in enumerate(slots((task,)))}


def test_classification_probability_margin_and_predicted_class():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    found = _signals(CLS, logits, torch.tensor([0, 1]))
    p0 = math.exp(2) / (math.exp(2) + 2)
    p1 = math.exp(1) / (1 + math.exp(1) + math.exp(3))
    assert found["p_label"] == pytest.approx([p0, p1], rel=1e-5)
    assert found["margin"] == [2.0, -2.0]
    assert found["predicted"] == [0.0, 2.0]


def _one_hot_logits(classes: np.ndarray, n_classes: int = 3, sure: float = 10.0) -> torch.Tensor:
    """Logits (1, C, H, W) that are sure of ``classes`` (H, W); -1 marks an unsure pixel."""
    h, w = classes.shape
    logits = torch.zeros(1, n_classes, h, w)
    for c in range(n_classes):
        logits[0, c][torch.from_numpy(classes == c)] = sure
    return logits


def test_segmentation_missing_extra_and_iou_count_pixels():
    predicted = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 2, 2], [0, 0, -1, 2]])
    label = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 2, 255]])
    found = _signals(SEG, _one_hot_logits(predicted), torch.from_numpy(label)[None].long())
    # 15 labelled pixels (one is 255). missing: the network's confident objects where the label
    # has background: (2,2), (2,3) → 2/15. extra: label objects the network confidently calls
    # something else: none ((3,2) is unsure) → 0.
    assert found["missing"] == pytest.approx([2 / 15])
    assert found["extra"] == pytest.approx([0.0])
    # IoU of the objects on labelled pixels: both say class 1 on 4 pixels; either has an object
    # on 7: those 4, the network's class 2 at (2,2) and (2,3), the label's class 2 at (3,2) (the
    # network is unsure there, and its argmax is class 0)
    assert found["iou"] == pytest.approx([4 / 7])


def test_an_empty_mask_where_the_network_sees_an_object_is_missing_that_object():
    predicted = np.zeros((4, 4), dtype=int)
    predicted[1:3, 1:3] = 1
    found = _signals(SEG, _one_hot_logits(predicted), torch.zeros(1, 4, 4, dtype=torch.long))
    assert found["missing"] == pytest.approx([4 / 16])
    assert found["iou"] == pytest.approx([0.0])


def test_regression_residual_and_unit_log_ratio():
    scale = Scale(torch.tensor([10.0, 0.0]), torch.tensor([2.0, 1.0]))
    out = torch.tensor([[0.0, 1.0]])  # in data units: 10, 1
    target = torch.tensor([[3.0, -1.0]])  # in data units: 16, -1
    found = _signals(REG, out, target, scale)
    assert found["residual"] == pytest.approx([math.sqrt((9 + 4) / 2)])
    tiny = 1e-3 * np.array([12.0, 1.0])
    expected = np.mean(np.log((np.array([10.0, 1.0]) + tiny) / (np.array([16.0, 1.0]) + tiny)))
    assert found["log_ratio"] == pytest.approx([expected], rel=1e-5)


def test_dense_regression_median_offset_scale_and_holes():
    scale = Scale(torch.tensor([2.0]), torch.tensor([1.0]))  # data = z + 2
    target = torch.zeros(1, 2, 2)  # data units: 2 everywhere
    out = torch.tensor([[[[0.5, 0.5], [0.5, 3.0]]]])  # data units: 2.5, 2.5, 2.5, 5
    found = _signals(DENSE, out, target, scale)
    assert found["residual"] == pytest.approx([0.5])  # the median, not the mean (1.125)
    tiny = 1e-3 * 3.0  # a thousandth of the typical magnitude, |mean| + std
    assert found["log_ratio"] == pytest.approx([math.log((2.5 + tiny) / (2 + tiny))], rel=1e-5)
    assert found["holes"] == [0.0]
    holed = target.clone()
    holed[0, 0, 0] = -2.0  # a hole: 0 in the data's units where the network predicts 2.5
    assert _signals(DENSE, out, holed, scale)["holes"] == [0.25]


def test_every_task_type_has_signals_and_every_signal_a_column():
    assert set(SIGNALS) == set(TASK_TYPES)
    assert {s.column for group in SIGNALS.values() for s in group} == set(COLUMNS)


def test_a_run_records_each_task_types_evidence_and_nan_for_the_others(image_card, tmp_path, tiny):
    train(image_card, tmp_path / "run", config=tiny(epochs=1))
    frame = pq.read_table(tmp_path / "run" / "trajectories" / "epoch-0001.parquet").to_pandas()
    for task, kind in (("colour", "classification"), ("geometry", "regression"),
                       ("seg", "segmentation"), ("depth", "dense-regression")):  # fmt: skip
        rows = frame[frame.task == task]
        own = {s.column for s in SIGNALS[kind]}
        for column in COLUMNS:
            assert rows[column].notna().all() == (column in own), (task, column)
            assert rows[column].isna().all() == (column not in own), (task, column)
    seg = frame[frame.task == "seg"]
    assert seg.missing.between(0, 1).all() and seg.iou.between(0, 1).all()
    colour = frame[frame.task == "colour"]
    assert colour.p_label.between(0, 1).all()
    assert set(colour.predicted.unique()) <= {0.0, 1.0, 2.0}
