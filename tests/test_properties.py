"""Property-based tests of the card and manifest readers (issue 10): whatever a card or a manifest
holds, the CLI ends in exit 0 or in exactly one ``Error:`` line and exit 2. Never a traceback, never
exit 1 (which CI reads as a failed gate), never an internal error.

Hypothesis draws random bytes as a card and as a CSV, JSON Lines or Parquet manifest, random
table shapes (columns, types, nulls, duplicates) and random ids made of Rich markup, HTML,
Markdown, control characters, newlines, spreadsheet formula starts and bytes that are not UTF-8.
Each example runs the real CLI (`train --epochs 1` on a tiny features card, then `rank` and `gate`
with every output when training succeeds). Derandomised, so that CI sees the same examples.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from test_untrusted_input import _invalid_utf8_strings

from ilt_audit.internal.toml import toml_dumps

FEATURES_CARD = """\
table = "{table}"
id = "id"

[input]
type = "features"
columns = ["f0", "f1"]

[tasks.label]
type = "classification"
column = "label"

[tasks.target]
type = "regression"
columns = ["y"]
"""
TABLES = ("manifest.csv", "manifest.jsonl", "manifest.parquet")
TRAIN = ("--epochs", "1", "--device", "cpu", "--batch-size", "4")


def fuzz(max_examples: int) -> Callable[[Any], Any]:
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,  # the same examples on every run and machine
        database=None,  # nothing written into the working tree
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,  # `cli` holds no state between examples
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )


def _ends_cleanly(result: Any, *, reader: bool = False) -> None:
    """Exit 0, or exit 2 with one ``Error:`` line; a reader of a finished run exits 0."""
    text = result.stdout + result.stderr
    assert "Traceback" not in text and "Internal error" not in text, text
    assert result.exit_code in ((0,) if reader else (0, 2)), text
    if result.exit_code == 2:  # one line: no warning, progress or traceback around it
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr


def _train_and_read(cli: Callable[..., Any], card: Path) -> bool:
    """`train`, then every reader and output on the run if it trained; whether it trained."""
    folder = card.parent
    run = folder / "run"
    result = cli("train", card, "--out", run, *TRAIN)
    if currently_in_test_context():
        event(f"train exit {result.exit_code}")  # shown by --hypothesis-show-statistics
    _ends_cleanly(result)
    if result.exit_code != 0:
        assert not run.exists()
        return False
    for args in (
        ["rank", run],
        ["rank", run, "--format", "csv", "--output", folder / "rank.csv"],
        ["rank", run, "--format", "json"],
        ["gate", run, "--max-suspect", "100%"],
        ["gate", run, "--summary", folder / "gate.md", "--junit", folder / "gate.xml"],
        ["gate", run, "--max-suspect", "0%", "--format", "csv", "--output", folder / "gate.csv"],
    ):
        result = cli(*args)
        if result.exit_code == 1:  # only a gate over its limit, and said so
            assert args[0] == "gate" and "Gate failed" in result.stderr, result.stderr
            assert "Error" not in result.stderr and "Traceback" not in result.stderr
        else:
            _ends_cleanly(result, reader=True)
    return True


def _write_card(folder: Path, table: str = "manifest.csv") -> Path:
    card = folder / "card.toml"
    card.write_text(FEATURES_CARD.format(table=table), encoding="utf-8")
    return card


# --- random cards -------------------------------------------------------------------------------


@fuzz(60)
@given(data=st.binary(max_size=400))
def test_any_bytes_as_a_card(cli, data):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _write_card(folder).write_bytes(data)
        pd.DataFrame({"id": ["a", "b"], "f0": [1.0, 2.0]}).to_csv(folder / "manifest.csv")
        _train_and_read(cli, folder / "card.toml")


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["manifest.csv", "id", "f0", "label", "y", "image", "features", "f"]),
    st.sampled_from(["classification", "regression", "segmentation", "dense-regression"]),
    st.text(max_size=6),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def card_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A card close to a valid one: each key kept, dropped or given a random value."""
    base: dict[str, Any] = {
        "table": "manifest.csv",
        "id": "id",
        "split": None,
        "allow_outside_paths": False,
        "input": {"type": "features", "columns": ["f0", "f1"], "prefix": None, "size": None},
        "tasks": {
            "label": {"type": "classification", "column": "label", "classes": None},
            "target": {"type": "regression", "columns": ["y"], "scale": None},
        },
    }

    return _without_none(mutate(draw, base, _VALUES))


