"""The training loop: one multi-task network, a weighting, and the run directory it writes.

Every finished epoch leaves its trajectory file, its metrics line and a checkpoint on disk (each
written atomically, in that order), so a run killed at any moment keeps every epoch it finished
and ``resume=True`` continues from the last checkpoint.

Under ``torchrun`` (:mod:`ilt_audit.internal.distributed`) every rank runs this same loop on its share of
each epoch's batches, with the network wrapped in DistributedDataParallel; at the epoch's end the
ranks add up their ``(N, K)`` losses, so that each applies the same ILT update to the whole table,
and rank 0 alone writes the run directory.

Faults: SIGTERM (a scheduler's preemption) stops every rank at the same batch boundary with
:class:`~ilt_audit.errors.Preempted` (:mod:`ilt_audit.internal.preemption`), the lock released and
every finished epoch kept; a process that ``torchrun --max-restarts`` restarted resumes its own
run by itself (:func:`_after_restart`).

Example:
    >>> from ilt_audit import TrainConfig, train
    >>> result = train("sample_manifests/penguins/card.toml", out="runs/penguins",
    ...                config=TrainConfig(epochs=20))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import platform
import random
import shlex
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ilt_audit import __version__
from ilt_audit.dataset.card import Card, TaskSpec
from ilt_audit.dataset.files import Normalisation
from ilt_audit.dataset.loader import Dataset, EpochBatches, make_loader, to_device
from ilt_audit.dataset.opening import Source, open_dataset
from ilt_audit.dataset.record import INPUTS, write_files
from ilt_audit.errors import (
    CardError,
    OptionError,
    OutputError,
    Preempted,
    RunDirError,
    TrainingDiverged,
)
from ilt_audit.internal import distributed, preemption
from ilt_audit.internal.console import err_console, progress
from ilt_audit.internal.distributed import Place
from ilt_audit.internal.files import staged
from ilt_audit.internal.lock import LOCK_FILE, run_lock
from ilt_audit.internal.preemption import Stop
from ilt_audit.run import evidence
from ilt_audit.run.directory import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    read_config,
    read_metrics,
    write_config,
    write_metrics,
)
from ilt_audit.run.trajectories import TrajectoryWriter, epoch_files, trajectories_dir
from ilt_audit.training.ilt_params import InstanceParams, storage_device
from ilt_audit.training.losses import instance_losses, likelihood_scale
from ilt_audit.training.metrics import task_metrics
from ilt_audit.training.model import (
    ModelConfig,
    build_model,
    check_model,
    describe,
    load_pretrained,
    pretrained_state,
)
from ilt_audit.training.weighting import (
    WEIGHTINGS,
    DWAWeighting,
    ILTWeighting,
    MAOWeighting,
    Weighting,
    check_weighting,
)

CHECKPOINT_FORMAT = 2  # 2: batches seeded per epoch, no shuffle generator state
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


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
    precision: str = (
        "auto"  # auto (bf16 autocast on CUDA when supported, else fp32) | fp32 | bf16 | fp16
    )
    workers: int | None = None  # decoding processes for image cards; None: one per core, at most 8
    model: ModelConfig = field(default_factory=ModelConfig)

    def check(self) -> TrainConfig:
        check_weighting(self.weighting)
        check_model(self.model)
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
        if self.precision not in PRECISIONS:
            raise OptionError(
                f"--precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}"
            )
        if self.workers is not None and self.workers < 0:
            raise OptionError(f"--workers must be 0 or more, got {self.workers}")
        if self.weighting == "mao" and self.precision == "fp16":
            raise OptionError(
                "--weighting mao does not support --precision fp16 (its per-task gradients "
                "would need loss scaling); use bf16 or fp32"
            )
        resolve_precision(self.precision, resolve_device(self.device))
        return self


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    epochs: int  # epochs finished in total
    metrics: list[dict[str, Any]]


def resolve_device(name: str, place: Place | None = None) -> torch.device:
    """``auto`` is CUDA when present, else the CPU; ``cuda`` without a GPU is an error. Under
    torchrun, CUDA is the GPU of the process's ``LOCAL_RANK``."""
    local = place.local_rank if place is not None and place.active else None
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", local) if local is not None else torch.device("cuda")
    if name == "cuda" and local is not None and torch.cuda.is_available():
        return torch.device("cuda", local)
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


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast type for the forward pass, or None for plain fp32.

    ``auto`` is bf16 on a CUDA device that supports it and fp32 everywhere else; fp16 needs CUDA.
    Losses, ILT parameters and optimizer state stay fp32 whatever the precision.
    """
    if name == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else None
    if name == "fp16" and device.type != "cuda":
        raise OptionError("--precision fp16 needs a CUDA device; use fp32 or bf16 on the CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def config_from_dict(options: dict[str, Any]) -> TrainConfig:
    """Rebuild a TrainConfig from ``config.json``'s options (unknown keys are an error)."""
    options = dict(options)
    options["model"] = ModelConfig(**options.get("model", {}))
    return TrainConfig(**options)


