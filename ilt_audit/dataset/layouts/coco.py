"""A COCO instances layout: ``annotations/instances_<split>.json`` beside its image folders,
read into three tasks derived from the annotations, the masks rasterised once beside the card.

What is read of each file (the format: cocodataset.org/#format-data): ``images`` (``id``,
``file_name``, ``width``, ``height``), ``annotations`` (``id``, ``image_id``, ``category_id``,
``segmentation`` as polygons or RLE, ``iscrowd``) and ``categories`` (``id``, ``name``). Every
field is checked here before pycocotools decodes anything (it asserts, or reads past its buffers,
on bad input), so that a bad file stops with the file, the record and the field named. The tasks:

- ``seg``: a semantic mask per image (:func:`_paint`): the category ids become the classes
  1..C in id order, 0 is the background, crowd regions (``iscrowd`` 1) are 255, the ignore index;
  where objects overlap, the smaller is on top;
- ``count``: the objects in each image (regression), crowd annotations not counted;
- ``categories``: the categories present in each image, crowd ones too: a ``multi-label`` task
  once this version's cards know that type, a manifest column until then.

The masks are PNGs in ``<card stem>.masks/`` beside the card, written in a hidden folder that is
renamed into place with the card, or removed
(:class:`~ilt_audit.dataset.layouts.draft.DerivedFolder`); the images are never copied.

Example:
    >>> init_card("data/coco", out="data/coco.toml")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ilt_audit.dataset.card import ESCAPING_PATH, MAX_PIXELS
from ilt_audit.dataset.derived import file_stem, save_png
from ilt_audit.dataset.layouts.draft import (
    DerivedFolder,
    Draft,
    LayoutError,
    relative,
    size_text,
)
from ilt_audit.dataset.layouts.folders import suffix
from ilt_audit.dataset.layouts.sampling import IMAGE_SUFFIXES, first_size, open_image, sample_rows
from ilt_audit.internal.console import track

ANNOTATIONS = "annotations"  # the folder of the instances files, beside the image folders
INSTANCES = "instances_*.json"
CROWD = 255  # the ignore index: crowd regions carry no per-pixel class
MAX_CATEGORIES = 254  # an 8-bit mask: 0 background, 1..254 the categories, 255 crowd
SEPARATORS = ("|", ";", "/", "+")  # of the categories column: the first no category name holds
FORMAT = "a JSON object with 'images', 'annotations' and 'categories' lists (cocodataset.org/#format-data)"
_NONE = object()  # no value to quote


@dataclass
class _Image:
    id: int
    file_name: str
    width: int
    height: int
    objects: list[tuple[int, int, bool, Any]] = field(default_factory=list)
    # (annotation id, category id, crowd, segmentation), every field checked


@dataclass
class _Source:
    """One instances file and the images it names."""

    file: Path
    name: str  # what follows ``instances_``: "train2017"
    images: list[_Image]
    categories: dict[int, str]  # id -> name
    split: str = ""  # "train" or "val" when several files give the split
    folder: Path | None = None  # its image folder, resolved


def coco_files(path: Path) -> list[Path] | None:
    """The COCO instances files ``path`` names: a ``.json`` file itself, or the
    ``annotations/instances_*.json`` files of a folder; None for another layout."""
    if path.is_file():
        return [path] if path.suffix.lower() == ".json" else None
    found = sorted((path / ANNOTATIONS).glob(INSTANCES)) if (path / ANNOTATIONS).is_dir() else []
    return found or None


def masks_folder(out: Path) -> Path:
    """Where a COCO card's masks go: ``<card stem>.masks/`` beside it."""
    return out.with_name(f"{out.stem}.masks")


