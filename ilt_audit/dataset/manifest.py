"""The manifest: a card's table, read once and checked row by row before anything trains.

Everything that can be checked on the table itself is checked here, vectorised: columns, ids,
class labels, tag sets (:mod:`ilt_audit.dataset.tags`), numeric targets and features, that the
files the rows name exist. Decoding those files (images, masks, depth maps) is
:mod:`ilt_audit.dataset.files`' parallel pass. Errors name the table, the row id and the column,
and quote the offending value. It never imports torch.

A table may store its files itself (a Hugging Face ``Image`` column, or a binary column the card
names as a file column): those columns stay Arrow arrays (:class:`~ilt_audit.dataset.huggingface.
StoredFiles`, memory-mapped for a ``save_to_disk`` folder), never Python objects, and
:meth:`Manifest.source` gives a row's bytes or the file it names.

Example:
    >>> manifest = load_manifest("sample_manifests/penguins/card.toml")  # doctest: +SKIP
    >>> len(manifest), manifest.ids[:2]  # doctest: +SKIP
    (333, ['p000', 'p001'])
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ilt_audit.dataset import huggingface
from ilt_audit.dataset.card import (
    ESCAPING_PATH,
    OUTSIDE_LINK,
    TABLE_READERS,
    Card,
    TaskSpec,
    file_columns,
    load_card,
)
from ilt_audit.dataset.huggingface import StoredFiles
from ilt_audit.dataset.tags import TagCellError, TagColumn, read_tags, tags_text
from ilt_audit.errors import CardError


@dataclass(frozen=True)
class Table:
    """A manifest table as read: a pandas frame, and what stays in Arrow.

    A column whose files are stored in the table is in ``stored``; the frame holds its path
    text only (an ``Image`` struct's ``path``, None for a binary column). A Hugging Face
    ``ClassLabel`` column reads as its class names (``label_names``).
    """

    frame: pd.DataFrame
    stored: dict[str, StoredFiles] = field(default_factory=dict)
    label_names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    schema: pa.Schema | None = None  # an Arrow table's schema as stored, its metadata included
    features: dict[str, Any] = field(default_factory=dict)  # datasets' features, when it says


def read_table(
    path: Path,
    id_column: str,
    text: Collection[str] = (),
    files: Collection[str] = (),
    *,
    skip: Collection[str] = (),
) -> Table:
    """Read a manifest table (CSV, Parquet, JSON Lines, an Arrow file or a ``save_to_disk``
    folder) with the id column as strings.

    Text must be UTF-8: a cell that is not is refused naming the column and the line or row. A
    Parquet or Arrow binary column is read as text when it is UTF-8; ``text`` names the columns
    (besides the id) that must be, the others may stay bytes. ``files`` names the columns that
    hold files: a binary one stores their bytes, as an ``Image`` struct column always does.
    ``skip``: stored columns a Parquet reader need not read (their frame column is left out).
    """
    folder = path.is_dir()
    if not folder and not path.is_file():
        raise CardError(f"{path}: manifest table not found")
    kind = "saved" if folder else TABLE_READERS[path.suffix.lower()]
    try:
        if kind == "csv":
            return Table(pd.read_csv(path, dtype={id_column: str}, keep_default_na=True))
        if kind == "jsonl":
            return Table(pd.read_json(path, lines=True, dtype={id_column: str}, precise_float=True))
        if kind == "parquet":
            table = _read_parquet(path, skip)
        elif kind == "arrow":
            table = huggingface.read_arrow(path)
        else:
            table = huggingface.read_saved(path)
        return _from_arrow(path, table, id_column, {id_column, *text}, files, folder)
    except CardError:
        raise
    except UnicodeError:
        raise _undecodable_line(path, kind, id_column) from None
    except Exception as exc:  # pandas raises many parser types; all mean "cannot read"
        raise CardError(f"{path}: cannot read the manifest table: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (parsers put newlines in theirs)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _read_parquet(path: Path, skip: Collection[str]) -> pa.Table:
    if not skip:
        return pq.read_table(path)
    schema = pq.read_schema(path)
    table = pq.read_table(path, columns=[name for name in schema.names if name not in skip])
    return table.replace_schema_metadata(schema.metadata)


def _from_arrow(
    path: Path,
    table: pa.Table,
    id_column: str,
    text: Collection[str],
    files: Collection[str],
    folder: bool,
) -> Table:
    """An Arrow table as a :class:`Table`: stored files kept in Arrow, ``ClassLabel`` columns as
    their names, the other columns converted to pandas (:func:`_arrow_frame`)."""
    schema = table.schema
    stored = {
        f.name: StoredFiles.of(table.column(f.name))
        for f in schema
        if huggingface.holds_files(f.type, f.name in files)
    }
    found = huggingface.features(schema, path if folder else None)
    labels = {
        column: names
        for column, names in huggingface.class_labels(found).items()
        if column in schema.names and pa.types.is_integer(schema.field(column).type)
    }
    frame = _arrow_frame(path, table.drop_columns(list(stored)), id_column, text)
    for column, names in labels.items():
        frame[column] = _class_names(frame[column], names)
    for column, files_of in stored.items():
        frame[column] = files_of.paths.to_pandas().astype(object)  # text, None where none
    order = [name for name in schema.names if name in frame.columns]
    return Table(frame[order], stored, labels, schema, found)


def _class_names(column: pd.Series, names: tuple[str, ...]) -> pd.Series:
    """A ``ClassLabel`` column's integers as their names; one outside the names stays a number
    (as text), so that the manifest's check quotes it."""
    codes = column.to_numpy(dtype=np.float64, na_value=np.nan)  # (N,)
    inside = (codes >= 0) & (codes < len(names))  # NaN: False
    found = np.asarray(names, dtype=object)[np.where(inside, codes, 0).astype(np.int64)]
    outside = ~inside & ~np.isnan(codes)
    found[outside] = codes[outside].astype(np.int64).astype(str)
    found[np.isnan(codes)] = None
    return pd.Series(found, index=column.index, dtype=object)


def _arrow_frame(
    path: Path, table: pa.Table, id_column: str, text: Collection[str]
) -> pd.DataFrame:
    """An Arrow table whose string columns hold UTF-8 as a frame, with binary columns read as
    text where they are UTF-8 (and required to be in the ``text`` columns)."""
    for index, entry in enumerate(table.schema):
        if pa.types.is_binary(entry.type) or pa.types.is_large_binary(entry.type):
            as_text = pa.large_string() if pa.types.is_large_binary(entry.type) else pa.string()
            try:
                table = table.set_column(index, entry.name, table.column(index).cast(as_text))
            except pa.ArrowInvalid as exc:
                if entry.name in text:
                    raise _undecodable_cell(path, table, [entry.name], id_column, exc) from None
    try:
        table.validate(full=True)  # among others: every string is UTF-8
    except pa.ArrowInvalid as exc:
        strings = [
            f.name
            for f in table.schema
            if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
        ]
        raise _undecodable_cell(path, table, strings, id_column, exc) from None
    return table.to_pandas()


def _undecodable_cell(
    path: Path, table: pa.Table, columns: list[str], id_column: str, exc: Exception
) -> CardError:
    """The first cell of these Arrow columns that is not UTF-8, as an error naming its row; the
    reader's own message if there is none. Run only after a check failed."""
    for column in columns:
        values = table.column(column).cast(pa.large_binary()).to_pylist()
        for row, value in enumerate(values):
            try:
                value is None or value.decode("utf-8")
            except UnicodeDecodeError:
                where = f"row {row + 1}"
                if id_column != column and id_column in table.column_names:
                    try:
                        where = f"row id {_as_text(table.column(id_column)[row].as_py())!r}"
                    except (UnicodeDecodeError, pa.ArrowException):
                        pass
                return CardError(
                    f"{path}: {where}: column {column!r}: not valid UTF-8 text "
                    f"(bytes: {value[:40]!r})"
                )
    return CardError(f"{path}: cannot read the manifest table: {_one_line(exc)}")


def _as_text(value: Any) -> Any:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _undecodable_line(path: Path, kind: str, id_column: str) -> CardError:
    """Where a CSV or JSON Lines table holds bytes that are not UTF-8: its line, and the row id
    and column when the line parses. Run only after a read failed."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = exc.start
    else:  # the bytes decode: the text was refused for another reason (e.g. a lone surrogate)
        return CardError(f"{path}: cannot read the manifest table: it holds text that is not UTF-8")
    number = data.count(b"\n", 0, start) + 1
    first = data.rfind(b"\n", 0, start) + 1
    end = data.find(b"\n", start)
    line = data[first : end if end >= 0 else len(data)].decode("utf-8", "surrogateescape")
    cells = _line_cells(kind, line, data)
    where, column = f"line {number}", ""
    for name, value in cells.items():
        if _SURROGATE.search(name) or _SURROGATE.search(value):
            column = f": column {name!r}" if not _SURROGATE.search(name) else " (a column name)"
            break
    row_id = cells.get(id_column)
    if number > 1 and row_id is not None and not _SURROGATE.search(row_id):
        where += f" (row id {row_id!r})"
    bad = data[start : start + 1]
    return CardError(f"{path}: {where}{column}: not valid UTF-8 text (byte {bad!r})")


_SURROGATE = re.compile("[\udc80-\udcff]")  # an undecodable byte, kept by "surrogateescape"


def _line_cells(kind: str, line: str, data: bytes) -> dict[str, str]:
    """The cells of one line by column name, as text (best effort: {} if it does not parse)."""
    try:
        if kind == "jsonl":
            record = json.loads(line)
            return {str(k): str(v) for k, v in record.items()} if isinstance(record, dict) else {}
        header_line = data[: max(data.find(b"\n"), 0) or len(data)]
        header = next(csv.reader([header_line.decode("utf-8", "surrogateescape")]), [])
        values = next(csv.reader([line]), [])
        if line.rstrip("\r") == header_line.decode("utf-8", "surrogateescape").rstrip("\r"):
            return dict.fromkeys(header, "")
        return dict(zip(header, values, strict=False))
    except (ValueError, csv.Error):
        return {}


@dataclass(frozen=True)
class Manifest:
    """A card with its validated table: string ids, and per classification task its classes
    (per multi-label task its tags)."""

    card: Card
    frame: pd.DataFrame  # the table as read, index reset, id column as str
    input_columns: tuple[str, ...]
    # classification task -> class names, multi-label task -> tags (index order)
    class_names: dict[str, tuple[str, ...]]
    # multi-label task -> its cells as read (the multi-hot table: tag_matrix)
    tag_columns: dict[str, TagColumn] = dataclasses.field(default_factory=dict)
    _tag_tables: dict[str, np.ndarray] = dataclasses.field(
        default_factory=dict, compare=False, repr=False
    )
    stored: Mapping[str, StoredFiles] = field(default_factory=dict)  # files stored in the table
    label_names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # ClassLabel columns
    schema: pa.Schema | None = None  # an Arrow table's schema as stored (a derived copy keeps it)

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

    def tag_matrix(self, task: TaskSpec) -> np.ndarray:
        """A multi-label task's tag sets as a multi-hot table over ``class_names[task.name]``:
        (N, C) bool, built once."""
        if task.name not in self._tag_tables:
            names = self.class_names[task.name]
            self._tag_tables[task.name] = self.tag_columns[task.name].matrix(names)
        return self._tag_tables[task.name]

    def tag_texts(self, task: TaskSpec, rows: np.ndarray) -> list[str]:
        """Some rows' tag sets as text: the tags in the card's order joined by the task's
        separator (``"cat|dog"``), "" for no tag."""
        names = self.class_names[task.name]
        return tags_text(self.tag_matrix(task)[rows], names, task.separator)

    def original_frame(self) -> pd.DataFrame:
        """The table read again as its file stores it (the id as text, the other columns in the
        types the reader gives them): what a derived dataset writes back in the same format.
        Stored files are not read again: their columns hold their path text, as in ``frame``;
        a table numbered by its rows (``row_ids``) has no id column."""
        read = read_table(self.card.table_path, self.card.id, files=self.stored, skip=self.stored)
        frame = read.frame.reset_index(drop=True)
        for position, column in enumerate(self.frame.columns.drop(self.card.id, errors="ignore")):
            if column in self.stored and column not in frame.columns:
                frame.insert(min(position, frame.shape[1]), column, self.frame[column])
        return frame

    def source(self, column: str, row: int) -> Path | io.BytesIO:
        """What a file cell of row ``row`` (a position) reads from: the bytes the table stores,
        or the file it names (:meth:`file_path`)."""
        stored = self.stored.get(column)
        if stored is None:
            return self.file_path(self.frame[column].iat[row])
        data = stored.data_of(row)
        if data is not None:
            return io.BytesIO(data)
        return self.file_path(stored.path_of(row) or "")

    def file_path(self, value: str) -> Path:
        """The file a path cell names, refused if it leads outside the data folder (through a
        symbolic link: the text of every cell was checked by :func:`load_manifest`)."""
        path = self.card.root / value
        if self.card.leaves_root(path):
            raise CardError(f"{self.card.table_path}: file {value!r}: {self.card.outside_link}")
        return path


def load_manifest(card: Card | str | Path, *, check_files: bool = True) -> Manifest:
    """Read a card's manifest and check every row: ids, columns, labels, targets, file paths.

    Errors name the table, the row id and the column, and quote the offending value.
    ``check_files=False`` checks that path cells are text but not that the files exist (the
    training pass decodes every file anyway, in parallel).
    """
    if not isinstance(card, Card):
        card = load_card(card)
    table = card.table_path
    if card.leaves_folder(table) and table.exists():
        raise CardError(f"{card.path}: table {card.table!r}: {OUTSIDE_LINK}")
    read = read_table(table, card.id, _text_columns(card), file_columns(card))
    frame = read.frame.reset_index(drop=True)
    if frame.empty:
        raise CardError(f"{table}: the manifest table has no rows")
    if card.row_ids:
        card = dataclasses.replace(card, id=_free_name(frame, "id"))
        width = len(str(len(frame) - 1))
        frame.insert(0, card.id, np.char.zfill(np.arange(len(frame)).astype(str), width))
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
        _check_files(card, frame, input_columns[0], check_files, read.stored)

    class_names: dict[str, tuple[str, ...]] = {}
    tag_columns: dict[str, TagColumn] = {}
    for task in card.tasks:
        _require_columns(card, frame, list(task.columns), task)
        if task.type == "classification":
            class_names[task.name] = _check_classes(card, frame, task)
        elif task.type == "multi-label":
            tag_columns[task.name], class_names[task.name] = _check_tags(card, frame, task)
        elif task.type == "regression":
            _check_numeric(card, frame, list(task.columns), "target")
        else:
            _check_files(card, frame, task.column, check_files, read.stored)
    return Manifest(
        card,
        frame,
        input_columns,
        class_names,
        tag_columns=tag_columns,
        stored=read.stored,
        label_names=read.label_names,
        schema=read.schema,
    )


def _free_name(frame: pd.DataFrame, name: str) -> str:
    """``name``, or ``row_name``, ``row_name_2`` …: the first the table's columns do not use."""
    taken = set(map(str, frame.columns))
    found, n = name, 1
    while found in taken:
        found, n = f"row_{name}" + (f"_{n}" if n > 1 else ""), n + 1
    return found


def _text_columns(card: Card) -> list[str]:
    """The columns that hold text: the split, image paths, class labels, mask and map paths."""
    columns = [card.split] if card.split is not None else []
    if card.input.type == "image":
        columns.append(card.input.columns[0])
    for task in card.tasks:
        if task.type not in ("regression", "multi-label"):  # tags may be lists, checked there
            columns.append(task.column)
    return columns


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
    if isinstance(value, np.generic | np.ndarray):  # a list cell of a Parquet table is an array
        value = value.tolist()
    raise CardError(
        f"{card.table_path}: row id {row_id!r}: column {column!r}: {why} (value: {value!r})"
    )


_FLOAT32_MAX = float(np.finfo(np.float32).max)  # training reads features and targets as float32


def _check_numeric(card: Card, frame: pd.DataFrame, columns: list[str], what: str) -> None:
    for column in columns:
        values = pd.to_numeric(frame[column], errors="coerce")
        number = values.fillna(0).to_numpy(dtype=float)
        bad = values.isna().to_numpy() | ~(np.abs(number) <= _FLOAT32_MAX)  # NaN, inf, overflow
        if bad.any():
            row = bad.nonzero()[0][0]
            value = frame[column].iloc[row]
            if pd.api.types.is_scalar(value) and pd.isna(value):
                why = f"the {what} is missing or NaN"
            elif np.isfinite(number[row]) and not values.isna().iloc[row]:
                why = f"the {what} is beyond float32's range (±{_FLOAT32_MAX:.3g}), which training uses"
            else:
                why = f"the {what} is not a finite number"
            _fail(card, frame.index[row], frame, column, value, why)


def _check_files(
    card: Card,
    frame: pd.DataFrame,
    column: str,
    exist: bool,
    stored: Mapping[str, StoredFiles],
) -> None:
    """The file cells of a column: text paths that stay inside the data folder (and, with
    ``exist``, name files). Of a column that stores its files, the rows whose bytes are null
    must name their file that way."""
    values = frame[column]
    if column in stored:
        named = stored[column].path_texts().to_numpy(zero_copy_only=False) != ""  # (N,)
        in_table = stored[column].in_table()  # (N,)
        if not (named | in_table).all():
            row = frame.index[int(np.flatnonzero(~(named | in_table))[0])]
            _fail(card, row, frame, column, None, "neither the file's bytes nor a path to it")
        values = values[~in_table]
    is_text = values.map(lambda v: isinstance(v, str) and bool(v)).to_numpy(dtype=bool)
    if not is_text.all():
        row = values.index[int(np.flatnonzero(~is_text)[0])]
        _fail(card, row, frame, column, values[row], "expected a file path")
    if not card.allow_outside_paths:
        escaping = pc.match_substring_regex(pa.array(values, pa.string()), ESCAPING_PATH)
        if pc.any(escaping).as_py():
            row = values.index[int(np.flatnonzero(escaping.to_numpy(zero_copy_only=False))[0])]
            _fail(card, row, frame, column, values[row], card.outside_path)
    if exist:
        for row, value in values.items():
            path = card.root / value
            if not path.is_file():
                _fail(card, row, frame, column, value, "file not found")
            if card.leaves_root(path):
                _fail(card, row, frame, column, value, card.outside_link)


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


def _check_tags(
    card: Card, frame: pd.DataFrame, task: TaskSpec
) -> tuple[TagColumn, tuple[str, ...]]:
    """A multi-label task's cells read as tag sets, and its tags: the card's ``classes``, or
    every tag the column holds."""
    try:
        column = read_tags(frame[task.column], task.separator)
    except TagCellError as exc:
        _fail(
            card,
            frame.index[exc.row],
            frame,
            task.column,
            frame[task.column].iloc[exc.row],
            exc.why,
        )
    if isinstance(task.classes, tuple):
        outside = column.unknown(task.classes)
        if outside is not None:
            row, tag = outside
            _fail(
                card,
                frame.index[row],
                frame,
                task.column,
                frame[task.column].iloc[row],
                f"tag {tag!r} is not one of the task's classes {list(task.classes)}",
            )
        return column, task.classes
    found = column.names()
    if not found:
        raise CardError(
            f"{card.table_path}: column {task.column!r} (task {task.name!r}) holds no tag in any "
            "row; a multi-label task needs at least one"
        )
    return column, found
