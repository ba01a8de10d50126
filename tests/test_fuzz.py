"""Fuzzed input (issue 23): cards with every key a card may have, their manifests, and every
layout ``init`` reads, mutated at random. Whatever the input, the CLI loads it (exit 0) or refuses
it with exactly one ``Error:`` line and exit 2; never a traceback, never exit 3, and nothing
written on a refusal.

Each example builds a tiny dataset with the generators of the importers' own tests
(``test_init_coco``, ``test_init_cityscapes_voc``, ``helpers_data``), changes a few of its
fields, files or cells, and runs the real CLI in-process: ``corrupt`` on a card (it opens the
card, checks every row and rewrites the labels of every task) and the training pass's check of
every file (:meth:`~ilt_audit.dataset.opening.Source.load`), ``init`` on a layout. The default
suite runs a few dozen examples of each; ``-m slow`` runs many more and trains on the cards that
load. Derandomised, so that CI sees the same examples; every crash found is kept as an
``@example`` or a test of its own.
"""

from __future__ import annotations

import copy
import json
import re
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import snapshot
from helpers_data import hf_table, png_bytes, write_saved
from hypothesis import currently_in_test_context, event, example, given
from hypothesis import strategies as st
from PIL import Image
from test_init_cityscapes_voc import cityscapes, voc
from test_init_coco import write_split
from test_properties import HOSTILE, TRAIN, _ends_cleanly, _without_none, fuzz

from ilt_audit.dataset.opening import open_dataset
from ilt_audit.errors import IltAuditError
from ilt_audit.internal.toml import toml_dumps

SLOW = pytest.mark.slow

# --- values a field may get ------------------------------------------------------------------

HUGE = [2**31, 2**53 + 1, 2**63, 2**64, 10**20, 10**400]
NAMES = HOSTILE + ["NA", "nan", "None", " cat", "cat ", "a|b", "a;b", "\u00e9t\u00e9", "\U0001f600"]
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 300),
    st.sampled_from(HUGE + [-(2**63), -1, 0]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["manifest.csv", "id", "data", "..", "/", "../data", "images", "mask", "tags"]),
    st.sampled_from(["classification", "regression", "segmentation", "dense-regression"]),
    st.sampled_from(["multi-label", "image", "features", "|", ";", " ", ""]),
    st.sampled_from(NAMES),
    st.text(max_size=6),
)
VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(value: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document: the keys and indices that lead to it."""
    found = [here]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*here, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*here, index))
    return found


@st.composite
def json_edits(draw: st.DrawFn, document: Any, values: st.SearchStrategy[Any]) -> Any:
    """``document`` with one to three of its places given another value, or taken out."""
    document = json.loads(json.dumps(document))
    for _ in range(draw(st.integers(1, 3))):
        places = _paths(document)[:0:-1]  # the deepest first: what hypothesis tries most
        if not places:
            break
        place = draw(st.sampled_from(places))
        parent = document
        for step in place[:-1]:
            parent = parent[step]
        if draw(st.integers(0, 4)) == 0:
            del parent[place[-1]]
        else:  # a copy: a later edit must not change the strategy's own constants
            parent[place[-1]] = copy.deepcopy(draw(values))
    return document


# --- cards with every key --------------------------------------------------------------------

SIZE = 8
TAGS = ("cat", "dog", "owl")


def _image_data(folder: Path, n: int = 4) -> pd.DataFrame:
    """``n`` 8x8 images in ``folder/data``, masks storing 0..3 (3: no class, label_map sends it
    to the ignore index), 16-bit depth maps storing 0 where they have no value; the manifest."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks", "depth"):
        (folder / "data" / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        name = f"s{i}"
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), np.uint8)).save(
            folder / "data" / "images" / f"{name}.png"
        )
        Image.fromarray(rng.integers(0, 4, (SIZE, SIZE)).astype(np.uint8)).save(
            folder / "data" / "masks" / f"{name}.png"
        )
        depth = rng.integers(0, 5000, (SIZE, SIZE)).astype(np.uint16)
        Image.fromarray(depth).save(folder / "data" / "depth" / f"{name}.png")
        rows.append(
            {
                "id": name,
                "image": f"images/{name}.png",
                "shape": "abc"[i % 3],
                "x": 0.25 * i,
                "y": 1.0 - 0.25 * i,
                "mask": f"masks/{name}.png",
                "depth": f"depth/{name}.png",
                "tags": ";".join(TAGS[: i % 4]),
                "split": "val" if i == n - 1 else "train",
            }
        )
    return pd.DataFrame(rows)


