"""The CI gate: which instances are *suspect*, and whether a task has too many of them.

By default (``--by p_wrong``) a label is suspect when its ``p_wrong`` is above
:data:`ilt_audit.audit.calibration.SUSPECT` (0.5: more likely wrong than right), the same meaning for
every task type, and each task also has an estimated error rate with a 95% interval
(:mod:`ilt_audit.audit.calibration`); ``max_error_rate`` fails a task whose estimate is above it.

The single scores of ``--by`` (``final``, ``tail``, ``mean``, ``loss``) keep the rule below.
A score's raw scale changes with the task and the data (a task the network fits well has every
``log σ²`` low, a hard one has them all higher), so "suspect" is not a fixed cut on the score but
an outlier rule on each task's own scores, in log-variance units. With ``m`` the median of the
task's scores and ``s = (Q3 − m) / 0.6745`` the spread of their upper half (a normal
distribution's standard deviation, estimated from its upper quartile), an instance is suspect when

    score > m + clip(SIGMAS · s, MIN_GAP, MAX_GAP)        SIGMAS = 3.5, MIN_GAP = 2, MAX_GAP = 3.5

- ``SIGMAS · s`` is Iglewicz and Hoaglin's outlier rule (a robust z-score above 3.5) with the
  spread taken from the upper half only: ``log σ²`` is clamped at -4, so a well-fitted task piles
  its lower half against the clamp, and wrong labels only ever add to the top;
- the score is a log variance (``log σ²`` settles at ``log l``; losses are compared as
  ``log(loss)``), so a distance above the median is a ratio of variances, whatever the task's
  units: ``MIN_GAP`` means a suspect's ``σ²`` is always at least ``e² ≈ 7`` times the median
  instance's (a tightly packed clean task does not flag its noise), and ``MAX_GAP`` that anything
  ``e^3.5 ≈ 33`` times above it is suspect even when many wrong labels widen the spread.

The constants were chosen on the shipped samples with 20% of the labels of each task corrupted,
and on clean runs, by the gate's verdict at 2% (see the README for the figures): a robust
``median + 3 MAD-sigmas`` rule flagged nothing on the corrupted shape task (the wrong labels
widen the MAD) and a third of a clean regression task; a bare ``median + 3`` flagged none of 20%
corrupted segmentation masks, whose ``log σ²`` sit only 2 above the clean ones'.

Example:
    >>> result = gate("runs/shapes", max_suspect="2%")  # doctest: +SKIP
    >>> result.passed, [(t.task, t.suspects) for t in result.tasks]  # doctest: +SKIP
    (False, [('shape', 113), ('geometry', 3), ('seg', 0), ('depth', 0)])
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ilt_audit.audit.calibration import SUSPECT, ErrorRate
from ilt_audit.audit.ranking import (
    DEFAULT_BY,
    SCORES,
    Scores,
    check_by,
    labels_of,
    read_scores,
    task_order,
)
from ilt_audit.errors import OptionError
from ilt_audit.internal.markup import xml_text
from ilt_audit.run.directory import RunLike, open_run

SIGMAS = 3.5  # robust z-score of an outlier (Iglewicz and Hoaglin)
MIN_GAP = (
    2.0  # a suspect's log σ² is at least this far above the median: σ² > e² ≈ 7 × the median's
)
MAX_GAP = 3.5  # ... and always suspect this far above it: σ² > e^3.5 ≈ 33 × the median's
UPPER_QUARTILE_Z = 0.6745  # the upper quartile of a standard normal distribution
LOG_SCORES = {"loss"}  # scores compared on a log scale (the others already are log σ²)
SCORE_NAMES = {
    "p_wrong": "the probability that the label is wrong",
    "tail": "mean log σ² over the last quarter of the epochs",
    "final": "log σ² after the last epoch",
    "mean": "mean log σ² over all epochs",
    "loss": "the last epoch's unweighted loss",
}


@dataclass(frozen=True)
class Cutoff:
    """Where one task's scores become suspect, and the statistics it comes from."""

    median: float  # of the task's scores, in log-variance units
    spread: float  # (Q3 - median) / 0.6745, in the same units
    threshold: float  # a score above this is suspect, in the score's own units

    def to_dict(self) -> dict[str, float]:
        return {"median": self.median, "spread": self.spread, "threshold": self.threshold}


