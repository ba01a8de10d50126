"""The commands that read a run's scores: ``rank`` lists the suspects, ``evaluate`` measures
them against planted errors, ``gate`` fails a CI job on too many."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ilt_audit.cli.common import (
    AllowPartialOption,
    ByOption,
    Format,
    FormatOption,
    OutputOption,
    cell,
    check_table_format,
    emit,
    markup_safe,
    open_run_dir,
)


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
    run = open_run_dir(run_dir, allow_partial)
    frame = rank_instances(run, task=task, top=top, by=by or DEFAULT_BY)
    emit(frame, fmt, output, f"Most suspect labels in {run_dir}")
    _print_error_rates(frame.attrs.get("error_rates", {}), frame.attrs.get("notes", []))


def _print_error_rates(rates: dict[str, Any], notes: list[str]) -> None:
    """Each task's estimated error rate, on stderr (stdout stays the machine format)."""
    from ilt_audit.internal.console import err_console

    for name, rate in rates.items():
        err_console.print(
            f"Estimated error rate of {markup_safe(name)}: {rate['estimate']:.1%} "
            f"(95% interval {rate['low']:.1%}–{rate['high']:.1%}, {rate['n']} labels)",
            highlight=False,
        )
    for note in notes:
        err_console.print(f"[yellow]Note:[/] {markup_safe(note)}", highlight=False)


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
    run = open_run_dir(run_dir, partial)
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
        f"[green]Label Studio:[/] {len(tasks)} tasks in {markup_safe(str(output))}; the "
        f"labelling interface in {markup_safe(str(config))}.",
        highlight=False,
    )


LABEL_CONFIG = ".label-config.xml"  # beside rank --format label-studio --output FILE


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

    check_table_format(fmt)
    run = open_run_dir(run_dir, allow_partial)
    frame = evaluate_run(run, truth, by=by or DEFAULT_BY)
    emit(frame, fmt, output, f"Detection of corrupted labels in {run_dir}")


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

    check_table_format(fmt)
    for path in (junit, summary, output):  # checked before any work: one bad, none written
        if path is not None:
            check_output(path)
    result = run_gate(
        open_run_dir(run_dir, allow_partial),
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
        emit(frame, fmt, output, "")
    for note in result.notes:  # a task the network has not learned passes for want of evidence
        err_console.print(f"[yellow]Note:[/] {markup_safe(note)}", highlight=False)
    if result.passed:
        within = f"at most {markup_safe(max_suspect)} suspect"
        if max_error_rate is not None:
            within += f" and an estimated error rate of at most {markup_safe(max_error_rate)}"
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
            f"[bold red]Gate failed:[/] task {markup_safe(t.task)}: {'; '.join(reasons)}.",
            highlight=False,
        )
    raise typer.Exit(1)


def _print_gate(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=cell(f"Suspect labels in {result.run_dir} (score {result.score})"))
    columns = ("task", "instances", "suspects", "share", "limit", "cut-off", "error rate", "result")
    for column in columns:
        table.add_column(column, justify="left" if column in ("task", "result") else "right")
    for t in result.tasks:
        verdict = "[green]pass[/]" if t.passed else "[bold red]FAIL[/]"
        rate = "—"
        if t.error_rate is not None:
            rate = f"{t.error_rate.estimate:.1%} ({t.error_rate.low:.1%}–{t.error_rate.high:.1%})"
        table.add_row(
            cell(t.task),
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
            title=cell(
                f"Suspects of {t.task}"
                + (f" (top {len(shown)} of {t.suspects})" if t.suspects > 20 else "")
            )
        )
        for column in ("rank", "id", "score", "label"):
            listing.add_column(column, justify="right" if column in ("rank", "score") else "left")
        for row in shown.itertuples():
            listing.add_row(str(row.rank), cell(row.id), f"{row.score:.4f}", cell(row.label))
        console.print(listing)
