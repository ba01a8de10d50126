"""Backbone benchmark: what each `train --model` costs on the CPU.

For each network (the small UNet and every torchvision backbone), built with the heads of an image
card with all four task types (classification, regression, segmentation, dense regression), a fresh
process builds it, takes training steps (forward, the sum of the task losses, backward, fused AdamW
step) on random batches, and reports the parameter count, the peak resident memory (RSS) of the
process and the images per second at the median time of a step after the first (warm-up) one.
Every process uses one thread (``torch.set_num_threads(1)``) so that the figures compare across
machines, and the median shrugs off bursts of other work beside them. The table is written into
the ``backbones`` block of ``docs/benchmarks.md`` (appended at the end when the file has none);
the rest of the file is kept.

Example:
    python benchmarks/backbones.py                          # 64x64 batch 16; resnet18 224x224 batch 8
    python benchmarks/backbones.py --quick --out-md /tmp/backbones.md  # small sizes, a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared helpers
from _shared import (  # noqa: E402
    OUT_MD,
    ROOT,
    command_line,
    cores,
    cpu_model,
    now,
    rss_kib,
    system,
    table,
    versions,
    write_block,
)

BLOCK = "backbones"  # the block of docs/benchmarks.md this script owns
HEADS = {"colour": 3, "geometry": 2, "seg": 3, "depth": 1}  # classes or values per task
DENSE = {"seg", "depth"}


@dataclass(frozen=True)
class Case:
    model: str
    size: int  # image side, pixels
    batch: int


@dataclass(frozen=True)
class Figures:
    case: Case
    parameters: int
    peak_mib: float  # peak RSS of the process after its steps
    imported_mib: float  # RSS after importing torch, before building the network
    images_per_s: float
    steps: int  # timed steps


def cases(quick: bool) -> list[Case]:
    from ilt_audit.training.model import MODELS

    if quick:
        return [Case(name, 32, 4) for name in MODELS]
    return [*(Case(name, 64, 16) for name in MODELS), Case("resnet18", 224, 8)]


def one(case: Case, seconds: float) -> dict[str, float]:
    """Build the network and take training steps for about ``seconds``; runs in its own process."""
    import torch
    import torch.nn.functional as F

    from ilt_audit.dataset.card import TaskSpec
    from ilt_audit.training.model import ModelConfig, build_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    imported_mib = rss_kib() / 1024  # torch and its libraries, before the network exists
    tasks = tuple(
        TaskSpec(name, kind, (name,))
        for name, kind in (
            ("colour", "classification"),
            ("geometry", "regression"),
            ("seg", "segmentation"),
            ("depth", "dense-regression"),
        )
    )
    model = build_model("image", 3, tasks, HEADS, ModelConfig(name=case.model))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    b, s = case.batch, case.size
    x = torch.randn(b, 3, s, s)
    targets = {
        "colour": torch.randint(0, 3, (b,)),
        "geometry": torch.randn(b, 2),
        "seg": torch.randint(0, 3, (b, s, s)),
        "depth": torch.randn(b, 1, s, s),
    }

    def step() -> None:
        out = model(x)
        loss = (
            F.cross_entropy(out["colour"], targets["colour"])
            + F.mse_loss(out["geometry"], targets["geometry"])
            + F.cross_entropy(out["seg"], targets["seg"])
            + F.mse_loss(out["depth"], targets["depth"])
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    step()  # warm-up: allocator, optimizer state
    times: list[float] = []  # seconds per step; their median shrugs off bursts of other work
    started = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - started < seconds:
        begun = time.perf_counter()
        step()
        times.append(time.perf_counter() - begun)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        "imported_mib": imported_mib,
        "images_per_s": b / statistics.median(times),
        "steps": len(times),
    }


def measure(case: Case, seconds: float) -> Figures:
    """Run :func:`one` in a fresh process, so that its peak RSS is the case's own."""
    command = [sys.executable, __file__, "--one", json.dumps([case.model, case.size, case.batch])]
    command += ["--seconds", str(seconds)]
    result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    raw = json.loads(result.stdout.strip().splitlines()[-1])
    return Figures(
        case,
        int(raw["parameters"]),
        raw["peak_mib"],
        raw["imported_mib"],
        raw["images_per_s"],
        int(raw["steps"]),
    )


def _machine() -> str:
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (
        f"{system()} ({cpu_model()}), {cores()}, load average {load} at the start; "
        f"{versions('torch')}"
    )


def markdown(figures: list[Figures], invocation: str, machine: str, note: str) -> str:
    lines = [
        "## Networks on the CPU (`train --model`)",
        "",
        "<!-- Generated by benchmarks/backbones.py; rerun it rather than editing this block. -->",
        "",
        f"- Produced by: `{invocation}`",
        f"- Date: {now()}",
        f"- Machine: {machine}",
        "- Network: the heads of a card with one task of each type (3 classes, 2 regression "
        "columns, 3 segmentation classes, 1 depth map); random images and labels.",
        "- Figures: one thread (`torch.set_num_threads(1)`); images/s of training steps "
        "(forward, loss, backward, fused AdamW step) after one warm-up step, from the median "
        "time of a step over about ten seconds of them; peak RSS of the "
        "process that imports torch, builds the network and takes the steps, and that peak less "
        "the RSS after the imports (the network, its gradients, AdamW's state and the "
        "activations of a step).",
    ]
    if note:
        lines.append(f"- Note: {note}")
    rows = [
        [
            f"`{f.case.model}`",
            f"{f.parameters / 1e6:.2f} M",
            f"{f.case.size}×{f.case.size}",
            str(f.case.batch),
            f"{f.peak_mib:,.0f}",
            f"{f.peak_mib - f.imported_mib:,.0f}",
            f"{f.images_per_s:.1f}",
            str(f.steps),
        ]
        for f in figures
    ]
    header = ["model", "parameters", "images", "batch", "peak RSS (MiB)", "above imports (MiB)"]
    header += ["images/s", "steps"]
    lines += ["", table(header, rows)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32x32 batch 4: a smoke test")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed steps per case")
    parser.add_argument("--note", default="", help="a line on the conditions, for the block")
    parser.add_argument("--out-md", type=Path, default=OUT_MD)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one case, in a subprocess
    args = parser.parse_args(argv)
    if args.one:
        model, size, batch = json.loads(args.one)
        print(json.dumps(one(Case(model, size, batch), args.seconds)))
        return 0
    invocation = command_line("backbones.py", sys.argv[1:] if argv is None else argv)
    machine = _machine()
    figures = []
    for case in cases(args.quick):
        f = measure(case, 1.0 if args.quick else args.seconds)
        figures.append(f)
        print(
            f"{case.model:<14} {case.size:>3}x{case.size:<3} batch {case.batch:>2}: "
            f"{f.parameters / 1e6:6.2f} M parameters, {f.peak_mib:7.0f} MiB, "
            f"{f.images_per_s:6.1f} images/s ({f.steps} steps)"
        )
    write_block(args.out_md, BLOCK, markdown(figures, invocation, machine, args.note))
    print(f"Wrote the {BLOCK!r} block of {args.out_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
