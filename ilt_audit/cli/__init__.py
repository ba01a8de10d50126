"""The ``ilt-audit`` command line: parse options, call the library, render the result.

Exit codes (SPEC section 8), decided in one place (:class:`_Guarded`): 0 success; 1 only a gate
over its limit; 2 bad input, usage, an unfinished run, a held lock or an I/O error, as one
``Error: …`` line on stderr (the library's :class:`ilt_audit.errors.IltAuditError`); 3 an
internal error, a bug, with its traceback and a line saying so; 130 interrupted. Heavy modules
(torch, pandas) are imported inside the commands so that ``--help`` stays fast.
"""

from __future__ import annotations

import os
import sys
import traceback
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from ilt_audit import __version__
from ilt_audit.errors import IltAuditError

if TYPE_CHECKING:
    import pandas as pd

BUG = 3  # the exit code of an internal error
INTERRUPTED = 130


class _Guarded(TyperGroup):
    """The command group, with every way out of a command mapped to its exit code."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # typer's own ways out: an exit code, a usage error (2)
        except IltAuditError as exc:
            raise _fail(str(exc)) from None
        except KeyboardInterrupt:
            raise _fail("interrupted", INTERRUPTED) from None
        except BrokenPipeError:
            _quiet_stdout()
            raise _fail("the output was closed before everything was written") from None
        except MemoryError:
            raise _fail(
                "out of memory; try a smaller --batch-size or fewer --workers, or a machine with "
                "more memory"
            ) from None
        except Exception:
            from ilt_audit.internal.console import err_console

            sys.stderr.write(traceback.format_exc())
            err_console.print(
                f"[bold red]Internal error[/] (exit {BUG}): this is a bug in ilt-audit "
                f"{__version__}, not a problem with your data. Please report it with the "
                "traceback above.",
                highlight=False,
            )
            raise typer.Exit(BUG) from None


def _quiet_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so that the exit flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real stdout (tests)
        pass
    finally:
        os.close(devnull)


app = typer.Typer(
    cls=_Guarded,
    no_args_is_help=True,
    add_completion=False,
    help="Find wrong labels in multi-task datasets with instance-level task parameters.",
    rich_markup_mode="rich",
)


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"
    label_studio = "label-studio"  # rank only: Label Studio tasks (ilt_audit.review.export)


class Noise(StrEnum):
    add = "add"
    replace = "replace"


class DropTo(StrEnum):
    background = "background"
    ignore = "ignore"


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


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ilt-audit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Find wrong labels in multi-task datasets with instance-level task parameters."""


def _open(run_dir: Path, allow_partial: bool) -> Any:
    """The one door: open the run (an unfinished one refused unless ``allow_partial``), and say
    on stderr when it is read unfinished."""
    from ilt_audit.internal.console import err_console
    from ilt_audit.run.directory import open_run

    run = open_run(run_dir, allow_partial=allow_partial)
    if run.partial_note:
        err_console.print(f"[yellow]Warning:[/] {_markup_safe(run.partial_note)}", highlight=False)
    return run


