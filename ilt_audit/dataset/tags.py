"""Multi-label tags: a column of tag sets read into a multi-hot table, and tag sets written back.

A multi-label task's column holds, per instance, a set of tags, in one of two forms:

- a **list** per cell (a Parquet list column, a JSON array in JSON Lines): ``["cat", "dog"]``,
  ``[]`` for no tag; an empty cell (null) is refused, as a missing class label is;
- **text** with a separator (CSV, or a text column anywhere): ``"cat|dog"``; an empty cell is no
  tag, and the spaces around a tag are not part of it (``"cat | dog"``).

Integers in a list, or a text column of integers, are tags too (their decimal text). Reading is
vectorised with pyarrow (the cells are flattened into one array of tags and looked up in the tag
set at once), so a million rows of tens of tags is one pass; only the refusal of a bad cell looks
at cells one by one. A tag set is written back in its column's own form (:func:`tag_cells`).

Example:
    >>> column = read_tags(pd.Series([["cat", "dog"], [], ["dog"]]), "|")
    >>> column.names(), column.matrix(("cat", "dog")).astype(int).tolist()
    (('cat', 'dog'), [[1, 1], [0, 0], [0, 1]])
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


class TagCellError(ValueError):
    """A cell that does not hold a tag set: its row (a position in the column) and why."""

    def __init__(self, row: int, why: str) -> None:
        super().__init__(why)
        self.row = row
        self.why = why


@dataclass(frozen=True)
class TagColumn:
    """A column of tag sets as read: every row's tags as text, and the column's form."""

    lists: pa.ListArray  # (N,) list<string>: each row's tags (no null row)
    form: str  # "list" (a list per cell) | "text" (tags joined by the separator)
    integers: bool  # the column's tags are integers (written back as integers)

    def names(self) -> tuple[str, ...]:
        """Every tag the column holds, sorted (as integers when every tag is one)."""
        found = pc.unique(pc.list_flatten(self.lists)).to_pylist()
        if found and all(re.fullmatch(r"-?\d+", t) for t in found):
            return tuple(sorted(found, key=int))
        return tuple(sorted(found))

    def unknown(self, names: Sequence[str]) -> tuple[int, str] | None:
        """The first row holding a tag outside ``names``, and that tag; None when there is none."""
        flat = pc.list_flatten(self.lists)
        outside = pc.invert(pc.is_in(flat, value_set=pa.array(list(names), pa.string())))
        if not pc.any(outside).as_py():
            return None
        first = int(np.flatnonzero(outside.to_numpy(zero_copy_only=False))[0])
        row = int(np.searchsorted(_ends(self.lists), first, side="right"))
        return row, str(flat[first].as_py())

    def matrix(self, names: Sequence[str]) -> np.ndarray:
        """The tag sets as a multi-hot table over ``names``: (N, C) bool, in ``names``' order
        (every tag must be one of them: :meth:`unknown`)."""
        flat = pc.list_flatten(self.lists)
        rows = np.repeat(np.arange(len(self.lists)), _lengths(self.lists))  # (T,)
        index = pc.index_in(flat, value_set=pa.array(list(names), pa.string()))
        table = np.zeros((len(self.lists), len(names)), dtype=bool)
        table[rows, index.to_numpy(zero_copy_only=False).astype(np.int64)] = True
        return table


def _lengths(lists: pa.ListArray) -> np.ndarray:
    """How many tags each row has: (N,) int64, 0 for a null row."""
    return pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False)


def _ends(lists: pa.ListArray) -> np.ndarray:
    """Where each row's tags end in the flattened array: (N,) int64."""
    return np.cumsum(_lengths(lists))


def read_tags(column: pd.Series, separator: str) -> TagColumn:
    """Read a column of tag sets (lists, or text joined by ``separator``); raises
    :class:`TagCellError` naming the first cell that is not one."""
    try:
        array = pa.array(column.to_numpy(dtype=object), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        raise _first_misfit(column) from None
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        return _read_lists(column, array)
    if pa.types.is_null(array.type):  # every cell empty: no instance has a tag
        return TagColumn(_empty_lists(len(column)), "text", False)
    if pa.types.is_floating(array.type):  # CSV: integer tags with empty cells read as floats
        whole = pc.equal(array, pc.floor(array)).fill_null(True)
        if not pc.all(whole).as_py():
            row = int(np.flatnonzero(~whole.to_numpy(zero_copy_only=False))[0])
            raise TagCellError(row, "a tag is a name or an integer, not a fraction")
        huge = pc.greater(pc.abs(array), _INT64_EXACT).fill_null(False)  # 1e300, infinity
        if pc.any(huge).as_py():
            row = int(np.flatnonzero(huge.to_numpy(zero_copy_only=False))[0])
            raise TagCellError(row, "a tag is a name or an integer, not a number this large")
        return _read_text(pc.cast(pc.cast(array, pa.int64()), pa.string()), separator, True)
    if pa.types.is_integer(array.type):
        return _read_text(pc.cast(array, pa.string()), separator, True)
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        return _read_text(pc.cast(array, pa.string()), separator, False)
    raise _first_misfit(column)


_INT64_EXACT = 2.0**53  # a float integer tag beyond this is not one a table meant


def _empty_lists(n: int) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.string()))


