"""The review app under faults (issue 23): the server killed with SIGKILL before, during and after a
decision's commit, reviewers deciding on the same label at once, a load of decisions, and fuzzed
JSON. A decision the page was told is saved is never lost; a refused body stores nothing and is
answered with a 4xx and a JSON message, never a 500.

The killed server is the real command (``python -m ilt_audit review``) in a subprocess; where a
kill must land between two steps of a decision, the subprocess holds that step with a pause
patched in by the test (``_PAUSES``), and the test kills it there. Every restart is a fresh
server over the same ``review.sqlite``.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import tiny_config, write_image_dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_review import Served, _get, _post, _start

from ilt_audit.review.app import HISTORY_PAGE, MAX_BODY, open_review
from ilt_audit.review.decisions import KINDS, PREDICTION, Decision, DecisionStore, check_decision
from ilt_audit.training.loop import train

TASKS = ("colour", "geometry", "seg", "depth")
_PAUSES = {
    # the decision is committed, then the reply waits: a kill lands between commit and reply
    "after-commit": """
import ilt_audit.review.decisions as decisions
real = decisions.DecisionStore.record
def record(self, rows):
    count = real(self, rows)
    open(os.environ["PAUSED"], "w").close()
    time.sleep(600)
    return count
decisions.DecisionStore.record = record
""",
    # the row is inserted, its transaction open, and COMMIT waits: a kill lands before it
    "before-commit": """
import contextlib
import ilt_audit.review.decisions as decisions
class Held:
    def __init__(self, db):
        self.db = db
    def __getattr__(self, name):
        return getattr(self.db, name)
    def execute(self, sql, *args):
        if sql == "COMMIT":
            open(os.environ["PAUSED"], "w").close()
            time.sleep(600)
        return self.db.execute(sql, *args)
real = decisions.DecisionStore.record
def record(self, rows):
    plain = self.connect
    @contextlib.contextmanager
    def connect():
        with plain() as db:
            yield Held(db)
    self.connect = connect
    return real(self, rows)
decisions.DecisionStore.record = record
""",
    "none": "",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A two-epoch run on 12 images with the four task types, its suspects already built."""
    root = tmp_path_factory.mktemp("faults")
    card = write_image_dataset(root / "data")
    train(card, root / "run", config=tiny_config(epochs=2))
    open_review(root / "run", top="100%")  # the suspects table, so that servers start at once
    return card, root / "run"


@pytest.fixture
def run(trained: tuple[Path, Path], tmp_path: Path) -> Path:
    """A copy of the run: one test's decisions never reach another."""
    import shutil

    shutil.copytree(trained[1], tmp_path / "run")
    return tmp_path / "run"


_STARTED: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _no_server_left_running() -> Iterator[None]:
    """A test that fails midway leaves no subprocess behind."""
    yield
    while _STARTED:
        process = _STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


@dataclass
class Process:
    """``ilt-audit review`` in a subprocess, with its URL and the page's token."""

    process: subprocess.Popen[bytes]
    url: str
    token: str
    paused: Path

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)


def _serve(run: Path, pause: str = "none") -> Process:
    code = (
        "import os, sys, time\n"
        + _PAUSES[pause]
        + "\nsys.argv = ['ilt-audit', 'review', sys.argv[1], '--port', '0', '--no-browser', "
        "'--top', '100%', '--reviewer', 'tester']\n"
        "from ilt_audit.cli import main\nmain()\n"
    )
    log, paused = run.parent / f"server-{pause}.log", run.parent / f"paused-{pause}"
    paused.unlink(missing_ok=True)
    env = {**os.environ, "COLUMNS": "1000", "PAUSED": str(paused), "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-c", code, str(run)], stdout=handle, stderr=handle, env=env
        )
    _STARTED.append(process)
    deadline = time.monotonic() + 120
    while not (found := re.search(r"at (http://127\.0\.0\.1:\d+/)", log.read_text())):
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.1)
    url = found.group(1)
    status, html, _ = _get(url + "tasks/colour")
    assert status == 200
    token = re.search(r'<meta name="review-token" content="([^"]+)">', html).group(1)  # type: ignore[union-attr]
    return Process(process, url, token, paused)


def _connection(url: str) -> http.client.HTTPConnection:
    parts = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)


def _send(
    connection: http.client.HTTPConnection, token: str, body: object
) -> tuple[int, dict[str, object]]:
    """POST one decision on a kept-alive connection; raises OSError when the server is gone."""
    connection.request(
        "POST",
        "/api/decisions",
        body=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-Review-Token": token},
    )
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def _history(url: str, **query: object) -> list[dict[str, object]]:
    """Every decision the app shows through ``GET /api/decisions``, page after page."""
    rows: list[dict[str, object]] = []
    after = 0
    while True:
        status, text, _ = _get(
            url + "api/decisions?" + urllib.parse.urlencode({**query, "after": after})
        )
        assert status == 200, text
        answer = json.loads(text)
        rows += answer["decisions"]
        if answer["next"] is None:
            return rows
        after = answer["next"]