def _markup_safe(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _fail(message: str, code: int = 2) -> typer.Exit:
    from ilt_audit.internal.console import err_console

    err_console.print(
        f"[bold red]Error:[/] {_markup_safe(message)}", highlight=False, soft_wrap=True
    )
    return typer.Exit(code)


def _table_format(fmt: Format) -> None:
    """Refuse ``--format label-studio`` in a command whose result is not a list of suspects."""
    if fmt is Format.label_studio:
        raise _fail(
            "--format label-studio exports suspects for relabelling: use it with `ilt-audit rank`; "
            "here choose table, csv, json or parquet"
        )


def _emit(frame: pd.DataFrame, fmt: Format, output: Path | None, title: str) -> None:
    """Render a result table: Rich on the terminal, or a stable machine format.

    The terminal table shows at most :data:`TABLE_ROWS` rows per task (a person reads the top;
    Rich takes about 0.3 ms a row) and says how many it left out; files and pipes in a machine
    format get every row.
    """
    _table_format(fmt)
    if fmt is Format.table and output is None:
        from rich.console import Console
        from rich.table import Table

        from ilt_audit.internal.console import err_console

        per_task = frame.groupby("task", sort=False) if "task" in frame.columns else None
        shown = per_task.head(TABLE_ROWS) if per_task is not None else frame.head(TABLE_ROWS)
        table = Table(title=_cell(title))
        for column in shown.columns:
            table.add_column(
                str(column), justify="right" if shown[column].dtype.kind in "if" else "left"
            )
        for row in shown.itertuples(index=False):
            table.add_row(*(_cell(v) for v in row))
        Console().print(table)
        if len(shown) < len(frame):
            err_console.print(
                f"{len(frame) - len(shown):,} more rows not shown (the terminal table shows "
                f"{TABLE_ROWS} per task); write them all with --output FILE or --format csv.",
                highlight=False,
            )
        return
    if fmt is Format.parquet and output is None:
        raise _fail("--format parquet needs --output FILE")
    if fmt is Format.table:
        fmt = Format.csv
    from ilt_audit.internal.files import write_atomic

    def write(target: Any) -> None:
        if fmt is Format.csv:
            _csv_safe(frame).to_csv(target, index=False)
        elif fmt is Format.json:
            text = frame.to_json(orient="records", indent=2, force_ascii=False)
            target.write_text(text + "\n") if isinstance(target, Path) else target.write(
                text + "\n"
            )
        else:
            frame.to_parquet(target, index=False)

    if output is None:
        write(sys.stdout)
    else:
        write_atomic(output, write)


TABLE_ROWS = 500  # rows per task in a terminal table
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet reads such a cell as a formula


def _csv_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Text cells that a spreadsheet would run as a formula get a leading ``'`` (OWASP's advice
    on CSV injection); numeric columns (ranks, scores) stay plain numbers."""
    safe = frame.copy()
    for column in safe.columns:
        if safe[column].dtype.kind in "biufc":
            continue
        text = safe[column].astype(str)
        risky = text.str.startswith(FORMULA_START)
        if risky.any():
            safe[column] = safe[column].where(~risky, "'" + text)
    return safe


def _cell(value: Any) -> Any:
    """A table cell as plain text: ids, labels and paths are data, never Rich markup."""
    from rich.text import Text

    if isinstance(value, float):
        return Text(f"{value:.4f}")
    return Text(str(value))


FormatOption = Annotated[
    Format, typer.Option("--format", "-f", help="table (terminal), csv, json or parquet.")
]
OutputOption = Annotated[
    Path | None, typer.Option("--output", "-o", help="Write to this file instead of the terminal.")
]
AllowPartialOption = Annotated[
    bool,
    typer.Option(
        "--allow-partial",
        help="Read a run that did not finish its planned epochs, as it is (the output says so).",
    ),
]
ByOption = Annotated[
    str | None,
    typer.Option(
        "--by",
        help="Score: p_wrong (default: the probability that the label is wrong, from the "
        "network's view of each instance and its log σ²), or one score alone for comparison: "
        "final (log σ² after the last epoch, the paper's), tail, mean, loss (small-loss "
        "baseline), aum (minus the mean classification margin; classification tasks only).",
    ),
]


@app.command()
def init(
    path: Annotated[
        Path, typer.Argument(help="A table (CSV, Parquet, JSON Lines) or a folder of images.")
    ],
    out: Annotated[Path, typer.Option("--out", help="The dataset card (TOML) to write.")],
    task: Annotated[
        list[str] | None,
        typer.Option(
            "--task",
            help="A table's task by hand: NAME=COLUMN:TYPE (regression: NAME=COL1,COL2:regression)"
            "; TYPE classification, regression, segmentation or dense-regression (repeatable).",
        ),
    ] = None,
    input_column: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            help="A table's input: its image column, or its feature columns (repeatable).",
        ),
    ] = None,
    id_column: Annotated[
        str | None, typer.Option("--id", help="A table's column of unique instance ids.")
    ] = None,
    skip: Annotated[
        list[str] | None,
        typer.Option("--skip", help="Leave this column of a table out of the card (repeatable)."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the card (and manifest) if they exist.")
    ] = False,
    allow_outside_paths: Annotated[
        bool,
        typer.Option(
            "--allow-outside-paths",
            help="Let the manifest's paths lead outside the data folder "
            "(writes allow_outside_paths = true).",
        ),
    ] = False,
) -> None:
    """Write a dataset card from a table, an ImageFolder tree or folders of images and masks.

    Every inference is shown; an ambiguous column stops with the options that settle it.

    A card written outside the data's folder names that folder as its root.

    Example: ilt-audit init path/to/images --out my.toml
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from ilt_audit.dataset.layouts import LayoutError, init_card
    from ilt_audit.internal.console import err_console

    def _printable(text: str) -> str:  # a newline in a file name shows as \n
        return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)

    def show(inferences: Any, title: str) -> None:
        if not inferences:
            return
        table = Table(title=title)
        choices = any(note.choices for note in inferences)  # a column only when one is ambiguous
        for column in ("column", "inferred", "why", "choices")[: 4 if choices else 3]:
            table.add_column(column, overflow="fold")
        for note in inferences:
            cells = [_printable(c) for c in (note.subject, note.decision, note.why)]
            cells.append("\n".join(_printable(c) for c in note.choices))
            table.add_row(*(Text(c) for c in cells[: 4 if choices else 3]))
        Console().print(table)

    try:
        result = init_card(
            path,
            out=out,
            tasks=task or (),
            inputs=input_column or (),
            id_column=id_column,
            skip=skip or (),
            force=force,
            allow_outside_paths=allow_outside_paths,
        )
    except LayoutError as exc:
        show(exc.inferences, f"What ilt-audit read in {_printable(str(path))}, so far")
        raise
    show(result.inferences, f"What ilt-audit read in {_printable(str(path))}")
    wrote = _markup_safe(str(result.card))
    if result.manifest is not None:
        wrote += f" and its manifest {_markup_safe(str(result.manifest))}"
    err_console.print(
        f"[green]Wrote[/] {wrote} (checked: it loads). Next: ilt-audit train "
        f"{_markup_safe(str(result.card))} --out runs/{_markup_safe(result.card.stem)}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
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
                f"[yellow]Warning:[/] {_markup_safe(note)}", highlight=False, soft_wrap=True
            ),
        )
    except KeyboardInterrupt:
        raise _fail(
            f"interrupted; every finished epoch is kept in {out}. Continue with --resume.", 130
        ) from None
    if from_env().main:  # under torchrun, rank 0 speaks for the job
        err_console.print(
            f"[green]Done:[/] {result.epochs} epochs in {_markup_safe(str(result.run_dir))}. "
            f"Next: ilt-audit rank {_markup_safe(str(result.run_dir))}",
            highlight=False,
        )


