"""A card may name its data folder (SPEC 10): ``root``, relative to the card's folder or absolute.

The manifest's paths resolve against it and stay inside it (SPEC 8's rules, now of the data
folder); the card's ``table`` stays relative to the card's own folder. Every dataset here has its
card and manifest in ``cards/`` and its files in ``data/``, so a path resolved against the wrong
folder is not found.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import IMAGE_CARD, snapshot, tiny_config, write_image_dataset

from ilt_audit.dataset.card import load_card
from ilt_audit.dataset.files import scan_key
from ilt_audit.dataset.manifest import load_manifest
from ilt_audit.errors import CardError, OptionError
from ilt_audit.review.decisions import Decision, DecisionStore, check_decision
from ilt_audit.review.export import LOCAL_FILES, label_studio_tasks

TRAIN = ("--epochs", "1", "--device", "cpu", "--workers", "0")


def card_with_root(base: Path, root: str | None = "../data", *, opt_in: bool = False) -> Path:
    """``base/cards/card.toml`` and its manifest, naming ``base/data`` (the images, masks and
    depth maps) as ``root``; ``root`` may be a format string of ``data`` (``"{data}"``)."""
    data = base / "data"
    write_image_dataset(data)
    (data / "card.toml").unlink()
    (base / "cards").mkdir()
    os.replace(data / "manifest.csv", base / "cards" / "manifest.csv")
    card = base / "cards" / "card.toml"
    head = f"root = {json.dumps(root.format(data=data))}\n" if root is not None else ""
    card.write_text(head + ("allow_outside_paths = true\n" if opt_in else "") + IMAGE_CARD)
    return card


def set_cell(card: Path, row: int, column: str, value: str) -> None:
    table = card.parent / "manifest.csv"
    lines = table.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[row + 1].split(",")
    cells[header.index(column)] = value
    lines[row + 1] = ",".join(cells)
    table.write_text("\n".join(lines) + "\n")


def refused(result, *fragments: str) -> None:
    """Exit 2, one ``Error:`` line holding every fragment, no traceback."""
    assert result.exit_code == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.startswith("Error: ") and len(result.stderr.strip().splitlines()) == 1
    for fragment in fragments:
        assert fragment in result.err, result.err


# --- loading and training ---------------------------------------------------------------------


@pytest.mark.parametrize("root", ["../data", "{data}"], ids=["relative", "absolute"])
def test_a_card_with_root_finds_its_files_there_and_trains(tmp_path, cli, root):
    card_path = card_with_root(tmp_path, root)
    card = load_card(card_path)
    assert card.root == (tmp_path / "data").resolve()
    assert card.table_path == (tmp_path / "cards" / "manifest.csv").resolve()  # beside the card
    manifest = load_manifest(card)
    assert manifest.file_path("images/i003.png") == card.root / "images/i003.png"

    run = tmp_path / "run"
    result = cli("train", card_path, "--out", run, *TRAIN)
    assert result.exit_code == 0, result.stderr
    assert (run / "trajectories" / "epoch-0001.parquet").is_file()


@pytest.mark.parametrize(
    ("root", "why"),
    [("../nowhere", "does not exist"), ("manifest.csv", "is not a folder")],
)
def test_a_root_that_is_not_a_folder_is_refused(tmp_path, cli, root, why):
    card = card_with_root(tmp_path, root)
    run = tmp_path / "run"
    refused(cli("train", card, "--out", run, *TRAIN), "card.toml", f"root {root!r}", why)
    assert not run.exists()


def test_a_root_that_is_not_text_is_refused(tmp_path):
    card = card_with_root(tmp_path, None)
    card.write_text("root = 3\n" + card.read_text())
    with pytest.raises(CardError, match="'root' must name the data folder"):
        load_card(card)


# --- paths stay inside the data folder --------------------------------------------------------


def _escape(card: Path, how: str) -> str:
    """Make row 2 leave the data folder for the card's own folder; return its cell."""
    data = card.parent.parent / "data"
    target = card.parent / "i002.png"  # inside the card's folder, outside the data folder
    shutil.copy(data / "images" / "i002.png", target)
    if how == "link":
        (data / "images" / "i002.png").unlink()
        (data / "images" / "i002.png").symlink_to(target)
        return "images/i002.png"
    value = "../cards/i002.png" if how == "dot-dot" else str(data.resolve() / "images/i002.png")
    set_cell(card, 2, "image", value)
    return value