def _rows(run: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(run / "review.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return db.execute(
            "SELECT seq, id, task, decision, value, reviewer FROM decisions"
        ).fetchall()


def _killed_while_posting(server: Process, body: object) -> object:
    """POST a decision, SIGKILL the server once it reaches its pause, and return what the
    client got: a reply, or the OSError of a connection cut."""
    answers: list[object] = []

    def post() -> None:
        try:
            answers.append(_send(_connection(server.url), server.token, body))
        except OSError as exc:  # reset, refused or closed: no reply
            answers.append(exc)

    thread = threading.Thread(target=post)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.paused.exists():
        assert server.process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    server.kill()
    thread.join(timeout=60)
    assert len(answers) == 1
    return answers[0]


# --- SIGKILL -----------------------------------------------------------------------------------


def test_a_server_killed_before_the_commit_stores_nothing_and_acknowledged_nothing(
    run: Path, trained: tuple[Path, Path]
) -> None:
    instance = "i003"
    server = _serve(run, "before-commit")  # the row inserted, its transaction not committed
    answer = _killed_while_posting(server, {"id": instance, "task": "colour", "decision": "drop"})
    assert isinstance(answer, OSError)  # no reply, let alone a 2xx
    assert _rows(run) == []
    restarted = _start(run, trained[0], top="100%")
    assert _history(restarted.url) == []
    assert 'data-decision=""' in _get(restarted.url + "tasks/colour")[1]
    assert _post(restarted, {"id": instance, "task": "colour", "decision": "keep"})[0] == 200


def test_a_server_killed_after_the_commit_keeps_the_decision(
    run: Path, trained: tuple[Path, Path]
) -> None:
    instance = "i004"
    server = _serve(run, "after-commit")  # committed, the reply not sent
    body = {"id": instance, "task": "colour", "decision": "drop", "reviewer": "ana"}
    assert isinstance(_killed_while_posting(server, body), OSError)  # the page: "not saved"
    assert [r[1:] for r in _rows(run)] == [(instance, "colour", "drop", None, "ana")]
    restarted = _start(run, trained[0], top="100%")
    assert [r["reviewer"] for r in _history(restarted.url, id=instance)] == ["ana"]
    html = _get(restarted.url + "tasks/colour")[1]
    assert "saved: drop (ana)" in html


def test_a_server_killed_at_a_random_moment_keeps_every_acknowledged_decision(
    run: Path, trained: tuple[Path, Path]
) -> None:
    server = _serve(run)
    ids = [f"i{i:03d}" for i in range(12)]
    sent: set[str] = set()
    acknowledged: set[str] = set()
    lock = threading.Lock()

    def client(number: int) -> None:
        connection = _connection(server.url)
        for n in range(10_000):
            tag = f"c{number}-{n}"
            body = {"id": ids[n % 12], "task": TASKS[number], "decision": "keep", "reviewer": tag}
            with lock:
                sent.add(tag)
            try:
                status, answer = _send(connection, server.token, body)
            except OSError:
                return
            assert status == 200 and answer["saved"] is True, answer
            with lock:
                acknowledged.add(tag)

    with ThreadPoolExecutor(4) as pool:
        clients = [pool.submit(client, k) for k in range(4)]
        time.sleep(random.Random(0).uniform(0.5, 1.5))
        server.kill()
        for done in clients:
            done.result(timeout=60)
    stored = {r[5] for r in _rows(run)}
    assert len(acknowledged) > 10  # the kill landed while decisions were being made
    assert acknowledged <= stored <= sent  # at most the decisions in flight were lost unanswered
    restarted = _start(run, trained[0], top="100%")
    assert {r["reviewer"] for r in _history(restarted.url)} == stored


# --- reviewers at once -------------------------------------------------------------------------


def test_two_reviewers_on_one_label_the_last_counts_and_the_history_shows_both(
    run: Path, trained: tuple[Path, Path]
) -> None:
    served = _start(run, trained[0], top="100%")
    instance = "i005"
    first = {"id": instance, "task": "colour", "decision": "keep", "reviewer": "ana"}
    second = {"id": instance, "task": "colour", "decision": "relabel", "value": "blue"}
    assert _post(served, first)[0] == 200
    assert _post(served, {**second, "reviewer": "<b>bob</b>"})[0] == 200
    html = _get(served.url + "tasks/colour")[1]
    card = html.split(f'data-id="{instance}"', 1)[1].split("</article>", 1)[0]
    assert "saved: relabel → blue (&lt;b&gt;bob&lt;/b&gt;)" in card
    entries = re.findall(r"<li>([^<]*)</li>", card.split('class="history"', 1)[1])
    assert [e.split(" · ", 1)[1] for e in entries] == [
        "ana: keep",
        "&lt;b&gt;bob&lt;/b&gt;: relabel → blue",
    ]
    shown = _history(served.url, task="colour", id=instance)
    assert [(r["reviewer"], r["decision"]) for r in shown] == [
        ("ana", "keep"),
        ("<b>bob</b>", "relabel"),
    ]
    assert all(r["time"] for r in shown)


def test_two_reviewers_posting_at_once_both_are_kept_never_a_500(
    run: Path, trained: tuple[Path, Path]
) -> None:
    served = _start(run, trained[0], top="100%")
    rounds = 20
    start = threading.Barrier(2)

    def reviewer(name: str) -> list[int]:
        statuses = []
        for n in range(rounds):
            start.wait()  # both post the same label at the same moment
            body = {"id": "i006", "task": "seg", "decision": "keep", "reviewer": f"{name}-{n}"}
            statuses.append(_post(served, body)[0])
        return statuses

    with ThreadPoolExecutor(2) as pool:
        statuses = list(pool.map(reviewer, ("ana", "bob")))
    assert statuses == [[200] * rounds] * 2
    shown = _history(served.url, task="seg", id="i006")
    assert len(shown) == 2 * rounds
    last = shown[-1]["reviewer"]
    assert f"saved: keep ({last})" in _get(served.url + "tasks/seg")[1]


# --- load ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "count",
    [500, pytest.param(10_000, marks=pytest.mark.slow)],
)
def test_a_load_of_decisions_from_concurrent_clients_keeps_every_one(
    run: Path, count: int, record_property: object
) -> None:
    server = _serve(run)
    clients = 8
    ids = [f"i{i:03d}" for i in range(12)]

    def client(number: int) -> list[int]:
        connection = _connection(server.url)
        statuses = []
        for n in range(number, count, clients):
            task = TASKS[n % 4]
            body: dict[str, object] = {"id": ids[n % 12], "task": task, "reviewer": f"r{n}"}
            if n % 3 == 0 and task in ("seg", "depth"):
                body.update(decision="relabel", value=PREDICTION)
            else:
                body["decision"] = KINDS[0] if n % 2 else KINDS[2]
            statuses.append(_send(connection, server.token, body)[0])
        return statuses

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        statuses = [s for part in pool.map(client, range(clients)) for s in part]
    took = time.perf_counter() - began
    record_property("decisions_per_second", round(count / took, 1))
    print(f"\n{count} decisions from {clients} clients in {took:.1f} s: {count / took:.0f}/s")
    assert statuses == [200] * count
    assert len(_rows(run)) == count
    shown = _history(server.url)
    assert sorted(int(str(r["reviewer"])[1:]) for r in shown) == list(range(count))
    server.kill()