@app.command()
def rank(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `train`.")],
    task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
    top: Annotated[
        str | None, typer.Option(help="Keep the top N (500) or a share (40%) per task.")
    ] = None,
    by: ByOption = None,
    fmt: FormatOption = Format.table,
    output: OutputOption = None,
    allow_partial: AllowPartialOption = False,
) -> None:
    """List, per task, the instances most likely mislabelled, highest score first.

    --format label-studio writes Label Studio tasks, the current label as the pre-annotation,
    and with --output FILE the labelling interface beside it (suffix .label-config.xml).

    Example: ilt-audit rank runs/shapes --task shape --top 5% --format csv

    Example: ilt-audit rank runs/shapes --top 2% --format label-studio --output suspects.json
    """
    from ilt_audit.audit.ranking import DEFAULT_BY
    from ilt_audit.audit.ranking import rank as rank_instances

    if fmt is Format.label_studio:
        _rank_label_studio(run_dir, task, top, by or DEFAULT_BY, output, allow_partial)
        return
    run = _open(run_dir, allow_partial)
    frame = rank_instances(run, task=task, top=top, by=by or DEFAULT_BY)
    _emit(frame, fmt, output, f"Most suspect labels in {run_dir}")
    _print_error_rates(frame.attrs.get("error_rates", {}), frame.attrs.get("notes", []))


