"""The Jinja2 environment that the report and the review app draw their pages from."""

from __future__ import annotations

import jinja2


def templates() -> jinja2.Environment:
    """The Jinja2 environment of the package's templates (the review app's and the report's):
    autoescaping on for every template, undefined names an error."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("ilt_audit.review", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