def build_network(data: Dataset, config: TrainConfig) -> nn.Module:
    """The network for a data set: one head per task, sized by the data."""
    heads = {t.name: data.out_features(t) for t in data.card.tasks}
    return build_model(data.card.input.type, data.in_features, data.card.tasks, heads, config.model)


def saved_normalisation(run_dir: str | Path) -> Normalisation | None:
    """The normalisation a run was trained with, from its ``config.json`` (None before 0.2)."""
    raw = read_config(run_dir).get("normalisation")
    return Normalisation.from_dict(raw) if raw else None


def load_model(run_dir: str | Path, data: Dataset) -> nn.Module:
    """A finished run's network, rebuilt as training built it and loaded from ``checkpoint.pt``
    with ``weights_only=True``, in eval mode. ``data`` must be loaded from the card the run was
    trained on with the run's normalisation (:func:`saved_normalisation`)."""
    state = load_checkpoint(Path(run_dir) / CHECKPOINT)
    try:
        config = config_from_dict(state["config"]["options"])
        model = build_network(data, config)
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, RuntimeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunDirError(
            f"{run_dir}: the checkpoint does not fit this dataset: {first_line}"
        ) from None
    return model.eval()


@torch.no_grad()
def predict(
    run_dir: str | Path | nn.Module, data: Dataset, rows: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The outputs of a finished run's network on some rows: task -> (R, out) logits or values.

    ``run_dir`` is the run (its network is loaded by :func:`load_model`) or a network loaded
    once already; only ``rows`` are decoded. Regression outputs are in normalised units.
    """
    model = run_dir if isinstance(run_dir, nn.Module) else load_model(run_dir, data)
    tasks = data.card.tasks
    parts: dict[str, list[torch.Tensor]] = {t.name: [] for t in tasks}
    for batch in make_loader(data.instances(rows.numpy()), batch_size=256, workers=0):
        _raise_file_error(batch, "")
        x, _ = to_device(batch, tasks, torch.device("cpu"))
        for name, out in model(x).items():
            parts[name].append(out.float())
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


def _raise_file_error(batch: dict[str, Any], kept: str) -> None:
    """A file that changed since the validation pass stops the work with its row and column."""
    errors = [message for message in batch["error"] if message]
    if errors:
        raise CardError(errors[0] + kept)


class _Run:
    """The state of one training run: data, loader, model, weighting, optimizer."""

    def __init__(
        self, data: Dataset, config: TrainConfig, device: torch.device, place: Place | None = None
    ) -> None:
        self.data = data
        self.config = config
        self.device = device
        self.place = place = place or Place()
        self.tasks = data.card.tasks
        self.slots = evidence.slots(self.tasks)  # the evidence columns of each task
        # regression labels in the data's own units, for the evidence of unit errors and holes
        self.evidence_scales = {
            name: evidence.Scale(*(v.to(device) for v in data.norm.target(name)))
            for name in data.norm.targets
        }
        self.autocast = resolve_precision(config.precision, device)
        set_seed(config.seed)
        self.model = build_network(data, config).to(device)
        if device.type == "cuda" and config.model.name != "small":  # NHWC convolutions
            self.model.to(memory_format=torch.channels_last)
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
        elif config.weighting == "mao":
            trained = [p for p in self.model.parameters() if p.requires_grad]
            weighting = MAOWeighting(scale, sum(p.numel() for p in trained))
        else:
            weighting = WEIGHTINGS[config.weighting](scale)
        self.weighting = weighting.to(device)
        # fused: one kernel for every parameter (on 2 CPU cores 53 µs a step for the MLP, against
        # 195 µs for the default per-tensor loop)
        self.optimizer = torch.optim.AdamW(
            [*self.model.parameters(), *self.weighting.parameters()],
            lr=config.lr,
            weight_decay=config.weight_decay,
            fused=device.type in ("cpu", "cuda"),
        )
        self.clipped: list[torch.Tensor] = [p for p in self.model.parameters() if p.requires_grad]
        # under torchrun the network trains through DDP (its gradients are averaged over the
        # ranks); a weighting's own parameters (uncertainty's log σ² per task) are averaged by hand,
        # and so are the per-task gradients of a weighting that writes the gradients itself (mao):
        # torch.autograd.grad bypasses DDP's all-reduce
        self.trainer: nn.Module = self.model
        if place.active and not self.weighting.own_gradients:
            ids = [device.index] if device.type == "cuda" else None
            self.trainer = DistributedDataParallel(self.model, device_ids=ids)
        self.shared = [p for p in self.weighting.parameters() if p.requires_grad]
        self.scaler = torch.amp.GradScaler(device.type) if self.autocast is torch.float16 else None
        self.batches = EpochBatches(
            n, config.batch_size, seed=config.seed, rank=place.rank, world=place.world
        )
        self.loader = make_loader(
            data.instances(data.train_index), self.batches, workers=config.workers, device=device
        )
        self.val_loader = (
            make_loader(
                data.instances(data.val_index),
                batch_size=256,
                workers=config.workers,
                device=device,
            )
            if len(data.val_index)
            else None
        )

    def forward(self, x: torch.Tensor, module: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """The network's outputs, under autocast when a lower precision is asked for.

        ``module`` is the network to call: the bare one (evaluation) by default, ``trainer``
        (DDP under torchrun) for a training step.
        """
        module = self.model if module is None else module
        if self.autocast is None:
            return module(x)  # type: ignore[no-any-return]
        with torch.autocast(self.device.type, dtype=self.autocast):
            outputs = module(x)
        return {name: out.float() for name, out in outputs.items()}

    def average(self, tensor: torch.Tensor) -> torch.Tensor:
        """Average a tensor over the ranks, in place."""
        return distributed.sum_(tensor, self.place).div_(self.place.world)

    def average_shared_gradients(self) -> None:
        """Average the weighting's own gradients over the ranks (DDP averages the network's)."""
        if self.place.active:
            for p in self.shared:
                if p.grad is not None:
                    self.average(p.grad)

    def state_dict(self, epoch: int, config_json: dict[str, Any]) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "config": config_json,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "weighting": self.weighting.state_dict(),
            "ilt": self.params.state_dict() if self.params is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": {"torch": torch.get_rng_state()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.weighting.load_state_dict(state["weighting"])
        if self.params is not None:
            self.params.load_state_dict(state["ilt"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])


def _config_json(
    card: Card, data: Dataset, config: TrainConfig, device: torch.device, place: Place
) -> dict[str, Any]:
    return {
        "card": {"path": str(card.path), "sha256": card.sha256()},
        "options": asdict(config),
        "device": str(device),
        "world_size": place.world,
        "torchrun_run_id": place.job,  # a restarted process resumes only its own job's run
        "tasks": [{"name": t.name, "type": t.type} for t in card.tasks],
        "class_names": {k: list(v) for k, v in data.manifest.class_names.items()},
        "instances": {"train": len(data.train_index), "val": len(data.val_index)},
        "model": describe(card.input.type, config.model),
        "normalisation": data.norm.to_dict(),
        "versions": {
            "ilt_audit": __version__,
            "torch": str(torch.__version__),
            "python": platform.python_version(),
        },
    }


def _prepare_out(out: Path, resume: bool) -> None:
    """Check the run directory (locked, so it exists) against the request."""
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise RunDirError(f"{out}: nothing to resume (no {CHECKPOINT}); run without --resume")
    elif any(p.name != LOCK_FILE for p in out.iterdir()):
        raise RunDirError(
            f"{out}: the run directory exists and is not empty; pass --resume to continue it "
            "or choose another --out"
        )


def _after_restart(out: Path, card: Card, place: Place) -> bool:
    """Whether a process that torchrun restarted resumes the run in ``out`` (rank 0, locked).

    Only its own run: one that this torchrun job (``TORCHELASTIC_RUN_ID``) started on this card.
    With a checkpoint it resumes; with none (no epoch finished before the restart) the files of
    the start are removed and the run starts over. Anything else is left to the usual checks (a
    new directory, or one that is not empty and needs ``--resume``).
    """
    try:
        saved = read_config(out)
    except RunDirError:
        return False
    if saved.get("torchrun_run_id") != place.job or saved["card"]["sha256"] != card.sha256():
        return False
    if (out / CHECKPOINT).is_file():
        return True
    _clear_unstarted(out)
    err_console.print(
        f"torchrun restart {place.restarts}: no epoch of {out} had finished; starting it over",
        highlight=False,
        markup=False,
    )
    return False


def _clear_unstarted(out: Path) -> None:
    """Remove the files a run writes before its first epoch finishes (rank 0, locked)."""
    for paths in epoch_files(out).values():
        for path in paths:
            path.unlink()
    for name in (METRICS, INPUTS, CONFIG):
        (out / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: a file someone else put there stays
        trajectories_dir(out).rmdir()


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
    rescan: bool = False,
    accept_changed_files: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train on a dataset card and write the run directory ``out``.

    One process writes a run directory at a time: while a ``train`` holds ``out``, another one
    (in this process or another) raises :class:`RunDirError` (:mod:`ilt_audit.internal.lock`).

    With ``resume=True`` the run continues from its checkpoint with its saved options; ``config``
    may then only change ``epochs`` (to train longer), ``device`` and ``workers``. The card, its
    manifest and every file it names must be as the run recorded them (:mod:`ilt_audit.dataset.record`);
    ``accept_changed_files=True`` resumes with changed files all the same and says how many
    changed through ``on_warning`` (default: :func:`warnings.warn`).
    ``rescan=True`` decodes every file again even when an identical validation pass is cached.

    SIGTERM stops the run at the next batch boundary with :class:`Preempted`: the epochs finished
    before it are kept and the lock is released (a run with no finished epoch leaves nothing).
    Under ``torchrun --max-restarts``, a restarted process resumes its job's run without
    ``resume=True`` and says so on stderr.
    """
    out = Path(out)
    place = distributed.from_env()
    source = open_dataset(card, check_files=False)  # the card and every row, checked once
    if place.active:
        distributed.start(place, resolve_device((config or TrainConfig()).device, place))
    try:
        with contextlib.ExitStack() as held:
            stop = held.enter_context(preemption.watch(place))
            asked = resume
            with _agreed(place, "opening the run directory"):
                if place.main:  # the one writer: the lock is rank 0's
                    held.enter_context(run_lock(out))
                    if place.restarts and not resume:
                        resume = _after_restart(out, source.card, place)
                    _prepare_out(out, resume)
            resume = distributed.from_main(resume, place)
            with distributed.watching(place, "training"):
                return _train(
                    source,
                    out,
                    config,
                    place=place,
                    resume=resume,
                    restarted=resume and not asked,
                    stop=stop,
                    rescan=rescan,
                    accept_changed_files=accept_changed_files,
                    on_epoch=on_epoch,
                    on_warning=on_warning or (lambda note: warnings.warn(note, stacklevel=4)),
                )
    finally:
        distributed.stop()


