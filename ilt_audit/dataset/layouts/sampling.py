"""Reading a bounded sample of a layout's files: what a column (or folder) of files holds.

Files are opened with Pillow (:func:`open_image`), which refuses a header that claims more than
:data:`~ilt_audit.dataset.card.MAX_PIXELS` pixels before decoding. Of a column's files
:data:`SAMPLE` at most are read, evenly spaced (:func:`sample_rows`), never all of a large data
set; :func:`sample_files` says what they hold (colour images, masks and their values, or maps)
and :func:`dense_task` counts a segmentation task's classes from the mask values seen.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ilt_audit.dataset.card import MAX_PIXELS
from ilt_audit.dataset.layouts.draft import Draft, LayoutError

# What Pillow (ilt-audit's decoder) reads of torchvision's IMG_EXTENSIONS.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
MAP_SUFFIXES = (".npy",)  # dense-regression maps besides 16-bit PNGs
SAMPLE = 100  # files read per path column: all of them up to this many, else an even sample
MASK_VALUES = 64  # a single-channel 8-bit column with at most this many values holds masks
_COLOUR_MODES = ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LA", "PA", "LAB", "HSV", "1")
_WIDE_MODES = ("I", "F")  # 16- or 32-bit single channel (I;16 and its kin start with "I")


@dataclass(frozen=True)
class Files:
    """What a sample of a path column's files holds."""

    kind: str  # "image", "mask" or "map"
    why: str
    values: tuple[int, ...] = ()  # masks: the values seen


def open_image(path: Path) -> Any:
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


def sample_rows(n: int) -> np.ndarray:
    """Row positions of the files to read: all up to :data:`SAMPLE`, else evenly spaced."""
    if n <= SAMPLE:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, SAMPLE).round().astype(int))


def sample_files(draft: Draft, subject: str, paths: list[Path], *, masks: bool) -> Files:
    """Read the files at :func:`sample_rows`: colour images, single-channel masks (their
    values), or 16-bit maps. ``masks``: a masks folder, every single-channel file a mask."""
    rows = sample_rows(len(paths))
    modes: dict[str, Path] = {}
    values: set[int] = set()
    for row in rows:
        file = paths[row]
        try:
            with open_image(file) as img:
                mode = img.mode
                modes.setdefault(mode, file)
                if mode in ("L", "P") or (masks and mode not in _COLOUR_MODES):
                    values.update(np.unique(np.asarray(img)).tolist())
        except FileNotFoundError:
            raise draft.fail(f"{file}: file not found") from None
        except (OSError, ValueError) as exc:
            raise draft.fail(f"{file}: cannot read it as an image ({exc})") from None
    read = _read_text(len(rows), len(paths))
    colour = [m for m in modes if m in _COLOUR_MODES]
    wide = [m for m in modes if m.startswith(_WIDE_MODES)]
    if masks:
        if colour:
            raise draft.fail(
                f"{modes[colour[0]]}: a {colour[0]} mask; a mask is a single-channel PNG of class "
                "indices (8-bit grey or palette): convert its colours to indices"
            )
        return Files("mask", f"single-channel files ({read})", tuple(sorted(values)))
    if colour and wide:
        raise draft.fail(
            f"{modes[wide[0]]}: a {wide[0]} file in a column ({subject}) of {colour[0]} images"
        )
    if colour:
        return Files("image", f"{', '.join(sorted(modes))} images ({read})")
    if wide:
        return Files("map", f"{', '.join(sorted(modes))} single-channel maps ({read})")
    if len(values) <= MASK_VALUES:
        return Files(
            "mask",
            f"single-channel files holding {len(values)} distinct small integers ({read})",
            tuple(sorted(values)),
        )
    return Files(
        "image", f"greyscale images: {len(values)} distinct values, not class indices ({read})"
    )


def _read_text(read: int, total: int) -> str:
    if read == total:
        return f"all {read:,} files read"
    return f"a sample of {read:,} of {total:,} files read, evenly spaced"


@dataclass(frozen=True)
class Record:
    """One record of a dataset whose layout names its files: its id (the image's stem), its
    image and one label file."""

    id: str
    image: Path
    label: Path


def sample_labels(
    draft: Draft,
    field: str,
    records: Sequence[Record],
    *,
    modes: Collection[str],
    kind: str,
    allowed: Collection[int] | None = None,
    outside: str = "",
) -> tuple[tuple[int, ...], str]:
    """Read the label files of the records at :func:`sample_rows`: each must be of one of
    ``modes`` (``kind`` says what that is), have its image's size (from the image's header) and,
    given ``allowed``, hold only those values (``outside`` says why another is refused, with
    ``{value}``). Returns the values seen (with ``allowed``) and what was read. The training pass
    checks every file's size and values again (:mod:`ilt_audit.dataset.files`)."""
    values: set[int] = set()
    rows = sample_rows(len(records))
    for row in rows:
        record = records[row]
        try:
            with open_image(record.image) as img:
                size = img.size
        except (OSError, ValueError) as exc:
            raise draft.fail_record(
                record.image, record.id, "image", f"cannot read it as an image ({exc})"
            ) from None
        try:
            with open_image(record.label) as img:
                if img.mode not in modes:
                    raise draft.fail_record(
                        record.label, record.id, field, f"a {img.mode} image, not {kind}"
                    )
                if img.size != size:
                    raise draft.fail_record(
                        record.label,
                        record.id,
                        field,
                        f"{img.size[1]}x{img.size[0]}, but its image {record.image.name} is "
                        f"{size[1]}x{size[0]}",
                    )
                if allowed is not None:
                    found = np.unique(np.asarray(img)).tolist()
                    bad = [v for v in found if v not in allowed]
                    if bad:
                        why = outside.format(value=bad[0])
                        raise draft.fail_record(record.label, record.id, field, why)
                    values.update(found)
        except (OSError, ValueError) as exc:
            raise draft.fail_record(
                record.label, record.id, field, f"cannot read it as an image ({exc})"
            ) from None
    return tuple(sorted(values)), _read_text(len(rows), len(records))


def dense_task(draft: Draft, column: str, name: str, found: Files) -> dict[str, Any]:
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


def first_size(image: Path) -> str:
    try:
        with open_image(image) as img:
            width, height = img.size
    except (OSError, ValueError) as exc:
        raise LayoutError(f"{image}: cannot read the image ({exc})") from None
    return f"the first image is {height}x{width}: training resizes every image to that size"