@pytest.mark.parametrize("how", ["dot-dot", "absolute", "link"])
def test_a_path_out_of_the_data_folder_is_refused(tmp_path, cli, files_of, how):
    card = card_with_root(tmp_path)
    value = _escape(card, how)
    before = files_of(tmp_path)
    run = tmp_path / "run"

    result = cli("train", card, "--out", run, *TRAIN)

    where = f"leads outside the data folder {(tmp_path / 'data').resolve()}"
    refused(result, "row id 'i002'", "column 'image'", repr(value), where)
    assert "symbolic link" in result.err if how == "link" else "symbolic" not in result.err
    assert files_of(tmp_path) == before and not run.exists()


@pytest.mark.parametrize("how", ["dot-dot", "link"])
def test_allow_outside_paths_lets_paths_leave_the_data_folder(tmp_path, how):
    card = card_with_root(tmp_path, opt_in=True)
    _escape(card, how)
    manifest = load_manifest(card)
    assert manifest.file_path(manifest.frame.at[2, "image"]).resolve() == card.parent / "i002.png"


def test_the_validation_pass_is_cached_per_data_folder(tmp_path):
    """Two copies of one project: the same card, manifest, sizes and times, two data folders."""
    card = card_with_root(tmp_path / "one")
    shutil.copytree(tmp_path / "one", tmp_path / "two")  # copy2 keeps each file's mtime
    copy = tmp_path / "two" / "cards" / "card.toml"
    assert load_card(copy).sha256() == load_card(card).sha256()
    assert scan_key(load_manifest(copy)) != scan_key(load_manifest(card))


# --- derived datasets and exports ---------------------------------------------------------------


def _resolves_to_data(card: Path, data: Path) -> None:
    """The card loads, every file checked, and its unmodified inputs are the original's files."""
    manifest = load_manifest(card)
    assert "root" not in load_card(card).raw  # its own paths are relative to its own folder
    image = manifest.file_path(manifest.frame.at[0, "image"]).resolve()
    assert image == (data / "images" / "i000.png").resolve()


def test_corrupt_writes_a_card_that_finds_the_original_files(tmp_path, cli):
    card = card_with_root(tmp_path)
    before = snapshot(tmp_path)
    out = tmp_path / "corrupted"

    result = cli(
        "corrupt", card, "--task", "colour", "--task", "seg", "--fraction", "0.5", "--out", out
    )

    assert result.exit_code == 0, result.stderr
    _resolves_to_data(out / "card.toml", tmp_path / "data")
    assert load_manifest(out / "card.toml").frame["mask"].str.startswith("seg/").any()  # new maps
    assert {
        k: v for k, v in snapshot(tmp_path).items() if k.startswith(("cards", "data"))
    } == before


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A one-epoch run on a card with ``root`` (shared: copy what you change)."""
    from ilt_audit.training.loop import train

    base = tmp_path_factory.mktemp("root-run")
    card = card_with_root(base)
    train(card, base / "run", config=tiny_config(epochs=1, workers=0))
    return base, base / "run"


def test_fix_writes_a_card_that_finds_the_original_files(trained, tmp_path, cli):
    base, source = trained
    card, run = base / "cards" / "card.toml", tmp_path / "run"
    shutil.copytree(source, run)
    manifest = load_manifest(card)
    decisions = [Decision("i001", "colour", "relabel", "blue"), Decision("i002", "colour", "drop")]
    DecisionStore(run).record(check_decision(manifest, d) for d in decisions)

    result = cli("fix", card, "--decisions", run, "--out", tmp_path / "fixed")

    assert result.exit_code == 0, result.stderr
    _resolves_to_data(tmp_path / "fixed" / "card.toml", base / "data")
    fixed = load_manifest(tmp_path / "fixed" / "card.toml").frame.set_index("id")
    assert fixed.at["i001", "colour"] == "blue" and "i002" not in fixed.index


def test_label_studio_serves_the_data_folder(tmp_path):
    from ilt_audit.training.loop import train

    card = card_with_root(tmp_path, opt_in=True)
    train(card, tmp_path / "run", config=tiny_config(epochs=1, workers=0))
    tasks = label_studio_tasks(tmp_path / "run", task="seg")
    assert tasks[0]["data"]["image"].startswith(f"{LOCAL_FILES}images/i0")
    assert tasks[0]["data"]["label_file"].startswith(f"{LOCAL_FILES}masks/i0")

    _escape(card, "link")  # into the card's folder, which Label Studio would not serve
    with pytest.raises(OptionError, match="'images/i002.png' is not inside the data folder"):
        label_studio_tasks(tmp_path / "run", task="seg")