CARD: dict[str, Any] = {
    "table": "manifest.csv",
    "id": "id",
    "root": "data",
    "split": "split",
    "allow_outside_paths": False,
    "input": {"type": "image", "column": "image", "size": [SIZE, SIZE]},
    "tasks": {
        "shape": {"type": "classification", "column": "shape", "classes": ["a", "b", "c"]},
        "box": {"type": "regression", "columns": ["x", "y"]},
        "seg": {
            "type": "segmentation",
            "column": "mask",
            "classes": 3,
            "ignore_index": 255,
            "label_map": [2, 0, 1, 255],
        },
        "depth": {
            "type": "dense-regression",
            "column": "depth",
            "scale": 1000,
            "offset": 1,
            "invalid": 0,
        },
        "tags": {"type": "multi-label", "column": "tags", "separator": ";", "classes": list(TAGS)},
    },
}


@st.composite
def full_cards(draw: st.DrawFn) -> dict[str, Any]:
    """The card of :func:`_image_data` (every key a card may have; ``row_ids`` instead of ``id``
    now and then) with one to three of its keys or values changed or taken out."""
    base = json.loads(json.dumps(CARD))
    if draw(st.booleans()):
        del base["id"]
        base["row_ids"] = True
    return _without_none(draw(json_edits(base, VALUES)))


def _count(result: Any, command: str) -> None:
    """Count the outcomes (shown by --hypothesis-show-statistics)."""
    if currently_in_test_context():
        last = re.sub(r"/tmp/\S+/", "", (result.stderr.strip().splitlines() or [""])[-1])
        event(f"{command} exit {result.exit_code}" + (f": {last[:60]}" if last else ""))


def _write_card(folder: Path, document: dict[str, Any]) -> Path:
    card = folder / "card.toml"
    try:
        card.write_text(toml_dumps(document), encoding="utf-8")
    except TypeError:  # a value the small TOML writer cannot write
        card.write_text(str(document), encoding="utf-8", errors="surrogateescape")
    return card


def _tasks_of(document: dict[str, Any]) -> list[str]:
    tasks = document.get("tasks")
    return [str(t) for t in tasks] if isinstance(tasks, dict) and tasks else ["shape"]


def _opens_or_refuses(cli: Callable[..., Any], card: Path, tasks: list[str]) -> bool:
    """``corrupt`` every task of the card, then the training pass over its files; whether the
    card loaded."""
    out = card.parent / "corrupted"
    args = [a for task in tasks for a in ("--task", task)]
    result = cli("corrupt", card, *args, "--fraction", "0.5", "--seed", "1", "--out", out)
    _count(result, "corrupt")
    _ends_cleanly(result)
    if result.exit_code != 0:
        assert not out.exists(), "a refused card wrote its corrupted copy"
        return False
    try:  # what `train` checks before its first epoch: every file decoded
        open_dataset(card).load(workers=0, scan=True)
    except IltAuditError:
        pass
    return True


@fuzz(40)
@given(document=full_cards())
@example(document={**CARD, "tasks": {"shape": {**CARD["tasks"]["shape"], "classes": ["a", "a"]}}})
@example(document={**CARD, "tasks": {"seg": {**CARD["tasks"]["seg"], "classes": 10**20}}})
@example(document={**CARD, "tasks": {"shape": {"type": "classification", "column": "shape",
                                               "classes": 10**20}}})  # fmt: skip
def test_any_card_with_every_key(cli, document):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _image_data(folder).to_csv(folder / "manifest.csv", index=False)
        _opens_or_refuses(cli, _write_card(folder, document), _tasks_of(document))