# --- fuzzed JSON --------------------------------------------------------------------------------

HOSTILE = [
    '<img src=x onerror="alert(1)">',
    "</script><script>alert(1)</script>",
    "[red]bold[/red]",
    "=cmd|' /C calc'!A0",
    "'; DROP TABLE decisions; --",
    "\x00\x1b[31m\r\n",
    "\ud800",  # a lone surrogate: JSON carries one, UTF-8 cannot
    "i000\ud800",
    "../../etc/passwd",
    "𝓲000",
]
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_text = (
    st.text(max_size=40)
    | st.sampled_from(HOSTILE)
    | st.integers(10_000, 80_000).map(lambda n: "x" * n)  # huge, and over MAX_BODY
)
_values = (
    st.none()
    | _text
    | st.sampled_from(["red", "green", "blue", PREDICTION, "0.5, 0.5", "[1, 2]", "nan, 1", ""])
    | st.lists(st.floats() | st.integers(), max_size=3)
    | _json
)
_KEYS = ("id", "task", "decision", "value", "reviewer")
_VALID = [  # (task, decision, value) the app takes for any instance
    *((task, kind, None) for task in TASKS for kind in ("keep", "drop")),
    ("colour", "relabel", "blue"),
    ("geometry", "relabel", "0.5, 0.25"),
    ("geometry", "relabel", [1, 2]),
    ("seg", "relabel", PREDICTION),
    ("depth", "relabel", PREDICTION),
]
_near_valid = st.builds(  # often a decision the app takes, so that what it stores is fuzzed too
    lambda instance, chosen, reviewer: dict(zip(_KEYS, (instance, *chosen, reviewer), strict=True)),
    st.sampled_from([f"i{i:03d}" for i in range(12)]),
    st.sampled_from(_VALID),
    st.none() | _text,
)
_decisions = st.builds(  # ... with up to two fields replaced by anything and one left out
    lambda base, changes, left_out: {
        k: v for k, v in {**base, **changes}.items() if k not in left_out
    },
    _near_valid,
    st.dictionaries(st.sampled_from(_KEYS), _values | _json, max_size=2),
    st.sets(st.sampled_from(_KEYS), max_size=1),
)