def _first_misfit(column: pd.Series) -> TagCellError:
    """The first cell that is neither a list of tags nor text (run only after a read failed)."""
    lists = column.map(lambda v: isinstance(v, list | np.ndarray)).to_numpy(dtype=bool)
    if lists.any() and not lists.all():
        empty = column.isna().to_numpy() & ~lists
        odd = ~lists & ~empty
        row = int(np.flatnonzero(odd if odd.any() else empty)[0])
        return TagCellError(row, "expected a list of tags, as in the column's other rows")
    for row, value in enumerate(column.tolist()):
        values = value if isinstance(value, list | np.ndarray) else [value]
        if any(not _is_tag(v) for v in values):
            return TagCellError(row, "a tag is a name or an integer")
    return TagCellError(0, "not a column of tags")


def _is_tag(value: Any) -> bool:
    return isinstance(value, str | int | np.integer) and not isinstance(value, bool | np.bool_)


def _read_lists(column: pd.Series, array: pa.Array) -> TagColumn:
    if array.null_count:
        row = int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])
        raise TagCellError(row, "the tag list is missing (write [] for an instance without tags)")
    kind = array.type.value_type
    integers = pa.types.is_integer(kind)
    text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
    if not (integers or text or pa.types.is_null(kind)):
        raise _first_misfit(column)
    tags = array.cast(pa.list_(pa.string()))
    flat = pc.list_flatten(tags)
    empty = pc.equal(pc.utf8_length(flat), 0).fill_null(True)
    if pc.any(empty).as_py():
        first = int(np.flatnonzero(empty.to_numpy(zero_copy_only=False))[0])
        row = int(np.searchsorted(_ends(tags), first, side="right"))
        raise TagCellError(row, "a tag is empty")
    return TagColumn(tags, "list", integers)


def _read_text(text: pa.Array, separator: str, integers: bool) -> TagColumn:
    """Text cells split at ``separator``; an empty cell is no tag, an empty tag between two
    separators is refused."""
    blank = pc.equal(pc.utf8_trim_whitespace(text), "").fill_null(True)  # (N,) no tag
    split = pc.split_pattern(pc.if_else(blank, pa.scalar(None, pa.string()), text), separator)
    tags = pc.utf8_trim_whitespace(pc.list_flatten(split))
    offsets = np.concatenate([[0], _ends(split)]).astype(np.int32)
    lists = pa.ListArray.from_arrays(pa.array(offsets), tags)
    empty = pc.equal(pc.utf8_length(tags), 0)
    if pc.any(empty).as_py():
        first = int(np.flatnonzero(empty.to_numpy(zero_copy_only=False))[0])
        row = int(np.searchsorted(offsets[1:], first, side="right"))
        raise TagCellError(
            row, f"an empty tag (two separators {separator!r} in a row, or one at an end)"
        )
    return TagColumn(lists, "text", integers)


def tag_cells(
    table: np.ndarray, names: Sequence[str], column: TagColumn, separator: str
) -> list[Any]:
    """Tag sets, (k, C) bool over ``names``, as cells of ``column``'s form: lists (of integers
    where the column's tags are) or text joined by ``separator``, tags in ``names``' order."""
    chosen = [[names[c] for c in np.flatnonzero(row)] for row in table]
    if column.form == "list":
        return [[int(t) for t in tags] if column.integers else tags for tags in chosen]
    return [separator.join(tags) for tags in chosen]


def tags_json(table: np.ndarray, names: Sequence[str]) -> list[str]:
    """Tag sets, (k, C) bool, as JSON lists of tag names (``["cat", "dog"]``, ``[]``)."""
    return [json.dumps([names[c] for c in np.flatnonzero(row)]) for row in table]


def tags_text(table: np.ndarray, names: Sequence[str], separator: str = "|") -> list[str]:
    """Tag sets, (k, C) bool, as text for people: tags joined by ``separator``, "" for none."""
    return [separator.join(names[c] for c in np.flatnonzero(row)) for row in table]
