"""The commands that act on the suspects: ``report`` shows them in an HTML page, ``review``
records a person's decisions in the browser, ``fix`` writes the corrected dataset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ilt_audit.cli.common import AllowPartialOption, ByOption, fail, markup_safe, open_run_dir


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

    path = render_report(open_run_dir(run_dir, allow_partial), out, truth=truth, top=top, by=by)
    err_console.print(f"[green]Report:[/] {markup_safe(str(path))}", highlight=False)


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

    run = open_run_dir(run_dir, allow_partial)
    who = reviewer or getpass.getuser()
    if export is not None or import_ is not None:
        store = DecisionStore(run.path)
        if import_ is not None:
            count = store.import_csv(import_, run.manifest("to check the decisions"), reviewer=who)
            err_console.print(f"Recorded {count} decision(s) from {markup_safe(str(import_))}")
        if export is not None:
            check_output(export)
            count = store.export_csv(export)
            err_console.print(f"Wrote {count} decision(s) to {markup_safe(str(export))}")
        return
    from ilt_audit.review.app import bind, open_review, review_app, serve, url_of

    loopback = host in ("127.0.0.1", "localhost", "::1")
    sock = bind(host, port)
    opened = open_review(run, top=top, by=by, reviewer=who, allow_partial=allow_partial)
    names = [t.name for t in opened.tasks]
    if task is not None and task not in names:
        sock.close()
        raise fail(f"--task {task!r} has no suspects to review; the tasks are: {', '.join(names)}")
    url = url_of(sock, task)
    if not loopback:
        err_console.print(
            f"[yellow]Warning:[/] serving on {markup_safe(host)}: anyone who can reach this "
            "machine can read the dataset and record decisions.",
            highlight=False,
        )
    total = sum(c["total"] for c in opened.counts().values())
    err_console.print(
        f"Reviewing {total:,} suspects of {markup_safe(str(run.path))} at {url} (Ctrl+C stops)",
        highlight=False,
    )
    if browser and not os.environ.get("CI"):
        import webbrowser

        webbrowser.open(url)
    serve(review_app(opened, hosts=None if loopback else ["*"]), sock)


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
        f"[green]Fixed:[/] {markup_safe(counts)} decisions; {result.dropped} instance(s) "
        f"dropped. Card: {markup_safe(str(result.card_path))}; changes: "
        f"{markup_safe(str(result.changes_path))}",
        highlight=False,
    )
