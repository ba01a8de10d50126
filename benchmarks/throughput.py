"""The throughput benchmark (SPEC section 7): what ILT costs, measured side by side in one run.

On data generated in a work folder:

A. **Features** (16 numeric columns; a 5-class classification that depends on them and two
   regressions; batch 256, 2 epochs), for each size:

   - a plain PyTorch loop, in this process: the network training builds
     (``training.build_network``), the same batches (``data.EpochBatches``, same seed) over the
     normalised tensors ``load_dataset(...).table`` holds, AdamW with the same learning rate and
     weight decay, the loss = mean over the batch of the sum of the task losses
     (``losses.instance_losses``); no weighting, no clipping, no bookkeeping. Each epoch is timed;
   - ``ilt-audit train --weighting equal`` and ``--weighting ilt`` (the default), each a
     subprocess: each epoch's ``time_s`` from ``metrics.jsonl`` and the whole command's wall
     clock (start-up, validation and writes included);
   - ``ilt-audit rank RUN --top 1%`` on the ILT run: the whole command's wall clock.

B. **Images** (64x64 RGB PNG of one shape; tasks: its class, a segmentation mask PNG of 4 classes
   and a ``.npy`` depth map; batch 32, the library's default, 1 epoch), for each size:

   - ``ilt-audit train``, a subprocess: instances/s (``samples_per_s`` of ``metrics.jsonl``) and
     the peak RSS of its whole process tree (the main process and its DataLoader workers, summed
     at each instant, sampled every 0.05 s from ``/proc``);
   - a plain torchvision loop, in this process: its own ``Dataset`` opening each file with PIL /
     numpy and transforms v2, as many DataLoader workers as ilt-audit uses by default, the same
     network and batch size, AdamW, the equal-weighted sum of the task losses: instances/s.

C. **Images stored in the table** (``--stored-images N``; skipped by default): the images and
   masks of part B's data set, also stored in a Parquet table as the Hugging Face ``datasets``
   library exports them (``Image`` columns: ``{bytes, path}`` structs), read through the
   library's loader (``make_loader``: decode, resize, normalise, collate; batch 32, the default
   workers for the device, no training) from the files and from the table, ``--repeat`` rounds
   interleaved: instances/s each, and the median of the rounds' ratios (target: the table at
   least 0.9x as fast as the files). Its figures go into their own block, ``throughput-bytes``.

Both plain loops run under the same autocast as ``train --precision auto`` (bf16 on a CUDA
device that supports it, fp32 on the CPU). Epoch times include the DataLoader's worker start-up,
in the library as in the plain loops.

The figures go into ``docs/benchmarks.md`` between the ``throughput`` markers (the rest of the
file is kept) and every raw measurement into ``throughput.json`` in the work folder. Generated
data sets are reused when the work folder is given again. Run the full sizes on a quiet machine:
other jobs on the same cores change every figure.

Example:
    python benchmarks/throughput.py --quick
    python benchmarks/throughput.py --workdir runs/throughput
    python benchmarks/throughput.py --feature-sizes 100k --image-sizes 2k --threads 1
    python benchmarks/throughput.py --feature-sizes "" --image-sizes "" --stored-images 2k
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torchvision
from PIL import Image
from rich.console import Console
from torchvision.transforms import v2

import ilt_audit
from ilt_audit.dataset import load_dataset, open_dataset
from ilt_audit.dataset.card import TaskSpec
from ilt_audit.dataset.files import default_workers
from ilt_audit.dataset.loader import EpochBatches
from ilt_audit.errors import OptionError
from ilt_audit.run.directory import read_metrics
from ilt_audit.training.loop import (
    TrainConfig,
    build_network,
    resolve_device,
    resolve_precision,
    set_seed,
)
from ilt_audit.training.losses import instance_losses
from ilt_audit.training.model import ModelConfig, build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared helpers
from _shared import (  # noqa: E402
    FEATURES,
    OUT_MD,
    ROOT,
    command_line,
    cpu_model,
    features_card,
    now,
    read_proc,
    rss_kib,
    system,
    table,
    usable_cores,
    write_block,
)

BLOCK = "throughput"  # the block of docs/benchmarks.md this script owns
RESULTS = "throughput.json"
SEED = 0
FEATURE_BATCH = 256
IMAGE_SIZE = 64  # pixels per side
SHAPES = ("circle", "square", "triangle")  # mask class = index + 1; 0 is the background
IMAGE_MEAN, IMAGE_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)  # the plain loop's normalisation
RSS_EVERY = 0.05  # seconds between two samples of a process tree's memory
FULL = {"feature_sizes": (100_000, 1_000_000), "image_sizes": (2_000, 20_000)}
QUICK = {"feature_sizes": (2_000,), "image_sizes": (32, 64)}
FEATURE_TARGETS: dict[int, dict[str, float]] = {  # rows -> figure -> upper bound (the issue's)
    100_000: {"ilt_vs_equal": 1.05, "ilt_vs_plain": 1.15, "train_s": 15.0, "rank_s": 1.5},
    1_000_000: {"train_s": 120.0, "rank_s": 5.0},
}
IMAGE_SPEED_TARGETS = {2_000: 0.85, 20_000: 0.85}  # images -> ILT instances/s ÷ plain's, at least
IMAGE_RSS_TARGET = ((2_000, 20_000), 1.2)  # peak RSS at 20k ÷ at 2k images: at most

console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


# --- settings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The resolved options of one invocation."""

    feature_sizes: tuple[int, ...]
    image_sizes: tuple[int, ...]
    feature_epochs: int
    image_epochs: int
    repeat: int  # runs of each features measurement, interleaved; ratios: median of the rounds
    device: str  # as `train --device` takes it
    threads: int | None  # torch CPU threads, here and in every subprocess; None: torch's choice
    workdir: Path
    keep: bool  # keep the generated data and runs (the work folder was given)
    out_md: Path
    quick: bool
    command: str
    stored_images: int | None = None  # part C: images read from files and from a table


