"""`ilt-audit fix`: review decisions become a corrected copy of the dataset, the original untouched;
a decision that does not fit the card is refused and nothing is written."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import snapshot, tiny_config, write_image_dataset
from helpers_data import make_features_card
from PIL import Image

from ilt_audit.dataset import load_dataset
from ilt_audit.dataset.files import Normalisation, read_depth, read_mask
from ilt_audit.dataset.manifest import load_manifest
from ilt_audit.review.decisions import (
    DECISIONS_FILE,
    PREDICTION,
    Decision,
    DecisionStore,
    check_decision,
)
from ilt_audit.review.fix import fix
from ilt_audit.run.directory import read_config
from ilt_audit.training.loop import predict, train


@dataclass(frozen=True)
class Trained:
    card: Path
    run: Path


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A two-epoch run on 12 images with colour, geometry, seg and depth (shared: copy the run)."""
    root = tmp_path_factory.mktemp("fix-images")
    card = write_image_dataset(root / "data")
    train(card, root / "run", config=tiny_config(epochs=2))
    return Trained(card, root / "run")


@pytest.fixture(scope="module")
def features_run(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A two-epoch run on a features card whose classes are the integers 0, 1, 2 (Parquet)."""
    root = tmp_path_factory.mktemp("fix-features")
    card = make_features_card(root / "data", table="manifest.parquet", int_labels=True)
    train(card, root / "run", config=tiny_config(epochs=2))
    return Trained(card, root / "run")


@pytest.fixture
def run(image_run: Trained, tmp_path: Path) -> Path:
    """This test's own copy of the image run, to record decisions into."""
    shutil.copytree(image_run.run, tmp_path / "run")
    return tmp_path / "run"


def record(card: Path, run: Path, *decisions: Decision) -> None:
    manifest = load_manifest(card)
    DecisionStore(run).record(check_decision(manifest, d) for d in decisions)


def insert_raw(run: Path, *rows: tuple[str, str, str, str | None]) -> None:
    """Rows written straight into the database, as another program (or a hand) could."""
    DecisionStore(run)  # the table
    with sqlite3.connect(run / DECISIONS_FILE) as db:
        db.executemany(
            "INSERT INTO decisions (id, task, decision, value, reviewer, time) "
            "VALUES (?, ?, ?, ?, 'hand', '2024-01-01T00:00:00+00:00')",
            rows,
        )


def model_output(card: Path, run: Path, row: int) -> tuple[np.ndarray, np.ndarray]:
    """The run's mask (argmax) and depth map (in the label's units) for one row, computed here."""
    config = read_config(run)
    data = load_dataset(
        load_manifest(card), norm=Normalisation.from_dict(config["normalisation"]), scan=False
    )
    out = predict(run, data, torch.tensor([row]))
    (mean,), (std,) = config["normalisation"]["targets"]["depth"]
    return out["seg"][0].argmax(dim=0).numpy(), out["depth"][0, 0].numpy() * std + mean


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


# --- what a fix writes -------------------------------------------------------------------------


def test_fix_applies_the_latest_decisions_and_leaves_the_original_alone(image_run, run, cli):
    card, out = image_run.card, run.parent / "fixed"
    before = snapshot(card.parent)
    original = load_manifest(card).frame.set_index("id")
    record(
        card,
        run,
        Decision("i001", "colour", "relabel", "blue", "ana"),  # was green
        Decision("i002", "geometry", "relabel", "0.125, 0.875", "ana"),
        Decision("i003", "seg", "relabel", PREDICTION, "ana"),
        Decision("i004", "depth", "relabel", PREDICTION, "ana"),
        Decision("i005", "seg", "relabel", PREDICTION, "ana"),  # i005 is dropped: not applied
        Decision("i005", "colour", "drop", None, "bo"),
        Decision("i006", "colour", "keep", None, "bo"),
        Decision("i007", "colour", "relabel", "red", "ana"),
        Decision("i007", "colour", "keep", None, "bo"),  # the latest counts: no change
    )

    result = cli("fix", card, "--decisions", run, "--out", out)

    assert result.exit_code == 0, result.stderr
    assert "keep: 2, relabel: 5, drop: 1 decisions; 1 instance(s) dropped" in result.err
    assert f"Card: {out / 'card.toml'}" in result.err
    assert snapshot(card.parent) == before  # every file of the original, byte for byte

    fixed = load_manifest(out / "card.toml")  # the new card validates, files and all
    new = fixed.frame.set_index("id")
    assert list(new.index) == [i for i in original.index if i != "i005"]
    assert new.at["i001", "colour"] == "blue"
    assert (new.at["i002", "cx"], new.at["i002", "cy"]) == (0.125, 0.875)
    assert new.at["i007", "colour"] == original.at["i007", "colour"]
    untouched = original.drop(index=["i001", "i002", "i005"])[["colour", "cx", "cy"]]
    pd.testing.assert_frame_equal(new.loc[untouched.index, ["colour", "cx", "cy"]], untouched)

    assert new.at["i003", "mask"] == "seg/i003.png"
    assert new.at["i004", "depth"] == "depth/i004.npy"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.*")) == [
        "card.toml",
        "changes.parquet",
        "depth/i004.npy",
        "manifest.csv",
        "seg/i003.png",
    ]
    mask, _ = model_output(card, run, 3)
    _, depth = model_output(card, run, 4)
    assert not np.array_equal(mask, read_mask(card.parent / "masks/i003.png"))  # a real change
    np.testing.assert_array_equal(read_mask(out / "seg/i003.png"), mask)
    with Image.open(out / "seg/i003.png") as png:
        assert png.mode == "L"  # 3 classes: an 8-bit PNG
    saved = np.load(out / "depth/i004.npy")
    assert saved.dtype == np.float32
    np.testing.assert_allclose(saved, depth, rtol=1e-5, atol=1e-5)
    for row_id in ("i000", "i006"):  # the other maps are the original files
        assert (
            fixed.file_path(new.at[row_id, "mask"]).resolve()
            == (card.parent / f"masks/{row_id}.png").resolve()
        )

    def old_path(column: str, row_id: str) -> str:
        return Path(os.path.relpath(card.parent / original.at[row_id, column], out)).as_posix()

    changes = pd.read_parquet(out / "changes.parquet")
    assert list(changes.columns) == ["id", "task", "decision", "old", "new", "reviewer", "time"]
    got = {
        (r.id, r.task): (r.decision, r.old, None if pd.isna(r.new) else r.new)
        for r in changes.itertuples()
    }
    cx, cy = original.at["i002", "cx"], original.at["i002", "cy"]
    assert got == {
        ("i001", "colour"): ("relabel", "green", "blue"),
        ("i005", "colour"): ("drop", original.at["i005", "colour"], None),
        ("i006", "colour"): ("keep", "red", "red"),
        ("i007", "colour"): ("keep", original.at["i007", "colour"], original.at["i007", "colour"]),
        ("i002", "geometry"): ("relabel", json.dumps([cx, cy]), "[0.125, 0.875]"),
        ("i003", "seg"): ("relabel", old_path("mask", "i003"), "seg/i003.png"),
        ("i005", "seg"): ("relabel", old_path("mask", "i005"), None),
        ("i004", "depth"): ("relabel", old_path("depth", "i004"), "depth/i004.npy"),
    }
    assert changes.set_index(["id", "task"]).at[("i007", "colour"), "reviewer"] == "bo"


