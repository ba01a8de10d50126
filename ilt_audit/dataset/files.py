"""Reading and checking the files a manifest names: one stat each, then one parallel pass.

- :func:`file_stats` takes one ``stat`` per file (size, modification time): the record a run
  keeps of its inputs (:mod:`ilt_audit.dataset.record`) and the key of the cached pass;
- :func:`scan_files` runs **one parallel pass** over every file of an image card (DataLoader
  worker processes): each image, mask and depth map is decoded, checked (decodes, sizes match,
  mask values inside the classes, finite depth) and dropped. The pass streams the normalisation
  statistics of the training rows (image mean and standard deviation per channel, depth mean and
  standard deviation) as float64 sums, and stops at the first bad row with its file, row id and
  column;
- :class:`RowFiles` decodes the files of one row, for the pass and for training's batches.

Files are decoded with Pillow (torchvision's image backend); masks and 16-bit depth PNGs keep
their raw values (class indices, counts), never colour-converted. A file stored in the table (a
Hugging Face ``Image`` column) is decoded from its bytes by the same readers and under the same
rules (the header checked before decoding); a worker copies out one row's bytes at a time.

Example:
    >>> found = file_stats(open_dataset("sample_manifests/shapes/card.toml").manifest)  # doctest: +SKIP
    >>> found.complete  # doctest: +SKIP
    True
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ilt_audit.dataset.card import MAX_PIXELS, TaskSpec, file_columns
from ilt_audit.dataset.manifest import Manifest
from ilt_audit.errors import CardError
from ilt_audit.internal import distributed
from ilt_audit.internal.cache import read_cached, write_cached
from ilt_audit.internal.console import progress
from ilt_audit.internal.distributed import Place

SCAN_CHUNK = 64  # rows a worker checks per message of the validation pass
SCAN_FORMAT = 2  # bump when the pass checks more, so that older cached passes are not trusted
DECODE_ERRORS = (ValueError, OSError, UnidentifiedImageError)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers(device: torch.device | None = None) -> int:
    """Decoding processes when ``--workers`` is not given.

    Training on CUDA: one per core but one (the main process feeds the GPU), at most 8. Training
    on the CPU: a quarter of the cores, at least 1 and at most 4, since the network's own threads
    need the rest (measured on 2 cores: 2 workers halved the images per second of 1). Without a
    device (the validation pass, where nothing else runs): one per core, at most 8.
    """
    cores = usable_cores()
    if device is None:
        return max(1, min(8, cores))
    if device.type == "cuda":
        return max(1, min(8, cores - 1))
    return max(1, min(4, cores // 4))


# --- reading single files ------------------------------------------------------------------

Source = Path | io.BytesIO  # a file, or a file's bytes stored in the table


@contextmanager
def open_image(path: Source, shape: tuple[int, int] | None = None) -> Iterator[Image.Image]:
    """Open an image lazily and check the size its header claims before anything is decoded:
    at most :data:`MAX_PIXELS`, and ``shape`` (H, W) when given. Raises ``ValueError``."""
    with warnings.catch_warnings():  # Pillow warns from 1x its limit and raises from 2x
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except Image.DecompressionBombError as exc:
            raise ValueError(f"refused before decoding: {exc}") from None
    with img:
        width, height = img.size
        if width * height > MAX_PIXELS:
            raise ValueError(
                f"its header claims {width}x{height} pixels, more than the {MAX_PIXELS:,} "
                "allowed; refused before decoding"
            )
        _check_shape((height, width), shape)
        yield img


class ShapeMismatch(ValueError):
    """A map's header gives a size other than its image's."""


def _check_shape(found: tuple[int, ...], shape: tuple[int, int] | None) -> None:
    if shape is not None and found != shape:
        raise ShapeMismatch(
            f"map is {'x'.join(map(str, found))} but the image is {shape[0]}x{shape[1]}"
        )


def read_image(path: Source) -> torch.Tensor:
    """Decode an image file to (3, H, W) uint8 RGB."""
    with open_image(path) as img:
        return TF.pil_to_tensor(img.convert("RGB"))


def read_mask(path: Source, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a segmentation mask PNG as (H, W) stored values (palette PNGs give their indices).

    ``shape`` (H, W), when given, is checked against the header before decoding.
    """
    with open_image(path, shape) as img:
        if img.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(
                f"a mask must be a single-channel PNG of class indices, not mode {img.mode}"
            )
        return np.asarray(img).astype(np.int64)


