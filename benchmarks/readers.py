"""Reader benchmark: `rank`, `evaluate`, `gate` and `report` on large synthetic runs.

It writes a run directory as training would (``config.json``, ``metrics.jsonl`` and one trajectory
file per epoch through :class:`ilt_audit.run.trajectories.TrajectoryWriter`) for a features dataset
of N instances with three tasks (two classification, one regression), whose Parquet manifest and
card let the commands look labels up (``_shared.build_synthetic_run``). In each task a share of
the instances (``PLANTED``) gets a ``log σ²`` trajectory that climbs, as wrong labels do; a
``corruption.parquet`` names them. There is no checkpoint, so the report shows labels without
predictions: the benchmark measures the readers, not the model.

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
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ilt_audit.cli.common import TABLE_ROWS

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared helpers
from _shared import (  # noqa: E402
    OUT_MD,
    PLANTED,
    SYNTHETIC_EPOCHS,
    SYNTHETIC_TASKS,
    SyntheticRun,
    build_synthetic_run,
    command_line,
    now,
    synthetic_machine,
    table,
    write_block,
)

BLOCK = "readers"  # the block of docs/benchmarks.md this script owns
SIZES = (100_000, 1_000_000)
QUICK_SIZES = (400,)
QUICK_EPOCHS = 3


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


def measure(case: SyntheticRun, command: Command, repeat: int) -> Timing:
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
        case.n * len(SYNTHETIC_TASKS) * case.epochs,
        seconds,
        max(peaks),
        command.target_s.get(case.n),
    )


# --- the Markdown block --------------------------------------------------------------------------


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
            rows = min(ranked, TABLE_ROWS) * len(SYNTHETIC_TASKS)
            notes.append(
                f"At {n:,} instances, the ranking printed as a terminal table ({rows:,} rows "
                f"through Rich: at most {TABLE_ROWS} of each task's {ranked:,}) takes "
                f"{table_s.median - file_s.median:.2f} s more than the same ranking written to a "
                "file: both read the same, the difference is the rendering."
            )
    return [" ".join(notes)] if notes else []


def markdown(timings: list[Timing], invocation: str, repeat: int) -> str:
    lines = [
        "## Readers at scale",
        "",
        "<!-- Generated by benchmarks/readers.py; rerun it rather than editing this block. -->",
        "",
        f"- Produced by: `{invocation}`",
        f"- Date: {now()}",
        f"- Machine: {synthetic_machine()}",
        "- Data: a synthetic run written with `TrajectoryWriter`: N instances × "
        f"{len(SYNTHETIC_TASKS)} tasks (two classification, one regression) × E epochs, a "
        "Parquet features manifest with the "
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
    parser.add_argument("--epochs", type=int, help=f"epochs per run (default {SYNTHETIC_EPOCHS})")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command (median)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ilt-audit-bench-readers"))
    parser.add_argument("--out-md", type=Path, default=OUT_MD)
    args = parser.parse_args(argv)
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    else:
        sizes = list(QUICK_SIZES if args.quick else SIZES)
    epochs = args.epochs or (QUICK_EPOCHS if args.quick else SYNTHETIC_EPOCHS)
    invocation = command_line("readers.py", sys.argv[1:] if argv is None else argv)

    timings = []
    for n in sizes:
        started = time.perf_counter()
        case = build_synthetic_run(args.workdir / f"n{n}-e{epochs}", n, epochs)
        print(f"{n:,} instances × {epochs} epochs: ready in {time.perf_counter() - started:.1f} s")
        for command in COMMANDS:
            timing = measure(case, command, args.repeat)
            timings.append(timing)
            print(f"  {command.name:<34} {timing.median:7.2f} s  {timing.peak_mib:8.0f} MiB")
    write_block(args.out_md, BLOCK, markdown(timings, invocation, args.repeat))
    print(f"Wrote the {BLOCK!r} block of {args.out_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