def _sizes(text: str) -> tuple[int, ...]:
    """``100k,1M`` -> (100000, 1000000); an empty string -> ()."""
    sizes = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        scale = {"k": 1_000, "m": 1_000_000}.get(part[-1].lower(), 1)
        number = part[:-1] if scale > 1 else part
        try:
            value = int(float(number) * scale)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected sizes like 100k,1M or 2000, got {text!r}"
            ) from None
        if value < 2:
            raise argparse.ArgumentTypeError(f"a size must be at least 2, got {part!r}")
        sizes.append(value)
    return tuple(sizes)


def parse_args(argv: list[str]) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/throughput.py",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example:\n  python benchmarks/throughput.py --quick",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"tiny sizes for tests and smoke runs: {QUICK['feature_sizes'][0]} feature rows, "
        f"{' and '.join(map(str, QUICK['image_sizes']))} images (sizes given explicitly "
        "still apply)",
    )
    parser.add_argument(
        "--feature-sizes",
        type=_sizes,
        help="rows of the features part, comma-separated, k/M allowed (default 100k,1M; "
        "empty: skip the part)",
    )
    parser.add_argument(
        "--image-sizes",
        type=_sizes,
        help="images of the images part (default 2k,20k; empty: skip the part)",
    )
    parser.add_argument("--feature-epochs", type=int, default=2, help="default 2")
    parser.add_argument("--image-epochs", type=int, default=1, help="default 1")
    parser.add_argument(
        "--repeat",
        type=int,
        help="runs of each features measurement (plain, equal, ilt, interleaved); a ratio is the "
        "median of the rounds' ratios (default 7; 1 with --quick)",
    )
    parser.add_argument(
        "--device", default="auto", help="as `ilt-audit train --device` (default auto)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads in this process and in every subprocess (default: torch's choice). "
        "On cores shared with other jobs, 1 avoids oversubscribed OpenMP threads, which can make "
        "small CPU steps many times slower",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help=f"where data, runs, logs and {RESULTS} go; data found there is reused (default: a "
        f"temporary folder of which only {RESULTS} and the logs are kept)",
    )
    parser.add_argument(
        "--out-md",
        type=Path,
        default=OUT_MD,
        help=f"the Markdown file whose `{BLOCK}` block is written (default docs/benchmarks.md)",
    )
    parser.add_argument(
        "--stored-images",
        type=_sizes,
        help=f"images of part C, read from files and from a Parquet table that stores them "
        f"(default: skipped); its figures go into the `{BYTES_BLOCK}` block",
    )
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 7)
    for name in ("feature_epochs", "image_epochs", "repeat"):
        if (repeat if name == "repeat" else getattr(args, name)) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    try:  # an unknown or missing device fails here, not in a subprocess
        resolve_device(args.device)
    except OptionError as exc:
        parser.error(str(exc))
    keep = args.workdir is not None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ilt-throughput-"))
    return Settings(
        feature_sizes=(
            args.feature_sizes if args.feature_sizes is not None else preset["feature_sizes"]
        ),
        image_sizes=args.image_sizes if args.image_sizes is not None else preset["image_sizes"],
        feature_epochs=args.feature_epochs,
        image_epochs=args.image_epochs,
        repeat=repeat,
        device=args.device,
        threads=args.threads,
        workdir=workdir.resolve(),
        keep=keep,
        out_md=args.out_md,
        quick=args.quick,
        command=command_line("throughput.py", argv),
        stored_images=args.stored_images[0] if args.stored_images else None,
    )


# --- generated data sets --------------------------------------------------------------------


_PY, _PX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] + 0.5  # pixel centres, (H, W) each


