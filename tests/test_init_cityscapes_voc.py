"""`ilt-audit init` on Cityscapes and Pascal VOC folders, and the card keys they need: a mask's
``label_map``, a map's ``offset`` and ``invalid`` pixels.

Each dataset is generated in ``tmp_path`` from the formats' published descriptions (Cityscapes'
README and cityscapesScripts' ``labels.py``, the VOC devkit): tiny 32x64 images, two cities.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image

import ilt_audit.dataset.layouts.sampling as sampling
from ilt_audit import rank
from ilt_audit.corruption.planting import corrupt
from ilt_audit.dataset import open_dataset
from ilt_audit.dataset.card import TaskSpec
from ilt_audit.dataset.files import read_label, read_mask, stored_mask
from ilt_audit.dataset.layouts.cityscapes import CLASSES, LABELS, TRAIN_IDS
from ilt_audit.errors import CardError
from ilt_audit.review.decisions import PREDICTION, Decision, DecisionStore, check_decision
from ilt_audit.review.fix import fix
from ilt_audit.run import evidence
from ilt_audit.training.loop import train
from ilt_audit.training.losses import INSTANCE_LOSS

H, W = 32, 64
CITIES = ("aachen", "bremen")
ID = {name: label_id for name, label_id, _ in LABELS}
# Colours of cityscapesScripts' labels.py, so that the network has something to learn.
COLOUR = {0: (0, 0, 0), 1: (0, 0, 0), 7: (128, 64, 128), 11: (70, 70, 70), 21: (107, 142, 35)}
COLOUR |= {23: (70, 130, 180), 26: (0, 0, 142), 24: (220, 20, 60)}


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def _label_ids(i: int) -> np.ndarray:
    """A street: sky, buildings or trees, road with a car or a person, the ego vehicle's bonnet
    at the bottom and one unlabelled pixel."""
    ids = np.full((H, W), ID["road"], np.uint8)
    ids[:10] = ID["sky"]
    ids[10:20, : W // 2] = ID["building"]
    ids[10:20, W // 2 :] = ID["vegetation"]
    left = 4 + (7 * i) % 40
    ids[22:29, left : left + 14] = ID["car"] if i % 2 == 0 else ID["person"]
    ids[-1] = ID["ego vehicle"]
    ids[0, 0] = ID["unlabeled"]
    return ids


def _image_of(ids: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    palette = np.zeros((256, 3), np.uint8)
    for label_id, colour in COLOUR.items():
        palette[label_id] = colour
    noise = rng.integers(0, 20, (H, W, 3), dtype=np.uint8)
    return np.clip(palette[ids].astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _disparity(i: int) -> np.ndarray:
    """Stored disparity: p = 256 d + 1 on the ground and buildings, p = 0 (invalid) in the sky."""
    d = np.repeat(np.linspace(2.0, 40.0, H)[:, None], W, axis=1) + 0.5 * i  # (H, W) pixels
    stored = np.round(d * 256 + 1).astype(np.uint16)
    stored[:10] = 0  # the sky: no stereo match
    return stored


def cityscapes(root: Path, n: int = 3, *, disparity: bool = True, test: bool = True) -> Path:
    """A Cityscapes root: ``n`` images per city and split, two cities, ``test`` unlabelled."""
    i = 0
    for split in ("train", "val", "test")[: 2 + test]:
        for city in CITIES:
            for frame in range(n):
                record = f"{city}_{frame:06d}_{19 + i:06d}"
                ids = _label_ids(i)
                _png(
                    root / "leftImg8bit" / split / city / f"{record}_leftImg8bit.png",
                    _image_of(ids, i),
                )
                labels = root / "gtFine" / split / city
                _png(labels / f"{record}_gtFine_labelIds.png", ids if split != "test" else ids * 0)
                _png(labels / f"{record}_gtFine_color.png", _image_of(ids, 0))  # not read
                if disparity:
                    _png(
                        root / "disparity" / split / city / f"{record}_disparity.png", _disparity(i)
                    )
                i += 1
    (root / "README").write_text("Cityscapes\n")
    return root


def _voc_palette() -> list[int]:
    """The devkit's colour map (VOClabelcolormap.m): bits of the index spread over R, G, B."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def _voc_mask(i: int) -> np.ndarray:
    """Background, one object (person or dog) and the 255 border around it."""
    mask = np.zeros((H, W), np.uint8)
    top, left = 6 + i % 4, 10 + (5 * i) % 30
    mask[top - 1 : top + 17, left - 1 : left + 21] = 255
    mask[top : top + 16, left : left + 20] = 15 if i % 2 == 0 else 12  # person, dog
    return mask


