"""The shipped sample datasets load and validate: the README's first command depends on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers_data import whole_batch
from helpers_scripts import load_script
from PIL import Image

from ilt_audit.data import load_dataset
from ilt_audit.manifest import load_manifest

SAMPLES = Path(__file__).resolve().parent.parent / "sample_manifests"


@pytest.mark.parametrize(
    ("name", "input_type", "task_types"),
    [
        ("shapes", "image", {"classification", "regression", "segmentation", "dense-regression"}),
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


def test_shapes_generator_reproduces_the_shipped_sample_and_writes_other_sizes_elsewhere(
    tmp_path: Path,
) -> None:
    shipped = SAMPLES / "shapes"
    generate = load_script("sample_manifests/shapes/generate.py", "shapes_generate")

    out = tmp_path / "small"
    generate.main(["--n", "3", "--out", str(out)])
    frame = pd.read_csv(out / "manifest.csv", dtype=str)
    assert frame.equals(pd.read_csv(shipped / "manifest.csv", dtype=str).head(3))
    for column in ("image", "mask"):
        for path in frame[column]:
            assert np.array_equal(
                np.asarray(Image.open(out / path)), np.asarray(Image.open(shipped / path))
            )
    assert np.array_equal(np.load(out / frame.depth[0]), np.load(shipped / frame.depth[0]))
    # the copied card reads the new manifest
    assert len(load_manifest(out / "card.toml").frame) == 3