def draw_shape(rng: np.random.Generator) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """One instance: its class, a (H, W, 3) uint8 image, a (H, W) uint8 mask, a (H, W) depth.

    A circle, square or triangle on a tilted plane; the shape is raised, and brighter where
    higher, so that class, mask and depth are all learnable from the pixels.
    """
    k = int(rng.integers(len(SHAPES)))
    side = rng.uniform(16, 40)
    half = side / 2
    cx, cy = rng.uniform(half + 1, IMAGE_SIZE - half - 1, size=2)
    dx, dy = _PX - cx, _PY - cy
    if SHAPES[k] == "circle":
        inside = dx * dx + dy * dy <= half * half
    elif SHAPES[k] == "square":
        inside = (np.abs(dx) <= half) & (np.abs(dy) <= half)
    else:  # pointing up, filling its bounding box
        t = dy + half
        inside = (t >= 0) & (t <= side) & (np.abs(dx) <= t / 2)
    mask = np.where(inside, k + 1, 0).astype(np.uint8)
    gx, gy = rng.uniform(-0.2, 0.2, size=2)
    plane = rng.uniform(0.2, 0.4) + gx * (_PX / IMAGE_SIZE - 0.5) + gy * (_PY / IMAGE_SIZE - 0.5)
    depth = (plane + rng.uniform(0.3, 0.5) * inside).astype(np.float32)
    background, colour = rng.uniform(40, 200, size=3), rng.uniform(30, 225, size=3)
    image = np.where(inside[..., None], colour, background) * (0.6 + 0.6 * depth[..., None])
    image += rng.normal(0.0, 4.0, size=image.shape)
    return k, np.clip(np.rint(image), 0, 255).astype(np.uint8), mask, depth


def images_card(folder: Path, n: int) -> Path:
    """An image data set of ``n`` instances: tasks ``shape``, ``seg`` (4 classes), ``depth``."""
    card = folder / "card.toml"
    if card.is_file():
        return card
    rng = np.random.default_rng(SEED)
    for sub in ("images", "masks", "depth"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        k, image, mask, depth = draw_shape(rng)
        name = f"s{i:06d}"
        Image.fromarray(image, mode="RGB").save(folder / "images" / f"{name}.png")
        Image.fromarray(mask, mode="L").save(folder / "masks" / f"{name}.png")
        np.save(folder / "depth" / f"{name}.npy", depth)
        rows.append(
            {
                "id": name,
                "image": f"images/{name}.png",
                "shape": SHAPES[k],
                "mask": f"masks/{name}.png",
                "depth": f"depth/{name}.npy",
            }
        )
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    card.write_text(
        'table = "manifest.csv"\nid = "id"\n\n'
        '[input]\ntype = "image"\ncolumn = "image"\n\n'
        '[tasks.shape]\ntype = "classification"\ncolumn = "shape"\n\n'
        f'[tasks.seg]\ntype = "segmentation"\ncolumn = "mask"\nclasses = {len(SHAPES) + 1}\n\n'
        '[tasks.depth]\ntype = "dense-regression"\ncolumn = "depth"\n',
        encoding="utf-8",
    )
    return card


# --- commands in a subprocess, with the memory of their process tree ------------------------


# Linux lists a process's children in /proc/PID/task/TID/children where the kernel has
# CONFIG_PROC_CHILDREN (most distributions); elsewhere one scan of /proc/*/stat finds them.
_CHILDREN_FILES = Path(f"/proc/self/task/{threading.get_native_id()}/children").exists()


def _all_children() -> dict[int, list[int]]:
    """Every process's children, from one scan of ``/proc/*/stat``."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (stat := read_proc(f"/proc/{entry.name}/stat")):
            ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in (...) may hold spaces
            children.setdefault(ppid, []).append(int(entry.name))
    return children


def _children_of(pid: int) -> list[int]:
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [
        int(c) for tid in threads for c in read_proc(f"/proc/{pid}/task/{tid}/children").split()
    ]


def tree_rss_kib(pid: int) -> int:
    """The summed VmRSS of ``pid`` and all its descendants, in KiB."""
    scanned = None if _CHILDREN_FILES else _all_children()
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += rss_kib(current)
        todo += _children_of(current) if scanned is None else scanned.get(current, [])
    return total


class PeakRss:
    """Samples a process tree's summed RSS every ``RSS_EVERY`` s in a thread; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak_kib = max(self.peak_kib, tree_rss_kib(self.pid))
            self.samples += 1
            if self._stop.wait(RSS_EVERY):
                return

    def __enter__(self) -> PeakRss:
        if Path("/proc/self/status").is_file():  # Linux only; elsewhere the peak stays unknown
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def run_command(args: list[str], log: Path, settings: Settings) -> dict[str, Any]:
    """Run ``python -m ilt_audit ARGS``; its wall clock (s) and peak process-tree RSS (MiB)."""
    env = dict(os.environ)
    if settings.threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(settings.threads)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as output:
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "ilt_audit", *args],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
        )
        with PeakRss(process.pid) as rss:
            code = process.wait()
        seconds = time.perf_counter() - started
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
        raise SystemExit(
            f"error: `ilt-audit {shlex.join(args)}` exited with {code}; the end of {log}:\n"
            + "\n".join(tail)
        )
    return {
        "command": "ilt-audit " + shlex.join(args),
        "wall_s": round(seconds, 4),
        "peak_rss_mib": round(rss.peak_kib / 1024, 1) if rss.samples else None,
        "rss_samples": rss.samples,
    }


