"""Reading a dataset's layout into a dataset card: what ``ilt-audit init`` writes.

Three layouts that tools already agree on are read:

- a **table** (CSV, Parquet, JSON Lines): each column's role is inferred from its values (an id,
  an image path, class labels, regression targets, mask or depth-map paths, a train/val split,
  numeric features), and the card points at the table itself;
- an **ImageFolder** tree (torchvision's: one folder per class, optionally under ``train/`` and
  ``val/``): one classification task whose classes are the folder names;
- **paired folders** of images and masks (``images/`` and ``masks/``, ``img/`` and ``ann/``,
  ``JPEGImages/`` and ``SegmentationClass/`` …) whose files pair up by stem: one segmentation
  task with the classes counted from the masks.

For a folder layout a manifest (CSV) is written beside the card: ids are the files' paths
relative to the folder (without the suffix, unless two files would share one), sorted, and paths
are relative to the card's folder when the data lies in it, else to the data's folder, which the
card names as its ``root`` (:func:`root_text`). A table's paths are relative to the card's folder
or, failing that, to the table's own folder, which then becomes the card's ``root``. Nothing is
guessed silently: every decision is an :class:`Inference` with its reason, an ambiguous column
stops with :class:`LayoutError` naming the choices, and the card is checked with
:func:`ilt_audit.dataset.manifest.load_manifest` before it is put in place; on any error nothing is
written. Mask files are read from a bounded, evenly spaced sample
(:data:`SAMPLE` files per column), never all of a large data set, and the inference says which.

Example:
    >>> result = init_card("data/pets", out="data/pets.toml")  # doctest: +SKIP
    >>> [(i.subject, i.decision) for i in result.inferences][:2]  # doctest: +SKIP
    [('data/pets', 'ImageFolder'), ('class', 'task class: classification')]
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ilt_audit.dataset.card import ESCAPING_PATH, MAX_PIXELS, TABLE_READERS, TASK_TYPES, load_card
from ilt_audit.dataset.manifest import label_texts, load_manifest, read_table
from ilt_audit.errors import CardError, OptionError, OutputError
from ilt_audit.internal.files import atomic_path, check_output, write_atomic
from ilt_audit.internal.toml import toml_dumps, toml_string

# What Pillow (ilt-audit's decoder) reads of torchvision's IMG_EXTENSIONS.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
MAP_SUFFIXES = (".npy",)  # dense-regression maps besides 16-bit PNGs
SAMPLE = 100  # files read per path column: all of them up to this many, else an even sample
CLASS_LIMIT = 50  # an integer column with at most this many distinct values holds classes
MASK_VALUES = 64  # a single-channel 8-bit column with at most this many values holds masks
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
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val"}
_COLOUR_MODES = ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LA", "PA", "LAB", "HSV", "1")
_WIDE_MODES = ("I", "F")  # 16- or 32-bit single channel (I;16 and its kin start with "I")
_ID_NAME = re.compile(r"(?:id|ids|uid|uuid|key|.*[_\-. ]id)", re.IGNORECASE)
_CAMEL_ID = re.compile(r".*[a-z]Id")
_TASK_OPTION = re.compile(r"(?P<name>[^=]+)=(?P<columns>.+):(?P<type>[^:]+)")


@dataclass(frozen=True)
class Inference:
    """One decision about the layout: a column (or folder), what it became, and why."""

    subject: str  # a column of the table, or a folder of the layout
    decision: str  # e.g. "id", "input: image", "task seg: segmentation", "split", "left out"
    why: str
    choices: tuple[str, ...] = ()  # an ambiguous subject: the options that would settle it


@dataclass(frozen=True)
class InitResult:
    """What :func:`init_card` wrote and every decision behind it."""

    card: Path
    manifest: Path | None  # the manifest written beside the card (folder layouts)
    layout: str  # "table", "imagefolder" or "paired"
    inferences: tuple[Inference, ...]


class LayoutError(CardError):
    """A layout that cannot be read into a card, ambiguous or bad; holds the decisions so far."""

    def __init__(self, message: str, inferences: Sequence[Inference] = ()) -> None:
        super().__init__(message)
        self.inferences = tuple(inferences)


@dataclass(frozen=True)
class TaskOption:
    """``--task NAME=COLUMN:TYPE`` (regression: ``NAME=COL1,COL2:regression``)."""

    name: str
    columns: tuple[str, ...]
    type: str


def parse_task_option(text: str) -> TaskOption:
    """Parse ``NAME=COLUMN:TYPE``; an unknown type lists the choices.

    Example:
        >>> parse_task_option("size=w,h:regression")
        TaskOption(name='size', columns=('w', 'h'), type='regression')
    """
    found = _TASK_OPTION.fullmatch(text)
    if found is None:
        raise OptionError(
            f"--task {text!r}: expected NAME=COLUMN:TYPE, e.g. --task species=species:classification"
        )
    name, kind = found["name"], found["type"]
    if not re.fullmatch(r"[a-z0-9_-]+", name):
        raise OptionError(f"--task {text!r}: task names may use only a-z, 0-9, '_' and '-'")
    if kind not in TASK_TYPES:
        raise OptionError(f"--task {text!r}: TYPE must be one of {', '.join(TASK_TYPES)}")
    columns = tuple(found["columns"].split(",")) if kind == "regression" else (found["columns"],)
    return TaskOption(name, columns, kind)


@dataclass
class _Draft:
    """A card before it is written: its TOML document, its manifest (folder layouts) or the
    user's table, and the decisions so far."""

    layout: str
    notes: list[Inference] = field(default_factory=list)
    card: dict[str, Any] = field(default_factory=dict)
    manifest: pd.DataFrame | None = None
    table: Path | None = None  # the user's table, which the card points at
    source: Path | None = None  # the table or folder the card was read from
    root: Path | None = None  # the folder the paths are relative to, once known (resolved)

    def note(self, subject: str, decision: str, why: str, choices: Sequence[str] = ()) -> None:
        self.notes.append(Inference(subject, decision, why, tuple(choices)))

    def fail(self, message: str) -> LayoutError:
        return LayoutError(message, self.notes)


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
) -> InitResult:
    """Write a dataset card (and a manifest, for a folder layout) from a dataset's layout.

    ``tasks``, ``inputs``, ``id_column`` and ``skip`` settle a table's columns by hand (they do
    not apply to folder layouts). The card is validated with
    :func:`~ilt_audit.dataset.manifest.load_manifest` before it is put in place; on any error
    (:class:`LayoutError` for the layout, ``OptionError`` for the options) nothing is written.

    Example:
        >>> init_card("data/table.csv", out="data/card.toml",
        ...           tasks=["score=score:regression"])  # doctest: +SKIP
    """
    path, out = Path(path), Path(out)
    options = [t if isinstance(t, TaskOption) else parse_task_option(t) for t in tasks]
    if not path.exists():
        raise CardError(f"{path}: not found; give a table (CSV, Parquet, JSON Lines) or a folder")
    if path.is_file() and out.resolve() == path.resolve():
        raise OptionError(f"--out {out}: that is the table itself; name a new .toml file")
    manifest_path = out.with_name(f"{out.stem}.manifest.csv") if path.is_dir() else None
    for target in (out, manifest_path):
        if target is not None and target.exists() and not force:
            raise OutputError(f"{target} already exists; pass --force to replace it")
    check_output(out)
    folder = out.parent.resolve()  # the card's folder
    if path.is_dir():
        given = [
            flag
            for flag, value in (("--task", options), ("--input", inputs), ("--id", id_column))
            if value
        ] + (["--skip"] if skip else [])
        if given:
            raise OptionError(
                f"{given[0]} settles a table's columns; a folder's layout decides them "
                f"({path} is a folder)"
            )
        draft = _read_folder(path, folder)
    else:
        draft = _read_table(
            path, folder, options, list(inputs), id_column, list(skip), allow_outside_paths
        )
    _note_root(draft, folder)
    _write(draft, out, manifest_path, folder, allow_outside_paths)
    return InitResult(out, manifest_path, draft.layout, tuple(draft.notes))


