"""Exports for labelling tools: the suspects of a ranking as tasks to relabel.

:func:`label_studio_tasks` turns a ranking (:func:`ilt_audit.audit.ranking.rank`) into Label Studio's
task import format: one task per suspect instance and task of the card, its ``data`` holding the
id, the task, the rank and score, and the input (an image as a Label Studio *local files* URL
relative to the data folder, or the feature values), and its ``predictions`` holding the label
the manifest gives, as a pre-annotation that the annotator confirms or corrects:

- classification: a ``choices`` result (the class name);
- multi-label: a ``choices`` result holding the row's tags (a ``Choices`` control with
  ``choice="multiple"``);
- regression: one ``number`` result per target column;
- segmentation: one ``brushlabels`` result per class painted in the mask (class 0, the
  background, and ``ignore_index`` stay unpainted), in Label Studio's brush RLE
  (:func:`brush_rle`); the mask file's URL is in ``data`` too;
- dense-regression: Label Studio has no control for a depth map; its file's URL is in ``data``.

:func:`label_studio_config` writes the labelling interface (XML) whose control names match the
results' ``from_name``/``to_name``. Ids, labels, class names and paths are data: the JSON and the
XML are built by their libraries' serialisers, never by pasting text.

Example:
    >>> tasks = label_studio_tasks("runs/shapes", task="shape", top="5%")  # doctest: +SKIP
    >>> config = label_studio_config("runs/shapes", tasks)  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import io
import math
import posixpath
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ilt_audit.audit.ranking import DEFAULT_BY, rank
from ilt_audit.dataset.card import TaskSpec, inside
from ilt_audit.dataset.manifest import Manifest, label_texts
from ilt_audit.errors import CardError, OptionError
from ilt_audit.internal.markup import xml_text  # a choice's label is the same in JSON and XML
from ilt_audit.run.directory import RunLike, open_run

MODEL_VERSION = "ilt-audit given label"  # the predictions' model_version: the label as given
LOCAL_FILES = "/data/local-files/?d="  # Label Studio's URL of a file under its document root
INPUT = "Input"  # the object tag's name: task names are lower case, so no control can take it
BACKGROUND = 0  # the mask class left unpainted (``drop-object`` and ``shift`` leave it too)

# Label Studio's brush RLE (the rle-pack format of thi.ng/umbrella, which Label Studio's editor
# decodes and label-studio-converter's brush.py writes): a header of the value count (32 bits),
# the word size minus 1 (5 bits) and four run-length field sizes minus 1 (4 bits each); then
# chunks: a repeat flag (1 bit), the index of a field size (2 bits), the run length minus 1 in
# that many bits, and the value (word size bits).
RLE_WORD = 8  # bits of one value: an RGBA channel
RLE_SIZES = (3, 4, 8, 16)  # bits of a run length field, picked per chunk by a 2-bit index
RLE_CHANNELS = 4  # the brush layer is RGBA, flattened pixel by pixel; the alpha channel paints


def brush_rle(mask: np.ndarray) -> list[int]:
    """A boolean ``(H, W)`` mask as Label Studio's brush RLE: the bytes of the encoded RGBA layer
    (255 in every channel where the mask is set, 0 elsewhere), as the ``rle`` of a
    ``brushlabels`` result.

    Example:
        >>> brush_rle(np.ones((2, 2), dtype=bool))[:4]
        [0, 0, 0, 16]
    """
    flat = np.ascontiguousarray(mask, dtype=bool).ravel()  # (H*W,)
    starts = np.flatnonzero(np.diff(flat, prepend=~flat[:1])) if flat.size else flat[:0]
    lengths = np.diff(np.append(starts, flat.size)) * RLE_CHANNELS  # (runs,) in channel values
    values = np.where(flat[starts], 255, 0)
    fields = [f"{flat.size * RLE_CHANNELS:032b}", f"{RLE_WORD - 1:05b}"]
    fields += [f"{size - 1:04b}" for size in RLE_SIZES]
    longest = 1 << RLE_SIZES[-1]
    for length, value in zip(lengths.tolist(), values.tolist(), strict=True):
        while length:
            run = min(length, longest)
            index = next(i for i, size in enumerate(RLE_SIZES) if run <= 1 << size)
            fields.append(f"1{index:02b}{run - 1:0{RLE_SIZES[index]}b}{value:0{RLE_WORD}b}")
            length -= run
    bits = np.frombuffer("".join(fields).encode("ascii"), dtype=np.uint8) - ord("0")
    return np.packbits(bits).tolist()  # the last byte padded with zeros, as the decoder allows


@dataclass(frozen=True)
class _Row:
    """One suspect: its manifest row, ranking entry and task, with the manifest it comes from."""

    manifest: Manifest
    task: TaskSpec
    position: int  # the instance's row in the manifest table
    id: str
    rank: int
    score: float | None  # None where the run has no score (NaN)

    def cell(self, column: str) -> Any:
        return self.manifest.frame[column].iloc[self.position]


def _choices(row: _Row) -> list[dict[str, Any]]:
    column = row.manifest.frame[row.task.column]
    label = label_texts(column.iloc[[row.position]]).iloc[0]  # its class name: 3.0 reads "3"
    return [_result(row.task.name, "choices", {"choices": [xml_text(label)]}, f"{row.task.name}-0")]


def _tag_choices(row: _Row) -> list[dict[str, Any]]:
    names = row.manifest.class_names[row.task.name]
    have = row.manifest.tag_matrix(row.task)[row.position]  # (C,)
    tags = [xml_text(names[c]) for c in np.flatnonzero(have)]
    return [_result(row.task.name, "choices", {"choices": tags}, f"{row.task.name}-0")]


def _numbers(row: _Row) -> list[dict[str, Any]]:
    return [
        _result(_number_name(row.task, i), "number", {"number": float(row.cell(column))}, None)
        for i, column in enumerate(row.task.columns)
    ]


def _brushes(row: _Row) -> list[dict[str, Any]]:
    from ilt_audit.dataset.files import DECODE_ERRORS, read_label

    path = row.manifest.source(row.task.column, row.position)
    try:
        mask = read_label(row.task, path)  # (H, W) class indices
    except DECODE_ERRORS as exc:
        raise CardError(
            f"{row.manifest.card.table_path}: row id {row.id!r}: column {row.task.column!r}: "
            f"cannot read its file: {exc}"
        ) from None
    height, width = mask.shape
    results = []
    for value in np.unique(mask).tolist():
        if value == BACKGROUND or value == row.task.ignore_index:
            continue
        brush = {"format": "rle", "rle": brush_rle(mask == value), "brushlabels": [str(value)]}
        result = _result(row.task.name, "brushlabels", brush, f"{row.task.name}-{value}")
        result.update(original_width=width, original_height=height, image_rotation=0)
        results.append(result)
    return results


def _no_control(row: _Row) -> list[dict[str, Any]]:
    return []


def _choices_xml(
    view: ET.Element, task: TaskSpec, manifest: Manifest, choice: str = "single"
) -> None:
    choices = ET.SubElement(
        view, "Choices", name=task.name, toName=INPUT, choice=choice, showInline="true"
    )
    for name in manifest.class_names[task.name]:
        ET.SubElement(choices, "Choice", value=xml_text(name))  # as in the results


def _numbers_xml(view: ET.Element, task: TaskSpec, manifest: Manifest) -> None:
    for i, column in enumerate(task.columns):  # no step: Label Studio's default of 1 refuses 0.5
        ET.SubElement(view, "Header", value=xml_text(f"{task.name}: {column}"), size="6")
        ET.SubElement(view, "Number", name=_number_name(task, i), toName=INPUT)


def _brushes_xml(view: ET.Element, task: TaskSpec, manifest: Manifest) -> None:
    labels = ET.SubElement(view, "BrushLabels", name=task.name, toName=INPUT)
    for value in range(task.class_count):  # a segmentation card declares its classes
        if value != BACKGROUND and value != task.ignore_index:
            ET.SubElement(labels, "Label", value=str(value))


def _no_control_xml(view: ET.Element, task: TaskSpec, manifest: Manifest) -> None:
    pass


@dataclass(frozen=True)
class _Export:
    """How a task type is pre-annotated and which control of the interface edits it."""

    results: Callable[[_Row], list[dict[str, Any]]]
    control: Callable[[ET.Element, TaskSpec, Manifest], None]
    label_file: bool  # the label is a file: its URL goes into the task's data


EXPORTS: dict[str, _Export] = {
    "classification": _Export(_choices, _choices_xml, label_file=False),
    "regression": _Export(_numbers, _numbers_xml, label_file=False),
    "segmentation": _Export(_brushes, _brushes_xml, label_file=True),
    "dense-regression": _Export(_no_control, _no_control_xml, label_file=True),  # no control
    "multi-label": _Export(
        _tag_choices, partial(_choices_xml, choice="multiple"), label_file=False
    ),
}


def _number_name(task: TaskSpec, index: int) -> str:
    return f"{task.name}.{index}"  # '.' is not allowed in task names: no clash with another's


def _result(from_name: str, kind: str, value: dict[str, Any], region: str | None) -> dict[str, Any]:
    result: dict[str, Any] = {"from_name": from_name, "to_name": INPUT, "type": kind}
    if region is not None:
        result["id"] = region
    result["value"] = value
    return result


def label_studio_tasks(
    run: RunLike,
    *,
    task: str | None = None,
    top: str | int | None = None,
    by: str = DEFAULT_BY,
) -> list[dict[str, Any]]:
    """The ranking's suspects as Label Studio tasks, in rank order per task, the current label
    as the pre-annotation. ``task``, ``top`` and ``by`` are :func:`ilt_audit.audit.ranking.rank`'s.

    A file the manifest names becomes ``/data/local-files/?d=<its path in the data folder>``:
    serve the data folder (the card's ``root``, or the card's folder) as Label Studio's local
    files document root. A file outside that folder (a card with ``allow_outside_paths``) cannot
    be served so, and is an error.

    Example:
        >>> tasks = label_studio_tasks("runs/shapes", task="shape", top=20)  # doctest: +SKIP
        >>> tasks[0]["predictions"][0]["result"][0]["value"]  # doctest: +SKIP
        {'choices': ['circle']}
    """
    run = open_run(run)
    ranked = rank(run, task=task, top=top, by=by)
    manifest = run.manifest("to export the suspects' labels")
    known = pa.array(manifest.frame[manifest.card.id], pa.string())
    found = pc.index_in(pa.array(ranked["id"], pa.string()), value_set=known)
    positions = found.fill_null(-1).to_numpy()  # (suspects,) manifest row, -1 where absent
    if (positions < 0).any():
        missing = ranked["id"].iloc[int(np.flatnonzero(positions < 0)[0])]
        raise CardError(
            f"{manifest.card.table_path}: row id {missing!r} of run {run.path} is not in the "
            "manifest; the manifest changed since the run was trained"
        )
    exported = []
    for position, entry in zip(positions.tolist(), ranked.itertuples(index=False), strict=True):
        score = float(entry.score)
        row = _Row(
            manifest,
            manifest.card.task(entry.task),
            position,
            str(entry.id),
            int(entry.rank),
            None if math.isnan(score) else score,
        )
        exported.append(_task(row, str(entry.label)))
    return exported


def _task(row: _Row, label: str) -> dict[str, Any]:
    manifest, export = row.manifest, EXPORTS[row.task.type]
    data: dict[str, Any] = {
        "id": row.id,
        "task": row.task.name,
        "rank": row.rank,
        "score": row.score,
        "label": label,
    }
    if manifest.card.input.type == "image":
        data["image"] = _local_file(row, manifest.card.input.columns[0])
    else:
        data["features"] = {str(c): float(row.cell(c)) for c in manifest.input_columns}
    if export.label_file:
        data["label_file"] = _local_file(row, row.task.column)
    prediction: dict[str, Any] = {"model_version": MODEL_VERSION}
    if row.score is not None:
        prediction["score"] = row.score
    prediction["result"] = export.results(row)
    return {"data": data, "predictions": [prediction]}


def _local_file(row: _Row, column: str) -> str:
    """The Label Studio local files URL of a file a manifest cell names, relative to the data
    folder (the document root); a file that is not inside it is an :class:`OptionError`. A file
    stored in the table goes as a data URI (Label Studio shows one as it shows a URL)."""
    stored = row.manifest.stored.get(column)
    data = stored.data_of(row.position) if stored is not None else None
    if data is not None:
        return _data_uri(data)
    value = str(row.cell(column))
    card = row.manifest.card
    root = card.root  # resolved by load_card
    path = posixpath.normpath(value)  # "a/./b" and "a//b" as "a/b"
    escapes = path.startswith("/") or path == ".." or path.startswith("../")
    if escapes or not inside(root / path, root):
        where = card.root_text if card.named_root else f"{card.root_text} {root}"
        raise OptionError(
            f"{card.table_path}: row id {row.id!r}: column {column!r}: the file {value!r} is not "
            f"inside {where}, the document root Label Studio "
            "serves local files from; --format label-studio needs every file inside it"
        )
    return LOCAL_FILES + quote(path, safe="/")


def _data_uri(data: bytes) -> str:
    """A stored file as a data URI, its type read from its header (nothing is decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = image.get_format_mimetype() or "application/octet-stream"
    except (UnidentifiedImageError, OSError, ValueError):
        kind = "application/octet-stream"
    return f"data:{kind};base64," + base64.b64encode(data).decode("ascii")


def label_studio_config(run: RunLike, tasks: Sequence[dict[str, Any]]) -> str:
    """The labelling interface (Label Studio's XML config) for ``tasks`` from
    :func:`label_studio_tasks` of the same run: the input (``Image``, or a ``Table`` of the
    features) and, for each task of the card that ``tasks`` holds, the control that its
    pre-annotations name (``Choices``, multiple for tags, one ``Number`` per column,
    ``BrushLabels``).

    Example:
        >>> print(label_studio_config("runs/penguins", tasks))  # doctest: +SKIP
        <View>
          <Header value="$task: rank $rank, score $score, id $id" />
          ...
    """
    manifest = open_run(run).manifest("to write the labelling interface")
    present = {task["data"]["task"] for task in tasks}
    view = ET.Element("View")
    ET.SubElement(view, "Header", value="$task: rank $rank, score $score, id $id")
    if manifest.card.input.type == "image":
        ET.SubElement(view, "Image", name=INPUT, value="$image", zoom="true")
    else:
        ET.SubElement(view, "Table", name=INPUT, value="$features")
    for spec in manifest.card.tasks:
        if spec.name in present:
            EXPORTS[spec.type].control(view, spec, manifest)
    ET.indent(view)
    return ET.tostring(view, encoding="unicode") + "\n"
