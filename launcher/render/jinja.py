"""The package's one Jinja environment: templates live in ``launcher/templates/`` (package data,
``*.j2``) and are loaded by name.

Both environments (plain text and HTML-autoescaped) share the same settings: a missing variable
is an error (``StrictUndefined``), a block tag takes its line with it (``trim_blocks``,
``lstrip_blocks``), and a template's last newline is kept. jinja2 is imported on first use only:
``--help`` paths never load it.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

PACKAGE = "launcher"
FOLDER = "templates"


@lru_cache(maxsize=2)
def environment(autoescape: bool = False) -> Any:
    """The shared environment; ``autoescape=True`` for HTML, ``False`` for text (Markdown, shell)."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader(PACKAGE, FOLDER),
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def template(name: str, autoescape: bool = False) -> Any:
    """``launcher/templates/<name>``, compiled (and cached by Jinja)."""
    return environment(autoescape).get_template(name)


__all__ = ["environment", "template"]