# --- writing and checking the card ---------------------------------------------------------


def root_text(root: Path, folder: Path) -> str:
    """The card's ``root`` for the data folder ``root`` and the card's folder ``folder`` (both
    resolved): relative to the card's folder when the two share a folder other than the file
    system's root (a project moved as a whole keeps working), absolute otherwise.

    Example:
        >>> root_text(Path("/srv/proj/data/pets"), Path("/srv/proj/cards"))
        '../data/pets'
        >>> root_text(Path("/data/pets"), Path("/home/me/cards"))
        '/data/pets'
    """
    try:
        shared = Path(os.path.commonpath([root, folder]))
    except ValueError:  # on two drives
        return root.as_posix()
    return root.as_posix() if shared == Path(shared.anchor) else _relative(root, folder)


def _note_root(draft: _Draft, folder: Path) -> None:
    """Say which folder the manifest's paths are relative to (an image card's only)."""
    if draft.card.get("input", {}).get("type") != "image" or draft.root is None:
        return
    if draft.root == folder:
        draft.note(str(folder), "data folder", "the card's folder: the paths are relative to it")
    else:
        draft.note(
            str(draft.root),
            f"data folder: root = {toml_string(root_text(draft.root, folder))}",
            f"the data is not in the card's folder {folder}: the paths are relative to this "
            "folder, which the card names",
        )