def cutoff(scores: np.ndarray, *, log: bool = False) -> Cutoff:
    """The suspect cut-off of one task's scores (see the module docstring).

    With ``log=True`` the scores are losses, compared as ``log(loss)``; the threshold is then
    returned as a loss.

    Example:
        >>> scores = np.r_[np.linspace(-4.0, -3.0, 50), 2.5]  # tight, and one far above
        >>> c = cutoff(scores)
        >>> round(c.median, 2), round(c.threshold, 2), int((scores > c.threshold).sum())
        (-3.49, -1.49, 1)
    """
    values = _log_units(np.asarray(scores, dtype=np.float64), log)
    median = float(np.median(values))
    spread = float(np.percentile(values, 75) - median) / UPPER_QUARTILE_Z
    threshold = median + min(max(SIGMAS * spread, MIN_GAP), MAX_GAP)
    return Cutoff(median, spread, math.exp(threshold) if log else threshold)


def _log_units(values: np.ndarray, log: bool) -> np.ndarray:
    if not log:
        return values
    return np.log(np.maximum(values, np.finfo(np.float32).tiny))  # a loss of 0 is a very low score


def resolve_score(run: RunLike, by: str | None = None) -> str:
    """The score to judge a run by: ``by``, or the default for how the run was trained.

    Runs trained without ILT parameters (``--weighting equal|uncertainty|dwa|gls``) have no
    per-instance ``log σ²``; their default is the loss, and a ``log σ²`` score is an error.
    """
    weighting = open_run(run).weighting
    if by is None:
        return DEFAULT_BY  # p_wrong: from the evidence, whatever the weighting
    check_by(by)
    if weighting != "ilt" and SCORES[by].column == "log_sigma2" and not SCORES[by].audited:
        raise OptionError(
            f"--by {by}: the run was trained with --weighting {weighting}, which has no "
            "per-instance log σ²; use --by loss"
        )
    return by


def parse_share(text: str | float, *, option: str = "--max-suspect") -> float:
    """``"2%"`` or ``0.02`` → 0.02; a share must lie within [0, 1].

    Example:
        >>> parse_share("2%"), parse_share("0.5"), parse_share(0)
        (0.02, 0.5, 0.0)
    """
    raw = str(text).strip()
    match = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*(%?)", raw)
    if match:
        value = float(match.group(1)) / (100 if match.group(2) else 1)
        if 0 <= value <= 1:
            return value
    raise OptionError(f"{option} {raw!r}: give a share of the instances, as 2% or 0.02 (0 to 100%)")


@dataclass(frozen=True, eq=False)  # eq=False: it holds a DataFrame and arrays
class Suspects:
    """Each task's suspects (and its ``top`` highest scores), with the cut-offs behind them."""

    table: pd.DataFrame  # rank, id, task, score, label, suspect: per task, highest score first
    cutoffs: dict[str, Cutoff]  # per task, in the card's order
    instances: dict[str, int]  # instances per task
    scores: Scores  # every instance's score, for what needs more than the table


def find_suspects(
    run: RunLike,
    *,
    task: str | None = None,
    by: str | None = None,
    top: int = 0,
) -> Suspects:
    """Per task, the suspect instances, ranked, and the task's cut-off.

    The table has the columns of :func:`ilt_audit.audit.ranking.rank` (``rank, id, task, score,
    label``) plus ``suspect`` (bool), and holds per task every suspect and at least the ``top``
    highest-scoring instances: the suspects are decided on the scores alone and labels are looked
    up for the listed rows only.

    Example:
        >>> found = find_suspects("runs/shapes", task="shape")  # doctest: +SKIP
        >>> found.table[found.table.suspect].head()  # doctest: +SKIP
    """
    run = open_run(run)
    by = resolve_score(run, by)
    scored = read_scores(run, by=by)
    rows = scored.by_task()
    cutoffs: dict[str, Cutoff] = {}
    instances: dict[str, int] = {}
    parts, flags = [], []
    for name in task_order(run, rows, task):
        values = scored.values[rows[name]]
        if SCORES[by].audited:  # a probability: the same cut for every task
            cutoffs[name] = cut = Cutoff(float(np.median(values)), 0.0, SUSPECT)
        else:
            cutoffs[name] = cut = cutoff(values, log=by in LOG_SCORES)
        instances[name] = len(values)
        suspects = int((values > cut.threshold).sum())
        part = scored.highest(rows[name], max(suspects, min(top, len(values))))
        parts.append(part)
        flags.append(np.arange(len(part)) < suspects)  # the suspects are the highest scores
    table = scored.frame(parts)
    table["label"] = labels_of(run.manifest("to show labels"), table)
    table["suspect"] = np.concatenate(flags) if flags else np.zeros(0, dtype=bool)
    return Suspects(table, cutoffs, instances, scored)


