"""What the benchmark scripts share: the report's blocks, the machine line, the data they write.

- **Markdown blocks**, so that several scripts share one report (``docs/benchmarks.md``). A
  block is the text between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``, each marker on a
  line of its own. A script owns the blocks it names: it replaces them (or appends them at the
  end when absent) and leaves every other byte of the file as it was. :func:`table` draws a
  Markdown table.
- **The machine and the invocation**: :func:`system`, :func:`cpu_model`, :func:`cores`,
  :func:`versions`, :func:`command_line`, :func:`now`, :func:`rss_kib`.
- **Samples written into a work folder** (each card written last, so that a folder with a card
  holds a finished data set): :func:`write_digits` (scikit-learn's handwritten digits, a
  features card), :func:`write_fashion` (Fashion-MNIST from Debian's ``dataset-fashion-mnist``
  files, an image card), :func:`write_tags` (generated images of shapes whose kinds are a
  multi-label task), :func:`features_card` (a generated features data set of any size), and
  :func:`build_synthetic_run` (a finished run directory written without training, for the
  readers and the review app at scale).

The scripts import it as ``_shared`` (``sys.path`` holds their folder):

Example:
    >>> text = "# Benchmarks\\n"
    >>> text = replace_block(text, "throughput", "| figure | measured |")
    >>> read_block(text, "throughput")
    '| figure | measured |'
    >>> [name for name, _ in blocks(text)]
    ['throughput']
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import importlib
import importlib.util
import json
import math
import os
import platform
import re
import shlex
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT_MD = ROOT / "docs" / "benchmarks.md"  # every script's default --out-md

# --- Markdown blocks --------------------------------------------------------------------------

# A whole block: its name, then its content without the newlines that hug the markers.
_BLOCK = re.compile(r"<!-- ([\w-]+):start -->\n?(.*?)\n?<!-- \1:end -->", re.S)


def markers(name: str) -> tuple[str, str]:
    """The start and end markers of block ``name``."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: a header row, then one row per list of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def block(name: str, content: str) -> str:
    """Block ``name`` holding ``content``, markers included."""
    start, end = markers(name)
    return f"{start}\n{content.strip(chr(10))}\n{end}"


def blocks(text: str) -> list[tuple[str, str]]:
    """Every top-level block of ``text``, in order: ``(name, whole block with its markers)``."""
    return [(match.group(1), match.group(0)) for match in _BLOCK.finditer(text)]


def foreign_blocks(text: str, own: set[str] | frozenset[str]) -> list[str]:
    """The blocks of ``text`` whose names are not in ``own``, whole and in order."""
    return [whole for name, whole in blocks(text) if name not in own]


def read_block(text: str, name: str) -> str | None:
    """The content of block ``name`` (without its markers), or None when absent."""
    for match in _BLOCK.finditer(text):
        if match.group(1) == name:
            return match.group(2)
    return None


def replace_block(text: str, name: str, content: str) -> str:
    """``text`` with block ``name`` holding ``content``: replaced where it is, else appended."""
    new = block(name, content)
    for match in _BLOCK.finditer(text):
        if match.group(1) == name:
            return text[: match.start()] + new + text[match.end() :]
    head = text.rstrip("\n")
    return (head + "\n\n" if head else "") + new + "\n"