def read_depth(
    path: Source,
    scale: float = 1.0,
    shape: tuple[int, int] | None = None,
    *,
    offset: float = 0.0,
    invalid: int | None = None,
) -> np.ndarray:
    """Read a dense-regression map: a .npy float array as it is, or a PNG's stored values as
    ``(value - offset) / scale``, NaN where it stores ``invalid`` (no target there).

    ``shape`` (H, W), when given, is checked against the file's header before reading its data.
    A .npy is known by its suffix, or, stored in the table, by its magic bytes.
    """
    stored_in_table = isinstance(path, io.BytesIO)
    if stored_in_table and path.getbuffer()[:6] == NPY_MAGIC:
        array = _read_npy(path, path.getbuffer().nbytes, shape)
    elif not stored_in_table and path.suffix.lower() == ".npy":
        with path.open("rb") as handle:
            array = _read_npy(handle, os.fstat(handle.fileno()).st_size, shape)
    else:
        with open_image(path, shape) as img:
            stored = np.asarray(img)
        array = (stored.astype(np.float64) - offset) / scale
        if invalid is not None:
            array[stored == invalid] = np.nan
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"expected a 2-D numeric array, got shape {array.shape} of {array.dtype}")
    return array.astype(np.float32)


NPY_MAGIC = b"\x93NUMPY"


class LabelValueError(ValueError):
    """A mask stores a value its card's ``label_map`` does not list."""


