"""Paired folders of images and masks (``images/`` and ``masks/``, ``img/`` and ``ann/``,
``JPEGImages/`` and ``SegmentationClass/`` …) whose files pair up by stem: one segmentation task
with the classes counted from the masks."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ilt_audit.dataset.layouts.draft import Draft
from ilt_audit.dataset.layouts.folders import ids, suffix, walk
from ilt_audit.dataset.layouts.sampling import IMAGE_SUFFIXES, dense_task, first_size, sample_files


def read_paired(
    draft: Draft,
    path: Path,
    folder: Path,
    images: str,
    masks: str,
    dirs: list[str],
    files: list[str],
) -> None:
    image_files, hidden = walk(folder / images)
    mask_files, hidden_masks = walk(folder / masks)
    for sub, found in ((images, image_files), (masks, mask_files)):
        bad = next((f for f in found if suffix(f) not in IMAGE_SUFFIXES), None)
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
    frame.insert(0, "id", ids(frame["mask"].str.slice(len(masks) + 1)))
    draft.note("id", "id", f"each mask's path in {masks}/, without its suffix")
    draft.note("image", "input: image", first_size(folder / rows[0][0]))
    sampled = sample_files(draft, f"{masks}/", [folder / m for _, m in rows], masks=True)
    task = dense_task(draft, "mask", "seg", sampled)
    draft.card.update(
        {"id": "id", "input": {"type": "image", "column": "image"}, "tasks": {"seg": task}}
    )
    draft.manifest = frame


def _stem(name: str) -> str:
    return os.path.splitext(name)[0]
