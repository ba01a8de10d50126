"""Shared fixtures: tiny seeded datasets in ``tmp_path``, a tiny training config, a CLI runner.

Datasets are generated, never copied: a features card (numeric columns, a string classification
task whose label is the argmax of the features, and a two-column regression task) and an image card
(16x16 RGB PNGs with all four task types).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ilt_audit.training.loop import TrainConfig
from ilt_audit.training.model import ModelConfig

# The models are tiny: one thread avoids oversubscribing the CPUs when other work shares them.
torch.set_num_threads(1)

CLASSES = ("a", "b", "c")

FEATURES_CARD = """\
table = "{table}"
id = "id"

[input]
type = "features"
columns = ["f0", "f1", "f2"]

[tasks.label]
type = "classification"
column = "label"
classes = ["a", "b", "c"]

[tasks.target]
type = "regression"
columns = ["y0", "y1"]
"""

IMAGE_CARD = """\
table = "manifest.csv"
id = "id"

[input]
type = "image"
column = "image"

[tasks.colour]
type = "classification"
column = "colour"

[tasks.geometry]
type = "regression"
columns = ["cx", "cy"]

[tasks.seg]
type = "segmentation"
column = "mask"
classes = 3

[tasks.depth]
type = "dense-regression"
column = "depth"
"""


def write_features_dataset(
    folder: Path,
    *,
    n: int = 40,
    seed: int = 0,
    flip: Iterable[str] = (),
    shift: Iterable[str] = (),
    table: str = "manifest.csv",
) -> Path:
    """Write a features card and its manifest; return the card's path.

    ``label`` is the argmax of the three features, with a margin (a clearly learnable class);
    ``y0, y1`` are linear functions of them. Ids listed in ``flip`` get the next class instead of
    the true one; ids in ``shift`` get ``y0`` moved far off its true value (planted label errors).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    label_index = x.argmax(axis=1)
    x[np.arange(n), label_index] += 1.0  # a margin: the class is clearly learnable
    ids = [f"r{i:03d}" for i in range(n)]
    flip = set(flip)
    for i, row_id in enumerate(ids):
        if row_id in flip:
            label_index[i] = (label_index[i] + 1) % len(CLASSES)
    y0 = 2.0 * x[:, 0] - x[:, 1]
    shift = set(shift)
    y0 += np.array([8.0 if row_id in shift else 0.0 for row_id in ids])
    frame = pd.DataFrame(
        {
            "id": ids,
            "f0": x[:, 0],
            "f1": x[:, 1],
            "f2": x[:, 2],
            "label": [CLASSES[i] for i in label_index],
            "y0": y0,
            "y1": 3.0 * x[:, 2] + 1.0,
        }
    )
    path = folder / table
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_csv(path, index=False)
    card = folder / "card.toml"
    card.write_text(FEATURES_CARD.format(table=table), encoding="utf-8")
    return card


