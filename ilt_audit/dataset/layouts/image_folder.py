"""An ImageFolder tree (torchvision's: one folder per class, optionally under ``train/`` and
``val/``): one classification task whose classes are the folder names."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ilt_audit.dataset.layouts.draft import Draft
from ilt_audit.dataset.layouts.folders import IMAGE_FOLDERS, MASK_FOLDERS, ids, suffix, walk
from ilt_audit.dataset.layouts.sampling import IMAGE_SUFFIXES, first_size
from ilt_audit.dataset.manifest import label_texts

SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val"}


def read_image_folder(
    draft: Draft, path: Path, folder: Path, dirs: list[str], files: list[str]
) -> None:
    top_images = [f for f in files if suffix(f) in IMAGE_SUFFIXES]
    if top_images and dirs:
        raise draft.fail(
            f"{path / top_images[0]}: an image beside class folders ({dirs[0]}/, …): an "
            "ImageFolder holds its images in one folder per class; move it into its class folder"
        )
    if not dirs:
        first = path / top_images[0] if top_images else path
        raise draft.fail(
            f"{first}: no class folders: an ImageFolder holds one folder per class "
            f"(CLASS/IMAGE), a segmentation layout an images folder and a masks folder "
            f"({'/'.join(IMAGE_FOLDERS[:2])} and {'/'.join(MASK_FOLDERS[:2])})"
        )
    if files:
        draft.note(
            ", ".join(files[:5]) + (", …" if len(files) > 5 else ""),
            "left out",
            "files beside the class folders, not images",
        )
    splits = _split_folders(draft, path, dirs)
    rows: list[tuple[str, str, str]] = []  # (relative image path, class, split)
    hidden = 0
    for split_dir, split in splits:
        base = folder / split_dir if split_dir else folder
        classes = sorted(e.name for e in os.scandir(base) if e.is_dir() and e.name[0] != ".")
        loose = sorted(
            e.name for e in os.scandir(base) if not e.is_dir() and e.name[0] != "." and split_dir
        )
        if loose:
            raise draft.fail(
                f"{path / split_dir / loose[0]}: a file beside the class folders of {split_dir}/"
            )
        for name in classes:
            found, skipped = walk(base / name)
            hidden += skipped
            here = f"{split_dir}/{name}" if split_dir else name
            if not found:
                raise draft.fail(
                    f"{path / here}: an empty class folder; every class needs at least one image"
                )
            bad = next((f for f in found if suffix(f) not in IMAGE_SUFFIXES), None)
            if bad is not None:
                raise draft.fail(
                    f"{path / here / bad}: not an image; a class folder holds only images "
                    f"({', '.join(IMAGE_SUFFIXES)})"
                )
            rows += [(f"{here}/{f}", name, split) for f in found]
    classes_found = sorted({c for _, c, _ in rows})
    if len(classes_found) < 2:
        raise draft.fail(
            f"{path}: one class folder ({classes_found[0]}/); a classification task needs at "
            "least two"
        )
    _check_csv_labels(draft, path, classes_found)
    frame = pd.DataFrame(rows, columns=["image", "class", "split"])
    frame.insert(0, "id", ids(frame["image"]))
    shown = ", ".join(classes_found[:10]) + (", …" if len(classes_found) > 10 else "")
    draft.note(
        str(path),
        "ImageFolder",
        f"{len(classes_found)} class folders, {len(frame):,} images"
        + (f"; {hidden} hidden files skipped" if hidden else ""),
    )
    draft.note("id", "id", "each image's path in the folder, without its suffix")
    draft.note("image", "input: image", first_size(folder / rows[0][0]))
    draft.note(
        "class",
        "task class: classification",
        f"the class folder's name: {len(classes_found)} classes ({shown})",
    )
    draft.card.update(
        {
            "id": "id",
            "input": {"type": "image", "column": "image"},
            "tasks": {
                "class": {"type": "classification", "column": "class", "classes": classes_found}
            },
        }
    )
    if splits[0][0]:
        draft.card["split"] = "split"
        counts = frame["split"].value_counts()
        draft.note(
            "split",
            "split",
            "the split folders: " + ", ".join(f"{n:,} {s}" for s, n in counts.items()) + " images",
        )
    else:
        frame = frame.drop(columns="split")
    draft.manifest = frame


def _split_folders(draft: Draft, path: Path, dirs: list[str]) -> list[tuple[str, str]]:
    """``[(folder, split)]``: the train/val folders above the class folders, or ``[("", "")]``."""
    names = {d.lower() for d in dirs}
    if "train" not in names or not names <= {*SPLIT_FOLDERS, "test"}:
        return [("", "")]
    test = next((d for d in dirs if d.lower() == "test"), None)
    if test is not None:
        raise draft.fail(
            f"{path / test}: a test split; ilt-audit trains on train and validates on val rows "
            f"only: init {path / next(d for d in dirs if d.lower() == 'train')} alone, or move "
            "the test folder out"
        )
    return [(d, SPLIT_FOLDERS[d.lower()]) for d in dirs]


def _check_csv_labels(draft: Draft, path: Path, classes: list[str]) -> None:
    """Refuse class folder names that a CSV would read back as another label ("01" as 1)."""
    import io

    text = "class\n" + "\n".join(_csv_cell(c) for c in classes) + "\n"
    back = label_texts(pd.read_csv(io.StringIO(text))["class"]).tolist()
    for name, read in zip(classes, back, strict=True):
        if name != read:
            raise draft.fail(
                f"{path}: the class folder {name!r} reads back from the CSV manifest as "
                f"{read!r}; rename it (e.g. 'c{name}')"
            )


def _csv_cell(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'
