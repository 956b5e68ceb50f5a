"""Untrusted text on the terminal: model names and file names from GGUF metadata, haystack
text, model outputs and configuration ids from result files all reach rich. Markup in them
(`[/]`) must print literally, not raise or restyle, and terminal escape sequences must never
reach the user's terminal."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from rich.console import Console
from rich.errors import MarkupError
from rich.markup import escape
from rich.text import Text

# What may hide or reorder text on a terminal or a page: control characters (C0 but tab and
# newline, DEL, C1: ESC starts every ANSI sequence), format characters (the bidirectional
# overrides and isolates U+202A-U+202E and U+2066-U+2069, the marks U+200E, U+200F and U+061C,
# zero-width characters, tag characters...), line and paragraph separators, and lone surrogates
# (which no terminal encoding can write). The categories, not a list: Unicode adds to Cf.
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
# Candidates: every character but printable ASCII, tab and newline. Plain ASCII text, by far the
# most common, is never looked at character by character.
_CONTROL = re.compile(r"[^\t\n\x20-\x7e]+")


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _written_out(found: re.Match[str]) -> str:
    return "".join(_escape(c) if unicodedata.category(c) in _HIDDEN else c for c in found.group())


def visible(text: object) -> str:
    """`text` with every character that could hide or reorder what is shown written out as an
    escape (ESC as \\x1b, RIGHT-TO-LEFT OVERRIDE as \\u202e): safe with markup off."""
    return _CONTROL.sub(_written_out, str(text))


def plain(text: object) -> str:
    """`text` for a rich string with markup on: controls written out, markup escaped."""
    return escape(visible(text))


class SafeConsole(Console):
    """A console that never lets a control character through and never raises on markup:
    every string rich renders (printed text, table cells, titles) passes `render_str`. Values
    from files are still escaped with `plain` where they meet markup, so they print literally."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(emoji=False, highlight=False, **kwargs)  # ":smile:" in a model name stays text

    def render_str(self, text: str, **kwargs: Any) -> Text:
        # Never highlighted: rich's highlighter takes time quadratic in a word's length (a word of
        # 40,000 characters, 8 s). Clipped: a word or a string from a file can be of any length.
        kwargs.update(highlight=False, highlighter=None)
        text = clip(visible(text))
        try:
            return super().render_str(text, **kwargs)
        except MarkupError:
            return super().render_str(text, **{**kwargs, "markup": False})


MAX_SHOWN_WORD = 4096  # characters of one unbroken word on the terminal (PATH_MAX: a path is whole)
MAX_SHOWN_CHARS = 20_000  # characters of one string: a table cell, a printed line
_LONG_WORD = re.compile(rf"\S{{{MAX_SHOWN_WORD + 1},}}")


def clip(text: str) -> str:
    """`text` with every word past MAX_SHOWN_WORD characters, and the whole past
    MAX_SHOWN_CHARS, cut, saying how much was left out."""
    if len(text) <= MAX_SHOWN_WORD:
        return text
    text = _LONG_WORD.sub(_cut, text)
    if len(text) > MAX_SHOWN_CHARS:
        text = f"{text[:MAX_SHOWN_CHARS]}... ({len(text) - MAX_SHOWN_CHARS:,} more characters)"
    return text


def _cut(word: re.Match[str]) -> str:
    return f"{word.group()[:MAX_SHOWN_WORD]}... ({len(word.group()) - MAX_SHOWN_WORD:,} more characters)"
