"""`ilt-audit init` on a COCO instances layout: three tasks derived from the annotations.

Every layout is generated in ``tmp_path`` following the published format
(cocodataset.org/#format-data): ``images``, ``annotations`` whose ``segmentation`` is polygons,
uncompressed RLE (a list of run lengths) or compressed RLE (pycocotools' string), ``iscrowd``,
and ``categories`` whose ids are not contiguous. Nothing is downloaded or copied.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

import ilt_audit.dataset.layouts.draft as draft_module
from ilt_audit.dataset.layouts import init_card

SIZE = 32
CATEGORIES = [  # ids 1, 3, 7 become the classes 1, 2, 3
    {"id": 1, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 7, "name": "blob", "supercategory": "shape"},
]
COLOURS = {1: (220, 30, 30), 3: (30, 220, 30), 7: (30, 30, 220)}


def rectangle(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    """A polygon covering the pixels x0..x1-1, y0..y1-1: (x1 - x0) * (y1 - y0) of them."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def region(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def runs(mask: np.ndarray) -> dict:
    """Uncompressed RLE: run lengths in column-major order, the first a run of zeros."""
    flat = mask.flatten(order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    lengths = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return {"size": [SIZE, SIZE], "counts": ([0] if flat[0] else []) + lengths}


def compressed(mask: np.ndarray) -> dict:
    """Compressed RLE, as COCO's own files store crowd regions."""
    from pycocotools import mask as coco_mask

    rle = coco_mask.encode(np.asfortranarray(mask))
    return {"size": [SIZE, SIZE], "counts": rle["counts"].decode("ascii")}


TRIANGLE = [[16, 16, 30, 16, 16, 30]]
BLOB = (2, 20, 10, 28)  # x0, y0, x1, y1: 64 pixels
CROWD = (0, 0, SIZE, 2)  # the top two rows


def objects(split: str, i: int) -> list[tuple[int, object, int]]:
    """(category id, segmentation, iscrowd) of image ``i``: 1 to 3 objects, every kind of
    segmentation among the images; train image 0 also has a crowd region."""
    found: list[tuple[int, object, int]] = [(1, rectangle(2 + i, 4, 10 + i, 12), 0)]  # 64 px
    if i % 2 == 0:
        found.append((3, TRIANGLE, 0))
    if i % 3 == 1:
        found.append((7, runs(region(*BLOB)), 0))
    if i % 3 == 2:
        found.append((7, compressed(region(*BLOB)), 0))
    if split == "train" and i == 0:
        found.append((1, compressed(region(*CROWD)), 1))
    return found


def write_split(root: Path, split: str, n: int, *, folder: str | None = None) -> Path:
    """``annotations/instances_<split>2017.json`` and its images in ``<split>2017/``."""
    folder = folder or f"{split}2017"
    images, annotations = [], []
    for i in range(n):
        image_id = 100 * (split == "val") + i + 1
        name = f"{image_id:012d}.png"
        picture = Image.new("RGB", (SIZE, SIZE), (20, 20, 20))
        draw = ImageDraw.Draw(picture)
        for cid, segmentation, crowd in objects(split, i):
            annotation = {
                "id": 1000 * (split == "val") + len(annotations) + 1,
                "image_id": image_id,
                "category_id": cid,
                "segmentation": segmentation,
                "area": 0.0,
                "bbox": [0, 0, 1, 1],
                "iscrowd": crowd,
            }
            annotations.append(annotation)
            if isinstance(segmentation, list):
                draw.polygon(segmentation[0], fill=COLOURS[cid])
        (root / folder).mkdir(parents=True, exist_ok=True)
        picture.save(root / folder / name)
        images.append({"id": image_id, "file_name": name, "width": SIZE, "height": SIZE})
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    path = root / "annotations" / f"instances_{split}2017.json"
    document = {"info": {}, "images": images, "annotations": annotations}
    document["categories"] = CATEGORIES
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def coco_layout(root: Path, *, train: int = 6, val: int = 3) -> Path:
    write_split(root, "train", train)
    if val:
        write_split(root, "val", val)
    return root


def edit(path: Path, change) -> None:
    document = json.loads(path.read_text(encoding="utf-8"))
    change(document)
    path.write_text(json.dumps(document), encoding="utf-8")


def mask_of(card: Path, row_id: str) -> np.ndarray:
    manifest = pd.read_csv(card.with_name(f"{card.stem}.manifest.csv"), dtype=str)
    path = manifest.set_index("id").loc[row_id, "mask"]
    return np.asarray(Image.open(card.parent / path))


# --- what init reads and writes ---------------------------------------------------------------


def test_a_coco_folder_gives_seg_and_count_tasks_a_categories_column_and_its_split(tmp_path, cli):
    data = coco_layout(tmp_path / "coco")
    card = tmp_path / "coco.toml"
    result = cli("init", data, "--out", card)
    assert result.exit_code == 0, result.stderr
    raw = tomllib.loads(card.read_text(encoding="utf-8"))
    assert raw["split"] == "split" and "root" not in raw
    assert raw["input"] == {"type": "image", "column": "image"}
    assert raw["tasks"] == {
        "seg": {"type": "segmentation", "column": "mask", "classes": 4, "ignore_index": 255},
        "count": {"type": "regression", "columns": ["count"]},
        "categories": {
            "type": "multi-label",
            "column": "categories",
            "classes": ["square", "triangle", "blob"],
        },
    }
    manifest = pd.read_csv(tmp_path / "coco.manifest.csv", dtype=str, keep_default_na=False)
    assert manifest.columns.tolist() == ["id", "image", "mask", "count", "categories", "split"]
    first = manifest.iloc[0].to_dict()
    assert first == {
        "id": "train2017/1",
        "image": "coco/train2017/000000000001.png",
        "mask": "coco.masks/train2017/1.png",
        "count": "2",  # the square and the triangle; the crowd region is not counted
        "categories": "square|triangle",  # in id order, the crowd's category too
        "split": "train",
    }
    assert manifest["split"].value_counts().to_dict() == {"train": 6, "val": 3}
    assert manifest.set_index("id").loc["val2017/103", "categories"] == "square|triangle|blob"
    masks = sorted(p.relative_to(tmp_path) for p in (tmp_path / "coco.masks").rglob("*.png"))
    assert len(masks) == 9 and masks[0] == Path("coco.masks/train2017/1.png")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert (
        "9 PNG masks" in result.out
        and "coco.manifest.csv and " in result.err
        and "coco.masks/ with 9 files of" in result.err
    )
    assert "task categories: multi-label" in result.out


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_the_masks_are_the_annotations_drawn(tmp_path, cli):
    data = coco_layout(tmp_path / "coco")
    card = tmp_path / "coco.toml"
    assert cli("init", data, "--out", card).exit_code == 0
    first = mask_of(card, "train2017/1")  # square, triangle, crowd strip
    assert first.dtype == np.uint8 and first.shape == (SIZE, SIZE)
    assert (first == 1).sum() == 64  # the rectangle polygon, every pixel of it
    assert (first[4:12, 2:10] == 1).all()
    assert (first == 255).sum() == 2 * SIZE  # the crowd region is the ignore index
    from pycocotools import mask as coco_mask

    triangle = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(TRIANGLE, SIZE, SIZE)))
    assert (first == 2).sum() == triangle.sum() > 50  # category id 3 is class 2
    second = mask_of(card, "train2017/2")  # square, blob as uncompressed RLE
    third = mask_of(card, "train2017/3")  # square, triangle, blob as compressed RLE
    for mask in (second, third):
        assert (mask == 3).sum() == 64 and (mask[20:28, 2:10] == 3).all()  # category id 7
    assert set(np.unique(second)) == {0, 1, 3}


