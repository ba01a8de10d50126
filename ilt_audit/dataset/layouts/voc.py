"""Pascal VOC's segmentation data (Everingham et al., IJCV 2010), given a ``VOC2012``-style
folder: one segmentation task ``seg`` of VOC's 21 classes.

``ImageSets/Segmentation/train.txt`` and ``val.txt`` list the images that have masks, one name
a line; only those are read (``JPEGImages/`` holds many more), and the list an image is in is
its ``split`` (``train`` trained on, ``val`` held out). ``SegmentationClass/NAME.png`` is the
mask of ``JPEGImages/NAME.jpg``: a palette PNG whose palette indices are the classes (0
background, 1 aeroplane … 20 tvmonitor, as the devkit's ``VOCinit.m`` lists them) and 255 the
border around objects and the pixels left unlabelled, which the card makes its
``ignore_index``. The palette's colours are only for viewing; the indices are read as they are,
so the card needs no ``label_map``.

The lists are text from the data: a line must be a bare file name (no folder, not hidden), and a
name listed twice is refused. Every listed image must have its mask (checked for all of them);
masks are read from a bounded sample (:func:`~ilt_audit.dataset.layouts.sampling.sample_labels`:
a palette or grey PNG, the size of its image, values 0..20 or 255), and the training pass reads
every mask again (a value outside the classes, a mask of another size: refused with its row id
and column).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ilt_audit.dataset.layouts.draft import Draft
from ilt_audit.dataset.layouts.folders import files_in, missing_file
from ilt_audit.dataset.layouts.sampling import Record, first_size, sample_labels

# The devkit's VOCinit.m (VOCdevkit 2012): the 20 classes, after the background (index 0).
CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
BORDER = 255  # the devkit's "void": object borders and unlabelled pixels
SPLITS = ("train", "val")  # the lists read; trainval.txt is their union, test.txt has no masks
LISTS = "ImageSets/Segmentation"
_NAME = re.compile(r"[^/\\\x00-\x1f.][^/\\\x00-\x1f]*")  # a bare, visible file name


def is_voc(folder: Path, lowered: dict[str, str]) -> bool:
    return (
        "jpegimages" in lowered
        and "segmentationclass" in lowered
        and "imagesets" in lowered
        and (folder / lowered["imagesets"] / "Segmentation").is_dir()
    )


def read_voc(draft: Draft, path: Path, folder: Path, dirs: list[str], files: list[str]) -> None:
    """Fill ``draft`` from a VOC folder (``folder``, resolved; ``path`` as given)."""
    lowered = {d.lower(): d for d in dirs}
    images, masks = lowered["jpegimages"], lowered["segmentationclass"]
    lists = f"{lowered['imagesets']}/Segmentation"
    found = set(files_in(folder / lists))
    splits = [s for s in SPLITS if f"{s}.txt" in found]
    if not splits:
        raise draft.fail(
            f"{path / lists}: no train.txt or val.txt: VOC lists the images with masks there"
        )
    rows: list[dict[str, str]] = []
    listed: dict[str, str] = {}  # record -> the list that names it
    for split in splits:
        for record in _names(draft, path / lists / f"{split}.txt"):
            if record in listed:
                raise draft.fail(
                    f"{path / lists / f'{split}.txt'}: record {record!r} is listed again (first "
                    f"in {listed[record]}.txt): an image is in one split"
                )
            listed[record] = split
            row = {
                "id": record,
                "image": f"{images}/{record}.jpg",
                "mask": f"{masks}/{record}.png",
                "split": split,
            }
            missing = missing_file(folder, row, ("image", "mask"))
            if missing is not None:
                why = f"{split}.txt lists it" if missing == "image" else "a listed image"
                raise draft.fail_record(
                    path / row[missing], record, missing, f"not found ({why} without its {missing})"
                )
            rows.append(row)
    if not rows:
        raise draft.fail(
            f"{path / lists}: {' and '.join(f'{s}.txt' for s in splits)} list no image"
        )
    frame = pd.DataFrame(rows)
    counts = frame["split"].value_counts()
    shown = ", ".join(f"{counts.get(s, 0):,} {s}" for s in splits)
    draft.note(str(path), "Pascal VOC", f"{lists}/: {shown} images with masks")
    unlisted = len(files_in(folder / images)) - len(rows)
    if unlisted > 0:
        draft.note(f"{images}/", "left out", f"{unlisted:,} images not in the segmentation lists")
    if "test.txt" in found:
        draft.note(f"{lists}/test.txt", "left out", "the test split's masks are not public")
    draft.note("id", "id", "each image's name, as the lists give it")
    draft.note("image", "input: image", first_size(folder / rows[0]["image"]))
    draft.note("split", "split", f"the list that names the image: {shown} images")
    records = [Record(r["id"], folder / r["image"], folder / r["mask"]) for r in rows]
    _, read = sample_labels(
        draft,
        "mask",
        records,
        modes=("P", "L"),
        kind="a palette (or grey) PNG of class indices",
        allowed=(*range(len(CLASSES)), BORDER),
        outside=f"value {{value}} is not a VOC class (0..{len(CLASSES) - 1}) nor the border "
        f"{BORDER}",
    )
    draft.note(
        "mask",
        "task seg: segmentation",
        f"SegmentationClass palette indices ({read}): VOC's {len(CLASSES)} classes "
        f"({CLASSES[0]} 0, {CLASSES[1]} 1 … {CLASSES[-1]} {len(CLASSES) - 1}); {BORDER} marks "
        "object borders and unlabelled pixels (ignore_index)",
    )
    others = [d for d in dirs if d not in (images, masks, lowered["imagesets"])] + files
    if others:
        draft.note(
            ", ".join(others[:5]) + (", …" if len(others) > 5 else ""),
            "left out",
            "not the images, their class masks or the lists",
        )
    seg = {
        "type": "segmentation",
        "column": "mask",
        "classes": list(CLASSES),
        "ignore_index": BORDER,
    }
    draft.card.update(
        {
            "id": "id",
            "split": "split",
            "input": {"type": "image", "column": "image"},
            "tasks": {"seg": seg},
        }
    )
    draft.manifest = frame


def _names(draft: Draft, listing: Path) -> list[str]:
    """The names a list file gives, one a line (blank lines skipped); anything but a bare file
    name is refused with its line."""
    try:
        text = listing.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise draft.fail(f"{listing}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise draft.fail(f"{listing}: cannot read it ({exc.strerror or exc})") from None
    names = []
    for number, line in enumerate(text.splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if not _NAME.fullmatch(name):
            raise draft.fail(
                f"{listing}: line {number}: {name!r} is not an image name (a list names one "
                "file of JPEGImages/ a line, without its folder or suffix)"
            )
        names.append(name)
    return names
