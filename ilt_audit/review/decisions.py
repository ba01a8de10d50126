"""Review decisions on suspect labels, kept in a SQLite database inside the run directory.

A reviewer (in ``ilt-audit review`` or in a spreadsheet) decides, per instance and task, to
**keep** the label, **relabel** it (a class name, a tag set, the task's numbers, or, for a mask
or a depth map, the model's prediction) or **drop** the instance. Every decision is one row appended to
``RUN/review.sqlite`` (``id, task, decision, value, reviewer, time``); nothing is updated in
place, so two reviewers deciding at once never lose a decision, and the history stays. The
decision that counts for an (instance, task) is the latest one (:meth:`DecisionStore.latest`).

The database runs in WAL mode with ``synchronous=FULL``: a decision is on disk when
:meth:`DecisionStore.record` returns, which is when the review page shows it as saved.

Example:
    >>> store = DecisionStore("runs/shapes")  # doctest: +SKIP
    >>> store.record([check_decision(manifest, Decision("img_0042", "shape", "relabel", "circle",
    ...                                                 "ana"))])  # doctest: +SKIP
    >>> store.latest().head()  # doctest: +SKIP
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import errno
import io
import json
import math
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from ilt_audit.dataset.card import TaskSpec
from ilt_audit.dataset.manifest import Manifest
from ilt_audit.errors import IltAuditError
from ilt_audit.internal.files import write_atomic, write_error

DECISIONS_FILE = "review.sqlite"
_WRITE_FAILURES = {  # SQLite's messages of a file it cannot write, as the OS would say them
    "database or disk is full": errno.ENOSPC,
    "attempt to write a readonly database": errno.EACCES,
    "unable to open database file": errno.EACCES,
}
KINDS = ("keep", "relabel", "drop")
PREDICTION = "prediction"  # a relabel of a mask or depth map: the model's output replaces it
COLUMNS = ("id", "task", "decision", "value", "reviewer", "time")
MAX_REVIEWER = 100  # characters of a reviewer's name that are kept

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- the order decisions were made in
    id TEXT NOT NULL,
    task TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('keep', 'relabel', 'drop')),
    value TEXT,  -- relabel: a class name, a JSON list of tags or numbers, or 'prediction'; else NULL
    reviewer TEXT NOT NULL,
    time TEXT NOT NULL  -- ISO 8601, UTC
);
CREATE INDEX IF NOT EXISTS decisions_key ON decisions (task, id, seq);
"""


class DecisionError(IltAuditError):
    """A decision does not fit the run's card: an unknown id, task or class, or a bad value."""

    def __init__(self, message: str, column: str | None = None) -> None:
        super().__init__(message)
        self.column = column  # the decision's field at fault, for messages naming a row


@dataclass(frozen=True)
class Decision:
    """One reviewer's decision on one instance's label for one task."""

    id: str
    task: str
    decision: str  # one of KINDS
    value: str | None = None  # relabel only: see check_decision
    reviewer: str = ""
    time: str = ""  # ISO 8601 UTC; filled in by check_decision when empty


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def check_decision(
    manifest: Manifest, decision: Decision, *, ids: pd.Index | None = None
) -> Decision:
    """The decision, checked against the card and manifest and with its value in canonical form.

    A relabel's value is a class name of the task (classification), the new tag set as a JSON
    list (``["cat", "dog"]``, ``[]`` for none) or joined by the task's separator (``cat|dog``)
    (multi-label; kept as a JSON list in the card's tag order), the task's numbers as a JSON list
    or comma-separated, one per column (regression), or ``"prediction"`` (masks and depth maps:
    the model's output replaces the label). Keep and drop carry no value. ``ids``
    is ``pd.Index(manifest.ids)``, passed in when many decisions are checked.
    """
    card = manifest.card
    tasks = {t.name: t for t in card.tasks}
    if decision.task not in tasks:
        raise DecisionError(
            f"task {decision.task!r} is not in the card; its tasks are: {', '.join(tasks)}",
            "task",
        )
    if decision.decision not in KINDS:
        raise DecisionError(
            f"decision {decision.decision!r} is not one of: {', '.join(KINDS)}", "decision"
        )
    index = ids if ids is not None else pd.Index(manifest.ids)
    if decision.id not in index:
        raise DecisionError(f"id {decision.id!r} is not in the manifest {card.table_path}", "id")
    value = decision.value if decision.value not in (None, "") else None
    if decision.decision == "relabel":
        if value is None:
            raise DecisionError(
                f"a relabel of {decision.id!r} ({decision.task}) needs a value", "value"
            )
        value = _check_value(manifest, tasks[decision.task], value)
    elif value is not None:
        raise DecisionError(
            f"a {decision.decision} decision takes no value, got {value!r}", "value"
        )
    reviewer = (decision.reviewer or "anonymous")[:MAX_REVIEWER]
    if not _is_unicode(reviewer):
        raise DecisionError(f"reviewer {reviewer!r} is not Unicode text", "reviewer")
    return replace(decision, value=value, reviewer=reviewer, time=decision.time or now())


