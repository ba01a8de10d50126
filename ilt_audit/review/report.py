"""The report: one self-contained HTML page that a person reads to judge a run's suspects.

The page holds a summary with each task's estimated error rate and its interval
(:mod:`ilt_audit.audit.calibration`), and per task the distribution of ``log σ²`` across epochs (the
paper's Figure 6, split into clean and corrupted labels when a corruption file is given, with the
detection figures of :func:`ilt_audit.audit.evaluation.evaluate`), the trajectories of the top flagged
instances against the task's median (Figure 3), and the flagged instances as a table with
thumbnails: the input, the label as the manifest gives it (masks colour-coded, depth maps through
a colormap), the model's prediction, and why the label is suspect: ``p_wrong`` and the evidence
behind it (:func:`ilt_audit.audit.explanation.explain`: the class the network prefers and its
probability, the residual against the task's typical label, the shares a mask leaves out or adds,
outlined on the image), so that a wrong label can be seen at a glance. Plots are drawn with
matplotlib (no pyplot, no display) and every image is an inline base64 PNG: the file needs no
network and no script, and its Content-Security-Policy forbids both. This module computes and
formats the values; the markup is the template ``templates/report.html``, which escapes them.

Runs trained without ILT parameters (``--weighting equal|uncertainty|dwa|gls``) are shown with
their per-instance loss instead of ``log σ²``, and the page says so.

Example:
    >>> render_report("runs/noisy", "report.html", truth="noisy/corruption.parquet")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import io
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib import colormaps
from matplotlib.figure import Figure

from ilt_audit import __version__
from ilt_audit.audit.calibration import Audit, audit
from ilt_audit.audit.evaluation import detection_table
from ilt_audit.audit.explanation import explain, records
from ilt_audit.audit.gate import SCORE_NAMES, Cutoff, find_suspects, resolve_score, rule_text
from ilt_audit.audit.ranking import Scores
from ilt_audit.corruption.planting import read_truth
from ilt_audit.dataset.card import TaskSpec
from ilt_audit.dataset.manifest import Manifest
from ilt_audit.errors import OptionError
from ilt_audit.internal.files import write_text_atomic
from ilt_audit.review.instances import (
    NO_TAG,
    Numbers,
    PredictionsUnavailable,
    depth_range,
    depth_rgb,
    error_rate_text,
    feature_text,
    input_image,
    label_map,
    label_numbers,
    legend,
    mask_rgb,
    outline_legend,
    outline_rgb,
    plotted_column,
    png_uri,
    predict_instances,
    why_text,
)
from ilt_audit.review.pages import templates
from ilt_audit.run.directory import Run, RunLike, open_run
from ilt_audit.run.trajectories import TrajectoryMatrix, read_matrix

MAX_BOX_EPOCHS = 24  # box plots show at most this many epochs, evenly spread, always the last
TRAJECTORIES = 8  # top flagged instances drawn against the median
PLOT_SAMPLE = 20_000  # box plots and the median are drawn from at most this many instances per
# task (per group, clean or corrupted, with a truth file): a seeded random sample of larger tasks
SAMPLE_SEED = 0  # the same run gives the same sample, so the same figures
CLEAN, CORRUPT, NEUTRAL = "#3b75af", "#d1495b", "#8c8c8c"


@dataclass
class _Page:
    """What the page is built from, read once."""

    run: Run
    config: dict[str, Any]
    score: str  # the score name (ilt_audit.audit.ranking.SCORES)
    value: str  # the trajectory column plotted: "log_sigma2" or "loss"
    ranked: pd.DataFrame  # per task its suspects and `top` highest: rank, id, task, score, label,
    # suspect (+ corrupted with a truth file)
    cutoffs: dict[str, Cutoff]
    instances: dict[str, int]  # per task
    manifest: Manifest
    top: int
    curves: TrajectoryMatrix | None = None  # every epoch of the plotted instances (_plotted)
    groups: dict[str, list[_Group]] = field(default_factory=dict)  # task -> box plot groups
    truth: pd.DataFrame | None = None
    evaluation: pd.DataFrame | None = None
    predictions: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> id -> prediction
    notes: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # instance id -> row of the manifest
    metrics: tuple[dict[str, Any], ...] = ()  # metrics.jsonl, one row per finished epoch
    audit: Audit | None = None  # p_wrong and each task's error rate
    evidence: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (id, task) ->
    # why the label is suspect, for the rows the tables show (ilt_audit.audit.explanation.explain)

    @property
    def run_dir(self) -> Path:
        return self.run.path


def render_report(
    run: RunLike,
    out: str | Path,
    *,
    truth: str | Path | None = None,
    top: int = 20,
    by: str | None = None,
) -> Path:
    """Write the HTML report of a run to ``out`` and return its path.

    ``truth`` is a corruption file (from :func:`ilt_audit.corruption.planting.corrupt`): the plots then
    split clean and corrupted labels and the page carries the detection figures. ``top`` is how
    many of each task's highest-scoring instances the table and thumbnails show; ``by`` the score
    (default: as :func:`ilt_audit.audit.gate.resolve_score` decides).

    Example:
        >>> render_report("runs/shapes", "shapes.html", top=10)  # doctest: +SKIP
        PosixPath('shapes.html')
    """
    if top < 1:
        raise OptionError(f"--top must be at least 1, got {top}")
    page = _read(open_run(run), truth, top, by)
    out = Path(out)
    write_text_atomic(out, _html(page))
    return out


def _read(run: Run, truth: str | Path | None, top: int, by: str | None) -> _Page:
    config = run.config
    score = resolve_score(run, by)
    value = plotted_column(run, score)  # the trajectory plotted: log_sigma2, loss or margin
    manifest = run.manifest("for thumbnails")
    found = find_suspects(run, by=score, top=top)
    page = _Page(
        run, config, score, value, found.table, found.cutoffs, found.instances, manifest, top
    )
    page.metrics = run.metrics
    page.audit = found.scores.audit or audit(run)
    if run.partial_note:
        page.notes.append(run.partial_note)
    page.notes += page.audit.notes
    if config.get("options", {}).get("weighting", "ilt") != "ilt":
        page.notes.append(
            f"This run was trained with --weighting {config['options']['weighting']}, which has no "
            "per-instance log σ²: instances are judged, and plotted, by their unweighted loss instead."
        )
    if truth is not None:
        page.truth = read_truth(truth)
        page.evaluation = detection_table(found.scores.to_frame(), page.truth, source=truth)
        near = page.truth[page.truth.id.isin(page.ranked.id)]  # the listed instances' marks
        marked = page.ranked.merge(near, on=["id", "task"], how="left").corrupted
        # True / False, or <NA> for an instance the corruption file does not name
        page.ranked["corrupted"] = marked.astype("boolean").to_numpy()
    shown = page.ranked[page.ranked["rank"] <= page.top].id.unique()
    rows = _manifest_rows(manifest, shown)
    page.rows = dict(zip(shown[rows >= 0], rows[rows >= 0], strict=True))
    _plotted(page, found.scores)
    page.predictions = _predict(page)
    shown = _shown(page)[["id", "task"]]
    evidence = records(explain(run, shown, found=page.audit))
    page.evidence = {(e["id"], e["task"]): e for e in evidence}
    return page


def _manifest_rows(manifest: Manifest, ids: Any) -> np.ndarray:
    """The manifest row of each id (-1 where the manifest has none)."""
    known = pa.array(manifest.frame[manifest.card.id], pa.string())
    found = pc.index_in(pa.array(ids, pa.string()), value_set=known)
    return found.fill_null(-1).to_numpy()


# --- the plotted instances -------------------------------------------------------------------


@dataclass(frozen=True)
class _Group:
    """Instances of one task drawn together: a box per epoch, or the median band."""

    name: str  # "all", "clean" or "corrupted"
    colour: str
    columns: np.ndarray  # their columns in page.curves
    total: int  # the group's instances, of which len(columns) are drawn


def _plotted(page: _Page, scores: Scores) -> None:
    """Choose the instances the plots are drawn from and read their trajectories, every epoch.

    Per task: the ``all`` group (the median band, and the box plots without a truth file), or the
    ``clean`` and ``corrupted`` groups, each a seeded random sample of at most
    :data:`PLOT_SAMPLE` instances, and the top flagged instances; only their rows are read.
    """
    rng = np.random.default_rng(SAMPLE_SEED)
    ids = scores.keys["id"]
    rows = scores.by_task()
    chosen: dict[str, list[tuple[str, str, pa.Array, int]]] = {}
    for task in page.cutoffs:
        members = rows[task]
        groups = [("all", NEUTRAL, members)]
        if page.truth is not None:
            marks = page.truth[page.truth.task == task]
            task_ids = ids.take(pa.array(members))
            corrupted = _is_in(task_ids, marks.id[marks.corrupted])
            if corrupted.any():
                # the evaluation checked that the file names only the task's instances, each once:
                # when it names as many as there are, it names every one
                named = len(marks) == len(members) or _is_in(task_ids, marks.id)
                groups += [
                    ("clean", CLEAN, members[named & ~corrupted]),
                    ("corrupted", CORRUPT, members[corrupted]),
                ]
        chosen[task] = [
            (name, colour, ids.take(pa.array(_sample(rng, group))), len(group))
            for name, colour, group in groups
        ]
    top = page.ranked[page.ranked["rank"] <= min(page.top, TRAJECTORIES)].id
    wanted = pa.concat_arrays(
        [pa.array(top, pa.string())]
        + [sample.combine_chunks() for groups in chosen.values() for *_, sample, _ in groups]
    )
    page.curves = curves = read_matrix(page.run_dir, page.value, ids=pc.unique(wanted))
    names, codes = curves.task_codes()
    for task, groups in chosen.items():
        here = codes == names.index(task)
        page.groups[task] = [
            _Group(name, colour, np.flatnonzero(here & _is_in(curves.keys["id"], sample)), total)
            for name, colour, sample, total in groups
        ]


def _sample(rng: np.random.Generator, rows: np.ndarray) -> np.ndarray:
    if len(rows) <= PLOT_SAMPLE:
        return rows
    return np.sort(rng.choice(rows, PLOT_SAMPLE, replace=False))


def _is_in(ids: pa.Array | pa.ChunkedArray, values: Any) -> np.ndarray:
    value_set = values if isinstance(values, pa.Array) else pa.array(values, pa.string())
    if isinstance(value_set, pa.ChunkedArray):
        value_set = value_set.combine_chunks()
    return pc.is_in(ids, value_set=value_set).to_numpy(zero_copy_only=False)


def _sample_note(page: _Page, task: str) -> str:
    """Says which instances the plots show, when not every one."""
    groups = page.groups[task]
    if all(len(g.columns) == g.total for g in groups):
        return ""
    counts = "; ".join(f"{g.name}: {len(g.columns):,} of {g.total:,}" for g in groups)
    return (
        f"The box plots and the median band are drawn from a random sample of the instances "
        f"(at most {PLOT_SAMPLE:,} per group, seed {SAMPLE_SEED}; {counts}); the flagged "
        "instances' trajectories are their own."
    )


# --- predictions -----------------------------------------------------------------------------


def _predict(page: _Page) -> dict[str, dict[str, Any]]:
    """The model's output for the instances the tables show, per task, in the label's units
    (:func:`ilt_audit.review.instances.predict_instances`); when there is none, the page says why."""
    try:
        return predict_instances(page.run, page.manifest, _shown(page)["id"].unique().tolist())
    except PredictionsUnavailable as exc:
        page.notes.append(str(exc))
        return {}


def _shown(page: _Page) -> pd.DataFrame:
    """The rows the tables show: each task's ``top`` highest scores."""
    return page.ranked[page.ranked["rank"] <= page.top]