def test_where_objects_overlap_the_smaller_is_on_top(tmp_path, cli):
    path = write_split(tmp_path / "coco", "train", 1)

    def overlap(document):  # a large square annotated after the small ones, covering them
        document["annotations"].append(
            {
                "id": 99,
                "image_id": 1,
                "category_id": 7,
                "segmentation": rectangle(0, 0, 24, 24),
                "iscrowd": 0,
            }
        )

    edit(path, overlap)
    card = tmp_path / "c.toml"
    assert cli("init", path, "--out", card).exit_code == 0
    mask = mask_of(card, "1")
    assert (mask == 1).sum() == 64  # the small square stays whole on the large blob
    assert (mask[:24, :24] == 3).sum() == 24 * 24 - 64 - (mask[:24, :24] == 2).sum()
    assert (mask == 2).sum() > 0  # the triangle, partly under the blob's corner, on top
    assert (mask[:2, 24:] == 255).all()  # the crowd region where no object covers it


def test_the_count_leaves_crowd_regions_out(tmp_path, cli):
    data = coco_layout(tmp_path / "coco", val=0)
    card = tmp_path / "coco.toml"
    result = cli("init", data, "--out", card)
    assert result.exit_code == 0, result.stderr
    manifest = pd.read_csv(tmp_path / "coco.manifest.csv", dtype={"id": str})
    expected = [sum(not crowd for _, _, crowd in objects("train", i)) for i in range(6)]
    assert manifest["count"].tolist() == expected == [2, 2, 3, 1, 3, 2]
    assert "split" not in manifest and "split" not in tomllib.loads(card.read_text())
    assert manifest["id"].tolist() == ["1", "2", "3", "4", "5", "6"]  # one file: the image id
    assert "crowd annotations (iscrowd 1) are not counted" in result.out