def _print_error_rates(rates: dict[str, Any], notes: list[str]) -> None:
    """Each task's estimated error rate, on stderr (stdout stays the machine format)."""
    from ilt_audit.internal.console import err_console

    for name, rate in rates.items():
        err_console.print(
            f"Estimated error rate of {_markup_safe(name)}: {rate['estimate']:.1%} "
            f"(95% interval {rate['low']:.1%}–{rate['high']:.1%}, {rate['n']} labels)",
            highlight=False,
        )
    for note in notes:
        err_console.print(f"[yellow]Note:[/] {_markup_safe(note)}", highlight=False)


def _rank_label_studio(
    run_dir: Path, task: str | None, top: str | None, by: str, output: Path | None, partial: bool
) -> None:
    """``rank --format label-studio``: the tasks as JSON, and the labelling interface beside
    ``--output`` (both checked writable before any work)."""
    import json

    from ilt_audit.internal.console import err_console
    from ilt_audit.internal.files import check_output, write_text_atomic
    from ilt_audit.review.export import label_studio_config, label_studio_tasks

    config = None
    if output is not None:
        check_output(output)
        config = output.with_suffix(LABEL_CONFIG)  # suspects.json: suspects.label-config.xml
        check_output(config)
    run = _open(run_dir, partial)
    tasks = label_studio_tasks(run, task=task, top=top, by=by)
    text = json.dumps(tasks, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    if output is None or config is None:
        sys.stdout.write(text)
        err_console.print(
            "The labelling interface for these tasks is written beside --output FILE, with the "
            f"suffix {LABEL_CONFIG}.",
            highlight=False,
        )
        return
    interface = label_studio_config(run, tasks)
    write_text_atomic(output, text)
    write_text_atomic(config, interface)
    err_console.print(
        f"[green]Label Studio:[/] {len(tasks)} tasks in {_markup_safe(str(output))}; the "
        f"labelling interface in {_markup_safe(str(config))}.",
        highlight=False,
    )


LABEL_CONFIG = ".label-config.xml"  # beside rank --format label-studio --output FILE


@app.command()
def corrupt(
    card: Annotated[Path, typer.Argument(help="The clean dataset card (TOML).")],
    task: Annotated[list[str], typer.Option("--task", help="A task to corrupt (repeatable).")],
    fraction: Annotated[float, typer.Option(help="Share of the instances to corrupt per task.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the corrupted card and manifest.")],
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    noise: Annotated[
        Noise,
        typer.Option(help="Regression noise: add U(min, max) to the label (paper), or replace it."),
    ] = Noise.add,
    mode: Annotated[
        list[str] | None,
        typer.Option(
            "--mode",
            help="The kind of error: MODE for every task it fits, or TASK=MODE (repeatable). "
            "classification: permutation (default), uniform, confusion, pairs; segmentation: "
            "permutation (default), drop-object, shift, boundary, merge; regression: uniform "
            "(default), gaussian, scale, swap; dense-regression: uniform (default), offset, "
            "scale, shift, holes.",
        ),
    ] = None,
    magnitude: Annotated[
        list[str] | None,
        typer.Option(
            "--magnitude",
            help="The mode's size: VALUE or TASK=VALUE (repeatable): pixels for shift (3) and "
            "boundary (2), a share of the std for gaussian and offset (0.5), of the map for "
            "holes (0.25).",
        ),
    ] = None,
    drop_to: Annotated[
        DropTo,
        typer.Option(help="What drop-object and a mask's shift leave: class 0, or ignore_index."),
    ] = DropTo.background,
    confusion: Annotated[
        Path | None,
        typer.Option(
            help="Confusion mode: a CSV confusion matrix (header and first column: class names); "
            "without it, a cross-validated model's."
        ),
    ] = None,
    pairs: Annotated[
        Path | None,
        typer.Option(help="Pairs mode: a CSV of from,to classes; without it, class i → i + 1."),
    ] = None,
) -> None:
    """Corrupt a share of a clean dataset's labels, as in the paper or as --mode says.

    Example: ilt-audit corrupt sample_manifests/shapes/card.toml --task shape --fraction 0.4 --out noisy

    Example: ilt-audit corrupt shapes/card.toml --task seg --mode drop-object --fraction 0.4 --out noisy
    """
    from ilt_audit.corruption.planting import corrupt as corrupt_dataset
    from ilt_audit.corruption.planting import per_task_option
    from ilt_audit.internal.console import err_console

    result = corrupt_dataset(
        card,
        tasks=task,
        fraction=fraction,
        seed=seed,
        out=out,
        noise=noise.value,
        mode=per_task_option(mode or [], "--mode") or None,
        magnitude=per_task_option(magnitude or [], "--magnitude", number=True) or None,
        drop_to=drop_to.value,
        confusion=confusion,
        pairs=pairs,
    )
    counts = ", ".join(f"{name}: {n}" for name, n in result.counts.items())
    err_console.print(
        f"[green]Corrupted[/] {_markup_safe(counts)} labels. Card: "
        f"{_markup_safe(str(result.card_path))}; truth: {_markup_safe(str(result.truth_path))}",
        highlight=False,
    )


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `train`.")],
    truth: Annotated[Path, typer.Option(help="The corruption.parquet written by `corrupt`.")],
    by: ByOption = None,
    fmt: FormatOption = Format.table,
    output: OutputOption = None,
    allow_partial: AllowPartialOption = False,
) -> None:
    """Measure how well the scores find the corrupted labels (paper Table 7, AUROC, AP).

    Example: ilt-audit evaluate runs/noisy --truth noisy/corruption.parquet
    """
    from ilt_audit.audit.evaluation import evaluate as evaluate_run
    from ilt_audit.audit.ranking import DEFAULT_BY

    _table_format(fmt)
    run = _open(run_dir, allow_partial)
    frame = evaluate_run(run, truth, by=by or DEFAULT_BY)
    _emit(frame, fmt, output, f"Detection of corrupted labels in {run_dir}")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `train`.")],
    out: Annotated[Path, typer.Option("--out", help="The HTML file to write.")],
    truth: Annotated[
        Path | None,
        typer.Option(
            help="A corruption.parquet from `corrupt`: split clean/corrupted, add detection figures."
        ),
    ] = None,
    top: Annotated[int, typer.Option(help="Highest-scoring instances shown per task.")] = 20,
    by: ByOption = None,
    allow_partial: AllowPartialOption = False,
) -> None:
    """Write a self-contained HTML report: plots per task and the flagged instances with thumbnails.

    Example: ilt-audit report runs/noisy --truth noisy/corruption.parquet --out report.html
    """
    from ilt_audit.internal.console import err_console
    from ilt_audit.review.report import render_report

    path = render_report(_open(run_dir, allow_partial), out, truth=truth, top=top, by=by)
    err_console.print(f"[green]Report:[/] {_markup_safe(str(path))}", highlight=False)