def train_command(
    card: Path, run: Path, settings: Settings, *, epochs: int, weighting: str, batch: int | None
) -> dict[str, Any]:
    """``ilt-audit train`` in a subprocess; the command's figures and each epoch's metrics."""
    shutil.rmtree(run, ignore_errors=True)
    args = ["train", str(card), "--out", str(run), "--epochs", str(epochs)]
    args += ["--weighting", weighting, "--device", settings.device]
    args += ["--batch-size", str(batch)] if batch is not None else []
    result = run_command(args, settings.workdir / "logs" / f"{run.name}.log", settings)
    metrics = read_metrics(run)
    result["epoch_s"] = [m["time_s"] for m in metrics]
    result["samples_per_s"] = [m["samples_per_s"] for m in metrics]
    return result


# --- the plain loops ------------------------------------------------------------------------


def _plain_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    tasks: tuple[TaskSpec, ...],
    x: torch.Tensor,
    targets: dict[str, torch.Tensor],
    autocast: torch.dtype | None,
) -> torch.Tensor:
    """One step of what a user would write: equal weights, mean over the batch, no clipping."""
    with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
        outputs = model(x)
    l = instance_losses(tasks, {k: v.float() for k, v in outputs.items()}, targets)  # (B, K)
    loss = l.sum(dim=1).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_features(card: Path, settings: Settings) -> dict[str, Any]:
    """The plain loop over a features card: each epoch's seconds and mean loss."""
    data = load_dataset(card)
    config = TrainConfig(batch_size=FEATURE_BATCH, seed=SEED, device=settings.device)
    device = resolve_device(config.device)
    autocast = resolve_precision(config.precision, device)
    tasks = data.card.tasks
    set_seed(config.seed)
    model = build_network(data, config).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    rows = torch.from_numpy(data.train_index)
    x_all = data.table["input"][rows]  # (N, F), normalised, on the CPU as the library keeps it
    y_all = {t.name: data.table[t.name][rows] for t in tasks}
    batches = EpochBatches(len(rows), config.batch_size, seed=config.seed)
    seconds, losses = [], []
    model.train()
    for epoch in range(1, settings.feature_epochs + 1):
        batches.set_epoch(epoch)
        total = torch.zeros((), device=device)
        started = time.perf_counter()
        for positions in batches:
            index = torch.as_tensor(positions)  # (B,)
            x = x_all[index].to(device, non_blocking=True)
            targets = {name: y[index].to(device, non_blocking=True) for name, y in y_all.items()}
            total += _plain_step(model, optimizer, tasks, x, targets, autocast)
        _sync(device)
        seconds.append(round(time.perf_counter() - started, 4))
        losses.append(round(float(total) / len(batches), 4))
    return {"epoch_s": seconds, "loss": losses}


class PlainImages(torch.utils.data.Dataset[tuple[torch.Tensor, dict[str, torch.Tensor]]]):
    """A user's own dataset over the generated images: PIL, numpy and transforms v2."""

    def __init__(self, card: Path) -> None:
        frame = pd.read_csv(card.parent / "manifest.csv")
        self.root = card.parent
        self.images, self.masks = frame["image"].tolist(), frame["mask"].tolist()
        self.depths = frame["depth"].tolist()
        self.shapes = frame["shape"].map(SHAPES.index).to_numpy()
        self.transform = v2.Compose(
            [
                v2.ToImage(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(IMAGE_MEAN, IMAGE_STD),
            ]
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with Image.open(self.root / self.images[i]) as image:
            x = self.transform(image.convert("RGB"))  # (3, H, W)
        with Image.open(self.root / self.masks[i]) as mask:
            seg = torch.from_numpy(np.asarray(mask).astype(np.int64))  # (H, W)
        depth = torch.from_numpy(np.load(self.root / self.depths[i]))  # (H, W)
        return x, {"shape": torch.tensor(self.shapes[i]), "seg": seg, "depth": depth}


def plain_images(card: Path, settings: Settings) -> dict[str, Any]:
    """The plain torchvision loop over an image card: each epoch's seconds and instances/s."""
    tasks = open_dataset(card, check_files=False).card.tasks
    dataset = PlainImages(card)
    config = TrainConfig(seed=SEED, device=settings.device)
    device = resolve_device(config.device)
    autocast = resolve_precision(config.precision, device)
    set_seed(config.seed)
    heads = {"shape": len(SHAPES), "seg": len(SHAPES) + 1, "depth": 1}
    model = build_model("image", 3, tasks, heads, ModelConfig()).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        num_workers=default_workers(device),  # the count `train` uses on this device
        pin_memory=device.type == "cuda",
        persistent_workers=True,
        generator=torch.Generator().manual_seed(config.seed),
    )
    seconds = []
    model.train()
    for _ in range(settings.image_epochs):
        started = time.perf_counter()
        for x, targets in loader:
            x = x.to(device, non_blocking=True)
            targets = {k: v.to(device, non_blocking=True) for k, v in targets.items()}
            _plain_step(model, optimizer, tasks, x, targets, autocast)
        _sync(device)
        seconds.append(round(time.perf_counter() - started, 4))
    return {
        "epoch_s": seconds,
        "samples_per_s": [round(len(dataset) / s, 2) for s in seconds],
        "workers": default_workers(device),
    }


# --- the two parts --------------------------------------------------------------------------


class Results:
    """Every raw measurement, rewritten to ``throughput.json`` after each step."""

    def __init__(self, settings: Settings) -> None:
        self.path = settings.workdir / RESULTS
        self.data: dict[str, Any] = {
            "settings": {
                k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()
            },
            "machine": machine(settings),
            "features": [],
            "images": [],
        }

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=2) + "\n", encoding="utf-8")


