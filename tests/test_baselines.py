"""The baselines ILT is compared with (cleanlab, the ceiling) and the split cards they train on."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FLIPPED, SHIFTED, tiny_config, write_features_dataset
from helpers_data import make_tags_card

from ilt_audit.audit.baselines import ceiling_folds, ceiling_scores, cleanlab_scores
from ilt_audit.audit.evaluation import detection_metrics
from ilt_audit.corruption.planting import corrupt, read_truth
from ilt_audit.dataset import open_dataset
from ilt_audit.dataset.derived import SPLIT_COLUMN, write_split_card
from ilt_audit.errors import OptionError
from ilt_audit.run.trajectories import read_trajectories
from ilt_audit.training.model import ModelConfig

N = 60
LEARNS = tiny_config(epochs=20, lr=1e-2, model=ModelConfig(hidden=32, depth=1))  # as planted_run


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An easy features dataset, clean, and a copy with planted wrong labels (same ids)."""
    root = tmp_path_factory.mktemp("baselines")
    clean = write_features_dataset(root / "clean", n=N)
    noisy = write_features_dataset(root / "noisy", n=N, flip=FLIPPED, shift=SHIFTED)
    return clean, noisy


def _planted(table: pd.DataFrame, planted: tuple[str, ...]) -> dict[str, float | int]:
    return detection_metrics(table.score.to_numpy(), table.id.isin(planted).to_numpy())


def test_the_ceiling_scores_planted_labels_above_clean_ones(data, tmp_path: Path) -> None:
    clean, noisy = data
    folds = ceiling_folds(clean, tmp_path / "ceiling", folds=3, seed=0, config=LEARNS)
    assert [fold.trained for fold in folds] == [True, True, True]
    ids = open_dataset(clean).manifest.ids
    held_out = [{ids[row] for row in fold.held_out} for fold in folds]
    assert set().union(*held_out) == set(ids) and sum(map(len, held_out)) == N
    for fold, scored in zip(folds, held_out, strict=True):  # no network saw what it scores
        assert set(read_trajectories(fold.run_dir).id) == set(ids) - scored

    label = ceiling_scores(folds, noisy, "label")
    assert list(label.columns) == ["id", "task", "score"] and list(label.id) == ids
    assert set(label.nlargest(len(FLIPPED), "score").id) == set(FLIPPED)
    target = ceiling_scores(folds, noisy, "target")
    assert set(target.nlargest(len(SHIFTED), "score").id) == set(SHIFTED)

    again = ceiling_folds(clean, tmp_path / "ceiling", folds=3, seed=0, config=LEARNS)
    assert not any(fold.trained for fold in again)  # found, not trained again
    assert [f.seconds for f in again] == [f.seconds for f in folds]
    with pytest.raises(OptionError, match="another seed"):
        ceiling_folds(clean, tmp_path / "ceiling", folds=3, seed=1, config=LEARNS)


def test_cleanlab_scores_planted_labels_above_clean_ones(data, tmp_path: Path) -> None:
    pytest.importorskip("cleanlab")
    _, noisy = data
    table = cleanlab_scores(noisy, "label", tmp_path / "cleanlab", folds=3, config=LEARNS)
    assert list(table.columns) == ["id", "task", "score"]
    assert list(table.id) == open_dataset(noisy).manifest.ids and table.score.notna().all()
    figures = _planted(table, FLIPPED)
    assert figures["auroc"] > 0.9 and figures["detection_accuracy"] >= 0.8
    assert sorted(p.name for p in (tmp_path / "cleanlab").glob("fold-*")) == [
        "fold-1",
        "fold-2",
        "fold-3",
    ]
    with pytest.raises(OptionError, match="classification"):
        cleanlab_scores(noisy, "target", tmp_path / "other", config=LEARNS)
    with pytest.raises(OptionError, match="not empty"):
        cleanlab_scores(noisy, "label", tmp_path / "cleanlab", config=LEARNS)


@pytest.mark.parametrize("mode", ["drop-tag", "add-tag"])
def test_cleanlab_scores_planted_tags_above_clean_ones(tmp_path: Path, mode: str) -> None:
    pytest.importorskip("cleanlab")
    card = make_tags_card(tmp_path / "clean", n=120)
    noisy = corrupt(card, tasks=["tags"], fraction=0.1, seed=0, out=tmp_path / "noisy", mode=mode)
    truth = read_truth(noisy.truth_path)
    table = cleanlab_scores(noisy.card_path, "tags", tmp_path / "cleanlab", folds=3, config=LEARNS)
    assert list(table.id) == open_dataset(card).manifest.ids and table.score.notna().all()
    figures = _planted(table, tuple(truth.id[truth.corrupted]))
    assert figures["auroc"] > 0.85 and figures["detection_accuracy"] >= 0.5


def test_cleanlab_says_how_to_install_it_when_it_is_missing(
    data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("cleanlab", "cleanlab.rank"):
        monkeypatch.setitem(sys.modules, name, None)  # import cleanlab: ImportError
    with pytest.raises(OptionError, match=r'cleanlab .*pip install "ilt-audit\[bench\]"'):
        cleanlab_scores(data[1], "label", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_split_card_holds_out_rows_and_reaches_the_files_where_they_are(
    tmp_path: Path, make_image_card
) -> None:
    card = make_image_card(tmp_path / "images", n=12)
    source = open_dataset(card)
    is_val = np.arange(12) % 4 == 0
    written = write_split_card(source.manifest, tmp_path / "split" / "fold.toml", is_val)
    assert written == (tmp_path / "split" / "fold.toml").resolve()
    split = open_dataset(written)  # every file checked: the paths lead to the original files
    assert split.card.split == SPLIT_COLUMN and split.card.allow_outside_paths
    assert list(split.manifest.frame[SPLIT_COLUMN]) == ["val" if v else "train" for v in is_val]
    assert split.manifest.ids == source.manifest.ids
    assert (tmp_path / "split" / "fold.parquet").is_file()

    with pytest.raises(OptionError, match="already has a split column"):
        write_split_card(split.manifest, tmp_path / "again" / "fold.toml", is_val)
    with pytest.raises(OptionError, match="3 values for 12 rows"):
        write_split_card(source.manifest, tmp_path / "short" / "fold.toml", is_val[:3])