@app.command()
def gate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `train`.")],
    max_suspect: Annotated[
        str,
        typer.Option(
            "--max-suspect", help="Largest share of suspect instances per task: 2% or 0.02."
        ),
    ] = "2%",
    max_error_rate: Annotated[
        str | None,
        typer.Option(
            "--max-error-rate",
            help="Also fail a task whose estimated error rate is above this: 2% or 0.02.",
        ),
    ] = None,
    task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
    by: ByOption = None,
    junit: Annotated[
        Path | None, typer.Option(help="Also write JUnit XML here (one test case per task).")
    ] = None,
    summary: Annotated[
        Path | None,
        typer.Option(help="Also write a Markdown summary here (e.g. $GITHUB_STEP_SUMMARY)."),
    ] = None,
    fmt: Annotated[
        Format,
        typer.Option(
            "--format",
            "-f",
            help="table (terminal), json (the full result), csv or parquet (the suspects).",
        ),
    ] = Format.table,
    output: OutputOption = None,
    allow_partial: AllowPartialOption = False,
) -> None:
    """Fail (exit 1) when a task has more suspect labels, or a higher estimated error rate, than
    allowed; for CI.

    Example: ilt-audit gate runs/shapes --max-suspect 2% --junit gate.xml --summary gate.md

    Example: ilt-audit gate runs/shapes --max-error-rate 5%
    """
    import json

    import pandas as pd

    from ilt_audit.audit.gate import gate as run_gate
    from ilt_audit.audit.gate import junit_xml, markdown_summary
    from ilt_audit.internal.console import err_console
    from ilt_audit.internal.files import check_output, write_text_atomic

    _table_format(fmt)
    for path in (junit, summary, output):  # checked before any work: one bad, none written
        if path is not None:
            check_output(path)
    result = run_gate(
        _open(run_dir, allow_partial),
        task=task,
        max_suspect=max_suspect,
        by=by,
        max_error_rate=max_error_rate,
    )
    if junit is not None:
        write_text_atomic(junit, junit_xml(result))
    if summary is not None:
        write_text_atomic(summary, markdown_summary(result))
    if fmt is Format.json:
        text = json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n"
        write_text_atomic(output, text) if output is not None else sys.stdout.write(text)
    elif fmt is Format.table and output is None:
        _print_gate(result)
    else:
        parts = [t.suspect_list.assign(task=t.task) for t in result.tasks]
        frame = pd.concat(parts, ignore_index=True)[["rank", "id", "task", "score", "label"]]
        _emit(frame, fmt, output, "")
    for note in result.notes:  # a task the network has not learned passes for want of evidence
        err_console.print(f"[yellow]Note:[/] {_markup_safe(note)}", highlight=False)
    if result.passed:
        within = f"at most {_markup_safe(max_suspect)} suspect"
        if max_error_rate is not None:
            within += f" and an estimated error rate of at most {_markup_safe(max_error_rate)}"
        err_console.print(f"[green]Gate passed:[/] {within} in every task.", highlight=False)
        return
    for t in result.failed:
        reasons = []
        if t.suspects > t.allowed:
            reasons.append(
                f"{t.suspects} of {t.instances} instances suspect ({t.share:.1%}), more than "
                f"{t.limit:.1%} ({t.allowed})"
            )
        if not t.rate_passed:
            reasons.append(
                f"estimated error rate {t.error_rate.estimate:.1%} (95% interval "
                f"{t.error_rate.low:.1%}–{t.error_rate.high:.1%}), more than {t.max_error_rate:.1%}"
            )
        err_console.print(
            f"[bold red]Gate failed:[/] task {_markup_safe(t.task)}: {'; '.join(reasons)}.",
            highlight=False,
        )
    raise typer.Exit(1)


