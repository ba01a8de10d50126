"""Cityscapes (Cordts et al., CVPR 2016), given its root folder: the paper's own data.

``leftImg8bit/SPLIT/CITY/*_leftImg8bit.png`` are the images, ``gtFine/SPLIT/CITY/
*_gtFine_labelIds.png`` their fine labels: a segmentation task ``seg`` whose classes are the 19
train ids of cityscapesScripts' ``labels.py``, every other label id the ignore index 255. With a
``disparity/SPLIT/CITY/*_disparity.png`` folder, a dense-regression task ``disparity`` too,
decoded as the dataset's README says: ``(p - 1) / 256`` for a stored value ``p > 0``, and
``p = 0`` an invalid measurement, left out of the loss, the evidence and the metrics. ``train``
is trained on and ``val`` held out (the card's ``split``); ``test`` is left out, its labels are
not public.

How the label ids become train ids: the card says so, and the files stay as they are. The
segmentation task gets a ``label_map`` (the train id of each stored label id, :data:`TRAIN_IDS`)
and the disparity task ``scale = 256``, ``offset = 1`` and ``invalid = 0``, all applied where a
file is decoded (:func:`ilt_audit.dataset.files.read_label`). The other way, writing train-id
masks once beside the card as cityscapesScripts' ``createTrainIdLabelImgs`` does, was not taken:
it would copy 3,475 masks before the first epoch and leave two sets of masks that can drift
apart, and the card would then need ``allow_outside_paths`` whenever it is not above the data
(the images in one folder, the masks in another). With the map in the card, ``corrupt`` and
``fix`` write the masks they change in label ids as well (the first label id of each train id,
as ``labels.py`` inverts them), so a derived card reads its old and new masks alike.

Files are listed once (every image must have its mask, and its disparity map when the folder is
there); masks and maps are read from a bounded sample
(:func:`~ilt_audit.dataset.layouts.sampling.sample_labels`: mode, size, label ids in the table),
and the training pass reads every file again (a label id outside the table, a map of another
size: refused with its row id and column).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ilt_audit.dataset.layouts.draft import Draft
from ilt_audit.dataset.layouts.folders import files_in, folders_in, missing_file
from ilt_audit.dataset.layouts.sampling import Record, first_size, sample_labels

# cityscapesScripts, cityscapesscripts/helpers/labels.py (https://github.com/mcordts/
# cityscapesScripts): (name, id, trainId) of the 34 labels with an id. The 35th, 'license plate'
# (id -1, trainId -1), is never stored in a labelIds image.
LABELS: tuple[tuple[str, int, int], ...] = (
    ("unlabeled", 0, 255),
    ("ego vehicle", 1, 255),
    ("rectification border", 2, 255),
    ("out of roi", 3, 255),
    ("static", 4, 255),
    ("dynamic", 5, 255),
    ("ground", 6, 255),
    ("road", 7, 0),
    ("sidewalk", 8, 1),
    ("parking", 9, 255),
    ("rail track", 10, 255),
    ("building", 11, 2),
    ("wall", 12, 3),
    ("fence", 13, 4),
    ("guard rail", 14, 255),
    ("bridge", 15, 255),
    ("tunnel", 16, 255),
    ("pole", 17, 5),
    ("polegroup", 18, 255),
    ("traffic light", 19, 6),
    ("traffic sign", 20, 7),
    ("vegetation", 21, 8),
    ("terrain", 22, 9),
    ("sky", 23, 10),
    ("person", 24, 11),
    ("rider", 25, 12),
    ("car", 26, 13),
    ("truck", 27, 14),
    ("bus", 28, 15),
    ("caravan", 29, 255),
    ("trailer", 30, 255),
    ("train", 31, 16),
    ("motorcycle", 32, 17),
    ("bicycle", 33, 18),
)
IGNORE = 255  # labels.py's trainId of the labels left out of training and evaluation
TRAIN_IDS = tuple(train_id for _, _, train_id in LABELS)  # the card's label_map: by label id
CLASSES = tuple(  # the 19 classes, in train-id order
    name for name, _, train_id in sorted(LABELS, key=lambda label: label[2]) if train_id != IGNORE
)

SPLITS = ("train", "val")  # read; "test" (labels withheld) and "train_extra" (coarse) are not
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
DISPARITY_SUFFIX = "_disparity.png"
# Cityscapes' README: "d = (float(p) - 1.) / 256. for p > 0, while p = 0 is an invalid measurement"
DISPARITY = {"scale": 256.0, "offset": 1.0, "invalid": 0}


def is_cityscapes(dirs: list[str]) -> bool:
    return "leftImg8bit" in dirs and "gtFine" in dirs


def read_cityscapes(
    draft: Draft, path: Path, folder: Path, dirs: list[str], files: list[str]
) -> None:
    """Fill ``draft`` from a Cityscapes root folder (``folder``, resolved; ``path`` as given)."""
    found = folders_in(folder / "leftImg8bit")
    splits = _splits(draft, path, folder, found)
    disparity = "disparity" in dirs
    rows: list[dict[str, str]] = []
    seen: dict[str, str] = {}
    for split in splits:
        cities = folders_in(folder / "leftImg8bit" / split)
        for city in cities:
            here = f"{split}/{city}"
            for name in files_in(folder / "leftImg8bit" / here):
                if not name.endswith(IMAGE_SUFFIX):
                    raise draft.fail(
                        f"{path / 'leftImg8bit' / here / name}: not a Cityscapes image: "
                        f"leftImg8bit/{here}/ holds only CITY_SEQ_FRAME{IMAGE_SUFFIX} files"
                    )
                record = name[: -len(IMAGE_SUFFIX)]
                if record in seen:
                    raise draft.fail(
                        f"{path / 'leftImg8bit' / here / name}: a second image of record "
                        f"{record!r} (beside leftImg8bit/{seen[record]}/)"
                    )
                seen[record] = here
                row = {
                    "id": record,
                    "image": f"leftImg8bit/{here}/{name}",
                    "mask": f"gtFine/{here}/{record}{LABEL_SUFFIX}",
                    "split": split,
                }
                if disparity:
                    row["disparity"] = f"disparity/{here}/{record}{DISPARITY_SUFFIX}"
                missing = missing_file(folder, row, ("mask", "disparity")[: 1 + disparity])
                if missing is not None:
                    where = row[missing].split("/")[0]
                    raise draft.fail_record(
                        path / row[missing],
                        record,
                        missing,
                        f"not found: every {split} image has its file in {where}/",
                    )
                rows.append(row)
        _unpaired_labels(draft, path, folder, split, seen)
    if not rows:
        raise draft.fail(f"{path / 'leftImg8bit'}: no images in {' or '.join(splits)}/")
    frame = pd.DataFrame(rows)
    counts = frame["split"].value_counts()
    draft.note(
        str(path),
        "Cityscapes",
        "leftImg8bit/ and gtFine/: "
        + ", ".join(f"{counts.get(s, 0):,} {s}" for s in splits)
        + f" images in {frame['image'].str.split('/').str[2].nunique()} cities",
    )
    if "test" in found:
        draft.note(
            "leftImg8bit/test/",
            "left out",
            "the test split's labels are not public (the benchmark's server holds them)",
        )
    others = [s for s in found if s not in (*SPLITS, "test")]
    if others:
        draft.note(
            ", ".join(f"leftImg8bit/{s}/" for s in others),
            "left out",
            "not a split with fine labels (train, val)",
        )
    draft.note("id", "id", f"each image's name without {IMAGE_SUFFIX} (city_sequence_frame)")
    draft.note("image", "input: image", first_size(folder / rows[0]["image"]))
    draft.note(
        "split",
        "split",
        "the split folders: " + ", ".join(f"{counts.get(s, 0):,} {s}" for s in splits) + " images",
    )
    tasks = {"seg": _seg_task(draft, folder, frame)}
    if disparity:
        tasks["disparity"] = _disparity_task(draft, folder, frame)
    else:
        draft.note("disparity/", "not found", "no disparity maps: segmentation only")
    others = [d for d in dirs if d not in ("leftImg8bit", "gtFine", "disparity")] + files
    if others:
        draft.note(
            ", ".join(others[:5]) + (", …" if len(others) > 5 else ""),
            "left out",
            "not leftImg8bit/, gtFine/ or disparity/",
        )
    draft.card.update(
        {
            "id": "id",
            "split": "split",
            "input": {"type": "image", "column": "image"},
            "tasks": tasks,
        }
    )
    draft.manifest = frame


def _splits(draft: Draft, path: Path, folder: Path, found: list[str]) -> list[str]:
    """The labelled splits there are (train, val), each with its gtFine folder."""
    splits = [s for s in SPLITS if s in found]
    if not splits:
        raise draft.fail(
            f"{path / 'leftImg8bit'}: no train/ or val/ folder; Cityscapes' labelled splits are "
            "leftImg8bit/train/ and leftImg8bit/val/"
        )
    for split in splits:
        if not (folder / "gtFine" / split).is_dir():
            raise draft.fail(
                f"{path / 'gtFine' / split}: not found: the labels of leftImg8bit/{split}/"
            )
    return splits


def _unpaired_labels(
    draft: Draft, path: Path, folder: Path, split: str, seen: dict[str, str]
) -> None:
    """Refuse a labelIds mask without its image (the first one, in order)."""
    for city in folders_in(folder / "gtFine" / split):
        for name in files_in(folder / "gtFine" / split / city):
            record = name.removesuffix(LABEL_SUFFIX)
            if name.endswith(LABEL_SUFFIX) and seen.get(record) != f"{split}/{city}":
                raise draft.fail_record(
                    path / "gtFine" / split / city / name,
                    record,
                    "mask",
                    f"a mask without an image: no leftImg8bit/{split}/{city}/{record}"
                    f"{IMAGE_SUFFIX}",
                )


def _seg_task(draft: Draft, folder: Path, frame: pd.DataFrame) -> dict[str, object]:
    records = _records(folder, frame, "mask")
    top = len(LABELS) - 1
    _, read = sample_labels(
        draft,
        "mask",
        records,
        modes=("L", "P"),
        kind="an 8-bit single-channel labelIds image",
        allowed=range(len(LABELS)),
        outside=f"label id {{value}} is not in cityscapesScripts' table of labels (ids 0..{top})",
    )
    draft.note(
        "mask",
        "task seg: segmentation",
        f"gtFine labelIds ({read}): the label ids become the {len(CLASSES)} train ids of "
        f"cityscapesScripts' labels.py ({CLASSES[0]} 0 … {CLASSES[-1]} {len(CLASSES) - 1}), "
        f"every other id {IGNORE} (ignore_index); the card's label_map says so and each mask "
        "is mapped where it is read",
    )
    return {
        "type": "segmentation",
        "column": "mask",
        "classes": list(CLASSES),
        "ignore_index": IGNORE,
        "label_map": list(TRAIN_IDS),
    }


def _disparity_task(draft: Draft, folder: Path, frame: pd.DataFrame) -> dict[str, object]:
    records = _records(folder, frame, "disparity")
    _, read = sample_labels(
        draft,
        "disparity",
        records,
        modes=("I", "I;16", "I;16B"),
        kind="a 16-bit single-channel disparity PNG",
    )
    draft.note(
        "disparity",
        "task disparity: dense-regression",
        f"16-bit disparity PNGs ({read}): (p - 1) / 256 for a stored p > 0 (scale = 256, "
        "offset = 1); p = 0 is an invalid measurement (invalid = 0), left out of the loss, the "
        "evidence and the metrics",
    )
    return {"type": "dense-regression", "column": "disparity", **DISPARITY}


def _records(folder: Path, frame: pd.DataFrame, field: str) -> list[Record]:
    return [
        Record(record, folder / image, folder / label)
        for record, image, label in zip(frame["id"], frame["image"], frame[field], strict=True)
    ]
