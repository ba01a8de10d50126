"""A table (CSV, Parquet, JSON Lines, an Arrow file or a ``save_to_disk`` folder): each column's
role is inferred from its values (an id, an image path, class labels, lists of tags, regression
targets, mask or depth-map paths, a train/val split, numeric features) or settled by hand (``--task``,
``--input``, ``--id``, ``--skip``); the card points at the table itself. What a Hugging Face
export adds (images stored in the table, ``ClassLabel`` names, no id column) is
:mod:`~ilt_audit.dataset.layouts.huggingface`'s."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ilt_audit.dataset import huggingface, manifest
from ilt_audit.dataset.card import ESCAPING_PATH, SAVED, TABLE_READERS, TASK_TYPES
from ilt_audit.dataset.layouts import huggingface as export
from ilt_audit.dataset.layouts.draft import Draft, inside
from ilt_audit.dataset.layouts.sampling import (
    IMAGE_SUFFIXES,
    MAP_SUFFIXES,
    Files,
    dense_task,
    sample_files,
    sample_rows,
)
from ilt_audit.dataset.tags import TagCellError, read_tags
from ilt_audit.errors import CardError, OptionError

CLASS_LIMIT = 50  # an integer column with at most this many distinct values holds classes
_ID_NAME = re.compile(r"(?:id|ids|uid|uuid|key|.*[_\-. ]id)", re.IGNORECASE)
_CAMEL_ID = re.compile(r".*[a-z]Id")
_TASK_OPTION = re.compile(r"(?P<name>[^=]+)=(?P<columns>.+):(?P<type>[^:]+)")


@dataclass(frozen=True)
class TaskOption:
    """``--task NAME=COLUMN:TYPE`` (regression: ``NAME=COL1,COL2:regression``)."""

    name: str
    columns: tuple[str, ...]
    type: str


def parse_task_option(text: str) -> TaskOption:
    """Parse ``NAME=COLUMN:TYPE``; an unknown type lists the choices.

    Example:
        >>> parse_task_option("size=w,h:regression")
        TaskOption(name='size', columns=('w', 'h'), type='regression')
    """
    found = _TASK_OPTION.fullmatch(text)
    if found is None:
        raise OptionError(
            f"--task {text!r}: expected NAME=COLUMN:TYPE, e.g. --task species=species:classification"
        )
    name, kind = found["name"], found["type"]
    if not re.fullmatch(r"[a-z0-9_-]+", name):
        raise OptionError(f"--task {text!r}: task names may use only a-z, 0-9, '_' and '-'")
    if kind not in TASK_TYPES:
        raise OptionError(f"--task {text!r}: TYPE must be one of {', '.join(TASK_TYPES)}")
    columns = tuple(found["columns"].split(",")) if kind == "regression" else (found["columns"],)
    return TaskOption(name, columns, kind)


def read_table(
    path: Path,
    folder: Path,
    options: list[TaskOption],
    inputs: list[str],
    id_column: str | None,
    skip: list[str],
    allow_outside: bool,
) -> Draft:
    saved = path.is_dir()
    if path.suffix.lower() not in TABLE_READERS and not saved:
        raise CardError(
            f"{path}: not a table ilt-audit reads (a suffix of {', '.join(TABLE_READERS)}) "
            "nor a folder"
        )
    draft = Draft("saved" if saved else "table", table=path, source=path)
    table = path.resolve()
    if not inside(table, folder) and not allow_outside:
        raise draft.fail(
            f"{path}: the table is outside the card's folder {folder}; put the card in "
            f"{table.parent} or a folder above it (e.g. --out {table.parent / 'card.toml'}), or "
            "pass --allow-outside-paths"
        )
    read = manifest.read_table(path, id_column or "")
    frame = read.frame
    if saved:
        draft.note(
            str(path), SAVED, f"{huggingface.STATE} lists its data files, read memory-mapped"
        )
    if frame.empty:
        raise draft.fail(f"{path}: the table has no rows")
    frame.columns = [str(c) for c in frame.columns]
    columns = list(frame.columns)
    for flag, names in (
        ("--id", [id_column] if id_column else []),
        ("--input", inputs),
        ("--skip", skip),
        ("--task", [c for t in options for c in t.columns]),
    ):
        unknown = next((n for n in names if n not in columns), None)
        if unknown is not None:
            raise OptionError(
                f"{flag} {unknown!r}: no such column in {path}; its columns are: "
                f"{', '.join(columns)}"
            )
    open_columns = [c for c in columns if c not in skip]
    for column in skip:
        draft.note(column, "left out", "--skip")

    chosen = _choose_id(draft, path, frame, open_columns, id_column, export.is_export(read))
    if chosen is not None:
        open_columns.remove(chosen)
    split = _choose_split(draft, path, frame, open_columns)
    if split is not None:
        open_columns.remove(split)
        draft.card["split"] = split

    # The columns settled by hand; the others are inferred.
    tasks: dict[str, dict[str, Any]] = {}
    given = {c for t in options for c in t.columns} | set(inputs)
    open_columns = [c for c in open_columns if c not in given]
    scanned = [c for c in columns if c not in skip and c != split]
    files = _file_columns(draft, path, read, folder, scanned, allow_outside)
    open_columns = [c for c in open_columns if c not in read.stored or c in files]  # noted
    for option in options:
        tasks[option.name] = _option_task(draft, read, option, files, folder)

    images = [c for c in open_columns if c in files and files[c].kind == "image"]
    if not images and chosen in files and files[chosen].kind == "image":
        images = [chosen]  # --id names the image column: its paths are the ids
    input_spec = _choose_input(draft, frame, inputs, images, files, open_columns)
    used = set(input_spec.get("columns", [input_spec.get("column")]))
    open_columns = [c for c in open_columns if c not in used]
    for other in images:
        if other in open_columns:
            open_columns.remove(other)
            if not (len(images) > 1 and not inputs):  # an ambiguous one is noted as such
                draft.note(other, "left out", "an image column other than the input (--input)")
    taken = set(tasks)
    for column in open_columns:
        task = _infer_task(draft, read, column, files.get(column), input_spec, taken)
        if task is not None:
            name, spec = task
            tasks[name] = spec
            taken.add(name)
    ambiguous = next((n for n in draft.notes if n.choices), None)
    if ambiguous is not None:
        raise draft.fail(
            f"{path}: column {ambiguous.subject!r} is ambiguous: {ambiguous.why}; choose with "
            + " or ".join(ambiguous.choices)
        )
    if not tasks:
        raise draft.fail(
            f"{path}: no label column found (every column is the id, the input or left out); "
            "name one with --task NAME=COLUMN:TYPE"
        )
    draft.card.update({"input": input_spec, "tasks": tasks})
    if chosen is not None:
        draft.card = {"id": chosen, **draft.card}
    return draft


def _choose_id(
    draft: Draft,
    path: Path,
    frame: pd.DataFrame,
    columns: list[str],
    given: str | None,
    numbered: bool,
) -> str | None:
    """The id column; None when the table is a Hugging Face export without one (``numbered``):
    then the rows' numbers are the ids (:func:`~ilt_audit.dataset.layouts.huggingface.row_ids`)."""
    if given is not None:
        draft.note(given, "id", "--id")
        return given
    candidates = [
        c
        for c in columns
        if (_ID_NAME.fullmatch(c) or _CAMEL_ID.fullmatch(c))
        and _kind(frame[c]) in ("text", "integer")
        and frame[c].notna().all()
        and not frame[c].duplicated().any()
    ]
    if len(candidates) > 1 and "id" in candidates:
        candidates = ["id"]
    if len(candidates) == 1:
        draft.note(candidates[0], "id", "named like an id, and its values are unique")
        return candidates[0]
    if candidates:
        raise draft.fail(
            f"{path}: columns {', '.join(map(repr, candidates))} could each be the id; choose with "
            + " or ".join(f"--id {c}" for c in candidates)
        )
    if numbered:
        export.row_ids(draft, len(frame))
        return None
    raise draft.fail(
        f"{path}: no id column: no column named like an id (id, key, *_id) holds unique values; "
        f"name the column of unique instance ids with --id COLUMN (columns: {', '.join(columns)})"
    )