def _is_unicode(text: str) -> bool:
    """Whether text can be stored as UTF-8 (a JSON body can carry a lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_value(manifest: Manifest, task: TaskSpec, value: str) -> str:
    if task.type == "classification":
        names = manifest.class_names[task.name]
        if value not in names:
            raise DecisionError(
                f"{value!r} is not a class of task {task.name!r}; its classes are: "
                f"{', '.join(names)}",
                "value",
            )
        return value
    if task.type == "multi-label":
        names = manifest.class_names[task.name]
        tags = parse_tags(value, task.separator)
        if tags is None:
            raise DecisionError(
                f"task {task.name!r} takes a tag set: a JSON list of tags (e.g. "
                f'["{names[0]}"], [] for none) or tags joined by {task.separator!r}, got {value!r}',
                "value",
            )
        unknown = next((t for t in tags if t not in names), None)
        if unknown is not None:
            raise DecisionError(
                f"{unknown!r} is not a tag of task {task.name!r}; its tags are: {', '.join(names)}",
                "value",
            )
        return json.dumps([n for n in names if n in tags])
    if task.type == "regression":
        numbers = parse_numbers(value)
        if numbers is None or len(numbers) != len(task.columns):
            raise DecisionError(
                f"task {task.name!r} takes {len(task.columns)} finite number(s) "
                f"({', '.join(task.columns)}), got {value!r}",
                "value",
            )
        return json.dumps(numbers)
    if value != PREDICTION:
        raise DecisionError(
            f"a {task.type} label ({task.name!r}) can only be relabelled with the model's "
            f"prediction: value {PREDICTION!r}, got {value!r}",
            "value",
        )
    return value


def parse_tags(value: str, separator: str) -> list[str] | None:
    """``'["cat", "dog"]'`` or ``"cat|dog"`` (``separator`` between tags) as tag names; None
    when it is neither (an empty tag included). Integers in a JSON list are tags too."""
    text = value.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except ValueError:
            return None
        tags = [str(v) for v in parsed if isinstance(v, str | int) and not isinstance(v, bool)]
        return tags if len(tags) == len(parsed) and all(tags) else None
    tags = [t.strip() for t in text.split(separator)]
    return tags if all(tags) else None


def parse_numbers(value: str) -> list[float] | None:
    """``"[1.5, 2]"`` or ``"1.5, 2"`` as floats; None when it is not finite numbers."""
    text = value.strip()
    try:
        parsed = json.loads(text) if text.startswith("[") else [float(p) for p in text.split(",")]
    except ValueError:
        return None
    if not isinstance(parsed, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in parsed
    ):
        return None
    numbers = [float(v) for v in parsed]
    return numbers if numbers and all(math.isfinite(v) for v in numbers) else None


class DecisionStore:
    """The decisions of one run directory (``RUN/review.sqlite``), appended to by any number of
    reviewers and processes at once."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / DECISIONS_FILE
        with self.connect() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection of its own (one per thread), closed at the end."""
        try:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")  # on disk before the page says "saved"
                yield db
            finally:
                db.close()
        except sqlite3.OperationalError as exc:  # a transaction that fails is rolled back whole
            failure = _WRITE_FAILURES.get(str(exc))
            if failure is None:
                raise
            raise write_error(self.path, OSError(failure, str(exc))) from None

    def record(self, decisions: Iterable[Decision]) -> int:
        """Append checked decisions in one transaction; returns how many."""
        rows = [(d.id, d.task, d.decision, d.value, d.reviewer, d.time) for d in decisions]
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT INTO decisions (id, task, decision, value, reviewer, time) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
            except BaseException:
                if db.in_transaction:  # SQLite has rolled back itself on a full disk
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        return len(rows)

    def latest(self, task: str | None = None) -> pd.DataFrame:
        """The decision that counts per (id, task): the latest. Columns :data:`COLUMNS`."""
        where = "WHERE task = ?" if task is not None else ""
        query = (
            f"SELECT {', '.join(COLUMNS)} FROM decisions WHERE seq IN "
            f"(SELECT MAX(seq) FROM decisions {where} GROUP BY task, id) ORDER BY seq"
        )
        with self.connect() as db:
            rows = db.execute(query, () if task is None else (task,)).fetchall()
        return pd.DataFrame(rows, columns=list(COLUMNS))

    def history(self) -> pd.DataFrame:
        """Every decision in the order it was made, with ``seq``."""
        return pd.DataFrame(self.records(), columns=["seq", *COLUMNS])

    def records(
        self,
        task: str | None = None,
        ids: Iterable[str] | None = None,
        *,
        after: int = 0,
        limit: int | None = None,
    ) -> list[dict[str, object]]:
        """Every decision as a dict of ``seq`` and :data:`COLUMNS` (``value`` None, not NaN,
        for keep and drop) in the order it was made: of one task and of some ids when given,
        from ``seq > after``, at most ``limit`` of them (a page of a long history)."""
        where, args = ["seq > ?"], [after]
        if task is not None:
            where.append("task = ?")
            args.append(task)
        if ids is not None:
            chosen = list(ids)
            where.append(f"id IN ({', '.join('?' * len(chosen))})")
            args.extend(chosen)
        query = f"SELECT seq, {', '.join(COLUMNS)} FROM decisions WHERE {' AND '.join(where)} "
        query += "ORDER BY seq" + ("" if limit is None else f" LIMIT {int(limit)}")
        with self.connect() as db:
            rows = db.execute(query, args).fetchall()
        return [dict(zip(("seq", *COLUMNS), row, strict=True)) for row in rows]

    def export_csv(self, path: Path) -> int:
        """Write the decisions that count to a CSV (atomically); returns how many."""
        frame = self.latest()
        write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False))
        return len(frame)

    def import_csv(self, path: Path, manifest: Manifest, *, reviewer: str = "") -> int:
        """Check every row of a decisions CSV, then record them all, or nothing.

        The file has the columns ``id, task, decision`` and optionally ``value, reviewer,
        time``; ``reviewer`` names the rows that name none. A bad row stops the import with its
        line number, id and column.
        """
        decisions = list(_read_csv(path, manifest, reviewer))
        return self.record(decisions)


def _read_csv(path: Path, manifest: Manifest, reviewer: str) -> Iterator[Decision]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DecisionError(f"{path}: cannot be read: {exc.strerror}") from None
    raw = raw.removeprefix(codecs.BOM_UTF8)  # a spreadsheet's "CSV UTF-8" starts with one
    try:  # decoded whole, so that a bad byte is named by its line
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        bad = raw[exc.start : exc.start + 1]
        raise DecisionError(f"{path}: line {line}: not UTF-8 text (byte {bad!r})") from None
    handle = io.StringIO(text, newline="")
    ids = pd.Index(manifest.ids)
    with handle:
        try:
            reader = csv.DictReader(handle)
            missing = [c for c in ("id", "task", "decision") if c not in (reader.fieldnames or [])]
            if missing:
                raise DecisionError(
                    f"{path}: missing column(s) {', '.join(missing)}; a decisions file has "
                    f"the columns {', '.join(COLUMNS)}"
                )
            for row in reader:
                line = reader.line_num
                decision = Decision(
                    id=row["id"] or "",
                    task=row["task"] or "",
                    decision=(row["decision"] or "").strip().lower(),
                    value=row.get("value") or None,
                    reviewer=row.get("reviewer") or reviewer,
                    time=row.get("time") or "",
                )
                try:
                    yield check_decision(manifest, decision, ids=ids)
                except DecisionError as exc:
                    where = f", column {exc.column!r}" if exc.column else ""
                    raise DecisionError(
                        f"{path}: line {line}, id {decision.id!r}{where}: {exc}", exc.column
                    ) from None
        except csv.Error as exc:
            raise DecisionError(f"{path}: not a CSV file: {exc}") from None
