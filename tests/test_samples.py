"""The shipped sample datasets load and validate: the README's first command depends on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers_data import whole_batch
from helpers_scripts import load_script
from PIL import Image

from ilt_audit.corruption.planting import corrupt, read_truth
from ilt_audit.dataset import load_dataset
from ilt_audit.dataset.manifest import load_manifest

SAMPLES = Path(__file__).resolve().parent.parent / "sample_manifests"


@pytest.mark.parametrize(
    ("name", "input_type", "task_types"),
    [
        ("shapes", "image", {"classification", "regression", "segmentation", "dense-regression"}),
        ("scenes", "image", {"classification", "regression", "segmentation", "dense-regression"}),
        ("penguins", "features", {"classification", "regression"}),
    ],
)
def test_sample_card_loads_with_its_task_types(
    name: str, input_type: str, task_types: set[str]
) -> None:
    manifest = load_manifest(SAMPLES / name / "card.toml")
    assert manifest.card.input.type == input_type
    assert {t.type for t in manifest.card.tasks} == task_types
    data = load_dataset(manifest)
    assert len(data) == len(manifest.frame) > 100
    batch = whole_batch(data)
    for task in manifest.card.tasks:
        assert len(batch["targets"][task.name]) == len(data)


def _read(path: Path) -> np.ndarray:
    """A generated file's content: the array of a .npy, the pixels of a PNG."""
    if path.suffix == ".npy":
        return np.load(path)
    with Image.open(path) as image:
        return np.asarray(image)


@pytest.mark.parametrize("name", ["shapes", "scenes"])
def test_generator_reproduces_the_shipped_sample_and_writes_other_sizes_elsewhere(
    tmp_path: Path, name: str
) -> None:
    shipped = SAMPLES / name
    generate = load_script(f"sample_manifests/{name}/generate.py", f"{name}_generate")

    out = tmp_path / "small"
    generate.main(["--n", "3", "--out", str(out)])
    frame = pd.read_csv(out / "manifest.csv", dtype=str)
    assert frame.equals(pd.read_csv(shipped / "manifest.csv", dtype=str).head(3))
    for column in ("image", "mask", "depth"):
        for path in frame[column]:
            assert np.array_equal(_read(out / path), _read(shipped / path)), path
    # the copied card reads the new manifest
    assert len(load_manifest(out / "card.toml").frame) == 3


def test_scenes_drop_object_leaves_the_other_objects_in_the_mask(tmp_path: Path) -> None:
    generate = load_script("sample_manifests/scenes/generate.py", "scenes_generate")
    generate.main(["--n", "30", "--out", str(tmp_path / "scenes")])
    corrupt(
        tmp_path / "scenes" / "card.toml",
        tasks=["seg"],
        fraction=0.5,
        mode="drop-object",
        out=tmp_path / "drop",
    )
    truth = read_truth(tmp_path / "drop" / "corruption.parquet")
    dropped = pd.read_csv(tmp_path / "drop" / "manifest.csv").set_index("id")
    clean = pd.read_csv(tmp_path / "scenes" / "manifest.csv").set_index("id")
    corrupted = truth.loc[truth.corrupted, "id"]
    assert len(corrupted) == 15
    for iid in corrupted:
        old = _read(tmp_path / "scenes" / clean.loc[iid, "mask"])
        new = _read((tmp_path / "drop" / dropped.loc[iid, "mask"]).resolve())
        removed = old != new
        assert len(np.unique(old[removed])) == 1 and (new[removed] == 0).all(), iid  # one class
        assert (new > 0).any(), iid  # the other objects stay
