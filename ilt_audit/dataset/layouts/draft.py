"""The draft card a layout builds, and writing it: checked before it is put in place.

A format's reader fills a :class:`Draft`: the card's TOML document, the manifest it made (folder
layouts) or the user's table, the folder the paths are relative to, the folders of files it
derived from the data (a COCO layout's masks, written under a temporary name: a
:class:`DerivedFolder`), and every decision as an :class:`Inference`; a layout it cannot read
raises :class:`LayoutError` with the decisions so far. :func:`write` writes the card (and
manifest) under temporary names, puts the derived folders in place, checks it all with
:func:`~ilt_audit.dataset.opening.open_dataset` and renames the card and manifest into place; on
an error the derived folders are taken away again (and the ones they replaced put back).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ilt_audit.dataset.opening import open_dataset
from ilt_audit.errors import CardError
from ilt_audit.internal.files import atomic_path, write_atomic
from ilt_audit.internal.toml import toml_dumps, toml_string


@dataclass(frozen=True)
class Inference:
    """One decision about the layout: a column (or folder), what it became, and why."""

    subject: str  # a column of the table, or a folder of the layout
    decision: str  # e.g. "id", "input: image", "task seg: segmentation", "split", "left out"
    why: str
    choices: tuple[str, ...] = ()  # an ambiguous subject: the options that would settle it


@dataclass(frozen=True)
class DerivedFolder:
    """A folder of files a layout derives from the data, beside the card (a COCO layout's masks):
    written in ``staging`` and renamed to ``path`` with the card, or not at all."""

    path: Path
    staging: Path  # a hidden sibling of ``path``, removed whatever happens
    files: int
    size: int  # bytes, the files' sizes summed

    @property
    def summary(self) -> str:
        return f"{self.files:,} files of {size_text(self.size)}"


@dataclass(frozen=True)
class InitResult:
    """What :func:`~ilt_audit.dataset.layouts.init_card` wrote and every decision behind it."""

    card: Path
    manifest: Path | None  # the manifest written beside the card (folder layouts)
    layout: str  # "table", "saved" (a save_to_disk folder), "imagefolder", "paired",
    # "cityscapes", "voc" or "coco"
    inferences: tuple[Inference, ...]
    derived: tuple[DerivedFolder, ...] = ()  # folders written beside the card (COCO's masks)


class LayoutError(CardError):
    """A layout that cannot be read into a card, ambiguous or bad; holds the decisions so far."""

    def __init__(self, message: str, inferences: Sequence[Inference] = ()) -> None:
        super().__init__(message)
        self.inferences = tuple(inferences)


@dataclass
class Draft:
    """A card before it is written: its TOML document, its manifest (folder layouts) or the
    user's table, and the decisions so far."""

    layout: str
    notes: list[Inference] = field(default_factory=list)
    card: dict[str, Any] = field(default_factory=dict)
    manifest: pd.DataFrame | None = None
    table: Path | None = None  # the user's table, which the card points at
    source: Path | None = None  # the table or folder the card was read from
    root: Path | None = None  # the folder the paths are relative to, once known (resolved)
    derived: list[DerivedFolder] = field(default_factory=list)  # written beside the card

    def note(self, subject: str, decision: str, why: str, choices: Sequence[str] = ()) -> None:
        self.notes.append(Inference(subject, decision, why, tuple(choices)))

    def fail(self, message: str) -> LayoutError:
        return LayoutError(message, self.notes)

    def fail_record(self, file: Path, record: str, field: str, why: str) -> LayoutError:
        """A malformed file of one record: the file, the record (its image's stem) and the field
        (the manifest column it would fill)."""
        return self.fail(f"{file}: record {record!r}: field {field!r}: {why}")


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
    return root.as_posix() if shared == Path(shared.anchor) else relative(root, folder)


def note_root(draft: Draft, folder: Path) -> None:
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


def write(
    draft: Draft, out: Path, manifest_path: Path | None, folder: Path, allow_outside: bool
) -> None:
    """Write the card (and manifest) under temporary names, put the derived folders in place,
    validate it all with :func:`open_dataset`, then rename the card and manifest into place; on
    an error remove them all and put back what a derived folder replaced."""
    card: dict[str, Any] = {}
    if draft.manifest is not None:
        assert manifest_path is not None
        card["table"] = manifest_path.name
    else:
        assert draft.table is not None
        card["table"] = relative(draft.table.resolve(), folder)
    if draft.root is not None and draft.root != folder:
        card["root"] = root_text(draft.root, folder)
    card.update(draft.card)
    if allow_outside:
        card["allow_outside_paths"] = True
    header = f"# Written by `ilt-audit init` from a {_LAYOUT_NAMES[draft.layout]}"
    text = f"{header}: {toml_string(str(draft.source))}\n{toml_dumps(card)}"

    pid = os.getpid()
    placed: list[tuple[Path, Path | None]] = []  # (derived folder, the folder it replaced)
    try:
        with atomic_path(out) as tmp_card:  # renamed onto ``out`` only if the block succeeds
            tmp_manifest = out.with_name(f".{out.stem}.init-{pid}.csv")
            try:
                tmp_card.write_text(text, encoding="utf-8")
                if draft.manifest is not None:
                    draft.manifest.to_csv(tmp_manifest, index=False)
                if draft.derived:  # their files on disk before any rename: one flush for all
                    os.sync()
                for derived in draft.derived:  # in place before the check: the card reads them
                    placed.append(_place(derived, pid))
                try:  # the card and its manifest, every row checked: what `train` will read
                    open_dataset(
                        tmp_card, table=tmp_manifest.name if draft.manifest is not None else None
                    )
                except CardError as exc:
                    message = str(exc).replace(str(tmp_manifest.resolve()), str(manifest_path))
                    message = message.replace(str(tmp_card.resolve()), str(out))
                    raise draft.fail(f"the card written does not validate: {message}") from None
                if draft.manifest is not None:
                    assert manifest_path is not None
                    write_atomic(manifest_path, lambda tmp: os.replace(tmp_manifest, tmp))
            finally:
                tmp_manifest.unlink(missing_ok=True)
    except BaseException:
        for folder, replaced in reversed(placed):
            shutil.rmtree(folder, ignore_errors=True)
            if replaced is not None:
                os.replace(replaced, folder)
        raise
    finally:
        for derived in draft.derived:
            shutil.rmtree(derived.staging, ignore_errors=True)
    for _, replaced in placed:
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)