@dataclass(frozen=True, eq=False)  # eq=False: it holds a DataFrame
class TaskGate:
    """The gate's verdict on one task."""

    task: str
    type: str  # the task type of the card
    instances: int
    suspects: int
    limit: float  # the largest share of suspects that passes
    cutoff: Cutoff
    suspect_list: pd.DataFrame  # rank, id, score, label of the suspects, highest score first
    error_rate: ErrorRate | None = None  # the estimated share of wrong labels (by p_wrong)
    max_error_rate: float | None = None  # the largest estimate that passes (None: not gated)

    @property
    def share(self) -> float:
        return self.suspects / self.instances if self.instances else 0.0

    @property
    def allowed(self) -> int:
        """The most suspects that still pass: ``floor(limit · instances)``."""
        return math.floor(self.limit * self.instances + 1e-9)

    @property
    def rate_passed(self) -> bool:
        """Whether the estimated error rate is within ``max_error_rate`` (True when not gated)."""
        if self.max_error_rate is None or self.error_rate is None:
            return True
        return self.error_rate.estimate <= self.max_error_rate + 1e-12

    @property
    def passed(self) -> bool:
        return self.suspects <= self.allowed and self.rate_passed

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "type": self.type,
            "instances": self.instances,
            "suspects": self.suspects,
            "share": self.share,
            "limit": self.limit,
            "allowed": self.allowed,
            "passed": self.passed,
            "cutoff": self.cutoff.to_dict(),
            "error_rate": self.error_rate.to_dict() if self.error_rate is not None else None,
            "max_error_rate": self.max_error_rate,
            "suspect_list": self.suspect_list.to_dict(orient="records"),
        }


@dataclass(frozen=True, eq=False)
class GateResult:
    """The gate's verdict on a run: one :class:`TaskGate` per task, in the card's order."""

    run_dir: Path
    score: str  # the score the instances were judged by (see ilt_audit.audit.ranking.SCORES)
    max_suspect: float
    tasks: tuple[TaskGate, ...]
    epochs: tuple[int, int] = (0, 0)  # (finished, planned) epochs of the run
    partial_note: str | None = None  # set when the run is unfinished and was read as it is
    notes: tuple[str, ...] = ()  # what p_wrong could not use (a task not learned, an old run)

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.tasks)

    @property
    def failed(self) -> tuple[TaskGate, ...]:
        return tuple(t for t in self.tasks if not t.passed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "passed": self.passed,
            "epochs_finished": self.epochs[0],
            "epochs_planned": self.epochs[1],
            "partial": self.partial_note is not None,
            "notes": list(self.notes),
            "score": self.score,
            "max_suspect": self.max_suspect,
            "rule": {
                "p_wrong_above": SUSPECT if SCORES[self.score].audited else None,
                "sigmas": SIGMAS,
                "min_gap": MIN_GAP,
                "max_gap": MAX_GAP,
                "log_scale": self.score in LOG_SCORES,
            },
            "tasks": [t.to_dict() for t in self.tasks],
        }


