"""``ilt-audit train``: train a multi-task network with ILT parameters and write the run
directory that every later command reads."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from ilt_audit.cli.common import fail, markup_safe
from ilt_audit.errors import IltAuditError


class Precision(StrEnum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Weighting(StrEnum):
    ilt = "ilt"
    equal = "equal"
    uncertainty = "uncertainty"
    dwa = "dwa"
    gls = "gls"
    mao = "mao"


def train(
    card: Annotated[Path, typer.Argument(help="The dataset card (TOML).")],
    out: Annotated[Path, typer.Option("--out", help="The run directory to write.")],
    epochs: Annotated[int | None, typer.Option(help="Training epochs \\[default: 30].")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed \\[default: 0].")] = None,
    weighting: Annotated[
        Weighting, typer.Option(help="How task losses are weighted.")
    ] = Weighting.ilt,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    precision: Annotated[
        Precision,
        typer.Option(help="auto: bf16 autocast on CUDA when supported, fp32 on the CPU."),
    ] = Precision.auto,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Processes that decode images (0: in the main process) \\[default: one per core, at most 8]."
        ),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size \\[default: 32].")] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="The image network: small (a small UNet), resnet18, resnet50 or convnext_tiny "
            "(torchvision backbones with an FPN decoder) \\[default: small]."
        ),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(
            help="A backbone's starting weights: a state dict file, or imagenet (torchvision's, "
            "downloaded once into its cache, hash checked) \\[default: none]."
        ),
    ] = None,
    offline: Annotated[
        bool,
        typer.Option(
            "--offline",
            envvar="ILT_AUDIT_OFFLINE",
            help="Never download: --weights imagenet must be in torchvision's cache already "
            "(if not, exit 2 naming the file to put there and its URL).",
        ),
    ] = False,
    lr: Annotated[
        float | None, typer.Option(help="Learning rate of the network \\[default: 1e-3].")
    ] = None,
    ilt_lr: Annotated[
        float | None, typer.Option(help="Learning rate of the ILT parameters \\[default: 0.1].")
    ] = None,
    dwa_temperature: Annotated[
        float | None, typer.Option(help="Softmax temperature of --weighting dwa \\[default: 2.0].")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run.")] = False,
    rescan: Annotated[
        bool,
        typer.Option(
            "--rescan",
            help="Decode every file again even if an identical check of these files is cached.",
        ),
    ] = False,
    accept_changed_files: Annotated[
        bool,
        typer.Option(
            "--accept-changed-files",
            help="With --resume: go on even if files the manifest names changed since the run "
            "started (a warning says how many).",
        ),
    ] = False,
) -> None:
    """Train a multi-task network with ILT parameters and write the run directory.

    Example: ilt-audit train sample_manifests/shapes/card.toml --out runs/shapes
    """
    import dataclasses

    from ilt_audit.internal.console import err_console
    from ilt_audit.internal.distributed import from_env
    from ilt_audit.training.loop import TrainConfig
    from ilt_audit.training.loop import train as run_training
    from ilt_audit.training.model import ModelConfig

    if resume and epochs is None:  # resume to the run's own planned length
        from ilt_audit.run.directory import read_config

        try:
            epochs = read_config(out)["options"]["epochs"]
        except IltAuditError:
            pass  # train() reports the missing run
    given = {
        "epochs": epochs,
        "seed": seed,
        "batch_size": batch_size,
        "lr": lr,
        "ilt_lr": ilt_lr,
        "dwa_temperature": dwa_temperature,
        "model": ModelConfig(name=model or "small", weights=weights, offline=offline)
        if model or weights
        else None,
    }
    config = dataclasses.replace(
        TrainConfig(
            weighting=weighting.value, device=device, precision=precision.value, workers=workers
        ),
        **{k: v for k, v in given.items() if v is not None},
    )

    def report(row: dict[str, Any]) -> None:
        losses = "  ".join(f"{task} {value:.4f}" for task, value in row["loss"].items())
        err_console.print(
            f"epoch {row['epoch']:>3}  {losses}  ({row['time_s']:.1f} s)", highlight=False
        )

    try:
        result = run_training(
            card,
            out,
            config=config,
            resume=resume,
            rescan=rescan,
            accept_changed_files=accept_changed_files,
            on_epoch=report,
            on_warning=lambda note: err_console.print(
                f"[yellow]Warning:[/] {markup_safe(note)}", highlight=False, soft_wrap=True
            ),
        )
    except KeyboardInterrupt:
        raise fail(
            f"interrupted; every finished epoch is kept in {out}. Continue with --resume.", 130
        ) from None
    if from_env().main:  # under torchrun, rank 0 speaks for the job
        err_console.print(
            f"[green]Done:[/] {result.epochs} epochs in {markup_safe(str(result.run_dir))}. "
            f"Next: ilt-audit rank {markup_safe(str(result.run_dir))}",
            highlight=False,
        )
