"""The ``ilt-audit`` command line: parse options, call the library, render the result.

Library errors (:class:`ilt_audit.errors.IltAuditError`) become one ``Error: …`` line on stderr and
exit code 2. Heavy modules (torch, pandas) are imported inside the commands so that ``--help``
stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ilt_audit import __version__
from ilt_audit.errors import IltAuditError

if TYPE_CHECKING:
    import pandas as pd

app = typer.Typer(
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


class Noise(StrEnum):
    add = "add"
    replace = "replace"


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


def _fail(message: str, code: int = 2) -> typer.Exit:
    from rich.markup import escape

    from ilt_audit.internal.console import err_console

    err_console.print(f"[bold red]Error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn the library's named errors into ``Error: …`` and exit code 2."""
    try:
        yield
    except IltAuditError as exc:
        raise _fail(str(exc)) from None


def _emit(frame: pd.DataFrame, fmt: Format, output: Path | None, title: str) -> None:
    """Render a result table: Rich on the terminal, or a stable machine format.

    The terminal table shows at most :data:`TABLE_ROWS` rows per task (a person reads the top;
    Rich takes about 0.3 ms a row) and says how many it left out; files and pipes in a machine
    format get every row.
    """
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
ByOption = Annotated[
    str | None,
    typer.Option("--by", help="Score: final (default), tail, mean, or loss (small-loss baseline)."),
]


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
) -> None:
    """Train a multi-task network with ILT parameters and write the run directory.

    Example: ilt-audit train sample_manifests/shapes/card.toml --out runs/shapes
    """
    import dataclasses

    from ilt_audit.internal.console import err_console
    from ilt_audit.training import TrainConfig
    from ilt_audit.training import train as run_training

    if resume and epochs is None:  # resume to the run's own planned length
        from ilt_audit.rundir import read_config

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

    with _errors():
        try:
            result = run_training(
                card, out, config=config, resume=resume, rescan=rescan, on_epoch=report
            )
        except KeyboardInterrupt:
            raise _fail(
                f"interrupted; every finished epoch is kept in {out}. Continue with --resume.", 130
            ) from None
    err_console.print(
        f"[green]Done:[/] {result.epochs} epochs in {result.run_dir}. "
        f"Next: ilt-audit rank {result.run_dir}"
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
) -> None:
    """List, per task, the instances most likely mislabelled, highest score first.

    Example: ilt-audit rank runs/shapes --task shape --top 5% --format csv
    """
    from ilt_audit.ranking import DEFAULT_BY
    from ilt_audit.ranking import rank as rank_instances

    with _errors():
        frame = rank_instances(run_dir, task=task, top=top, by=by or DEFAULT_BY)
        _emit(frame, fmt, output, f"Most suspect labels in {run_dir}")


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
) -> None:
    """Corrupt a share of a clean dataset's labels, as in the paper, to measure detection.

    Example: ilt-audit corrupt sample_manifests/shapes/card.toml --task shape --fraction 0.4 --out noisy
    """
    from ilt_audit.corruption import corrupt as corrupt_dataset
    from ilt_audit.internal.console import err_console

    with _errors():
        result = corrupt_dataset(
            card, tasks=task, fraction=fraction, seed=seed, out=out, noise=noise.value
        )
    counts = ", ".join(f"{name}: {n}" for name, n in result.counts.items())
    err_console.print(
        f"[green]Corrupted[/] {counts} labels. Card: {result.card_path}; truth: {result.truth_path}"
    )


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `train`.")],
    truth: Annotated[Path, typer.Option(help="The corruption.parquet written by `corrupt`.")],
    by: ByOption = None,
    fmt: FormatOption = Format.table,
    output: OutputOption = None,
) -> None:
    """Measure how well the scores find the corrupted labels (paper Table 7, AUROC, AP).

    Example: ilt-audit evaluate runs/noisy --truth noisy/corruption.parquet
    """
    from ilt_audit.evaluation import evaluate as evaluate_run
    from ilt_audit.ranking import DEFAULT_BY

    with _errors():
        frame = evaluate_run(run_dir, truth, by=by or DEFAULT_BY)
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
) -> None:
    """Write a self-contained HTML report: plots per task and the flagged instances with thumbnails.

    Example: ilt-audit report runs/noisy --truth noisy/corruption.parquet --out report.html
    """
    from ilt_audit.internal.console import err_console
    from ilt_audit.report import render_report

    with _errors():
        path = render_report(run_dir, out, truth=truth, top=top, by=by)
    err_console.print(f"[green]Report:[/] {path}", highlight=False)


@app.command()
def gate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `train`.")],
    max_suspect: Annotated[
        str,
        typer.Option(
            "--max-suspect", help="Largest share of suspect instances per task: 2% or 0.02."
        ),
    ] = "2%",
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
) -> None:
    """Fail (exit 1) when a task has more suspect labels than allowed; for CI.

    Example: ilt-audit gate runs/shapes --max-suspect 2% --junit gate.xml --summary gate.md
    """
    import json

    import pandas as pd

    from ilt_audit.gate import gate as run_gate
    from ilt_audit.gate import junit_xml, markdown_summary
    from ilt_audit.internal.console import err_console
    from ilt_audit.internal.files import write_text_atomic

    with _errors():
        result = run_gate(run_dir, task=task, max_suspect=max_suspect, by=by)
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
    if result.passed:
        err_console.print(
            f"[green]Gate passed:[/] at most {max_suspect} suspect in every task.", highlight=False
        )
        return
    for t in result.failed:
        err_console.print(
            f"[bold red]Gate failed:[/] task {t.task}: {t.suspects} of {t.instances} instances suspect "
            f"({t.share:.1%}), more than {t.limit:.1%} ({t.allowed}).",
            highlight=False,
        )
    raise typer.Exit(1)


def _print_gate(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=_cell(f"Suspect labels in {result.run_dir} (score {result.score})"))
    for column in ("task", "instances", "suspects", "share", "limit", "cut-off", "result"):
        table.add_column(column, justify="left" if column in ("task", "result") else "right")
    for t in result.tasks:
        verdict = "[green]pass[/]" if t.passed else "[bold red]FAIL[/]"
        table.add_row(
            _cell(t.task),
            str(t.instances),
            str(t.suspects),
            f"{t.share:.1%}",
            f"{t.limit:.1%} ({t.allowed})",
            f"{t.cutoff.threshold:.4g}",
            verdict,
        )
    console.print(table)
    for t in result.failed:
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


def main() -> None:
    app(prog_name="ilt-audit")
