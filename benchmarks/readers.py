"""Reader benchmark: `rank`, `evaluate`, `gate` and `report` on large synthetic runs.

It writes a run directory as training would (``config.json``, ``metrics.jsonl`` and one trajectory
file per epoch through :class:`ilt_audit.run.trajectories.TrajectoryWriter`) for a features dataset
of N instances with three tasks (two classification, one regression), whose Parquet manifest and
card let the commands look labels up. In each task a share of the instances (``PLANTED``) gets a
``log σ²`` trajectory that climbs, as wrong labels do; a ``corruption.parquet`` names them. There
is no checkpoint, so the report shows labels without predictions: the benchmark measures the
readers, not the model.

Each command then runs as a subprocess (``python -m ilt_audit``, start-up included, terminal
output to a file), ``--repeat`` times; the table gives the median wall-clock time and the peak
resident memory of the process. The table is written into the ``readers`` block of
``docs/benchmarks.md`` (appended at the end when the file has none); the rest of the file is kept.
Built runs are kept in the work folder and reused by the next invocation.

Example:
    python benchmarks/readers.py                                  # 100k and 1M instances, 30 epochs
    python benchmarks/readers.py --sizes 100000 --epochs 5 --repeat 1
    python benchmarks/readers.py --quick --out-md /tmp/readers.md  # tiny sizes, a smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ilt_audit import __version__
from ilt_audit.cli.common import TABLE_ROWS
from ilt_audit.corruption.planting import TRUTH_FILE, TRUTH_SCHEMA
from ilt_audit.dataset.card import Card, load_card
from ilt_audit.run.directory import write_config, write_metrics
from ilt_audit.run.trajectories import TrajectoryWriter

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared helpers
from _markdown import table, write_block  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BLOCK = "readers"  # the block of docs/benchmarks.md this script owns
SIZES = (100_000, 1_000_000)
QUICK_SIZES = (400,)
EPOCHS = 30
QUICK_EPOCHS = 3
PLANTED = 0.015  # share of each task's instances whose log σ² climbs (and that the truth marks)
TASKS = (("label", "classification"), ("target", "regression"), ("grade", "classification"))
CLASSES = ("a", "b", "c")
GRADES = 5
BUILD = 2  # bump when the synthetic data changes, so that old work folders are rebuilt

CARD = """\
table = "manifest.parquet"
id = "id"

[input]
type = "features"
columns = ["f0", "f1", "f2", "f3"]

[tasks.label]
type = "classification"
column = "label"
classes = ["a", "b", "c"]

[tasks.target]
type = "regression"
columns = ["y0", "y1"]