def _write(
    draft: _Draft, out: Path, manifest_path: Path | None, folder: Path, allow_outside: bool
) -> None:
    """Write the card (and manifest) under temporary names, validate them with
    :func:`load_manifest`, then rename them into place; on an error remove them."""
    card: dict[str, Any] = {}
    if draft.manifest is not None:
        assert manifest_path is not None
        card["table"] = manifest_path.name
    else:
        assert draft.table is not None
        card["table"] = _relative(draft.table.resolve(), folder)
    if draft.root is not None and draft.root != folder:
        card["root"] = root_text(draft.root, folder)
    card.update(draft.card)
    if allow_outside:
        card["allow_outside_paths"] = True
    header = f"# Written by `ilt-audit init` from a {_LAYOUT_NAMES[draft.layout]}"
    text = f"{header}: {toml_string(str(draft.source))}\n{toml_dumps(card)}"

    pid = os.getpid()
    with atomic_path(out) as tmp_card:  # renamed onto ``out`` only if the block succeeds
        tmp_manifest = out.with_name(f".{out.stem}.init-{pid}.csv")
        try:
            tmp_card.write_text(text, encoding="utf-8")
            loaded = load_card(tmp_card)
            if draft.manifest is not None:
                draft.manifest.to_csv(tmp_manifest, index=False)
                loaded = dataclasses.replace(loaded, table=tmp_manifest.name)
            try:
                load_manifest(loaded)
            except CardError as exc:
                message = str(exc).replace(str(tmp_manifest.resolve()), str(manifest_path))
                message = message.replace(str(tmp_card.resolve()), str(out))
                raise draft.fail(f"the card written does not validate: {message}") from None
            if draft.manifest is not None:
                assert manifest_path is not None
                write_atomic(manifest_path, lambda tmp: os.replace(tmp_manifest, tmp))
        finally:
            tmp_manifest.unlink(missing_ok=True)


_LAYOUT_NAMES = {
    "table": "table",
    "imagefolder": "torchvision ImageFolder tree",
    "paired": "folder of images and masks",
}


def _relative(target: Path, root: Path) -> str:
    """``target`` (resolved) as a POSIX path relative to ``root`` (may start with ``..``)."""
    return Path(os.path.relpath(target, root)).as_posix()


def _inside(target: Path, root: Path) -> bool:
    return target == root or target.is_relative_to(root)


# --- folder layouts ------------------------------------------------------------------------


def _read_folder(path: Path, card_folder: Path) -> _Draft:
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
    if images is not None and masks is not None:
        draft = _Draft("paired")
        _read_paired(draft, path, folder, images, masks, dirs, files)
    else:
        draft = _Draft("imagefolder")
        _read_image_folder(draft, path, folder, dirs, files)
    assert draft.manifest is not None
    draft.source = path
    draft.root = card_folder if _inside(folder, card_folder) else folder
    prefix = _relative(folder, draft.root)
    for column in ("image", "mask"):
        if column in draft.manifest and prefix != ".":
            draft.manifest[column] = prefix + "/" + draft.manifest[column]
    return draft


def _read_image_folder(
    draft: _Draft, path: Path, folder: Path, dirs: list[str], files: list[str]
) -> None:
    top_images = [f for f in files if _suffix(f) in IMAGE_SUFFIXES]
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
            found, skipped = _walk(base / name)
            hidden += skipped
            here = f"{split_dir}/{name}" if split_dir else name
            if not found:
                raise draft.fail(
                    f"{path / here}: an empty class folder; every class needs at least one image"
                )
            bad = next((f for f in found if _suffix(f) not in IMAGE_SUFFIXES), None)
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
    frame.insert(0, "id", _ids(frame["image"]))
    shown = ", ".join(classes_found[:10]) + (", …" if len(classes_found) > 10 else "")
    draft.note(
        str(path),
        "ImageFolder",
        f"{len(classes_found)} class folders, {len(frame):,} images"
        + (f"; {hidden} hidden files skipped" if hidden else ""),
    )
    draft.note("id", "id", "each image's path in the folder, without its suffix")
    draft.note("image", "input: image", _first_size(folder / rows[0][0]))
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


def _split_folders(draft: _Draft, path: Path, dirs: list[str]) -> list[tuple[str, str]]:
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