@pytest.fixture(scope="module")
def fuzzed(trained: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Served:
    import shutil

    copy = tmp_path_factory.mktemp("fuzzed") / "run"
    shutil.copytree(trained[1], copy)
    return _start(copy, trained[0], top="100%")


def _raw_post(served: Served, data: bytes) -> tuple[int, str]:
    connection = _connection(served.url)
    connection.request(
        "POST",
        "/api/decisions",
        body=data,
        headers={"Content-Type": "application/json", "X-Review-Token": served.review.token},
    )
    response = connection.getresponse()
    return response.status, response.read().decode("utf-8", errors="replace")


def _answered_cleanly(status: int, text: str) -> dict[str, object]:
    assert status == 200 or 400 <= status < 500, (status, text)
    assert "Traceback" not in text
    answer = json.loads(text)
    if status != 200:
        assert isinstance(answer["error"], str) and answer["error"]
    return answer


def _fuzz(examples: int):  # type: ignore[no-untyped-def]
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )


@_fuzz(150)
@given(body=_decisions | _json, raw=st.none() | st.binary(max_size=200))
def test_fuzzed_decisions_are_stored_valid_or_refused_with_a_4xx(
    fuzzed: Served, body: object, raw: bytes | None
) -> None:
    store = DecisionStore(fuzzed.run)
    before = len(store.records())
    data = raw if raw is not None else json.dumps(body).encode()
    status, text = _raw_post(fuzzed, data)
    answer = _answered_cleanly(status, text)
    rows = store.records()
    assert len(rows) == before + (status == 200)
    if status == 200:
        assert len(data) <= MAX_BODY
        stored = _stored(rows[-1])
        assert check_decision(fuzzed.review.manifest, stored) == stored  # canonical and valid
        assert answer["saved"] is True and answer["id"] == stored.id


def _stored(row: dict[str, object]) -> Decision:
    return Decision(**{k: v for k, v in row.items() if k != "seq"})  # type: ignore[arg-type]


@pytest.mark.parametrize("reviewer", HOSTILE)
def test_a_hostile_reviewer_is_stored_as_text_or_refused_with_a_4xx(
    fuzzed: Served, reviewer: str
) -> None:
    before = len(DecisionStore(fuzzed.run).records())
    body = {"id": "i001", "task": "colour", "decision": "keep", "reviewer": reviewer}
    status, text = _raw_post(fuzzed, json.dumps(body).encode())
    _answered_cleanly(status, text)
    stored = DecisionStore(fuzzed.run).records()[before:]
    assert [r["reviewer"] for r in stored] == ([reviewer] if status == 200 else [])
    assert status == 200 or "\ud800" in reviewer


@pytest.mark.parametrize(
    "data",
    [b"[" * 100_000, b'{"id": "' + b"x" * (MAX_BODY + 1) + b'"}', b"\xff\xfe{}", b"NaN", b""],
)
def test_a_body_nested_too_deep_too_large_or_not_json_is_a_4xx(fuzzed: Served, data: bytes) -> None:
    before = len(DecisionStore(fuzzed.run).history())
    status, text = _raw_post(fuzzed, data)
    _answered_cleanly(status, text)
    assert status in (400, 413, 422) and len(DecisionStore(fuzzed.run).history()) == before


@_fuzz(60)
@given(
    query=st.dictionaries(
        st.sampled_from(["task", "id", "after", "limit", "other"]),
        st.text(max_size=30) | st.integers(-(10**30), 10**30).map(str) | st.sampled_from(HOSTILE),
    )
)
def test_fuzzed_history_queries_answer_json_or_a_4xx(fuzzed: Served, query: dict[str, str]) -> None:
    encoded = urllib.parse.urlencode(query, errors="surrogatepass")
    status, text, _ = _get(fuzzed.url + "api/decisions?" + encoded)
    answer = _answered_cleanly(status, text)
    if status == 200:
        assert isinstance(answer["decisions"], list) and len(answer["decisions"]) <= HISTORY_PAGE


def test_the_whole_store_is_valid_after_fuzzing(fuzzed: Served) -> None:
    for row in DecisionStore(fuzzed.run).records():
        stored = _stored(row)
        assert check_decision(fuzzed.review.manifest, stored) == stored


@pytest.mark.parametrize("number", ["9" * 30, "-5", "x", "1e9"])
def test_any_page_number_is_a_page(fuzzed: Served, number: str) -> None:
    status, html, _ = _get(fuzzed.url + f"tasks/colour?page={number}")
    assert status == 200 and "Traceback" not in html
