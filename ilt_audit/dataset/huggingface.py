"""Tables as the Hugging Face ``datasets`` library writes them, read with pyarrow alone.

- a folder written by ``Dataset.save_to_disk``: ``state.json`` lists its data files
  (``data-00000-of-00001.arrow`` …, Arrow IPC streams), read memory-mapped
  (:func:`read_saved`), and ``dataset_info.json`` holds its features;
- an ``Image`` column: a struct ``{bytes: binary, path: string}`` holding the encoded file
  (PNG, JPEG …) of each row, or, where ``bytes`` is null, the path of the file. A plain binary
  column that a card names as a file column holds the files' bytes the same way
  (:class:`StoredFiles`: the files stored in the table);
- a ``ClassLabel`` column: integers whose class names are in the features
  (:func:`class_labels`); the manifest reads them as their names.

The features come from ``dataset_info.json``, else from the schema's ``huggingface`` metadata,
which the Parquet and Arrow files that ``datasets`` writes carry (:func:`features`). The
``datasets`` package itself is never imported.

Example:
    >>> table = read_saved(Path("data/beans-train"))  # doctest: +SKIP
    >>> class_labels(features(table.schema, Path("data/beans-train")))  # doctest: +SKIP
    {'labels': ('angular_leaf_spot', 'bean_rust', 'healthy')}
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ilt_audit.errors import CardError

STATE = "state.json"  # what save_to_disk writes: the data files, in order
INFO = "dataset_info.json"  # the features, among others
DATASET_DICT = "dataset_dict.json"  # DatasetDict.save_to_disk: one folder per split
METADATA_KEY = b"huggingface"  # the schema metadata datasets writes into Arrow and Parquet files
_PLAIN_NAME = re.compile(r"[^/\\]+")


def is_saved(folder: Path) -> bool:
    """Whether a folder was written by ``Dataset.save_to_disk`` (it holds ``state.json``)."""
    return (folder / STATE).is_file()


def saved_files(folder: Path) -> list[Path]:
    """The data files of a ``save_to_disk`` folder, in order, as its ``state.json`` lists them;
    each must be a plain file name in the folder."""
    state = folder / STATE
    try:
        listed = json.loads(state.read_text(encoding="utf-8"))["_data_files"]
        names = [entry["filename"] for entry in listed]
    except FileNotFoundError:
        hint = ""
        if (folder / DATASET_DICT).is_file():
            hint = ": it holds a DatasetDict; name one split's folder, e.g. train"
        raise CardError(
            f"{folder}: not a folder written by save_to_disk (no {STATE}){hint}"
        ) from None
    except RecursionError:
        raise CardError(
            f"{state}: not a save_to_disk state file (JSON nested too deeply)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CardError(f"{state}: not a save_to_disk state file ({exc!r})") from None
    if not names:
        raise CardError(f"{state}: lists no data file")
    for name in names:
        if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name) or name in (".", ".."):
            raise CardError(f"{state}: data file {name!r} is not a file name in its folder")
        if not (folder / name).is_file():
            raise CardError(f"{folder / name}: data file not found (listed in {STATE})")
    return [folder / name for name in names]


def read_arrow(path: Path) -> pa.Table:
    """An Arrow IPC stream (what ``datasets`` writes) or IPC file, memory-mapped: its buffers
    stay in the file until a row is read."""
    source = pa.memory_map(str(path))
    try:
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_file(source).read_all()


def read_saved(folder: Path) -> pa.Table:
    """The table of a ``save_to_disk`` folder: its data files, memory-mapped, end to end."""
    tables = [read_arrow(path) for path in saved_files(folder)]
    try:
        return pa.concat_tables(tables)
    except pa.ArrowInvalid as exc:
        raise CardError(f"{folder}: its data files do not share one schema ({exc})") from None


def features(schema: pa.Schema, folder: Path | None = None) -> dict[str, Any]:
    """The ``datasets`` features of a table by column name: from ``folder``'s
    ``dataset_info.json`` when given, else from the schema's metadata; {} when neither says."""
    sources: list[Any] = []
    if folder is not None and (folder / INFO).is_file():
        try:
            sources.append(json.loads((folder / INFO).read_text(encoding="utf-8")))
        except (OSError, ValueError, RecursionError):  # unreadable: as if it said nothing
            pass
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is not None:
        try:
            sources.append(json.loads(raw).get("info", {}))
        except (ValueError, AttributeError, RecursionError):
            pass
    for info in sources:
        found = info.get("features") if isinstance(info, dict) else None
        if isinstance(found, dict):
            return found
    return {}