def _place(derived: DerivedFolder, pid: int) -> tuple[Path, Path | None]:
    """Rename a derived folder into place, the folder it replaces (``--force``) moved aside."""
    replaced = None
    if derived.path.exists():
        replaced = derived.path.with_name(f".{derived.path.name}.old-{pid}")
        os.replace(derived.path, replaced)
    try:
        os.replace(derived.staging, derived.path)
    except OSError:
        if replaced is not None:
            os.replace(replaced, derived.path)
        raise
    return derived.path, replaced


_LAYOUT_NAMES = {
    "table": "table",
    "saved": "Hugging Face dataset folder (save_to_disk)",
    "imagefolder": "torchvision ImageFolder tree",
    "paired": "folder of images and masks",
    "cityscapes": "Cityscapes folder",
    "voc": "Pascal VOC folder",
    "coco": "COCO instances layout",
}


def relative(target: Path, root: Path) -> str:
    """``target`` (resolved) as a POSIX path relative to ``root`` (may start with ``..``)."""
    return Path(os.path.relpath(target, root)).as_posix()


def size_text(size: int) -> str:
    """A size in bytes as people read it: ``"840 bytes"``, ``"2.1 kB"``, ``"19.3 GB"``."""
    if size < 1000:
        return f"{size} bytes"
    power = min(int(math.log10(size)) // 3, 3)  # 1 kB, 2 MB, 3 GB
    return f"{size / 1000**power:.1f} {('kB', 'MB', 'GB')[power - 1]}"


def inside(target: Path, root: Path) -> bool:
    return target == root or target.is_relative_to(root)
