"""The review app: a local web page over a run's suspects, where a person keeps, relabels or
drops each one.

Per task, the suspects are listed highest score first, one page at a time: the input, the label
as given (masks over the image, depth maps through a colormap, numbers in the data's units),
what the trained network predicts, why the label is suspect (the evidence behind its
``p_wrong``, :func:`ilt_audit.audit.explanation.explain`: the class the network prefers and its
probability, the residual against the task's typical label, where a mask and the network
disagree outlined on the image), the score and its trajectory against the task's median.
Decisions go to :class:`ilt_audit.review.decisions.DecisionStore` (``RUN/review.sqlite``), committed
before the page shows them as saved; ``ilt-audit fix`` turns them into a corrected dataset.

Why it stays fast on a run of a million instances: the ranked suspects are written once into a
``suspects`` table of the same SQLite file (with their trajectories and evidence), keyed by what they were
computed from, so a page is one indexed query of ``per_page`` rows; the browser never receives
the whole list. The model is loaded on the first page that shows predictions, and predicts that
page's instances only.

Served by Starlette under uvicorn, pages from Jinja2 templates with autoescaping, and a small
script shipped with the package: the page needs no network. Bound to 127.0.0.1 unless asked
otherwise. Requests name instances by id and task only; files are read from the paths the
manifest gives, never from a path in a request. A decision must carry the page's token (a
random value per server) in a header, so no other web page can post one.

Example:
    >>> app = review_app("runs/shapes", reviewer="ana")  # doctest: +SKIP
    >>> serve(app, port=8765)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import secrets
import socket
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ilt_audit.audit.calibration import audit
from ilt_audit.audit.explanation import explain, records
from ilt_audit.audit.gate import SCORE_NAMES, resolve_score
from ilt_audit.audit.ranking import rank
from ilt_audit.dataset.card import TaskSpec
from ilt_audit.dataset.manifest import Manifest
from ilt_audit.errors import OptionError
from ilt_audit.review.decisions import KINDS, PREDICTION, Decision, DecisionError, DecisionStore
from ilt_audit.review.decisions import check_decision as check
from ilt_audit.review.instances import (
    NO_TAG,
    Numbers,
    PredictionsUnavailable,
    Predictor,
    TagGuess,
    depth_range,
    depth_rgb,
    error_rate_text,
    feature_text,
    input_image,
    label_map,
    label_numbers,
    legend,
    mask_rgb,
    mask_rgba,
    outline_legend,
    outline_rgb,
    plotted_column,
    png_uri,
    why_text,
)
from ilt_audit.review.pages import templates
from ilt_audit.run.directory import Run, RunLike, open_run
from ilt_audit.run.trajectories import read_matrix

PACKAGE = Path(__file__).parent
DEFAULT_TOP = "5%"  # the share of each task's instances listed for review
PER_PAGE = 10
PICTURE = 192  # the longest side of the pictures on a review card, in pixels
MEDIAN_SAMPLE = 20_000  # the median trajectory is drawn from at most this many instances per task
PREDICTION_CACHE = 2_000  # instances whose predictions are kept in memory
MAX_BODY = 64 * 1024  # bytes of a posted decision; a larger body is refused (413) unread
HISTORY_PAGE = 1_000  # decisions per answer of GET /api/decisions, unless ?limit= asks fewer
LAYOUT = 2  # of the suspects table: a table of another layout is built again (2: evidence)

_SUSPECTS = """
CREATE TABLE suspects (
    task TEXT NOT NULL,
    rank INTEGER NOT NULL,
    id TEXT NOT NULL,
    score REAL,
    label TEXT NOT NULL,  -- the label as the manifest gives it, as text
    class TEXT,  -- classification: the class as given; the class filter matches it
    trajectory TEXT NOT NULL,  -- JSON list: the score's value column, every epoch
    evidence TEXT NOT NULL,  -- JSON object: why the label is suspect (ilt_audit.audit.explanation)
    PRIMARY KEY (task, rank)
)"""
_SUSPECTS_INDEX = "CREATE INDEX suspects_class ON suspects (task, class, rank)"
_META = "CREATE TABLE IF NOT EXISTS suspects_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


@dataclass(frozen=True)
class Filters:
    """Which suspects of a task a page lists."""

    label: str | None = None  # classification: only this class as given
    low: float | None = None  # only scores >= low
    high: float | None = None  # only scores <= high
    open_only: bool = False  # only suspects without a decision

    @classmethod
    def parse(cls, query: Any) -> Filters:
        def number(name: str) -> float | None:
            text = (query.get(name) or "").strip()
            try:
                value = float(text) if text else None
            except ValueError:
                return None
            return value if value is not None and math.isfinite(value) else None

        return cls(
            label=query.get("class") or None,
            low=number("min"),
            high=number("max"),
            open_only=query.get("open") == "1",
        )


@dataclass
class Review:
    """A run opened for review: its suspects in SQLite, its decisions, and its model."""

    run: Run
    manifest: Manifest
    store: DecisionStore
    score: str
    top: str
    reviewer: str
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    predictions_note: str | None = None
    _predicted: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    _predictor: Predictor | None = None  # loaded on the first page that shows predictions
    _predicting: threading.Lock = field(default_factory=threading.Lock)  # pages run in threads
    _rows: pd.Index | None = None

    @property
    def tasks(self) -> list[TaskSpec]:
        ranked = set(self.counts())
        return [t for t in self.manifest.card.tasks if t.name in ranked]

    def row(self, instance_id: str) -> int:
        """The manifest row of an instance."""
        return int(self._index().get_loc(instance_id))

    # --- suspects ----------------------------------------------------------------------------

    def build_suspects(self) -> None:
        """Write the ranked suspects, their trajectories and evidence into ``review.sqlite``,
        unless the table there was computed from the same epochs, score and share."""
        signature = json.dumps(
            {
                "epochs": list(self.run.epochs),
                "score": self.score,
                "top": self.top,
                "layout": LAYOUT,
            }
        )
        with self.store.connect() as db:
            db.execute(_META)
            found = db.execute("SELECT value FROM suspects_meta WHERE key = 'signature'").fetchone()
            if found and found[0] == signature:
                return
        ranked = rank(self.run, top=self.top, by=self.score)
        audited = audit(self.run)
        evidence = records(explain(self.run, ranked[["id", "task"]], found=audited))
        summary = {
            "rates": {task: rate.to_dict() for task, rate in audited.rates.items()},
            "notes": audited.notes,
        }
        value = plotted_column(self.run, self.score)
        # the finished epochs only: an unfinished run's last file may have no metrics line
        curves = read_matrix(
            self.run.path, value, epochs=self.run.epochs, ids=ranked["id"].unique()
        )
        names, codes = curves.task_codes()
        keys = pd.MultiIndex.from_arrays(
            [curves.keys["id"].to_pandas(), np.asarray(names, dtype=object)[codes]]
        )
        columns = keys.get_indexer(pd.MultiIndex.from_frame(ranked[["id", "task"]]))
        values = np.round(curves.values[:, columns].T.astype(np.float64), 4)  # (S, E)
        classes = {t.name for t in self.manifest.card.tasks if t.type == "classification"}
        rows = [
            (
                task,
                int(r),
                i,
                None if math.isnan(s) else float(s),
                label,
                label if task in classes else None,
                json.dumps([None if math.isnan(v) else v for v in curve]),
                json.dumps(why),
            )
            for task, r, i, s, label, curve, why in zip(
                ranked["task"],
                ranked["rank"],
                ranked["id"],
                ranked["score"],
                ranked["label"],
                values,
                evidence,
                strict=True,
            )
        ]
        medians = self._medians(value)
        with self.store.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DROP TABLE IF EXISTS suspects")  # and its index; an older layout too
            db.execute(_SUSPECTS)
            db.execute(_SUSPECTS_INDEX)
            db.executemany("INSERT INTO suspects VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            db.execute(
                "INSERT OR REPLACE INTO suspects_meta VALUES ('medians', ?)", (json.dumps(medians),)
            )
            db.execute(
                "INSERT OR REPLACE INTO suspects_meta VALUES ('audit', ?)", (json.dumps(summary),)
            )
            db.execute("INSERT OR REPLACE INTO suspects_meta VALUES ('signature', ?)", (signature,))
            db.execute("COMMIT")

    def _medians(self, value: str) -> dict[str, list[float | None]]:
        """Per task, the median of the value column per epoch, over a seeded sample of at most
        :data:`MEDIAN_SAMPLE` instances (only their rows are read)."""
        ids = np.asarray(self.manifest.ids, dtype=object)
        if len(ids) > MEDIAN_SAMPLE:
            ids = np.random.default_rng(0).choice(ids, MEDIAN_SAMPLE, replace=False)
        curves = read_matrix(self.run.path, value, epochs=self.run.epochs, ids=ids.tolist())
        names, codes = curves.task_codes()
        medians = {}
        for i, name in enumerate(names):
            with np.errstate(all="ignore"):
                middle = np.nanmedian(curves.values[:, codes == i], axis=1)
            medians[name] = [None if math.isnan(v) else round(float(v), 4) for v in middle]
        return medians

    def counts(self) -> dict[str, dict[str, int]]:
        """Per task: suspects listed, of them decided, and left."""
        with self.store.connect() as db:
            rows = db.execute(
                "SELECT s.task, COUNT(*), COUNT(d.id) FROM suspects s LEFT JOIN "
                "(SELECT DISTINCT task, id FROM decisions) d ON d.task = s.task AND d.id = s.id "
                "GROUP BY s.task"
            ).fetchall()
        return {t: {"total": n, "decided": k, "left": n - k} for t, n, k in rows}

    def page(self, task: str, number: int, filters: Filters) -> tuple[list[dict[str, Any]], int]:
        """One page of a task's suspects (highest score first) and how many match the filters."""
        where: list[str] = ["s.task = ?"]
        args: list[Any] = [task]
        if filters.label is not None:
            where.append("s.class = ?")
            args.append(filters.label)
        if filters.low is not None:
            where.append("s.score >= ?")
            args.append(filters.low)
        if filters.high is not None:
            where.append("s.score <= ?")
            args.append(filters.high)
        if filters.open_only:
            where.append("d.decision IS NULL")
        joined = (
            "FROM suspects s LEFT JOIN (SELECT id, decision, value, reviewer FROM decisions "
            "WHERE seq IN (SELECT MAX(seq) FROM decisions WHERE task = ? GROUP BY id)) d "
            f"ON d.id = s.id WHERE {' AND '.join(where)}"
        )
        with self.store.connect() as db:
            db.row_factory = sqlite3.Row
            total = db.execute(f"SELECT COUNT(*) {joined}", [task, *args]).fetchone()[0]
            found = db.execute(
                "SELECT s.rank, s.id, s.score, s.label, s.trajectory, s.evidence, d.decision, "
                "d.value, "
                f"d.reviewer {joined} ORDER BY s.rank LIMIT ? OFFSET ?",
                [task, *args, PER_PAGE, max(number - 1, 0) * PER_PAGE],
            ).fetchall()
        return [dict(r) for r in found], total

    def histories(self, task: str, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Per instance id, every decision on its label for the task, oldest first."""
        found: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        for row in self.store.records(task, ids):
            found[row["id"]].append(row)
        return found

    def medians(self) -> dict[str, list[float | None]]:
        with self.store.connect() as db:
            found = db.execute("SELECT value FROM suspects_meta WHERE key = 'medians'").fetchone()
        return json.loads(found[0]) if found else {}

    def audit_summary(self) -> dict[str, Any]:
        """Each task's estimated error rate (``rates``: task -> estimate, low, high, n) and the
        audit's ``notes``, as the suspects were built."""
        with self.store.connect() as db:
            found = db.execute("SELECT value FROM suspects_meta WHERE key = 'audit'").fetchone()
        return json.loads(found[0]) if found else {"rates": {}, "notes": []}

    def classes(self, task: str) -> list[str]:
        with self.store.connect() as db:
            rows = db.execute(
                "SELECT DISTINCT class FROM suspects WHERE task = ? AND class IS NOT NULL "
                "ORDER BY class",
                (task,),
            ).fetchall()
        return [r[0] for r in rows]

    # --- predictions -------------------------------------------------------------------------

    def predictions(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """Per instance id, the model's output per task; empty when the model cannot be used."""
        with self._predicting:  # one model, one cache, whichever thread serves the page
            return self._predictions(ids)

    def _predictions(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        missing = [i for i in ids if i not in self._predicted]
        if missing and self.predictions_note is None:
            try:
                if self._predictor is None:
                    self._predictor = Predictor(self.run, self.manifest)
                found = self._predictor(missing)
            except PredictionsUnavailable as exc:
                self.predictions_note = str(exc)
            else:
                for i in missing:
                    self._predicted[i] = {task: per_id[i] for task, per_id in found.items()}
                while len(self._predicted) > PREDICTION_CACHE:
                    self._predicted.popitem(last=False)
        return {i: self._predicted[i] for i in ids if i in self._predicted}

    # --- one suspect, as the page shows it ---------------------------------------------------

    def card(
        self,
        task: TaskSpec,
        found: dict[str, Any],
        predicted: dict[str, Any] | None,
        median: list[float | None],
        history: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """What the template needs to draw one suspect (``history``: its decisions, oldest
        first)."""
        row = self.row(found["id"])
        image = self.manifest.card.input.type == "image"
        view: dict[str, Any] = {
            "rank": found["rank"],
            "id": found["id"],
            "score": found["score"],
            "label": found["label"],
            "decision": found["decision"],
            "value": found["value"],
            "reviewer": found["reviewer"],
            "history": history or [],
            "input": png_uri(input_image(self.manifest, row), PICTURE) if image else None,
            "features": None if image else feature_text(self.manifest, row),
            "sparkline": sparkline(json.loads(found["trajectory"]), median),
            "prediction": None,
            "suggested": None,
            "fields": [],
            "label_map": None,
            "prediction_map": None,
            "range": None,
            "outline": None,
            "tags": [],
        }
        guess = predicted.get(task.name) if predicted is not None else None
        labelled = None
        if task.type == "classification":
            view["prediction"] = str(guess) if guess is not None else None
            view["suggested"] = guess.name if guess is not None else found["label"]
        elif task.type == "multi-label":
            view["prediction"] = str(guess) if guess is not None else None
            view["label"] = found["label"] or NO_TAG
            names = self.manifest.class_names[task.name]
            have = self.manifest.tag_matrix(task)[row]  # (C,) the tags as the label gives them
            view["tags"] = [
                {
                    "name": name,
                    "checked": bool(given),
                    "p": f"{guess.probability(name):.0%}" if isinstance(guess, TagGuess) else None,
                }
                for name, given in zip(names, have, strict=True)
            ]
        elif task.type == "regression":
            view["prediction"] = str(guess) if guess is not None else None
            labelled = label_numbers(self.manifest, task, row)
            view["label"] = str(labelled)
            chosen = guess if isinstance(guess, Numbers) else labelled
            view["fields"] = [
                {"column": c, "value": f"{v:.6g}"}
                for c, v in zip(chosen.columns, chosen.values, strict=True)
            ]
        elif task.type == "segmentation":
            mask = label_map(self.manifest, task, row)
            view["label_map"] = png_uri(
                mask_rgba(mask, task) if image else mask_rgb(mask, task), PICTURE
            )
            view["prediction_map"] = (
                png_uri(mask_rgba(guess, task) if image else mask_rgb(guess, task), PICTURE)
                if guess is not None
                else None
            )
            if guess is not None and image:
                picture = input_image(self.manifest, row)
                view["outline"] = png_uri(outline_rgb(picture, mask, guess, task, PICTURE), PICTURE)
        else:
            depth = label_map(self.manifest, task, row)
            low, high = depth_range(depth)  # the label's range colours both
            view["label_map"] = png_uri(depth_rgb(depth, low, high), PICTURE)
            view["prediction_map"] = (
                png_uri(depth_rgb(guess, low, high), PICTURE) if guess is not None else None
            )
            view["range"] = f"{low:.4g} … {high:.4g}"
        evidence = json.loads(found["evidence"])
        view["p_wrong"] = evidence.get("p_wrong")
        view["why"] = why_text(evidence, found["label"], predicted=guess, labelled=labelled)
        return view

    def decide(self, body: Any) -> tuple[Decision, dict[str, int] | None]:
        """Check and record one decision from the page, then the task's counts; raises
        DecisionError when it does not fit. Returns once the decision is committed."""
        if not isinstance(body, dict):
            raise DecisionError("a decision is a JSON object")
        fields = {k: body.get(k) for k in ("id", "task", "decision", "value", "reviewer")}
        if not all(isinstance(fields[k], str) for k in ("id", "task", "decision")):
            raise DecisionError("a decision needs id, task and decision as text")
        if fields["reviewer"] is not None and not isinstance(fields["reviewer"], str):
            raise DecisionError("reviewer is text when given", "reviewer")
        value = fields["value"]
        if isinstance(value, list):
            value = json.dumps(value)
        elif isinstance(value, bool) or not isinstance(value, str | int | float | None):
            raise DecisionError(
                "value is text, a number or a list (a relabel's new label) when given", "value"
            )
        decision = check(
            self.manifest,
            Decision(
                id=fields["id"],
                task=fields["task"],
                decision=fields["decision"],
                value=None if value is None else str(value),
                reviewer=fields["reviewer"] or self.reviewer,
            ),
            ids=self._index(),
        )
        self.store.record([decision])
        return decision, self.counts().get(decision.task)

    def _index(self) -> pd.Index:
        """The manifest's ids as an index, built once."""
        if self._rows is None:
            self._rows = pd.Index(self.manifest.ids)
        return self._rows


def sparkline(
    curve: list[float | None], median: list[float | None], width: int = 160, height: int = 48
) -> dict[str, Any]:
    """SVG polyline points of an instance's trajectory and of the task's median, on one scale."""
    values = [v for v in [*curve, *median] if v is not None]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    span = (high - low) or 1.0
    steps = max(len(curve), len(median), 2) - 1

    def points(series: list[float | None]) -> str:
        return " ".join(
            f"{i * width / steps:.1f},{height - 2 - (v - low) / span * (height - 4):.1f}"
            for i, v in enumerate(series)
            if v is not None
        )

    return {
        "width": width,
        "height": height,
        "curve": points(curve),
        "median": points(median),
        "low": f"{low:.3g}",
        "high": f"{high:.3g}",
    }


def open_review(
    run: RunLike,
    *,
    top: str = DEFAULT_TOP,
    by: str | None = None,
    reviewer: str = "",
    allow_partial: bool = False,
) -> Review:
    """Open a run for review: its manifest, its decisions and its ranked suspects (computed once
    and kept in ``review.sqlite``)."""
    run = open_run(run, allow_partial=allow_partial)
    score = resolve_score(run, by)
    review = Review(
        run=run,
        manifest=run.manifest("to review its suspects"),
        store=DecisionStore(run.path),
        score=score,
        top=str(top),
        reviewer=reviewer,
    )
    review.build_suspects()
    return review


def review_app(review: Review, *, hosts: list[str] | None = None) -> Starlette:
    """The web app over an opened review. ``hosts``: the Host headers it answers (by default
    the loopback names), so that no other site can reach it through DNS rebinding."""
    env = templates()
    page_template = env.get_template("review.html")
    csp = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )

    def html(text: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(text, status, headers={"Content-Security-Policy": csp})

    def home(request: Request) -> Response:
        tasks = review.tasks
        if not tasks:
            return html("<p>Nothing to review: no task has suspects.</p>", 404)
        return RedirectResponse(f"/tasks/{tasks[0].name}", 303)

    def task_page(request: Request) -> Response:
        name = request.path_params["task"]
        tasks = {t.name: t for t in review.tasks}
        if name not in tasks:
            return html("<p>No such task.</p>", 404)
        task = tasks[name]
        filters = Filters.parse(request.query_params)
        try:
            number = max(int(request.query_params.get("page", "1")), 1)
        except ValueError:
            number = 1
        number = min(number, 1 << 40)  # beyond any list; SQLite's integers are 64-bit
        found, total = review.page(name, number, filters)
        predicted = review.predictions([f["id"] for f in found])
        median = review.medians().get(name, [])
        histories = review.histories(name, [f["id"] for f in found])
        cards = [
            review.card(task, f, predicted.get(f["id"]), median, histories[f["id"]]) for f in found
        ]
        pages = max(math.ceil(total / PER_PAGE), 1)
        summary = review.audit_summary()
        notes = [review.predictions_note, review.run.partial_note, *summary["notes"]]
        text = page_template.render(
            run=str(review.run.path),
            tasks=review.tasks,
            task=task,
            counts=review.counts(),
            cards=cards,
            page=number,
            pages=pages,
            total=total,
            filters=filters,
            classes=review.classes(name),
            class_names=list(review.manifest.class_names.get(name, ())),
            legend_entries=legend(task),
            score_name=SCORE_NAMES.get(review.score, review.score),
            score=review.score,
            notes=[n for n in notes if n],
            error_rate=error_rate_text(summary["rates"].get(name)),
            outline_entries=outline_legend() if task.type == "segmentation" else [],
            token=review.token,
            reviewer=review.reviewer,
            kinds=KINDS,
            prediction_value=PREDICTION,
            per_page=PER_PAGE,
            query=_query(filters),
        )
        return html(text)

    async def decide(request: Request) -> Response:
        if request.headers.get("x-review-token") != review.token:
            return JSONResponse({"error": "missing or wrong review token"}, 403)
        if request.headers.get("content-type", "").split(";")[0] != "application/json":
            return JSONResponse({"error": "decisions are posted as JSON"}, 415)
        raw = await _body(request, MAX_BODY)
        if raw is None:
            return JSONResponse({"error": f"a decision is at most {MAX_BODY} bytes"}, 413)
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep
            return JSONResponse({"error": "the body is not JSON"}, 400)
        try:
            # the reply is sent only after the decision is committed: the page says "saved"
            # on this reply alone
            decision, counts = await _in_thread(review.decide, body)
        except DecisionError as exc:
            return JSONResponse({"error": str(exc)}, 422)
        except sqlite3.OperationalError as exc:  # busy past its timeout, disk full: "not saved"
            return JSONResponse({"error": f"the decisions file: {exc}; try again"}, 503)
        return JSONResponse(
            {
                "saved": True,
                "id": decision.id,
                "task": decision.task,
                "decision": decision.decision,
                "value": decision.value,
                "reviewer": decision.reviewer,
                "time": decision.time,
                "counts": counts,
            }
        )

    async def history(request: Request) -> Response:
        query = request.query_params
        try:
            after = int(query.get("after") or 0)
            limit = int(query.get("limit") or HISTORY_PAGE)
        except ValueError:
            return JSONResponse({"error": "after and limit are whole numbers"}, 400)
        if not (0 <= after < 1 << 62 and 1 <= limit <= HISTORY_PAGE):
            return JSONResponse(
                {"error": f"after is 0 or more and limit between 1 and {HISTORY_PAGE}"}, 400
            )
        task, instance = query.get("task"), query.get("id")
        rows = await _in_thread(
            review.store.records,
            task,
            None if instance is None else [instance],
            after=after,
            limit=limit,
        )
        return JSONResponse(
            {"decisions": rows, "next": rows[-1]["seq"] if len(rows) == limit else None}
        )

    routes = [
        Route("/", home),
        Route("/tasks/{task}", task_page),
        Route("/api/decisions", decide, methods=["POST"]),
        Route("/api/decisions", history, methods=["GET"]),
        Mount("/static", StaticFiles(packages=[("ilt_audit.review", "static")]), name="static"),
    ]
    allowed = hosts or ["127.0.0.1", "localhost", "[::1]"]
    return Starlette(
        routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=allowed)]
    )


async def _in_thread(function: Any, *args: Any, **kwargs: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(function, *args, **kwargs)


async def _body(request: Request, limit: int) -> bytes | None:
    """The request's body, or None when it is longer than ``limit`` bytes (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _query(filters: Filters) -> str:
    """The filters as a query string, for the pager's links."""
    from urllib.parse import urlencode

    parts = {
        "class": filters.label,
        "min": None if filters.low is None else f"{filters.low:g}",
        "max": None if filters.high is None else f"{filters.high:g}",
        "open": "1" if filters.open_only else None,
    }
    return urlencode({k: v for k, v in parts.items() if v is not None})


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or an :class:`OptionError` saying why not (port taken, bad host)."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(128)
    except OSError as exc:
        raise OptionError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port"
        ) from None
    return sock


def serve(app: Starlette, sock: socket.socket) -> None:
    """Serve the app on a bound socket until interrupted."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


def url_of(sock: socket.socket, task: str | None = None) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"tasks/{task}" if task else "")