def test_integer_classes_stay_integers_and_no_model_is_needed(features_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(features_run.run, run)
    (run / "checkpoint.pt").unlink()  # classes and numbers need no prediction
    original = load_manifest(features_run.card).frame.set_index("id")
    new_class = str((int(original.at["r004", "kind"]) + 1) % 3)
    record(
        features_run.card,
        run,
        Decision("r004", "kind", "relabel", new_class),
        Decision("r009", "target", "drop"),
    )

    result = fix(features_run.card, decisions=run, out=tmp_path / "fixed")

    assert result.counts == {"keep": 0, "relabel": 1, "drop": 1} and result.dropped == 1
    table = pd.read_parquet(tmp_path / "fixed" / "manifest.parquet").set_index("id")
    assert pd.api.types.is_integer_dtype(table["kind"])
    assert table.at["r004", "kind"] == int(new_class)
    assert "r009" not in table.index and len(table) == len(original) - 1
    assert load_manifest(result.card_path).class_names["kind"] == ("0", "1", "2")


def test_a_prediction_takes_the_size_of_its_own_image(tmp_path):
    card = write_image_dataset(tmp_path / "data")
    big = np.full((20, 24, 3), 90, dtype=np.uint8)  # i011 is larger than the others (16x16)
    Image.fromarray(big).save(tmp_path / "data/images/i011.png")
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(tmp_path / "data/masks/i011.png")
    np.save(tmp_path / "data/depth/i011.npy", np.full((20, 24), 3.0, np.float32))
    train(card, tmp_path / "run", config=tiny_config(epochs=1))
    record(
        card,
        tmp_path / "run",
        Decision("i011", "seg", "relabel", PREDICTION),
        Decision("i011", "depth", "relabel", PREDICTION),
    )

    result = fix(card, decisions=tmp_path / "run", out=tmp_path / "fixed")

    load_manifest(result.card_path)  # checks every map against its image's size
    assert read_mask(tmp_path / "fixed/seg/i011.png").shape == (20, 24)
    assert read_depth(tmp_path / "fixed/depth/i011.npy").shape == (20, 24)


def test_fix_never_imports_torch_when_no_prediction_is_needed():
    code = "import sys, ilt_audit.review.fix, ilt_audit.cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# --- refusals: exit 2, nothing written ---------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            ("ghost", "colour", "drop", None),
            "id 'ghost', task 'colour', column 'id': id 'ghost' is not in the manifest",
        ),
        (
            ("i001", "colour", "relabel", "purple"),
            "id 'i001', task 'colour', column 'value': 'purple' is not a class of task 'colour'",
        ),
        (
            ("i001", "geometry", "relabel", "[1]"),
            "id 'i001', task 'geometry', column 'value': task 'geometry' takes 2 finite",
        ),
        (("i001", "depth", "relabel", "[1]"), "column 'value': a dense-regression label"),
        (("i001", "shadow", "keep", None), "column 'task': task 'shadow' is not in the card"),
    ],
)
def test_a_decision_that_does_not_fit_is_refused(image_run, run, cli, row, message):
    record(image_run.card, run, Decision("i000", "colour", "drop"))  # a good one, before
    insert_raw(run, row)
    out = run.parent / "fixed"
    result = cli("fix", image_run.card, "--decisions", run, "--out", out)
    assert result.exit_code == 2, result.stderr
    assert result.err.startswith(f"Error: {run / DECISIONS_FILE}: ")
    assert message in result.err
    assert not out.exists() and not leftovers(run.parent)


