"""The report: one self-contained HTML page that a person reads to judge a run's suspects.

The page holds, per task, the distribution of ``log σ²`` across epochs (the paper's Figure 6,
split into clean and corrupted labels when a corruption file is given, with the detection
figures of :func:`ilt_audit.evaluation.evaluate`), the trajectories of the top flagged instances
against the task's median (Figure 3), and the flagged instances as a table with thumbnails: the
input, the label as the manifest gives it (masks colour-coded, depth maps through a colormap) and
the model's prediction, so that a wrong label can be seen at a glance. Plots are drawn with
matplotlib (no pyplot, no display) and every image is an inline base64 PNG: the file needs no
network and no script, and its Content-Security-Policy forbids both.

Runs trained without ILT parameters (``--weighting equal|uncertainty|dwa|gls``) are shown with
their per-instance loss instead of ``log σ²``, and the page says so.

Example:
    >>> render_report("runs/noisy", "report.html", truth="noisy/corruption.parquet")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
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
from PIL import Image

from ilt_audit import __version__
from ilt_audit.card import TaskSpec
from ilt_audit.corruption import read_truth
from ilt_audit.errors import CardError, OptionError, RunDirError
from ilt_audit.evaluation import detection_table
from ilt_audit.gate import SCORE_NAMES, Cutoff, find_suspects, resolve_score, rule_text
from ilt_audit.internal.files import write_text_atomic
from ilt_audit.manifest import Manifest
from ilt_audit.ranking import SCORES, Scores
from ilt_audit.rundir import CHECKPOINT, Run, RunLike, open_run
from ilt_audit.trajectories import TrajectoryMatrix, read_matrix

THUMB = 96  # the longest side of a thumbnail, in pixels (larger inputs are shrunk)
MAX_BOX_EPOCHS = 24  # box plots show at most this many epochs, evenly spread, always the last
TRAJECTORIES = 8  # top flagged instances drawn against the median
PLOT_SAMPLE = 20_000  # box plots and the median are drawn from at most this many instances per
# task (per group, clean or corrupted, with a truth file): a seeded random sample of larger tasks
SAMPLE_SEED = 0  # the same run gives the same sample, so the same figures
CLEAN, CORRUPT, NEUTRAL = "#3b75af", "#d1495b", "#8c8c8c"


@dataclass
class _Page:
    """What the page is built from, read once."""

    run_dir: Path
    config: dict[str, Any]
    score: str  # the score name (ilt_audit.ranking.SCORES)
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


def render_report(
    run: RunLike,
    out: str | Path,
    *,
    truth: str | Path | None = None,
    top: int = 20,
    by: str | None = None,
) -> Path:
    """Write the HTML report of a run to ``out`` and return its path.

    ``truth`` is a corruption file (from :func:`ilt_audit.corruption.corrupt`): the plots then
    split clean and corrupted labels and the page carries the detection figures. ``top`` is how
    many of each task's highest-scoring instances the table and thumbnails show; ``by`` the score
    (default: as :func:`ilt_audit.gate.resolve_score` decides).

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
    value = SCORES[score].column  # the trajectory plotted: log_sigma2, loss or margin
    manifest = run.manifest("for thumbnails")
    found = find_suspects(run, by=score, top=top)
    page = _Page(
        run.path, config, score, value, found.table, found.cutoffs, found.instances, manifest, top
    )
    page.metrics = run.metrics
    if run.partial_note:
        page.notes.append(run.partial_note)
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
    """The model's output for the instances the tables show, per task, in the label's units.

    The model is rebuilt as training built it and loaded from ``checkpoint.pt`` with
    ``weights_only=True``; only the shown instances are decoded, normalised with the statistics
    saved in ``config.json`` (runs from before 0.2 have none: their data set is scanned again).
    When that is impossible (no checkpoint, the card changed) the page says why and shows labels
    only.
    """
    path = page.run_dir / CHECKPOINT
    card = page.manifest.card
    if not path.is_file():
        page.notes.append(
            f"No {CHECKPOINT} in the run directory: the model's predictions are not shown."
        )
        return {}
    if card.sha256() != page.config["card"].get("sha256"):
        page.notes.append(
            f"The dataset card or its manifest changed since training ({card.path}): labels are shown as "
            "they are now, and the model's predictions are not shown."
        )
        return {}
    import torch  # only now: a page without predictions never pays for it

    from ilt_audit.data import Normalisation, load_dataset
    from ilt_audit.training import predict

    shown = _shown(page)
    saved = page.config.get("normalisation")
    if saved:
        data = load_dataset(page.manifest, norm=Normalisation.from_dict(saved), scan=False)
    else:
        data = load_dataset(page.manifest)
    wanted = pd.Index(shown["id"].unique())
    rows = torch.from_numpy(pd.Index(data.ids).get_indexer(wanted).astype("int64"))
    try:
        outputs = predict(page.run_dir, data, rows)
    except RunDirError as exc:
        reason = re.sub(r"\x1b\[[0-9;]*m", "", str(exc).splitlines()[0])[:200]  # no terminal codes
        page.notes.append(f"The model could not be loaded ({reason}); predictions are not shown.")
        return {}
    ids = wanted.tolist()
    result: dict[str, dict[str, Any]] = {}
    for task in card.tasks:
        decoded = _DECODE[task.type](task, data, outputs[task.name])
        result[task.name] = dict(zip(ids, decoded, strict=True))
    return result


