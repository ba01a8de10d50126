"""The data path: what training reads, one instance decoded per item.

The card (:mod:`ilt_audit.dataset.card`) names a table; the manifest
(:mod:`ilt_audit.dataset.manifest`) reads it and checks every row; the files it names are
checked in one pass (:mod:`ilt_audit.dataset.files`); this module holds what training reads:

- :func:`prepare` keeps in memory only what is the size of the table (feature columns as
  float32, class indices, multi-hot tag sets as bool, regression targets) and, for an image
  card, runs the files' pass, which returns the normalisation statistics;
- :meth:`Dataset.instances` is a map-style ``torch.utils.data.Dataset`` over some rows: item ``i``
  decodes the files of one row, resizes it with torchvision transforms v2 and normalises it.
  Masks stay uint8 (int16 for more than 256 classes) until they are in a batch on the device.
- :func:`make_loader` reads it with a ``DataLoader`` (worker processes, pinned memory on CUDA);
  a batch is a dict ``{"index", "input", "targets", "error"}`` whatever the input type.

A dataset is opened through :func:`ilt_audit.dataset.open_dataset`, which reads the card and the
manifest once; :func:`ilt_audit.dataset.load_dataset` opens and prepares in one call.

Example:
    >>> data = load_dataset("sample_manifests/shapes/card.toml")  # doctest: +SKIP
    >>> batch = next(iter(make_loader(data.instances(data.train_index), batch_size=8)))  # doctest: +SKIP
    >>> batch["input"].shape  # doctest: +SKIP
    torch.Size([8, 3, 32, 32])
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate
from torchvision.transforms.v2 import functional as TF

from ilt_audit.dataset.card import Card, TaskSpec
from ilt_audit.dataset.files import (
    FileStats,
    Normalisation,
    RowFiles,
    RowProblem,
    column_stats,
    default_workers,
    mask_dtype,
    scan_files,
)
from ilt_audit.dataset.manifest import Manifest
from ilt_audit.errors import CardError, OptionError
from ilt_audit.internal.distributed import Place

# The type a task's target has in a batch on the device (masks travel as uint8/int16).
TARGET_DTYPE = {
    "classification": torch.int64,
    "segmentation": torch.int64,
    "regression": torch.float32,
    "dense-regression": torch.float32,
    "multi-label": torch.float32,  # the (B, C) tag sets travel as bool
}


# --- the dataset ---------------------------------------------------------------------------


@dataclass
class Dataset:
    """A validated data set: what stays in memory, the normalisation, and per-item decoding.

    In memory: the table's columns that training reads (features as float32, class indices,
    regression targets, normalised). Pixels are decoded per item by :meth:`instances`.
    """

    manifest: Manifest
    train_index: np.ndarray  # (N_train,) int64 rows of the manifest that are trained on
    val_index: np.ndarray  # (N_val,) rows held out for validation metrics
    norm: Normalisation
    # "input" (N, F) features; task -> (N,) int64 classes | (N, C) bool tags | (N, D) float32
    table: dict[str, torch.Tensor]

    @property
    def card(self) -> Card:
        return self.manifest.card

    @property
    def ids(self) -> list[str]:
        return self.manifest.ids

    def __len__(self) -> int:
        return len(self.manifest)

    @property
    def in_features(self) -> int:
        """Feature columns of a features card; image channels (3) otherwise."""
        return len(self.norm.input_mean)

    def out_features(self, task: TaskSpec) -> int:
        """Size of the head's output for a task: classes or tags, target columns, or 1 for
        depth."""
        if task.type in ("classification", "multi-label"):
            return len(self.manifest.class_names[task.name])
        if task.type == "segmentation":
            return task.class_count
        if task.type == "regression":
            return len(task.columns)
        return 1

    def instances(self, rows: np.ndarray | Sequence[int]) -> Instances:
        """A map-style torch dataset over ``rows`` of the manifest; item ``i`` is ``rows[i]``."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.card.input.type == "features":
            return TableInstances(self, rows)
        return ImageInstances(self, rows)


class Instances(torch.utils.data.Dataset[dict[str, Any]]):
    """Items are positions ``i`` into ``rows``; a batch carries them as ``index`` (ILT's rows)."""

    decodes = False  # whether items read files (and so are worth worker processes)

    def __init__(self, data: Dataset, rows: np.ndarray) -> None:
        self.rows = rows
        self.tasks = data.card.tasks
        self.table = dict(data.table)

    def __len__(self) -> int:
        return len(self.rows)

    def collate(self, items: Any) -> dict[str, Any]:
        raise NotImplementedError


