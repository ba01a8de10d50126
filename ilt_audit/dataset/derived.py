"""Write a dataset derived from another one: a corrupted copy (``corrupt``) or a corrected one
(``fix``).

A derived dataset is a folder holding a new card (the original's content, with a header comment
saying where it came from), a manifest in the original's format whose paths still point at the
original input files (nothing is copied or modified), new label files where labels were
replaced, and whatever record the command keeps (``corruption.parquet``, ``changes.parquet``).
The new card's folder is its data folder: its paths are relative to it, the original's ``root``
is not carried over.

A table that stores its files (a Hugging Face ``Image`` column) is written back through Arrow
with its schema and metadata: the stored bytes are carried over untouched, a slice of rows at a
time, and a replaced mask or map is stored in the table as its original was. A ``save_to_disk``
folder is written as a Parquet table (``NAME.parquet``), and a table numbered by its rows
(``row_ids``) gets its ids as a column, so that dropping rows renumbers nothing.
Everything is written into a temporary sibling folder that is renamed onto ``out`` at the end,
so a crash leaves nothing half-written.

:func:`write_split_card` writes a lighter kind: the same table with a train/val split column, for
a network that must not see some rows (the cross-validated baselines of
:mod:`ilt_audit.audit.baselines`, a benchmark's clean validation split).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from ilt_audit.dataset.card import ESCAPING_PATH, TABLE_READERS, TaskSpec
from ilt_audit.dataset.manifest import Manifest
from ilt_audit.dataset.tags import tag_cells
from ilt_audit.errors import OptionError
from ilt_audit.internal.files import WRITE_ERRNOS, write_error
from ilt_audit.internal.toml import toml_dumps, toml_string


@dataclass
class Output:
    """The dataset being written: the new table and where its files go."""

    manifest: Manifest
    frame: pd.DataFrame  # the new manifest table, edited in place; row labels are row numbers
    root: Path  # the final output folder: paths in the table are relative to it
    staging: Path  # where files are written until the folder is renamed to ``root``
    ids: list[str] = field(init=False)
    stored: dict[str, dict[int, bytes]] = field(init=False)  # column -> row -> new stored file

    def __post_init__(self) -> None:
        self.ids = self.manifest.ids
        self.stored = {column: {} for column in self.manifest.stored}

    def write_file(
        self, task: TaskSpec, row: int, suffix: str, write: Callable[[Path], None]
    ) -> None:
        """Write a new label file for a row and point the row's label column at it; in a
        column that stores its files, the new file is stored in the table instead."""
        name = f"{task.name}/{file_stem(self.ids[row])}{suffix}"
        path = self.staging / name
        path.parent.mkdir(exist_ok=True)
        write(path)
        if task.column in self.stored:
            self.stored[task.column][row] = path.read_bytes()
            path.unlink()
        self.frame.loc[row, task.column] = name


def file_stem(instance_id: str) -> str:
    """A file name for an instance: its id when that is a safe name, else a sanitised id + hash."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", instance_id):
        return instance_id
    digest = hashlib.sha1(instance_id.encode("utf-8")).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', instance_id)[:60].strip('._')}-{digest}"


def label_value(name: str, dtype: Any, as_found: dict[str, Any]) -> Any:
    """A class name in the representation of the label column (ints stay ints, text stays text)."""
    if pd.api.types.is_bool_dtype(dtype):
        return name == "True"
    if pd.api.types.is_integer_dtype(dtype):
        return int(name)
    if pd.api.types.is_float_dtype(dtype):
        return float(name)
    return as_found.get(name, name)


def write_classes(output: Output, task: TaskSpec, rows: Sequence[int], new: Sequence[str]) -> None:
    """Give some rows of a classification task new classes (by name), each written as the
    label column writes that class: ints stay ints, text stays text, ``"3.0"`` stays ``"3.0"``."""
    names = output.manifest.class_names[task.name]
    column = output.frame[task.column]
    index = output.manifest.class_index(task)  # (N,)
    present, first_from_end = np.unique(index[::-1], return_index=True)
    last = len(index) - 1 - first_from_end  # (C',) each present class's last row
    as_found = {names[c]: column.iloc[r] for c, r in zip(present, last, strict=True)}
    values = column.tolist()
    for row, name in zip(rows, new, strict=True):
        values[row] = label_value(name, column.dtype, as_found)
    output.frame[task.column] = pd.Series(values, index=column.index, dtype=column.dtype)