def gate(
    run: RunLike,
    *,
    task: str | None = None,
    max_suspect: str | float = 0.02,
    by: str | None = None,
    max_error_rate: str | float | None = None,
) -> GateResult:
    """Judge a run: a task passes when at most ``max_suspect`` of its instances are suspect and,
    with ``max_error_rate``, its estimated error rate is at most that.

    ``max_suspect`` and ``max_error_rate`` are shares (``0.02``) or percentages (``"2%"``).

    Example:
        >>> result = gate("runs/shapes", max_suspect="2%")  # doctest: +SKIP
        >>> [t.task for t in result.failed]  # doctest: +SKIP
        ['shape']
    """
    run = open_run(run)
    limit = parse_share(max_suspect)
    rate_limit = (
        parse_share(max_error_rate, option="--max-error-rate")
        if max_error_rate is not None
        else None
    )
    by = resolve_score(run, by)
    if rate_limit is not None and not SCORES[by].audited:
        raise OptionError(
            f"--max-error-rate needs the error-rate estimate of --by {DEFAULT_BY}, not --by {by}"
        )
    found = find_suspects(run, task=task, by=by)
    types = run.task_types
    verdicts = []
    for name, cut in found.cutoffs.items():
        part = found.table[(found.table.task == name) & found.table.suspect]
        flagged = part[["rank", "id", "score", "label"]].reset_index(drop=True)
        audit = found.scores.audit
        rate = audit.rates.get(name) if audit is not None else None
        verdicts.append(
            TaskGate(
                name,
                types.get(name, ""),
                found.instances[name],
                len(flagged),
                limit,
                cut,
                flagged,
                rate,
                rate_limit,
            )
        )
    epochs = (len(run.epochs), run.planned)
    audit = found.scores.audit
    notes = tuple(audit.notes) if audit is not None else ()
    return GateResult(run.path, by, limit, tuple(verdicts), epochs, run.partial_note, notes)


# --- CI formats ---------------------------------------------------------------------------------


def _percent(share: float) -> str:
    return f"{100 * share:.1f}%"


def _verdict_line(t: TaskGate) -> str:
    line = (
        f"{t.suspects} of {t.instances} instances suspect ({_percent(t.share)}); "
        f"the limit is {_percent(t.limit)} ({t.allowed})"
    )
    if t.error_rate is not None:
        line += f"; estimated error rate {rate_text(t.error_rate)}"
        if t.max_error_rate is not None:
            line += f", the limit is {_percent(t.max_error_rate)}"
    return line


def rate_text(rate: ErrorRate) -> str:
    """An error rate as people read it: ``4.1% (95% interval 2.9–5.3%)``."""
    return f"{_percent(rate.estimate)} (95% interval {_percent(rate.low)}–{_percent(rate.high)})"


def junit_xml(result: GateResult, *, top: int = 50) -> str:
    """JUnit XML: one test case per task, with a ``failure`` listing the suspects when over.

    Ids, labels and paths are untrusted: ElementTree escapes markup, and characters XML 1.0 does
    not allow (control characters, lone surrogates) are replaced, so that the file always parses.

    Example:
        >>> Path("gate.xml").write_text(junit_xml(gate("runs/shapes")))  # doctest: +SKIP
    """
    failures = str(len(result.failed))
    tests = str(len(result.tasks))
    suites = ET.Element(
        "testsuites", name="ilt-audit gate", tests=tests, failures=failures, errors="0"
    )
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=xml_text(f"ilt-audit gate {result.run_dir}"),
        tests=tests,
        failures=failures,
        errors="0",
        skipped="0",
    )
    properties = ET.SubElement(suite, "properties")
    for key, value in (
        ("run_dir", result.run_dir),
        ("score", result.score),
        ("max_suspect", result.max_suspect),
        ("epochs_finished", result.epochs[0]),
        ("epochs_planned", result.epochs[1]),
        ("partial", "true" if result.partial_note else "false"),
    ):
        ET.SubElement(properties, "property", name=key, value=xml_text(value))
    partial = f"\n{result.partial_note}" if result.partial_note else ""
    for t in result.tasks:
        case = ET.SubElement(suite, "testcase", classname="ilt-audit.gate", name=xml_text(t.task))
        if not t.passed:
            failure = ET.SubElement(
                case, "failure", type="SuspectLabels", message=xml_text(_verdict_line(t))
            )
            failure.text = xml_text(_suspect_lines(t, top) + partial)
        out = ET.SubElement(case, "system-out")
        out.text = xml_text(
            f"{_verdict_line(t)}; suspect when {result.score} > {t.cutoff.threshold:.4g}{partial}"
        )
    ET.indent(suites)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
    )