def test_a_class_count_beyond_a_masks_values_is_refused_not_counted(tmp_path, cli):
    """``classes = 10**20`` listed every class as text before it was refused (a hang)."""
    _image_data(tmp_path).to_csv(tmp_path / "manifest.csv", index=False)
    shape = {"type": "classification", "column": "shape", "classes": 10**20}
    card = _write_card(tmp_path, {**CARD, "tasks": {"shape": shape}})
    result = cli("corrupt", card, "--task", "shape", "--fraction", "0.5", "--out", tmp_path / "c")
    assert result.exit_code == 2
    assert "[tasks.shape]: classes must be a count (2 to 65,536)" in result.err


# --- their manifests -------------------------------------------------------------------------

_CELLS = {
    "tags": st.one_of(
        st.sampled_from(["", "cat", "cat;dog", ";", "cat;;dog", " ; ", "1", "1.5", "1e300"]),
        st.lists(st.sampled_from([*TAGS, "", "1", 1, 2**63, None, 1.5]), max_size=3),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(NAMES),
        st.none(),
    ),
    "shape": st.one_of(st.sampled_from(["a", "b", "c", "d", "", "1"]), st.none(), st.floats()),
    "x": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(HUGE)),
    "split": st.sampled_from(["train", "val", "test", "", None]),
    "mask": st.sampled_from(
        ["masks/s0.png", "images/s0.png", "depth/s0.png", "../x.png", "", None]
    ),
    "depth": st.sampled_from(["depth/s1.png", "masks/s1.png", "/etc/passwd", "\x00", None]),
    "image": st.sampled_from(["images/s2.png", "masks/s2.png", "depth/s2.png", "nope.png", None]),
    "id": st.one_of(st.sampled_from(["s0", "s1", "", None, 7]), st.sampled_from(NAMES)),
}


@st.composite
def manifests(draw: st.DrawFn) -> tuple[str, pd.DataFrame]:
    """The manifest of :func:`_image_data` with a few cells of random values, as CSV, JSON Lines
    or Parquet."""
    table = draw(st.sampled_from(["manifest.csv", "manifest.jsonl", "manifest.parquet"]))
    edits = draw(
        st.lists(
            st.tuples(st.sampled_from(sorted(_CELLS)), st.integers(0, 3), st.data()), max_size=3
        )
    )
    return table, [(column, row, data.draw(_CELLS[column])) for column, row, data in edits]


def _write_any(frame: pd.DataFrame, path: Path) -> None:
    """Write a manifest; a frame of mixed cells Parquet cannot store goes as text cells."""
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, default_handler=str)
    else:
        try:
            frame.to_parquet(path, index=False)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            arrays = [pa.array([None if v is None else str(v) for v in frame[c]]) for c in frame]
            pq.write_table(pa.table(arrays, names=list(frame.columns)), path)


@fuzz(40)
@given(manifest=manifests(), row_ids=st.booleans())
@example(manifest=("manifest.csv", [("tags", 1, 1e300)]), row_ids=False)
@example(manifest=("manifest.parquet", [("tags", 2, float("inf"))]), row_ids=False)
def test_any_manifest_of_a_card_with_every_key(cli, manifest, row_ids):
    table, edits = manifest
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        frame = _image_data(folder).astype(object)
        for column, row, value in edits:
            frame.at[row, column] = value
        _write_any(frame, folder / table)
        document = {**CARD, "table": table}
        if row_ids:
            document = {k: v for k, v in document.items() if k != "id"} | {"row_ids": True}
        _opens_or_refuses(cli, _write_card(folder, document), list(CARD["tasks"]))


# --- init: what a refusal must leave behind --------------------------------------------------


def _init_ends_cleanly(cli: Callable[..., Any], data: Path, out: Path) -> bool:
    """``init data --out out``: exit 0, or exit 2 with one ``Error:`` line and not a file
    written (the card, its manifest, its masks folder, a hidden staging folder)."""
    before = snapshot(out.parent)
    result = cli("init", data, "--out", out)
    _count(result, "init")
    _ends_cleanly(result)
    if result.exit_code == 0:
        return True
    assert not out.exists() and not out.with_name(f"{out.stem}.manifest.csv").exists()
    assert not out.with_name(f"{out.stem}.masks").exists()
    assert snapshot(out.parent) == before
    return False