def mutate(draw: st.DrawFn, value: Any, values: st.SearchStrategy[Any]) -> Any:
    """``value`` with each key of its tables kept, dropped or given one of ``values``, and now and
    then a new key."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            choice = draw(st.integers(0, 9))
            if choice == 0:
                continue  # dropped
            out[key] = draw(values) if choice == 1 else mutate(draw, item, values)
        if draw(st.integers(0, 9)) == 0:
            out[draw(st.text(min_size=1, max_size=5))] = draw(values)
        return out
    return value


def _without_none(value: Any) -> Any:
    """TOML has no null: drop None values, and NaN (a TOML float) stays."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value if v is not None]
    return value


@fuzz(80)
@given(document=card_documents())
def test_any_card_document(cli, document):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        card = folder / "card.toml"
        try:
            card.write_text(toml_dumps(document), encoding="utf-8")
        except TypeError:  # a value the small TOML writer cannot write
            card.write_text(str(document), encoding="utf-8", errors="surrogateescape")
        frame = pd.DataFrame(
            {
                "id": [f"r{i}" for i in range(8)],
                "f0": [float(i) for i in range(8)],
                "f1": [float(i % 3) for i in range(8)],
                "label": ["a", "b"] * 4,
                "y": [0.5 * i for i in range(8)],
            }
        )
        frame.to_csv(folder / "manifest.csv", index=False)
        _train_and_read(cli, card)


# --- random manifests -------------------------------------------------------------------------


@fuzz(60)
@given(table=st.sampled_from(TABLES), data=st.binary(max_size=400))
def test_any_bytes_as_a_manifest(cli, table, data):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / table).write_bytes(data)
        _train_and_read(cli, _write_card(folder, table))


def _valid_frame(n: int = 8) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(n)],
            "f0": [0.25 * i for i in range(n)],
            "f1": [float(i % 3) for i in range(n)],
            "label": ["ant", "bee"] * (n // 2),
            "y": [1.5 * i for i in range(n)],
        }
    )


@fuzz(60)
@given(
    table=st.sampled_from(TABLES),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.binary(max_size=4)), min_size=1, max_size=4),
)
def test_a_valid_manifest_with_random_bytes_spliced_in(cli, table, edits):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        card = _write_card(folder, table)
        _write_frame(_valid_frame(), folder / table)
        data = bytearray((folder / table).read_bytes())
        for position, chunk in edits:
            at = position % (len(data) + 1)
            data[at : at + len(chunk)] = chunk  # overwrite in place: the length may grow at the end
        (folder / table).write_bytes(bytes(data))
        _train_and_read(cli, card)


def _write_frame(frame: pd.DataFrame, path: Path) -> None:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, default_handler=str)
    else:
        frame.to_parquet(path, index=False)


_COLUMN_KINDS = ("float", "wild", "int", "text", "bool", "list", "bytes", "absent")


@st.composite
def columns(draw: st.DrawFn, n: int, kind: str) -> list[Any] | None:
    """One column of ``n`` values of one kind, some of them null."""
    values = {
        "float": st.floats(-1e6, 1e6),
        "wild": st.floats(allow_nan=True, allow_infinity=True),
        "int": st.integers(-(2**40), 2**40),
        "label": st.sampled_from(["ant", "bee", "cat"]),
        "text": st.sampled_from(["ant", "", " ", "nan", "1", "1.0", "NA", "x,y", "\n"]),
        "bool": st.booleans(),
        "list": st.lists(st.floats(-5, 5), max_size=2),
        "bytes": st.binary(max_size=3),
    }
    if kind == "absent":
        return None
    nulls = draw(st.integers(0, 3)) == 0
    cell = st.one_of(st.none(), values[kind]) if nulls else values[kind]
    return draw(st.lists(cell, min_size=n, max_size=n))


