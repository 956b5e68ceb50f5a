"""Untrusted text on the terminal: model names and file names from GGUF metadata, haystack
text, model outputs and configuration ids from result files all reach rich. Markup in them
(`[/]`) must print literally, not raise or restyle, and terminal escape sequences must never
reach the user's terminal."""

from __future__ import annotations

import html
import re
from typing import Any

from rich.console import Console
from rich.errors import MarkupError
from rich.markup import escape
from rich.text import Text

# C0 controls except tab and newline, DEL, and C1 controls (ESC starts every ANSI sequence).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def visible(text: object) -> str:
    """`text` with control characters written out (ESC as \\x1b): safe with markup off."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def html_text(text: object) -> str:
    """`text` for an HTML page: escaped, with control characters written out, so none reaches
    the page as a raw byte."""
    return html.escape(visible(text), quote=True)


def plain(text: object) -> str:
    """`text` for a rich string with markup on: controls written out, markup escaped."""
    return escape(visible(text))


class SafeConsole(Console):
    """A console that never lets a control character through and never raises on markup:
    every string rich renders (printed text, table cells, titles) passes `render_str`. Values
    from files are still escaped with `plain` where they meet markup, so they print literally."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(emoji=False, **kwargs)  # ":smile:" in a model name stays text

    def render_str(self, text: str, **kwargs: Any) -> Text:
        text = visible(text)
        try:
            return super().render_str(text, **kwargs)
        except MarkupError:
            return super().render_str(text, **{**kwargs, "markup": False})