def _shown(page: _Page) -> pd.DataFrame:
    """The rows the tables show: each task's ``top`` highest scores."""
    return page.ranked[page.ranked["rank"] <= page.top]


def _unscale(task: TaskSpec, data: Any, y: Any) -> np.ndarray:
    mean, std = data.norm.target(task.name)
    return (y * std + mean).numpy()


def _decode_class(task: TaskSpec, data: Any, out: Any) -> list[str]:
    probability = out.softmax(dim=1)  # (B, C)
    best = probability.argmax(dim=1)
    names = data.manifest.class_names[task.name]
    return [f"{names[int(c)]} ({float(p[c]):.0%})" for c, p in zip(best, probability, strict=True)]


def _decode_vector(task: TaskSpec, data: Any, out: Any) -> list[str]:
    values = _unscale(task, data, out)  # (B, D)
    return [
        ", ".join(f"{c}={v:.4g}" for c, v in zip(task.columns, row, strict=True)) for row in values
    ]


def _decode_mask(task: TaskSpec, data: Any, out: Any) -> list[np.ndarray]:
    return list(out.argmax(dim=1).numpy())  # (B, H, W) class indices


def _decode_depth(task: TaskSpec, data: Any, out: Any) -> list[np.ndarray]:
    return list(_unscale(task, data, out[:, 0]))  # (B, H, W) in the label's units


_DECODE: dict[str, Callable[[TaskSpec, Any, Any], list[Any]]] = {
    "classification": _decode_class,
    "regression": _decode_vector,
    "segmentation": _decode_mask,
    "dense-regression": _decode_depth,
}


# --- pictures --------------------------------------------------------------------------------