def write_tags(output: Output, task: TaskSpec, rows: Sequence[int], table: np.ndarray) -> None:
    """Give some rows of a multi-label task new tag sets, ``table`` (k, C) bool over the task's
    tags, each written in the column's own form: a list (of integers where the tags are), or
    text joined by the task's separator. A column the reader took for numbers (one integer tag
    per cell) is written as text throughout, so that it reads back as the same tags."""
    manifest = output.manifest
    names = manifest.class_names[task.name]
    tags = manifest.tag_columns[task.name]
    column = output.frame[task.column]
    if tags.form == "text" and column.dtype.kind in "iuf":
        values = tag_cells(manifest.tag_matrix(task), names, tags, task.separator)
    else:
        values = column.tolist()
    for row, cell in zip(rows, tag_cells(table, names, tags, task.separator), strict=True):
        values[row] = cell
    output.frame[task.column] = pd.Series(values, index=column.index, dtype=object)


def save_png(array: np.ndarray, dtype: Any, path: Path) -> None:
    """A mask as a PNG of class indices (uint8, or uint16 for a 16-bit PNG)."""
    Image.fromarray(np.ascontiguousarray(array.astype(dtype))).save(path, format="PNG")


def save_npy(array: np.ndarray, path: Path) -> None:
    """A depth map as ``.npy``, without pickles."""
    with path.open("wb") as handle:
        np.save(handle, array, allow_pickle=False)


def check_out(out: Path) -> None:
    """``out`` must be new or an empty folder: a derived dataset never overwrites anything."""
    if out.is_dir():
        if any(out.iterdir()):
            raise OptionError(f"{out} exists and is not empty")
    elif out.exists():
        raise OptionError(f"{out} exists and is not a directory")


def write_derived(
    manifest: Manifest,
    out: Path,
    *,
    command: str,
    note: str,
    edit: Callable[[Output], None],
    record: Callable[[Path], None],
) -> None:
    """Write the dataset ``edit`` makes of ``manifest`` into ``out``, atomically.

    ``edit`` changes the new table (``output.frame``) and writes new label files through
    ``output.write_file``; ``record(staging)`` writes the command's own record beside the card.
    """
    card = manifest.card
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        table = manifest.original_frame()  # original dtypes
        if card.row_ids:
            table.insert(0, card.id, manifest.ids)
        output = Output(manifest, table, out, staging)
        _rewrite_paths(output)
        edit(output)  # may drop rows: the frame's labels stay the original row numbers
        raw, header = _new_card(manifest, command, note)
        if manifest.schema is not None:
            _write_arrow(output, staging / raw["table"])
        else:
            _write_table(output.frame.reset_index(drop=True), staging / raw["table"])
        (staging / card.path.name).write_text(header + toml_dumps(raw), encoding="utf-8")
        record(staging)
        try:  # one rename: two runs on one --out never mix, the second to finish is refused
            os.replace(staging, out)
        except OSError:
            if not out.exists():
                raise
            raise OptionError(
                f"{out} exists and is not empty: another process wrote it while this one ran"
            ) from None
    except OSError as exc:  # a full disk or a folder that cannot be written: nothing of out
        written = Path(exc.filename) if isinstance(exc.filename, str) else None
        if written is None or staging not in (written, *written.parents):
            if exc.errno not in WRITE_ERRNOS:
                raise
            written = staging
        raise write_error(out / written.relative_to(staging), exc) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _new_card(manifest: Manifest, command: str, note: str) -> tuple[dict[str, Any], str]:
    """The new card's content and its header comment: the original's, with the table next to it,
    no ``root`` (paths are relative to the new card's folder, where the new label files are)
    and, for an image card whose images are files, ``allow_outside_paths`` and the reason."""
    card = manifest.card
    raw = dict(card.raw)
    raw.pop("root", None)
    # a path is quoted: a newline in it must not end the comment (task names are [a-z0-9_-])
    header = f"# Written by ilt-audit {command} from {toml_string(str(card.path))}\n# {note}\n"
    raw["table"] = Path(card.table).name if re.search(ESCAPING_PATH, card.table) else card.table
    if card.table_path.is_dir():  # a save_to_disk folder: written as one Parquet table
        raw["table"] = f"{Path(raw['table']).name}.parquet"
    if raw.pop("row_ids", False):  # the ids become a column: dropped rows renumber nothing
        raw = {"table": raw.pop("table"), "id": card.id, **raw}
    if card.input.type == "image" and _names_files(manifest, card.input.columns[0]):
        # Honest rather than tidy: the new manifest names the original dataset's input files,
        # never copied (it may be large), and they lie outside this folder. Links to them would
        # be refused as any path that leaves the folder is, so the card opts in and says why.
        # The original's own paths passed its card's rule when its manifest was read.
        raw["allow_outside_paths"] = True
        header += (
            "# allow_outside_paths: the inputs are the original dataset's files in "
            f"{toml_string(str(card.root))}\n"
        )
    return raw, header


