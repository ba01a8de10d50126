"""`ilt-audit init`: a dataset card from a table, an ImageFolder tree or images and masks.

Every layout is generated in ``tmp_path``; a card that ``init`` writes must train.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import ilt_audit.dataset.layouts as layout
import ilt_audit.dataset.layouts.sampling as sampling
from ilt_audit.dataset.manifest import load_manifest
from ilt_audit.training.loop import train

SIZE = 16


def _image(path: Path, seed: int, *, colour: tuple[int, int, int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, (SIZE, SIZE, 3), dtype=np.uint8)
    if colour is not None:
        pixels[4:12, 4:12] = colour
    Image.fromarray(pixels).save(path)


def _mask(path: Path, value: int, *, extra: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[4:12, 4:12] = value
    if extra is not None:
        mask[0, 0] = extra
    Image.fromarray(mask).save(path)


def image_folder(root: Path, classes: dict[str, tuple[int, int, int]], n: int = 6) -> Path:
    """An ImageFolder tree: ``root/CLASS/NNN.png``, a coloured square per class."""
    for c, (name, colour) in enumerate(classes.items()):
        for i in range(n):
            _image(root / name / f"{i:03d}.png", 10 * c + i, colour=colour)
    return root


PETS = {"cat": (220, 30, 30), "dog": (30, 220, 30)}


def image_table(folder: Path, n: int = 12, *, table: str = "data.csv") -> Path:
    """A table with an id, an image, a text class, a float target, a mask and a depth map."""
    rows = []
    for i in range(n):
        _image(folder / "images" / f"{i:02d}.png", i)
        _mask(folder / "masks" / f"{i:02d}.png", 1 + i % 2)
        (folder / "depth").mkdir(exist_ok=True)
        np.save(folder / "depth" / f"{i:02d}.npy", np.full((SIZE, SIZE), i, dtype=np.float32))
        rows.append(
            {
                "id": f"s{i:02d}",
                "image": f"images/{i:02d}.png",
                "shape": ("circle", "square", "triangle")[i % 3],
                "width": 0.1 * i + 0.05,
                "mask": f"masks/{i:02d}.png",
                "depth": f"depth/{i:02d}.npy",
            }
        )
    frame = pd.DataFrame(rows)
    path = folder / table
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


def paired_folders(root: Path, n: int = 8) -> Path:
    for i in range(n):
        _image(root / "images" / f"p{i}.jpg", i)
        _mask(root / "masks" / f"p{i}.png", 1 + i % 3)
    return root


def tasks_of(card: Path) -> dict[str, dict]:
    return tomllib.loads(card.read_text(encoding="utf-8"))["tasks"]


def trains(card: Path, run: Path, tiny) -> None:
    result = train(card, run, config=tiny(epochs=1, batch_size=4, workers=0))
    assert result.epochs == 1
    assert (run / "trajectories" / "epoch-0001.parquet").is_file()


# --- ImageFolder ------------------------------------------------------------------------


def test_image_folder_gives_one_classification_task_of_its_folders_and_trains(tmp_path, cli, tiny):
    data = image_folder(tmp_path / "pets", PETS)
    card = tmp_path / "pets.toml"
    result = cli("init", data, "--out", card)
    assert result.exit_code == 0, result.stderr
    raw = tomllib.loads(card.read_text(encoding="utf-8"))
    assert raw["input"] == {"type": "image", "column": "image"}
    assert raw["tasks"] == {
        "class": {"type": "classification", "column": "class", "classes": ["cat", "dog"]}
    }
    manifest = pd.read_csv(tmp_path / "pets.manifest.csv", dtype=str)
    assert manifest["id"].tolist()[:2] == ["cat/000", "cat/001"]  # sorted, from the paths
    assert manifest["image"].iloc[0] == "pets/cat/000.png"  # relative to the card's folder
    assert "ImageFolder" in result.out and "2 class folders, 12 images" in result.out
    assert f"ilt-audit train {card} --out runs/pets" in result.err
    trains(card, tmp_path / "run", tiny)


def test_image_folder_with_train_and_val_folders_gets_a_split(tmp_path, cli):
    image_folder(tmp_path / "data" / "train", PETS, n=4)
    image_folder(tmp_path / "data" / "val", PETS, n=2)
    card = tmp_path / "data" / "card.toml"
    result = cli("init", tmp_path / "data", "--out", card)
    assert result.exit_code == 0, result.stderr
    raw = tomllib.loads(card.read_text(encoding="utf-8"))
    assert raw["split"] == "split"
    assert raw["tasks"]["class"]["classes"] == ["cat", "dog"]  # not "train" and "val"
    frame = load_manifest(card).frame
    assert frame["split"].value_counts().to_dict() == {"train": 8, "val": 4}


def test_ids_keep_their_suffix_only_where_two_files_share_a_stem(tmp_path, cli):
    data = image_folder(tmp_path / "pets", PETS, n=2)
    _image(data / "cat" / "000.jpg", 99)
    result = cli("init", data, "--out", tmp_path / "card.toml")
    assert result.exit_code == 0, result.stderr
    ids = load_manifest(tmp_path / "card.toml").ids
    assert ids == ["cat/000.jpg", "cat/000.png", "cat/001", "dog/000", "dog/001"]


@pytest.mark.parametrize(
    ("make", "offending", "message"),
    [
        (lambda d: (d / "cat" / "notes.txt").write_text("x"), "cat/notes.txt", "not an image"),
        (lambda d: (d / "bird").mkdir(), "bird", "an empty class folder"),
        (lambda d: _image(d / "loose.png", 5), "loose.png", "an image beside class folders"),
    ],
    ids=["non-image file", "empty class folder", "images at the top and class folders"],
)
def test_a_bad_image_folder_exits_2_with_the_first_offending_path(
    tmp_path, cli, files_of, make, offending, message
):
    data = image_folder(tmp_path / "pets", PETS, n=2)
    make(data)
    (data / "dog" / "zzz.txt").write_text("x")  # a later offender: never the one named
    before = files_of(tmp_path)
    result = cli("init", data, "--out", tmp_path / "card.toml")
    assert result.exit_code == 2
    assert f"Error: {data / offending}: {message}" in result.err
    assert files_of(tmp_path) == before  # nothing written


def test_a_folder_of_images_without_classes_exits_2(tmp_path, cli):
    for i in range(3):
        _image(tmp_path / "flat" / f"{i}.png", i)
    result = cli("init", tmp_path / "flat", "--out", tmp_path / "card.toml")
    assert result.exit_code == 2
    assert f"Error: {tmp_path / 'flat' / '0.png'}: no class folders" in result.err


def test_a_single_class_folder_exits_2(tmp_path, cli):
    data = image_folder(tmp_path / "pets", {"cat": (200, 0, 0)}, n=2)
    result = cli("init", data, "--out", tmp_path / "card.toml")
    assert result.exit_code == 2
    assert "one class folder (cat/); a classification task needs at least two" in result.err


# --- paired images and masks ----------------------------------------------------------------


def test_paired_folders_give_segmentation_with_the_classes_counted_and_train(tmp_path, cli, tiny):
    data = paired_folders(tmp_path / "seg")
    _image(data / "images" / "unlabelled.jpg", 50)  # an image without a mask: left out, said
    card = data / "card.toml"
    result = cli("init", data, "--out", card)
    assert result.exit_code == 0, result.stderr
    assert tasks_of(card) == {"seg": {"type": "segmentation", "column": "mask", "classes": 4}}
    assert "all 8 files read" in result.out and "values 0, 1, 2, 3 → 4 classes" in result.out
    assert "1 images without a mask (the first: unlabelled.jpg)" in result.out
    manifest = load_manifest(card)
    assert manifest.ids == [f"p{i}" for i in range(8)]
    assert manifest.frame["image"].iloc[0] == "images/p0.jpg"
    trains(card, tmp_path / "run", tiny)


def test_paired_masks_with_255_get_it_as_ignore_index(tmp_path, cli):
    data = tmp_path / "seg"
    for i in range(4):
        _image(data / "img" / f"{i}.png", i)
        _mask(data / "ann" / f"{i}.png", 1, extra=255)
    result = cli("init", data, "--out", data / "card.toml")
    assert result.exit_code == 0, result.stderr
    assert tasks_of(data / "card.toml")["seg"] == {
        "type": "segmentation",
        "column": "mask",
        "classes": 2,
        "ignore_index": 255,
    }


def test_a_mask_without_an_image_exits_2_naming_the_first_unpaired_stem(tmp_path, cli, files_of):
    data = paired_folders(tmp_path / "seg", n=3)
    _mask(data / "masks" / "orphan-a.png", 1)
    _mask(data / "masks" / "orphan-b.png", 1)
    before = files_of(tmp_path)
    result = cli("init", data, "--out", data / "card.toml")
    assert result.exit_code == 2
    assert (
        f"Error: {data / 'masks' / 'orphan-a.png'}: a mask without an image: no file orphan-a.* "
        "in images/" in result.err
    )
    assert files_of(tmp_path) == before


def test_binary_masks_stored_as_0_and_255_are_refused(tmp_path, cli):
    data = tmp_path / "seg"
    for i in range(3):
        _image(data / "images" / f"{i}.png", i)
        _mask(data / "masks" / f"{i}.png", 255)
    result = cli("init", data, "--out", data / "card.toml")
    assert result.exit_code == 2
    assert "the masks hold only 0 and 255" in result.err
    assert not (data / "card.toml").exists()


def test_masks_are_read_from_a_bounded_sample_and_it_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(sampling, "SAMPLE", 5)
    data = paired_folders(tmp_path / "seg", n=12)
    opened: list[Path] = []
    real_open = sampling.open_image
    monkeypatch.setattr(sampling, "open_image", lambda p: opened.append(p) or real_open(p))
    result = layout.init_card(data, out=data / "card.toml")
    assert len([p for p in opened if p.parent.name == "masks"]) == 5
    # the inferences init shows, read as data: a table cell wraps with the terminal's width
    (mask,) = [note for note in result.inferences if "segmentation" in note.decision]
    assert "a sample of 5 of 12 files read, evenly spaced" in mask.why
    assert "the training pass checks every mask" in mask.why


# --- tables ---------------------------------------------------------------------------------


@pytest.mark.parametrize("table", ["data.csv", "data.parquet"])
def test_a_table_gets_each_task_type_from_its_columns_and_trains(tmp_path, cli, tiny, table):
    path = image_table(tmp_path / "shapes", table=table)
    card = tmp_path / "shapes" / "card.toml"
    result = cli("init", path, "--out", card)
    assert result.exit_code == 0, result.stderr
    raw = tomllib.loads(card.read_text(encoding="utf-8"))
    assert raw["table"] == table  # the card points at the table; no manifest is written
    assert not (tmp_path / "shapes" / "card.manifest.csv").exists()
    assert raw["id"] == "id"
    assert raw["input"] == {"type": "image", "column": "image"}
    assert raw["tasks"] == {
        "shape": {"type": "classification", "column": "shape"},
        "width": {"type": "regression", "columns": ["width"]},
        "mask": {"type": "segmentation", "column": "mask", "classes": 3},
        "depth": {"type": "dense-regression", "column": "depth"},
    }
    for fragment in ("text: 3 classes", "floating-point values", ".npy maps", "RGB images"):
        assert fragment in result.out
    trains(card, tmp_path / "run", tiny)


def test_a_features_table_gets_a_features_input(tmp_path, cli, tiny):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(30, 3)), columns=["f0", "f1", "f2"])
    frame.insert(0, "sample_id", [f"r{i}" for i in range(30)])
    frame["species"] = np.array(["a", "b", "c"])[frame[["f0", "f1", "f2"]].to_numpy().argmax(1)]
    frame.to_csv(tmp_path / "table.csv", index=False)
    card = tmp_path / "card.toml"
    result = cli("init", tmp_path / "table.csv", "--out", card)
    assert result.exit_code == 0, result.stderr
    raw = tomllib.loads(card.read_text(encoding="utf-8"))
    assert raw["id"] == "sample_id"
    assert raw["input"] == {"type": "features", "columns": ["f0", "f1", "f2"]}
    assert raw["tasks"] == {"species": {"type": "classification", "column": "species"}}
    assert "if it is a target, use --task NAME=f0:regression" in result.out
    trains(card, tmp_path / "run", tiny)


def test_a_split_column_of_train_and_val_is_the_split(tmp_path, cli):
    path = image_table(tmp_path / "shapes")
    frame = pd.read_csv(path)
    frame["part"] = ["train"] * 9 + ["val"] * 3
    frame.to_csv(path, index=False)
    result = cli("init", path, "--out", tmp_path / "shapes" / "card.toml")
    assert result.exit_code == 0, result.stderr
    raw = tomllib.loads((tmp_path / "shapes" / "card.toml").read_text(encoding="utf-8"))
    assert raw["split"] == "part"
    assert "part" not in raw["tasks"]


def _with_column(path: Path, name: str, values: list) -> Path:
    frame = pd.read_csv(path)
    frame[name] = values
    frame.to_csv(path, index=False)
    return path


def test_an_integer_column_with_many_values_is_ambiguous(tmp_path, cli, files_of):
    path = _with_column(image_table(tmp_path / "shapes"), "age", list(range(12)))
    before = files_of(tmp_path)
    result = cli("init", path, "--out", tmp_path / "shapes" / "card.toml")
    assert result.exit_code == 2
    assert (
        f"Error: {path}: column 'age' is ambiguous: integers with 12 distinct values in 12 rows "
        "(classes, or a quantity); choose with --task age=age:classification or "
        "--task age=age:regression or --skip age"
    ) in result.err
    assert "ambiguous" in result.out  # the table of inferences so far is shown
    assert files_of(tmp_path) == before


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (("--task", "age=age:regression"), {"type": "regression", "columns": ["age"]}),
        (("--task", "age=age:classification"), {"type": "classification", "column": "age"}),
        (("--skip", "age"), None),
    ],
)
def test_options_settle_an_ambiguous_column(tmp_path, cli, option, expected):
    path = _with_column(
        image_table(tmp_path / "shapes"), "age", [i % 4 * 10 + i for i in range(12)]
    )
    card = tmp_path / "shapes" / "card.toml"
    result = cli("init", path, "--out", card, *option)
    assert result.exit_code == 0, result.stderr
    assert tasks_of(card).get("age") == expected
    assert set(tasks_of(card)) >= {"shape", "width", "mask", "depth"}  # the rest still inferred


def test_task_option_renames_groups_and_retypes(tmp_path, cli):
    path = _with_column(image_table(tmp_path / "shapes"), "height", [0.5] * 6 + [0.7] * 6)
    card = tmp_path / "shapes" / "card.toml"
    result = cli(
        "init",
        path,
        "--out",
        card,
        "--task",
        "size=width,height:regression",
        "--task",
        "form=shape:classification",
    )
    assert result.exit_code == 0, result.stderr
    tasks = tasks_of(card)
    assert tasks["size"] == {"type": "regression", "columns": ["width", "height"]}
    assert tasks["form"] == {"type": "classification", "column": "shape"}
    assert {"width", "height", "shape"}.isdisjoint(tasks)  # not inferred a second time


def test_two_image_columns_are_ambiguous_and_input_settles_it(tmp_path, cli):
    path = image_table(tmp_path / "shapes")
    frame = pd.read_csv(path)
    frame["thumb"] = frame["image"]
    frame.to_csv(path, index=False)
    card = tmp_path / "shapes" / "card.toml"
    result = cli("init", path, "--out", card)
    assert result.exit_code == 2
    assert "column 'image' is ambiguous: images in 2 columns (image, thumb)" in result.err
    assert "choose with --input image or --input thumb" in result.err
    assert not card.exists()

    result = cli("init", path, "--out", card, "--input", "thumb")
    assert result.exit_code == 0, result.stderr
    assert tomllib.loads(card.read_text(encoding="utf-8"))["input"]["column"] == "thumb"
    assert "an image column other than the input" in result.out


def test_a_table_without_an_id_column_needs_id(tmp_path, cli):
    path = image_table(tmp_path / "shapes")
    frame = pd.read_csv(path).rename(columns={"id": "ref"})
    frame.to_csv(path, index=False)
    card = tmp_path / "shapes" / "card.toml"
    result = cli("init", path, "--out", card)
    assert result.exit_code == 2
    assert "no id column" in result.err and "--id COLUMN" in result.err
    assert not card.exists()
    result = cli("init", path, "--out", card, "--id", "ref")
    assert result.exit_code == 0, result.stderr
    assert tomllib.loads(card.read_text(encoding="utf-8"))["id"] == "ref"
    assert "ref" not in tasks_of(card)


def test_input_names_the_features_and_the_other_numbers_become_targets(tmp_path, cli):
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.normal(size=(20, 3)), columns=["f0", "f1", "y"])
    frame.insert(0, "id", range(20))
    frame.to_csv(tmp_path / "t.csv", index=False)
    card = tmp_path / "card.toml"
    result = cli("init", tmp_path / "t.csv", "--out", card, "--input", "f0", "--input", "f1")
    assert result.exit_code == 0, result.stderr
    raw = tomllib.loads(card.read_text(encoding="utf-8"))
    assert raw["input"] == {"type": "features", "columns": ["f0", "f1"]}
    assert raw["tasks"] == {"y": {"type": "regression", "columns": ["y"]}}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--task", "x"), "expected NAME=COLUMN:TYPE"),
        (("--task", "a=shape:colour"), "TYPE must be one of classification, regression"),
        (("--task", "A=shape:classification"), "task names may use only a-z"),
        (("--task", "a=nope:classification"), "--task 'nope': no such column"),
        (("--input", "shape"), "--input 'shape': neither a column of images"),
    ],
)
def test_bad_options_exit_2(tmp_path, cli, args, message):
    path = image_table(tmp_path / "shapes")
    result = cli("init", path, "--out", tmp_path / "shapes" / "card.toml", *args)
    assert result.exit_code == 2
    assert message in result.err


def test_table_options_are_refused_for_a_folder(tmp_path, cli):
    data = image_folder(tmp_path / "pets", PETS, n=2)
    result = cli("init", data, "--out", tmp_path / "c.toml", "--id", "x")
    assert result.exit_code == 2
    assert "--id settles a table's columns" in result.err


def test_an_unreadable_table_exits_2(tmp_path, cli):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet at all")
    result = cli("init", path, "--out", tmp_path / "card.toml")
    assert result.exit_code == 2
    assert f"Error: {path}: cannot read the manifest table" in result.err
    assert not (tmp_path / "card.toml").exists()


def test_a_path_column_naming_a_non_image_file_exits_2_with_the_row(tmp_path, cli):
    path = image_table(tmp_path / "shapes")
    frame = pd.read_csv(path)
    frame.loc[4, "image"] = "images/04.txt"
    frame.to_csv(path, index=False)
    result = cli("init", path, "--out", tmp_path / "shapes" / "card.toml")
    assert result.exit_code == 2
    assert "column 'image' names files, but row 5 holds 'images/04.txt'" in result.err


def test_a_card_that_does_not_validate_is_not_written(tmp_path, cli, files_of):
    path = image_table(tmp_path / "shapes")
    frame = pd.read_csv(path)
    frame.loc[3, "width"] = np.nan
    frame.to_csv(path, index=False)
    card = tmp_path / "shapes" / "card.toml"
    before = files_of(tmp_path)
    result = cli("init", path, "--out", card)
    assert result.exit_code == 2
    assert (
        f"the card written does not validate: {path}: row id 's03': column 'width': the target "
        "is missing or NaN" in result.err
    )
    assert files_of(tmp_path) == before


# --- where the card goes --------------------------------------------------------------------


def test_an_existing_card_is_refused_unless_force(tmp_path, cli):
    data = image_folder(tmp_path / "pets", PETS, n=2)
    card = tmp_path / "card.toml"
    card.write_text("mine\n")
    result = cli("init", data, "--out", card)
    assert result.exit_code == 2
    assert f"{card} already exists; pass --force" in result.err
    assert card.read_text() == "mine\n"
    assert cli("init", data, "--out", card, "--force").exit_code == 0
    assert "[tasks.class]" in card.read_text()


def test_a_card_outside_the_data_names_it_as_root_and_trains(tmp_path, cli, monkeypatch):
    image_folder(tmp_path / "data" / "pets", PETS, n=3)
    (tmp_path / "cards").mkdir()
    monkeypatch.chdir(tmp_path)  # the commands as a user types them

    result = cli("init", "data/pets", "--out", "cards/pets.toml")

    assert result.exit_code == 0, result.stderr
    raw = tomllib.loads(Path("cards/pets.toml").read_text(encoding="utf-8"))
    assert (raw["table"], raw["root"]) == ("pets.manifest.csv", "../data/pets")
    assert "allow_outside_paths" not in raw
    manifest = pd.read_csv("cards/pets.manifest.csv", dtype=str)
    assert manifest["image"].iloc[0] == "cat/000.png"  # relative to the data folder
    train = ("--epochs", "1", "--batch-size", "4", "--device", "cpu", "--workers", "0")
    result = cli("train", "cards/pets.toml", "--out", "runs/pets", *train)
    assert result.exit_code == 0, result.stderr
    assert Path("runs/pets/trajectories/epoch-0001.parquet").is_file()


def test_init_says_which_folder_the_paths_are_relative_to(tmp_path):
    data = image_folder(tmp_path / "data" / "pets", PETS, n=2).resolve()
    (tmp_path / "cards").mkdir()

    def root_note(out: Path) -> tuple[str, str]:
        notes = layout.init_card(data, out=out).inferences
        (note,) = [n for n in notes if n.decision.startswith("data folder")]
        return note.subject, note.decision

    assert root_note(tmp_path / "cards" / "pets.toml") == (
        str(data),
        'data folder: root = "../data/pets"',
    )
    assert root_note(data.parent / "pets.toml") == (str(data.parent), "data folder")
    assert "root" not in tomllib.loads((data.parent / "pets.toml").read_text(encoding="utf-8"))


def test_root_is_relative_within_one_tree_and_absolute_across_the_file_system():
    assert layout.root_text(Path("/srv/proj/data/pets"), Path("/srv/proj/cards")) == "../data/pets"
    assert layout.root_text(Path("/data/pets"), Path("/home/me/cards")) == "/data/pets"


def test_allow_outside_paths_still_lets_the_paths_leave_the_data_folder(tmp_path, cli):
    data = image_folder(tmp_path / "data" / "pets", PETS, n=3)
    (tmp_path / "cards").mkdir()
    card = tmp_path / "cards" / "pets.toml"
    result = cli("init", data, "--out", card, "--allow-outside-paths")
    assert result.exit_code == 0, result.stderr
    raw = tomllib.loads(card.read_text(encoding="utf-8"))
    assert (raw["root"], raw["allow_outside_paths"]) == ("../data/pets", True)
    assert load_manifest(card).card.allow_outside_paths


def test_table_paths_relative_to_the_tables_folder_make_it_the_root(tmp_path, cli, tiny):
    path = image_table(tmp_path / "shapes")
    card = tmp_path / "card.toml"
    result = cli("init", path, "--out", card)
    assert result.exit_code == 0, result.stderr
    raw = tomllib.loads(card.read_text(encoding="utf-8"))
    assert (raw["table"], raw["root"]) == ("shapes/data.csv", "shapes")
    trains(card, tmp_path / "run", tiny)


def test_a_table_outside_the_cards_folder_is_refused_with_where_to_put_it(tmp_path, cli):
    path = image_table(tmp_path / "data" / "shapes")
    (tmp_path / "cards").mkdir()
    result = cli("init", path, "--out", tmp_path / "cards" / "shapes.toml")
    assert result.exit_code == 2
    assert f"put the card in {path.parent} or a folder above it" in result.err
    assert list((tmp_path / "cards").iterdir()) == []


# --- untrusted text -------------------------------------------------------------------------


def test_odd_folder_and_file_names_are_printed_as_text(tmp_path, cli, tiny):
    odd = {'say "hi" [red]it\'s': (200, 0, 0), "b[bold]": (0, 200, 0)}
    data = image_folder(tmp_path / "odd", odd, n=3)
    _image(data / "b[bold]" / "line\nbreak.png", 7)
    card = tmp_path / "card.toml"
    result = cli("init", data, "--out", card)
    assert result.exit_code == 0, result.stderr
    assert 'say "hi" [red]it\'s' in result.out and "b[bold]" in result.out
    assert tasks_of(card)["class"]["classes"] == ["b[bold]", 'say "hi" [red]it\'s']
    assert "b[bold]/line\nbreak" in load_manifest(card).ids  # the newline survives the CSV
    trains(card, tmp_path / "run", tiny)

    (data / "b[bold]" / "[red]bad.txt").write_text("x")
    result = cli("init", data, "--out", card, "--force")
    assert result.exit_code == 2
    assert f"Error: {data / 'b[bold]' / '[red]bad.txt'}: not an image" in result.err


def test_odd_column_names_and_cells_are_printed_as_text(tmp_path, cli):
    path = image_table(tmp_path / "shapes")
    frame = pd.read_csv(path)
    frame["[bold]note"] = ["same\n[red]text"] * 12
    frame["shape"] = frame["shape"].map({"circle": "[red]c", "square": 's"q', "triangle": "t\nx"})
    frame.to_csv(path, index=False)
    result = cli("init", path, "--out", tmp_path / "shapes" / "card.toml")
    assert result.exit_code == 0, result.stderr
    assert "[bold]note" in result.out
    assert "a single value ('same\\n[red]text') is no label" in result.out
    assert load_manifest(tmp_path / "shapes" / "card.toml").class_names["shape"] == (
        "[red]c",
        's"q',
        "t\nx",
    )


# --- the command ----------------------------------------------------------------------------


def test_init_help_has_an_example_and_imports_no_torch():
    code = """
        import sys
        from ilt_audit.cli import app
        try:
            app(["init", "--help"], prog_name="ilt-audit")
        except SystemExit:
            pass
        print("HEAVY:", [m for m in ("torch", "pandas", "pyarrow") if m in sys.modules])
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "Example: ilt-audit init" in result.stdout
    assert "HEAVY: []" in result.stdout