def _print_gate(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=_cell(f"Suspect labels in {result.run_dir} (score {result.score})"))
    columns = ("task", "instances", "suspects", "share", "limit", "cut-off", "error rate", "result")
    for column in columns:
        table.add_column(column, justify="left" if column in ("task", "result") else "right")
    for t in result.tasks:
        verdict = "[green]pass[/]" if t.passed else "[bold red]FAIL[/]"
        rate = "—"
        if t.error_rate is not None:
            rate = f"{t.error_rate.estimate:.1%} ({t.error_rate.low:.1%}–{t.error_rate.high:.1%})"
        table.add_row(
            _cell(t.task),
            str(t.instances),
            str(t.suspects),
            f"{t.share:.1%}",
            f"{t.limit:.1%} ({t.allowed})",
            f"{t.cutoff.threshold:.4g}",
            rate,
            verdict,
        )
    console.print(table)
    for t in result.failed:
        if not t.suspects:  # failed on its estimated error rate alone
            continue
        shown = t.suspect_list.head(20)
        listing = Table(
            title=_cell(
                f"Suspects of {t.task}"
                + (f" (top {len(shown)} of {t.suspects})" if t.suspects > 20 else "")
            )
        )
        for column in ("rank", "id", "score", "label"):
            listing.add_column(column, justify="right" if column in ("rank", "score") else "left")
        for row in shown.itertuples():
            listing.add_row(str(row.rank), _cell(row.id), f"{row.score:.4f}", _cell(row.label))
        console.print(listing)


