"""What the folder layouts share: the folder names that pair images with masks, walking a tree,
and ids from the files' paths."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

IMAGE_FOLDERS = ("images", "image", "imgs", "img", "jpegimages", "rgb")  # paired layout, in order
MASK_FOLDERS = (
    "masks",
    "mask",
    "segmentationclass",
    "annotations",
    "ann",
    "anns",
    "labels",
    "gt",
    "groundtruth",
)


def walk(folder: Path) -> tuple[list[str], int]:
    """Every file under ``folder`` as a sorted POSIX path relative to it (links followed once),
    and how many hidden files and folders were skipped."""
    found: list[str] = []
    hidden = 0
    seen: set[str] = set()
    for here, subdirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:  # a link back to a folder already walked
            subdirs[:] = []
            continue
        seen.add(real)
        hidden += sum(d.startswith(".") for d in subdirs)
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        relative = Path(here).relative_to(folder).as_posix()
        for name in names:
            if name.startswith("."):
                hidden += 1
            else:
                found.append(name if relative == "." else f"{relative}/{name}")
    return sorted(found), hidden


def folders_in(folder: Path) -> list[str]:
    """The names of the folders in ``folder``, sorted, hidden ones left out."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def files_in(folder: Path) -> list[str]:
    """The names of the files (not folders) in ``folder``, sorted, hidden ones left out."""
    return sorted(
        e.name for e in os.scandir(folder) if not e.is_dir() and not e.name.startswith(".")
    )


def missing_file(folder: Path, row: dict[str, str], fields: Sequence[str]) -> str | None:
    """The first of a manifest row's ``fields`` whose file is not in ``folder``, or None."""
    return next((field for field in fields if not (folder / row[field]).is_file()), None)


def suffix(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def ids(paths: pd.Series) -> pd.Series:
    """Ids from relative paths: without the suffix, unless two files would share one."""
    ids = paths.str.replace(r"\.[^./]*$", "", regex=True)
    clash = ids.duplicated(keep=False)
    return ids.where(~clash, paths)
