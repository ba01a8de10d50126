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