@app.command()
def review(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `train`.")],
    task: Annotated[str | None, typer.Option(help="Open on this task's suspects.")] = None,
    port: Annotated[int, typer.Option(help="Port to serve on (0: any free port).")] = 8765,
    host: Annotated[
        str,
        typer.Option(help="Address to serve on. Anything but 127.0.0.1 lets others reach it."),
    ] = "127.0.0.1",
    top: Annotated[
        str, typer.Option(help="Suspects listed per task: a count (500) or a share (5%).")
    ] = "5%",
    by: ByOption = None,
    reviewer: Annotated[
        str | None, typer.Option(help="Your name on the decisions (default: your login).")
    ] = None,
    browser: Annotated[
        bool, typer.Option("--browser/--no-browser", help="Open the page in your browser.")
    ] = True,
    export: Annotated[
        Path | None,
        typer.Option("--export", help="Write the decisions to this CSV and exit (no server)."),
    ] = None,
    import_: Annotated[
        Path | None,
        typer.Option(
            "--import",
            help="Check every row of this decisions CSV, record them all, and exit (no server).",
        ),
    ] = None,
    allow_partial: AllowPartialOption = False,
) -> None:
    """Review the suspects in your browser: keep, relabel or drop each one.

    Decisions are saved in RUN_DIR/review.sqlite as you make them; `ilt-audit fix` turns them
    into a corrected dataset. --export/--import exchange them with a spreadsheet.

    Example: ilt-audit review runs/shapes --task seg
    """
    import getpass

    from ilt_audit.internal.console import err_console
    from ilt_audit.internal.files import check_output
    from ilt_audit.review.decisions import DecisionStore

    run = _open(run_dir, allow_partial)
    who = reviewer or getpass.getuser()
    if export is not None or import_ is not None:
        store = DecisionStore(run.path)
        if import_ is not None:
            count = store.import_csv(import_, run.manifest("to check the decisions"), reviewer=who)
            err_console.print(f"Recorded {count} decision(s) from {_markup_safe(str(import_))}")
        if export is not None:
            check_output(export)
            count = store.export_csv(export)
            err_console.print(f"Wrote {count} decision(s) to {_markup_safe(str(export))}")
        return
    from ilt_audit.review.app import bind, open_review, review_app, serve, url_of

    loopback = host in ("127.0.0.1", "localhost", "::1")
    sock = bind(host, port)
    opened = open_review(run, top=top, by=by, reviewer=who, allow_partial=allow_partial)
    names = [t.name for t in opened.tasks]
    if task is not None and task not in names:
        sock.close()
        raise _fail(f"--task {task!r} has no suspects to review; the tasks are: {', '.join(names)}")
    url = url_of(sock, task)
    if not loopback:
        err_console.print(
            f"[yellow]Warning:[/] serving on {_markup_safe(host)}: anyone who can reach this "
            "machine can read the dataset and record decisions.",
            highlight=False,
        )
    total = sum(c["total"] for c in opened.counts().values())
    err_console.print(
        f"Reviewing {total:,} suspects of {_markup_safe(str(run.path))} at {url} (Ctrl+C stops)",
        highlight=False,
    )
    if browser and not os.environ.get("CI"):
        import webbrowser

        webbrowser.open(url)
    serve(review_app(opened, hosts=None if loopback else ["*"]), sock)


@app.command()
def fix(
    card: Annotated[Path, typer.Argument(help="The dataset card the run was trained on (TOML).")],
    decisions: Annotated[
        Path,
        typer.Option(
            "--decisions", help="The run directory whose review.sqlite holds the decisions."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="New or empty folder for the corrected dataset.")
    ],
) -> None:
    """Write a corrected copy of a dataset from a run's review decisions (keep, relabel, drop).

    Example: ilt-audit fix data/card.toml --decisions runs/audit --out data-fixed
    """
    from ilt_audit.internal.console import err_console
    from ilt_audit.review.fix import fix as fix_dataset

    result = fix_dataset(card, decisions=decisions, out=out)
    counts = ", ".join(f"{kind}: {n}" for kind, n in result.counts.items())
    err_console.print(
        f"[green]Fixed:[/] {_markup_safe(counts)} decisions; {result.dropped} instance(s) "
        f"dropped. Card: {_markup_safe(str(result.card_path))}; changes: "
        f"{_markup_safe(str(result.changes_path))}",
        highlight=False,
    )


def main() -> None:
    try:
        app(prog_name="ilt-audit")
    finally:
        try:  # a reader that closed the pipe early (`| head`) is not an error worth a traceback
            sys.stdout.flush()
        except BrokenPipeError:
            _quiet_stdout()