# --- pictures --------------------------------------------------------------------------------


def _figure_uri(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass(frozen=True)
class _View:
    """A cell of the flagged-instances table: a thumbnail, an instance's features, or text."""

    kind: str  # "picture", "features" or "text"
    value: str  # the picture's data URI, or the text
    alt: str = ""  # what the picture shows


def _input_view(page: _Page, row: pd.Series) -> _View:
    manifest = page.manifest
    if manifest.card.input.type == "image":
        image = input_image(manifest, page.rows[row.id])
        return _View("picture", png_uri(image), f"input of {row.id}")
    return _View("features", feature_text(manifest, page.rows[row.id]))


def _text_views(page: _Page, task: TaskSpec, row: pd.Series) -> tuple[_View, _View | None]:
    predicted = page.predictions.get(task.name, {}).get(row.id)
    shown = _View("text", str(row.label) or NO_TAG)  # only a tag set's text can be empty
    return shown, None if predicted is None else _View("text", str(predicted))


def _map_views(
    page: _Page,
    task: TaskSpec,
    row: pd.Series,
    label: np.ndarray,
    colour: Callable[[Any], np.ndarray],
) -> tuple[_View, _View | None]:
    """Thumbnails of a dense label as the manifest gives it and of the model's prediction."""
    predicted = page.predictions.get(task.name, {}).get(row.id)
    shown = _View("picture", png_uri(colour(label)), f"{task.name} map of {row.id} as labelled")
    if predicted is None:
        return shown, None
    return shown, _View(
        "picture", png_uri(colour(predicted)), f"predicted {task.name} map of {row.id}"
    )


def _mask_views(page: _Page, task: TaskSpec, row: pd.Series) -> tuple[_View, _View | None]:
    label = label_map(page.manifest, task, page.rows[row.id])
    return _map_views(page, task, row, label, lambda mask: mask_rgb(mask, task))


def _depth_views(page: _Page, task: TaskSpec, row: pd.Series) -> tuple[_View, _View | None]:
    label = label_map(page.manifest, task, page.rows[row.id])
    low, high = depth_range(label)  # the label's range colours both maps
    return _map_views(page, task, row, label, lambda depth: depth_rgb(depth, low, high))


# the label and prediction cells of the flagged-instances table, by task type (None: no prediction)
_VIEWS: dict[str, Callable[[_Page, TaskSpec, pd.Series], tuple[_View, _View | None]]] = {
    "classification": _text_views,
    "regression": _text_views,
    "segmentation": _mask_views,
    "dense-regression": _depth_views,
    "multi-label": _text_views,
}


# --- plots -----------------------------------------------------------------------------------


def _value_label(page: _Page) -> str:
    return {"loss": "loss (log scale)", "margin": "margin (assigned − largest other logit)"}.get(
        page.value, "log σ²"
    )


def _box_figure(page: _Page, task: str) -> str:
    """The paper's Figure 6: the distribution of the task's values per epoch."""
    assert page.curves is not None
    epochs = list(page.curves.epochs)
    picks = list(range(len(epochs)))
    if len(epochs) > MAX_BOX_EPOCHS:
        picks = sorted(set(np.linspace(0, len(epochs) - 1, MAX_BOX_EPOCHS).round().astype(int)))
    figure = Figure(figsize=(7.2, 2.8))
    axes = figure.subplots()
    groups = page.groups[task]
    if len(groups) > 1:  # with a truth file: clean and corrupted, not all
        groups = [g for g in groups if g.name != "all"]
    width = 0.8 / len(groups)
    for g, group in enumerate(groups):
        values = page.curves.values[np.ix_(picks, group.columns)]  # (epochs shown, instances)
        data = [row[~np.isnan(row)] for row in values]
        positions = np.arange(len(picks)) + (g - (len(groups) - 1) / 2) * width
        parts = axes.boxplot(
            data,
            positions=positions,
            widths=width * 0.85,
            patch_artist=True,
            manage_ticks=False,
            flierprops={
                "marker": ".",
                "markersize": 2,
                "alpha": 0.4,
                "markeredgecolor": group.colour,
            },
            medianprops={"color": "black", "linewidth": 1},
        )
        for box in parts["boxes"]:
            box.set(facecolor=group.colour, alpha=0.75, edgecolor=group.colour)
        axes.plot([], [], color=group.colour, linewidth=6, alpha=0.75, label=group.name)
    axes.set_xticks(np.arange(len(picks)), [str(epochs[i]) for i in picks], fontsize=7)
    axes.set_xlabel("epoch")
    axes.set_ylabel(_value_label(page))
    if page.value == "loss":
        axes.set_yscale("log")
    if len(groups) > 1:
        axes.legend(loc="upper left", fontsize=8, frameon=False)
    axes.grid(axis="y", alpha=0.3)
    return _figure_uri(figure)


def _trajectory_figure(page: _Page, task: str) -> str:
    """The paper's Figure 3: the top flagged instances' trajectories against the task median."""
    curves = page.curves
    assert curves is not None
    figure = Figure(figsize=(7.2, 2.8))
    axes = figure.subplots()
    epochs = np.array(curves.epochs)
    (everyone,) = [g for g in page.groups[task] if g.name == "all"]
    with warnings.catch_warnings():  # an epoch where every value is NaN draws nothing
        warnings.simplefilter("ignore", RuntimeWarning)
        low, median, high = np.nanquantile(curves.values[:, everyone.columns], [0.1, 0.5, 0.9], 1)
    axes.fill_between(
        epochs, low, high, color=NEUTRAL, alpha=0.25, linewidth=0, label="10–90% of instances"
    )
    axes.plot(epochs, median, color="black", linewidth=2.5, label="median")
    top = page.ranked[
        (page.ranked.task == task) & (page.ranked["rank"] <= min(page.top, TRAJECTORIES))
    ]
    names, codes = curves.task_codes()
    here = np.flatnonzero(codes == names.index(task))
    found = pc.index_in(pa.array(top.id, pa.string()), value_set=curves.keys["id"].take(here))
    columns = here[found.to_numpy()]  # each top instance's column in page.curves
    palette = colormaps["tab10"].colors
    for i, (row, column) in enumerate(zip(top.itertuples(), columns, strict=True)):
        style: dict[str, Any] = {"color": palette[i % len(palette)], "linewidth": 1.2}
        known = _known(row.corrupted) if "corrupted" in top.columns else None
        if known is not None:
            style = {
                "color": CORRUPT if known else CLEAN,
                "linewidth": 1.2,
                "linestyle": "-" if known else "--",
            }
        axes.plot(
            epochs, curves.values[:, column], alpha=0.9, label=f"#{row.rank} {row.id}", **style
        )
    threshold = page.cutoffs[task].threshold
    axes.axhline(threshold, color=CORRUPT, linestyle=":", linewidth=1, label="suspect cut-off")
    axes.set_xlabel("epoch")
    axes.set_ylabel(_value_label(page))
    if page.value == "loss":
        axes.set_yscale("log")
    axes.grid(alpha=0.3)
    axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    return _figure_uri(figure)


def _loss_figure(page: _Page) -> str | None:
    metrics = page.metrics
    if not metrics:
        return None
    figure = Figure(figsize=(7.2, 2.2))
    axes = figure.subplots()
    epochs = [m["epoch"] for m in metrics]
    for name in metrics[0]["loss"]:
        axes.plot(epochs, [m["loss"].get(name, math.nan) for m in metrics], marker=".", label=name)
    axes.set_yscale("log")
    axes.set_xlabel("epoch")
    axes.set_ylabel("mean training loss")
    axes.grid(alpha=0.3)
    axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return _figure_uri(figure)


# --- the page --------------------------------------------------------------------------------
# The values are computed and formatted here; the markup is templates/report.html, autoescaped.


def _html(page: _Page) -> str:
    """The page, from templates/report.html."""
    tasks = [t for t in page.manifest.card.tasks if t.name in page.cutoffs]
    return (
        templates()
        .get_template("report.html")
        .render(
            title=f"ilt-audit report: {page.run_dir.name or page.run_dir}",
            generated=f"{datetime.now(UTC):%Y-%m-%d %H:%M}",
            version=__version__,
            facts=_facts(page),
            notes=page.notes,
            score=page.score,
            rule=rule_text(page.score),
            truth=page.truth is not None,
            value=_value_label(page),
            trajectories=min(page.top, TRAJECTORIES),
            loss_figure=_loss_figure(page),
            tasks=[_task(page, task) for task in tasks],
            run_dir=str(page.run_dir),
        )
    )


def _known(corrupted: Any) -> bool | None:
    """A corruption mark as True / False, or None where the corruption file does not name it."""
    return None if corrupted is None or pd.isna(corrupted) else bool(corrupted)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _pct(share: float | None) -> str:
    return "–" if _missing(share) else f"{100 * share:.1f}%"


def _num(value: float | None) -> str:
    return "–" if _missing(value) else f"{value:.3f}"


def _facts(page: _Page) -> dict[str, str]:
    config = page.config
    options = config.get("options", {})
    instances = config.get("instances", {})
    count = f"{instances.get('train', '?')} trained on"
    if instances.get("val"):
        count += f", {instances['val']} held out"
    return {
        "card": str(config["card"]["path"]),
        "instances": count,
        "epochs": str(max(page.curves.epochs) if page.curves is not None else "?"),
        "model": (
            f"{config.get('model', '?')}, weighting {options.get('weighting', '?')}, "
            f"seed {options.get('seed', '?')}, device {config.get('device', '?')}"
        ),
        "score_name": SCORE_NAMES.get(page.score, page.score),
    }


def _task(page: _Page, task: TaskSpec) -> dict[str, Any]:
    """A task's line of the summary and its section."""
    name = task.name
    part = page.ranked[page.ranked.task == name]
    suspects = int(part.suspect.sum())
    return {
        "name": name,
        "type": task.type,
        "dense": task.dense,
        "instances": page.instances[name],
        "suspects": suspects,
        "share": _pct(suspects / page.instances[name]),
        "cutoff": f"{page.cutoffs[name].threshold:.3g}",
        "error_rate": error_rate_text(_rate(page, name)),
        "detection": _detection(page, name, part),
        "box": _box_figure(page, name),
        "lines": _trajectory_figure(page, name),
        "sample_note": _sample_note(page, name),
        "swatches": legend(task),
        "outlines": outline_legend() if task.type in _PICTURES else [],
        "rows": _flagged_rows(page, task, part),
    }


def _rate(page: _Page, task: str) -> dict[str, float | int] | None:
    """A task's estimated error rate (:meth:`ilt_audit.audit.calibration.ErrorRate.to_dict`)."""
    rate = page.audit.rates.get(task) if page.audit is not None else None
    return None if rate is None else rate.to_dict()


def _detection(page: _Page, task: str, part: pd.DataFrame) -> list[str]:
    """Against the corruption file: how many suspects are corrupted, and the ranking's figures
    (nothing without one)."""
    if page.evaluation is None:
        return []
    figures = page.evaluation[page.evaluation.task == task]
    if figures.empty:  # no label of this task was corrupted
        return ["0"] + ["–"] * 5
    row = figures.iloc[0]
    marked = part.corrupted.fillna(False).to_numpy(dtype=bool)  # unnamed instances are not
    hits = int((part.suspect.to_numpy() & marked).sum())
    suspects = int(part.suspect.sum())
    precision = f" ({_pct(hits / suspects)})" if suspects else ""
    return [
        str(int(row.corrupted)),
        f"{hits}{precision}",
        _pct(hits / int(row.corrupted)),
        _pct(row.detection_accuracy),
        _num(row.auroc),
        _num(row.average_precision),
    ]


def _flagged_rows(page: _Page, task: TaskSpec, part: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows of a task's table of its ``top`` highest-scoring instances."""
    rows = []
    for _, row in part[part["rank"] <= page.top].iterrows():
        label, predicted = _VIEWS[task.type](page, task, row)
        evidence = page.evidence.get((row.id, task.name))
        rows.append(
            {
                "rank": int(row["rank"]),
                "id": str(row.id),
                "p_wrong": _num(evidence["p_wrong"] if evidence else None),
                "score": f"{row.score:.3f}",
                "suspect": bool(row.suspect),
                "corrupted": _known(row.get("corrupted")),  # None without a corruption file
                "input": _input_view(page, row),
                "label": label,
                "prediction": predicted,
                "why": _why(page, task, row, evidence),
                "why_picture": _PICTURES[task.type](page, task, row)
                if task.type in _PICTURES
                else None,
            }
        )
    return rows


def _why(page: _Page, task: TaskSpec, row: pd.Series, evidence: dict[str, Any] | None) -> str:
    """Why the label is suspect, in a line (:func:`ilt_audit.review.instances.why_text`)."""
    predicted = page.predictions.get(task.name, {}).get(row.id)
    numbers = isinstance(predicted, Numbers)  # regression: label − prediction per column
    labelled = label_numbers(page.manifest, task, page.rows[row.id]) if numbers else None
    return why_text(evidence, str(row.label), predicted=predicted, labelled=labelled)


def _outline_view(page: _Page, task: TaskSpec, row: pd.Series) -> _View | None:
    """The input with where the network's mask and the label disagree outlined (no prediction:
    nothing)."""
    predicted = page.predictions.get(task.name, {}).get(row.id)
    if predicted is None:
        return None
    image = input_image(page.manifest, page.rows[row.id])
    label = label_map(page.manifest, task, page.rows[row.id])
    return _View(
        "picture",
        png_uri(outline_rgb(image, label, predicted, task)),
        f"where the network and the {task.name} mask of {row.id} disagree",
    )


# a picture of the evidence in the "why" cell, by task type
_PICTURES: dict[str, Callable[[_Page, TaskSpec, pd.Series], _View | None]] = {
    "segmentation": _outline_view,
}
