"""Review decisions: checked against the card, appended by many writers at once, the latest wins,
and a decisions CSV goes in whole or not at all."""

from __future__ import annotations

import json
import multiprocessing
import threading
from pathlib import Path

import pandas as pd
import pytest
from helpers_data import make_image_card

from ilt_audit.dataset.manifest import Manifest, load_manifest
from ilt_audit.review.decisions import (
    DECISIONS_FILE,
    PREDICTION,
    Decision,
    DecisionError,
    DecisionStore,
    check_decision,
)


@pytest.fixture
def manifest(tmp_path: Path) -> Manifest:
    """Tasks shape (ant/bee/cat), box (x, y), seg (3 classes), depth; ids s00..s11."""
    return load_manifest(make_image_card(tmp_path / "data"))


def _store(run_dir: Path) -> DecisionStore:
    run_dir.mkdir()
    return DecisionStore(run_dir)


# --- check_decision ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "value", "canonical"),
    [
        ("shape", "bee", "bee"),
        ("box", "0.5, 2", "[0.5, 2.0]"),
        ("box", "[1, -3.25]", "[1.0, -3.25]"),
        ("seg", PREDICTION, PREDICTION),
        ("depth", PREDICTION, PREDICTION),
    ],
)
def test_a_valid_relabel_is_kept_in_canonical_form(manifest, task, value, canonical):
    checked = check_decision(manifest, Decision("s03", task, "relabel", value, "ana"))
    assert checked.value == canonical
    assert checked.reviewer == "ana"
    assert checked.time  # filled in


@pytest.mark.parametrize("kind", ["keep", "drop"])
def test_keep_and_drop_carry_no_value(manifest, kind):
    checked = check_decision(manifest, Decision("s03", "seg", kind, ""))
    assert checked.value is None
    assert checked.reviewer == "anonymous"


@pytest.mark.parametrize(
    ("decision", "column", "message"),
    [
        (Decision("s03", "colour", "keep"), "task", "task 'colour' is not in the card"),
        (Decision("s03", "shape", "fix"), "decision", "decision 'fix' is not one of"),
        (Decision("nope", "shape", "keep"), "id", "id 'nope' is not in the manifest"),
        (Decision("s03", "shape", "relabel", "dog"), "value", "'dog' is not a class"),
        (Decision("s03", "shape", "relabel"), "value", "needs a value"),
        (Decision("s03", "box", "relabel", "1"), "value", "takes 2 finite number(s)"),
        (Decision("s03", "box", "relabel", "1, nan"), "value", "takes 2 finite number(s)"),
        (Decision("s03", "box", "relabel", "[1, true]"), "value", "takes 2 finite number(s)"),
        (Decision("s03", "box", "relabel", "one, two"), "value", "takes 2 finite number(s)"),
        (Decision("s03", "seg", "relabel", "2"), "value", "only be relabelled with the model"),
        (Decision("s03", "depth", "relabel", "[1]"), "value", "only be relabelled with"),
        (Decision("s03", "shape", "keep", "bee"), "value", "a keep decision takes no value"),
        (Decision("s03", "shape", "drop", "bee"), "value", "a drop decision takes no value"),
    ],
)
def test_a_decision_that_does_not_fit_names_its_column(manifest, decision, column, message):
    with pytest.raises(DecisionError) as raised:
        check_decision(manifest, decision)
    assert raised.value.column == column
    assert message in str(raised.value)


# --- the store ---------------------------------------------------------------------------------


def test_the_latest_decision_per_instance_and_task_counts(manifest, tmp_path):
    store = DecisionStore(tmp_path)
    assert (tmp_path / DECISIONS_FILE).is_file()
    first = [
        Decision("s01", "shape", "relabel", "bee", "ana"),
        Decision("s01", "box", "keep", None, "ana"),
        Decision("s02", "shape", "keep", None, "ana"),
    ]
    store.record(check_decision(manifest, d) for d in first)
    store.record([check_decision(manifest, Decision("s01", "shape", "drop", None, "bo"))])
    store.record([check_decision(manifest, Decision("s02", "shape", "relabel", "cat", "cy"))])

    latest = store.latest()
    assert len(store.history()) == 5
    got = {
        (r.id, r.task): (r.decision, None if pd.isna(r.value) else r.value, r.reviewer)
        for r in latest.itertuples()
    }
    assert got == {
        ("s01", "shape"): ("drop", None, "bo"),
        ("s01", "box"): ("keep", None, "ana"),
        ("s02", "shape"): ("relabel", "cat", "cy"),
    }
    only_shape = store.latest("shape")
    assert set(only_shape.task) == {"shape"} and len(only_shape) == 2