def _read_paired(
    draft: _Draft,
    path: Path,
    folder: Path,
    images: str,
    masks: str,
    dirs: list[str],
    files: list[str],
) -> None:
    image_files, hidden = _walk(folder / images)
    mask_files, hidden_masks = _walk(folder / masks)
    for sub, found in ((images, image_files), (masks, mask_files)):
        bad = next((f for f in found if _suffix(f) not in IMAGE_SUFFIXES), None)
        if bad is not None:
            raise draft.fail(
                f"{path / sub / bad}: not an image; {sub}/ holds only images "
                f"({', '.join(IMAGE_SUFFIXES)})"
            )
    by_stem: dict[str, str] = {}
    for name in image_files:
        stem = _stem(name)
        if stem in by_stem:
            raise draft.fail(
                f"{path / images / name}: a second image with the stem {stem!r} (beside "
                f"{by_stem[stem]}): its mask could pair with either"
            )
        by_stem[stem] = name
    seen: set[str] = set()
    rows: list[tuple[str, str]] = []
    for name in mask_files:
        stem = _stem(name)
        if stem not in by_stem:
            raise draft.fail(
                f"{path / masks / name}: a mask without an image: no file {stem}.* in {images}/"
            )
        if stem in seen:
            raise draft.fail(f"{path / masks / name}: a second mask with the stem {stem!r}")
        seen.add(stem)
        rows.append((f"{images}/{by_stem[stem]}", f"{masks}/{name}"))
    if not rows:
        raise draft.fail(f"{path / masks}: no masks")
    draft.note(
        str(path),
        "images and masks",
        f"{images}/ and {masks}/: {len(rows):,} pairs by file stem"
        + (f"; {hidden + hidden_masks} hidden files skipped" if hidden + hidden_masks else ""),
    )
    unpaired = sorted(set(by_stem) - seen)
    if unpaired:
        draft.note(
            f"{images}/",
            "left out",
            f"{len(unpaired):,} images without a mask (the first: {by_stem[unpaired[0]]})",
        )
    others = [d for d in dirs if d not in (images, masks)] + files
    if others:
        draft.note(
            ", ".join(others[:5]) + (", …" if len(others) > 5 else ""),
            "left out",
            "not the images or masks folder",
        )
    frame = pd.DataFrame(rows, columns=["image", "mask"])
    frame.insert(0, "id", _ids(frame["mask"].str.slice(len(masks) + 1)))
    draft.note("id", "id", f"each mask's path in {masks}/, without its suffix")
    draft.note("image", "input: image", _first_size(folder / rows[0][0]))
    sampled = _sample_files(draft, f"{masks}/", [folder / m for _, m in rows], masks=True)
    task = _dense_task(draft, "mask", "seg", sampled)
    draft.card.update(
        {"id": "id", "input": {"type": "image", "column": "image"}, "tasks": {"seg": task}}
    )
    draft.manifest = frame


def _walk(folder: Path) -> tuple[list[str], int]:
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


def _suffix(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def _stem(name: str) -> str:
    return os.path.splitext(name)[0]


def _ids(paths: pd.Series) -> pd.Series:
    """Ids from relative paths: without the suffix, unless two files would share one."""
    ids = paths.str.replace(r"\.[^./]*$", "", regex=True)
    clash = ids.duplicated(keep=False)
    return ids.where(~clash, paths)


def _check_csv_labels(draft: _Draft, path: Path, classes: list[str]) -> None:
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


def _first_size(image: Path) -> str:
    try:
        with _open(image) as img:
            width, height = img.size
    except (OSError, ValueError) as exc:
        raise LayoutError(f"{image}: cannot read the image ({exc})") from None
    return f"the first image is {height}x{width}: training resizes every image to that size"


# --- reading files -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Files:
    """What a sample of a path column's files holds."""

    kind: str  # "image", "mask" or "map"
    why: str
    values: tuple[int, ...] = ()  # masks: the values seen


def _open(path: Path) -> Any:
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except Image.DecompressionBombError as exc:
            raise ValueError(f"refused before decoding: {exc}") from None
    if img.size[0] * img.size[1] > MAX_PIXELS:
        img.close()
        raise ValueError(f"its header claims more than the {MAX_PIXELS:,} pixels allowed")
    return img


def _sample_rows(n: int) -> np.ndarray:
    """Row positions of the files to read: all up to :data:`SAMPLE`, else evenly spaced."""
    if n <= SAMPLE:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, SAMPLE).round().astype(int))