def _choose_split(draft: Draft, path: Path, frame: pd.DataFrame, columns: list[str]) -> str | None:
    found = []
    for column in columns:
        if _kind(frame[column]) != "text":
            continue
        values = set(frame[column].dropna().unique().tolist())
        if values and values <= {"train", "val"}:
            found.append(column)
        elif column.lower() == "split":
            other = sorted(values - {"train", "val"})[0]
            raise draft.fail(
                f"{path}: column {column!r} holds {other!r}; a split column holds train and val "
                f"only: fix it, or leave it out with --skip {column}"
            )
    if len(found) > 1:
        raise draft.fail(
            f"{path}: columns {', '.join(map(repr, found))} each hold train/val values; leave all "
            "but the split out with --skip COLUMN"
        )
    if found:
        counts = frame[found[0]].value_counts()
        draft.note(
            found[0],
            "split",
            "train/val values: " + ", ".join(f"{n:,} {s}" for s, n in counts.items()),
        )
        return found[0]
    return None


def _kind(column: pd.Series) -> str:
    """A column's kind: text, integer, float, boolean, empty, or what pandas calls it."""
    if pd.api.types.is_bool_dtype(column.dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(column.dtype):
        return "integer"
    if pd.api.types.is_float_dtype(column.dtype):
        return "float"
    inferred = pd.api.types.infer_dtype(column, skipna=True)
    return {
        "string": "text",
        "boolean": "boolean",
        "integer": "integer",
        "floating": "float",
        "mixed-integer-float": "float",
        "empty": "empty",
    }.get(inferred, inferred)


def _file_columns(
    draft: Draft,
    path: Path,
    read: manifest.Table,
    folder: Path,
    columns: list[str],
    allow_outside: bool,
) -> dict[str, Files]:
    """The text columns that name files (most values end in an image or ``.npy`` suffix), with
    what a sample of their files holds; the first one decides ``draft.root``. A column that
    stores its files in the table is one too, whatever its path texts say."""
    frame = read.frame
    found: dict[str, Files] = {}
    known = "|".join(re.escape(s[1:]) for s in (*IMAGE_SUFFIXES, *MAP_SUFFIXES))
    for column in columns:
        values = frame[column]
        if column in read.stored:
            if not export.holds_images(draft, read, column):
                continue
            files = export.StoredColumn(read.stored[column], column, draft.root or folder)
            found[column] = export.stored(sample_files(draft, column, files, masks=False))
            continue
        if _kind(values) != "text":
            continue
        text = pa.array(values.where(values.notna(), None), pa.string())
        suffixes = pc.extract_regex(pc.utf8_lower(text), rf"\.(?P<s>{known})$")
        named = pc.is_valid(suffixes).to_numpy(zero_copy_only=False)
        if named.sum() * 2 < len(named):
            continue  # text, not paths
        if not named.all():
            row = int(np.flatnonzero(~named)[0])
            raise draft.fail(
                f"{path}: column {column!r} names files, but row {row + 1} holds "
                f"{values.iloc[row]!r}, which is neither an image ({', '.join(IMAGE_SUFFIXES)}) "
                "nor a .npy map"
            )
        kinds = pc.struct_field(suffixes, [0]).to_numpy(zero_copy_only=False)
        is_map = np.isin(kinds, [s[1:] for s in MAP_SUFFIXES])
        if is_map.any() and not is_map.all():
            row = int(np.flatnonzero(is_map != is_map[0])[0])
            raise draft.fail(
                f"{path}: column {column!r} mixes .npy maps and images: row {row + 1} holds "
                f"{values.iloc[row]!r} but row 1 {values.iloc[0]!r}"
            )
        if not allow_outside:
            escaping = pc.match_substring_regex(text, ESCAPING_PATH).to_numpy(zero_copy_only=False)
            if escaping.any():
                row = int(np.flatnonzero(escaping)[0])
                raise draft.fail(
                    f"{path}: column {column!r}: row {row + 1} holds {values.iloc[row]!r}, a path "
                    "that leads outside the data folder (absolute, or through ..); pass "
                    "--allow-outside-paths if the data really lives there"
                )
        root = _base(draft, path, folder, column, values)
        if is_map.all():
            rows = sample_rows(len(values))
            missing = next(
                (values.iloc[r] for r in rows if not (root / values.iloc[r]).is_file()), None
            )
            if missing is not None:
                raise draft.fail(f"{root / missing}: file not found (column {column!r})")
            found[column] = Files("map", ".npy maps")
        else:
            paths = [root / v for v in values]
            found[column] = sample_files(draft, column, paths, masks=False)
    return found


def _base(draft: Draft, path: Path, folder: Path, column: str, values: pd.Series) -> Path:
    """The folder the table's paths are relative to: the card's folder, else the table's own
    (which the card then names as its ``root``), decided by the first path column's first row;
    it is kept in ``draft.root`` for the other columns."""
    first = values.iloc[0]
    if draft.root is None:
        here = path.resolve().parent
        draft.root = next((b for b in (folder, here) if (b / first).exists()), None)
        if draft.root is None:
            also = "" if here == folder else f", nor relative to the table's folder {here}"
            raise draft.fail(f"{folder / first}: file not found (column {column!r}, row 1){also}")
    elif not (draft.root / first).exists():
        raise draft.fail(f"{draft.root / first}: file not found (column {column!r}, row 1)")
    return draft.root


def _option_task(
    draft: Draft, read: manifest.Table, option: TaskOption, files: dict[str, Files], folder: Path
) -> dict[str, Any]:
    frame = read.frame
    column = option.columns[0]
    if option.type == "regression":
        draft.note(", ".join(option.columns), f"task {option.name}: regression", "--task")
        return {"type": "regression", "columns": list(option.columns)}
    if option.type == "segmentation":
        if column not in files:
            raise OptionError(
                f"--task {option.name}={column}:segmentation: column {column!r} does not name "
                "image files"
            )
        root = draft.root or folder  # set with the file columns that name files
        paths: Any = [root / v for v in frame[column]]
        if column in read.stored:
            paths = export.StoredColumn(read.stored[column], column, root)
        found = sample_files(draft, column, paths, masks=True)
        found = dataclasses.replace(found, why=f"--task; {found.why}")
        task = dense_task(draft, column, option.name, found)
        return task
    if option.type == "classification" and column in read.label_names:
        names = read.label_names[column]
        return export.class_label_task(draft, column, option.name, names, "--task")
    draft.note(column, f"task {option.name}: {option.type}", "--task")
    return {"type": option.type, "column": column}


def _choose_input(
    draft: Draft,
    frame: pd.DataFrame,
    inputs: list[str],
    images: list[str],
    files: dict[str, Files],
    columns: list[str],
) -> dict[str, Any]:
    if len(inputs) == 1 and inputs[0] in files and files[inputs[0]].kind in ("image", "mask"):
        draft.note(inputs[0], "input: image", f"--input; {files[inputs[0]].why}")
        return {"type": "image", "column": inputs[0]}
    if inputs:
        bad = next((c for c in inputs if _kind(frame[c]) not in ("integer", "float")), None)
        if bad is not None:
            raise OptionError(
                f"--input {bad!r}: neither a column of images nor a numeric feature column "
                f"(it holds {_kind(frame[bad])} values)"
            )
        draft.note(", ".join(inputs), "input: features", "--input")
        return {"type": "features", "columns": list(inputs)}
    if len(images) == 1:
        draft.note(images[0], "input: image", f"{images[0]!r} names {files[images[0]].why}")
        return {"type": "image", "column": images[0]}
    masks = [c for c in columns if c in files and files[c].kind == "mask"]
    if not images and masks:  # single-channel files with few values and nothing else: which?
        for column in masks:
            draft.note(
                column,
                "ambiguous",
                f"{files[column].why}, and no other column holds images: masks, or the input?",
                [f"--input {column}", f"--task NAME={column}:segmentation with another --input"],
            )
        return {"type": "image", "column": masks[0]}
    if len(images) > 1:
        for column in images:
            draft.note(
                column,
                "ambiguous",
                f"images in {len(images)} columns ({', '.join(images)}): which is the input?",
                [f"--input {c}" for c in images],
            )
        return {"type": "image", "column": images[0]}
    features = [
        c
        for c in columns
        if _kind(frame[c]) in ("integer", "float") and frame[c].nunique(dropna=True) > 1
    ]
    if not features:
        raise draft.fail(
            f"{draft.table}: no input: no column names images and no numeric column could be a "
            "feature; name the input with --input COLUMN"
        )
    for column in features:
        why = "numeric, and the table has no image column"
        if _kind(frame[column]) == "integer" and frame[column].nunique() <= CLASS_LIMIT:
            why += (
                f"; it holds {frame[column].nunique()} distinct integers: if they are classes, "
                f"use --task NAME={column}:classification"
            )
        elif _kind(frame[column]) == "float":
            why += f"; if it is a target, use --task NAME={column}:regression"
        draft.note(column, "input: feature", why)
    return {"type": "features", "columns": features}


def _infer_task(
    draft: Draft,
    read: manifest.Table,
    column: str,
    files: Files | None,
    input_spec: dict[str, Any],
    taken: set[str],
) -> tuple[str, dict[str, Any]] | None:
    """The task a column holds, or ``None`` when it is left out (either way, noted)."""
    name = _task_name(column, taken)
    values = read.frame[column]
    kind = _kind(values)
    if files is not None:
        if files.kind == "map":
            draft.note(column, f"task {name}: dense-regression", files.why)
            return name, {"type": "dense-regression", "column": column}
        if files.kind == "mask":
            return name, dense_task(draft, column, name, files)
        return None  # images: the input, or noted as left out
    if column in read.label_names:
        return name, export.class_label_task(draft, column, name, read.label_names[column])
    if _holds_lists(values):
        try:
            tags = read_tags(values, "|").names()
        except TagCellError:  # the card's check names the cell
            tags = ()
        shown = ", ".join(tags[:5]) + (", …" if len(tags) > 5 else "")
        why = f"a list per row: {len(tags)} distinct tags" + (f" ({shown})" if tags else "")
        draft.note(column, f"task {name}: multi-label", why)
        return name, {"type": "multi-label", "column": column}
    distinct = int(values.nunique(dropna=True))
    rows = len(values)
    if distinct < 2:
        why = f"a single value ({values.dropna().iloc[0]!r}) is no label" if distinct else "empty"
        draft.note(column, "left out", why)
        return None
    if kind == "boolean":
        draft.note(column, f"task {name}: classification", "true/false values")
        return name, {"type": "classification", "column": column}
    if kind == "text":
        if distinct == rows:
            draft.note(
                column,
                "left out",
                "a different text in every row: an identifier or free text, not a label "
                f"(--task NAME={column}:classification to use it)",
            )
            return None
        if distinct * 2 <= rows:
            draft.note(column, f"task {name}: classification", f"text: {distinct} classes")
            return name, {"type": "classification", "column": column}
        draft.note(
            column,
            "ambiguous",
            f"text with {distinct} distinct values in {rows} rows",
            [f"--task {name}={column}:classification", f"--skip {column}"],
        )
        return None
    if kind == "integer":
        if distinct <= CLASS_LIMIT and distinct * 2 <= rows:
            draft.note(
                column,
                f"task {name}: classification",
                f"integers with few distinct values ({distinct})",
            )
            return name, {"type": "classification", "column": column}
        draft.note(
            column,
            "ambiguous",
            f"integers with {distinct} distinct values in {rows} rows (classes, or a quantity)",
            [
                f"--task {name}={column}:classification",
                f"--task {name}={column}:regression",
                f"--skip {column}",
            ],
        )
        return None
    if kind == "float":
        draft.note(column, f"task {name}: regression", "floating-point values")
        return name, {"type": "regression", "columns": [column]}
    draft.note(column, "left out", f"{kind} values: not a label type ilt-audit reads")
    return None


def _holds_lists(values: pd.Series) -> bool:
    """Whether a column holds a list per cell (Parquet list columns, JSON arrays)."""
    present = values.dropna()
    return not present.empty and isinstance(present.iloc[0], list | np.ndarray)


def _task_name(column: str, taken: set[str]) -> str:
    """A task name (``[a-z0-9_-]+``) from a column name, unique among ``taken``."""
    base = re.sub(r"[^a-z0-9_-]+", "_", column.lower()).strip("_") or "task"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    return name