def _png(image: np.ndarray) -> str:
    """An (H, W, 3) uint8 array as a data URI, shrunk so its longest side is at most THUMB."""
    picture = Image.fromarray(image)
    picture.thumbnail(
        (THUMB, THUMB),
        Image.Resampling.LANCZOS if picture.mode == "RGB" else Image.Resampling.NEAREST,
    )
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure_uri(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _mask_rgb(mask: np.ndarray, task: TaskSpec) -> np.ndarray:
    palette = (np.array(colormaps["tab10"].colors) * 255).astype(np.uint8)  # (10, 3)
    rgb = palette[np.mod(mask, len(palette))]
    if task.ignore_index is not None:
        rgb[mask == task.ignore_index] = 0  # unlabelled pixels are black
    return rgb


def _depth_rgb(depth: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = (depth - low) / (high - low) if high > low else np.zeros_like(depth)
    return (colormaps["viridis"](np.clip(scaled, 0, 1))[..., :3] * 255).astype(np.uint8)


def _img(uri: str, alt: str) -> str:
    return f'<img class="thumb" src="{uri}" alt="{html.escape(alt)}" title="{html.escape(alt)}">'


def _input_cell(page: _Page, row: pd.Series) -> str:
    manifest = page.manifest
    frame_row = manifest.frame.iloc[page.rows[row.id]]
    if manifest.card.input.type == "image":
        from ilt_audit.data import read_image

        column = manifest.card.input.columns[0]
        image = _read_file(
            page, row, column, lambda: read_image(manifest.file_path(frame_row[column]))
        )
        return _img(_png(image.permute(1, 2, 0).numpy()), f"input of {row.id}")
    values = ", ".join(f"{c}={frame_row[c]:.4g}" for c in manifest.input_columns[:8])
    more = len(manifest.input_columns) - 8
    return (
        f'<span class="features">{html.escape(values)}{f" … (+{more})" if more > 0 else ""}</span>'
    )


def _text_cells(page: _Page, task: TaskSpec, row: pd.Series) -> tuple[str, str]:
    predicted = page.predictions.get(task.name, {}).get(row.id)
    return html.escape(str(row.label)), html.escape(predicted) if predicted is not None else "–"


def _map_cells(
    page: _Page,
    task: TaskSpec,
    row: pd.Series,
    label: np.ndarray,
    colour: Callable[[Any], np.ndarray],
) -> tuple[str, str]:
    """Thumbnails of a dense label as the manifest gives it and of the model's prediction."""
    predicted = page.predictions.get(task.name, {}).get(row.id)
    shown = _img(_png(colour(label)), f"{task.name} map of {row.id} as labelled")
    if predicted is None:
        return shown, "–"
    return shown, _img(_png(colour(predicted)), f"predicted {task.name} map of {row.id}")


def _label_file(page: _Page, task: TaskSpec, row: pd.Series) -> Path:
    return page.manifest.file_path(page.manifest.frame.iloc[page.rows[row.id]][task.column])


def _read_file(page: _Page, row: pd.Series, column: str, read: Callable[[], Any]) -> Any:
    """A file the page shows, read; a file that cannot be (gone, changed, a bomb) is a
    :class:`CardError` naming the manifest, the row id and the column."""
    from ilt_audit.data import DECODE_ERRORS

    try:
        return read()
    except DECODE_ERRORS as exc:
        raise CardError(
            f"{page.manifest.card.table_path}: row id {row.id!r}: column {column!r}: cannot read "
            f"its file: "
            f"{exc}"
        ) from None


def _mask_cells(page: _Page, task: TaskSpec, row: pd.Series) -> tuple[str, str]:
    from ilt_audit.data import read_mask

    label = _read_file(page, row, task.column, lambda: read_mask(_label_file(page, task, row)))
    return _map_cells(page, task, row, label, lambda mask: _mask_rgb(mask, task))


def _depth_cells(page: _Page, task: TaskSpec, row: pd.Series) -> tuple[str, str]:
    from ilt_audit.data import read_depth

    label = _read_file(
        page, row, task.column, lambda: read_depth(_label_file(page, task, row), task.scale)
    )
    low, high = float(label.min()), float(label.max())  # the label's range colours both maps
    return _map_cells(page, task, row, label, lambda depth: _depth_rgb(depth, low, high))


# label and prediction cells of the flagged-instances table, by task type
_CELLS: dict[str, Callable[[_Page, TaskSpec, pd.Series], tuple[str, str]]] = {
    "classification": _text_cells,
    "regression": _text_cells,
    "segmentation": _mask_cells,
    "dense-regression": _depth_cells,
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

_CSS = """
:root { --fg: #1d1d1f; --muted: #6b6b70; --line: #dcdce0; --bad: #d1495b; --good: #2e8540; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       margin: 0 auto; padding: 24px 28px 48px; max-width: 1180px; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 36px 0 6px; padding-top: 12px;
     border-top: 2px solid var(--line); } h3 { font-size: 15px; margin: 18px 0 6px; }
.muted, figcaption, .type { color: var(--muted); } .type { font-weight: normal; font-size: 14px; }
code { font: 12.5px ui-monospace, SFMono-Regular, Menlo, monospace; background: #f3f3f5; padding: 1px 4px;
       border-radius: 3px; }
table { border-collapse: collapse; margin: 8px 0 12px; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: middle; }
th { background: #f6f6f8; font-weight: 600; } td.num, th.num { text-align: right; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 10px 0; }
dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; }
.fail { color: var(--bad); font-weight: 600; } .pass { color: var(--good); font-weight: 600; }
tr.suspect td:first-child { border-left: 4px solid var(--bad); }
.figures { display: flex; flex-wrap: wrap; gap: 8px 20px; } figure { margin: 6px 0; }
figure img { max-width: 100%; height: auto; }
img.thumb { width: 64px; height: auto; image-rendering: pixelated; border: 1px solid var(--line);
            vertical-align: middle; }
.features { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; }
.swatch { display: inline-block; width: 11px; height: 11px; margin: 0 3px 0 6px;
          border: 1px solid var(--line); vertical-align: -1px; }
.note { background: #fff8e6; border-left: 4px solid #e0a100; padding: 6px 10px; margin: 8px 0; }
nav a { margin-right: 12px; }
"""


def _known(corrupted: Any) -> bool | None:
    """A corruption mark as True / False, or None where the corruption file does not name it."""
    return None if corrupted is None or pd.isna(corrupted) else bool(corrupted)


def _e(value: Any) -> str:
    return html.escape(str(value))


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _pct(share: float | None) -> str:
    return "–" if _missing(share) else f"{100 * share:.1f}%"


def _num(value: float | None) -> str:
    return "–" if _missing(value) else f"{value:.3f}"


def _yes(flag: bool | None) -> str:
    return "–" if flag is None else '<span class="fail">yes</span>' if flag else "no"


# a table cell: its HTML, and whether it is a number (right-aligned)
Cell = tuple[str, bool]


def _table(css: str, head: list[Cell], rows: list[tuple[list[Cell], str]]) -> str:
    """An HTML table; each row comes with its class ("" for none)."""

    def cells(tag: str, row: list[Cell]) -> str:
        return "".join(
            f'<{tag} class="num">{c}</{tag}>' if n else f"<{tag}>{c}</{tag}>" for c, n in row
        )

    body = "".join(
        (f'<tr class="{css_row}">' if css_row else "<tr>") + cells("td", row) + "</tr>"
        for row, css_row in rows
    )
    return f'<table class="{css}"><thead><tr>{cells("th", head)}</tr></thead><tbody>{body}</tbody></table>'


def _html(page: _Page) -> str:
    tasks = [t for t in page.manifest.card.tasks if t.name in page.cutoffs]
    title = f"ilt-audit report: {page.run_dir.name or page.run_dir}"
    policy = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"  # no network, no script
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">',
        '<link rel="icon" href="data:,">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<header><h1>{_e(title)}</h1>",
        f'<p class="muted">Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC '
        f"by ilt-audit {_e(__version__)}.</p></header>",
        '<section id="summary"><h2>Summary</h2>',
        _facts(page, tasks),
        *(f'<p class="note">{_e(note)}</p>' for note in page.notes),
        _summary_table(page, tasks),
        _rule_text(page),
    ]
    loss = _loss_figure(page)
    if loss:
        parts.append(
            f'<figure><img src="{loss}" alt="mean training loss per task and epoch">'
            "<figcaption>Mean unweighted training loss per task and epoch.</figcaption></figure>"
        )
    parts.append("</section>")
    links = "".join(f'<a href="#task-{_e(t.name)}">{_e(t.name)}</a>' for t in tasks)
    parts.append(f"<nav>Tasks: {links}</nav>")
    parts += [_task_section(page, task) for task in tasks]
    parts.append(
        f'<footer class="muted"><p>Run directory <code>{_e(page.run_dir)}</code>. Every suspect: '
        f"<code>ilt-audit gate {_e(page.run_dir)} --format json</code>.</p></footer>"
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _facts(page: _Page, tasks: list[TaskSpec]) -> str:
    config = page.config
    options = config.get("options", {})
    instances = config.get("instances", {})
    count = f"{instances.get('train', '?')} trained on"
    if instances.get("val"):
        count += f", {instances['val']} held out"
    model = (
        f"{config.get('model', '?')}, weighting {options.get('weighting', '?')}, "
        f"seed {options.get('seed', '?')}, device {config.get('device', '?')}"
    )
    facts = [
        ("dataset card", f"<code>{_e(config['card']['path'])}</code>"),
        (
            "tasks",
            ", ".join(f'{_e(t.name)} <span class="type">({_e(t.type)})</span>' for t in tasks),
        ),
        ("instances", _e(count)),
        ("epochs", _e(max(page.curves.epochs) if page.curves is not None else "?")),
        ("model", _e(model)),
        ("score", f"<code>{_e(page.score)}</code>: {_e(SCORE_NAMES.get(page.score, page.score))}"),
    ]
    return '<dl class="facts">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"


def _summary_table(page: _Page, tasks: list[TaskSpec]) -> str:
    head: list[Cell] = [("task", False), ("type", False)]
    head += [(h, True) for h in ("instances", "suspects", "share", "cut-off")]
    truth = page.evaluation is not None
    if truth:
        head += [
            (h, True)
            for h in ("corrupted", "suspects corrupted", "recall of suspects", "detection acc.")
        ]
        head += [("AUROC", True), ("AP", True)]
    rows = []
    for task in tasks:
        part = page.ranked[page.ranked.task == task.name]
        suspects = int(part.suspect.sum())
        cells: list[Cell] = [
            (f'<a href="#task-{_e(task.name)}">{_e(task.name)}</a>', False),
            (_e(task.type), False),
            (str(page.instances[task.name]), True),
            (str(suspects), True),
            (_pct(suspects / page.instances[task.name]), True),
            (f"{page.cutoffs[task.name].threshold:.3g}", True),
        ]
        if truth:
            cells += _truth_cells(page, task.name, part)
        rows.append((cells, ""))
    return _table("tasks", head, rows)


def _truth_cells(page: _Page, task: str, part: pd.DataFrame) -> list[Cell]:
    """Against the corruption file: how many suspects are corrupted, and the ranking's figures."""
    assert page.evaluation is not None
    figures = page.evaluation[page.evaluation.task == task]
    if figures.empty:  # no label of this task was corrupted
        return [("0", True)] + [("–", True)] * 5
    row = figures.iloc[0]
    marked = part.corrupted.fillna(False).to_numpy(dtype=bool)  # unnamed instances are not
    hits = int((part.suspect.to_numpy() & marked).sum())
    suspects = int(part.suspect.sum())
    precision = f" ({_pct(hits / suspects)})" if suspects else ""
    return [
        (str(int(row.corrupted)), True),
        (f"{hits}{precision}", True),
        (_pct(hits / int(row.corrupted)), True),
        (_pct(row.detection_accuracy), True),
        (_num(row.auroc), True),
        (_num(row.average_precision), True),
    ]


def _rule_text(page: _Page) -> str:
    text = f"{_e(rule_text(page.score))} This is the rule <code>ilt-audit gate</code> applies."
    if page.evaluation is not None:
        text += (
            " <i>Suspects corrupted</i>: how many suspects the corruption file marks as corrupted "
            "(the precision of the suspects); <i>recall of suspects</i>: the share of corrupted "
            "labels that are suspect. <i>Detection acc.</i>, AUROC and AP rank every instance by "
            "the score, as <code>ilt-audit evaluate</code> does."
        )
    return f'<p class="muted">{text}</p>'


def _task_section(page: _Page, task: TaskSpec) -> str:
    name = task.name
    part = page.ranked[page.ranked.task == name]
    suspects = int(part.suspect.sum())
    split = " split into clean and corrupted labels," if page.truth is not None else ""
    colours = "; corrupted labels solid red, clean dashed blue" if page.truth is not None else ""
    value = _value_label(page)
    box = _box_figure(page, name)
    lines = _trajectory_figure(page, name)
    verdict = "fail" if suspects else "pass"
    parts = [
        f'<section class="task" id="task-{_e(name)}">',
        f'<h2>{_e(name)} <span class="type">{_e(task.type)}</span></h2>',
        f'<p>{page.instances[name]} instances, <b class="{verdict}">{suspects} suspect</b> '
        f"(score above {page.cutoffs[name].threshold:.3g}).</p>",
        '<div class="figures">',
        f'<figure><img src="{box}" alt="{_e(value)} of {_e(name)} per epoch"><figcaption>'
        f"Distribution of {_e(value)} per epoch,{split} as the paper's Figure 6. Wrong labels "
        "climb away from the rest.</figcaption></figure>",
        f'<figure><img src="{lines}" alt="trajectories of the top {_e(name)} instances">'
        f"<figcaption>The {min(page.top, TRAJECTORIES)} highest-scoring instances against the "
        f"task median, as the paper's Figure 3{colours}.</figcaption></figure>",
        "</div>",
        *([f'<p class="muted">{_e(note)}</p>'] if (note := _sample_note(page, name)) else []),
        _flagged_table(page, task, part),
        "</section>",
    ]
    return "\n".join(parts)


def _legend(task: TaskSpec) -> str:
    """What the thumbnails' colours mean, by task type."""
    if task.type == "segmentation":
        assert isinstance(task.classes, int)
        swatches = "".join(
            f'<span class="swatch" style="background:{_hex(_mask_rgb(np.array([[c]]), task)[0, 0])}">'
            f"</span>{c} "
            for c in range(task.classes)
        )
        return f"; masks colour-coded by class: {swatches}(black: unlabelled)"
    if task.type == "dense-regression":
        return (
            "; maps coloured from the label's minimum (dark blue) to its maximum (yellow), the "
            "prediction on the same scale"
        )
    return ""


def _hex(rgb: np.ndarray) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in rgb)


def _flagged_table(page: _Page, task: TaskSpec, part: pd.DataFrame) -> str:
    shown = part[part["rank"] <= page.top]
    truth = page.truth is not None
    names = ["rank", "id", "score", "suspect"] + (["corrupted"] if truth else []) + ["input"]
    names += ["label (mask/map)", "prediction"] if task.dense else ["label", "prediction"]
    head: list[Cell] = [(h, h in ("rank", "score")) for h in names]
    rows = []
    for _, row in shown.iterrows():
        label, predicted = _CELLS[task.type](page, task, row)
        cells: list[Cell] = [
            (str(int(row["rank"])), True),
            (f"<code>{_e(row.id)}</code>", False),
            (f"{row.score:.3f}", True),
            (_yes(bool(row.suspect)), False),
        ]
        if truth:
            cells.append((_yes(_known(row.corrupted)), False))
        cells += [(_input_cell(page, row), False), (label, False), (predicted, False)]
        rows.append((cells, "suspect" if row.suspect else ""))
    caption = (
        f"<h3>The {len(shown)} highest-scoring instances</h3>"
        f'<p class="muted">Labels as the manifest gives them{_legend(task)}.</p>'
    )
    return caption + _table("flagged", head, rows)
