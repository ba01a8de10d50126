"""The commands that make a dataset card: ``init`` reads a dataset, ``corrupt`` plants wrong
labels in a clean one to measure the audit against."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from ilt_audit.cli.common import markup_safe, printable


class Noise(StrEnum):
    add = "add"
    replace = "replace"


class DropTo(StrEnum):
    background = "background"
    ignore = "ignore"


def init(
    path: Annotated[
        Path,
        typer.Argument(
            help="A table (CSV, Parquet, JSON Lines), a folder of images, or a COCO layout "
            "(a folder with annotations/instances_*.json, or one such file)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="The dataset card (TOML) to write.")],
    task: Annotated[
        list[str] | None,
        typer.Option(
            "--task",
            help="A table's task by hand: NAME=COLUMN:TYPE (regression: NAME=COL1,COL2:regression)"
            "; TYPE classification, regression, segmentation, dense-regression or multi-label "
            "(repeatable).",
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
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            help="A COCO layout's image folder, the one file_name is relative to (default: "
            "<split>/ or <split>2017/ beside annotations/).",
        ),
    ] = None,
) -> None:
    """Write a dataset card from a table, an ImageFolder tree, folders of images and masks, or
    COCO instances files.

    Every inference is shown; an ambiguous column stops with the options that settle it. A COCO
    layout's masks are rasterised once into CARD.masks/ beside the card.

    A card written outside the data's folder names that folder as its root.

    Example: ilt-audit init path/to/images --out my.toml
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from ilt_audit.dataset.layouts import LayoutError, init_card
    from ilt_audit.internal.console import err_console

    def show(inferences: Any, title: str) -> None:
        if not inferences:
            return
        table = Table(title=title)
        choices = any(note.choices for note in inferences)  # a column only when one is ambiguous
        for column in ("column", "inferred", "why", "choices")[: 4 if choices else 3]:
            table.add_column(column, overflow="fold")
        for note in inferences:
            cells = [printable(c) for c in (note.subject, note.decision, note.why)]
            cells.append("\n".join(printable(c) for c in note.choices))
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
            images=images,
        )
    except LayoutError as exc:
        show(exc.inferences, f"What ilt-audit read in {printable(str(path))}, so far")
        raise
    show(result.inferences, f"What ilt-audit read in {printable(str(path))}")
    parts = [str(result.card)]
    if result.manifest is not None:
        parts.append(f"its manifest {result.manifest}")
    parts += [f"{derived.path}/ with {derived.summary}" for derived in result.derived]
    wrote = markup_safe(parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}")
    err_console.print(
        f"[green]Wrote[/] {wrote} (checked: it loads). Next: ilt-audit train "
        f"{markup_safe(str(result.card))} --out runs/{markup_safe(result.card.stem)}",
        highlight=False,
        soft_wrap=True,
    )


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
            "scale, shift, holes; multi-label: swap-tag (default), drop-tag, add-tag.",
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
        f"[green]Corrupted[/] {markup_safe(counts)} labels. Card: "
        f"{markup_safe(str(result.card_path))}; truth: {markup_safe(str(result.truth_path))}",
        highlight=False,
    )
