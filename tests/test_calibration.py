"""p_wrong and the error rate: probabilities in [0, 1], rates near the planted share, the kinds of
error people make ranked on top of a tiny run, old runs still read, and the gate on the rate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ilt_audit.audit.calibration import SUSPICIONS, audit, error_rate, outlier_mixture
from ilt_audit.audit.ranking import rank
from ilt_audit.training.loop import train
from ilt_audit.training.model import ModelConfig

# --- the mixture on its own ---------------------------------------------------------------------


def _bulk_and_outliers(n: int, wrong: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    values = rng.normal(3.0, 0.5, n)
    planted = rng.random(n) < wrong
    values[planted] += rng.uniform(4.0, 12.0, planted.sum())  # far above the bulk
    return values, planted


@pytest.mark.parametrize("wrong", [0.05, 0.1, 0.4])
def test_the_mixture_estimates_the_planted_share_and_finds_the_outliers(wrong):
    values, planted = _bulk_and_outliers(4000, wrong)
    fitted = outlier_mixture(values, sides="upper")
    assert ((0 <= fitted.p) & (fitted.p <= 1)).all()
    rate = error_rate(fitted.p)
    assert abs(rate.estimate - planted.mean()) < (0.05 if wrong > 0.2 else 0.02)  # the targets
    assert rate.low < rate.estimate < rate.high
    assert (fitted.p[planted] > 0.5).mean() > 0.95
    assert (fitted.p[~planted] > 0.5).mean() < 0.03


def test_a_bulk_without_outliers_has_an_error_rate_near_zero():
    values, _ = _bulk_and_outliers(4000, 0.0)
    fitted = outlier_mixture(values, sides="upper")
    assert error_rate(fitted.p).estimate < 0.01


def test_an_upper_signal_never_suspects_values_below_its_bulk_but_a_two_sided_one_does():
    values, _ = _bulk_and_outliers(2000, 0.0)
    values[:20] -= 10.0  # far below
    assert outlier_mixture(values, sides="upper").p[:20].max() == 0.0
    assert outlier_mixture(values, sides="both").p[:20].min() > 0.5


def test_every_task_type_reads_its_signals_from_recorded_columns():
    from ilt_audit.run.evidence import SIGNALS

    for kind, suspicions in SUSPICIONS.items():
        recorded = {s.column for s in SIGNALS[kind]} | {"log_sigma2", "loss"}
        assert {s.column for s in suspicions} <= recorded, kind


# --- on a trained run ---------------------------------------------------------------------------


def test_p_wrong_is_a_probability_and_finds_the_planted_errors(planted_run):
    found = audit(planted_run.run)
    assert ((found.p_wrong >= 0) & (found.p_wrong <= 1)).all()
    frame = rank(planted_run.run)
    for task, planted in (("label", planted_run.flipped), ("target", planted_run.shifted)):
        top = frame[frame.task == task].head(len(planted))
        assert set(top.id) == set(planted), task
        assert (top.score > 0.5).all()
        rate = found.rates[task]
        assert abs(rate.estimate - len(planted) / 60) < 0.08, (task, rate)
    assert set(frame.attrs["error_rates"]) == {"label", "target"}


def test_a_clean_learnable_task_has_an_error_rate_near_zero(make_features_card, tmp_path, tiny):
    card = make_features_card(tmp_path / "clean", n=120)
    run = tmp_path / "run"
    train(card, run, config=tiny(epochs=25, lr=1e-2, model=ModelConfig(hidden=32, depth=1)))
    rates = audit(run).rates
    assert rates["label"].estimate < 0.03, rates
    assert rates["target"].estimate < 0.03, rates


def test_a_run_from_before_the_evidence_reads_with_log_sigma2_and_says_so(
    planted_run, tmp_path, cli
):
    old = tmp_path / "old"
    shutil.copytree(planted_run.run, old)
    for path in (old / "trajectories").glob("*.parquet"):  # the schema before the evidence
        table = pq.read_table(path)
        pq.write_table(table.select(["epoch", "id", "task", "log_sigma2", "loss", "margin"]), path)
    found = audit(old)
    assert any("p_wrong comes from log σ² alone" in note for note in found.notes)
    frame = rank(old)
    assert set(frame[frame.task == "label"].head(5).id) == set(planted_run.flipped)
    result = cli("rank", old, "--top", "2")
    assert result.exit_code == 0, result.stderr
    assert "p_wrong comes from log σ² alone" in result.err
    gated = cli("gate", old, "--max-suspect", "100%", "--format", "json")
    assert gated.exit_code == 0, gated.stderr
    assert "p_wrong comes from log σ² alone" in gated.err
    assert any("log σ² alone" in note for note in json.loads(gated.stdout)["notes"])


def test_gate_max_error_rate_exits_1_over_and_0_under(cli, planted_run):
    over = cli("gate", planted_run.run, "--max-suspect", "100%", "--max-error-rate", "1%")
    assert over.exit_code == 1
    assert "estimated error rate" in over.err and "more than 1.0%" in over.err
    under = cli("gate", planted_run.run, "--max-suspect", "100%", "--max-error-rate", "50%")
    assert under.exit_code == 0, under.stderr
    found = json.loads(
        cli("gate", planted_run.run, "--max-suspect", "100%", "--format", "json").stdout
    )
    assert all(0 <= t["error_rate"]["low"] <= t["error_rate"]["estimate"] for t in found["tasks"])
    refused = cli("gate", planted_run.run, "--max-error-rate", "5%", "--by", "final")
    assert refused.exit_code == 2


def test_rank_prints_each_tasks_estimated_error_rate(cli, planted_run):
    result = cli("rank", planted_run.run, "--top", "3")
    assert result.exit_code == 0, result.stderr
    assert "Estimated error rate of label:" in result.err
    assert "Estimated error rate of target:" in result.err


# --- the kinds of error people make, on a tiny image run ------------------------------------------

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 220)}
SIZE = 16


def _scenes(folder: Path, n: int = 72, seed: int = 0) -> tuple[Path, dict[str, list[str]]]:
    """Images with two squares (a red one, class 1, and a blue one, class 2, in the mask), the
    red square's colour class, the centre of the red square, and a depth map; with planted errors
    of the kinds people make. Returns the card and the planted ids per task."""
    for sub in ("images", "masks", "depth"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, planted = [], {"seg": [], "depth": [], "where": [], "colour": []}
    for i in range(n):
        row_id = f"s{i:03d}"
        image = np.full((SIZE, SIZE, 3), 25, dtype=np.uint8)
        mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
        colour = ["red", "green"][i % 2]
        sides = [int(rng.integers(0, 4)), int(rng.integers(9, SIZE - 4))]  # apart: columns
        rng.shuffle(sides)
        boxes = [(int(rng.integers(0, SIZE - 4)), left) for left in sides]
        for (top, left), (value, name) in zip(boxes, ((1, colour), (2, "blue")), strict=True):
            image[top : top + 5, left : left + 5] = COLOURS[name]
            mask[top : top + 5, left : left + 5] = value
        depth = np.where(mask > 0, 1.0, 3.0).astype(np.float32)
        centre = (boxes[0][1] + 2.5) / SIZE
        if i in (3, 11, 19, 27):  # an object left out of the mask: the blue square
            mask[mask == 2] = 0
            planted["seg"].append(row_id)
        if i in (5, 13, 21, 29):  # a mask drawn three pixels off
            mask = np.roll(mask, 3, axis=1)
            planted["seg"].append(row_id)
        if i in (7, 15, 23, 31):  # a depth map offset by a constant
            depth = depth + 1.5
            planted["depth"].append(row_id)
        if i in (9, 17, 25, 33):  # a unit error
            centre *= 10
            planted["where"].append(row_id)
        label = colour
        if i in (34, 42, 50, 58):  # red called green, always this way: a consistent confusion
            label = "green" if colour == "red" else colour
            if label != colour:
                planted["colour"].append(row_id)
        Image.fromarray(image).save(folder / "images" / f"{row_id}.png")
        Image.fromarray(mask).save(folder / "masks" / f"{row_id}.png")
        np.save(folder / "depth" / f"{row_id}.npy", depth)
        rows.append(
            {"id": row_id, "image": f"images/{row_id}.png", "colour": label, "cx": centre,
             "mask": f"masks/{row_id}.png", "depth": f"depth/{row_id}.npy"}
        )  # fmt: skip
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    card = folder / "card.toml"
    card.write_text(
        'table = "manifest.csv"\nid = "id"\n[input]\ntype = "image"\ncolumn = "image"\n'
        '[tasks.colour]\ntype = "classification"\ncolumn = "colour"\n'
        '[tasks.where]\ntype = "regression"\ncolumns = ["cx"]\n'
        '[tasks.seg]\ntype = "segmentation"\ncolumn = "mask"\nclasses = 3\n'
        '[tasks.depth]\ntype = "dense-regression"\ncolumn = "depth"\n',
        encoding="utf-8",
    )
    return card, planted


def test_omissions_shifts_offsets_unit_errors_and_confusions_rank_on_top(tmp_path, tiny):
    card, planted = _scenes(tmp_path / "scenes")
    train(card, tmp_path / "run", config=tiny(epochs=20, lr=3e-3, batch_size=8,
                                              model=ModelConfig(hidden=32, depth=2, width=8)))  # fmt: skip
    frame = rank(tmp_path / "run", labels=False)
    for task, ids in planted.items():
        ranked = frame[frame.task == task]
        top = set(ranked.head(2 * len(ids)).id)  # the top share: twice the planted count
        found = len(top & set(ids)) / len(ids)
        assert found >= 0.75, (task, found, ranked.head(2 * len(ids)).to_dict("records"))


def test_signals_read_from_files_in_another_row_order_are_lined_up_by_key():
    import pyarrow as pa

    from ilt_audit.audit.calibration import _lined_up

    keys = pa.table({"id": ["a", "b", "c"], "task": ["t", "t", "u"]})
    found = pa.table({"id": ["c", "a", "b"], "task": ["u", "t", "u"]})  # (b, t) missing
    lined = _lined_up(keys, found, np.array([3.0, 1.0, 9.0]))
    assert lined[0] == 1.0 and np.isnan(lined[1]) and lined[2] == 3.0