def _palette_png(path: Path, mask: np.ndarray) -> None:
    """A mask as VOC stores it: a palette PNG whose indices are the classes."""
    png = Image.fromarray(mask, "P")
    png.putpalette(_voc_palette())  # a full palette: Pillow keeps every index as it is
    path.parent.mkdir(parents=True, exist_ok=True)
    png.save(path)


def voc(root: Path, *, train_n: int = 5, val_n: int = 4, unlisted: int = 2) -> Path:
    """A ``VOC2012``-style folder: listed images with palette masks, and some without."""
    palette = _voc_palette()
    colours = np.array(palette, np.uint8).reshape(256, 3)
    names = {"train": [], "val": []}
    for i in range(train_n + val_n + unlisted):
        name = f"2007_{i:06d}"
        mask = _voc_mask(i)
        pixels = np.clip(
            colours[mask].astype(np.int16) + np.random.default_rng(i).integers(0, 20, (H, W, 3)),
            0,
            255,
        )
        path = root / "JPEGImages" / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(path, quality=95)
        if i >= train_n + val_n:
            continue  # an image without a mask, in no list
        _palette_png(root / "SegmentationClass" / f"{name}.png", mask)
        names["train" if i < train_n else "val"].append(name)
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    for split, listed in names.items():
        (lists / f"{split}.txt").write_text("".join(f"{n}\n" for n in listed))
    (lists / "trainval.txt").write_text("".join(f"{n}\n" for n in names["train"] + names["val"]))
    (root / "Annotations").mkdir()
    return root


def card_of(path: Path) -> dict:
    return tomllib.loads(path.read_text(encoding="utf-8"))


def review_and_fix(card: Path, run: Path, out: Path, task: str) -> Path:
    """Rank the run's suspects, relabel the first with the model's prediction, drop the second
    and keep the third (recorded without the app, as docs/python.md shows), then fix."""
    suspects = rank(run, task=task)
    assert set(suspects["task"]) == {task} and len(suspects) >= 3
    first, second, third = suspects["id"].iloc[:3]
    manifest = open_dataset(card).manifest
    decisions = [
        Decision(first, task, "relabel", PREDICTION, "ana"),
        Decision(second, task, "drop", reviewer="ana"),
        Decision(third, task, "keep", reviewer="ana"),
    ]
    DecisionStore(run).record([check_decision(manifest, d) for d in decisions])
    result = fix(card, decisions=run, out=out)
    assert result.counts == {"keep": 1, "relabel": 1, "drop": 1} and result.dropped == 1
    fixed = open_dataset(result.card_path).manifest
    assert second not in fixed.ids and first in fixed.ids
    row = fixed.ids.index(first)
    return fixed.file_path(fixed.frame.at[row, fixed.card.task(task).column])


# --- Cityscapes -------------------------------------------------------------------------------