def test_the_json_file_alone_finds_its_image_folder_and_images_names_another(tmp_path, cli):
    data = tmp_path / "coco"
    path = write_split(data, "val", 3, folder="pictures")
    card = tmp_path / "val.toml"
    result = cli("init", path, "--out", card)
    assert result.exit_code == 2
    assert "val2017/, val20172017/" not in result.err  # a year is added to a name without one
    assert "image id 101: field 'file_name'" in result.err and "--images FOLDER" in result.err
    assert not card.exists() and not (tmp_path / "val.masks").exists()
    result = cli("init", path, "--out", card, "--images", data / "pictures")
    assert result.exit_code == 0, result.stderr
    manifest = pd.read_csv(tmp_path / "val.manifest.csv", dtype=str)
    assert manifest["image"].tolist()[0] == "coco/pictures/000000000101.png"
    (data / "pictures").rename(data / "val2017")
    result = cli("init", path, "--out", card, "--force")  # the standard place, found
    assert result.exit_code == 0, result.stderr
    assert "coco/val2017/" in pd.read_csv(tmp_path / "val.manifest.csv")["image"].iloc[0]


def test_images_is_refused_for_another_layout(tmp_path, cli):
    table = tmp_path / "t.csv"
    table.write_text("id,x\na,1\n")
    result = cli("init", table, "--out", tmp_path / "c.toml", "--images", tmp_path)
    assert result.exit_code == 2 and "--images names a COCO layout's image folder" in result.err


def test_table_options_are_refused_for_a_coco_layout(tmp_path, cli):
    data = coco_layout(tmp_path / "coco", train=1, val=0)
    result = cli("init", data, "--out", tmp_path / "c.toml", "--skip", "count")
    assert result.exit_code == 2
    assert f"--skip settles a table's columns; a COCO layout decides them ({data} is one)" in (
        result.err
    )


def test_the_masks_folder_is_replaced_only_with_force(tmp_path, cli):
    data = coco_layout(tmp_path / "coco", val=0)
    card = tmp_path / "coco.toml"
    (tmp_path / "coco.masks").mkdir()
    (tmp_path / "coco.masks" / "old.png").write_bytes(b"x")
    result = cli("init", data, "--out", card)
    assert result.exit_code == 2 and "coco.masks already exists; pass --force" in result.err
    assert cli("init", data, "--out", card, "--force").exit_code == 0
    assert not (tmp_path / "coco.masks" / "old.png").exists()
    assert len(list((tmp_path / "coco.masks").glob("*.png"))) == 6
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_card_elsewhere_names_the_common_folder_as_root(tmp_path, cli):
    data = coco_layout(tmp_path / "data" / "coco", val=0)
    (tmp_path / "cards").mkdir()
    card = tmp_path / "cards" / "coco.toml"
    result = cli("init", data, "--out", card)
    assert result.exit_code == 0, result.stderr
    assert tomllib.loads(card.read_text())["root"] == ".."  # holds the data and the masks
    manifest = pd.read_csv(tmp_path / "cards" / "coco.manifest.csv", dtype=str)
    assert manifest["image"].iloc[0] == "data/coco/train2017/000000000001.png"
    assert manifest["mask"].iloc[0] == "cards/coco.masks/1.png"


# --- the categories task ----------------------------------------------------------------------


