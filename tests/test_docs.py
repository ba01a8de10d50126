"""The README and docs/ stay true: links resolve, every option is documented, examples run.

In the manner of sqlite-utils' and Rich's documentation tests. An example is run when the line
before its fence is ``<!-- runnable -->`` (or ``<!-- runnable: exit N -->`` when it documents
another exit code); docs/development.md explains the marker and the folder the examples run in.
"""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import typer
from conftest import CliResult

from ilt_audit.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SAMPLES = ROOT / "sample_manifests"
MARKDOWN = sorted(
    [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "CONTRIBUTING.md", *DOCS.rglob("*.md")]
)
EXAMPLE_PAGES = sorted(
    [ROOT / "README.md", *(DOCS / "commands").glob("*.md"), *(DOCS / "layouts").glob("*.md")]
    + [DOCS / "python.md"]
)
COMMAND_PAGES = DOCS / "commands"

FENCE = re.compile(r"^(```+|~~~+)")
MARKER = re.compile(r"^<!--\s*runnable(?::\s*exit\s+(\d+))?\s*-->\s*$")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^[ \t]*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)
TINY_EPOCHS = ["--epochs", "2"]  # appended to every runnable `train`; the last --epochs wins


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# --- reading Markdown -------------------------------------------------------------------------


def prose(text: str) -> str:
    """``text`` with every fenced code block blanked out (its lines kept, so line numbers hold)."""
    lines, fenced = [], None
    for line in text.split("\n"):
        found = FENCE.match(line.lstrip())
        if fenced is None and found:
            fenced = found.group(1)[0] * 3
            lines.append("")
        elif fenced is not None:
            if line.lstrip().startswith(fenced):
                fenced = None
            lines.append("")
        else:
            lines.append(line)
    return "\n".join(lines)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lower-cased, punctuation other than hyphens and
    underscores dropped, spaces made hyphens.

    Example:
        >>> slug("`--model` and `--weights`")
        '--model-and---weights'
    """
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text, not its target
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a Markdown file, repeated ones numbered ``-1``, ``-2``… as GitHub
    numbers them."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose(path.read_text(encoding="utf-8")).split("\n"):
        heading = HEADING.match(line)
        if not heading:
            continue
        base = slug(heading.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> Iterator[tuple[int, str]]:
    """The line number and target of every link and image in the file's prose."""
    text = prose(path.read_text(encoding="utf-8"))
    for pattern in (INLINE_LINK, REFERENCE):
        for found in pattern.finditer(text):
            yield text.count("\n", 0, found.start()) + 1, found.group(1)


# --- links ------------------------------------------------------------------------------------


def test_slugs_follow_github() -> None:
    assert slug("How it works") == "how-it-works"
    assert slug("The data path, and what it holds in memory") == (
        "the-data-path-and-what-it-holds-in-memory"
    )
    assert slug('How "suspect" is decided') == "how-suspect-is-decided"
    assert slug("Where the data lives: `root`") == "where-the-data-lives-root"
    assert (
        slug("`ilt-audit gate RUN_DIR --max-suspect 2%`")
        == "ilt-audit-gate-run_dir---max-suspect-2"
    )
    assert slug("Images: 64x64 RGB, 1 DataLoader workers (`train`'s default)") == (
        "images-64x64-rgb-1-dataloader-workers-trains-default"
    )


@pytest.mark.parametrize("page", MARKDOWN, ids=_relative)
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for line, target in links(page):
        if SCHEME.match(target) or target.startswith("//"):
            continue  # https:, mailto:: not this test's business
        where, _, anchor = target.partition("#")
        file = (page.parent / where).resolve() if where else page
        if not file.exists():
            broken.append(f"{_relative(page)}:{line}: {target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(
                f"{_relative(page)}:{line}: {target}: no heading #{anchor} in {file.name}"
            )
    assert broken == []


# --- options ----------------------------------------------------------------------------------