def test_cityscapes_gets_the_train_ids_the_disparity_and_the_split_from_its_folders(tmp_path, cli):
    data = cityscapes(tmp_path / "cityscapes")
    card = tmp_path / "cityscapes.toml"
    result = cli("init", data, "--out", card)
    assert result.exit_code == 0, result.stderr
    assert "Cityscapes" in result.out and "leftImg8bit/test/" in result.out  # left out, said so
    tasks = card_of(card)["tasks"]
    assert tasks["seg"] == {
        "type": "segmentation",
        "column": "mask",
        "classes": list(CLASSES),
        "ignore_index": 255,
        "label_map": list(TRAIN_IDS),
    }
    assert tasks["disparity"] == {
        "type": "dense-regression",
        "column": "disparity",
        "scale": 256.0,
        "offset": 1.0,
        "invalid": 0,
    }
    source = open_dataset(card)
    frame = source.manifest.frame
    assert frame["split"].value_counts().to_dict() == {"train": 6, "val": 6}
    assert not frame["image"].str.contains("/test/").any()
    assert frame["id"].iloc[0] == "aachen_000000_000019"

    seg, first = source.card.task("seg"), source.manifest.file_path(frame["mask"].iloc[0])
    assert first == (data / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png")
    stored, classes = read_mask(first), read_label(seg, first)
    assert (classes[stored == ID["road"]] == 0).all() and CLASSES[0] == "road"
    assert (classes[stored == ID["car"]] == 13).all() and CLASSES[13] == "car"
    assert classes[0, 0] == 255 and (classes[-1] == 255).all()  # unlabeled, ego vehicle
    assert (classes[stored == ID["sky"]] == 10).all()

    disparity = read_label(
        source.card.task("disparity"), source.manifest.file_path(frame["disparity"].iloc[0])
    )
    p = _disparity(0).astype(np.float64)
    assert np.isnan(disparity[:10]).all()  # p = 0: invalid
    assert np.allclose(disparity[10:], (p[10:] - 1) / 256)


def test_cityscapes_without_disparity_is_segmentation_only(tmp_path, cli):
    data = cityscapes(tmp_path / "cs", n=2, disparity=False, test=False)
    result = cli("init", data, "--out", tmp_path / "cs.toml")
    assert result.exit_code == 0, result.stderr
    assert set(card_of(tmp_path / "cs.toml")["tasks"]) == {"seg"}


def test_cityscapes_goes_through_init_train_rank_and_fix(tmp_path, cli):
    data = cityscapes(tmp_path / "cityscapes", test=False)
    card = tmp_path / "cards" / "cityscapes.toml"  # beside other cards: the data is its root
    card.parent.mkdir()
    assert cli("init", data, "--out", card).exit_code == 0
    assert card_of(card)["root"] == "../cityscapes"
    run = tmp_path / "run"
    result = train(card, run, config=tiny_config(epochs=2, batch_size=4, workers=0))
    assert result.epochs == 2
    last = result.metrics[-1]  # the sky has no disparity: the loss and the error leave it out
    assert np.isfinite(last["loss"]["disparity"]) and np.isfinite(last["val"]["disparity"]["mae"])

    new_mask = review_and_fix(card, run, tmp_path / "fixed", "seg")
    stored = np.unique(read_mask(new_mask))  # written in label ids, read back through the map
    first_ids = {TRAIN_IDS.index(t) for t in range(len(CLASSES))}
    assert set(stored.tolist()) <= first_ids
    seg = open_dataset(tmp_path / "fixed" / "cityscapes.toml").card.task("seg")
    assert set(np.unique(read_label(seg, new_mask)).tolist()) <= set(range(len(CLASSES)))


def test_corrupted_cityscapes_masks_are_written_in_label_ids(tmp_path, cli):
    data = cityscapes(tmp_path / "cityscapes", n=2, test=False)
    card = tmp_path / "cityscapes" / "card.toml"
    assert cli("init", data, "--out", card).exit_code == 0
    result = corrupt(card, tasks=["seg", "disparity"], fraction=0.5, seed=0, out=tmp_path / "noisy")
    noisy = open_dataset(tmp_path / "noisy" / "card.toml").manifest
    seg = noisy.card.task("seg")
    original = open_dataset(card).manifest
    changed = 0
    for row, value in enumerate(noisy.frame["mask"]):
        before = read_label(seg, original.file_path(original.frame.at[row, "mask"]))
        after = read_label(seg, noisy.file_path(value))  # label ids, through the label_map
        changed += int((before != after).any())
        assert set(np.unique(read_mask(noisy.file_path(value))).tolist()) <= set(range(34))
    assert changed == result.counts["seg"] > 0
    disparity = noisy.card.task("disparity")
    for value in noisy.frame["disparity"]:
        assert np.isnan(read_label(disparity, noisy.file_path(value))[:10]).all()  # still no target


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (
            lambda root: _png(
                root / "gtFine/val/bremen/bremen_000001_000026_gtFine_labelIds.png",
                np.full((H, W), 40, np.uint8),
            ),
            "gtFine/val/bremen/bremen_000001_000026_gtFine_labelIds.png: record "
            "'bremen_000001_000026': field 'mask': label id 40 is not in cityscapesScripts' table "
            "of labels (ids 0..33)",
        ),
        (
            lambda root: (
                root / "gtFine/train/aachen/aachen_000001_000020_gtFine_labelIds.png"
            ).unlink(),
            "gtFine/train/aachen/aachen_000001_000020_gtFine_labelIds.png: record "
            "'aachen_000001_000020': field 'mask': not found",
        ),
        (
            lambda root: _png(
                root / "disparity/train/bremen/bremen_000000_000021_disparity.png",
                np.zeros((H, W // 2), np.uint16),
            ),
            "disparity/train/bremen/bremen_000000_000021_disparity.png: record "
            "'bremen_000000_000021': field 'disparity': 32x32, but its image",
        ),
        (
            lambda root: _png(
                root / "gtFine/train/aachen/aachen_000009_000099_gtFine_labelIds.png",
                np.zeros((H, W), np.uint8),
            ),
            "aachen_000009_000099_gtFine_labelIds.png: record 'aachen_000009_000099': field "
            "'mask': a mask without an image",
        ),
    ],
)
def test_a_malformed_cityscapes_file_exits_2_naming_file_record_and_field(
    tmp_path, cli, files_of, damage, fragment
):
    data = cityscapes(tmp_path / "cityscapes", n=2)
    damage(data)
    (tmp_path / "cards").mkdir()
    before = files_of(tmp_path)
    result = cli("init", data, "--out", tmp_path / "cards" / "cityscapes.toml")
    assert result.exit_code == 2
    assert result.err.startswith("Error: ") and fragment in result.err, result.err
    assert len(result.stderr.strip().splitlines()) == 1
    assert files_of(tmp_path) == before  # nothing written


def test_a_label_id_outside_the_table_past_inits_sample_stops_training(tmp_path, cli, monkeypatch):
    data = cityscapes(tmp_path / "cityscapes", n=2, test=False)
    monkeypatch.setattr(sampling, "SAMPLE", 2)  # init reads 2 of the 8 masks
    bad = "gtFine/train/aachen/aachen_000001_000020_gtFine_labelIds.png"
    _png(data / bad, np.full((H, W), 34, np.uint8))
    card = tmp_path / "cityscapes" / "card.toml"
    assert cli("init", data, "--out", card).exit_code == 0
    with pytest.raises(
        CardError,
        match="row id 'aachen_000001_000020': column 'mask': mask value 34 is not in the card's label_map",
    ) as found:
        train(card, tmp_path / "run", config=tiny_config(epochs=1, workers=0))
    assert bad in str(found.value)


# --- Pascal VOC -------------------------------------------------------------------------------


def test_voc_gets_its_classes_and_the_split_from_its_lists(tmp_path, cli):
    data = voc(tmp_path / "VOC2012")
    card = tmp_path / "VOC2012" / "voc.toml"
    result = cli("init", data, "--out", card)
    assert result.exit_code == 0, result.stderr
    assert "2 images not in the segmentation lists" in result.out
    seg = card_of(card)["tasks"]["seg"]
    assert seg["classes"][:3] == ["background", "aeroplane", "bicycle"]
    assert len(seg["classes"]) == 21 and seg["classes"][15] == "person"
    assert seg["ignore_index"] == 255 and "label_map" not in seg
    frame = open_dataset(card).manifest.frame
    assert frame["split"].value_counts().to_dict() == {"train": 5, "val": 4}
    assert frame["id"].tolist()[:2] == ["2007_000000", "2007_000001"]
    assert frame["image"].iloc[0] == "JPEGImages/2007_000000.jpg"
    mask = read_label(open_dataset(card).card.task("seg"), card.parent / frame["mask"].iloc[0])
    assert set(np.unique(mask).tolist()) == {0, 15, 255}  # palette indices, as they are


def test_voc_goes_through_init_train_rank_and_fix(tmp_path, cli):
    data = voc(tmp_path / "VOC2012", train_n=6)
    card = tmp_path / "voc.toml"
    assert cli("init", data, "--out", card).exit_code == 0
    run = tmp_path / "run"
    assert train(card, run, config=tiny_config(epochs=2, batch_size=4, workers=0)).epochs == 2
    new_mask = review_and_fix(card, run, tmp_path / "fixed", "seg")
    assert set(np.unique(read_mask(new_mask)).tolist()) <= set(range(21))


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (
            lambda root: _palette_png(
                root / "SegmentationClass" / "2007_000006.png", np.zeros((H, W + 2), np.uint8)
            ),
            "SegmentationClass/2007_000006.png: record '2007_000006': field 'mask': 32x66, but "
            "its image 2007_000006.jpg is 32x64",
        ),
        (
            lambda root: (root / "SegmentationClass" / "2007_000002.png").unlink(),
            "SegmentationClass/2007_000002.png: record '2007_000002': field 'mask': not found "
            "(a listed image without its mask)",
        ),
        (
            lambda root: (root / "ImageSets/Segmentation/val.txt").write_text(
                "2007_000005\n../x\n"
            ),
            "ImageSets/Segmentation/val.txt: line 2: '../x' is not an image name",
        ),
        (
            lambda root: _palette_png(
                root / "SegmentationClass" / "2007_000001.png", np.full((H, W), 30, np.uint8)
            ),
            "record '2007_000001': field 'mask': value 30 is not a VOC class (0..20) nor the "
            "border 255",
        ),
        (
            lambda root: (root / "ImageSets/Segmentation/val.txt").write_text("2007_000001\n"),
            "val.txt: record '2007_000001' is listed again (first in train.txt)",
        ),
    ],
)
def test_a_malformed_voc_file_exits_2_naming_file_record_and_field(
    tmp_path, cli, files_of, damage, fragment
):
    data = voc(tmp_path / "VOC2012")
    damage(data)
    before = files_of(tmp_path)
    result = cli("init", data, "--out", tmp_path / "voc.toml")
    assert result.exit_code == 2
    assert result.err.startswith("Error: ") and fragment in result.err, result.err
    assert files_of(tmp_path) == before