# --- COCO JSON --------------------------------------------------------------------------------

_COCO_VALUES = st.one_of(
    VALUES,
    st.sampled_from(
        [
            [[1, 1, 5, 1, 5]],  # a polygon of odd length
            [[1, 1, 5, 1, 5, 5, 1]],
            [[0, 0, 4, 0]],  # two points: a box to pycocotools
            [[0, 0, 1e308, 0, 0, 1e308]],
            [[0, 0, float("nan"), 0, 0, 4]],
            [[-(10**20), 0, 4, 0, 0, 4]],
            [[]],
            {"size": [2, 2], "counts": [4]},  # RLE of the wrong size
            {"size": [32, 32], "counts": [1000]},
            {"size": [32, 32], "counts": [-1, 1025]},
            {"size": [32, 32], "counts": "0"},
            {"size": [32, 32], "counts": "\u00ff\u00ff"},
            {"size": [32.0, 32.0], "counts": [1024]},
            {"size": [32, 32], "counts": None},
            {"size": [32, 32]},
            {"counts": [1024]},
            -1,
            -(2**63),
            float("nan"),
            float("inf"),
            "",
        ]
    ),
)


def _coco(root: Path) -> Path:
    return write_split(root / "coco", "train", 2)


with tempfile.TemporaryDirectory() as _tmp:  # the document every COCO example mutates
    _COCO = json.loads(_coco(Path(_tmp)).read_text(encoding="utf-8"))


@fuzz(40)
@given(document=json_edits(_COCO, _COCO_VALUES))
@example(document={**_COCO, "categories": [{"id": 1, "name": " square"}, *_COCO["categories"][1:]]})
def test_init_on_a_mutated_coco_file(cli, document):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = _coco(folder)
        path.write_text(json.dumps(document), encoding="utf-8")
        (folder / "cards").mkdir()
        _init_ends_cleanly(cli, folder / "coco", folder / "cards" / "coco.toml")


def test_a_coco_category_name_with_spaces_around_it_is_trimmed(tmp_path, cli):
    """A category named " square " became a tag its own manifest could not hold (tags are read
    trimmed): the card init wrote did not validate."""
    path = _coco(tmp_path)
    document = json.loads(path.read_text(encoding="utf-8"))
    document["categories"][0]["name"] = " square "
    path.write_text(json.dumps(document), encoding="utf-8")
    assert cli("init", tmp_path / "coco", "--out", tmp_path / "coco.toml").exit_code == 0
    tasks = tomllib.loads((tmp_path / "coco.toml").read_text(encoding="utf-8"))["tasks"]
    assert tasks["categories"]["classes"][0] == "square"


@fuzz(25)
@given(names=st.lists(st.sampled_from(NAMES) | st.text(min_size=1, max_size=5), min_size=3,
                      max_size=3))  # fmt: skip
def test_init_on_coco_categories_with_hostile_names(cli, names):
    document = json.loads(json.dumps(_COCO))
    for category, name in zip(document["categories"], names, strict=True):
        category["name"] = name
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _coco(folder).write_text(json.dumps(document), encoding="utf-8")
        if _init_ends_cleanly(cli, folder / "coco", folder / "coco.toml"):
            _opens_or_refuses(cli, folder / "coco.toml", ["categories"])


# --- Pascal VOC and Cityscapes folders -------------------------------------------------------

_LINES = st.lists(
    st.sampled_from(["2007_000000", "2007_000001", "2007_000003", "", " ", "../x", "a/b", ".x"])
    | st.sampled_from(NAMES),
    max_size=4,
)