@st.composite
def tables(draw: st.DrawFn) -> pd.DataFrame:
    """A table with the card's columns (or not), each of a random kind, with nulls and duplicates."""
    n = draw(st.integers(2, 10))
    frame: dict[str, Any] = {}
    id_kind = draw(st.sampled_from(["unique"] * 4 + ["text", "int", "absent"]))
    if id_kind == "unique":
        frame["id"] = [f"r{i}" for i in range(n)]
    elif id_kind != "absent":
        frame["id"] = draw(columns(n, id_kind))  # duplicates and nulls likely
    plausible = {"f0": "float", "f1": "float", "label": "label", "y": "float"}
    for name, usual in plausible.items():
        kind = usual if draw(st.integers(0, 4)) else draw(st.sampled_from(_COLUMN_KINDS))
        values = draw(columns(n, kind))
        if values is not None:
            frame[name] = values
    return pd.DataFrame(frame)


@fuzz(80)
@given(table=st.sampled_from(TABLES), frame=tables())
def test_any_table_shape(cli, table, frame):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        card = _write_card(folder, table)
        try:
            _write_frame(frame, folder / table)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            _write_mixed_parquet(frame, folder / table)
        _train_and_read(cli, card)


def _write_mixed_parquet(frame: pd.DataFrame, path: Path) -> None:
    """A frame pandas cannot write as Parquet (mixed types): every column as text."""
    arrays = [pa.array([None if v is None else str(v) for v in frame[c]]) for c in frame.columns]
    pq.write_table(pa.table(arrays, names=[str(c) for c in frame.columns]), path)


# --- random ids: markup, HTML, control characters, formulas, bytes that are not UTF-8 ---------

HOSTILE = [
    "[bold]",
    "[/]",
    "[red]x[/red]",
    "[link=file:///etc/passwd]x[/link]",
    "<script>alert(1)</script>",
    "</td></tr>",
    "<!--",
    "|",
    "`",
    "**",
    "=cmd|' /C calc'!A0",
    "+1",
    "-2",
    "@SUM(A1)",
    "\t",
    "\r",
    "\n",
    "\x00",
    "\x1b[31m",
    "\x7f",
    "\u2028",
    "\ufeff",
    "\u202e",
    '"',
    "'",
    ",",
    "\\",
    "&amp;",
    "%s",
    "{0}",
    "nan",
    "",
]
_ID_PART = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=4))
ids = st.lists(_ID_PART, min_size=1, max_size=3).map("".join)
_BAD_BYTES = [b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80"]


@fuzz(60)
@given(
    table=st.sampled_from(TABLES),
    hostile=st.lists(ids, min_size=1, max_size=4),
    label=ids,
    bad_bytes=st.one_of(st.none(), st.sampled_from(_BAD_BYTES)),
    seed=st.integers(0, 2**16),
)
def test_hostile_ids_and_labels(cli, table, hostile, label, bad_bytes, seed):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        card = _write_card(folder, table)
        frame = _valid_frame(12)
        rows = random.Random(seed).sample(range(12), len(hostile))
        for row, value in zip(rows, hostile, strict=True):
            frame.loc[row, "id"] = value
        frame.loc[rows[0], "label"] = label  # a third class, or a label with markup
        if bad_bytes is None:
            _write_frame(frame, folder / table)
        else:
            _write_with_bad_bytes(frame, folder / table, rows[-1], bad_bytes)
        _train_and_read(cli, card)


def _write_with_bad_bytes(frame: pd.DataFrame, path: Path, row: int, bad: bytes) -> None:
    """Write the table with bytes that are not UTF-8 in one row's id."""
    marker = "\u0394MARK\u0394"
    frame = frame.copy()
    frame.loc[row, "id"] = f"r{row}{marker}"
    if path.suffix == ".parquet":
        values = [
            str(v).encode("utf-8", "surrogatepass").replace(marker.encode(), bad) for v in frame.id
        ]
        table = pa.Table.from_pandas(frame.drop(columns="id"), preserve_index=False)
        pq.write_table(table.add_column(0, "id", _invalid_utf8_strings(values)), path)
        return
    _write_frame(frame, path)
    path.write_bytes(path.read_bytes().replace(marker.encode(), bad))


def test_the_strategies_reach_both_outcomes(cli):
    """A guard on the fuzzing itself: a plain table trains, an empty one is refused."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        card = _write_card(folder)
        _write_frame(_valid_frame(), folder / "manifest.csv")
        assert _train_and_read(cli, card)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        card = _write_card(folder)
        (folder / "manifest.csv").write_text("id,f0,f1,label,y\n")
        assert not _train_and_read(cli, card)