def _names_files(manifest: Manifest, column: str) -> bool:
    """Whether some row of a file column names a file (rather than storing it in the table)."""
    stored = manifest.stored.get(column)
    return stored is None or not stored.in_table().all()


def _rewrite_paths(output: Output) -> None:
    """Point every file column at the original files (in the original's data folder), relative
    to the new card's folder."""
    card = output.manifest.card
    columns = [t.column for t in card.tasks if t.dense]
    if card.input.type == "image":
        columns.insert(0, card.input.columns[0])
    for column in dict.fromkeys(columns):
        stored = output.manifest.stored.get(column)
        named = ~stored.in_table() if stored is not None else np.ones(len(output.frame), bool)
        rewritten = [
            value
            if not path or os.path.isabs(value)
            else Path(os.path.relpath(card.root / value, output.root)).as_posix()
            for value, path in zip(output.frame[column], named, strict=True)
        ]
        # object: a stored column's paths may all be None, which must stay text-typed
        output.frame[column] = pd.Series(rewritten, index=output.frame.index, dtype=object)


ARROW_SLICE = 4096  # rows of stored files carried over at a time (a bounded share of memory)


def _write_arrow(output: Output, path: Path) -> None:
    """Write a table read through Arrow (Parquet, an Arrow file, a ``save_to_disk`` folder) as
    Parquet, or as an Arrow IPC stream for an ``.arrow`` name: the frame's columns in their
    stored types (``ClassLabel`` names back to their indices), the stored files carried over
    from the original table a slice of rows at a time, and the schema's metadata (the features)
    kept."""
    manifest = output.manifest
    schema = manifest.schema
    assert schema is not None
    frame = output.frame
    kept = frame.index.to_numpy()  # (M,) the original rows, in order
    columns: dict[str, pa.Array] = {}
    for name in frame.columns:
        if name in manifest.stored:
            continue
        values = frame[name].reset_index(drop=True)
        if name in manifest.label_names:
            values = pd.Series(pd.Index(manifest.label_names[name]).get_indexer(values))
        column = pa.array(values, from_pandas=True)
        columns[name] = _as_stored(
            column, schema.field(name).type if name in schema.names else None
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    writer: Any = None
    try:
        for start in range(0, len(kept), ARROW_SLICE):
            stop = min(start + ARROW_SLICE, len(kept))
            part = {
                name: _stored_slice(output, name, kept[start:stop], slice(start, stop))
                if name in manifest.stored
                else columns[name].slice(start, stop - start)
                for name in frame.columns
            }
            batch = pa.table(part).replace_schema_metadata(schema.metadata)
            if writer is None:
                writer = (
                    pa.ipc.new_stream(str(path), batch.schema)
                    if path.suffix.lower() == ".arrow"
                    else pq.ParquetWriter(path, batch.schema)
                )
            writer.write_table(batch)
    finally:
        if writer is not None:
            writer.close()


def _as_stored(column: pa.Array, kind: pa.DataType | None) -> pa.Array:
    """A column in the type the original table stored it in, where it still converts."""
    if kind is None or column.type == kind:
        return column
    try:
        return column.cast(kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return column


def _stored_slice(output: Output, name: str, rows: np.ndarray, positions: slice) -> pa.Array:
    """A stored column's new cells for some original ``rows`` (at ``positions`` of the new
    table): the original bytes, untouched, or the new file ``write_file`` stored for a row; the
    paths the frame now holds."""
    manifest = output.manifest
    assert manifest.schema is not None
    kind = manifest.schema.field(name).type
    data = manifest.stored[name].data.take(pa.array(rows, pa.int64())).combine_chunks()  # (m,)
    new = output.stored.get(name, {})
    replaced = np.isin(rows, list(new))  # (m,)
    if replaced.any():
        values = pa.array([new[int(r)] for r in rows[replaced]], data.type)
        data = pc.replace_with_mask(data, pa.array(replaced), values)
    if not pa.types.is_struct(kind):
        return data
    paths = output.frame[name].iloc[positions]
    text = pa.array(paths, kind.field("path").type, from_pandas=True)  # NaN, None: null
    return pa.StructArray.from_arrays(
        [data.cast(kind.field("bytes").type), text],
        fields=[kind.field("bytes"), kind.field("path")],
        mask=pc.and_(pc.is_null(data), pc.is_null(text)),
    )


def _write_table(frame: pd.DataFrame, path: Path) -> None:
    """Write a manifest in the format its name says, so that ``read_table`` reads it back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kind = TABLE_READERS[path.suffix.lower()]
    if kind == "csv":
        frame.to_csv(path, index=False)
    elif kind == "parquet":
        frame.to_parquet(path, index=False)
    else:
        # json.dumps writes floats with repr, so they read back exactly (to_json rounds them)
        with path.open("w", encoding="utf-8") as handle:
            for record in frame.to_dict(orient="records"):
                clean = {
                    str(k): (None if isinstance(v, float) and math.isnan(v) else v)
                    for k, v in record.items()
                }
                handle.write(json.dumps(clean, ensure_ascii=False, default=str) + "\n")


SPLIT_COLUMN = "ilt_audit_split"  # the column write_split_card adds


def write_split_card(
    manifest: Manifest, card_path: Path, is_val: np.ndarray, *, column: str = SPLIT_COLUMN
) -> Path:
    """Write ``card_path``: the dataset with a train/val split column added, for a network that
    must not see some rows (a fold held out, a clean validation split).

    The new card is the original's, its table a Parquet file beside it (``card_path`` with the
    suffix ``.parquet``) holding the original table with ``column`` added: ``"val"`` where
    ``is_val`` (a boolean per row, in the manifest's order), ``"train"`` elsewhere. Nothing else
    changes: file paths are rewritten relative to the new card's folder (``allow_outside_paths``
    set where they then lead out of it; the files stay where they are), the ``root`` is not
    carried over. Several split cards may share a folder; the card is written last, so a card
    that exists is whole. A dataset that already has a split column is refused.
    """
    card = manifest.card
    if card.split is not None:
        raise OptionError(
            f"{card.path} already has a split column ({card.split!r}); a split card adds its own"
        )
    if len(is_val) != len(manifest.ids):
        raise OptionError(f"is_val has {len(is_val)} values for {len(manifest.ids)} rows")
    folder = card_path.parent.resolve()
    output = Output(manifest, manifest.original_frame(), folder, folder)
    if column in output.frame.columns:
        raise OptionError(f"{card.table_path} already has a column {column!r}")
    _rewrite_paths(output)
    frame = output.frame
    frame[column] = np.where(is_val, "val", "train")
    folder.mkdir(parents=True, exist_ok=True)
    table = card_path.with_suffix(".parquet").name
    frame.to_parquet(folder / table, index=False)
    raw = {k: v for k, v in card.raw.items() if k != "root"}
    raw |= {"table": table, "split": column}
    files = [t.column for t in card.tasks if t.dense]
    files += [card.input.columns[0]] if card.input.type == "image" else []
    if any(str(v).startswith("../") for name in files for v in frame[name]):
        raw["allow_outside_paths"] = True  # the files stay in the dataset's own folder
    header = (
        f"# Written by ilt-audit from {toml_string(str(card.path))}: its table with a split "
        f"column, {int(np.count_nonzero(is_val))} of {len(frame)} rows held out (val)\n"
    )
    (folder / card_path.name).write_text(header + toml_dumps(raw), encoding="utf-8")
    return folder / card_path.name
