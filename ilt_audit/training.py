"""The training loop: one multi-task network, a weighting, and the run directory it writes.

Every finished epoch leaves its trajectory file, its metrics line and a checkpoint on disk (each
written atomically, in that order), so a run killed at any moment keeps every epoch it finished
and ``resume=True`` continues from the last checkpoint.

Example:
    >>> from ilt_audit import TrainConfig, train
    >>> result = train("sample_manifests/penguins/card.toml", out="runs/penguins",
    ...                config=TrainConfig(epochs=20))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import platform
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ilt_audit import __version__
from ilt_audit.card import Card, load_card
from ilt_audit.data import Dataset, load_dataset
from ilt_audit.errors import OptionError, RunDirError, TrainingDiverged
from ilt_audit.ilt_params import InstanceParams, storage_device
from ilt_audit.internal.console import progress
from ilt_audit.internal.files import write_atomic
from ilt_audit.losses import instance_losses, likelihood_scale
from ilt_audit.metrics import task_metrics
from ilt_audit.model import ModelConfig, build_model
from ilt_audit.rundir import CHECKPOINT, read_config, read_metrics, write_config, write_metrics
from ilt_audit.trajectories import epoch_files, write_epoch
from ilt_audit.weighting import (
    WEIGHTINGS,
    DWAWeighting,
    ILTWeighting,
    Weighting,
    check_weighting,
)

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run; saved in ``config.json``."""

    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3  # AdamW learning rate of the network
    weight_decay: float = 1e-4
    grad_clip: float = 5.0  # max global gradient norm of the network (ILT weights reach e^4 ≈ 55)
    weighting: str = "ilt"
    ilt_lr: float = 0.1  # the method's one hyperparameter, on each instance's own gradient
    ilt_momentum: float = 0.9
    ilt_grad_clip: float | None = 1.0  # per-instance ∂L/∂s clip, with momentum reset at the clamp
    dwa_temperature: float = 2.0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    model: ModelConfig = field(default_factory=ModelConfig)

    def check(self) -> TrainConfig:
        check_weighting(self.weighting)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise OptionError(
                    f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}"
                )
        for name in ("lr", "ilt_lr", "dwa_temperature"):
            if not getattr(self, name) > 0:
                raise OptionError(
                    f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}"
                )
        resolve_device(self.device)
        return self


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    epochs: int  # epochs finished in total
    metrics: list[dict[str, Any]]


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise OptionError(f"--device {name!r}: choose auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(
            "--device cuda: no CUDA device is available here; use --device auto or cpu"
        )
    if device.type not in ("cpu", "cuda"):
        raise OptionError(f"--device {name!r}: choose auto, cpu or cuda")
    return device


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def config_from_dict(options: dict[str, Any]) -> TrainConfig:
    """Rebuild a TrainConfig from ``config.json``'s options (unknown keys are an error)."""
    options = dict(options)
    options["model"] = ModelConfig(**options.get("model", {}))
    return TrainConfig(**options)