def _sample_files(draft: _Draft, subject: str, paths: list[Path], *, masks: bool) -> _Files:
    """Read the files at :func:`_sample_rows`: colour images, single-channel masks (their
    values), or 16-bit maps. ``masks``: a masks folder, every single-channel file a mask."""
    rows = _sample_rows(len(paths))
    modes: dict[str, Path] = {}
    values: set[int] = set()
    for row in rows:
        file = paths[row]
        try:
            with _open(file) as img:
                mode = img.mode
                modes.setdefault(mode, file)
                if mode in ("L", "P") or (masks and mode not in _COLOUR_MODES):
                    values.update(np.unique(np.asarray(img)).tolist())
        except FileNotFoundError:
            raise draft.fail(f"{file}: file not found") from None
        except (OSError, ValueError) as exc:
            raise draft.fail(f"{file}: cannot read it as an image ({exc})") from None
    read = (
        f"all {len(rows):,} files read"
        if len(rows) == len(paths)
        else f"a sample of {len(rows):,} of {len(paths):,} files read, evenly spaced"
    )
    colour = [m for m in modes if m in _COLOUR_MODES]
    wide = [m for m in modes if m.startswith(_WIDE_MODES)]
    if masks:
        if colour:
            raise draft.fail(
                f"{modes[colour[0]]}: a {colour[0]} mask; a mask is a single-channel PNG of class "
                "indices (8-bit grey or palette): convert its colours to indices"
            )
        return _Files("mask", f"single-channel files ({read})", tuple(sorted(values)))
    if colour and wide:
        raise draft.fail(
            f"{modes[wide[0]]}: a {wide[0]} file in a column ({subject}) of {colour[0]} images"
        )
    if colour:
        return _Files("image", f"{', '.join(sorted(modes))} images ({read})")
    if wide:
        return _Files("map", f"{', '.join(sorted(modes))} single-channel maps ({read})")
    if len(values) <= MASK_VALUES:
        return _Files(
            "mask",
            f"single-channel files holding {len(values)} distinct small integers ({read})",
            tuple(sorted(values)),
        )
    return _Files(
        "image", f"greyscale images: {len(values)} distinct values, not class indices ({read})"
    )


def _dense_task(draft: _Draft, column: str, name: str, found: _Files) -> dict[str, Any]:
    """The card's table for a segmentation task, classes counted from the values seen."""
    values = found.values
    if values == (0, 255):
        raise draft.fail(
            f"{column}: the masks hold only 0 and 255: a binary mask stored as 0/255. ilt-audit "
            "reads class indices, so 255 would be class 255: convert the masks to 0/1"
        )
    ignore = 255 if 255 in values and len(values) > 1 else None
    labelled = [v for v in values if v != ignore]
    classes = max(2, max(labelled, default=0) + 1)
    why = f"{found.why}: values {', '.join(map(str, labelled))} → {classes} classes"
    if ignore is not None:
        why += "; 255 marks unlabelled pixels (ignore_index)"
    if "sample" in found.why:
        why += "; the training pass checks every mask against this count"
    draft.note(column, f"task {name}: segmentation", why)
    task: dict[str, Any] = {"type": "segmentation", "column": column, "classes": classes}
    if ignore is not None:
        task["ignore_index"] = ignore
    return task


# --- tables --------------------------------------------------------------------------------


def _read_table(
    path: Path,
    folder: Path,
    options: list[TaskOption],
    inputs: list[str],
    id_column: str | None,
    skip: list[str],
    allow_outside: bool,
) -> _Draft:
    if path.suffix.lower() not in TABLE_READERS:
        raise CardError(
            f"{path}: not a table ilt-audit reads (a suffix of {', '.join(TABLE_READERS)}) "
            "nor a folder"
        )
    draft = _Draft("table", table=path, source=path)
    table = path.resolve()
    if not _inside(table, folder) and not allow_outside:
        raise draft.fail(
            f"{path}: the table is outside the card's folder {folder}; put the card in "
            f"{table.parent} or a folder above it (e.g. --out {table.parent / 'card.toml'}), or "
            "pass --allow-outside-paths"
        )
    frame = read_table(path, id_column or "")
    if frame.empty:
        raise draft.fail(f"{path}: the table has no rows")
    frame.columns = [str(c) for c in frame.columns]
    columns = list(frame.columns)
    for flag, names in (
        ("--id", [id_column] if id_column else []),
        ("--input", inputs),
        ("--skip", skip),
        ("--task", [c for t in options for c in t.columns]),
    ):
        unknown = next((n for n in names if n not in columns), None)
        if unknown is not None:
            raise OptionError(
                f"{flag} {unknown!r}: no such column in {path}; its columns are: "
                f"{', '.join(columns)}"
            )
    open_columns = [c for c in columns if c not in skip]
    for column in skip:
        draft.note(column, "left out", "--skip")

    chosen = _choose_id(draft, path, frame, open_columns, id_column)
    open_columns.remove(chosen)
    split = _choose_split(draft, path, frame, open_columns)
    if split is not None:
        open_columns.remove(split)
        draft.card["split"] = split

    # The columns settled by hand; the others are inferred.
    tasks: dict[str, dict[str, Any]] = {}
    given = {c for t in options for c in t.columns} | set(inputs)
    open_columns = [c for c in open_columns if c not in given]
    scanned = [c for c in columns if c not in skip and c != split]
    files = _file_columns(draft, path, frame, folder, scanned, allow_outside)
    for option in options:
        tasks[option.name] = _option_task(draft, frame, option, files)

    images = [c for c in open_columns if c in files and files[c].kind == "image"]
    if not images and chosen in files and files[chosen].kind == "image":
        images = [chosen]  # --id names the image column: its paths are the ids
    input_spec = _choose_input(draft, frame, inputs, images, files, open_columns)
    used = set(input_spec.get("columns", [input_spec.get("column")]))
    open_columns = [c for c in open_columns if c not in used]
    for other in images:
        if other in open_columns:
            open_columns.remove(other)
            if not (len(images) > 1 and not inputs):  # an ambiguous one is noted as such
                draft.note(other, "left out", "an image column other than the input (--input)")
    taken = set(tasks)
    for column in open_columns:
        task = _infer_task(draft, frame, column, files.get(column), input_spec, taken)
        if task is not None:
            name, spec = task
            tasks[name] = spec
            taken.add(name)
    ambiguous = next((n for n in draft.notes if n.choices), None)
    if ambiguous is not None:
        raise draft.fail(
            f"{path}: column {ambiguous.subject!r} is ambiguous: {ambiguous.why}; choose with "
            + " or ".join(ambiguous.choices)
        )
    if not tasks:
        raise draft.fail(
            f"{path}: no label column found (every column is the id, the input or left out); "
            "name one with --task NAME=COLUMN:TYPE"
        )
    draft.card.update({"id": chosen, "input": input_spec, "tasks": tasks})
    return draft