def read_label(task: TaskSpec, path: Source, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A dense task's label file as the card says to read it: a mask's classes (int64, through
    its ``label_map``), or a map's values in the label's units (float32, NaN where ``invalid``).

    The one reader of label files: training, ``corrupt``, ``fix``, the report and the review app
    all see the same labels. Raises ``ValueError`` (:class:`ShapeMismatch`,
    :class:`LabelValueError`) or ``OSError``.

    Example:
        >>> task = open_dataset("cityscapes.toml").card.task("seg")  # doctest: +SKIP
        >>> mask = Path("gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png")
        >>> read_label(task, mask)  # doctest: +SKIP
    """
    if task.type == "dense-regression":
        return read_depth(path, task.scale, shape, offset=task.offset, invalid=task.invalid)
    stored = read_mask(path, shape)
    if task.label_map is None:
        return stored
    lut = np.asarray(task.label_map, dtype=np.int64)
    beyond = stored >= len(lut)
    if beyond.any():
        raise LabelValueError(
            f"mask value {int(stored[beyond][0])} is not in the card's label_map "
            f"(stored values 0..{len(lut) - 1})"
        )
    return lut[stored]


def stored_mask(task: TaskSpec, classes: np.ndarray) -> np.ndarray:
    """A mask of classes as its task's files store it: through the inverse of the card's
    ``label_map``, each class written as the first stored value that maps to it (as
    cityscapesScripts' ``labels.py`` inverts its trainIds), so that :func:`read_label` reads the
    same classes back. How ``corrupt`` and ``fix`` write new masks."""
    if task.label_map is None:
        return classes
    lut = np.asarray(task.label_map, dtype=np.int64)
    values, first = np.unique(lut, return_index=True)  # each class's first stored value
    inverse = np.zeros(int(values[-1]) + 1, dtype=np.int64)
    inverse[values] = first
    return inverse[classes]  # every class and the ignore_index has a stored value (the card)


_NPY_HEADERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def _read_npy(handle: Any, size: int, shape: tuple[int, int] | None) -> np.ndarray:
    """A .npy array from an open file of ``size`` bytes, its header checked before its data is
    read: a numeric dtype (never pickled objects), 2-D (or 1xHxW), ``shape`` when given, at most
    :data:`MAX_PIXELS` values, and a file long enough to hold them."""
    version = np.lib.format.read_magic(handle)
    if version not in _NPY_HEADERS:
        raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
    found, fortran, dtype = _NPY_HEADERS[version](handle)
    if not np.issubdtype(dtype, np.number):
        raise ValueError(f"expected a numeric array, got {dtype}")
    plane = found[1:] if len(found) == 3 and found[0] == 1 else found
    if len(plane) != 2:
        raise ValueError(f"expected a 2-D numeric array, got shape {found} of {dtype}")
    _check_shape(tuple(plane), shape)
    count = int(np.prod(found, dtype=object))
    if count > MAX_PIXELS:
        raise ValueError(
            f"its header claims {count:,} values, more than the {MAX_PIXELS:,} allowed; "
            "refused before reading"
        )
    if handle.tell() + count * dtype.itemsize > size:
        raise ValueError(f"the file is shorter than the {found} array its header claims")
    if isinstance(handle, io.BytesIO):
        data = np.frombuffer(handle.getbuffer(), dtype=dtype, count=count, offset=handle.tell())
        data = data.copy()
    else:
        data = np.fromfile(handle, dtype=dtype, count=count)
    return data.reshape(found, order="F" if fortran else "C")


def mask_dtype(task: TaskSpec) -> torch.dtype:
    """The smallest type that holds a task's mask values: uint8, else int16."""
    ignore = task.ignore_index
    if task.class_count <= 256 and (ignore is None or 0 <= ignore <= 255):
        return torch.uint8
    return torch.int16


# --- normalisation -------------------------------------------------------------------------


@dataclass(frozen=True)
class Normalisation:
    """How inputs and targets are normalised: statistics of the training rows.

    Saved in ``config.json`` so that a resumed run and the report's predictions normalise as
    training did without decoding the data set again.
    """

    input_mean: tuple[float, ...]  # per feature column, or per image channel (pixels on [0, 1])
    input_std: tuple[float, ...]
    targets: dict[str, tuple[tuple[float, ...], tuple[float, ...]]]  # task -> (mean, std)
    image_size: tuple[int, int] | None = None  # (H, W) every image is resized to

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_mean": list(self.input_mean),
            "input_std": list(self.input_std),
            "targets": {k: [list(m), list(s)] for k, (m, s) in self.targets.items()},
            "image_size": list(self.image_size) if self.image_size else None,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Normalisation:
        size = raw.get("image_size")
        return cls(
            tuple(raw["input_mean"]),
            tuple(raw["input_std"]),
            {k: (tuple(m), tuple(s)) for k, (m, s) in raw["targets"].items()},
            (int(size[0]), int(size[1])) if size else None,
        )

    def target(self, task: str) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.targets[task]
        return torch.tensor(mean), torch.tensor(std)


def _mean_std(
    total: np.ndarray, squares: np.ndarray, count: float
) -> tuple[list[float], list[float]]:
    """Mean and sample standard deviation from float64 sums; a constant column gets std 1."""
    mean = total / max(count, 1.0)
    var = (squares - count * mean**2) / max(count - 1.0, 1.0)
    std = np.sqrt(np.maximum(var, 0.0))
    std = np.where(std > 1e-8, std, 1.0)
    return mean.tolist(), std.tolist()


def column_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-column mean and std of a (N, D) array, in float64."""
    x = x.astype(np.float64)
    return _mean_std(x.sum(axis=0), (x * x).sum(axis=0), float(len(x)))


# --- one row's files -----------------------------------------------------------------------


class RowProblem(Exception):
    """A file of one row cannot be used; carries the column and the reason."""

    def __init__(self, column: str, why: str) -> None:
        super().__init__(why)
        self.column = column
        self.why = why


class RowFiles:
    """Decodes and checks the files of one manifest row: the image and each dense label.

    Holds the path columns and the files stored in the table as Arrow arrays (no Python object
    per row, so forked workers do not copy them page by page; stored bytes memory-mapped where
    the table is an Arrow file).
    """

    def __init__(self, manifest: Manifest, size: tuple[int, int] | None) -> None:
        card = manifest.card
        self.card = card
        self.root = card.root
        self.table = str(card.table_path)
        self.image_column = card.input.columns[0]
        self.ids = pa.array(manifest.ids, pa.string())
        self.dense = tuple(t for t in card.tasks if t.dense)
        self.stored = {c: manifest.stored[c] for c in file_columns(card) if c in manifest.stored}
        self.paths = {c: _path_array(manifest, c) for c in file_columns(card)}
        self.size = size

    def message(self, row: int, problem: RowProblem) -> str:
        stored = self.stored.get(problem.column)
        if stored is not None and stored.data_of(row) is not None:
            what = "its bytes stored in the table"
        else:
            what = f"file: {self.paths[problem.column][row].as_py()!r}"
        return (
            f"{self.table}: row id {self.ids[row].as_py()!r}: column {problem.column!r}: "
            f"{problem.why} ({what})"
        )

    def path(self, column: str, row: int) -> Source:
        """The file of a row's column, or its bytes stored in the table. The manifest refused
        paths whose text leaves the data folder; here, where each file is opened, so is one
        that leaves it through a link."""
        stored = self.stored.get(column)
        data = stored.data_of(row) if stored is not None else None
        if data is not None:
            return io.BytesIO(data)
        value = self.paths[column][row].as_py()
        if not value:
            raise RowProblem(column, "expected a file path")
        path = self.root / value
        if self.card.leaves_root(path):
            raise RowProblem(column, self.card.outside_link)
        return path

    def image(self, row: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """The row's image at the common size: (3, H, W) uint8, and its own size."""
        path = self.path(self.image_column, row)
        try:
            image = read_image(path)
        except FileNotFoundError:
            raise RowProblem(self.image_column, "file not found") from None
        except DECODE_ERRORS as exc:
            raise RowProblem(self.image_column, f"cannot decode the image ({exc})") from None
        own = (int(image.shape[1]), int(image.shape[2]))
        if self.size is not None and own != self.size:
            image = TF.resize(image, list(self.size), antialias=True)
        return image, own

    def dense_map(self, task: TaskSpec, row: int, own: tuple[int, int]) -> torch.Tensor:
        """The row's map of a dense task, checked and at the common size: (H, W)."""
        path = self.path(task.column, row)
        try:
            array = read_label(task, path, own)
        except FileNotFoundError:
            raise RowProblem(task.column, "file not found") from None
        except (ShapeMismatch, LabelValueError) as exc:  # the size is found in the header
            raise RowProblem(task.column, str(exc)) from None
        except DECODE_ERRORS as exc:
            raise RowProblem(task.column, f"cannot read the {task.type} map ({exc})") from None
        if task.type == "segmentation":
            count = task.class_count
            valid = array != task.ignore_index if task.ignore_index is not None else True
            outside = valid & ((array < 0) | (array >= count))
            if outside.any():
                raise RowProblem(
                    task.column,
                    f"mask value {int(array[outside][0])} is outside the classes 0..{count - 1}",
                )
            tensor = torch.from_numpy(array).to(mask_dtype(task))
            mode = InterpolationMode.NEAREST
        else:
            # NaN marks a pixel without a target where the card says which value does (invalid)
            bad = np.isinf(array) if task.invalid is not None else ~np.isfinite(array)
            if bad.any():
                raise RowProblem(task.column, "the map contains NaN or infinite values")
            tensor = torch.from_numpy(array)
            mode = InterpolationMode.BILINEAR  # a pixel interpolated from an invalid one is NaN
        if self.size is not None and own != self.size:
            tensor = TF.resize(tensor[None], list(self.size), interpolation=mode, antialias=False)[
                0
            ]
        return tensor

    def decode(self, row: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, own = self.image(row)
        return image, {t.name: self.dense_map(t, row, own) for t in self.dense}


def _path_array(manifest: Manifest, column: str) -> pa.Array:
    """(N,) string: the path each row of a file column names; "" where it names none (its bytes
    are stored in the table, or the cell is not text)."""
    stored = manifest.stored.get(column)
    if stored is not None:
        return stored.path_texts()
    values = [v if isinstance(v, str) else "" for v in manifest.frame[column].tolist()]
    return pa.array(values, pa.string())


# --- the validation pass -------------------------------------------------------------------


class _FileScan(torch.utils.data.Dataset[tuple[int, str | None, np.ndarray]]):
    """Item ``row``: decode and check every file of the row; return its statistics, keep nothing.

    Statistics (float64): per channel the sum and sum of squares of pixels on [0, 1], the pixel
    count, then per dense-regression task the sum, the sum of squares and the count of values.
    Rows outside training contribute zeros (they are checked all the same).
    """

    def __init__(self, files: RowFiles, train: np.ndarray) -> None:
        self.files = files
        self.train = train  # (N,) bool
        self.depth = [t for t in files.dense if t.type == "dense-regression"]

    def __len__(self) -> int:
        return len(self.train)

    def __getitem__(self, row: int) -> tuple[int, str | None, np.ndarray]:
        stats = np.zeros(7 + 3 * len(self.depth))
        try:
            image, maps = self.files.decode(row)
        except RowProblem as problem:
            return row, self.files.message(row, problem), stats
        if self.train[row]:
            pixels = image.reshape(3, -1).double() / 255.0  # (3, H*W)
            stats[0:3] = pixels.sum(dim=1).numpy()
            stats[3:6] = (pixels * pixels).sum(dim=1).numpy()
            stats[6] = pixels.shape[1]
            for j, task in enumerate(self.depth):
                values = maps[task.name].double()
                if task.invalid is not None:  # the pixels that have a target
                    values = values[~values.isnan()]
                stats[7 + 3 * j : 10 + 3 * j] = [
                    float(values.sum()),
                    float((values * values).sum()),
                    values.numel(),
                ]
        return row, None, stats


def _reduce(
    items: list[tuple[int, str | None, np.ndarray]],
) -> tuple[int, int | None, str | None, np.ndarray]:
    """Sum a chunk's statistics in the worker; keep its first error and its row."""
    errors = [(row, message) for row, message, _ in items if message is not None]
    total = np.sum([stats for _, _, stats in items], axis=0)
    row, message = errors[0] if errors else (None, None)
    return len(items), row, message, total


@dataclass(frozen=True)
class FileStats:
    """The size and modification time of every file a manifest names, from one ``stat`` each.

    The quick check ``make`` and ``rsync`` use: about a microsecond a file, against a millisecond
    to decode it. Files are in table order: row by row, and within a row in ``columns`` order.
    A file stored in the table counts with its length and a modification time of 0: the table's
    own sha256 (in the card's) already covers its bytes.
    """

    columns: list[str]  # the columns that name files: the image, then each dense task's
    paths: list[pa.Array]  # per column, the paths ("" where a cell is not text or is stored)
    stats: np.ndarray  # (N, C, 2) int64: size in bytes, st_mtime_ns; -1 where no file is found

    @property
    def complete(self) -> bool:
        """Whether every file was found."""
        return bool((self.stats >= 0).all())


def file_stats(manifest: Manifest) -> FileStats:
    """Stat every file the manifest names (see :class:`FileStats`); nothing is decoded."""
    card = manifest.card
    columns = file_columns(card)
    paths = [_path_array(manifest, column) for column in columns]
    stats = np.full((len(manifest.frame), len(columns), 2), -1, np.int64)
    root = str(card.root)
    for j, values in enumerate(paths):
        found = pc.not_equal(values, "").to_numpy(zero_copy_only=False)  # (N,)
        given = values.filter(found)
        full = pc.if_else(  # an absolute path (a card with allow_outside_paths) stays as it is
            pc.starts_with(given, "/"), given, pc.binary_join_element_wise(root, given, "/")
        )
        stats[found, j] = _stat_each(full.to_pylist())
        stored = manifest.stored.get(columns[j])
        if stored is not None:
            in_table = stored.in_table()  # (N,)
            stats[in_table, j, 0] = stored.sizes()[in_table]
            stats[in_table, j, 1] = 0
    return FileStats(columns, paths, stats)


def _stat_each(paths: list[str]) -> np.ndarray:
    """(len(paths), 2) int64: each file's size and st_mtime_ns; -1 for one that is not there."""
    try:
        rows = [(s.st_size, s.st_mtime_ns) for s in map(os.stat, paths)]
    except (OSError, ValueError):  # a file missing, or a NUL in a path: stat each on its own
        rows = [_stat_one(path) for path in paths]
    return np.array(rows, np.int64).reshape(-1, 2)


def _stat_one(path: str) -> tuple[int, int]:
    try:
        s = os.stat(path)
    except (OSError, ValueError):
        return -1, -1
    return s.st_size, s.st_mtime_ns


def scan_key(manifest: Manifest, found: FileStats | None = None) -> str | None:
    """A fingerprint of everything the validation pass reads, or None if a file is missing.

    The card and manifest bytes (their sha256), the data folder the paths resolve against (a
    relative ``root`` names another folder when the card moves), whether the card lets paths
    leave it, and the size and modification time (ns) of every file the table names
    (:func:`file_stats`; ``found`` when the caller has them already, so that no file is stat-ed
    twice).
    """
    card = manifest.card
    digest = hashlib.sha256(
        f"scan-v{SCAN_FORMAT}:{card.sha256()}:{card.input.size}:"
        f"outside={card.allow_outside_paths}:root={card.root}".encode()  # what it read and allowed
    )
    found = file_stats(manifest) if found is None else found
    if not found.complete:
        return None
    digest.update(found.stats.transpose(1, 0, 2).tobytes())  # column by column
    return digest.hexdigest()


def scan_files(
    manifest: Manifest,
    train: np.ndarray,
    *,
    workers: int | None = None,
    reuse: bool = True,
    place: Place | None = None,
    stats: FileStats | None = None,
) -> Normalisation:
    """Check every file of an image card in one parallel pass; return the image statistics.

    Raises :class:`CardError` naming the file, row id and column of the first bad row (in table
    order). Nothing is kept but running sums. Dense-regression statistics are returned under the
    task's name in ``targets``. With ``reuse``, a pass that already succeeded on the same card,
    manifest and files (:func:`scan_key`) is not repeated: its statistics come from the cache
    (:mod:`ilt_audit.internal.cache`).

    Under torchrun (``place``) each rank checks one contiguous block of the rows; the ranks then
    agree on the first bad row of the whole table, so that every rank stops with the same message,
    and add up their statistics. A cached pass is used only when every rank finds it.
    """
    place = place or Place()
    key = scan_key(manifest, stats) if reuse else None
    cached = read_cached("scans", key) if key is not None else None
    if distributed.first(int(cached is not None), place) == 1:
        assert cached is not None
        return Normalisation.from_dict(cached)
    found = _scan(manifest, train, workers, place)
    if reuse and key is not None and place.main:
        write_cached("scans", key, found.to_dict())
    return found


def _scan(
    manifest: Manifest, train: np.ndarray, workers: int | None, place: Place
) -> Normalisation:
    card = manifest.card
    files = RowFiles(manifest, card.input.size)
    if files.size is None:  # every image takes the first image's size (every rank reads it)
        try:
            files.size = files.image(0)[1]
        except RowProblem as problem:
            raise CardError(files.message(0, problem)) from None
    scan = _FileScan(files, train)
    block = np.array_split(np.arange(len(scan)), place.world)[place.rank]  # this rank's rows
    rows = torch.utils.data.Subset(scan, block.tolist())
    workers = default_workers() if workers is None else workers
    loader = DataLoader(
        rows,
        batch_size=SCAN_CHUNK,
        num_workers=min(workers, max(0, len(rows) // SCAN_CHUNK)),
        collate_fn=_reduce,
    )
    total = np.zeros(7 + 3 * len(scan.depth))
    bad = len(scan)  # the first bad row this rank found (none: past the end)
    chunks = iter(loader)  # forks the workers before the progress display starts its thread
    with progress(show=place.main) as bar:
        job = bar.add_task("Checking files", total=len(rows), info="")
        for count, row, message, stats in chunks:
            if row is not None:
                bad = row
                if not place.active:
                    raise CardError(str(message))
                break
            total += stats
            bar.advance(job, count)
    bad = distributed.first(bad, place)
    if bad < len(scan):  # every rank stops with the message of the first bad row
        message = scan[bad][1]
        raise CardError(message or f"row {bad}: the file changed while it was being checked")
    summed = distributed.sum_(torch.from_numpy(total), place).numpy()
    total = summed
    mean, std = _mean_std(total[0:3], total[3:6], total[6])
    targets = {}
    for j, task in enumerate(scan.depth):
        s, sq, n = total[7 + 3 * j : 10 + 3 * j]
        targets[task.name] = tuple(map(tuple, _mean_std(np.array([s]), np.array([sq]), n)))
    return Normalisation(tuple(mean), tuple(std), targets, files.size)  # type: ignore[arg-type]