def test_init_card_from_python_returns_every_inference(tmp_path):
    data = image_folder(tmp_path / "pets", PETS, n=2)
    result = layout.init_card(data, out=tmp_path / "card.toml")
    assert result.card == tmp_path / "card.toml"
    assert result.manifest == tmp_path / "card.manifest.csv"
    assert result.layout == "imagefolder"
    decisions = {i.subject: i.decision for i in result.inferences}
    assert decisions["class"] == "task class: classification"
    assert json.dumps([i.why for i in result.inferences])  # plain text, serialisable


def test_few_valued_greyscale_files_and_no_image_column_are_ambiguous(tmp_path, cli):
    rows = []
    for i in range(8):
        _mask(tmp_path / "pics" / f"{i}.png", 100 + i % 2)  # greyscale, two grey levels
        rows.append({"id": f"g{i}", "pic": f"pics/{i}.png", "label": "ab"[i % 2]})
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    card = tmp_path / "card.toml"
    result = cli("init", tmp_path / "t.csv", "--out", card)
    assert result.exit_code == 2
    assert "column 'pic' is ambiguous" in result.err and "--input pic" in result.err
    result = cli("init", tmp_path / "t.csv", "--out", card, "--input", "pic")
    assert result.exit_code == 0, result.stderr
    raw = tomllib.loads(card.read_text(encoding="utf-8"))
    assert raw["input"] == {"type": "image", "column": "pic"}
    assert raw["tasks"] == {"label": {"type": "classification", "column": "label"}}


def test_a_drafted_card_that_does_not_validate_names_the_card_not_its_temporary_file(tmp_path, cli):
    # a features input with dense tasks: the card itself is refused by the check before writing
    table = image_table(tmp_path)
    pd.read_csv(table).assign(size=1.0).to_csv(table, index=False)
    result = cli("init", table, "--out", tmp_path / "c.toml", "--input", "size")
    assert result.exit_code == 2
    assert "does not validate" in result.err and str(tmp_path / "c.toml") in result.err
    assert ".tmp-" not in result.err and ".init-" not in result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv", "depth", "images", "masks"]