@st.composite
def label_files(draw: st.DrawFn, shape: tuple[int, int]) -> bytes:
    """A label file's bytes: a PNG of random values, mode and size, or bytes that are not one."""
    kind = draw(st.sampled_from(["png", "png", "png", "garbage", "truncated"]))
    if kind == "garbage":
        return draw(st.binary(max_size=40))
    height, width = draw(st.sampled_from([shape, (shape[0], shape[1] // 2), (1, 1)]))
    value = draw(st.sampled_from([0, 1, 7, 15, 20, 21, 33, 34, 200, 254, 255]))
    mode = draw(st.sampled_from(["L", "P", "I;16", "RGB", "1"]))
    array = np.full((height, width), value, np.uint16 if mode == "I;16" else np.uint8)
    picture = Image.fromarray(array if mode != "RGB" else np.dstack([array] * 3))
    if mode in ("P", "1"):
        picture = picture.convert(mode)
    buffer = tempfile.SpooledTemporaryFile()
    picture.save(buffer, format="PNG")
    buffer.seek(0)
    data = buffer.read()
    return data[: len(data) // 2] if kind == "truncated" else data


def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(root.glob(pattern))


@fuzz(30)
@given(data=st.data())
def test_init_on_a_mutated_voc_folder(cli, data):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        root = voc(folder / "VOC2012", train_n=2, val_n=1, unlisted=1)
        lists = root / "ImageSets" / "Segmentation"
        for _ in range(data.draw(st.integers(1, 2))):
            target = data.draw(st.sampled_from(["list", "mask", "image", "remove"]))
            if target == "list":
                listing = lists / data.draw(st.sampled_from(["train.txt", "val.txt"]))
                if data.draw(st.booleans()):
                    listing.write_bytes(data.draw(st.binary(max_size=30)))
                else:
                    listing.write_text("\n".join(data.draw(_LINES)), encoding="utf-8")
            elif target == "remove":
                data.draw(st.sampled_from(_files(root, "*/*.*"))).unlink()
            else:
                pattern = "SegmentationClass/*.png" if target == "mask" else "JPEGImages/*.jpg"
                path = data.draw(st.sampled_from(_files(root, pattern)))
                path.write_bytes(data.draw(label_files((32, 64))))
        _init_ends_cleanly(cli, root, folder / "voc.toml")


@fuzz(30)
@given(data=st.data())
def test_init_on_a_mutated_cityscapes_folder(cli, data):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        root = cityscapes(folder / "cityscapes", n=1, test=False)
        for _ in range(data.draw(st.integers(1, 2))):
            target = data.draw(st.sampled_from(["labels", "disparity", "image", "remove", "add"]))
            if target == "remove":
                data.draw(st.sampled_from(_files(root, "*/*/*/*.png"))).unlink()
            elif target == "add":
                name = data.draw(st.sampled_from(NAMES + ["x_gtFine_labelIds.png", "y.png"]))
                where = data.draw(st.sampled_from(["leftImg8bit", "gtFine", "disparity"]))
                path = (
                    root / where / "train" / "aachen" / name.replace("/", "_").replace("\x00", "")
                )
                if path.name and path.parent == root / where / "train" / "aachen":
                    path.write_bytes(b"")
            else:
                pattern = {
                    "labels": "gtFine/*/*/*_labelIds.png",
                    "disparity": "disparity/*/*/*.png",
                    "image": "leftImg8bit/*/*/*.png",
                }[target]
                path = data.draw(st.sampled_from(_files(root, pattern)))
                path.write_bytes(data.draw(label_files((32, 64))))
        (folder / "cards").mkdir()
        _init_ends_cleanly(cli, root, folder / "cards" / "cityscapes.toml")


@pytest.mark.parametrize("name", ["a\nb_leftImg8bit.png", "\u2028"])
def test_a_file_name_with_a_line_break_stays_on_the_one_error_line(tmp_path, cli, name):
    """A name holding a newline or U+2028 split the ``Error:`` line in two."""
    root = cityscapes(tmp_path / "cityscapes", n=1, test=False)
    (root / "leftImg8bit" / "train" / "aachen" / name).write_bytes(b"")
    result = cli("init", root, "--out", tmp_path / "cityscapes.toml")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert repr(name[:3])[1:-1] in result.stderr, result.stderr  # the escape, as written


# --- Hugging Face exports --------------------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


def _saved(folder: Path) -> Path:
    return write_saved(folder / "saved", hf_table(6, size=8, mask=True), shards=2)


with tempfile.TemporaryDirectory() as _tmp:  # the files every save_to_disk example mutates
    _SAVED = {
        name: json.loads((_saved(Path(_tmp)) / name).read_text(encoding="utf-8"))
        for name in ("state.json", "dataset_info.json")
    }


_IMAGE_CELLS = st.one_of(
    st.none(),
    st.builds(lambda b, p: {"bytes": b, "path": p}, st.binary(max_size=20), st.none()),
    st.builds(
        lambda p: {"bytes": None, "path": p},
        st.sampled_from(["../x.png", "/etc/passwd", "", "nope.png", *NAMES]) | st.none(),
    ),
    st.just({"bytes": png_bytes(np.zeros((4, 4), np.uint8)), "path": None}),
    st.just({"bytes": png_bytes(np.full((8, 8), 7, np.uint8)), "path": None}),
)


@fuzz(30)
@given(
    state=json_edits(_SAVED["state.json"], _JSON),
    info=json_edits(_SAVED["dataset_info.json"], _JSON | st.sampled_from(NAMES)),
    which=st.sets(st.sampled_from(["state", "info"]), min_size=1),
)
@example(state="[" * 100_000, info=_SAVED["dataset_info.json"], which={"state"})
@example(state=_SAVED["state.json"], info="[" * 100_000, which={"info"})
def test_init_on_a_save_to_disk_folder_with_mutated_json(cli, state, info, which):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        saved = _saved(folder)
        for key, name, value in (
            ("state", "state.json", state),
            ("info", "dataset_info.json", info),
        ):
            if key in which:
                text = value if isinstance(value, str) else json.dumps(value)
                (saved / name).write_text(text, encoding="utf-8")
        _init_ends_cleanly(cli, saved, folder / "saved.toml")


@fuzz(30)
@given(
    table=st.sampled_from(["export.parquet", "saved"]),
    cells=st.lists(
        st.tuples(st.sampled_from(["image", "mask", "label"]), st.integers(0, 5), st.data()),
        min_size=1,
        max_size=3,
    ),
    names=st.one_of(
        st.none(),
        st.lists(st.sampled_from(NAMES) | st.integers() | st.none(), max_size=4),
        st.just(["ant", "ant", "bee"]),
    ),
)
@example(table="export.parquet", cells=[], names=["ant", "ant", "bee"])
def test_init_on_a_hugging_face_export_with_mutated_columns(cli, table, cells, names):
    exported = hf_table(6, size=8, mask=True)
    columns = {name: exported.column(name).to_pylist() for name in exported.column_names}
    for column, row, data in cells:
        cell = (
            _IMAGE_CELLS
            if column != "label"
            else st.none() | st.integers(-(2**63), 2**63 - 1) | st.sampled_from([-1, 3, 2**40])
        )
        columns[column][row] = data.draw(cell)
    features = json.loads(exported.schema.metadata[b"huggingface"])
    if names is not None:
        features["info"]["features"]["label"]["names"] = names
    rebuilt = pa.table(
        {
            name: pa.array(values, exported.schema.field(name).type)
            for name, values in columns.items()
        }
    ).replace_schema_metadata({"huggingface": json.dumps(features)})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if table == "saved":
            path = write_saved(folder / "saved", rebuilt)
        else:
            path = folder / table
            pq.write_table(rebuilt, path)
        if _init_ends_cleanly(cli, path, folder / "export.toml"):
            _opens_or_refuses(cli, folder / "export.toml", ["label"])


# --- longer runs: training on what loads -----------------------------------------------------


@SLOW
@fuzz(300)
@given(document=full_cards())
def test_many_cards_with_every_key_and_train_what_loads(cli, document):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _image_data(folder).to_csv(folder / "manifest.csv", index=False)
        card = _write_card(folder, document)
        if _opens_or_refuses(cli, card, _tasks_of(document)):
            result = cli("train", card, "--out", folder / "run", *TRAIN, "--workers", "0")
            _ends_cleanly(result)


@SLOW
@fuzz(400)
@given(document=json_edits(_COCO, _COCO_VALUES))
def test_many_mutated_coco_files(cli, document):
    test_init_on_a_mutated_coco_file.hypothesis.inner_test(cli, document)