def test_category_names_stay_text_and_choose_the_separator(tmp_path, cli):
    path = write_split(tmp_path / "coco", "train", 3)
    names = ['a|b "q"', "[red]x\ny", "c = 1\\"]

    def rename(document):
        for category, name in zip(document["categories"], names, strict=True):
            category["name"] = name

    edit(path, rename)
    card = tmp_path / "c.toml"
    result = cli("init", path, "--out", card)
    assert result.exit_code == 0, result.stderr
    task = tomllib.loads(card.read_text())["tasks"]["categories"]
    assert task["classes"] == names and task["separator"] == ";"  # "|" is in a name
    manifest = pd.read_csv(tmp_path / "c.manifest.csv", dtype=str)
    assert manifest["categories"].iloc[0].split(";") == names[:2]


# --- refused: one Error line naming the file, the record and the field; nothing written -------


def _drop_image(document):
    document["images"] = document["images"][1:]


def _set(kind: str, index: int, key: str, value):
    def change(document):
        document[kind][index][key] = value

    return change


BROKEN = {
    "missing image id": (
        _drop_image,
        "annotation id 1: field 'image_id': no image has this id (value: 1)",
    ),
    "odd polygon": (
        _set("annotations", 0, "segmentation", [[2, 4, 10, 4, 10, 12, 2]]),
        "annotation id 1 (image id 1): field 'segmentation': polygon 0 has an odd number of "
        "coordinates (7)",
    ),
    "two-point polygon": (  # pycocotools would read four numbers as a box
        _set("annotations", 0, "segmentation", [[2, 4, 10, 4]]),
        "field 'segmentation': polygon 0 has 2 points; a polygon needs at least 3",
    ),
    "a polygon far outside": (  # pycocotools would allocate for every pixel on the way
        _set("annotations", 0, "segmentation", [[2, 4, 10**30, 4, 10, 12]]),
        "field 'segmentation': polygon 0 lies far outside the 32x32 image",
    ),
    "text in a polygon": (
        _set("annotations", 0, "segmentation", [["2", 4, 10, 4, 10, 12]]),
        "field 'segmentation': polygon 0 is not a list of finite numbers",
    ),
    "neither polygons nor RLE": (
        _set("annotations", 0, "segmentation", {"points": [1, 2]}),
        "annotation id 1 (image id 1): field 'segmentation': neither polygons",
    ),
    "RLE of another size": (
        _set("annotations", 0, "segmentation", {"size": [16, 16], "counts": [256]}),
        "field 'segmentation.size': [16, 16] is not the image's [height, width] [32, 32]",
    ),
    "RLE runs that do not cover the image": (
        _set("annotations", 0, "segmentation", {"size": [SIZE, SIZE], "counts": [10, 20]}),
        "field 'segmentation.counts': the runs cover 30 pixels, not the image's 1,024",
    ),
    "a broken RLE string": (
        _set("annotations", 0, "segmentation", {"size": [SIZE, SIZE], "counts": "0\x7f~"}),
        "field 'segmentation.counts': not a COCO compressed RLE string",
    ),
    "unknown category": (
        _set("annotations", 0, "category_id", 5),
        "annotation id 1 (image id 1): field 'category_id': not in 'categories' (value: 5)",
    ),
    "iscrowd of 2": (
        _set("annotations", 0, "iscrowd", 2),
        "annotation id 1 (image id 1): field 'iscrowd': expected 0 or 1 (value: 2)",
    ),
    "missing file": (
        _set("images", 1, "file_name", "gone.png"),
        "image id 2: field 'file_name': file not found in",
    ),
    "escaping file name": (
        _set("images", 1, "file_name", "../../secret.png"),
        "image id 2: field 'file_name': the path leads outside the image folder",
    ),
    "wrong size": (  # image id 4 has polygons only (an RLE's size would be refused first)
        _set("images", 3, "width", 40),
        "image id 4: field 'width': the file '000000000004.png' is 32x32 (width x height), "
        "the entry says 40x32",
    ),
    "text id": (
        _set("images", 1, "id", "2"),
        "images[1]: field 'id': image ids are integers (value: '2')",
    ),
    "not COCO": (
        lambda document: document.pop("categories"),
        "not a COCO instances file: no 'categories' list",
    ),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_malformed_file_exits_2_naming_the_record_and_field_and_writes_nothing(
    tmp_path, cli, files_of, case
):
    data = coco_layout(tmp_path / "coco")
    path = data / "annotations" / "instances_train2017.json"
    change, message = BROKEN[case]
    edit(path, change)
    before = files_of(tmp_path)
    result = cli("init", data, "--out", tmp_path / "coco.toml")
    assert result.exit_code == 2, result.stderr
    assert result.err.startswith(f"Error: {path}: ")
    assert message in result.err
    assert result.err.count("Error:") == 1 and "Traceback" not in result.err
    assert files_of(tmp_path) == before  # no card, manifest, masks or hidden folder


def test_categories_must_agree_between_files_and_differ_in_name(tmp_path, cli):
    data = coco_layout(tmp_path / "coco")
    train = data / "annotations" / "instances_train2017.json"
    val = data / "annotations" / "instances_val2017.json"
    edit(val, _set("categories", 2, "name", "square"))  # id 7: "blob" in train
    result = cli("init", data, "--out", tmp_path / "coco.toml")
    assert result.exit_code == 2
    assert result.err == (
        f"Error: {val}: category id 7: field 'name': {train} names this category 'blob'; one id "
        "names one category in every file (value: 'square')"
    )
    edit(train, _set("categories", 2, "name", "square"))  # now both: two ids, one name
    result = cli("init", data, "--out", tmp_path / "coco.toml")
    assert result.exit_code == 2
    assert result.err == (
        f"Error: {train}: category id 7: field 'name': the name of category id 1 too; class "
        "names must differ (value: 'square')"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco"]  # nothing written


def test_a_json_that_is_not_coco_or_not_json_exits_2(tmp_path, cli):
    for text, message in (
        ("[1, 2]", "not a COCO instances file: a JSON object with 'images'"),
        ("{", "not valid JSON (line 1, column 2"),
    ):
        path = tmp_path / "x.json"
        path.write_text(text)
        result = cli("init", path, "--out", tmp_path / "c.toml")
        assert result.exit_code == 2 and f"Error: {path}: {message}" in result.err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_an_error_while_rasterising_leaves_nothing(tmp_path, cli, files_of, monkeypatch):
    import ilt_audit.dataset.layouts.coco as coco

    data = coco_layout(tmp_path / "coco", val=0)
    before = files_of(tmp_path)
    calls = []

    def failing(image, classes):
        calls.append(image.id)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return np.zeros((image.height, image.width), np.uint8)

    monkeypatch.setattr(coco, "_paint", failing)
    with pytest.raises(OSError):
        init_card(data, out=tmp_path / "coco.toml")
    assert files_of(tmp_path) == before and len(calls) == 3


def test_a_card_that_does_not_validate_puts_the_earlier_masks_back(
    tmp_path, cli, files_of, monkeypatch
):
    from ilt_audit.errors import CardError

    data = coco_layout(tmp_path / "coco", val=0)
    card = tmp_path / "coco.toml"
    assert cli("init", data, "--out", card).exit_code == 0
    (tmp_path / "coco.masks" / "earlier").write_text("the folder the run before wrote")
    before = files_of(tmp_path)

    def refuse(*args, **kwargs):
        assert not (tmp_path / "coco.masks" / "earlier").exists()  # it checks the new masks
        raise CardError("refused")

    monkeypatch.setattr(draft_module, "open_dataset", refuse)
    result = cli("init", data, "--out", card, "--force")
    assert result.exit_code == 2 and "the card written does not validate: refused" in result.err
    assert files_of(tmp_path) == before  # the earlier card, manifest and masks, nothing else


# --- the workflow -------------------------------------------------------------------------------


def test_a_coco_card_trains_ranks_and_fixes(tmp_path, cli, tiny):
    from ilt_audit import DecisionStore, open_dataset, rank, train
    from ilt_audit.review.decisions import Decision, check_decision
    from ilt_audit.review.fix import fix

    card = tmp_path / "coco.toml"
    assert cli("init", coco_layout(tmp_path / "coco"), "--out", card).exit_code == 0
    run = tmp_path / "run"
    train(card, run, config=tiny(epochs=2, batch_size=4, workers=0))
    suspects = rank(run, task="seg", top=3)
    assert len(suspects) == 3 and set(suspects["task"]) == {"seg"}
    manifest = open_dataset(card).manifest
    dropped = suspects["id"].iloc[0]
    DecisionStore(run).record([check_decision(manifest, Decision(dropped, "seg", "drop"))])
    result = fix(card, decisions=run, out=tmp_path / "fixed")
    assert result.dropped == 1
    fixed = open_dataset(result.card_path).manifest  # the masks still found from the copy
    assert len(fixed) == 8 and dropped not in fixed.ids
