"""What ``init`` reads of a Hugging Face dataset: a ``save_to_disk`` folder, or a Parquet or
Arrow table that ``datasets`` exported, read as a table (:mod:`~ilt_audit.dataset.layouts.table`)
with three differences:

- an ``Image`` column (the file's bytes stored in the table) is an image, mask or map column
  like a column of paths; a sample of its rows is decoded (:class:`StoredColumn`);
- a ``ClassLabel`` column is a classification task whose classes are its names, in order
  (:func:`class_label_task`);
- an export has no id column: the ids are the row numbers, zero-padded (``row_ids = true``,
  :func:`row_ids`).

The formats themselves are read by :mod:`ilt_audit.dataset.huggingface`.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any, overload

from ilt_audit.dataset.huggingface import StoredFiles
from ilt_audit.dataset.layouts.draft import Draft
from ilt_audit.dataset.layouts.sampling import Files
from ilt_audit.dataset.manifest import Table


def is_export(table: Table) -> bool:
    """Whether a table is a Hugging Face export: it stores files, or its Arrow schema carries
    ``datasets``' features (``ClassLabel`` names among them)."""
    return bool(table.stored or table.label_names)


def row_ids(draft: Draft, rows: int) -> None:
    """No id column: the card numbers the rows (``row_ids = true``), and says so."""
    width = len(str(rows - 1))
    first, last = "0".zfill(width), str(rows - 1).zfill(width)
    draft.note(
        "(row number)",
        "id: row_ids = true",
        "no column is an id (a Hugging Face export has none): the ids are the row numbers, "
        f"zero-padded ({first} … {last}); pass --id COLUMN to use a column",
    )
    draft.card["row_ids"] = True


def class_label_task(
    draft: Draft, column: str, name: str, names: tuple[str, ...], why: str = ""
) -> dict[str, Any]:
    """The card's table for a ``ClassLabel`` column: its names, in index order, as the classes."""
    shown = ", ".join(names[:8]) + (", …" if len(names) > 8 else "")
    reason = f"a ClassLabel: {len(names)} classes named in the features ({shown})"
    draft.note(column, f"task {name}: classification", f"{why}; {reason}" if why else reason)
    return {"type": "classification", "column": column, "classes": list(names)}


def holds_images(draft: Draft, table: Table, column: str) -> bool:
    """Whether a column that stores files holds images: an ``Image`` feature, or one the
    features do not describe. Another (``Audio``, ``Video``) is left out, and noted."""
    feature = table.features.get(column)
    kind = feature.get("_type") if isinstance(feature, dict) else None
    if kind in (None, "Image"):
        return True
    draft.note(column, "left out", f"its feature is {kind}: ilt-audit reads images")
    return False


def stored(found: Files) -> Files:
    """What a sample of a stored column holds, its reason saying where the files are."""
    return dataclasses.replace(found, why=f"{found.why}, stored in the table")


class StoredRow(io.BytesIO):
    """One row's file stored in the table, named for messages as its row and column."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name

    def __str__(self) -> str:
        return self.name


class StoredColumn(Sequence[Any]):
    """The files of a stored column as :func:`~ilt_audit.dataset.layouts.sampling.sample_files`
    reads a column of paths: row ``i`` is its bytes (:class:`StoredRow`), or, where they are
    null, its file under ``root``. Only the rows read are copied out of the table."""

    def __init__(self, files: StoredFiles, column: str, root: Path) -> None:
        self.files = files
        self.column = column
        self.root = root

    def __len__(self) -> int:
        return len(self.files)

    @overload
    def __getitem__(self, row: int) -> Any: ...

    @overload
    def __getitem__(self, row: slice) -> Sequence[Any]: ...

    def __getitem__(self, row: int | slice) -> Any:
        if isinstance(row, slice):
            return [self[i] for i in range(*row.indices(len(self)))]
        data = self.files.data_of(int(row))
        if data is not None:
            return StoredRow(data, f"column {self.column!r}, row {int(row) + 1} (in the table)")
        return self.root / (self.files.path_of(int(row)) or "")