[tasks.grade]
type = "classification"
column = "grade"
"""


@dataclass(frozen=True)
class Command:
    """One measured command; ``{run}``, ``{truth}`` and ``{work}`` are filled in per size."""

    name: str
    args: tuple[str, ...]
    target_s: dict[int, float]  # instances -> wall-clock target, where the issue sets one
    ok: tuple[int, ...] = (0,)  # exit codes that are a success


TO_FILE, TERMINAL = "rank --top 1% --output", "rank --top 1% (terminal table)"
RANK_TARGETS = {100_000: 1.5, 1_000_000: 5.0}  # seconds (issue): rank, and gate and evaluate alike
COMMANDS = (
    Command(
        TO_FILE,
        ("rank", "{run}", "--top", "1%", "--output", "{work}/top.csv"),
        RANK_TARGETS,
    ),
    Command(TERMINAL, ("rank", "{run}", "--top", "1%"), RANK_TARGETS),
    Command(
        "rank --by tail --top 1% --output",
        ("rank", "{run}", "--by", "tail", "--top", "1%", "--output", "{work}/tail.csv"),
        RANK_TARGETS,
    ),
    Command("evaluate --truth", ("evaluate", "{run}", "--truth", "{truth}"), RANK_TARGETS),
    Command(
        "gate --max-suspect 2%", ("gate", "{run}", "--max-suspect", "2%"), RANK_TARGETS, ok=(0, 1)
    ),
    Command(
        "report --truth",
        ("report", "{run}", "--truth", "{truth}", "--out", "{work}/report.html"),
        {1_000_000: 30.0},
    ),
)


@dataclass(frozen=True)
class Case:
    """A built synthetic run."""

    n: int
    epochs: int
    folder: Path

    @property
    def run(self) -> Path:
        return self.folder / "run"

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def truth(self) -> Path:
        return self.data / TRUTH_FILE


@dataclass(frozen=True)
class Timing:
    command: str
    n: int
    epochs: int
    rows: int  # trajectory rows of the run: n · tasks · epochs
    seconds: list[float]
    peak_mib: float
    target_s: float | None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


# --- the synthetic run ---------------------------------------------------------------------------


def _ids(n: int) -> pa.Array:
    width = max(7, len(str(n - 1)))
    return pa.array([f"i{i:0{width}d}" for i in range(n)], pa.string())


def build(folder: Path, n: int, epochs: int, *, seed: int = 0) -> Case:
    """Write the dataset, its truth file and a finished run; reuse them when already built."""
    case = Case(n, epochs, folder)
    stamp = folder / "built.json"
    wanted = {"n": n, "epochs": epochs, "seed": seed, "build": BUILD}
    if stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")) == wanted:
        return case
    shutil.rmtree(folder, ignore_errors=True)
    case.data.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    ids = _ids(n)
    k = len(TASKS)

    features = rng.normal(size=(n, 4)).astype(np.float32)
    manifest = pa.table(
        {
            "id": ids,
            **{f"f{j}": features[:, j] for j in range(4)},
            "label": pa.array(np.array(CLASSES)[rng.integers(0, len(CLASSES), n)]),
            "y0": rng.normal(10.0, 3.0, n),
            "y1": rng.uniform(0.0, 1.0, n),
            "grade": rng.integers(0, GRADES, n),
        }
    )
    pq.write_table(manifest, case.data / "manifest.parquet")
    card_path = case.data / "card.toml"
    card_path.write_text(CARD, encoding="utf-8")

    planted = rng.random((n, k)) < PLANTED  # (N, K) the "wrong" labels
    planted[0] = True  # every task has one, however small the run
    truth = pa.table(
        [
            ids.take(pa.array(np.repeat(np.arange(n), k))),
            pa.array(np.tile([name for name, _ in TASKS], n)),
            pa.array(planted.reshape(-1)),
        ],
        schema=TRUTH_SCHEMA,
    )
    pq.write_table(truth, case.truth)

    _write_run(case, load_card(card_path), ids, planted, rng)
    stamp.write_text(json.dumps(wanted), encoding="utf-8")
    return case


def _write_run(
    case: Case, card: Card, ids: pa.Array, planted: np.ndarray, rng: np.random.Generator
) -> None:
    """config.json, metrics.jsonl and the trajectories: clean log σ² settle low, planted ones climb;
    the evidence columns the default score reads follow the loss."""
    from ilt_audit.training.loop import TrainConfig  # imports torch: only when a run is built

    n, k = planted.shape
    run = case.run
    run.mkdir(parents=True)
    write_config(
        run,
        {
            "card": {"path": str(card.path), "sha256": card.sha256()},
            "options": dataclasses.asdict(TrainConfig(epochs=case.epochs)),
            "device": "cpu",
            "tasks": [{"name": name, "type": kind} for name, kind in TASKS],
            "class_names": {"label": list(CLASSES), "grade": [str(g) for g in range(GRADES)]},
            "instances": {"train": n, "val": 0},
            "model": "MLP",
            "versions": {"ilt_audit": __version__, "python": platform.python_version()},
        },
    )
    settle = np.where(planted, rng.normal(1.5, 0.6, (n, k)), rng.normal(-3.0, 0.6, (n, k)))
    writer = TrajectoryWriter(run, ids, [name for name, _ in TASKS])
    metrics = []
    for epoch in range(1, case.epochs + 1):
        reached = 1.0 - np.exp(-epoch / max(case.epochs / 4, 1.0))
        noise = rng.normal(0.0, 0.15, (n, k))
        log_sigma2 = np.clip(settle * reached + noise, -4.0, 4.0).astype(np.float32)  # (N, K)
        loss = np.exp(log_sigma2 + rng.normal(0.0, 0.3, (n, k))).astype(np.float32)
        # the evidence a real run records, which the default score (p_wrong) reads: a margin for
        # the classification tasks, a residual for the regression one (NaN elsewhere)
        margin = np.full((n, k), np.nan, dtype=np.float32)
        residual = np.full((n, k), np.nan, dtype=np.float32)
        for j, (_, kind) in enumerate(TASKS):
            column = margin if kind == "classification" else residual
            column[:, j] = np.sqrt(loss[:, j]) * (-1.0 if kind == "classification" else 1.0) + 1.0
        writer.write(epoch, log_sigma2, loss, evidence={"margin": margin, "residual": residual})
        metrics.append(
            {
                "epoch": epoch,
                "loss": {name: float(loss[:, j].mean()) for j, (name, _) in enumerate(TASKS)},
                "seconds": 0.0,
            }
        )
    write_metrics(run, metrics)


# --- timing --------------------------------------------------------------------------------------


# Runs one command and writes its wall-clock seconds and peak RSS (KiB) to argv[1]. A child's peak
# RSS starts from what its parent held when it forked (Linux copies the figure), so the command is
# started by this small process rather than by the benchmark, which holds the data it built.
_LAUNCHER = """
import resource, subprocess, sys, time
started = time.perf_counter()
code = subprocess.call(sys.argv[2:])
seconds = time.perf_counter() - started
with open(sys.argv[1], "w") as out:
    out.write(f"{seconds} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}")
