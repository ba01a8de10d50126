"""The manifest: a card's table, read once and checked row by row before anything trains.

Everything that can be checked on the table itself is checked here, vectorised: columns, ids,
class labels, numeric targets and features, that the files the rows name exist. Decoding those
files (images, masks, depth maps) is :mod:`ilt_audit.data`'s streaming pass. Errors name the
table, the row id and the column, and quote the offending value. It never imports torch.

Example:
    >>> manifest = load_manifest("sample_manifests/penguins/card.toml")  # doctest: +SKIP
    >>> len(manifest), manifest.ids[:2]  # doctest: +SKIP
    (333, ['p000', 'p001'])
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ilt_audit.card import TABLE_READERS, Card, TaskSpec, load_card
from ilt_audit.errors import CardError


def read_table(path: Path, id_column: str) -> pd.DataFrame:
    """Read a manifest table (CSV, Parquet or JSON Lines) with the id column as strings."""
    if not path.is_file():
        raise CardError(f"{path}: manifest table not found")
    kind = TABLE_READERS[path.suffix.lower()]
    try:
        if kind == "csv":
            frame = pd.read_csv(path, dtype={id_column: str}, keep_default_na=True)
        elif kind == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_json(path, lines=True, dtype={id_column: str}, precise_float=True)
    except Exception as exc:  # pandas raises many parser types; all mean "cannot read"
        raise CardError(f"{path}: cannot read the manifest table: {exc}") from None
    return frame


@dataclass(frozen=True)
class Manifest:
    """A card with its validated table: string ids, and per classification task its classes."""

    card: Card
    frame: pd.DataFrame  # the table as read, index reset, id column as str
    input_columns: tuple[str, ...]
    class_names: dict[str, tuple[str, ...]]  # classification task -> class names (index order)

    def __len__(self) -> int:
        return len(self.frame)

    @cached_property
    def ids(self) -> list[str]:
        """The instance ids in table order, built once."""
        return self.frame[self.card.id].tolist()

    def labels(self, task: TaskSpec) -> pd.Series | pd.DataFrame:
        """The label of each instance for a task, as found in the table."""
        if task.type == "regression":
            return self.frame[list(task.columns)]
        return self.frame[task.column]

    def class_index(self, task: TaskSpec) -> np.ndarray:
        """Classification labels as indices into ``class_names[task.name]``: (N,) int64."""
        texts = label_texts(self.frame[task.column])
        index = pd.Index(self.class_names[task.name]).get_indexer(texts)
        return index.astype(np.int64)

    def file_path(self, value: str) -> Path:
        return self.card.root / value


def load_manifest(card: Card | str | Path, *, check_files: bool = True) -> Manifest:
    """Read a card's manifest and check every row: ids, columns, labels, targets, file paths.

    Errors name the table, the row id and the column, and quote the offending value.
    ``check_files=False`` checks that path cells are text but not that the files exist (the
    training pass decodes every file anyway, in parallel).
    """
    if not isinstance(card, Card):
        card = load_card(card)
    table = card.table_path
    frame = read_table(table, card.id).reset_index(drop=True)
    if frame.empty:
        raise CardError(f"{table}: the manifest table has no rows")
    _require_columns(card, frame, [card.id])
    ids = frame[card.id]
    if ids.isna().any():
        row = int(np.flatnonzero(ids.isna().to_numpy())[0])
        raise CardError(f"{table}: row {row + 1}: column {card.id!r}: the instance id is empty")
    ids = ids.astype(str)
    duplicated = ids[ids.duplicated()]
    if not duplicated.empty:
        raise CardError(
            f"{table}: row id {duplicated.iloc[0]!r}: column {card.id!r}: the id appears more than once"
        )
    frame[card.id] = ids

    input_columns = _input_columns(card, frame)
    if card.split is not None:
        _require_columns(card, frame, [card.split])
        bad = frame[~frame[card.split].isin(["train", "val"])]
        if not bad.empty:
            _fail(
                card,
                bad.index[0],
                frame,
                card.split,
                bad[card.split].iloc[0],
                "split must be 'train' or 'val'",
            )

    if card.input.type == "features":
        _check_numeric(card, frame, list(input_columns), "feature")
    else:
        _check_files(card, frame, input_columns[0], check_files)

    class_names: dict[str, tuple[str, ...]] = {}
    for task in card.tasks:
        _require_columns(card, frame, list(task.columns), task)
        if task.type == "classification":
            class_names[task.name] = _check_classes(card, frame, task)
        elif task.type == "regression":
            _check_numeric(card, frame, list(task.columns), "target")
        else:
            _check_files(card, frame, task.column, check_files)
    return Manifest(card, frame, input_columns, class_names)


def _input_columns(card: Card, frame: pd.DataFrame) -> tuple[str, ...]:
    columns = card.input.columns
    if len(columns) == 1 and columns[0].endswith("*") and card.input.type == "features":
        prefix = columns[0][:-1]
        found = tuple(c for c in frame.columns if str(c).startswith(prefix))
        if not found:
            raise CardError(
                f"{card.table_path}: no column starts with the feature prefix {prefix!r}"
            )
        return found
    _require_columns(card, frame, list(columns))
    return columns


def _require_columns(
    card: Card, frame: pd.DataFrame, columns: list[str], task: TaskSpec | None = None
) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        owner = f" (task {task.name!r})" if task else ""
        raise CardError(
            f"{card.table_path}: column {missing[0]!r}{owner} not found; "
            f"the table's columns are: {', '.join(map(str, frame.columns))}"
        )


def _fail(card: Card, row: Any, frame: pd.DataFrame, column: str, value: Any, why: str) -> None:
    row_id = frame.at[row, card.id]
    if isinstance(value, np.generic):
        value = value.item()
    raise CardError(
        f"{card.table_path}: row id {row_id!r}: column {column!r}: {why} (value: {value!r})"
    )


def _check_numeric(card: Card, frame: pd.DataFrame, columns: list[str], what: str) -> None:
    for column in columns:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() | ~np.isfinite(values.fillna(0).to_numpy(dtype=float))
        if bad.any():
            row = bad.to_numpy().nonzero()[0][0]
            value = frame[column].iloc[row]
            why = (
                f"the {what} is missing or NaN"
                if pd.isna(value)
                else f"the {what} is not a finite number"
            )
            _fail(card, frame.index[row], frame, column, value, why)


def _check_files(card: Card, frame: pd.DataFrame, column: str, exist: bool) -> None:
    values = frame[column]
    is_text = values.map(lambda v: isinstance(v, str) and bool(v)).to_numpy(dtype=bool)
    if not is_text.all():
        row = frame.index[int(np.flatnonzero(~is_text)[0])]
        _fail(card, row, frame, column, values[row], "expected a file path")
    if exist:
        for row, value in values.items():
            if not (card.root / value).is_file():
                _fail(card, row, frame, column, value, "file not found")


def _label_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def label_texts(column: pd.Series) -> pd.Series:
    """Class labels as text, vectorised where the column's type allows: 3.0 reads as "3"."""
    if pd.api.types.is_integer_dtype(column.dtype) or pd.api.types.is_bool_dtype(column.dtype):
        return column.astype(str)
    if isinstance(column.dtype, pd.StringDtype):  # every value is already text
        return column.astype(str)
    return column.map(_label_text)


def _check_classes(card: Card, frame: pd.DataFrame, task: TaskSpec) -> tuple[str, ...]:
    column = frame[task.column]
    if column.isna().any():
        row = column.index[column.isna()][0]
        _fail(card, row, frame, task.column, None, "the class label is missing")
    texts = label_texts(column)
    if isinstance(task.classes, tuple):
        allowed = task.classes
    elif isinstance(task.classes, int):
        allowed = tuple(str(i) for i in range(task.classes))
    else:
        found = sorted(texts.unique().tolist())
        numeric = all(re.fullmatch(r"-?\d+", t) for t in found)
        allowed = tuple(sorted(found, key=int) if numeric else found)
        if len(allowed) < 2:
            raise CardError(
                f"{card.table_path}: column {task.column!r} (task {task.name!r}) has a single class "
                f"{allowed[0]!r}; a classification task needs at least two"
            )
        return allowed
    outside = ~texts.isin(allowed)
    if outside.any():
        row = texts.index[outside][0]
        _fail(
            card,
            row,
            frame,
            task.column,
            column[row],
            f"label outside the class set {list(allowed)}",
        )
    return allowed
