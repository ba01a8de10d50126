"""The ``ilt-audit`` command line: parse options, call the library, render the result.

May import: every stage below it (:mod:`ilt_audit.review`, :mod:`ilt_audit.audit`,
:mod:`ilt_audit.training`, :mod:`ilt_audit.corruption`, :mod:`ilt_audit.run`,
:mod:`ilt_audit.dataset`, :mod:`ilt_audit.internal`); it is the top of the package and no stage
imports it. One module per command group, in
the order of the workflow: ``dataset`` (init, corrupt), ``train``, ``audit`` (rank, evaluate,
gate) and ``review`` (report, review, fix), with what they share in ``common``. This module
builds the ``app`` and registers the commands, in the order ``--help`` lists them.

Exit codes (SPEC section 8), decided in one place (:class:`_Guarded`): 0 success; 1 only a gate
over its limit; 2 bad input, usage, an unfinished run, a held lock or an I/O error, as one
``Error: …`` line on stderr (the library's :class:`ilt_audit.errors.IltAuditError`); 3 an
internal error, a bug, with its traceback and a line saying so; 75 preempted (``train`` stopped by
SIGTERM, :class:`ilt_audit.errors.Preempted`: sysexits.h's EX_TEMPFAIL, "try again later", on which
a job script requeues); 130 interrupted. Heavy modules
(torch, pandas) are imported inside the commands so that ``--help`` stays fast.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from ilt_audit import __version__
from ilt_audit.cli import audit, dataset, review, train
from ilt_audit.cli.common import fail, markup_safe
from ilt_audit.errors import IltAuditError, Preempted

BUG = 3  # the exit code of an internal error
PREEMPTED = 75  # EX_TEMPFAIL (sysexits.h): stopped by SIGTERM, finished epochs kept; requeue
INTERRUPTED = 130


class _Guarded(TyperGroup):
    """The command group, with every way out of a command mapped to its exit code."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # typer's own ways out: an exit code, a usage error (2)
        except Preempted as exc:
            from ilt_audit.internal.console import err_console

            err_console.print(
                f"[bold yellow]Stopped:[/] {markup_safe(str(exc))}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(PREEMPTED) from None
        except IltAuditError as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            raise fail("interrupted", INTERRUPTED) from None
        except BrokenPipeError:
            _quiet_stdout()
            raise fail("the output was closed before everything was written") from None
        except MemoryError:
            raise fail(
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


# Registered in the order `ilt-audit --help` lists them.
app.command()(dataset.init)
app.command()(train.train)
app.command()(audit.rank)
app.command()(dataset.corrupt)
app.command()(audit.evaluate)
app.command()(review.report)
app.command()(audit.gate)
app.command()(review.review)
app.command()(review.fix)


def main() -> None:
    try:
        app(prog_name="ilt-audit")
    finally:
        try:  # a reader that closed the pipe early (`| head`) is not an error worth a traceback
            sys.stdout.flush()
        except BrokenPipeError:
            _quiet_stdout()