def run_features(settings: Settings, results: Results) -> None:
    epochs = settings.feature_epochs
    for n in settings.feature_sizes:
        console.print(f"[bold]Features, {n:,} rows[/bold]: generating data")
        card = features_card(settings.workdir / "data" / f"features-{n}", n)
        record: dict[str, Any] = {"n": n}
        results.data["features"].append(record)
        runs = settings.workdir / "runs"
        measured: dict[str, list[dict[str, Any]]] = {"plain": [], "equal": [], "ilt": []}
        for attempt in range(1, settings.repeat + 1):  # interleaved: drift hits all three alike
            measured["plain"].append(plain_features(card, settings))
            _say(f"plain loop ({attempt}/{settings.repeat})", measured["plain"][-1])
            for weighting in ("equal", "ilt"):
                measured[weighting].append(
                    train_command(
                        card,
                        runs / f"features-{n}-{weighting}",
                        settings,
                        epochs=epochs,
                        weighting=weighting,
                        batch=FEATURE_BATCH,
                    )
                )
                _say(
                    f"train --weighting {weighting} ({attempt}/{settings.repeat})",
                    measured[weighting][-1],
                )
        for name, attempts in measured.items():
            record[name] = _fastest_run(attempts)
            record[f"{name}_steady_s"] = [_steady(a["epoch_s"]) for a in attempts]
        run = runs / f"features-{n}-ilt"
        rank = ["rank", str(run), "--top", "1%", "--output", str(run / "suspects.csv")]
        record["rank"] = run_command(
            rank, settings.workdir / "logs" / f"features-{n}-rank.log", settings
        )
        _say("rank --top 1% --output suspects.csv", record["rank"])
        rank = ["rank", str(run), "--top", "20"]
        record["rank_terminal"] = run_command(
            rank, settings.workdir / "logs" / f"features-{n}-rank-terminal.log", settings
        )
        _say("rank --top 20", record["rank_terminal"])
        results.save()


def run_images(settings: Settings, results: Results) -> None:
    for n in settings.image_sizes:
        console.print(f"[bold]Images, {n:,} instances[/bold]: generating data")
        card = images_card(settings.workdir / "data" / f"images-{n}", n)
        record: dict[str, Any] = {"n": n}
        results.data["images"].append(record)
        record["ilt"] = train_command(
            card,
            settings.workdir / "runs" / f"images-{n}-ilt",
            settings,
            epochs=settings.image_epochs,
            weighting="ilt",
            batch=None,  # the library's default
        )
        _say("train (ILT)", record["ilt"])
        record["plain"] = plain_images(card, settings)
        _say("plain torchvision loop", record["plain"])
        results.save()


def _say(what: str, figures: dict[str, Any]) -> None:
    parts = []
    if "epoch_s" in figures:
        parts.append("epochs " + ", ".join(f"{s:.3f} s" for s in figures["epoch_s"]))
    if figures.get("samples_per_s"):
        parts.append(f"{_mean(figures['samples_per_s']):,.0f} instances/s")
    if "wall_s" in figures:
        parts.append(f"wall {figures['wall_s']:.2f} s")
    if figures.get("peak_rss_mib") is not None:
        parts.append(f"peak RSS {figures['peak_rss_mib']:,.0f} MiB")
    console.print(f"  {what}: " + "; ".join(parts))


# --- the report -----------------------------------------------------------------------------


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