def test_odd_names_in_a_voc_list_stay_text(tmp_path, cli):
    data = voc(tmp_path / "VOC2012")
    (data / "ImageSets/Segmentation/val.txt").write_text("[red]x\n")
    result = cli("init", data, "--out", tmp_path / "voc.toml")
    assert result.exit_code == 2
    assert "JPEGImages/[red]x.jpg: record '[red]x': field 'image': not found" in result.err


# --- the card keys: label_map, offset, invalid -------------------------------------------------


def _dense(invalid: int | None) -> TaskSpec:
    return TaskSpec("d", "dense-regression", ("d",), invalid=invalid)


def test_invalid_pixels_contribute_nothing_to_the_dense_loss():
    target = torch.randn(2, 8, 8)
    target[0, :4] = float("nan")  # half of the first map has no target
    target[1] = float("nan")  # the second none at all
    output = torch.randn(2, 1, 8, 8, requires_grad=True)
    loss = INSTANCE_LOSS["dense-regression"](output, target, _dense(0))
    expected = (output[0, 0, 4:] - target[0, 4:]).pow(2).mean()
    assert torch.allclose(loss[0], expected) and loss[1] == 0
    loss.sum().backward()
    assert torch.isfinite(output.grad).all()
    assert (output.grad[0, 0, :4] == 0).all() and (output.grad[1] == 0).all()

    moved = output.detach().clone()
    moved[0, 0, :4] += 100.0  # whatever the network says where there is no target
    assert torch.equal(INSTANCE_LOSS["dense-regression"](moved, target, _dense(0)), loss.detach())