class TableInstances(Instances):
    """Features in memory: a batch is gathered in one indexing step (``__getitems__``)."""

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])

    def __getitems__(self, positions: list[int]) -> dict[str, Any]:
        index = torch.as_tensor(positions, dtype=torch.long)  # (B,)
        rows = torch.from_numpy(self.rows[index.numpy()])
        return {
            "index": index,
            "input": self.table["input"][rows],  # (B, F)
            "targets": {t.name: self.table[t.name][rows] for t in self.tasks},
            "error": [],
        }

    def collate(self, items: Any) -> dict[str, Any]:
        return items  # __getitems__ already built the batch


class ImageInstances(Instances):
    """Images (and dense labels) decoded per item, resized and normalised with transforms v2."""

    decodes = True

    def __init__(self, data: Dataset, rows: np.ndarray) -> None:
        super().__init__(data, rows)
        self.files = RowFiles(data.manifest, data.norm.image_size)
        self.mean = list(data.norm.input_mean)
        self.std = list(data.norm.input_std)
        self.depth = {
            t.name: data.norm.targets[t.name] for t in self.tasks if t.type == "dense-regression"
        }
        self.blank = {t.name: self._blank(t) for t in self.tasks}

    def _blank(self, task: TaskSpec) -> torch.Tensor:
        """A placeholder target of the right shape and type, for an item whose file failed."""
        if not task.dense:
            return torch.zeros_like(self.table[task.name][0])
        size = self.files.size
        assert size is not None
        dtype = mask_dtype(task) if task.type == "segmentation" else torch.float32
        return torch.zeros(size, dtype=dtype)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = int(self.rows[i])
        targets = {t.name: self.table[t.name][row] for t in self.tasks if not t.dense}
        try:
            image, maps = self.files.decode(row)
        except RowProblem as problem:  # a file changed since the validation pass
            size = self.files.size
            assert size is not None
            return {
                "index": i,
                "input": torch.zeros(3, *size),
                "targets": {t.name: self.blank[t.name] for t in self.tasks},
                "error": self.files.message(row, problem),
            }
        x = TF.normalize(TF.to_dtype(image, torch.float32, scale=True), self.mean, self.std)
        for name, value in maps.items():
            if name in self.depth:
                (mean,), (std,) = self.depth[name]
                value = (value - mean) / std
            targets[name] = value
        return {"index": i, "input": x, "targets": targets, "error": ""}

    def collate(self, items: Any) -> dict[str, Any]:
        return default_collate(items)


class EpochBatches:
    """The batches of one epoch: a permutation seeded by ``(seed, epoch)``, cut in batches.

    As with torch's ``DistributedSampler``, :meth:`set_epoch` is called before each epoch and the
    order depends on nothing else, so a resumed run sees the batches an uninterrupted one would.
    A last batch of one joins the previous one (batch norm cannot train on one instance).
    ``shuffle=False`` gives the rows in order (evaluation).

    Under torchrun (``world`` > 1) rank ``rank`` takes every ``world``-th row of the permutation:
    each instance goes to exactly one rank per epoch, none is repeated or dropped (torch's
    ``DistributedSampler`` pads with repeats or drops the tail, which would update a repeated
    instance's ``log σ²`` twice). Every rank cuts its share in the same number of batches, of
    sizes that differ by at most one, so that DDP's gradient exchange pairs up step by step.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if world > 1 and n < 2 * world:
            raise OptionError(
                f"{n} training instances cannot be shared by {world} processes (each needs 2)"
            )
        self.n = n
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world = world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _chunks(self) -> list[torch.Tensor]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=generator)
        else:
            order = torch.arange(self.n)
        if self.world > 1:
            return list(torch.tensor_split(order[self.rank :: self.world], self._shared_batches()))
        chunks = list(torch.split(order, self.batch_size))
        if len(chunks) > 1 and len(chunks[-1]) == 1:
            chunks[-2:] = [torch.cat(chunks[-2:])]
        return chunks

    def __iter__(self) -> Iterator[list[int]]:
        for chunk in self._chunks():
            yield chunk.tolist()

    def _shared_batches(self) -> int:
        """Batches per rank under torchrun: enough for the smallest share, none of one row."""
        smallest = self.n // self.world
        return max(1, min(-(-smallest // self.batch_size), smallest // 2))

    def __len__(self) -> int:
        if self.world > 1:
            return self._shared_batches()
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest > 1 or (rest == 1 and full == 0) else 0)


def to_device(
    batch: dict[str, Any], tasks: tuple[TaskSpec, ...], device: torch.device
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A batch's input and targets on ``device``; masks become int64 only there."""
    x = batch["input"].to(device, non_blocking=True)  # (B, F) or (B, 3, H, W), normalised
    targets = {
        t.name: batch["targets"][t.name].to(device, non_blocking=True).to(TARGET_DTYPE[t.type])
        for t in tasks
    }
    return x, targets