def model_inputs(
    data: Dataset, rows: torch.Tensor, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The network's input for some rows: images scaled and normalised, features as loaded."""
    x = data.inputs[rows].to(device)
    if x.dtype == torch.uint8:
        mean, std = data.input_stats
        return (x.float() / 255.0 - mean.to(device)) / std.to(device)  # (B, 3, H, W)
    return x  # (B, F), standardised when loaded


@torch.no_grad()
def predict(run_dir: str | Path, data: Dataset, rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """The outputs of a finished run's network on some rows: task -> (R, out) logits or values.

    The network is rebuilt as training built it and loaded from ``checkpoint.pt`` with
    ``weights_only=True``. ``data`` must be loaded from the card the run was trained on, so that
    the inputs are normalised the same way. Regression outputs are in normalised units.
    """
    state = load_checkpoint(Path(run_dir) / CHECKPOINT)
    try:
        config = config_from_dict(state["config"]["options"])
        tasks = data.card.tasks
        heads = {t.name: data.out_features(t) for t in tasks}
        model = build_model(data.card.input.type, data.inputs.shape[1], tasks, heads, config.model)
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, RuntimeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunDirError(
            f"{run_dir}: the checkpoint does not fit this dataset: {first_line}"
        ) from None
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {t.name: [] for t in tasks}
    for batch in torch.split(rows, 256):
        for name, out in model(model_inputs(data, batch)).items():
            parts[name].append(out.float())
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


class _Run:
    """The state of one training run: data, model, weighting, optimizer, RNG."""

    def __init__(self, data: Dataset, config: TrainConfig, device: torch.device) -> None:
        self.data = data
        self.config = config
        self.device = device
        self.tasks = data.card.tasks
        heads = {t.name: data.out_features(t) for t in self.tasks}
        set_seed(config.seed)
        self.model = build_model(
            data.card.input.type, data.inputs.shape[1], self.tasks, heads, config.model
        ).to(device)
        scale = likelihood_scale(self.tasks)
        n, k = len(data.train_index), len(self.tasks)
        self.params: InstanceParams | None = None
        weighting: Weighting
        if config.weighting == "ilt":
            self.params = InstanceParams(
                n,
                k,
                lr=config.ilt_lr,
                momentum=config.ilt_momentum,
                grad_clip=config.ilt_grad_clip,
                device=storage_device(n, k, device),
            )
            weighting = ILTWeighting(scale, self.params)
        elif config.weighting == "dwa":
            weighting = DWAWeighting(scale, config.dwa_temperature)
        else:
            weighting = WEIGHTINGS[config.weighting](scale)
        self.weighting = weighting.to(device)
        self.optimizer = torch.optim.AdamW(
            [*self.model.parameters(), *self.weighting.parameters()],
            lr=config.lr,
            weight_decay=config.weight_decay,
        )
        self.shuffle = torch.Generator().manual_seed(config.seed)

    def inputs(self, rows: torch.Tensor) -> torch.Tensor:
        return model_inputs(self.data, rows, self.device)

    def targets(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: y[rows].to(self.device) for name, y in self.data.targets.items()}

    def batches(self) -> list[torch.Tensor]:
        """Positions into the training rows for each batch; a last batch of one joins the previous."""
        order = torch.randperm(len(self.data.train_index), generator=self.shuffle)
        chunks = list(torch.split(order, self.config.batch_size))
        if len(chunks) > 1 and len(chunks[-1]) == 1:
            chunks[-2:] = [torch.cat(chunks[-2:])]
        return chunks

    def state_dict(self, epoch: int, config_json: dict[str, Any]) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "config": config_json,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "weighting": self.weighting.state_dict(),
            "ilt": self.params.state_dict() if self.params is not None else None,
            "rng": {"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.weighting.load_state_dict(state["weighting"])
        if self.params is not None:
            self.params.load_state_dict(state["ilt"])
        torch.set_rng_state(state["rng"]["torch"])
        self.shuffle.set_state(state["rng"]["shuffle"])


def _config_json(
    card: Card, data: Dataset, config: TrainConfig, device: torch.device
) -> dict[str, Any]:
    return {
        "card": {"path": str(card.path), "sha256": card.sha256()},
        "options": asdict(config),
        "device": str(device),
        "tasks": [{"name": t.name, "type": t.type} for t in card.tasks],
        "class_names": {k: list(v) for k, v in data.manifest.class_names.items()},
        "instances": {"train": len(data.train_index), "val": len(data.val_index)},
        "model": "MLP" if card.input.type == "features" else "MultiTaskUNet",
        "versions": {
            "ilt_audit": __version__,
            "torch": str(torch.__version__),
            "python": platform.python_version(),
        },
    }


def _prepare_out(out: Path, resume: bool) -> None:
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise RunDirError(f"{out}: nothing to resume (no {CHECKPOINT}); run without --resume")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunDirError(
            f"{out}: the run directory exists and is not empty; pass --resume to continue it "
            "or choose another --out"
        )


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint without unpickling arbitrary objects."""
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: name it rather than crash
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunDirError(f"{path}: unreadable checkpoint: {first_line}") from None
    return state


def train(
    card: str | Path | Card,
    out: str | Path,
    *,
    config: TrainConfig | None = None,
    resume: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train on a dataset card and write the run directory ``out``.

    With ``resume=True`` the run continues from its checkpoint with its saved options; ``config``
    may then only change ``epochs`` (to train longer) and ``device``.
    """
    out = Path(out)
    card = card if isinstance(card, Card) else load_card(card)
    _prepare_out(out, resume)
    state: dict[str, Any] | None = None
    if resume:
        saved = read_config(out)
        if saved["card"]["sha256"] != card.sha256():
            raise RunDirError(
                f"{out}: the dataset card or its manifest changed since this run started "
                f"({saved['card']['path']}); start a new run instead of --resume"
            )
        base = config_from_dict(saved["options"])
        given = config or base
        config = dataclasses.replace(base, epochs=given.epochs, device=given.device)
        state = load_checkpoint(out / CHECKPOINT)
    config = (config or TrainConfig()).check()
    device = resolve_device(config.device)

    data = load_dataset(card)  # validates every row and file before anything is written
    run = _Run(data, config, device)
    config_json = _config_json(card, data, config, device)
    metrics: list[dict[str, Any]] = []
    start_epoch = 1
    if state is not None:
        run.load_state_dict(state)
        start_epoch = int(state["epoch"]) + 1
        metrics = [m for m in read_metrics(out) if m["epoch"] < start_epoch]
        for epoch, paths in epoch_files(out).items():  # epochs past the checkpoint are redone
            if epoch >= start_epoch:
                for path in paths:
                    path.unlink()

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        write_config(out, config_json)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    for epoch in range(start_epoch, config.epochs + 1):
        row = _train_epoch(run, epoch, config.epochs)
        _write_epoch(out, run, epoch, row, metrics, config_json)
        if on_epoch is not None:
            on_epoch(row)
    return TrainResult(out, config.epochs, metrics)


def _train_epoch(run: _Run, epoch: int, epochs: int) -> dict[str, Any]:
    data, tasks = run.data, run.tasks
    n, k = len(data.train_index), len(tasks)
    run.model.train()
    last_loss = torch.zeros(n, k)  # (N, K): each instance's unweighted loss this epoch
    started = time.perf_counter()
    batches = run.batches()
    with progress() as bar:
        job = bar.add_task(f"Epoch {epoch}/{epochs}", total=len(batches), info="")
        for step, positions in enumerate(batches, start=1):
            rows = data.train_index[positions]
            outputs = run.model(run.inputs(rows))
            l = instance_losses(tasks, outputs, run.targets(rows))  # (B, K)
            loss = run.weighting(l, positions)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"epoch {epoch}, batch {step}: the training loss became {loss.item()}; "
                    f"the {epoch - 1} finished epoch(s) are kept. Try a lower --lr or --ilt-lr."
                )
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(run.model.parameters(), run.config.grad_clip)
            run.optimizer.step()
            run.weighting.after_backward()
            last_loss[positions] = l.detach().cpu()
            if step % 5 == 0 or step == len(batches):
                means = last_loss.mean(dim=0)
                bar.update(
                    job,
                    info=" ".join(f"{t.name} {m:.3f}" for t, m in zip(tasks, means, strict=True)),
                )
            bar.advance(job)
    seconds = time.perf_counter() - started
    mean_losses = last_loss.mean(dim=0)  # (K,)
    run.weighting.end_epoch(mean_losses)
    row: dict[str, Any] = {
        "epoch": epoch,
        "loss": {t.name: float(m) for t, m in zip(tasks, mean_losses, strict=True)},
        "time_s": round(seconds, 4),
        "samples_per_s": round(n / seconds, 2) if seconds > 0 else None,
    }
    if len(data.val_index):
        row["val"] = task_metrics(run, data.val_index)
    row["_last_loss"] = last_loss
    return row


def _write_epoch(
    out: Path,
    run: _Run,
    epoch: int,
    row: dict[str, Any],
    metrics: list[dict[str, Any]],
    config_json: dict[str, Any],
) -> None:
    last_loss: torch.Tensor = row.pop("_last_loss")
    data = run.data
    if run.params is not None:
        log_sigma2 = run.params.log_sigma2.cpu().numpy()
    else:
        shared = getattr(run.weighting, "log_sigma2", None)  # uncertainty: one value per task
        log_sigma2 = np.full(tuple(last_loss.shape), np.nan, dtype=np.float32)
        if isinstance(shared, torch.Tensor):
            log_sigma2[:] = shared.detach().cpu().numpy()
    train_ids = [data.ids[i] for i in data.train_index.tolist()]
    write_epoch(out, epoch, train_ids, [t.name for t in run.tasks], log_sigma2, last_loss.numpy())
    metrics.append(row)
    write_metrics(out, metrics)
    state = run.state_dict(epoch, config_json)
    write_atomic(out / CHECKPOINT, lambda tmp: torch.save(state, tmp))
