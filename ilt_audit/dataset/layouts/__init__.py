"""Reading a dataset's layout into a dataset card: what ``ilt-audit init`` writes.

Seven layouts that tools already agree on are read:

- a **table** (CSV, Parquet, JSON Lines, Arrow): each column's role is inferred from its values
  (an id, an image path, class labels, regression targets, mask or depth-map paths, a train/val
  split, numeric features), and the card points at the table itself;
- a **Hugging Face dataset**: a folder written by ``save_to_disk``, or a table ``datasets``
  exported, read as a table whose images are stored in it, whose ``ClassLabel`` columns name
  their classes and whose rows are numbered when it has no id column;
- an **ImageFolder** tree (torchvision's: one folder per class, optionally under ``train/`` and
  ``val/``): one classification task whose classes are the folder names;
- **paired folders** of images and masks (``images/`` and ``masks/``, ``img/`` and ``ann/``,
  ``JPEGImages/`` and ``SegmentationClass/`` …) whose files pair up by stem: one segmentation
  task with the classes counted from the masks;
- **Cityscapes** (``leftImg8bit/`` and ``gtFine/``, optionally ``disparity/``): a segmentation
  task of the 19 train ids and a disparity task, the split from the folders;
- **Pascal VOC** (``JPEGImages/``, ``SegmentationClass/`` and ``ImageSets/Segmentation/``): a
  segmentation task of VOC's 21 classes, the images and the split from the lists;
- a **COCO instances** layout (``annotations/instances_<split>.json`` beside its image folders,
  or one such file): three tasks derived from the annotations (a semantic mask, the object count,
  the categories present), the masks rasterised once into a folder beside the card.

For a folder layout a manifest (CSV) is written beside the card: ids are the files' paths
relative to the folder (without the suffix, unless two files would share one), sorted (for
Cityscapes and VOC, each image's own name, in the dataset's order), and paths
are relative to the card's folder when the data lies in it, else to the data's folder, which the
card names as its ``root`` (:func:`root_text`). A table's paths are relative to the card's folder
or, failing that, to the table's own folder, which then becomes the card's ``root``. Nothing is
guessed silently: every decision is an :class:`Inference` with its reason, an ambiguous column
stops with :class:`LayoutError` naming the choices, and the card is checked with
:func:`ilt_audit.dataset.open_dataset` before it is put in place; on any error nothing is
written. Mask files are read from a bounded, evenly spaced sample
(:data:`~ilt_audit.dataset.layouts.sampling.SAMPLE` files per column), never all of a large data
set, and the inference says which.

One module per format, and the pieces they share (the imports among them form no cycle):

- :mod:`~ilt_audit.dataset.layouts.table`: a table, and the ``--task`` option;
- :mod:`~ilt_audit.dataset.layouts.huggingface`: what a Hugging Face export adds to a table;
- :mod:`~ilt_audit.dataset.layouts.image_folder`: an ImageFolder tree;
- :mod:`~ilt_audit.dataset.layouts.paired`: paired folders of images and masks;
- :mod:`~ilt_audit.dataset.layouts.cityscapes`: Cityscapes' folders;
- :mod:`~ilt_audit.dataset.layouts.voc`: a Pascal VOC folder;
- :mod:`~ilt_audit.dataset.layouts.coco`: COCO instances files and their image folders;
- :mod:`~ilt_audit.dataset.layouts.folders`: what the folder layouts share: the folder names
  that pair images with masks, walking a tree, ids from the files' paths;
- :mod:`~ilt_audit.dataset.layouts.sampling`: reading a bounded sample of files: what a column
  or folder of files holds;
- :mod:`~ilt_audit.dataset.layouts.draft`: the draft card each format fills
  (:class:`~ilt_audit.dataset.layouts.draft.Draft`), and writing and checking it.

This module decides which layout a path has (:func:`init_card`) and re-exports what callers use;
a new format is one more module beside these.

May import: the other modules of :mod:`ilt_audit.dataset`, :mod:`ilt_audit.internal` and
:mod:`ilt_audit.errors` only.

Example:
    >>> result = init_card("data/pets", out="data/pets.toml")  # doctest: +SKIP
    >>> [(i.subject, i.decision) for i in result.inferences][:2]  # doctest: +SKIP
    [('data/pets', 'ImageFolder'), ('class', 'task class: classification')]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ilt_audit.dataset.card import DENSE_TYPES
from ilt_audit.dataset.huggingface import DATASET_DICT, is_saved
from ilt_audit.dataset.layouts.cityscapes import is_cityscapes, read_cityscapes
from ilt_audit.dataset.layouts.coco import coco_files, masks_folder, read_coco
from ilt_audit.dataset.layouts.draft import (
    DerivedFolder,
    Draft,
    Inference,
    InitResult,
    LayoutError,
    inside,
    note_root,
    relative,
    root_text,
    write,
)
from ilt_audit.dataset.layouts.folders import IMAGE_FOLDERS, MASK_FOLDERS
from ilt_audit.dataset.layouts.image_folder import read_image_folder
from ilt_audit.dataset.layouts.paired import read_paired
from ilt_audit.dataset.layouts.table import TaskOption, parse_task_option, read_table
from ilt_audit.dataset.layouts.voc import is_voc, read_voc
from ilt_audit.errors import CardError, OptionError, OutputError
from ilt_audit.internal.files import check_output

__all__ = [
    "DerivedFolder",
    "Inference",
    "InitResult",
    "LayoutError",
    "TaskOption",
    "init_card",
    "parse_task_option",
    "root_text",
]


def init_card(
    path: str | Path,
    *,
    out: str | Path,
    tasks: Sequence[str | TaskOption] = (),
    inputs: Sequence[str] = (),
    id_column: str | None = None,
    skip: Sequence[str] = (),
    force: bool = False,
    allow_outside_paths: bool = False,
    images: str | Path | None = None,
) -> InitResult:
    """Write a dataset card (and a manifest, for a folder or COCO layout) from a dataset's layout.

    ``tasks``, ``inputs``, ``id_column`` and ``skip`` settle a table's columns by hand (they do
    not apply to folder layouts); ``images`` names a COCO layout's image folder, the one its
    files' ``file_name`` is relative to (found beside ``annotations/`` without it). A COCO
    layout's masks are written into ``<card stem>.masks/`` beside the card. The card is
    validated with
    :func:`~ilt_audit.dataset.opening.open_dataset` before it is put in place; on any error
    (:class:`LayoutError` for the layout, ``OptionError`` for the options) nothing is written.

    Example:
        >>> init_card("data/table.csv", out="data/card.toml",
        ...           tasks=["score=score:regression"])  # doctest: +SKIP
    """
    path, out = Path(path), Path(out)
    options = [t if isinstance(t, TaskOption) else parse_task_option(t) for t in tasks]
    if not path.exists():
        raise CardError(
            f"{path}: not found; give a table (CSV, Parquet, JSON Lines), a COCO instances file "
            "or a folder"
        )
    coco = coco_files(path)
    if images is not None:
        images = Path(images)
        if coco is None:
            raise OptionError(
                f"--images names a COCO layout's image folder; {path} is not one (an instances "
                ".json file, or a folder with annotations/instances_*.json)"
            )
        if not images.is_dir():
            raise OptionError(f"--images {images}: not a folder")
    if path.is_file() and out.resolve() == path.resolve():
        raise OptionError(f"--out {out}: that is the table itself; name a new .toml file")
    folder_layout = path.is_dir() and not is_saved(path)
    if folder_layout and coco is None and (path / DATASET_DICT).is_file():
        raise CardError(
            f"{path}: a DatasetDict saved with save_to_disk; give one split's folder, e.g. "
            f"{path / 'train'}"
        )
    made = folder_layout or coco is not None  # a manifest written beside the card
    manifest_path = out.with_name(f"{out.stem}.manifest.csv") if made else None
    masks = masks_folder(out) if coco is not None else None
    for target in (out, manifest_path, masks):
        if target is not None and target.exists() and not force:
            raise OutputError(f"{target} already exists; pass --force to replace it")
    check_output(out)
    folder = out.parent.resolve()  # the card's folder
    if made:
        given = [
            flag
            for flag, value in (("--task", options), ("--input", inputs), ("--id", id_column))
            if value
        ] + (["--skip"] if skip else [])
        if given:
            layout, kind = ("a COCO layout", "one") if coco else ("a folder's layout", "a folder")
            raise OptionError(
                f"{given[0]} settles a table's columns; {layout} decides them ({path} is {kind})"
            )
        if coco is not None:
            assert masks is not None
            draft = Draft("coco")
            read_coco(draft, path, coco, folder, masks, images)
        else:
            draft = _read_folder(path, folder)
    else:
        draft = read_table(
            path, folder, options, list(inputs), id_column, list(skip), allow_outside_paths
        )
    note_root(draft, folder)
    write(draft, out, manifest_path, folder, allow_outside_paths)
    return InitResult(out, manifest_path, draft.layout, tuple(draft.notes), tuple(draft.derived))


# --- folder layouts ------------------------------------------------------------------------


def _read_folder(path: Path, card_folder: Path) -> Draft:
    """A folder layout; its paths are relative to the card's folder when the data is in it, else
    to the data's folder (the card's ``root``)."""
    folder = path.resolve()
    entries = sorted(
        (e for e in os.scandir(folder) if not e.name.startswith(".")), key=lambda e: e.name
    )
    dirs = [e.name for e in entries if e.is_dir()]
    files = [e.name for e in entries if not e.is_dir()]
    lowered = {name.lower(): name for name in dirs}
    images = next((lowered[n] for n in IMAGE_FOLDERS if n in lowered), None)
    masks = next((lowered[n] for n in MASK_FOLDERS if n in lowered), None)
    if is_cityscapes(dirs):
        draft = Draft("cityscapes")
        read_cityscapes(draft, path, folder, dirs, files)
    elif is_voc(folder, lowered):
        draft = Draft("voc")
        read_voc(draft, path, folder, dirs, files)
    elif images is not None and masks is not None:
        draft = Draft("paired")
        read_paired(draft, path, folder, images, masks, dirs, files)
    else:
        draft = Draft("imagefolder")
        read_image_folder(draft, path, folder, dirs, files)
    assert draft.manifest is not None
    draft.source = path
    draft.root = card_folder if inside(folder, card_folder) else folder
    prefix = relative(folder, draft.root)
    dense = [t["column"] for t in draft.card["tasks"].values() if t["type"] in DENSE_TYPES]
    for column in (draft.card["input"]["column"], *dense):  # the columns of file paths
        if prefix != ".":
            draft.manifest[column] = prefix + "/" + draft.manifest[column]
    return draft