def test_without_invalid_the_dense_loss_and_signals_are_the_plain_means():
    target, output = torch.randn(3, 8, 8), torch.randn(3, 1, 8, 8)
    loss = INSTANCE_LOSS["dense-regression"](output, target, _dense(None))
    assert torch.equal(loss, (output[:, 0] - target).pow(2).flatten(1).mean(dim=1))
    scale = evidence.Scale(torch.tensor([0.0]), torch.tensor([1.0]))
    plain = evidence.compute((_dense(None),), {"d": output}, {"d": target}, {"d": scale})
    masked = evidence.compute((_dense(0),), {"d": output}, {"d": target}, {"d": scale})
    assert torch.equal(plain, masked)  # no NaN target: the same signals


def test_dense_signals_read_only_the_pixels_with_a_target():
    target, output = torch.randn(2, 8, 8), torch.randn(2, 1, 8, 8)
    scale = evidence.Scale(torch.tensor([0.0]), torch.tensor([1.0]))
    holed = target.clone()
    holed[0, :4] = float("nan")
    holed[1] = float("nan")
    found = evidence.compute((_dense(0),), {"d": output}, {"d": holed}, {"d": scale})  # (2, S)
    alone = evidence.compute(
        (_dense(None),), {"d": output[:1, :, 4:]}, {"d": target[:1, 4:]}, {"d": scale}
    )
    assert torch.allclose(found[0], alone[0])
    assert torch.isnan(found[1]).all()  # no pixel with a target: no evidence