def write_image_dataset(folder: Path, *, n: int = 12, seed: int = 0, size: int = 16) -> Path:
    """Write an image card with classification, regression, segmentation and depth; return its path.

    Each image is one coloured square on a dark background; the mask marks the square (class 1 on
    even rows, 2 on odd rows, 0 background: the class is not visible in the image, so tests that
    need a learnable mask class make their own) and the depth map is brighter inside the square.
    """
    for sub in ("images", "masks", "depth"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = {"red": (220, 30, 30), "green": (30, 220, 30), "blue": (30, 30, 220)}
    names = list(colours)
    rows = []
    for i in range(n):
        row_id = f"i{i:03d}"
        colour = names[i % len(names)]
        side = int(rng.integers(4, 9))
        top, left = (int(v) for v in rng.integers(0, size - side, size=2))
        image = np.full((size, size, 3), 20, dtype=np.uint8)
        image[top : top + side, left : left + side] = colours[colour]
        mask = np.zeros((size, size), dtype=np.uint8)
        mask[top : top + side, left : left + side] = 1 + i % 2
        depth = np.full((size, size), 5.0, dtype=np.float32)
        depth[top : top + side, left : left + side] = 2.0
        Image.fromarray(image).save(folder / "images" / f"{row_id}.png")
        Image.fromarray(mask).save(folder / "masks" / f"{row_id}.png")
        np.save(folder / "depth" / f"{row_id}.npy", depth)
        rows.append(
            {
                "id": row_id,
                "image": f"images/{row_id}.png",
                "colour": colour,
                "cx": (left + side / 2) / size,
                "cy": (top + side / 2) / size,
                "mask": f"masks/{row_id}.png",
                "depth": f"depth/{row_id}.npy",
            }
        )
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    card = folder / "card.toml"
    card.write_text(IMAGE_CARD, encoding="utf-8")
    return card


@pytest.fixture
def features_card(tmp_path: Path) -> Path:
    """A valid features card: 40 rows, 3 features, classes a/b/c and a 2-column regression."""
    return write_features_dataset(tmp_path / "features")


@pytest.fixture
def image_card(tmp_path: Path) -> Path:
    """A valid image card: 12 16x16 RGB PNGs with all four task types."""
    return write_image_dataset(tmp_path / "images")


@pytest.fixture
def make_features_card() -> Callable[..., Path]:
    """The features dataset writer, for more rows, planted errors or another table."""
    return write_features_dataset


@pytest.fixture
def make_image_card() -> Callable[..., Path]:
    return write_image_dataset


@pytest.fixture(autouse=True)
def _scan_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets an empty cache of validation passes, never the user's."""
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("ILT_AUDIT_CACHE", str(folder))
    return folder


def tiny_config(**changes: object) -> TrainConfig:
    base = TrainConfig(
        epochs=2, batch_size=8, device="cpu", model=ModelConfig(hidden=16, depth=1, width=4)
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture
def tiny() -> Callable[..., TrainConfig]:
    """A tiny CPU training config (2 epochs, batch 8, small model); keywords override it."""
    return tiny_config


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def normalise(text: str) -> str:
    """Terminal output with colour codes removed and every run of whitespace made one space."""
    return " ".join(_ANSI.sub("", text).split())


@dataclass(frozen=True)
class CliResult:
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None

    @property
    def err(self) -> str:
        """stderr, whitespace-normalised, so that wrapped lines still match fragments."""
        return normalise(self.stderr)

    @property
    def out(self) -> str:
        return normalise(self.stdout)


@pytest.fixture
def cli() -> Callable[..., CliResult]:
    """Run ``ilt-audit ARGS`` in-process on a wide, colourless terminal."""
    from ilt_audit.cli import app

    runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})

    def invoke(*args: object) -> CliResult:
        result = runner.invoke(app, [str(a) for a in args], prog_name="ilt-audit")
        return CliResult(result.exit_code, result.stdout, result.stderr, result.exception)

    return invoke


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes, to prove nothing changed."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture
def files_of() -> Callable[[Path], dict[str, bytes]]:
    return snapshot


FLIPPED = ("r003", "r017", "r029", "r041", "r052")  # classification labels moved to another class
SHIFTED = ("r008", "r021", "r044")  # regression targets moved far off


@dataclass(frozen=True)
class PlantedRun:
    run: Path
    card: Path
    flipped: tuple[str, ...]
    shifted: tuple[str, ...]


@pytest.fixture(scope="session")
def planted_run(tmp_path_factory: pytest.TempPathFactory) -> PlantedRun:
    """A finished ILT run on 60 rows with planted label errors (shared, read-only)."""
    from ilt_audit.training.loop import train

    root = tmp_path_factory.mktemp("planted")
    card = write_features_dataset(root / "data", n=60, flip=FLIPPED, shift=SHIFTED)
    config = tiny_config(epochs=20, lr=1e-2, model=ModelConfig(hidden=32, depth=1))
    train(card, root / "run", config=config)
    return PlantedRun(root / "run", card, FLIPPED, SHIFTED)