def _suspect_lines(t: TaskGate, top: int) -> str:
    lines = [
        f"{r.rank}. {r.id}  score {r.score:.4g}  label {r.label}"
        for r in t.suspect_list.head(top).itertuples()
    ]
    if t.suspects > top:
        lines.append(f"... and {t.suspects - top} more")
    return "\n".join(lines)


def rule_text(score: str) -> str:
    """One sentence that says when an instance is suspect under a score."""
    if score in SCORES and SCORES[score].audited:
        return (
            f"Suspect: p_wrong above {SUSPECT:g}, the probability that the label is wrong from "
            "the network's own view of the instance and its log σ² (more likely wrong than "
            "right); the error rate is the mean of p_wrong."
        )
    value = {"loss": "log(loss)", "margin": "minus the mean margin"}.get(
        SCORES[score].column if score in SCORES else "", "log σ²"
    )
    if score in LOG_SCORES:
        value = "log(loss)"
    return (
        f"Suspect: {value} above the task's median m by more than {SIGMAS:g} × s, with s = "
        f"(upper quartile − m) / {UPPER_QUARTILE_Z}, and by at least {MIN_GAP:g} "
        f"(σ² {math.exp(MIN_GAP):.1f}× the median's) and at most {MAX_GAP:g} "
        f"({math.exp(MAX_GAP):.0f}×)."
    )


_MD_PUNCTUATION = re.compile(r"([\\`*_{}\[\]()#+\-.!|~])")


def _md(text: Any) -> str:
    """Untrusted text (an id, a label) as literal Markdown: punctuation backslash-escaped, HTML
    characters as entities, one line. ``<script>`` renders as text, ``|`` stays in its cell."""
    one_line = " ".join(str(text).splitlines())
    escaped = _MD_PUNCTUATION.sub(r"\\\1", one_line)
    return escaped.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def markdown_summary(result: GateResult, *, top: int = 10) -> str:
    """Markdown for a CI job summary: a table of the tasks, then the top suspects of each.

    Example:
        >>> Path("summary.md").write_text(markdown_summary(gate("runs/shapes")))  # doctest: +SKIP
    """
    verdict = "passed" if result.passed else "failed"
    mark = "✅" if result.passed else "❌"
    lines = [
        f"## {mark} ilt-audit gate {verdict}",
        "",
        f"Run {_md(result.run_dir)}; score `{result.score}` "
        f"({SCORE_NAMES.get(result.score, result.score)}); "
        f"at most {_percent(result.max_suspect)} suspect per task.",
        "",
        *([f"> **Warning:** {_md(result.partial_note)}", ""] if result.partial_note else []),
        "| task | instances | suspects | share | limit | estimated error rate | result |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for t in result.tasks:
        outcome = "✅ pass" if t.passed else "❌ fail"
        rate = rate_text(t.error_rate) if t.error_rate is not None else "—"
        if t.max_error_rate is not None:
            rate += f" (limit {_percent(t.max_error_rate)})"
        lines.append(
            f"| {_md(t.task)} | {t.instances} | {t.suspects} | {_percent(t.share)} | "
            f"{_percent(t.limit)} ({t.allowed}) | {rate} | {outcome} |"
        )
    for t in result.tasks:
        if not t.suspects:
            continue
        shown = t.suspect_list.head(top)
        lines += [
            "",
            f"### Top suspects: {_md(t.task)}",
            "",
            "| rank | id | score | label |",
            "| ---: | --- | ---: | --- |",
        ]
        lines += [
            f"| {r.rank} | {_md(r.id)} | {r.score:.4g} | {_md(r.label)} |"
            for r in shown.itertuples()
        ]
        if t.suspects > len(shown):
            lines += [
                "",
                f"{len(shown)} of {t.suspects} suspects shown; all: "
                f"{_md(f'ilt-audit gate {result.run_dir} --task {t.task} --format json')}.",
            ]
    lines += [
        "",
        rule_text(result.score),
    ]
    return "\n".join(lines) + "\n"
