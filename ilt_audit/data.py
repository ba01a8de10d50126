"""Turn a validated manifest into tensors: inputs, one target tensor per task, normalisation.

Every file the manifest points at is decoded here, before training starts, so an unreadable image
or a mask of the wrong size is reported with its row id and column instead of failing mid-run.
Files are decoded with Pillow (torchvision's image backend; torchvision's own decoders are
deprecated since 0.29) and turned into tensors by torchvision; masks and 16-bit depth PNGs keep
their raw values (class indices, counts), never colour-converted.

Example:
    >>> data = load_dataset("sample_manifests/shapes/card.toml")  # doctest: +SKIP
    >>> data.inputs.shape  # doctest: +SKIP
    torch.Size([600, 3, 32, 32])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2.functional import pil_to_tensor

from ilt_audit.card import Card, Manifest, TaskSpec, load_manifest
from ilt_audit.errors import CardError
from ilt_audit.internal.console import track


@dataclass
class Dataset:
    """All instances of a card in memory, normalised for training.

    Regression targets are z-scored per column and dense-regression maps by one mean and standard
    deviation over all pixels (statistics of the training rows), so that every task's loss starts
    near 1 whatever the units of the labels.
    """

    manifest: Manifest
    inputs: torch.Tensor  # (N, F) float32 features, or (N, 3, H, W) uint8 images
    targets: dict[
        str, torch.Tensor
    ]  # task -> (N,) int64 | (N, D) float32 | (N, H, W) int64/float32
    train_index: torch.Tensor  # (N_train,) rows that are trained on
    val_index: torch.Tensor  # (N_val,) rows held out for validation metrics
    input_stats: tuple[torch.Tensor, torch.Tensor]  # mean, std used to normalise inputs
    target_stats: dict[str, tuple[torch.Tensor, torch.Tensor]]  # regression tasks: mean, std

    @property
    def card(self) -> Card:
        return self.manifest.card

    @property
    def ids(self) -> list[str]:
        return self.manifest.ids

    def __len__(self) -> int:
        return len(self.ids)

    def out_features(self, task: TaskSpec) -> int:
        """Size of the head's output for a task: classes, target columns, or 1 for depth."""
        if task.type == "classification":
            return len(self.manifest.class_names[task.name])
        if task.type == "segmentation":
            assert isinstance(task.classes, int)
            return task.classes
        if task.type == "regression":
            return len(task.columns)
        return 1


def load_dataset(card: Card | Manifest | str | Path) -> Dataset:
    """Validate a card and its manifest and decode every file it names into tensors."""
    manifest = card if isinstance(card, Manifest) else load_manifest(card)
    card = manifest.card
    n = len(manifest.frame)
    if card.split is not None:
        is_val = (manifest.frame[card.split] == "val").to_numpy()
    else:
        is_val = np.zeros(n, dtype=bool)
    train_index = torch.from_numpy(np.flatnonzero(~is_val))
    val_index = torch.from_numpy(np.flatnonzero(is_val))
    if len(train_index) == 0:
        raise CardError(f"{card.table_path}: column {card.split!r}: no row has split 'train'")

    if card.input.type == "features":
        x = torch.from_numpy(
            manifest.frame[list(manifest.input_columns)].to_numpy(dtype=np.float32, copy=True)
        )
        mean, std = _stats(x[train_index], dim=0)
        inputs = (x - mean) / std
        input_stats = (mean, std)
        size = None
    else:
        inputs, size, image_sizes = _read_images(manifest)
        input_stats = _image_stats(inputs[train_index])

    targets: dict[str, torch.Tensor] = {}
    target_stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for task in card.tasks:
        if task.type == "classification":
            targets[task.name] = torch.from_numpy(manifest.class_index(task))
        elif task.type == "regression":
            y = torch.from_numpy(
                manifest.frame[list(task.columns)].to_numpy(dtype=np.float32, copy=True)
            )
            target_stats[task.name] = _stats(y[train_index], dim=0)
            targets[task.name] = (y - target_stats[task.name][0]) / target_stats[task.name][1]
        else:
            assert size is not None
            y = _read_dense(manifest, task, size, image_sizes)
            if task.type == "dense-regression":
                target_stats[task.name] = _stats(y[train_index].reshape(-1, 1), dim=0)
                y = (y - target_stats[task.name][0]) / target_stats[task.name][1]
            targets[task.name] = y
    return Dataset(manifest, inputs, targets, train_index, val_index, input_stats, target_stats)