def commands() -> dict[str, Any]:
    """The app's commands by name (typer's own click objects)."""
    return dict(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_every_command_has_a_page_and_every_page_a_command() -> None:
    pages = {p.stem for p in COMMAND_PAGES.glob("*.md")}
    assert pages == set(commands())


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_option_is_on_its_commands_page(name: str) -> None:
    page = (COMMAND_PAGES / f"{name}.md").read_text(encoding="utf-8")
    options = [
        flag
        for param in commands()[name].params
        if param.param_type_name == "option"
        for flag in (*param.opts, *param.secondary_opts)
    ]
    assert options, name
    assert [flag for flag in options if f"`{flag}" not in page] == []


# --- runnable examples ------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    page: Path
    line: int  # of the fence
    language: str
    code: str
    exit_code: int

    def __str__(self) -> str:
        return f"{_relative(self.page)}:{self.line}"


def examples(page: Path) -> list[Example]:
    """The runnable examples of a page, in order; a marker that is not followed by a fence is an
    error, so that an example is never silently left out."""
    lines = page.read_text(encoding="utf-8").split("\n")
    found = []
    for number, line in enumerate(lines):
        marker = MARKER.match(line.strip())
        if not marker:
            continue
        fence = lines[number + 1] if number + 1 < len(lines) else ""
        opened = re.match(r"^```(bash|python)\s*$", fence)
        assert opened, f"{_relative(page)}:{number + 1}: a runnable marker before {fence!r}"
        end = next(k for k in range(number + 2, len(lines)) if lines[k].startswith("```"))
        code = "\n".join(lines[number + 2 : end])
        exit_code = int(marker.group(1) or 0)
        found.append(Example(page, number + 2, opened.group(1), code, exit_code))
    return found


def shell_commands(code: str) -> list[list[str]]:
    """The commands of a shell example: ``\\`` continues a line, ``#`` starts a comment."""
    joined = re.sub(r"\\\n", " ", code)
    return [words for line in joined.split("\n") if (words := shlex.split(line, comments=True))]


def _copy_rows(source: Path, target: Path, rows: pd.DataFrame, files: list[str]) -> None:
    target.mkdir(parents=True)
    for column in files:
        for name in rows[column]:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / name, target / name)
    rows.to_csv(target / "manifest.csv", index=False)
    shutil.copy(source / "card.toml", target / "card.toml")


@pytest.fixture(scope="module")
def tiny_samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What a reader of the README has, made tiny: sample_manifests/ (24 shapes, every 8th
    penguin) and an ImageFolder tree path/to/images of the same 24 shapes."""
    folder = tmp_path_factory.mktemp("samples")
    shapes = pd.read_csv(SAMPLES / "shapes" / "manifest.csv").head(24)
    _copy_rows(
        SAMPLES / "shapes",
        folder / "sample_manifests" / "shapes",
        shapes,
        ["image", "mask", "depth"],
    )
    penguins = pd.read_csv(SAMPLES / "penguins" / "manifest.csv").iloc[::8]
    _copy_rows(SAMPLES / "penguins", folder / "sample_manifests" / "penguins", penguins, [])
    for row in shapes.itertuples():
        image = folder / "path" / "to" / "images" / str(row.shape) / f"{row.id}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLES / "shapes" / str(row.image), image)
    return folder


RUNNABLE = [page for page in EXAMPLE_PAGES if examples(page)]


def test_the_readme_and_every_command_page_have_runnable_examples() -> None:
    assert set(RUNNABLE) >= {ROOT / "README.md", *COMMAND_PAGES.glob("*.md")}


@pytest.mark.parametrize("page", RUNNABLE, ids=_relative)
def test_runnable_examples_run(
    page: Path,
    tiny_samples: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli: Callable[..., CliResult],
) -> None:
    workspace = tmp_path / "work"
    shutil.copytree(tiny_samples, workspace)
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("ILT_AUDIT_OFFLINE", "1")  # an example never downloads
    for example in examples(page):
        if example.language == "python":
            exec(compile(example.code, str(example), "exec"), {"__name__": "__docs__"})
            continue
        for words in shell_commands(example.code):
            if words[:2] == ["mkdir", "-p"]:
                for folder in words[2:]:
                    Path(folder).mkdir(parents=True, exist_ok=True)
                continue
            assert words[0] == "ilt-audit", f"{example}: not an ilt-audit command: {words}"
            args = words[1:]
            if args[0] == "train" and "--resume" not in args:
                args = [*args, *TINY_EPOCHS]
            result = cli(*args)
            assert result.exit_code == example.exit_code, (
                f"{example}: {shlex.join(words)} exited {result.exit_code}\n"
                f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            )


def test_a_runnable_example_is_read_as_documented(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- runnable: exit 1 -->\n```bash\nilt-audit gate runs/a \\\n"
        "  --max-suspect 0   # none allowed\n```\n\n```bash\nilt-audit review runs/a\n```\n",
        encoding="utf-8",
    )
    (example,) = examples(page)
    assert example.exit_code == 1
    assert shell_commands(example.code) == [["ilt-audit", "gate", "runs/a", "--max-suspect", "0"]]


# --- the front door ---------------------------------------------------------------------------


def test_the_readme_is_a_front_door() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    first = readme.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert first == [
        "pip install -e . && ilt-audit train sample_manifests/shapes/card.toml --out runs/shapes"
        " && ilt-audit rank runs/shapes --top 5",
        'pip install -e ".[test]" && python -m pytest',
    ]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert 'pip install -e ".[test]"' in ci and "python -m pytest" in ci
