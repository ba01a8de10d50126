"""The scaling benchmark (issue 11): `train` in 1 and in 2 processes under torchrun, on the CPU.

On the features data set of ``benchmarks/throughput.py`` (``_shared.features_card``: 16 numeric
columns; ``kind``, 5 classes, and two regressions), with 20% of ``kind`` corrupted by
``ilt-audit corrupt`` (the paper's class permutation), for each process count:

- ``ilt-audit train`` (1 process) and ``torchrun --standalone --nproc-per-node 2 -m ilt_audit
  train`` (2 processes, gloo), same seed, batch 256 per process, ``--epochs`` epochs: each
  epoch's ``time_s`` from ``metrics.jsonl`` and the whole command's wall clock;
- the flagged set: the top 20% of ``kind`` by the default score (``rank --top 20%``), its overlap
  with the 1-process run's flagged set, and ``evaluate``'s detection accuracy against the
  corruption file.

Each configuration runs ``--repeat`` times, interleaved; the run with the fastest steady epoch
(the mean of the epochs after the first) is reported. torchrun gives each process one OpenMP
thread; the single process keeps torch's default (one per core), so both use every core.

The figures go into ``docs/benchmarks.md`` between the ``scaling`` markers (the rest of the file
is kept) and every raw measurement into ``scaling.json`` in the work folder.

Example:
    python benchmarks/scaling.py --rows 2000 --epochs 2 --repeat 1   # a smoke run
    python benchmarks/scaling.py                                      # 100k rows, on a quiet machine
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared helpers
from _shared import (  # noqa: E402
    OUT_MD,
    command_line,
    cpu_model,
    features_card,
    now,
    system,
    table,
    versions,
    write_block,
)

from ilt_audit.audit.evaluation import evaluate  # noqa: E402
from ilt_audit.audit.ranking import rank  # noqa: E402
from ilt_audit.run.directory import read_metrics  # noqa: E402

BLOCK = "scaling"
FRACTION = 0.2  # share of `kind` labels corrupted
TASK = "kind"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/scaling.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=100_000, help="feature rows (default 100k)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per run (default 5)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each configuration")
    parser.add_argument(
        "--processes", default="1,2", help="process counts, comma-separated (default 1,2)"
    )
    parser.add_argument("--workdir", type=Path, help="data, runs and scaling.json go here")
    parser.add_argument("--out-md", type=Path, default=OUT_MD)
    args = parser.parse_args(argv)
    args.processes = [int(p) for p in str(args.processes).split(",") if p.strip()]
    args.keep = args.workdir is not None
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ilt-audit-scaling-"))
    args.command = command_line("scaling.py", argv)
    return args


def train_run(card: Path, run: Path, processes: int, args: argparse.Namespace) -> dict[str, Any]:
    """One `train` (under torchrun when ``processes`` > 1); its epoch times and wall clock."""
    shutil.rmtree(run, ignore_errors=True)
    train = ["train", str(card), "--out", str(run), "--epochs", str(args.epochs)]
    train += ["--batch-size", "256", "--device", "cpu"]
    if processes == 1:
        command = [sys.executable, "-m", "ilt_audit", *train]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += [f"--nproc-per-node={processes}", "-m", "ilt_audit", *train]
    log = args.workdir / "logs" / f"{run.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("wb") as output:
        code = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"error: {shlex.join(command)} exited with {code}; see {log}")
    epochs = [m["time_s"] for m in read_metrics(run)]
    return {
        "command": shlex.join(command[1:]),
        "wall_s": round(wall, 3),
        "epoch_s": epochs,
        "steady_s": round(sum(epochs[1:]) / max(1, len(epochs) - 1), 4),
    }


def flagged(run: Path) -> set[str]:
    return set(rank(run, task=TASK, top=f"{100 * FRACTION:g}%", labels=False).id)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    clean = features_card(args.workdir / "data" / f"features-{args.rows}", args.rows)
    noisy_dir = args.workdir / "data" / f"noisy-{args.rows}"
    if not (noisy_dir / "card.toml").is_file():
        subprocess.run(
            [sys.executable, "-m", "ilt_audit", "corrupt", str(clean), "--task", TASK,
             "--fraction", str(FRACTION), "--out", str(noisy_dir)],
            check=True,
        )  # fmt: skip
    card, truth = noisy_dir / "card.toml", noisy_dir / "corruption.parquet"
    attempts: dict[int, list[dict[str, Any]]] = {p: [] for p in args.processes}
    for attempt in range(args.repeat):
        for processes in args.processes:
            run = args.workdir / "runs" / f"p{processes}-{attempt}"
            result = train_run(card, run, processes, args)
            result["run"] = str(run)
            attempts[processes].append(result)
            print(
                f"{processes} process(es), run {attempt + 1}/{args.repeat}: epochs "
                f"{', '.join(f'{s:.3f}' for s in result['epoch_s'])} s; wall {result['wall_s']:.1f} s",
                flush=True,
            )
    best = {p: min(runs, key=lambda r: r["steady_s"]) for p, runs in attempts.items()}
    base = flagged(Path(best[args.processes[0]]["run"]))
    for result in best.values():
        mine = flagged(Path(result["run"]))
        result["flagged"] = len(mine)
        result["overlap"] = len(mine & base) / len(base) if base else None
        detection = evaluate(result["run"], truth)
        result["detection_accuracy"] = float(
            detection.set_index("task").loc[TASK, "detection_accuracy"]
        )
    data = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "attempts": attempts,
        "best": best,
    }
    (args.workdir / "scaling.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
    write_block(args.out_md, BLOCK, report(args, best))
    if not args.keep:
        shutil.rmtree(args.workdir / "runs", ignore_errors=True)
        shutil.rmtree(args.workdir / "data", ignore_errors=True)
    print(f"Wrote the `{BLOCK}` block of {args.out_md}.")
    return 0


def report(args: argparse.Namespace, best: dict[int, dict[str, Any]]) -> str:
    one = best[args.processes[0]]
    rows = []
    for processes, r in best.items():
        speedup = one["steady_s"] / r["steady_s"] if r["steady_s"] else float("nan")
        rows.append(
            [
                str(processes),
                ", ".join(f"{s:.3f}" for s in r["epoch_s"]),
                f"{r['steady_s']:.3f}",
                f"{speedup:.2f}×",
                f"{r['wall_s']:.1f}",
                f"{r['overlap']:.3f}" if r["overlap"] is not None else "—",
                f"{r['detection_accuracy']:.3f}",
            ]
        )
    return "\n".join(
        [
            "## Scaling: `train` under torchrun",
            "",
            "Generated by `benchmarks/scaling.py`, which rewrites only this block.",
            "",
            f"- Produced by: `{args.command}`",
            f"- Date: {now()}",
            f"- Machine: {system()}, {cpu_model()}, {os.cpu_count()} CPU cores, training on the "
            "CPU (gloo)",
            f"- Versions: {versions('torch', 'ilt-audit')}",
            "",
            f"Features, {args.rows:,} rows × 3 tasks, {int(FRACTION * 100)}% of `{TASK}` corrupted "
            f"(the paper's permutation), batch 256 per process, {args.epochs} epochs, seed 0. "
            f"Each process count ran {args.repeat} time(s), interleaved; the run with the fastest "
            "steady epoch (the mean of the epochs after the first) is reported. torchrun gives "
            "each process one OpenMP thread; the single process uses torch's default (one per "
            "core). The flagged set is the top 20% of `kind` by the default score; its overlap is "
            "with the 1-process run's flagged set; the detection accuracy is `evaluate`'s "
            "(paper Table 7) against the corruption file.",
            "",
            table(
                [
                    "processes",
                    "epochs (s)",
                    "steady epoch (s)",
                    "speed-up",
                    "`train` wall clock (s)",
                    "flagged overlap with 1 process",
                    "detection accuracy",
                ],
                rows,
            ),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