def read_coco(
    draft: Draft,
    path: Path,
    files: list[Path],
    card_folder: Path,
    masks: Path,
    images: Path | None,
) -> None:
    """Check the instances files, find their image folders, make the manifest and rasterise
    the masks into a hidden folder beside the card (``draft.derived``)."""
    sources = [_read_source(draft, file) for file in files]
    categories = _categories(draft, sources)
    used = _splits(draft, path, sources, categories)
    for source in used:
        source.folder = _image_folder(draft, source, images)
        _check_files(draft, source)
        _note_source(draft, path, source, images)
    _check_sizes(draft, used)
    placed = card_folder / masks.name  # resolved: the manifest's paths lead there
    _check_masks_folder(draft, placed, used)
    names = [categories[cid] for cid in sorted(categories)]
    separator = next((s for s in SEPARATORS if not any(s in name for name in names)), None)
    if separator is None:
        raise draft.fail(
            f"{files[0]}: the category names hold each of {' '.join(SEPARATORS)}, one of which "
            "must separate them in the manifest's categories column; rename a category"
        )
    classes = {cid: c for c, cid in enumerate(sorted(categories), start=1)}  # 0 the background
    several = len(used) > 1
    draft.root = Path(os.path.commonpath([card_folder, *(s.folder for s in used if s.folder)]))
    rows = []
    for source in used:
        assert source.folder is not None
        prefix = relative(source.folder, draft.root)
        for image in source.images:
            name = f"{file_stem(source.name)}/{image.id}" if several else str(image.id)
            present = sorted({classes[cid] for _, cid, _, _ in image.objects})
            rows.append(
                {
                    "id": name,
                    "image": image.file_name if prefix == "." else f"{prefix}/{image.file_name}",
                    "mask": f"{relative(placed, draft.root)}/{name}.png",
                    "count": sum(not crowd for _, _, crowd, _ in image.objects),
                    "categories": separator.join(names[c - 1] for c in present),
                    "split": source.split,
                }
            )
    frame = pd.DataFrame(rows)
    draft.note(
        "id",
        "id",
        f"the instances file's name and the COCO image id (e.g. {frame['id'].iloc[0]})"
        if several
        else "the COCO image id",
    )
    first = used[0]
    assert first.folder is not None
    draft.note("image", "input: image", first_size(first.folder / first.images[0].file_name))
    draft.card.update(
        {
            "id": "id",
            "input": {"type": "image", "column": "image"},
            "tasks": _tasks(draft, names, separator),
        }
    )
    if several:
        draft.card["split"] = "split"
        counts = frame["split"].value_counts()
        draft.note(
            "split",
            "split",
            "the instances files' names: "
            + ", ".join(f"{counts.get(s, 0):,} {s}" for s in ("train", "val"))
            + " images",
        )
    else:
        frame = frame.drop(columns="split")
    draft.manifest = frame
    draft.source = path
    draft.derived.append(_rasterise(draft, used, classes, masks, several))


def _tasks(draft: Draft, names: list[str], separator: str) -> dict[str, Any]:
    """The card's tasks: ``seg``, ``count`` and ``categories``."""
    shown = ", ".join(f"{c} {n}" for c, n in enumerate(names[:10], start=1))
    draft.note(
        "mask",
        "task seg: segmentation",
        f"{len(names) + 1} classes: 0 the background, 1..{len(names)} the categories in id order "
        f"({shown}{', …' if len(names) > 10 else ''}); crowd regions (iscrowd 1) are {CROWD}, "
        "ignore_index; where objects overlap, the smaller is on top",
    )
    draft.note(
        "count",
        "task count: regression",
        "the objects in each image; crowd annotations (iscrowd 1) are not counted",
    )
    tasks: dict[str, Any] = {
        "seg": {
            "type": "segmentation",
            "column": "mask",
            "classes": len(names) + 1,
            "ignore_index": CROWD,
        },
        "count": {"type": "regression", "columns": ["count"]},
    }
    tasks["categories"] = {"type": "multi-label", "column": "categories", "classes": names}
    if separator != "|":
        tasks["categories"]["separator"] = separator
    draft.note(
        "categories",
        "task categories: multi-label",
        f"the categories present in each image, crowd ones too, {separator!r}-separated: "
        f"{len(names)} classes",
    )
    return tasks


# --- reading and checking the files ---------------------------------------------------------


def _fail(
    draft: Draft, file: Path, record: str, key: str, why: str, value: Any = _NONE
) -> LayoutError:
    """The error for one field of one record: the file, the record, the field and the value."""
    text = f"{file}: {record}: field {key!r}: {why}"
    if value is not _NONE:
        shown = repr(value)
        text += f" (value: {shown if len(shown) <= 60 else shown[:59] + '…'})"
    return draft.fail(text)