def _stats(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x.mean(dim=dim)
    std = x.std(dim=dim) if x.shape[dim] > 1 else torch.ones_like(mean)
    return mean, torch.where(std > 1e-8, std, torch.ones_like(std))


def _image_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = images.permute(1, 0, 2, 3).reshape(3, -1).float() / 255.0  # (3, N*H*W)
    mean, std = _stats(pixels, dim=1)
    return mean.view(3, 1, 1), std.view(3, 1, 1)


def _row_error(manifest: Manifest, row: int, column: str, why: str) -> CardError:
    row_id = manifest.frame.at[row, manifest.card.id]
    value = manifest.frame.at[row, column]
    return CardError(
        f"{manifest.card.table_path}: row id {row_id!r}: column {column!r}: {why} (file: {value!r})"
    )


def read_image(path: Path) -> torch.Tensor:
    """Decode an image file to (3, H, W) uint8 RGB."""
    with Image.open(path) as img:
        return pil_to_tensor(img.convert("RGB"))


def _read_images(
    manifest: Manifest,
) -> tuple[torch.Tensor, tuple[int, int], list[tuple[int, int]]]:
    """All images at one size, that size, and each image's own size (dense maps must match it)."""
    card = manifest.card
    column = card.input.columns[0]
    images: list[torch.Tensor] = []
    size = card.input.size
    image_sizes: list[tuple[int, int]] = []
    for row, value in track(
        manifest.frame[column].items(), "Reading images", total=len(manifest.frame)
    ):
        try:
            image = read_image(manifest.file_path(value))
        except (ValueError, OSError, UnidentifiedImageError) as exc:
            raise _row_error(manifest, row, column, f"cannot decode the image ({exc})") from None
        if size is None:
            size = (image.shape[1], image.shape[2])
        image_sizes.append((image.shape[1], image.shape[2]))
        if (image.shape[1], image.shape[2]) != size:
            image = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True)[
                0
            ]
            image = image.round().clamp(0, 255).to(torch.uint8)
        images.append(image)
    assert size is not None
    return torch.stack(images), size, image_sizes


def read_mask(path: Path) -> np.ndarray:
    """Read a segmentation mask PNG as (H, W) class indices (palette PNGs give their indices)."""
    with Image.open(path) as img:
        if img.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(
                f"a mask must be a single-channel PNG of class indices, not mode {img.mode}"
            )
        return np.asarray(img).astype(np.int64)


def read_depth(path: Path, scale: float = 1.0) -> np.ndarray:
    """Read a dense-regression map: a .npy float array, or a 16-bit PNG divided by ``scale``."""
    if path.suffix.lower() == ".npy":
        array = np.load(path, allow_pickle=False)
    else:
        with Image.open(path) as img:
            array = np.asarray(img).astype(np.float64) / scale
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"expected a 2-D numeric array, got shape {array.shape} of {array.dtype}")
    return array.astype(np.float32)


def _read_dense(
    manifest: Manifest, task: TaskSpec, size: tuple[int, int], image_sizes: list[tuple[int, int]]
) -> torch.Tensor:
    maps: list[torch.Tensor] = []
    column = task.column
    for row, value in track(
        manifest.frame[column].items(), f"Reading {task.name}", total=len(manifest.frame)
    ):
        path = manifest.file_path(value)
        try:
            array = read_mask(path) if task.type == "segmentation" else read_depth(path, task.scale)
        except (ValueError, OSError, UnidentifiedImageError) as exc:
            raise _row_error(
                manifest, row, column, f"cannot read the {task.type} map ({exc})"
            ) from None
        if array.shape != image_sizes[row]:
            raise _row_error(
                manifest,
                row,
                column,
                f"map is {array.shape[0]}x{array.shape[1]} but the image is "
                f"{image_sizes[row][0]}x{image_sizes[row][1]}",
            )
        if task.type == "segmentation":
            assert isinstance(task.classes, int)
            valid = (
                array != task.ignore_index
                if task.ignore_index is not None
                else np.ones_like(array, bool)
            )
            outside = valid & ((array < 0) | (array >= task.classes))
            if outside.any():
                raise _row_error(
                    manifest,
                    row,
                    column,
                    f"mask value {int(array[outside][0])} is outside the classes 0..{task.classes - 1}",
                )
        elif not np.isfinite(array).all():
            raise _row_error(manifest, row, column, "the map contains NaN or infinite values")
        tensor = torch.from_numpy(array)
        if tuple(array.shape) != size:
            mode = "nearest" if task.type == "segmentation" else "bilinear"
            tensor = F.interpolate(tensor[None, None].float(), size=size, mode=mode)[0, 0]
        maps.append(tensor.long() if task.type == "segmentation" else tensor.float())
    return torch.stack(maps)