def _fastest_run(attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """The attempt with the fastest steady epoch: noise on a shared machine only adds time, so
    the minimum is the estimate of the cost (as ``timeit`` advises)."""
    return min(attempts, key=lambda a: _steady(a["epoch_s"]))


def _paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """The median over interleaved rounds of ``numerator[i] / denominator[i]``."""
    return float(np.median([a / b for a, b in zip(numerator, denominator, strict=True)]))


def _steady(epoch_s: list[float]) -> float:
    """An epoch's time past warm-up: the mean of epochs 2..N (the only one when N is 1)."""
    return _mean(epoch_s[1:] or epoch_s)


def _epoch_label(epochs: int) -> str:
    if epochs == 1:
        return "the only epoch"
    return "epoch 2" if epochs == 2 else f"mean of epochs 2–{epochs}"


def _check(value: float | None, bound: float | None, *, at_least: bool = False) -> tuple[str, str]:
    """The target cell and the verdict cell."""
    if bound is None:
        return "—", "—"
    target = f"{'≥' if at_least else '≤'} {bound:g}"
    if value is None:
        return target, "—"
    ok = value >= bound if at_least else value <= bound
    return target, "**met**" if ok else "**not met**"


def _row(
    figure: str, measured: str, value: float | None, bound: float | None, **kw: bool
) -> list[str]:
    target, verdict = _check(value, bound, **kw)
    return [figure, target, measured, verdict]


def _mib(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f} MiB"


def features_section(settings: Settings, records: list[dict[str, Any]]) -> list[str]:
    which = _epoch_label(settings.feature_epochs)
    rows, detail = [], []
    for r in records:
        n, bounds = r["n"], FEATURE_TARGETS.get(r["n"], {})
        plain, equal, ilt = (
            float(np.median(r[f"{k}_steady_s"])) for k in ("plain", "equal", "ilt")
        )
        vs_equal = _paired_ratio(r["ilt_steady_s"], r["equal_steady_s"])
        vs_plain = _paired_ratio(r["ilt_steady_s"], r["plain_steady_s"])
        rows += [
            _row(
                f"ILT epoch ÷ equal epoch, {n:,} rows",
                f"{vs_equal:.3f} (median epochs {ilt:.3f} s and {equal:.3f} s)",
                vs_equal,
                bounds.get("ilt_vs_equal"),
            ),
            _row(
                f"ILT epoch ÷ plain-loop epoch, {n:,} rows",
                f"{vs_plain:.3f} (median epochs {ilt:.3f} s and {plain:.3f} s)",
                vs_plain,
                bounds.get("ilt_vs_plain"),
            ),
            _row(
                f"`train` wall clock (ILT), {n:,} rows",
                f"{r['ilt']['wall_s']:.2f} s",
                r["ilt"]["wall_s"],
                bounds.get("train_s"),
            ),
            _row(
                f"`rank --top 1% --output suspects.csv` wall clock, {n:,} rows",
                f"{r['rank']['wall_s']:.2f} s",
                r["rank"]["wall_s"],
                bounds.get("rank_s"),
            ),
        ]
        detail.append(
            [
                f"{n:,}",
                *(
                    ", ".join(f"{s:.3f}" for s in r[k]["epoch_s"])
                    for k in ("plain", "equal", "ilt")
                ),
                f"{r['equal']['wall_s']:.2f}",
                f"{r['ilt']['wall_s']:.2f}",
                _mib(r["ilt"]["peak_rss_mib"]),
                f"{r['rank']['wall_s']:.2f}",
                f"{r['rank_terminal']['wall_s']:.2f}",
            ]
        )
    return [
        f"### Features: {FEATURES} numeric columns, 3 tasks, batch {FEATURE_BATCH}, "
        f"{settings.feature_epochs} epochs",
        "",
        f"Epoch ratios use {which}. Each of the plain loop, `equal` and `ilt` ran "
        f"{settings.repeat} time(s), interleaved (plain, equal, ILT, plain, …); a ratio is the "
        "median over the rounds of the ratio within a round, so that drift in the machine's "
        "speed hits both sides of each ratio alike, and one lucky or unlucky run moves nothing "
        "(on 2 shared cores one epoch varies by ±10% from run to run, more than the cost "
        "measured). The epochs, wall clocks and memory in the lower table are those of the run "
        "with the fastest steady epoch; every run's figure is in the raw results. `train`'s "
        "epoch time includes ILT's end-of-epoch update. The plain "
        "loop is the network "
        "`train` builds, the same batches, AdamW with the same settings in PyTorch's default "
        "implementation (`train` uses the fused one), the mean over the batch of the summed task "
        "losses, and nothing else (no weighting, clipping or bookkeeping). Commands, each a "
        "subprocess "
        f"(`python -m ilt_audit`): `ilt-audit train CARD --out RUN --epochs "
        f"{settings.feature_epochs} --batch-size {FEATURE_BATCH} --weighting equal` (then "
        "`ilt`, the default), `ilt-audit rank RUN --top 1% --output suspects.csv` (the 1% a "
        "pipeline takes: 3,000 rows at 100k instances, 30,000 at 1M) and `ilt-audit rank RUN "
        "--top 20` (a table on the terminal); their wall clocks are whole commands (Python "
        "start-up, validation and run-directory writes included).",
        "",
        table(["figure", "target", "measured", "verdict"], rows),
        "",
        table(
            [
                "rows",
                "plain epochs (s)",
                "equal epochs (s)",
                "ILT epochs (s)",
                "equal `train` (s)",
                "ILT `train` (s)",
                "ILT `train` peak RSS",
                "`rank --top 1% --output` (s)",
                "`rank --top 20` (s)",
            ],
            detail,
        ),
        "",
    ]


def images_section(settings: Settings, records: list[dict[str, Any]]) -> list[str]:
    rows, detail = [], []
    for r in records:
        ilt, plain = _mean(r["ilt"]["samples_per_s"]), _mean(r["plain"]["samples_per_s"])
        rows.append(
            _row(
                f"ILT instances/s ÷ plain loop's, {r['n']:,} images",
                f"{ilt / plain:.3f} ({ilt:,.0f} ÷ {plain:,.0f} /s)",
                ilt / plain,
                IMAGE_SPEED_TARGETS.get(r["n"]),
                at_least=True,
            )
        )
        detail.append(
            [
                f"{r['n']:,}",
                f"{ilt:,.1f}",
                f"{plain:,.1f}",
                f"{r['ilt']['wall_s']:.2f}",
                _mib(r["ilt"]["peak_rss_mib"]),
            ]
        )
    small, large = min(records, key=lambda r: r["n"]), max(records, key=lambda r: r["n"])
    sizes, bound = IMAGE_RSS_TARGET
    if large["n"] > small["n"]:
        low, high = small["ilt"]["peak_rss_mib"], large["ilt"]["peak_rss_mib"]
        ratio = high / low if low and high else None
        rows.append(
            _row(
                f"`train` peak RSS at {large['n']:,} ÷ at {small['n']:,} images",
                "—" if ratio is None else f"{ratio:.3f} ({high:,.0f} MiB ÷ {low:,.0f} MiB)",
                ratio,
                bound if (small["n"], large["n"]) == sizes else None,
            )
        )
    return [
        f"### Images: {IMAGE_SIZE}x{IMAGE_SIZE} RGB, classification + segmentation + depth, "
        f"batch {TrainConfig().batch_size}, {settings.image_epochs} "
        f"epoch{'s' if settings.image_epochs > 1 else ''}, "
        f"{default_workers(resolve_device(settings.device))} DataLoader workers (`train`'s default "
        "on this device)",
        "",
        "Instances/s over the whole epoch, worker start-up included, for `train` (ILT) as for "
        "the plain torchvision loop (its own `Dataset`: PIL, numpy, transforms v2; the same "
        "network, batch size and worker count; AdamW; equal-weighted sum of the task losses). "
        "Peak RSS is the sum of the RSS of `train`'s process tree (main process and DataLoader "
        f"workers), sampled every {RSS_EVERY} s: pages a worker shares with the main process "
        "after `fork` count once per process, so the sum overstates the memory used, by the same "
        "amount at every size.",
        "",
        table(["figure", "target", "measured", "verdict"], rows),
        "",
        table(
            ["images", "ILT instances/s", "plain instances/s", "`train` (s)", "`train` peak RSS"],
            detail,
        ),
        "",
    ]


def machine(settings: Settings) -> dict[str, Any]:
    device = resolve_device(settings.device)
    return {
        "system": system(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "device": f"CUDA: {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "CPU",
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "ilt_audit": ilt_audit.__version__,
        "commit": _commit(),
    }


def _commit() -> str | None:
    try:
        found = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
        )
    except OSError:
        return None
    return found.stdout.strip() or None


def report(settings: Settings, data: dict[str, Any]) -> str:
    m = data["machine"]
    out = [
        "## Throughput",
        "",
        "Generated by `benchmarks/throughput.py`, which rewrites only this block.",
        "",
        f"- Produced by: `{settings.command}`"
        + (
            " (a smoke run at tiny sizes: the targets are for the full sizes)"
            if settings.quick
            else ""
        ),
        f"- Date: {now()}",
        f"- Machine: {m['system']}, {m['cpu']}, {m['cores']} CPU cores ({m['usable_cores']} "
        f"usable, torch threads {m['torch_threads']}), training on {m['device']}",
        f"- Versions: Python {m['python']}, torch {m['torch']}, torchvision {m['torchvision']}, "
        f"ilt-audit {m['ilt_audit']}" + (f" (commit {m['commit']})" if m["commit"] else ""),
        "",
    ]
    if data["features"]:
        out += features_section(settings, data["features"])
    if data["images"]:
        out += images_section(settings, data["images"])
    return "\n".join(out)


# --- part C: images stored in the table -----------------------------------------------------

BYTES_BLOCK = "throughput-bytes"  # the block of docs/benchmarks.md part C owns
BYTES_TARGET = 0.9  # instances/s from the table ÷ from the files: at least
BYTES_BATCH = 32


def stored_card(folder: Path, n: int) -> Path:
    """Part B's data set of ``n`` images (:func:`images_card`), its images and masks also stored
    in ``stored.parquet`` as ``datasets`` exports ``Image`` columns; the card that reads it."""
    images_card(folder, n)
    card = folder / "stored.toml"
    if card.is_file():
        return card
    frame = pd.read_csv(folder / "manifest.csv")
    kind = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    columns: dict[str, Any] = {"id": pa.array(frame["id"]), "shape": pa.array(frame["shape"])}
    for column in ("image", "mask"):
        cells = [{"bytes": (folder / p).read_bytes(), "path": Path(p).name} for p in frame[column]]
        columns[column] = pa.array(cells, kind)
    columns["depth"] = pa.array(frame["depth"])  # .npy maps stay files: a table may mix both
    features = {"image": {"_type": "Image"}, "mask": {"_type": "Image"}}
    table = pa.table(columns).replace_schema_metadata(
        {"huggingface": json.dumps({"info": {"features": features}})}
    )
    pq.write_table(table, folder / "stored.parquet", row_group_size=1024)
    text = (folder / "card.toml").read_text(encoding="utf-8")
    card.write_text(text.replace('"manifest.csv"', '"stored.parquet"'), encoding="utf-8")
    return card


def read_pass(card: Path, settings: Settings) -> float:
    """Instances/s of one pass of the library's loader over every row (no training)."""
    from ilt_audit.dataset.loader import make_loader

    device = resolve_device(settings.device)
    data = load_dataset(card)  # the validation pass (cached after the first)
    rows = np.arange(len(data))
    batches = EpochBatches(len(rows), BYTES_BATCH, seed=SEED)
    loader = make_loader(data.instances(rows), batches, workers=default_workers(device))
    started = time.perf_counter()
    for _ in loader:
        pass
    return len(rows) / (time.perf_counter() - started)


def run_stored(settings: Settings, n: int) -> dict[str, Any]:
    console.print(f"[bold]Images stored in the table, {n:,} instances[/bold]: generating data")
    folder = settings.workdir / "data" / f"images-{n}"
    files, stored = folder / "card.toml", stored_card(folder, n)
    record: dict[str, Any] = {"n": n, "files": [], "stored": []}
    for attempt in range(1, settings.repeat + 1):  # interleaved: drift hits both alike
        for name, card in (("files", files), ("stored", stored)):
            record[name].append(round(read_pass(card, settings), 2))
            console.print(f"  {name} ({attempt}/{settings.repeat}): {record[name][-1]:,.0f}/s")
    record["ratio"] = _paired_ratio(record["stored"], record["files"])
    record["workers"] = default_workers(resolve_device(settings.device))
    record["load_average"] = round(os.getloadavg()[0], 2)  # other jobs on the same cores
    return record


def stored_report(settings: Settings, data: dict[str, Any]) -> str:
    m, r = data["machine"], data["stored"]
    bound, verdict = _check(r["ratio"], BYTES_TARGET, at_least=True)
    shared = r["load_average"] > m["usable_cores"]
    rows = [
        [
            f"{r['n']:,}",
            f"{float(np.median(r['files'])):,.0f}",
            f"{float(np.median(r['stored'])):,.0f}",
            f"{r['ratio']:.2f}x",
            bound,
            verdict,
        ]
    ]
    header = ["images", "files: instances/s", "table: instances/s", "table ÷ files", "target", ""]
    return "\n".join(
        [
            "## Images stored in the table",
            "",
            "Generated by `benchmarks/throughput.py --stored-images N`, which rewrites only this "
            "block. The images and masks of the images part, read by the library's loader "
            f"(decode, resize, normalise, collate; batch {BYTES_BATCH}, {r['workers']} "
            "worker(s), no training) from PNG files and from a Parquet table that stores them "
            "as a Hugging Face `Image` column; the median of "
            f"{settings.repeat} interleaved rounds.",
            "",
            f"- Produced by: `{settings.command}`",
            f"- Date: {now()}",
            f"- Machine: {m['system']}, {m['cpu']}, {m['cores']} CPU cores "
            f"({m['usable_cores']} usable), on {m['device']}; load average "
            f"{r['load_average']:g} at the end"
            + (" (above the core count: other jobs shared the cores)" if shared else ""),
            "",
            table(header, rows),
        ]
    )


# --- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(sys.argv[1:] if argv is None else argv)
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    settings.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    console.print(f"[bold]ilt-audit throughput benchmark[/bold]: work folder {settings.workdir}")
    results = Results(settings)
    try:
        run_features(settings, results)
        run_images(settings, results)
        if settings.stored_images:
            results.data["stored"] = run_stored(settings, settings.stored_images)
    finally:
        results.save()
        if not settings.keep:  # a temporary folder: keep only the raw results and the logs
            for bulky in ("data", "runs"):
                shutil.rmtree(settings.workdir / bulky, ignore_errors=True)
    written = []
    if settings.feature_sizes or settings.image_sizes:
        write_block(settings.out_md, BLOCK, report(settings, results.data))
        written.append(BLOCK)
    if settings.stored_images:
        write_block(settings.out_md, BYTES_BLOCK, stored_report(settings, results.data))
        written.append(BYTES_BLOCK)
    console.print(
        f"Wrote the {' and '.join(f'`{b}`' for b in written)} block of {settings.out_md} and "
        f"{results.path} in {(time.perf_counter() - started) / 60:.1f} min."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