def write_block(path: Path, name: str, content: str) -> None:
    """Replace (or append) block ``name`` in the Markdown file ``path``; create it if missing."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_block(text, name, content), encoding="utf-8")


# --- the machine and the invocation -----------------------------------------------------------


def system() -> str:
    """The operating system and architecture, e.g. ``Linux x86_64``."""
    return f"{platform.system()} {platform.machine()}"


def cpu_model() -> str:
    """The CPU's model name, from ``/proc/cpuinfo`` where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cores() -> int | None:
    """The cores this process may run on (None where the system does not say)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def cores(*notes: str) -> str:
    """``N CPU cores (U usable, NOTE…)``."""
    usable = usable_cores()
    said = [f"{'?' if usable is None else usable} usable", *notes]
    return f"{os.cpu_count()} CPU cores ({', '.join(said)})"


def versions(*names: str, optional: tuple[str, ...] = ()) -> str:
    """``Python X, NAME Y, …`` for the named packages (``ilt-audit`` is the package here); an
    ``optional`` one is named only when installed."""
    parts = [f"Python {platform.python_version()}"]
    for name in (*names, *optional):
        if name in optional and importlib.util.find_spec(name.replace("-", "_")) is None:
            continue
        module = importlib.import_module(name.replace("-", "_"))
        parts.append(f"{name} {module.__version__}")
    return ", ".join(parts)


def command_line(script: str, argv: list[str]) -> str:
    """How a script was invoked, as the report says it: ``python benchmarks/SCRIPT ARGS``."""
    return shlex.join(["python", f"benchmarks/{script}", *argv])


def now() -> str:
    """The date and time, as a report's ``Date`` line says it."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def rss_kib(pid: int | str = "self") -> int:
    """VmRSS of one process in KiB (0 once it is gone, or for a zombie).

    Not the PSS of ``/proc/PID/smaps_rollup``, which would count pages shared after ``fork``
    once: reading it walks every mapping of the process under its memory lock (32 ms a read
    for a `train` process, measured), which slowed the measured `train` by a quarter when
    sampled every 0.05 s. ``status`` is read from counters, at no cost to the process."""
    for line in read_proc(f"/proc/{pid}/status").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def read_proc(path: str) -> str:
    """A ``/proc`` file's text, or "" when the process is gone or hidden."""
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


# --- samples written into a work folder -------------------------------------------------------


def fresh(path: Path) -> Path:
    """An empty folder for a step that was not recorded as finished (an interrupted one is redone)."""
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _write_card(card_path: Path, header: str, raw: dict[str, Any]) -> None:
    """The card, last: a folder with a card holds a finished data set."""
    from ilt_audit.internal.toml import toml_dumps

    card_path.write_text(header + toml_dumps(raw), encoding="utf-8")


def digits_missing() -> str | None:
    """Why the digits cannot be written on this machine, or None."""
    if importlib.util.find_spec("sklearn") is None:
        return 'scikit-learn is not installed (pip install -e ".[bench]")'
    return None


def write_digits(card_path: Path) -> None:
    """scikit-learn's handwritten digits as a features card: 64 pixels in [0, 1], task ``digit``.

    ``load_digits``: 1,797 8x8 greyscale images of the digits 0-9 (the UCI optical recognition
    data set), shipped inside scikit-learn; the pixel values 0-16 are divided by 16.
    """
    import pandas as pd
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = [f"px{i:02d}" for i in range(digits.data.shape[1])]
    frame = pd.DataFrame(digits.data / 16.0, columns=pixels)
    frame.insert(0, "id", [f"digit-{i:04d}" for i in range(len(frame))])
    frame["digit"] = digits.target.astype(np.int64)
    folder = fresh(card_path.parent)  # nothing of an interrupted write is kept
    folder.mkdir()
    frame.to_parquet(folder / "digits.parquet", index=False)
    raw = {
        "table": "digits.parquet",
        "id": "id",
        "input": {"type": "features", "columns": pixels},
        "tasks": {"digit": {"type": "classification", "column": "digit", "classes": 10}},
    }
    header = "# digits: scikit-learn's load_digits, 1,797 8x8 handwritten digits, pixels / 16\n"
    _write_card(card_path, header, raw)


FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # where dataset-fashion-mnist puts it
FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
FASHION_N = 6000  # --fashion-n: training images written (the first N of the 60,000)
FASHION_CLASSES = (  # label 0..9, as the Fashion-MNIST README names them
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def read_idx(path: Path) -> np.ndarray:
    """The array of a gzip'd idx file of unsigned bytes (the MNIST format).

    The format: a big-endian magic ``0x0000 08 NDIM`` (``08``: unsigned bytes), NDIM big-endian
    uint32 sizes, then the bytes in C order.
    """
    with gzip.open(path, "rb") as handle:
        magic = handle.read(4)
        if len(magic) < 4 or magic[:3] != b"\x00\x00\x08":
            raise ValueError(f"{path}: not an idx file of unsigned bytes (magic {magic.hex()})")
        shape = struct.unpack(f">{magic[3]}I", handle.read(4 * magic[3]))
        data = handle.read()
    if len(data) != math.prod(shape):
        raise ValueError(
            f"{path}: its header says {shape}, {math.prod(shape)} bytes; {len(data)} follow"
        )
    return np.frombuffer(data, np.uint8).reshape(shape)


def fashion_missing() -> str | None:
    """Why Fashion-MNIST cannot be written on this machine, or None."""
    absent = [name for name in FASHION_FILES if not (FASHION_DIR / name).is_file()]
    if not absent:
        return None
    return (
        f"Fashion-MNIST's {', '.join(absent)} not found in {FASHION_DIR}; install Debian's "
        f"package: apt-get install {FASHION_PACKAGE}"
    )


def write_fashion(card_path: Path, *, n: int = FASHION_N) -> None:
    """The first ``n`` Fashion-MNIST training images as an image card: 28x28 grey PNGs, task
    ``item`` with the 10 class names (Zalando's article photographs, human labels, MIT licence).

    The files are those of Debian's ``dataset-fashion-mnist`` package (``FASHION_DIR``); the
    training set is shuffled, so its first ``n`` images hold every class about equally.
    """
    import pandas as pd
    from PIL import Image

    images = read_idx(FASHION_DIR / FASHION_FILES[0])  # (60000, 28, 28)
    labels = read_idx(FASHION_DIR / FASHION_FILES[1])  # (60000,)
    if n > len(images):
        raise SystemExit(
            f"error: --fashion-n {n}: Fashion-MNIST's training set in {FASHION_DIR} holds "
            f"{len(images):,} images"
        )
    folder = fresh(card_path.parent)  # nothing of an interrupted write is kept
    (folder / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        path = f"images/fashion-{i:05d}.png"
        Image.fromarray(images[i], mode="L").save(folder / path)
        rows.append({"id": f"fashion-{i:05d}", "image": path, "item": FASHION_CLASSES[labels[i]]})
    pd.DataFrame(rows).to_parquet(folder / "fashion.parquet", index=False)
    raw = {
        "table": "fashion.parquet",
        "id": "id",
        "input": {"type": "image", "column": "image"},
        "tasks": {
            "item": {"type": "classification", "column": "item", "classes": list(FASHION_CLASSES)}
        },
    }
    header = (
        f"# fashion: Fashion-MNIST, the first {n:,} of its {len(images):,} training images, "
        f"28x28 grey, from {FASHION_DIR}\n"
    )
    _write_card(card_path, header, raw)


TAGS_N = 800  # --tags-n: images written
TAGS_SIDE = 32  # the images' side in pixels
TAGS_SEED = 22  # the images depend on this alone (and on n: the first n of one stream)
TAG_KINDS = ("circle", "square", "triangle", "cross", "ring")  # the tags, in the card's order
# a shape's bounding side in pixels, uniform; with 8-13 px and triangles turned four ways a clean
# run reached a validation micro F1 of 0.93 (800 images), too low for its errors to stand out
TAG_SIZES = (11.0, 16.0)
_SUPER = 4  # supersampling of a pixel's coverage (anti-aliased edges)


def _coverage(kind: str, cx: float, cy: float, side: float) -> np.ndarray:
    """The share of each pixel a shape covers: (S, S) in [0, 1]."""
    grid = (np.arange(TAGS_SIDE * _SUPER) + 0.5) / _SUPER
    ys, xs = np.meshgrid(grid, grid, indexing="ij")
    dx, dy = xs - cx, ys - cy
    h = side / 2
    if kind == "circle":
        inside = dx**2 + dy**2 <= h**2
    elif kind == "ring":
        inside = (dx**2 + dy**2 <= h**2) & (dx**2 + dy**2 >= (0.55 * h) ** 2)
    elif kind == "square":
        inside = (np.abs(dx) <= h) & (np.abs(dy) <= h)
    elif kind == "cross":
        arm = side / 6
        box = (np.abs(dx) <= h) & (np.abs(dy) <= h)
        inside = box & ((np.abs(dx) <= arm) | (np.abs(dy) <= arm))
    else:  # a triangle filling its box, pointing up
        inside = (dy + h >= 0) & (dy + h <= side) & (np.abs(dx) <= (dy + h) / 2)
    return inside.reshape(TAGS_SIDE, _SUPER, TAGS_SIDE, _SUPER).mean(axis=(1, 3))


def _tag_image(rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """One image of 1-3 shapes of different kinds that do not touch, and its kinds."""
    count = int(rng.integers(1, 4))
    kinds = [TAG_KINDS[k] for k in sorted(rng.choice(len(TAG_KINDS), count, replace=False))]
    placed: list[tuple[float, float, float]] = []  # (cx, cy, side)
    while len(placed) < count:
        side = float(rng.uniform(*TAG_SIZES))
        cx, cy = rng.uniform(side / 2 + 1, TAGS_SIDE - side / 2 - 1, size=2)
        # bounding boxes at least a pixel apart: every shape is seen whole
        if all(max(abs(cx - x), abs(cy - y)) > (side + s) / 2 + 1 for x, y, s in placed):
            placed.append((float(cx), float(cy), side))
        elif rng.random() < 0.05:  # no room left: start the image again
            placed = []
    background = rng.uniform(40, 200, size=3)
    image = np.broadcast_to(background, (TAGS_SIDE, TAGS_SIDE, 3)).copy()
    for kind, (cx, cy, side) in zip(kinds, placed, strict=True):
        colour = rng.uniform(30, 225, size=3)
        while np.linalg.norm(colour - background) < 90:  # a shape stands out from its ground
            colour = rng.uniform(30, 225, size=3)
        cover = _coverage(kind, cx, cy, side)[..., None]  # (S, S, 1)
        image = image * (1 - cover) + colour * cover
    image += rng.normal(0.0, 4.0, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), kinds


def write_tags(card_path: Path, *, n: int = TAGS_N) -> None:
    """A generated image card whose tags follow from the image: ``n`` 32x32 RGB images, each of
    1-3 shapes of different kinds (circle, square, triangle, cross, ring) at random places,
    sizes and colours, task ``kinds`` (multi-label, a Parquet list column) the kinds drawn.

    Deterministic: the same ``n`` gives the same images, and a larger ``n`` begins with them.
    """
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(TAGS_SEED)
    folder = fresh(card_path.parent)  # nothing of an interrupted write is kept
    (folder / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        image, kinds = _tag_image(rng)
        path = f"images/tags-{i:05d}.png"
        Image.fromarray(image, mode="RGB").save(folder / path)
        rows.append({"id": f"tags-{i:05d}", "image": path, "kinds": kinds})
    pd.DataFrame(rows).to_parquet(folder / "tags.parquet", index=False)
    raw = {
        "table": "tags.parquet",
        "id": "id",
        "input": {"type": "image", "column": "image"},
        "tasks": {"kinds": {"type": "multi-label", "column": "kinds", "classes": list(TAG_KINDS)}},
    }
    header = (
        f"# tags: {n:,} generated {TAGS_SIDE}x{TAGS_SIDE} images of 1-3 shapes of different "
        f"kinds; the tags are the kinds drawn (benchmarks/_shared.py, seed {TAGS_SEED})\n"
    )
    _write_card(card_path, header, raw)


FEATURES, FEATURE_CLASSES = 16, 5  # features_card: numeric columns, classes of ``kind``


def features_card(folder: Path, n: int, *, seed: int = 0) -> Path:
    """A features data set of ``n`` rows: f00..f15, ``kind`` (5 classes) and two regressions.

    ``kind`` is the argmax of a noisy linear map of the features; ``a`` and ``b`` (two columns)
    are smooth functions of a few features plus noise. The card is written last, so a folder
    with a card holds a finished data set (and is reused).
    """
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    card = folder / "card.toml"
    if card.is_file():
        return card
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)  # (N, F)
    logits = x @ rng.normal(size=(FEATURES, FEATURE_CLASSES))
    logits += 0.3 * rng.normal(size=(n, FEATURE_CLASSES))
    kind = logits.argmax(axis=1)  # (N,)
    columns: dict[str, Any] = {"id": pa.array([f"r{i:07d}" for i in range(n)])}
    columns |= {f"f{j:02d}": x[:, j] for j in range(FEATURES)}
    columns["kind"] = pa.array(np.array([f"k{c}" for c in range(FEATURE_CLASSES)])[kind])
    noise = 0.1 * rng.normal(size=(n, 3)).astype(np.float32)
    columns["a"] = np.sin(x[:, 0]) + x[:, 1] * x[:, 2] + noise[:, 0]
    columns["b0"] = x[:, 3] ** 2 - x[:, 4] + noise[:, 1]
    columns["b1"] = np.tanh(x[:, 5] + x[:, 6]) + noise[:, 2]
    pa_csv.write_csv(pa.table(columns), folder / "manifest.csv")
    names = ", ".join(f'"f{j:02d}"' for j in range(FEATURES))
    card.write_text(
        'table = "manifest.csv"\nid = "id"\n\n'
        f'[input]\ntype = "features"\ncolumns = [{names}]\n\n'
        '[tasks.kind]\ntype = "classification"\ncolumn = "kind"\n\n'
        '[tasks.a]\ntype = "regression"\ncolumns = ["a"]\n\n'
        '[tasks.b]\ntype = "regression"\ncolumns = ["b0", "b1"]\n',
        encoding="utf-8",
    )
    return card


# --- a synthetic run, written without training (readers.py, review.py) ------------------------

SYNTHETIC_EPOCHS = 30
PLANTED = 0.015  # share of each task's instances whose log σ² climbs (and that the truth marks)
SYNTHETIC_TASKS = (
    ("label", "classification"),
    ("target", "regression"),
    ("grade", "classification"),
)
SYNTHETIC_CLASSES = ("a", "b", "c")
GRADES = 5
BUILD = 2  # bump when the synthetic data changes, so that old work folders are rebuilt

SYNTHETIC_CARD = """\
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


def synthetic_machine() -> str:
    """The machine line of the blocks measured on a synthetic run (readers, review)."""
    return f"{system()}, {cores()}; {versions('pyarrow', 'pandas', 'numpy', 'ilt-audit')}"


@dataclass(frozen=True)
class SyntheticRun:
    """A built synthetic run: its folder holds ``data/`` (card, manifest, truth) and ``run/``."""

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
        from ilt_audit.corruption.planting import TRUTH_FILE

        return self.data / TRUTH_FILE


def build_synthetic_run(folder: Path, n: int, epochs: int, *, seed: int = 0) -> SyntheticRun:
    """Write a features dataset of ``n`` instances and three tasks (two classification, one
    regression), its truth file and a finished run of ``epochs`` epochs, as training would write
    them (``config.json``, ``metrics.jsonl``, one trajectory file per epoch), without a
    checkpoint; reuse them when already built.

    In each task a share of the instances (``PLANTED``) gets a ``log σ²`` trajectory that climbs,
    as wrong labels do; the truth file names them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ilt_audit.corruption.planting import TRUTH_SCHEMA
    from ilt_audit.dataset import open_dataset

    case = SyntheticRun(n, epochs, folder)
    stamp = folder / "built.json"
    wanted = {"n": n, "epochs": epochs, "seed": seed, "build": BUILD}
    if stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")) == wanted:
        return case
    shutil.rmtree(folder, ignore_errors=True)
    case.data.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    width = max(7, len(str(n - 1)))
    ids = pa.array([f"i{i:0{width}d}" for i in range(n)], pa.string())
    k = len(SYNTHETIC_TASKS)

    features = rng.normal(size=(n, 4)).astype(np.float32)
    labels = np.array(SYNTHETIC_CLASSES)[rng.integers(0, len(SYNTHETIC_CLASSES), n)]
    manifest = pa.table(
        {
            "id": ids,
            **{f"f{j}": features[:, j] for j in range(4)},
            "label": pa.array(labels),
            "y0": rng.normal(10.0, 3.0, n),
            "y1": rng.uniform(0.0, 1.0, n),
            "grade": rng.integers(0, GRADES, n),
        }
    )
    pq.write_table(manifest, case.data / "manifest.parquet")
    card_path = case.data / "card.toml"
    card_path.write_text(SYNTHETIC_CARD, encoding="utf-8")

    planted = rng.random((n, k)) < PLANTED  # (N, K) the "wrong" labels
    planted[0] = True  # every task has one, however small the run
    truth = pa.table(
        [
            ids.take(pa.array(np.repeat(np.arange(n), k))),
            pa.array(np.tile([name for name, _ in SYNTHETIC_TASKS], n)),
            pa.array(planted.reshape(-1)),
        ],
        schema=TRUTH_SCHEMA,
    )
    pq.write_table(truth, case.truth)

    card = open_dataset(card_path, check_files=False).card
    _write_synthetic_run(case, {"path": str(card.path), "sha256": card.sha256()}, ids, planted, rng)
    stamp.write_text(json.dumps(wanted), encoding="utf-8")
    return case


def _write_synthetic_run(
    case: SyntheticRun,
    card: dict[str, str],
    ids: Any,
    planted: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """config.json, metrics.jsonl and the trajectories: clean log σ² settle low, planted ones climb;
    the evidence columns the default score reads follow the loss."""
    from ilt_audit import __version__
    from ilt_audit.run.directory import write_config, write_metrics
    from ilt_audit.run.trajectories import TrajectoryWriter
    from ilt_audit.training.loop import TrainConfig  # imports torch: only when a run is built

    n, k = planted.shape
    run = case.run
    run.mkdir(parents=True)
    write_config(
        run,
        {
            "card": card,
            "options": dataclasses.asdict(TrainConfig(epochs=case.epochs)),
            "device": "cpu",
            "tasks": [{"name": name, "type": kind} for name, kind in SYNTHETIC_TASKS],
            "class_names": {
                "label": list(SYNTHETIC_CLASSES),
                "grade": [str(g) for g in range(GRADES)],
            },
            "instances": {"train": n, "val": 0},
            "model": "MLP",
            "versions": {"ilt_audit": __version__, "python": platform.python_version()},
        },
    )
    settle = np.where(planted, rng.normal(1.5, 0.6, (n, k)), rng.normal(-3.0, 0.6, (n, k)))
    writer = TrajectoryWriter(run, ids, [name for name, _ in SYNTHETIC_TASKS])
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
        for j, (_, kind) in enumerate(SYNTHETIC_TASKS):
            column = margin if kind == "classification" else residual
            column[:, j] = np.sqrt(loss[:, j]) * (-1.0 if kind == "classification" else 1.0) + 1.0
        writer.write(epoch, log_sigma2, loss, evidence={"margin": margin, "residual": residual})
        metrics.append(
            {
                "epoch": epoch,
                "loss": {
                    name: float(loss[:, j].mean()) for j, (name, _) in enumerate(SYNTHETIC_TASKS)
                },
                "seconds": 0.0,
            }
        )
    write_metrics(run, metrics)
