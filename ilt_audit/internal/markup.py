"""Untrusted text made safe for the markup it goes into (JUnit XML, Label Studio's XML and JSON)."""

from __future__ import annotations

import re
from typing import Any

# the characters XML 1.0 can hold
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: Any) -> str:
    """Text XML 1.0 can hold: each character it cannot (NUL, ESC, a lone surrogate) as U+FFFD."""
    return _NOT_XML.sub("\ufffd", str(text))
