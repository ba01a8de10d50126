"""A small on-disk cache of JSON results, keyed by a hash of what they were computed from.

It lives in ``$ILT_AUDIT_CACHE``, else ``$XDG_CACHE_HOME/ilt-audit``, else ``~/.cache/ilt-audit``.
A cache that cannot be read or written is ignored: it only ever saves time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ilt_audit.errors import OutputError
from ilt_audit.internal.files import write_text_atomic


def cache_dir() -> Path:
    if os.environ.get("ILT_AUDIT_CACHE"):
        return Path(os.environ["ILT_AUDIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ilt-audit"


def read_cached(kind: str, key: str) -> dict[str, Any] | None:
    """The result stored under ``kind/key``, or None."""
    try:
        value = json.loads((cache_dir() / kind / f"{key}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_cached(kind: str, key: str, value: dict[str, Any]) -> None:
    try:
        write_text_atomic(cache_dir() / kind / f"{key}.json", json.dumps(value), make_folder=True)
    except (OSError, OutputError):
        pass  # a read-only home: the next run checks the files again
