"""Named blocks in a Markdown file, so that several benchmark scripts can share one report.

A block is the text between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``, each marker on a
line of its own. A script owns the blocks it names: it replaces them (or appends them at the end
when absent) and leaves every other byte of the file as it was.

Example:
    >>> text = "# Benchmarks\\n"
    >>> text = replace_block(text, "throughput", "| figure | measured |")
    >>> read_block(text, "throughput")
    '| figure | measured |'
    >>> [name for name, _ in blocks(text)]
    ['throughput']
"""

from __future__ import annotations

import re
from pathlib import Path

# A whole block: its name, then its content without the newlines that hug the markers.
_BLOCK = re.compile(r"<!-- ([\w-]+):start -->\n?(.*?)\n?<!-- \1:end -->", re.S)


def markers(name: str) -> tuple[str, str]:
    """The start and end markers of block ``name``."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: a header row, then one row per list of cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def block(name: str, content: str) -> str:
    """Block ``name`` holding ``content``, markers included."""
    start, end = markers(name)
    return f"{start}\n{content.strip(chr(10))}\n{end}"


def blocks(text: str) -> list[tuple[str, str]]:
    """Every top-level block of ``text``, in order: ``(name, whole block with its markers)``."""
    return [(match.group(1), match.group(0)) for match in _BLOCK.finditer(text)]


def foreign_blocks(text: str, own: set[str] | frozenset[str]) -> list[str]:
    """The blocks of ``text`` whose names are not in ``own``, whole and in order."""
    return [whole for name, whole in blocks(text) if name not in own]


def read_block(text: str, name: str) -> str | None:
    """The content of block ``name`` (without its markers), or None when absent."""
    for match in _BLOCK.finditer(text):
        if match.group(1) == name:
            return match.group(2)
    return None


def replace_block(text: str, name: str, content: str) -> str:
    """``text`` with block ``name`` holding ``content``: replaced where it is, else appended."""
    new = block(name, content)
    for match in _BLOCK.finditer(text):
        if match.group(1) == name:
            return text[: match.start()] + new + text[match.end() :]
    head = text.rstrip("\n")
    return (head + "\n\n" if head else "") + new + "\n"


def write_block(path: Path, name: str, content: str) -> None:
    """Replace (or append) block ``name`` in the Markdown file ``path``; create it if missing."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_block(text, name, content), encoding="utf-8")
