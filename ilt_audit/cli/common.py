"""What the commands share: opening a run, the ``Error:`` line, the result table and its machine
formats, and the options that several commands take (--format, --output, --allow-partial, --by).
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    import pandas as pd


TABLE_ROWS = 500  # rows per task in a terminal table
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet reads such a cell as a formula


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"
    label_studio = "label-studio"  # rank only: Label Studio tasks (ilt_audit.review.export)


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


def open_run_dir(run_dir: Path, allow_partial: bool) -> Any:
    """The one door: open the run (an unfinished one refused unless ``allow_partial``), and say
    on stderr when it is read unfinished."""
    from ilt_audit.internal.console import err_console
    from ilt_audit.run.directory import open_run

    run = open_run(run_dir, allow_partial=allow_partial)
    if run.partial_note:
        err_console.print(f"[yellow]Warning:[/] {markup_safe(run.partial_note)}", highlight=False)
    return run


def markup_safe(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def printable(text: str) -> str:
    """Untrusted text on one line: a newline (or another character that is not printable, such
    as U+2028) in a file name shows as its escape, ``\\n``."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def fail(message: str, code: int = 2) -> typer.Exit:
    from ilt_audit.internal.console import err_console

    err_console.print(
        f"[bold red]Error:[/] {markup_safe(printable(message))}", highlight=False, soft_wrap=True
    )
    return typer.Exit(code)


def check_table_format(fmt: Format) -> None:
    """Refuse ``--format label-studio`` in a command whose result is not a list of suspects."""
    if fmt is Format.label_studio:
        raise fail(
            "--format label-studio exports suspects for relabelling: use it with `ilt-audit rank`; "
            "here choose table, csv, json or parquet"
        )


def emit(frame: pd.DataFrame, fmt: Format, output: Path | None, title: str) -> None:
    """Render a result table: Rich on the terminal, or a stable machine format.

    The terminal table shows at most :data:`TABLE_ROWS` rows per task (a person reads the top;
    Rich takes about 0.3 ms a row) and says how many it left out; files and pipes in a machine
    format get every row.
    """
    check_table_format(fmt)
    if fmt is Format.table and output is None:
        from rich.console import Console
        from rich.table import Table

        from ilt_audit.internal.console import err_console

        per_task = frame.groupby("task", sort=False) if "task" in frame.columns else None
        shown = per_task.head(TABLE_ROWS) if per_task is not None else frame.head(TABLE_ROWS)
        table = Table(title=cell(title))
        for column in shown.columns:
            table.add_column(
                str(column), justify="right" if shown[column].dtype.kind in "if" else "left"
            )
        for row in shown.itertuples(index=False):
            table.add_row(*(cell(v) for v in row))
        Console().print(table)
        if len(shown) < len(frame):
            err_console.print(
                f"{len(frame) - len(shown):,} more rows not shown (the terminal table shows "
                f"{TABLE_ROWS} per task); write them all with --output FILE or --format csv.",
                highlight=False,
            )
        return
    if fmt is Format.parquet and output is None:
        raise fail("--format parquet needs --output FILE")
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


def cell(value: Any) -> Any:
    """A table cell as plain text: ids, labels and paths are data, never Rich markup."""
    from rich.text import Text

    if isinstance(value, float):
        return Text(f"{value:.4f}")
    return Text(str(value))
