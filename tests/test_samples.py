"""The shipped sample datasets load and validate: the README's first command depends on them."""

from __future__ import annotations

from pathlib import Path

import pytest

from ilt_audit.card import load_manifest
from ilt_audit.data import load_dataset

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
    for task in manifest.card.tasks:
        assert len(data.targets[task.name]) == len(data)


def test_shapes_generator_reproduces_the_shipped_sample_and_writes_larger_ones_elsewhere(
    tmp_path: Path,
) -> None:
    import importlib.util

    import numpy as np
    import pandas as pd
    from PIL import Image

    shipped = SAMPLES / "shapes"
    spec = importlib.util.spec_from_file_location("shapes_generate", shipped / "generate.py")
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)

    generate.main(["--n", "3", "--out", str(tmp_path / "small")])
    out = tmp_path / "small"
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