def make_loader(
    instances: Instances,
    batches: EpochBatches | None = None,
    *,
    batch_size: int = 256,
    workers: int | None = None,
    device: torch.device | None = None,
) -> DataLoader[dict[str, Any]]:
    """A DataLoader over ``instances``: worker processes when items decode files (``workers``,
    default :func:`default_workers` for ``device``), pinned memory on CUDA. Without ``batches``
    the rows come in order, ``batch_size`` at a time."""
    batches = batches or EpochBatches(len(instances), batch_size, shuffle=False)
    workers = (default_workers(device) if workers is None else workers) if instances.decodes else 0
    workers = min(workers, len(batches))
    return DataLoader(
        instances,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=instances.collate,
        pin_memory=device is not None and device.type == "cuda",
        persistent_workers=workers > 0,
    )


def prepare(
    manifest: Manifest,
    *,
    workers: int | None = None,
    norm: Normalisation | None = None,
    scan: bool = True,
    rescan: bool = False,
    place: Place | None = None,
    stats: FileStats | None = None,
) -> Dataset:
    """Validate every file a checked manifest names; keep the table-sized columns.

    ``norm`` reuses saved statistics (a resumed run, the report's predictions) instead of the
    ones of this pass; ``scan=False`` skips the file pass (then ``norm`` is required for images);
    ``rescan=True`` decodes every file even when an identical pass is cached (:func:`scan_files`);
    ``stats`` are the files' :func:`file_stats` when the caller took them already.
    """
    card = manifest.card
    frame = manifest.frame
    n = len(frame)
    is_val = (
        (frame[card.split] == "val").to_numpy() if card.split is not None else np.zeros(n, bool)
    )
    train_index = np.flatnonzero(~is_val)
    if len(train_index) == 0:
        raise CardError(f"{card.table_path}: column {card.split!r}: no row has split 'train'")

    table: dict[str, torch.Tensor] = {}
    targets: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {}
    for task in card.tasks:
        if task.type == "classification":
            table[task.name] = torch.from_numpy(manifest.class_index(task))
        elif task.type == "multi-label":
            table[task.name] = torch.from_numpy(manifest.tag_matrix(task))  # (N, C) bool
        elif task.type == "regression":
            y = frame[list(task.columns)].to_numpy(dtype=np.float32)
            mean, std = column_stats(y[train_index])
            targets[task.name] = (tuple(mean), tuple(std))
            if norm is not None:
                mean, std = map(list, norm.targets[task.name])
            table[task.name] = torch.from_numpy(
                ((y - np.float32(mean)) / np.float32(std)).astype(np.float32)
            )

    if card.input.type == "features":
        x = frame[list(manifest.input_columns)].to_numpy(dtype=np.float32)
        mean, std = column_stats(x[train_index])
        found = Normalisation(tuple(mean), tuple(std), targets)
        use = norm or found
        table["input"] = torch.from_numpy(
            ((x - np.float32(use.input_mean)) / np.float32(use.input_std)).astype(np.float32)
        )
    else:
        train = np.zeros(n, bool)
        train[train_index] = True
        if scan:
            found = scan_files(
                manifest, train, workers=workers, reuse=not rescan, place=place, stats=stats
            )
            found = Normalisation(
                found.input_mean, found.input_std, {**targets, **found.targets}, found.image_size
            )
        elif norm is None:
            raise ValueError("scan=False needs the saved normalisation")
        else:
            found = norm
    return Dataset(manifest, train_index, np.flatnonzero(is_val), norm or found, table)
