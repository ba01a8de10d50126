"""Where human output goes: Rich on stderr, so stdout stays clean for machine formats."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

T = TypeVar("T")

err_console = Console(stderr=True)


def progress(transient: bool = True, *, show: bool = True) -> Progress:
    """A progress display on stderr; it shows nothing when stderr is not a terminal, or when
    ``show`` is False (ranks other than 0 of a torchrun job)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=err_console,
        transient=transient,
        disable=not (show and err_console.is_terminal),
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar (on a terminal only)."""
    with progress() as bar:
        job = bar.add_task(description, total=total, info="")
        for item in items:
            yield item
            bar.advance(job)