def _append_many(run_dir: str, worker: int, count: int) -> None:
    """Record ``count`` decisions one transaction at a time (a reviewer clicking)."""
    store = DecisionStore(run_dir)
    for i in range(count):
        store.record([Decision(f"s{i % 12:02d}", "shape", "keep", None, f"w{worker}", "t")])


def test_processes_and_threads_appending_at_once_lose_no_decision(tmp_path):
    run_dir = str(tmp_path)
    count = 40
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_append_many, args=(run_dir, w, count)) for w in (0, 1)]
    threads = [threading.Thread(target=_append_many, args=(run_dir, w, count)) for w in (2, 3, 4)]
    for worker in (*processes, *threads):
        worker.start()
    for worker in (*processes, *threads):
        worker.join(timeout=120)
    assert [p.exitcode for p in processes] == [0, 0]
    history = DecisionStore(run_dir).history()
    assert len(history) == 5 * count
    assert history.reviewer.value_counts().to_dict() == {f"w{w}": count for w in range(5)}
    assert history.seq.is_unique


# --- CSV export and import ---------------------------------------------------------------------


def test_export_then_import_gives_the_same_decisions(manifest, tmp_path):
    source = _store(tmp_path / "a")
    decisions = [
        Decision("s01", "shape", "relabel", "bee", "ana, the second"),
        Decision("s02", "box", "relabel", "1.5, -2", "ana"),
        Decision("s03", "seg", "relabel", PREDICTION, "bo"),
        Decision("s04", "depth", "drop", None, "bo"),
        Decision("s05", "shape", "keep", None, "bo"),
        Decision("s01", "shape", "relabel", "cat", "bo"),  # replaces the first
    ]
    source.record(check_decision(manifest, d) for d in decisions)
    csv_path = tmp_path / "decisions.csv"
    assert source.export_csv(csv_path) == 5

    target = _store(tmp_path / "b")
    assert target.import_csv(csv_path, manifest) == 5
    pd.testing.assert_frame_equal(target.latest(), source.latest())
    assert json.loads(target.latest("box").value.iloc[0]) == [1.5, -2.0]


def _csv(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "id,task,decision,value\ns01,shape,keep,\ns02,shape,relabel,bee\nghost,shape,drop,\n",
            "line 4, id 'ghost', column 'id': id 'ghost' is not in the manifest",
        ),
        (
            "id,task,decision,value\ns01,shape,keep,\ns02,shape,relabel,dog\n",
            "line 3, id 's02', column 'value': 'dog' is not a class of task 'shape'",
        ),
        ("id,decision,value\ns01,keep,\n", "missing column(s) task"),
        (
            b"id,task,decision,value\ns01,shape,keep,\ns02,shape,relabel,b\xe9e\n",
            "line 3: not UTF-8 text (byte b'\\xe9')",
        ),
        (  # a byte order mark does not shift the line count
            b"\xef\xbb\xbfid,task,decision\ns01,shape,keep\ns\xff2,shape,keep\n",
            "line 3: not UTF-8 text",
        ),
    ],
)
def test_a_bad_csv_is_refused_whole_with_its_line(manifest, tmp_path, content, message):
    store = _store(tmp_path / "run")
    path = _csv(tmp_path / "decisions.csv", content)
    with pytest.raises(DecisionError) as raised:
        store.import_csv(path, manifest)
    assert message in str(raised.value)
    assert str(path) in str(raised.value)
    assert store.history().empty  # the good rows before the bad one were not recorded


def test_a_csv_saved_by_a_spreadsheet_with_a_byte_order_mark_is_read(manifest, tmp_path):
    store = _store(tmp_path / "run")
    path = _csv(tmp_path / "d.csv", b"\xef\xbb\xbfid,task,decision\r\ns01,shape,drop\r\n")
    assert store.import_csv(path, manifest) == 1
    assert store.latest().decision.tolist() == ["drop"]