@contextlib.contextmanager
def _agreed(place: Place, what: str) -> Iterator[None]:
    """Run a step that may fail on some ranks only; if it fails anywhere, every rank stops (the
    failing one with its own error, the others with :class:`~ilt_audit.internal.distributed.PeerFailed`).
    Nothing to agree on in a job of one."""
    try:
        yield
    except BaseException:
        distributed.agree(False, place, what)
        raise
    distributed.agree(True, place, what)


def _train(
    source: Source,
    out: Path,
    config: TrainConfig | None,
    *,
    place: Place,
    resume: bool,
    restarted: bool,
    stop: Stop,
    rescan: bool,
    accept_changed_files: bool,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    on_warning: Callable[[str], None],
) -> TrainResult:
    """:func:`train`, with the run directory locked by rank 0 and checked.

    Every rank reads the card, the manifest and (to resume) the checkpoint; rank 0 alone writes.
    ``restarted``: resuming without being asked, in a process torchrun restarted.
    """
    state: dict[str, Any] | None = None
    saved_norm: Normalisation | None = None
    with _agreed(place, "reading the run to resume and the manifest"):
        if resume:
            saved = read_config(out)
            source.check_card(out, saved)
            base = config_from_dict(saved["options"])
            given = config or base
            config = dataclasses.replace(
                base, epochs=given.epochs, device=given.device, workers=given.workers
            )
            state = load_checkpoint(out / CHECKPOINT)
            saved_norm = saved_normalisation(out)
        config = (config or TrainConfig()).check()
        device = resolve_device(config.device, place)
        # a new run's starting weights, checked before the data pass; a resumed run has its own
        pretrained = pretrained_state(config.model) if state is None else None
        # one stat per file, before the pass reads them: the record and the pass's cache key
        stats = source.stats if place.main else None
        files = source.files if place.main else None
        if resume and place.main:
            note = source.check_files(out, accept_changed=accept_changed_files)
            if note is not None:
                on_warning(note)
    # validates every row and file before anything is written; a resumed run keeps its statistics
    data = source.load(
        workers=config.workers, norm=saved_norm, rescan=rescan, place=place, stats=stats
    )
    run = _Run(data, config, device, place)
    if pretrained is not None:
        load_pretrained(run.model, pretrained)
    config_json = _config_json(source.card, data, config, device, place)
    metrics: list[dict[str, Any]] = []
    start_epoch = 1
    if state is not None:
        run.load_state_dict(state)
        start_epoch = int(state["epoch"]) + 1
        if restarted and place.main:
            err_console.print(
                f"torchrun restart {place.restarts}: resuming {out} after epoch "
                f"{start_epoch - 1}, its last finished epoch",
                highlight=False,
                markup=False,
            )
        if place.main:
            metrics = [m for m in read_metrics(out) if m["epoch"] < start_epoch]
            for epoch, paths in epoch_files(out).items():  # epochs past the checkpoint: redone
                if epoch >= start_epoch:
                    for path in paths:
                        path.unlink()

    writer = None
    if place.main:
        write_config(out, config_json)
        assert files is not None
        write_files(out, files)
        train_ids = pa.array(data.ids, pa.string()).take(pa.array(data.train_index))
        writer = TrajectoryWriter(out, train_ids, [t.name for t in run.tasks])
    for epoch in range(start_epoch, config.epochs + 1):
        try:
            row, last_loss, last_evidence = _train_epoch(run, epoch, config.epochs, stop)
        except _Stopped as stopped:
            if epoch == 1 and place.main:  # nothing finished: leave nothing behind
                _clear_unstarted(out)
            raise _preempted(source.card, out, epoch, stopped.step) from None
        if writer is not None:
            _write_epoch(
                out, run, writer, epoch, row, (last_loss, last_evidence), metrics, config_json
            )
            if on_epoch is not None:
                on_epoch(row)
    return TrainResult(out, config.epochs, metrics)