def class_labels(found: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """The ``ClassLabel`` columns of some features and their class names, in index order."""
    return {
        column: tuple(str(name) for name in feature["names"])
        for column, feature in found.items()
        if isinstance(feature, dict)
        and feature.get("_type") == "ClassLabel"
        and isinstance(feature.get("names"), list)
    }


def is_image_struct(kind: pa.DataType) -> bool:
    """Whether an Arrow type is ``datasets``' ``Image`` storage: ``{bytes: binary, path: string}``."""
    if not pa.types.is_struct(kind):
        return False
    names = {kind.field(i).name: kind.field(i).type for i in range(kind.num_fields)}
    return (
        set(names) == {"bytes", "path"}
        and _is_binary(names["bytes"])
        and (pa.types.is_string(names["path"]) or pa.types.is_large_string(names["path"]))
    )


def _is_binary(kind: pa.DataType) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


def holds_files(kind: pa.DataType, named: bool) -> bool:
    """Whether a column of this Arrow type holds files in the table: an ``Image`` struct, or a
    binary column that the card names as a file column (``named``)."""
    return is_image_struct(kind) or (named and _is_binary(kind))


@dataclass(frozen=True)
class StoredFiles:
    """A column whose files are stored in the table: each row's encoded bytes, or, where they
    are null, the path of its file (an ``Image`` struct's ``path``).

    Holds Arrow arrays only (memory-mapped for a ``save_to_disk`` folder), so that DataLoader
    workers forked from the process that read the table share them page by page, and a row's
    bytes are copied out one row at a time (:meth:`data_of`).
    """

    data: pa.ChunkedArray  # binary: the file's bytes; null where the row names a file instead
    paths: pa.ChunkedArray  # string: the struct's path (a name, or the file); null for binary
    _starts: np.ndarray = field(init=False, repr=False, compare=False)  # (chunks,) first rows

    def __post_init__(self) -> None:
        lengths = [len(chunk) for chunk in self.data.chunks]
        object.__setattr__(self, "_starts", np.cumsum([0, *lengths])[:-1])

    @classmethod
    def of(cls, column: pa.ChunkedArray) -> StoredFiles:
        """The stored files of an ``Image`` struct column or a binary column."""
        if pa.types.is_struct(column.type):
            # zero-copy: the fields' buffers, a null struct making both fields null
            data = pc.struct_field(column, "bytes")
            paths = pc.struct_field(column, "path")
            return cls(_chunked(data), _chunked(paths))
        return cls(column, pa.chunked_array([pa.nulls(len(column), pa.string())]))

    def __len__(self) -> int:
        return len(self.data)

    def in_table(self) -> np.ndarray:
        """(N,) bool: the rows whose bytes are in the table."""
        return pc.is_valid(self.data).to_numpy(zero_copy_only=False)

    def path_texts(self) -> pa.Array:
        """(N,) string: the path of each row whose bytes are null, "" elsewhere (and where the
        row has no path either)."""
        named = pc.if_else(pc.is_valid(self.data), None, self.paths)
        return pc.fill_null(named, "").combine_chunks().cast(pa.string())

    def sizes(self) -> np.ndarray:
        """(N,) int64: the length of each row's bytes, -1 where they are null."""
        lengths = pc.fill_null(pc.binary_length(self.data), -1)
        return lengths.to_numpy().astype(np.int64)

    def data_of(self, row: int) -> bytes | None:
        """One row's bytes (a copy of that row's only), or None when it names a file."""
        chunk = int(np.searchsorted(self._starts, row, side="right")) - 1
        value = self.data.chunk(chunk)[row - int(self._starts[chunk])]
        return value.as_py() if value.is_valid else None

    def path_of(self, row: int) -> str | None:
        chunk = int(np.searchsorted(self._starts, row, side="right")) - 1
        value = self.paths.chunk(chunk)[row - int(self._starts[chunk])]
        return value.as_py() if value.is_valid else None


def _chunked(values: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    return values if isinstance(values, pa.ChunkedArray) else pa.chunked_array([values])