def _records(
    draft: Draft, file: Path, entries: list[Any], key: str, what: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Each entry of the list ``key`` (``images``, ``annotations``, ``categories``) with its
    id: an object whose ``id`` is an integer, unique in the list."""
    seen: set[int] = set()
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise draft.fail(f"{file}: {key}[{n}]: not a JSON object (value: {entry!r:.60})")
        found = entry.get("id")
        if not _is_int(found):
            raise _fail(draft, file, f"{key}[{n}]", "id", f"{what} ids are integers", found)
        if found in seen:
            raise _fail(draft, file, f"{what} id {found}", "id", f"a second {what} with this id")
        seen.add(found)
        yield found, entry


def _is_int(value: Any) -> bool:
    return type(value) is int  # not a bool, not 3.0


def _is_number(value: Any) -> bool:
    """An int (of any size: the bounds check follows) or a finite float; not a bool or text."""
    return type(value) is int or (type(value) is float and math.isfinite(value))


def _read_source(draft: Draft, file: Path) -> _Source:
    try:
        raw = json.loads(file.read_bytes())
    except json.JSONDecodeError as exc:
        raise draft.fail(
            f"{file}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); a COCO "
            f"instances file is {FORMAT}"
        ) from None
    except (ValueError, RecursionError) as exc:  # not UTF-8, nested too deeply
        raise draft.fail(f"{file}: not a COCO instances file: {exc}") from None
    except OSError as exc:
        raise draft.fail(f"{file}: cannot read it: {exc.strerror or exc}") from None
    if not isinstance(raw, dict):
        raise draft.fail(
            f"{file}: not a COCO instances file: {FORMAT}, not a JSON {type(raw).__name__}"
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(raw.get(key), list):
            why = f"no {key!r} list" if key not in raw else f"{key!r} is not a list"
            raise draft.fail(f"{file}: not a COCO instances file: {why}; it is {FORMAT}")
    if not raw["images"]:
        raise draft.fail(f"{file}: the 'images' list is empty")
    name = file.stem.removeprefix("instances_")
    images = _images(draft, file, raw["images"])
    source = _Source(file, name, images, _category_list(draft, file, raw["categories"]))
    _annotations(draft, file, raw["annotations"], source)
    return source


def _images(draft: Draft, file: Path, entries: list[Any]) -> list[_Image]:
    images: dict[int, _Image] = {}
    for image_id, entry in _records(draft, file, entries, "images", "image"):
        record = f"image id {image_id}"
        file_name = entry.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            raise _fail(
                draft, file, record, "file_name", "expected the image's file name", file_name
            )
        if re.search(ESCAPING_PATH, file_name):
            raise _fail(
                draft,
                file,
                record,
                "file_name",
                "the path leads outside the image folder (absolute, or through '..')",
                file_name,
            )
        if suffix(file_name) not in IMAGE_SUFFIXES:
            raise _fail(
                draft,
                file,
                record,
                "file_name",
                f"not an image file ({', '.join(IMAGE_SUFFIXES)})",
                file_name,
            )
        for key in ("width", "height"):
            if not _is_int(entry.get(key)) or entry[key] < 1:
                raise _fail(draft, file, record, key, "expected a positive integer", entry.get(key))
        if entry["width"] * entry["height"] > MAX_PIXELS:
            raise _fail(
                draft,
                file,
                record,
                "width",
                f"{entry['width']}x{entry['height']} is more than the {MAX_PIXELS:,} pixels an "
                "image may have",
            )
        images[image_id] = _Image(image_id, file_name, entry["width"], entry["height"])
    return sorted(images.values(), key=lambda image: image.id)


def _category_list(draft: Draft, file: Path, entries: list[Any]) -> dict[int, str]:
    categories: dict[int, str] = {}  # names are checked to differ with every file's (_categories)
    for cid, entry in _records(draft, file, entries, "categories", "category"):
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _fail(draft, file, f"category id {cid}", "name", "expected a name", name)
        categories[cid] = name.strip()  # a tag of the categories column is read trimmed
    if not categories:
        raise draft.fail(f"{file}: the 'categories' list is empty")
    return categories


def _annotations(draft: Draft, file: Path, entries: list[Any], source: _Source) -> None:
    images = {image.id: image for image in source.images}
    categories = source.categories
    for aid, entry in _records(draft, file, entries, "annotations", "annotation"):
        image_id = entry.get("image_id")
        if not _is_int(image_id) or image_id not in images:
            why = "no image has this id" if _is_int(image_id) else "an image id is an integer"
            raise _fail(draft, file, f"annotation id {aid}", "image_id", why, image_id)
        record = f"annotation id {aid} (image id {image_id})"
        cid = entry.get("category_id")
        if not _is_int(cid) or cid not in categories:
            why = "not in 'categories'" if _is_int(cid) else "a category id is an integer"
            raise _fail(draft, file, record, "category_id", why, cid)
        crowd = entry.get("iscrowd", 0)  # some exporters leave it out: not a crowd
        if crowd not in (0, 1) or isinstance(crowd, float):
            raise _fail(draft, file, record, "iscrowd", "expected 0 or 1", crowd)
        image = images[image_id]
        problem = _segmentation_problem(entry.get("segmentation"), image.height, image.width)
        if problem is not None:
            raise _fail(draft, file, record, *problem)
        image.objects.append((aid, cid, bool(crowd), entry["segmentation"]))


def _segmentation_problem(segmentation: Any, height: int, width: int) -> tuple[str, str] | None:
    """``(field, why)`` when ``segmentation`` is not what pycocotools decodes safely: polygons
    (lists of at least 3 x, y points near the image) or RLE of the image's size."""
    if isinstance(segmentation, list):
        if not segmentation:
            return "segmentation", "an empty list: no polygon"
        for k, polygon in enumerate(segmentation):
            if not isinstance(polygon, list) or not all(map(_is_number, polygon)):
                return "segmentation", f"polygon {k} is not a list of finite numbers"
            if len(polygon) % 2:
                return "segmentation", (
                    f"polygon {k} has an odd number of coordinates ({len(polygon)}); a polygon "
                    "is x, y pairs"
                )
            if len(polygon) < 6:
                return "segmentation", (
                    f"polygon {k} has {len(polygon) // 2} points; a polygon needs at least 3"
                )
            xs, ys = polygon[0::2], polygon[1::2]
            if min(xs) < -width or max(xs) > 2 * width or min(ys) < -height or max(ys) > 2 * height:
                return "segmentation", f"polygon {k} lies far outside the {width}x{height} image"
        return None
    if not (isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation):
        return "segmentation", (
            "neither polygons (a list of lists of x, y numbers) nor RLE (an object with "
            "'counts' and 'size')"
        )
    if segmentation["size"] != [height, width] or not all(map(_is_int, segmentation["size"])):
        return "segmentation.size", (
            f"{segmentation['size']!r:.40} is not the image's [height, width] [{height}, {width}]"
        )
    counts = segmentation["counts"]
    if isinstance(counts, list):
        if not all(_is_int(c) and c >= 0 for c in counts):
            return "segmentation.counts", "RLE run lengths are non-negative integers"
        runs = counts
    elif isinstance(counts, str):
        runs = _compressed_runs(counts)
        if runs is None or any(c < 0 for c in runs):
            return "segmentation.counts", "not a COCO compressed RLE string"
    else:
        return "segmentation.counts", "neither a list of run lengths nor a compressed RLE string"
    if sum(runs) != height * width:
        return "segmentation.counts", (
            f"the runs cover {sum(runs):,} pixels, not the image's {height * width:,}"
        )
    return None


def _compressed_runs(text: str) -> list[int] | None:
    """The run lengths a COCO compressed RLE string holds (pycocotools' ``rleFrString``: 5 bits
    a character from '0', a continuation bit, a sign bit, each run after the second a
    difference), or None when the text is not one."""
    runs: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position == len(text) or shift == 35:  # cut short, or beyond a C long's bits
                return None
            c = ord(text[position]) - 48
            if not 0 <= c < 64:
                return None
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            position += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _categories(draft: Draft, sources: list[_Source]) -> dict[int, str]:
    """The categories of every file: one id names one category in all of them, and no two
    categories share a name (they become class names)."""
    found: dict[int, tuple[str, Path]] = {}
    for source in sources:
        for cid, name in source.categories.items():
            if cid in found and found[cid][0] != name:
                raise _fail(
                    draft,
                    source.file,
                    f"category id {cid}",
                    "name",
                    f"{found[cid][1]} names this category {found[cid][0]!r}; one id names one "
                    "category in every file",
                    name,
                )
            found.setdefault(cid, (name, source.file))
    if len(found) > MAX_CATEGORIES:
        raise draft.fail(
            f"{sources[0].file}: {len(found)} categories; a mask holds at most "
            f"{MAX_CATEGORIES} beside the background (0) and crowd regions ({CROWD})"
        )
    by_name: dict[str, int] = {}
    for cid, (name, file) in found.items():
        if name in by_name:
            raise _fail(
                draft,
                file,
                f"category id {cid}",
                "name",
                f"the name of category id {by_name[name]} too; class names must differ",
                name,
            )
        by_name[name] = cid
    return {cid: name for cid, (name, _) in found.items()}


def _splits(
    draft: Draft, path: Path, sources: list[_Source], categories: dict[int, str]
) -> list[_Source]:
    """The files read: one alone, or the ``train*`` (trained on) and ``val*`` (held out) ones."""
    left_out = []
    if len(sources) > 1:
        for source in sources:
            found = (s for s in ("train", "val") if source.name.lower().startswith(s))
            source.split = next(found, "")
            if not source.split:
                left_out.append(source)
        if not any(s.split == "train" for s in sources):
            raise draft.fail(
                f"{path}: no instances_train*.json among "
                f"{', '.join(s.file.name for s in sources)}; several instances files give the "
                "split (train* trained on, val* held out): init one of them alone instead"
            )
    used = [s for s in sources if s not in left_out]
    draft.note(
        str(path),
        "COCO instances",
        (f"{len(used)} of {len(sources)} instances files read, " if len(sources) > 1 else "")
        + f"{len(categories)} categories; three tasks derived from the annotations: seg, "
        "count, categories",
    )
    for source in left_out:
        draft.note(
            _shown_path(source.file, path),  # a folder's files
            "left out",
            "neither train* nor val*: several files give the split by their names, train* "
            "trained on and val* held out",
        )
    return used


def _shown_path(file: Path, folder: Path) -> str:
    """``file`` as the table shows it: relative to ``folder`` when inside it."""
    inside = file.resolve().is_relative_to(folder.resolve())
    return relative(file.resolve(), folder.resolve()) if inside else str(file)


def _base(file: Path) -> Path:
    """The dataset's folder: the one that holds ``annotations/`` (or else the file's own)."""
    return file.parent.parent if file.parent.name == ANNOTATIONS else file.parent


def _image_folder(draft: Draft, source: _Source, given: Path | None) -> Path:
    """The folder ``file_name`` is relative to: ``--images``, else ``<split>/`` or
    ``<split>2017/`` beside ``annotations/`` (or under ``images/``), the first that holds the
    first image."""
    first = source.images[0]
    if given is not None:
        return given.resolve()
    base = _base(source.file)
    names = [source.name] + ([f"{source.name}2017"] if not source.name[-1:].isdigit() else [])
    candidates = [base / n for n in names] + [base / "images" / n for n in names]
    for folder in dict.fromkeys([*candidates, base / "images", base]):
        if (folder / first.file_name).is_file():
            return folder.resolve()
    looked = ", ".join(f"{relative(c.resolve(), base.resolve())}/" for c in candidates)
    raise _fail(
        draft,
        source.file,
        f"image id {first.id}",
        "file_name",
        f"no image folder holds it (looked in {looked}, images/ and the folder itself, in "
        f"{base}); name the folder with --images FOLDER",
        first.file_name,
    )


def _check_files(draft: Draft, source: _Source) -> None:
    """Every image's file is there (one ``stat`` each; the training pass decodes them all)."""
    assert source.folder is not None
    for image in source.images:
        if not (source.folder / image.file_name).is_file():
            raise _fail(
                draft,
                source.file,
                f"image id {image.id}",
                "file_name",
                f"file not found in {source.folder}",
                image.file_name,
            )


def _check_sizes(draft: Draft, sources: list[_Source]) -> None:
    """An evenly spaced sample of the images has the size its entry says (masks are drawn at
    that size, and must have their image's size)."""
    every = [(s, image) for s in sources for image in s.images]
    for row in sample_rows(len(every)):
        source, image = every[row]
        assert source.folder is not None
        try:
            with open_image(source.folder / image.file_name) as img:
                width, height = img.size
        except (OSError, ValueError) as exc:
            raise _fail(
                draft,
                source.file,
                f"image id {image.id}",
                "file_name",
                f"cannot read the image ({exc})",
                image.file_name,
            ) from None
        if (width, height) != (image.width, image.height):
            raise _fail(
                draft,
                source.file,
                f"image id {image.id}",
                "width" if width != image.width else "height",
                f"the file {image.file_name!r} is {width}x{height} (width x height), the entry "
                f"says {image.width}x{image.height}",
            )


def _check_masks_folder(draft: Draft, masks: Path, sources: list[_Source]) -> None:
    """The masks folder (replaced by ``--force``) holds no image folder or instances file."""
    for source in sources:
        for inside in (source.folder, source.file.resolve()):
            assert inside is not None
            if inside == masks or inside.is_relative_to(masks):
                raise draft.fail(
                    f"{masks}: the masks folder of this card would hold {inside}, which it "
                    "replaces; give --out another name"
                )


def _note_source(draft: Draft, path: Path, source: _Source, given: Path | None) -> None:
    assert source.folder is not None
    crowds = [crowd for image in source.images for _, _, crowd, _ in image.objects]
    empty = sum(not image.objects for image in source.images)
    folder = _shown_path(source.folder, _base(source.file))
    draft.note(
        _shown_path(source.file, path) if path.is_dir() else str(path),
        f"split: {source.split}" if source.split else "images and annotations",
        f"{len(source.images):,} images in {folder}"
        + (" (--images)" if given is not None else "")
        + (f", {empty:,} of them without objects" if empty else "")
        + f"/; {len(crowds):,} annotations, {sum(crowds):,} of them crowd regions",
    )


# --- the masks ----------------------------------------------------------------------------


def _rasterise(
    draft: Draft,
    sources: list[_Source],
    classes: dict[int, int],
    masks: Path,
    several: bool,
) -> DerivedFolder:
    """Every image's mask as a PNG in a hidden folder beside ``masks``, removed on an error."""
    staging = masks.with_name(f".{masks.name}.init-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    files = size = 0
    try:
        staging.mkdir()
        work = [(s, image) for s in sources for image in s.images]
        with warnings.catch_warnings():
            # pycocotools' decode passes numpy 2 a copy keyword its own arrays do not take
            warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
            for source, image in track(work, "Rasterising masks", total=len(work)):
                folder = staging / file_stem(source.name) if several else staging
                folder.mkdir(exist_ok=True)
                target = folder / f"{image.id}.png"
                save_png(_paint(image, classes), np.uint8, target)
                files += 1
                size += target.stat().st_size
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    draft.note(
        f"{masks.name}/",
        "masks, rasterised once",
        f"{files:,} PNG masks, {size_text(size)} on disk, beside the card: written with it, "
        "read by every run (the images are not copied)",
    )
    return DerivedFolder(masks, staging, files, size)


def _paint(image: _Image, classes: dict[int, int]) -> np.ndarray:
    """The image's semantic mask: (H, W) uint8. Crowd regions first, as 255; then the objects,
    each as its class, the largest first, so that where objects overlap the smaller one is on
    top (a cup on a table stays a cup) and an object on a crowd region keeps its class; of two
    objects the same size, the later annotation id."""
    from pycocotools import mask as coco_mask

    crowds, objects = [], []
    for aid, cid, crowd, segmentation in image.objects:
        rle = _rle(segmentation, image.height, image.width)
        if crowd:
            crowds.append((CROWD, rle))
        else:
            objects.append((-int(coco_mask.area(rle)), aid, classes[cid], rle))
    objects.sort(key=lambda o: o[:2])
    mask = np.zeros((image.height, image.width), dtype=np.uint8, order="F")  # (H, W) as decoded
    for value, rle in [*crowds, *((value, rle) for _, _, value, rle in objects)]:
        np.copyto(mask, value, where=coco_mask.decode(rle).view(bool))  # decode gives 0 or 1
    return mask


def _rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """A checked segmentation as compressed RLE, as pycocotools' ``annToRLE`` makes it."""
    from pycocotools import mask as coco_mask

    if isinstance(segmentation, list):  # polygons: one object may be several parts
        return coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):  # uncompressed RLE
        return coco_mask.frPyObjects(segmentation, height, width)
    return segmentation  # compressed RLE