def test_stored_mask_inverts_the_label_map_with_each_classs_first_label_id():
    seg = TaskSpec("s", "segmentation", ("s",), CLASSES, 255, label_map=TRAIN_IDS)
    classes = np.array([[0, 13, 255], [18, 10, 2]])
    stored = stored_mask(seg, classes)
    assert stored.tolist() == [[7, 26, 0], [33, 23, 11]]
    assert np.array_equal(np.asarray(TRAIN_IDS)[stored], classes)


@pytest.mark.parametrize(
    ("task", "keys", "message"),
    [
        (
            "segmentation",
            "label_map = [0, 1, 5]",
            "label_map maps stored value 2 to 5, which is not a class (0..1)",
        ),
        ("segmentation", "label_map = [0, 0]", "label_map gives no stored value to 1"),
        (
            "segmentation",
            "ignore_index = 255\nlabel_map = [0, 1]",
            "label_map gives no stored value to 255",
        ),
        ("segmentation", "label_map = []", "label_map must be a list of integers"),
        ("segmentation", "offset = 1", "'offset' applies only to dense-regression tasks"),
        (
            "dense-regression",
            "label_map = [0, 1]",
            "'label_map' applies only to segmentation tasks",
        ),
        ("dense-regression", "invalid = 0.5", "invalid must be the integer"),
        ("dense-regression", 'offset = "1"', "offset must be a number"),
    ],
)
def test_a_bad_label_map_offset_or_invalid_is_refused(tmp_path, task, keys, message):
    (tmp_path / "m.csv").write_text("id,image,label\n")
    classes = "classes = 2\n" if task == "segmentation" else ""
    card = tmp_path / "card.toml"
    card.write_text(
        'table = "m.csv"\n[input]\ntype = "image"\ncolumn = "image"\n'
        f'[tasks.t]\ntype = "{task}"\ncolumn = "label"\n{classes}{keys}\n'
    )
    with pytest.raises(CardError, match=re.escape(message)):
        open_dataset(card)
