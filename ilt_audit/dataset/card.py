"""Dataset cards: the TOML file that names a manifest table, its input and its tasks.

A card names its table relative to its own folder, and may name the folder its data lives in
(``root``, relative to the card's folder or absolute); the paths in the table are relative to
that data folder, the card's own folder without ``root``, and stay inside it unless the card
opts out (``allow_outside_paths``).

This module parses the card alone; reading its table and checking every row is
:mod:`ilt_audit.dataset.manifest`, and decoding the files the rows point at is
:mod:`ilt_audit.dataset.loader`.
It never imports torch or pandas.

Example:
    >>> card = load_card("sample_manifests/shapes/card.toml")  # doctest: +SKIP
    >>> [t.name for t in card.tasks]  # doctest: +SKIP
    ['shape', 'geometry', 'seg', 'depth']
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ilt_audit.errors import CardError

TASK_TYPES = ("classification", "regression", "segmentation", "dense-regression", "multi-label")
DENSE_TYPES = ("segmentation", "dense-regression")
INPUT_TYPES = ("image", "features")
TABLE_READERS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".arrow": "arrow",  # an Arrow IPC stream or file, as the datasets library writes its shards
}
SAVED = "save_to_disk folder"  # a table that is a folder written by datasets' save_to_disk
_TASK_NAME = re.compile(r"^[a-z0-9_-]+$")
# The most pixels (or values) an image, a map or the card's [input] size may claim: Pillow's own
# default (0.25 GiB of RGBA). Checked against a file's header before the decoder allocates.
MAX_PIXELS = 89_478_485
# A mask is an 8- or 16-bit PNG: a label_map has at most this many entries, and a class count
# (of any task) is at most this.
MAX_STORED = 65_536
# A path that leaves the folder it is relative to by its text alone: absolute (POSIX, a Windows
# drive or a backslash root) or with a ".." component. One pattern for the card's ``table``
# (``re``) and for a manifest's path columns (pyarrow's RE2, vectorised).
ESCAPING_PATH = r"^(?:[/\\]|[A-Za-z]:)|(?:^|[/\\])\.\.(?:[/\\]|$)"
_ALLOW = "set allow_outside_paths = true in the card if the data really lives elsewhere"
CARD_FOLDER = "the card's folder"


def outside_path(where: str = CARD_FOLDER) -> str:
    """Why a path whose text leaves ``where`` (the card's folder, or its data folder) is refused."""
    return f"the path leads outside {where} ({_ALLOW})"


def outside_link(where: str = CARD_FOLDER) -> str:
    """Why a file that leaves ``where`` through a symbolic link is refused."""
    return (
        f"the file is a symbolic link (or in a linked folder) that leads outside {where} ({_ALLOW})"
    )


OUTSIDE_PATH = outside_path()
OUTSIDE_LINK = outside_link()


@dataclass(frozen=True)
class InputSpec:
    """What the network sees: a column of image paths or numeric feature columns."""

    type: str  # "image" | "features"
    columns: tuple[str, ...]  # one column for images; the feature columns otherwise
    size: tuple[int, int] | None = None  # images are resized to (H, W) when given


@dataclass(frozen=True)
class TaskSpec:
    """One task of the card: its name, type and the column(s) that hold its label."""

    name: str
    type: str  # one of TASK_TYPES
    columns: tuple[str, ...]
    classes: int | tuple[str, ...] | None = None  # declared class set (a count or names), if any
    ignore_index: int | None = None  # segmentation: pixels with this value carry no label
    scale: float = 1.0  # dense-regression from 16-bit PNG: (stored value - offset) / scale
    separator: str = "|"  # multi-label: what separates the tags of a text cell
    label_map: tuple[int, ...] | None = None  # segmentation: the class of stored value 0, 1, …
    offset: float = 0.0  # dense-regression from 16-bit PNG: subtracted before the scale
    invalid: int | None = None  # dense-regression: a PNG's stored value for "no target here"

    @property
    def column(self) -> str:
        return self.columns[0]

    @property
    def class_count(self) -> int:
        """How many classes a task that declares them has (a segmentation task always does)."""
        assert self.classes is not None
        return len(self.classes) if isinstance(self.classes, tuple) else self.classes

    @property
    def dense(self) -> bool:
        return self.type in DENSE_TYPES


@dataclass(frozen=True)
class Card:
    """A parsed dataset card. Its table is relative to ``folder`` (the card's folder), the paths
    in the table to ``root`` (the data folder: the card's ``root``, or the card's folder)."""

    path: Path
    table: str
    id: str
    input: InputSpec
    tasks: tuple[TaskSpec, ...]
    split: str | None = None  # optional column: "train" rows are trained on, "val" rows validated
    allow_outside_paths: bool = False  # paths may lead outside the data folder (SPEC section 8)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    named_root: Path | None = None  # the folder the card's ``root`` names, resolved; None without
    row_ids: bool = False  # no id column: the ids are the row numbers, zero-padded (``id`` names
    # the column the manifest gives them, one the table does not have)

    @property
    def folder(self) -> Path:
        """The card's own folder, which its ``table`` is relative to (resolved by load_card)."""
        return self.path.parent

    @property
    def root(self) -> Path:
        """The data folder, which the table's paths are relative to (resolved by load_card)."""
        return self.named_root or self.folder

    @property
    def root_text(self) -> str:
        """The data folder, as messages name it."""
        return CARD_FOLDER if self.named_root is None else f"the data folder {self.named_root}"

    @property
    def outside_path(self) -> str:
        return outside_path(self.root_text)

    @property
    def outside_link(self) -> str:
        return outside_link(self.root_text)

    @property
    def table_path(self) -> Path:
        return self.folder / self.table

    def task(self, name: str) -> TaskSpec:
        for task in self.tasks:
            if task.name == name:
                return task
        names = ", ".join(t.name for t in self.tasks)
        raise CardError(f"{self.path}: no task named {name!r}; the card's tasks are: {names}")

    def leaves_root(self, path: Path) -> bool:
        """Whether a file the table names, its symbolic links followed, lies outside the data
        folder (and the card does not allow that)."""
        return not self.allow_outside_paths and not inside(path, self.root)

    def leaves_folder(self, path: Path) -> bool:
        """Whether the card's table, its symbolic links followed, lies outside the card's folder
        (and the card does not allow that)."""
        return not self.allow_outside_paths and not inside(path, self.folder)

    def sha256(self) -> str:
        """Hash of the card and its manifest table, recorded in a run's config. A table stored
        as a ``save_to_disk`` folder counts by its state, its features and every data file;
        bytes stored in the table are part of it."""
        files = (self.path, *table_files(self.table_path))
        stats = [os.stat(f) for f in files]
        return _content_sha256(
            tuple((str(f), s.st_size, s.st_mtime_ns) for f, s in zip(files, stats, strict=True))
        )


def table_files(table: Path) -> list[Path]:
    """The files a manifest table is read from: the table, or a ``save_to_disk`` folder's state,
    features and data files."""
    if not table.is_dir():
        return [table]
    from ilt_audit.dataset import huggingface  # pyarrow: only for a folder

    info = [table / huggingface.INFO] if (table / huggingface.INFO).is_file() else []
    return [table / huggingface.STATE, *info, *huggingface.saved_files(table)]


@functools.lru_cache(maxsize=64)
def _content_sha256(files: tuple[tuple[str, int, int], ...]) -> str:
    """The sha256 of the files' bytes one after the other (the card, then its table's files: the
    same hash as runs before tables could be folders recorded), read in blocks (a table holding
    images may be large), once per process for the same sizes and modification times."""
    digest = hashlib.sha256()
    for path, _, _ in files:
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def file_columns(card: Card) -> list[str]:
    """The columns of a card's table that name files: the image input, then each dense task's
    (none for a features card)."""
    if card.input.type == "features":
        return []
    return [card.input.columns[0], *(t.column for t in card.tasks if t.dense)]


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path``, its symbolic links followed, lies in ``folder`` (resolved)."""
    return os.path.realpath(path).startswith(os.path.join(folder, ""))


def load_card(path: str | Path) -> Card:
    """Parse and check a dataset card (not its manifest).

    Example:
        >>> load_card("sample_manifests/penguins/card.toml").input.type  # doctest: +SKIP
        'features'
    """
    path = Path(path)
    if not path.is_file():
        raise CardError(f"{path}: dataset card not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CardError(f"{path}: not a valid TOML file: {exc}") from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise CardError(
            f"{path}: not a valid dataset card: its values are nested too deeply"
        ) from None
    except OSError as exc:
        raise CardError(f"{path}: cannot read the dataset card: {exc.strerror or exc}") from None
    return _parse_card(path.resolve(), raw)


def _parse_card(path: Path, raw: dict[str, Any]) -> Card:
    table = raw.get("table")
    if not isinstance(table, str) or not table:
        raise CardError(
            f"{path}: 'table' must name the manifest file, e.g. table = \"manifest.csv\""
        )
    suffix = Path(table).suffix.lower()
    if suffix not in TABLE_READERS and not _is_folder(path.parent / table):
        raise CardError(
            f"{path}: table {table!r} has an unknown extension {suffix!r}; "
            f"expected one of {', '.join(TABLE_READERS)}, or a {SAVED}"
        )
    row_ids = raw.get("row_ids", False)
    if not isinstance(row_ids, bool):
        raise CardError(f"{path}: 'row_ids' must be true or false, got {row_ids!r}")
    if row_ids and "id" in raw:
        raise CardError(
            f"{path}: 'row_ids = true' numbers the rows as their ids; remove 'id' or 'row_ids'"
        )
    id_column = raw.get("id", "id")
    if not isinstance(id_column, str):
        raise CardError(f"{path}: 'id' must be a column name, got {id_column!r}")
    split = raw.get("split")
    if split is not None and not isinstance(split, str):
        raise CardError(f"{path}: 'split' must be a column name, got {split!r}")
    allow_outside = raw.get("allow_outside_paths", False)
    if not isinstance(allow_outside, bool):
        raise CardError(
            f"{path}: 'allow_outside_paths' must be true or false, got {allow_outside!r}"
        )
    if not allow_outside and re.search(ESCAPING_PATH, table):
        raise CardError(f"{path}: table {table!r}: {OUTSIDE_PATH}")
    named_root = _parse_root(path, raw.get("root"))

    input_raw = raw.get("input")
    if not isinstance(input_raw, dict):
        raise CardError(f"{path}: missing [input] section")
    input_spec = _parse_input(path, input_raw)

    tasks_raw = raw.get("tasks")
    if not isinstance(tasks_raw, dict) or not tasks_raw:
        raise CardError(f"{path}: the card defines no task; add at least one [tasks.NAME] section")
    tasks = tuple(_parse_task(path, name, spec) for name, spec in tasks_raw.items())
    if input_spec.type == "features":
        dense = [t.name for t in tasks if t.dense]
        if dense:
            raise CardError(
                f"{path}: task {dense[0]!r} is a dense task, which needs an image input, "
                'but [input] type is "features"'
            )
    return Card(
        path, table, id_column, input_spec, tasks, split, allow_outside, raw, named_root, row_ids
    )


def _is_folder(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):  # a NUL in the text
        return False


def _parse_root(path: Path, root: Any) -> Path | None:
    """The data folder the card's ``root`` names (relative to the card's folder, or absolute),
    resolved; it must be an existing folder."""
    if root is None:
        return None
    if not isinstance(root, str) or not root:
        raise CardError(
            f"{path}: 'root' must name the data folder, e.g. root = \"../data\", got {root!r}"
        )
    try:
        folder = Path(os.path.realpath(path.parent / root))
        found = folder.is_dir()
    except (OSError, ValueError):  # a NUL in the text, a loop of links
        raise CardError(f"{path}: root {root!r}: not a usable folder path") from None
    if not found:
        why = "is not a folder" if folder.exists() else "does not exist"
        raise CardError(f"{path}: root {root!r}: the data folder {folder} {why}")
    return folder


def _parse_input(path: Path, spec: dict[str, Any]) -> InputSpec:
    kind = spec.get("type")
    if kind not in INPUT_TYPES:
        raise CardError(
            f"{path}: [input] type must be one of {', '.join(INPUT_TYPES)}, got {kind!r}"
        )
    if kind == "image":
        column = spec.get("column")
        if not isinstance(column, str):
            raise CardError(f'{path}: [input] type "image" needs column = "<image path column>"')
        size = spec.get("size")
        if size is not None and not (
            isinstance(size, list)
            and len(size) == 2
            and all(isinstance(v, int) and v > 0 for v in size)
        ):
            raise CardError(f"{path}: [input] size must be [height, width], got {size!r}")
        if size is not None and size[0] * size[1] > MAX_PIXELS:
            raise CardError(
                f"{path}: [input] size {size[0]}x{size[1]} is more than the {MAX_PIXELS:,} pixels "
                "an image may have"
            )
        return InputSpec("image", (column,), tuple(size) if size else None)
    columns = spec.get("columns")
    prefix = spec.get("prefix")
    if (columns is None) == (prefix is None):
        raise CardError(
            f'{path}: [input] type "features" needs either columns = [...] or prefix = "..."'
        )
    if columns is not None:
        if (
            not isinstance(columns, list)
            or not columns
            or not all(isinstance(c, str) for c in columns)
        ):
            raise CardError(f"{path}: [input] columns must be a non-empty list of column names")
        return InputSpec("features", tuple(columns))
    if not isinstance(prefix, str) or not prefix:
        raise CardError(f"{path}: [input] prefix must be a non-empty string")
    return InputSpec("features", (f"{prefix}*",))


def _parse_task(path: Path, name: str, spec: Any) -> TaskSpec:
    where = f"{path}: [tasks.{name}]"
    if not _TASK_NAME.match(name):
        raise CardError(f"{where}: task names may use only a-z, 0-9, '_' and '-'")
    if not isinstance(spec, dict):
        raise CardError(f"{where}: must be a table with type and column(s)")
    kind = spec.get("type")
    if kind not in TASK_TYPES:
        raise CardError(f"{where}: type must be one of {', '.join(TASK_TYPES)}, got {kind!r}")
    if "columns" in spec and kind == "regression":
        columns = spec["columns"]
        if (
            not isinstance(columns, list)
            or not columns
            or not all(isinstance(c, str) for c in columns)
        ):
            raise CardError(f"{where}: columns must be a non-empty list of column names")
    elif isinstance(spec.get("column"), str):
        columns = [spec["column"]]
    else:
        key = "columns = [...] or column" if kind == "regression" else "column"
        raise CardError(f'{where}: missing {key} = "<column name>"')

    classes = spec.get("classes")
    if kind == "segmentation" and classes is None:
        raise CardError(
            f"{where}: segmentation needs classes = <number of classes, at least 2> or the list "
            "of their names"
        )
    if kind == "multi-label" and classes is not None:
        classes = _tag_set(where, classes)
    elif classes is not None:
        if kind not in ("classification", "segmentation"):
            raise CardError(
                f"{where}: 'classes' applies only to classification, multi-label and segmentation "
                "tasks"
            )
        if isinstance(classes, list) and len(classes) >= 2:
            classes = tuple(str(c) for c in classes)  # a segmentation's names: class 0, 1, …
            twice = next((n for i, n in enumerate(classes) if n in classes[:i]), None)
            if twice is not None:  # a label would be two classes at once
                raise CardError(f"{where}: classes: {twice!r} is listed twice")
        elif isinstance(classes, bool) or not (
            isinstance(classes, int) and 2 <= classes <= MAX_STORED
        ):
            raise CardError(
                f"{where}: classes must be a count (2 to {MAX_STORED:,}) or a list of names, "
                f"got {classes!r}"
            )

    ignore_index = spec.get("ignore_index")
    if ignore_index is not None and (kind != "segmentation" or not isinstance(ignore_index, int)):
        raise CardError(f"{where}: ignore_index must be an integer, and only for segmentation")
    scale = spec.get("scale", 1.0)
    if not isinstance(scale, int | float) or scale <= 0:
        raise CardError(f"{where}: scale must be a positive number, got {scale!r}")
    separator = spec.get("separator", "|")
    if "separator" in spec and kind != "multi-label":
        raise CardError(f"{where}: 'separator' applies only to multi-label tasks")
    if not isinstance(separator, str) or not separator or separator.isspace():
        raise CardError(
            f'{where}: separator must be the text between two tags, e.g. "|", got {separator!r}'
        )
    task = TaskSpec(name, kind, tuple(columns), classes, ignore_index, float(scale), separator)
    return _parse_encoding(where, task, spec)


def _parse_encoding(where: str, task: TaskSpec, spec: dict[str, Any]) -> TaskSpec:
    """How a dense task's files store its labels: a mask's ``label_map`` (the class of each
    stored value), a 16-bit map's ``offset`` and the ``invalid`` value it stores where it has
    none. Read where each file is decoded (:func:`ilt_audit.dataset.files.read_label`)."""
    for key, kind in _ENCODING_KEYS.items():
        if key in spec and task.type != kind:
            raise CardError(f"{where}: {key!r} applies only to {kind} tasks")
    if task.type == "segmentation" and "label_map" in spec:
        return dataclasses.replace(task, label_map=_parse_label_map(where, task, spec["label_map"]))
    offset = spec.get("offset", 0.0)
    if isinstance(offset, bool) or not isinstance(offset, int | float) or not math.isfinite(offset):
        raise CardError(f"{where}: offset must be a number, got {offset!r}")
    invalid = spec.get("invalid")
    if invalid is not None and (isinstance(invalid, bool) or not isinstance(invalid, int)):
        raise CardError(
            f"{where}: invalid must be the integer a map stores where it has no value, got "
            f"{invalid!r}"
        )
    return dataclasses.replace(task, offset=float(offset), invalid=invalid)


_ENCODING_KEYS = {
    "label_map": "segmentation",
    "offset": "dense-regression",
    "invalid": "dense-regression",
}


def _parse_label_map(where: str, task: TaskSpec, label_map: Any) -> tuple[int, ...]:
    """A segmentation task's ``label_map``: entry ``v`` is the class (or the ``ignore_index``)
    of the pixels that store ``v``; every class, and the ``ignore_index``, is some value's."""
    if (
        not isinstance(label_map, list)
        or not label_map
        or len(label_map) > MAX_STORED
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in label_map)
    ):
        raise CardError(
            f"{where}: label_map must be a list of integers, the class of each stored value "
            f"0, 1, 2, … (at most {MAX_STORED:,})"
        )
    count = task.class_count
    allowed = set(range(count)) | ({task.ignore_index} if task.ignore_index is not None else set())
    bad = next((v for v in label_map if v not in allowed), None)
    if bad is not None:
        ignore = (
            f" or the ignore_index {task.ignore_index}" if task.ignore_index is not None else ""
        )
        raise CardError(
            f"{where}: label_map maps stored value {label_map.index(bad)} to {bad}, which is not "
            f"a class (0..{count - 1}){ignore}"
        )
    missing = sorted(allowed - set(label_map))
    if missing:
        raise CardError(
            f"{where}: label_map gives no stored value to {missing[0]}: every class"
            + (" and the ignore_index" if task.ignore_index is not None else "")
            + " must be some stored value's (fixed and corrected masks are written with it)"
        )
    return tuple(label_map)


def _tag_set(where: str, classes: Any) -> tuple[str, ...]:
    """A multi-label task's declared tags: a non-empty list of distinct, non-empty names."""
    if not isinstance(classes, list) or not classes or isinstance(classes, str):
        raise CardError(f"{where}: classes must be a list of tags, got {classes!r}")
    names = tuple(str(c) for c in classes)
    if any(isinstance(c, bool | float | list | dict) for c in classes) or "" in names:
        bad = next(c for c in classes if isinstance(c, bool | float | list | dict) or c == "")
        raise CardError(f"{where}: classes: a tag is a non-empty name, got {bad!r}")
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise CardError(f"{where}: classes: tag {twice!r} is listed twice")
    return names