def _choose_id(
    draft: _Draft, path: Path, frame: pd.DataFrame, columns: list[str], given: str | None
) -> str:
    if given is not None:
        draft.note(given, "id", "--id")
        return given
    candidates = [
        c
        for c in columns
        if (_ID_NAME.fullmatch(c) or _CAMEL_ID.fullmatch(c))
        and _kind(frame[c]) in ("text", "integer")
        and frame[c].notna().all()
        and not frame[c].duplicated().any()
    ]
    if len(candidates) > 1 and "id" in candidates:
        candidates = ["id"]
    if len(candidates) == 1:
        draft.note(candidates[0], "id", "named like an id, and its values are unique")
        return candidates[0]
    if candidates:
        raise draft.fail(
            f"{path}: columns {', '.join(map(repr, candidates))} could each be the id; choose with "
            + " or ".join(f"--id {c}" for c in candidates)
        )
    raise draft.fail(
        f"{path}: no id column: no column named like an id (id, key, *_id) holds unique values; "
        f"name the column of unique instance ids with --id COLUMN (columns: {', '.join(columns)})"
    )


def _choose_split(draft: _Draft, path: Path, frame: pd.DataFrame, columns: list[str]) -> str | None:
    found = []
    for column in columns:
        if _kind(frame[column]) != "text":
            continue
        values = set(frame[column].dropna().unique().tolist())
        if values and values <= {"train", "val"}:
            found.append(column)
        elif column.lower() == "split":
            other = sorted(values - {"train", "val"})[0]
            raise draft.fail(
                f"{path}: column {column!r} holds {other!r}; a split column holds train and val "
                f"only: fix it, or leave it out with --skip {column}"
            )
    if len(found) > 1:
        raise draft.fail(
            f"{path}: columns {', '.join(map(repr, found))} each hold train/val values; leave all "
            "but the split out with --skip COLUMN"
        )
    if found:
        counts = frame[found[0]].value_counts()
        draft.note(
            found[0],
            "split",
            "train/val values: " + ", ".join(f"{n:,} {s}" for s, n in counts.items()),
        )
        return found[0]
    return None