@torch.no_grad()
def clip_grad_norm(parameters: list[torch.Tensor], max_norm: float) -> None:
    """Scale the gradients so that their global L2 norm is at most ``max_norm``.

    What ``torch.nn.utils.clip_grad_norm_`` does, in three multi-tensor operations and without
    its grouping by device and type (the network's parameters share both): half its fixed cost,
    which is what a small network's step pays.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, (max_norm / (total + 1e-6)).clamp_(max=1.0))


class _Stopped(Exception):
    """SIGTERM came: the epoch stops before batch ``step`` (on every rank)."""

    def __init__(self, step: int) -> None:
        self.step = step


def _preempted(card: Card, out: Path, epoch: int, step: int) -> Preempted:
    """The error of a run stopped by SIGTERM before batch ``step`` of ``epoch``."""
    command = f"ilt-audit train {shlex.quote(str(card.path))} --out {shlex.quote(str(out))}"
    stopped = f"stopped by SIGTERM in epoch {epoch} before batch {step}"
    if epoch == 1:
        return Preempted(
            f"{stopped}; no epoch had finished, so nothing is kept. Start it again with `{command}`"
        )
    return Preempted(
        f"{stopped}; the {epoch - 1} finished epoch(s) are kept in {out}. Continue with "
        f"`{command} --resume` (under torchrun: the same torchrun command with --resume)"
    )


def _train_epoch(
    run: _Run, epoch: int, epochs: int, stop: Stop
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """One pass over the training rows; returns the metrics row, each instance's last loss (N, K)
    and its evidence (N, S) (:mod:`ilt_audit.run.evidence`), both from the training forward pass.
    Raises :class:`_Stopped` at a batch boundary once the ranks agree that SIGTERM came."""
    data, tasks = run.data, run.tasks
    n, k = len(data.train_index), len(tasks)
    run.model.train()
    last_loss = torch.zeros(n, k)  # (N, K): each instance's unweighted loss this epoch
    seen_evidence = _Evidence(n, tasks, run.evidence_scales)
    trained = torch.zeros(n, dtype=torch.bool)  # (N,): the rows this epoch trained
    loss_sum = torch.zeros(k, device=run.device)  # (K,) running sum, for the progress bar
    seen = 0
    kept = f"; the {epoch - 1} finished epoch(s) are kept"
    run.batches.set_epoch(epoch)
    started = time.perf_counter()
    shown = started
    loader = iter(run.loader)  # forks the workers (first epoch) before the progress thread starts
    with progress(show=run.place.main) as bar:
        job = bar.add_task(f"Epoch {epoch}/{epochs}", total=len(run.batches), info="")
        for step, batch in enumerate(loader, start=1):
            if stop.now(step):
                raise _Stopped(step)
            _raise_file_error(batch, kept)
            positions = batch["index"]  # (B,) rows of the ILT table
            x, targets = to_device(batch, tasks, run.device)
            outputs = run.forward(x, run.trainer)
            l = instance_losses(tasks, outputs, targets)  # (B, K)
            loss = run.weighting(l, positions)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"epoch {epoch}, batch {step}: the training loss became {loss.item()}{kept}. "
                    "Try a lower --lr or --ilt-lr."
                )
            run.optimizer.zero_grad(set_to_none=True)
            if run.weighting.own_gradients:  # mao: one gradient per task, combined by the weighting
                run.weighting.backward(l, run.clipped, run.average if run.place.active else None)
                clip_grad_norm(run.clipped, run.config.grad_clip)
                run.optimizer.step()
            elif run.scaler is None:
                loss.backward()
                run.average_shared_gradients()
                clip_grad_norm(run.clipped, run.config.grad_clip)
                run.optimizer.step()
            else:  # fp16: scale the loss, unscale before clipping
                run.scaler.scale(loss).backward()
                run.average_shared_gradients()
                run.scaler.unscale_(run.optimizer)
                clip_grad_norm(run.clipped, run.config.grad_clip)
                run.scaler.step(run.optimizer)
                run.scaler.update()
            l = l.detach()
            last_loss[positions] = l.cpu()
            seen_evidence.add(positions, outputs, targets)
            trained[positions] = True
            loss_sum += l.sum(dim=0)
            seen += len(positions)
            now = time.perf_counter()
            if now - shown > 0.5 or step == len(run.batches):
                shown = now
                means = (loss_sum / seen).tolist()
                bar.update(
                    job,
                    completed=step,
                    info=" ".join(f"{t.name} {m:.3f}" for t, m in zip(tasks, means, strict=True)),
                )
    last_evidence = seen_evidence.values()  # (N, S): each instance's evidence, slot by slot
    if run.place.active:  # each rank trained its share of the rows: every rank gets them all
        # the evidence travels with the losses: one all-reduce
        both = distributed.sum_(torch.cat([last_loss, last_evidence], dim=1), run.place)
        last_loss, last_evidence = both[:, :k].contiguous(), both[:, k:].contiguous()
        trained = distributed.sum_(trained.to(torch.int32), run.place) > 0
    run.weighting.end_epoch(last_loss, trained)  # ILT's sparse update, once per row
    seconds = time.perf_counter() - started  # the update included: it is part of ILT's cost
    mean_losses = last_loss.mean(dim=0)  # (K,)
    row: dict[str, Any] = {
        "epoch": epoch,
        "loss": {t.name: float(m) for t, m in zip(tasks, mean_losses, strict=True)},
        "time_s": round(seconds, 4),
        "samples_per_s": round(n / seconds, 2) if seconds > 0 else None,
    }
    if run.val_loader is not None and run.place.main:
        row["val"] = task_metrics(run, run.val_loader)
    return row, last_loss, last_evidence


class _Evidence:
    """Each instance's evidence (:mod:`ilt_audit.run.evidence`) in an epoch: (N, S), one column per
    (task, signal) slot.

    The signals come from the training step's own outputs. A batch only keeps references to its
    outputs and targets; every ``every`` batches, or sooner once they hold ``budget`` output
    values (large dense maps), they are concatenated and every signal computed at once, so that a
    batch does not pay the signals' handful of small operations (a few per cent of a small
    network's step).
    """

    def __init__(
        self,
        n: int,
        tasks: tuple[TaskSpec, ...],
        scales: dict[str, evidence.Scale],
        every: int = 32,
        budget: int = 1 << 24,
    ) -> None:
        self.tasks = tasks
        self.scales = scales
        self.every, self.budget = every, budget
        self._values = torch.zeros(n, len(evidence.slots(tasks)))  # (N, S)
        self._pending: list[tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]]
        self._pending = []
        self._held = 0

    def add(
        self,
        positions: torch.Tensor,
        outputs: dict[str, torch.Tensor],
        targets: dict[str, torch.Tensor],
    ) -> None:
        kept = {name: out.detach() for name, out in outputs.items()}
        self._pending.append((positions, kept, targets))
        self._held += sum(out.numel() for out in kept.values())
        if len(self._pending) >= self.every or self._held >= self.budget:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        positions = torch.cat([p for p, _, _ in self._pending])  # (R,)
        names = [t.name for t in self.tasks]
        outputs = {name: torch.cat([o[name] for _, o, _ in self._pending]) for name in names}
        targets = {name: torch.cat([t[name] for _, _, t in self._pending]) for name in names}
        self._values[positions] = evidence.compute(self.tasks, outputs, targets, self.scales).cpu()
        self._pending.clear()
        self._held = 0

    def values(self) -> torch.Tensor:
        """The evidence of the epoch, (N, S); 0 for rows the epoch did not train."""
        self._flush()
        return self._values


def _write_epoch(
    out: Path,
    run: _Run,
    writer: TrajectoryWriter,
    epoch: int,
    row: dict[str, Any],
    last: tuple[torch.Tensor, torch.Tensor],
    metrics: list[dict[str, Any]],
    config_json: dict[str, Any],
) -> None:
    """Write a finished epoch: its trajectory file, its metrics line, then the checkpoint, each
    to a temporary file first and renamed only when all three are on disk, so that a file that
    cannot be written (a full disk) abandons the epoch whole (:class:`OutputError`).

    ``last`` is each instance's last loss (N, K) and its evidence (N, S), one column per
    (task, signal) slot; a signal a task does not have is NaN in the file."""
    last_loss, last_evidence = last
    if run.params is not None:
        log_sigma2 = run.params.log_sigma2.cpu().numpy()
    else:
        shared = getattr(run.weighting, "log_sigma2", None)  # uncertainty: one value per task
        log_sigma2 = np.full(tuple(last_loss.shape), np.nan, dtype=np.float32)
        if isinstance(shared, torch.Tensor):
            log_sigma2[:] = shared.detach().cpu().numpy()
    columns: dict[str, np.ndarray] = {}
    found = last_evidence.numpy()
    for position, slot in enumerate(run.slots):
        column = columns.setdefault(
            slot.signal.column, np.full(tuple(last_loss.shape), np.nan, dtype=np.float32)
        )
        column[:, slot.task] = found[:, position]
    state = run.state_dict(epoch, config_json)
    try:  # the three files whole, or none of them: a full disk abandons the epoch, not the run
        with staged() as files:
            writer.write(epoch, log_sigma2, last_loss.numpy(), evidence=columns, into=files)
            write_metrics(out, [*metrics, row], into=files)
            files.write(out / CHECKPOINT, lambda handle: torch.save(state, handle))
    except OutputError as exc:
        resume = f"ilt-audit train {shlex.quote(config_json['card']['path'])} --out "
        raise OutputError(
            f"{exc}; epoch {epoch} is not recorded, the {epoch - 1} finished epoch(s) are kept. "
            f"Resume with `{resume}{shlex.quote(str(out))} --resume` once it can be written"
        ) from None
    metrics.append(row)