def test_a_run_trained_on_another_card_is_refused(image_run, features_run, tmp_path, cli):
    out = tmp_path / "fixed"
    result = cli("fix", image_run.card, "--decisions", features_run.run, "--out", out)
    assert result.exit_code == 2
    assert f"{features_run.run} was trained on another card" in result.err
    assert not out.exists()


def test_a_card_whose_manifest_changed_since_training_is_refused(image_run, run, cli):
    copy = run.parent / "data"
    shutil.copytree(image_run.card.parent, copy)
    record(image_run.card, run, Decision("i001", "colour", "drop"))
    table = copy / "manifest.csv"
    table.write_text(table.read_text().replace("i001,", "i001x,", 1))
    result = cli("fix", copy / "card.toml", "--decisions", run, "--out", run.parent / "fixed")
    assert result.exit_code == 2
    assert "was trained on another card, or" in result.err and "changed since" in result.err
    assert not (run.parent / "fixed").exists()


def test_a_run_without_decisions_is_refused_and_gets_no_database(image_run, run, cli):
    out = run.parent / "fixed"
    result = cli("fix", image_run.card, "--decisions", run, "--out", out)
    assert result.exit_code == 2
    assert f"{run}: no {DECISIONS_FILE}: review the run first" in result.err
    assert f"ilt-audit review {run} --import decisions.csv" in result.err
    assert not (run / DECISIONS_FILE).exists()
    assert not out.exists()


def test_a_non_empty_out_is_refused(image_run, run, cli):
    record(image_run.card, run, Decision("i001", "colour", "drop"))
    out = run.parent / "fixed"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    result = cli("fix", image_run.card, "--decisions", run, "--out", out)
    assert result.exit_code == 2
    assert f"{out} exists and is not empty" in result.err
    assert snapshot(out) == {"mine.txt": b"keep me"}


def test_a_prediction_without_checkpoint_is_refused(image_run, run, cli):
    (run / "checkpoint.pt").unlink()
    record(image_run.card, run, Decision("i003", "seg", "relabel", PREDICTION))
    out = run.parent / "fixed"
    result = cli("fix", image_run.card, "--decisions", run, "--out", out)
    assert result.exit_code == 2
    assert f"{run}: no checkpoint.pt" in result.err
    assert not out.exists() and not leftovers(run.parent)


def test_dropping_every_instance_is_refused(image_run, run, cli):
    ids = load_manifest(image_run.card).ids
    record(image_run.card, run, *(Decision(i, "seg", "drop") for i in ids))
    out = run.parent / "fixed"
    result = cli("fix", image_run.card, "--decisions", run, "--out", out)
    assert result.exit_code == 2
    assert f"every one of the {len(ids)} instances is dropped" in result.err
    assert not out.exists()