def _kind(column: pd.Series) -> str:
    """A column's kind: text, integer, float, boolean, empty, or what pandas calls it."""
    if pd.api.types.is_bool_dtype(column.dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(column.dtype):
        return "integer"
    if pd.api.types.is_float_dtype(column.dtype):
        return "float"
    inferred = pd.api.types.infer_dtype(column, skipna=True)
    return {
        "string": "text",
        "boolean": "boolean",
        "integer": "integer",
        "floating": "float",
        "mixed-integer-float": "float",
        "empty": "empty",
    }.get(inferred, inferred)


def _file_columns(
    draft: _Draft,
    path: Path,
    frame: pd.DataFrame,
    folder: Path,
    columns: list[str],
    allow_outside: bool,
) -> dict[str, _Files]:
    """The text columns that name files (most values end in an image or ``.npy`` suffix), with
    what a sample of their files holds; the first one decides ``draft.root``."""
    found: dict[str, _Files] = {}
    known = "|".join(re.escape(s[1:]) for s in (*IMAGE_SUFFIXES, *MAP_SUFFIXES))
    for column in columns:
        values = frame[column]
        if _kind(values) != "text":
            continue
        text = pa.array(values.where(values.notna(), None), pa.string())
        suffixes = pc.extract_regex(pc.utf8_lower(text), rf"\.(?P<s>{known})$")
        named = pc.is_valid(suffixes).to_numpy(zero_copy_only=False)
        if named.sum() * 2 < len(named):
            continue  # text, not paths
        if not named.all():
            row = int(np.flatnonzero(~named)[0])
            raise draft.fail(
                f"{path}: column {column!r} names files, but row {row + 1} holds "
                f"{values.iloc[row]!r}, which is neither an image ({', '.join(IMAGE_SUFFIXES)}) "
                "nor a .npy map"
            )
        kinds = pc.struct_field(suffixes, [0]).to_numpy(zero_copy_only=False)
        is_map = np.isin(kinds, [s[1:] for s in MAP_SUFFIXES])
        if is_map.any() and not is_map.all():
            row = int(np.flatnonzero(is_map != is_map[0])[0])
            raise draft.fail(
                f"{path}: column {column!r} mixes .npy maps and images: row {row + 1} holds "
                f"{values.iloc[row]!r} but row 1 {values.iloc[0]!r}"
            )
        if not allow_outside:
            escaping = pc.match_substring_regex(text, ESCAPING_PATH).to_numpy(zero_copy_only=False)
            if escaping.any():
                row = int(np.flatnonzero(escaping)[0])
                raise draft.fail(
                    f"{path}: column {column!r}: row {row + 1} holds {values.iloc[row]!r}, a path "
                    "that leads outside the data folder (absolute, or through ..); pass "
                    "--allow-outside-paths if the data really lives there"
                )
        root = _base(draft, path, folder, column, values)
        if is_map.all():
            rows = _sample_rows(len(values))
            missing = next(
                (values.iloc[r] for r in rows if not (root / values.iloc[r]).is_file()), None
            )
            if missing is not None:
                raise draft.fail(f"{root / missing}: file not found (column {column!r})")
            found[column] = _Files("map", ".npy maps")
        else:
            paths = [root / v for v in values]
            found[column] = _sample_files(draft, column, paths, masks=False)
    return found


def _base(draft: _Draft, path: Path, folder: Path, column: str, values: pd.Series) -> Path:
    """The folder the table's paths are relative to: the card's folder, else the table's own
    (which the card then names as its ``root``), decided by the first path column's first row;
    it is kept in ``draft.root`` for the other columns."""
    first = values.iloc[0]
    if draft.root is None:
        here = path.resolve().parent
        draft.root = next((b for b in (folder, here) if (b / first).exists()), None)
        if draft.root is None:
            also = "" if here == folder else f", nor relative to the table's folder {here}"
            raise draft.fail(f"{folder / first}: file not found (column {column!r}, row 1){also}")
    elif not (draft.root / first).exists():
        raise draft.fail(f"{draft.root / first}: file not found (column {column!r}, row 1)")
    return draft.root


def _option_task(
    draft: _Draft, frame: pd.DataFrame, option: TaskOption, files: dict[str, _Files]
) -> dict[str, Any]:
    column = option.columns[0]
    if option.type == "regression":
        draft.note(", ".join(option.columns), f"task {option.name}: regression", "--task")
        return {"type": "regression", "columns": list(option.columns)}
    if option.type == "segmentation":
        if column not in files:
            raise OptionError(
                f"--task {option.name}={column}:segmentation: column {column!r} does not name "
                "image files"
            )
        assert draft.root is not None  # set with the file columns
        found = _sample_files(draft, column, [draft.root / v for v in frame[column]], masks=True)
        found = dataclasses.replace(found, why=f"--task; {found.why}")
        task = _dense_task(draft, column, option.name, found)
        return task
    draft.note(column, f"task {option.name}: {option.type}", "--task")
    return {"type": option.type, "column": column}


def _choose_input(
    draft: _Draft,
    frame: pd.DataFrame,
    inputs: list[str],
    images: list[str],
    files: dict[str, _Files],
    columns: list[str],
) -> dict[str, Any]:
    if len(inputs) == 1 and inputs[0] in files and files[inputs[0]].kind in ("image", "mask"):
        draft.note(inputs[0], "input: image", f"--input; {files[inputs[0]].why}")
        return {"type": "image", "column": inputs[0]}
    if inputs:
        bad = next((c for c in inputs if _kind(frame[c]) not in ("integer", "float")), None)
        if bad is not None:
            raise OptionError(
                f"--input {bad!r}: neither a column of images nor a numeric feature column "
                f"(it holds {_kind(frame[bad])} values)"
            )
        draft.note(", ".join(inputs), "input: features", "--input")
        return {"type": "features", "columns": list(inputs)}
    if len(images) == 1:
        draft.note(images[0], "input: image", f"{images[0]!r} names {files[images[0]].why}")
        return {"type": "image", "column": images[0]}
    masks = [c for c in columns if c in files and files[c].kind == "mask"]
    if not images and masks:  # single-channel files with few values and nothing else: which?
        for column in masks:
            draft.note(
                column,
                "ambiguous",
                f"{files[column].why}, and no other column holds images: masks, or the input?",
                [f"--input {column}", f"--task NAME={column}:segmentation with another --input"],
            )
        return {"type": "image", "column": masks[0]}
    if len(images) > 1:
        for column in images:
            draft.note(
                column,
                "ambiguous",
                f"images in {len(images)} columns ({', '.join(images)}): which is the input?",
                [f"--input {c}" for c in images],
            )
        return {"type": "image", "column": images[0]}
    features = [
        c
        for c in columns
        if _kind(frame[c]) in ("integer", "float") and frame[c].nunique(dropna=True) > 1
    ]
    if not features:
        raise draft.fail(
            f"{draft.table}: no input: no column names images and no numeric column could be a "
            "feature; name the input with --input COLUMN"
        )
    for column in features:
        why = "numeric, and the table has no image column"
        if _kind(frame[column]) == "integer" and frame[column].nunique() <= CLASS_LIMIT:
            why += (
                f"; it holds {frame[column].nunique()} distinct integers: if they are classes, "
                f"use --task NAME={column}:classification"
            )
        elif _kind(frame[column]) == "float":
            why += f"; if it is a target, use --task NAME={column}:regression"
        draft.note(column, "input: feature", why)
    return {"type": "features", "columns": features}


def _infer_task(
    draft: _Draft,
    frame: pd.DataFrame,
    column: str,
    files: _Files | None,
    input_spec: dict[str, Any],
    taken: set[str],
) -> tuple[str, dict[str, Any]] | None:
    """The task a column holds, or ``None`` when it is left out (either way, noted)."""
    name = _task_name(column, taken)
    values = frame[column]
    kind = _kind(values)
    if files is not None:
        if files.kind == "map":
            draft.note(column, f"task {name}: dense-regression", files.why)
            return name, {"type": "dense-regression", "column": column}
        if files.kind == "mask":
            return name, _dense_task(draft, column, name, files)
        return None  # images: the input, or noted as left out
    distinct = int(values.nunique(dropna=True))
    rows = len(values)
    if distinct < 2:
        why = f"a single value ({values.dropna().iloc[0]!r}) is no label" if distinct else "empty"
        draft.note(column, "left out", why)
        return None
    if kind == "boolean":
        draft.note(column, f"task {name}: classification", "true/false values")
        return name, {"type": "classification", "column": column}
    if kind == "text":
        if distinct == rows:
            draft.note(
                column,
                "left out",
                "a different text in every row: an identifier or free text, not a label "
                f"(--task NAME={column}:classification to use it)",
            )
            return None
        if distinct * 2 <= rows:
            draft.note(column, f"task {name}: classification", f"text: {distinct} classes")
            return name, {"type": "classification", "column": column}
        draft.note(
            column,
            "ambiguous",
            f"text with {distinct} distinct values in {rows} rows",
            [f"--task {name}={column}:classification", f"--skip {column}"],
        )
        return None
    if kind == "integer":
        if distinct <= CLASS_LIMIT and distinct * 2 <= rows:
            draft.note(
                column,
                f"task {name}: classification",
                f"integers with few distinct values ({distinct})",
            )
            return name, {"type": "classification", "column": column}
        draft.note(
            column,
            "ambiguous",
            f"integers with {distinct} distinct values in {rows} rows (classes, or a quantity)",
            [
                f"--task {name}={column}:classification",
                f"--task {name}={column}:regression",
                f"--skip {column}",
            ],
        )
        return None
    if kind == "float":
        draft.note(column, f"task {name}: regression", "floating-point values")
        return name, {"type": "regression", "columns": [column]}
    draft.note(column, "left out", f"{kind} values: not a label type ilt-audit reads")
    return None


def _task_name(column: str, taken: set[str]) -> str:
    """A task name (``[a-z0-9_-]+``) from a column name, unique among ``taken``."""
    base = re.sub(r"[^a-z0-9_-]+", "_", column.lower()).strip("_") or "task"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    return name
