"""Open an HTML file in a real headless browser (Debian's ``chromium``) and say what it saw.

:func:`load_page` copies the page, puts a small probe script at the top of its ``<head>`` and lets
Chromium load it with the network blocked. The probe records every error the page raises (script
errors, ``console.error``, resources that fail to load, Content-Security-Policy violations) and,
once the page has loaded, whether each ``<img>`` decoded to a picture; ``--dump-dom`` hands that
back as an attribute of ``<body>``. The page's own Content-Security-Policy is kept, except that
inline scripts are allowed so that the probe can run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# CI sets this so that a missing browser fails the run instead of skipping its tests.
REQUIRED = os.environ.get("ILT_AUDIT_REQUIRE_BROWSER", "") not in ("", "0")
MISSING = (
    "needs Debian's chromium, which is not installed (apt-get install chromium); "
    "set ILT_AUDIT_REQUIRE_BROWSER=1 to make this a failure instead of a skip"
)


def require_chromium() -> str:
    """Chromium's path; without it, skip the calling test (fail it when CI requires a browser)."""
    if CHROMIUM is not None:
        return CHROMIUM
    if REQUIRED:
        pytest.fail(MISSING.split(";")[0] + " and ILT_AUDIT_REQUIRE_BROWSER is set", pytrace=False)
    pytest.skip(MISSING)


FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # any attempt to reach the network fails
)

_PROBE = """<script>
(() => {
  const errors = [];
  addEventListener("error", (e) => {
    const target = e.target && e.target.tagName ? e.target.tagName + " failed to load" : "";
    errors.push(e.message || target || "error");
  }, true);
  addEventListener("securitypolicyviolation", (e) => errors.push("CSP blocked " + e.blockedURI));
  const consoleError = console.error;
  console.error = (...args) => { errors.push(args.join(" ")); consoleError(...args); };
  addEventListener("load", () => {
    const images = [...document.images].map((img) => ({
      alt: img.alt, ok: img.complete && img.naturalWidth > 0, width: img.naturalWidth,
    }));
    document.body.setAttribute("data-probe", JSON.stringify({ images, errors }));
  });
})();
</script>"""


@dataclass(frozen=True)
class PageCheck:
    images: list[dict[str, object]]  # alt, ok (decoded with a non-zero width), width
    errors: list[str]  # what the page raised while loading
    log: str  # Chromium's stderr, for failure messages

    @property
    def broken_images(self) -> list[str]:
        return [str(image["alt"]) for image in self.images if not image["ok"]]


def load_page(page: Path, workdir: Path, *, timeout: float = 120) -> PageCheck:
    """Load ``page`` in headless Chromium and return what the probe recorded."""
    chromium = require_chromium()
    text = page.read_text(encoding="utf-8")
    text = re.sub(
        r"(Content-Security-Policy\"\s+content=\")", r"\1script-src 'unsafe-inline'; ", text
    )
    probed = workdir / f"probed-{page.name}"
    probed.write_text(text.replace("<head>", "<head>" + _PROBE, 1), encoding="utf-8")
    result = subprocess.run(
        [
            chromium,
            *FLAGS,
            f"--user-data-dir={workdir / 'chromium-profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probed.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    match = re.search(r"data-probe=\"([^\"]*)\"", result.stdout)
    if match is None:
        raise AssertionError(
            f"the probe did not report (exit {result.returncode}):\n{result.stderr[-3000:]}"
        )
    raw = match.group(1).replace("&quot;", '"').replace("&amp;", "&")
    found = json.loads(raw)
    return PageCheck(found["images"], found["errors"], result.stderr)


def screenshot(
    page: Path, out: Path, workdir: Path, *, width: int = 1200, height: int = 2400
) -> Path:
    """Save a PNG of the top ``width`` x ``height`` pixels of the page."""
    chromium = require_chromium()
    subprocess.run(
        [
            chromium,
            *FLAGS,
            f"--user-data-dir={workdir / 'chromium-profile'}",
            f"--screenshot={out.resolve()}",
            f"--window-size={width},{height}",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        check=True,
        timeout=120,
    )
    return out