sys.exit(code)
"""


def _run_once(args: list[str], log: Path) -> tuple[float, float, int]:
    """Wall-clock seconds, peak RSS (MiB) and exit code of ``python -m ilt_audit ARGS``."""
    env = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1", "TERM": "dumb"}
    figures = log.with_suffix(".time")
    command = [sys.executable, "-m", "ilt_audit", *args]
    with log.open("wb") as out, log.with_suffix(".err").open("wb") as err:
        code = subprocess.call(
            [sys.executable, "-c", _LAUNCHER, str(figures), *command],
            stdout=out,
            stderr=err,
            env=env,
        )
    seconds, peak_kib = figures.read_text(encoding="utf-8").split()
    return float(seconds), int(peak_kib) / 1024, code  # Linux reports ru_maxrss in KiB


def measure(case: Case, command: Command, repeat: int) -> Timing:
    values = {"run": str(case.run), "truth": str(case.truth), "work": str(case.folder)}
    args = [a.format(**values) for a in command.args]
    log = case.folder / "logs" / (re.sub(r"[^a-z0-9]+", "-", command.name).strip("-") + ".out")
    log.parent.mkdir(exist_ok=True)
    seconds, peaks = [], []
    for _ in range(repeat):
        wall, peak, code = _run_once(args, log)
        if code not in command.ok:
            tail = log.with_suffix(".err").read_text(encoding="utf-8", errors="replace")[-2000:]
            raise SystemExit(f"`ilt-audit {shlex.join(args)}` exited {code}:\n{tail}")
        seconds.append(wall)
        peaks.append(peak)
    return Timing(
        command.name,
        case.n,
        case.epochs,
        case.n * len(TASKS) * case.epochs,
        seconds,
        max(peaks),
        command.target_s.get(case.n),
    )


# --- the Markdown block --------------------------------------------------------------------------


def _machine() -> str:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores ({usable} usable); "
        f"Python {platform.python_version()}, pyarrow {pa.__version__}, pandas {pd.__version__}, "
        f"numpy {np.__version__}, ilt-audit {__version__}"
    )


def _verdict(t: Timing) -> str:
    if t.target_s is None:
        return "—"
    return f"≤ {t.target_s:g} s: " + ("**met**" if t.median <= t.target_s else "**not met**")


def _terminal_notes(timings: list[Timing]) -> list[str]:
    """What printing the ranking on the terminal costs beyond writing it to a file, per size."""
    notes = []
    for n in dict.fromkeys(t.n for t in timings):
        found = {t.command: t for t in timings if t.n == n}
        table_s, file_s = found.get(TERMINAL), found.get(TO_FILE)
        if table_s is not None and file_s is not None:
            ranked = math.ceil(0.01 * n)
            rows = min(ranked, TABLE_ROWS) * len(TASKS)
            notes.append(
                f"At {n:,} instances, the ranking printed as a terminal table ({rows:,} rows "
                f"through Rich: at most {TABLE_ROWS} of each task's {ranked:,}) takes "
                f"{table_s.median - file_s.median:.2f} s more than the same ranking written to a "
                "file: both read the same, the difference is the rendering."
            )
    return [" ".join(notes)] if notes else []


def markdown(timings: list[Timing], command_line: str, repeat: int) -> str:
    lines = [
        "## Readers at scale",
        "",
        "<!-- Generated by benchmarks/readers.py; rerun it rather than editing this block. -->",
        "",
        f"- Produced by: `{command_line}`",
        f"- Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {_machine()}",
        f"- Data: a synthetic run written with `TrajectoryWriter`: N instances × {len(TASKS)} tasks "
        "(two classification, one regression) × E epochs, a Parquet features manifest with the "
        f"labels, {PLANTED:.1%} of each task's instances planted as wrong (their `log σ²` climbs) "
        "and named in a `corruption.parquet`; no checkpoint, so the report shows no predictions.",
        f"- Figures: wall-clock time of `python -m ilt_audit …` as a subprocess, start-up "
        f"included, median of {repeat} run(s) on a warm page cache, terminal output to a file; "
        "peak resident memory (RSS) of that process.",
        "",
        table(
            [
                "command",
                "instances",
                "epochs",
                "trajectory rows",
                "wall (s)",
                "peak RSS (MiB)",
                "target",
            ],
            [
                [
                    f"`{t.command}`",
                    f"{t.n:,}",
                    str(t.epochs),
                    f"{t.rows:,}",
                    f"{t.median:.2f}",
                    f"{t.peak_mib:,.0f}",
                    _verdict(t),
                ]
                for t in timings
            ],
        ),
    ]
    lines += ["", *_terminal_notes(timings)]
    named = {"run": "RUN", "truth": "corruption.parquet", "work": "."}
    commands = "; ".join(
        f"`ilt-audit {' '.join(a.format(**named) for a in c.args)}`" for c in COMMANDS
    )
    lines += ["", f"The commands, in order: {commands}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", help="instances per run, comma-separated (default 100000,1000000)"
    )
    parser.add_argument("--epochs", type=int, help=f"epochs per run (default {EPOCHS})")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command (median)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ilt-audit-bench-readers"))
    parser.add_argument("--out-md", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    else:
        sizes = list(QUICK_SIZES if args.quick else SIZES)
    epochs = args.epochs or (QUICK_EPOCHS if args.quick else EPOCHS)
    command_line = "python benchmarks/readers.py " + shlex.join(
        argv if argv is not None else sys.argv[1:]
    )

    timings = []
    for n in sizes:
        started = time.perf_counter()
        case = build(args.workdir / f"n{n}-e{epochs}", n, epochs)
        print(f"{n:,} instances × {epochs} epochs: ready in {time.perf_counter() - started:.1f} s")
        for command in COMMANDS:
            timing = measure(case, command, args.repeat)
            timings.append(timing)
            print(f"  {command.name:<34} {timing.median:7.2f} s  {timing.peak_mib:8.0f} MiB")
    write_block(args.out_md, BLOCK, markdown(timings, command_line.strip(), args.repeat))
    print(f"Wrote the {BLOCK!r} block of {args.out_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
