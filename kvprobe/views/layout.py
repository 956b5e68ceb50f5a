"""What the three pages (a result's, `compare --html`'s, a sweep's) share: the Jinja2
environment over kvprobe/views/templates/ (base.html holds the head, the style sheet and the
layout; report.html, compare.html and sweep.html extend it), and the typed parts the templates
get: a figure drawn inline, a table.

Every value on a page is untrusted text from a file (model names, commands, configuration ids,
cell names). Autoescape is on, and every `{{ value }}` first passes `shown`, so no template can
forget it: markup prints as text, and the characters that could hide or reorder text (ESC,
U+202E...) are written out as `kvprobe.infra.display.visible` writes them on the terminal."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import jinja2
from markupsafe import Markup

from kvprobe.infra.display import visible
from kvprobe.views.figures import Figure, render
from kvprobe.views.fit import FLAG


def shown(value: object) -> object:
    """What `{{ value }}` prints before autoescape: controls and bidirectional characters
    written out. A macro's output (Markup, made from values that passed here) stays as it is."""
    return value if isinstance(value, Markup) else visible(value)


# Loaded from the package (kvprobe/views/templates/, package data): a non-editable install
# finds them wherever it put kvprobe. StrictUndefined: a misspelt name fails, never prints "".
ENVIRONMENT = jinja2.Environment(
    loader=jinja2.PackageLoader("kvprobe.views", "templates"),
    autoescape=True,
    finalize=shown,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


# A cell with digits and no letter: a number, an interval, a percentage, "361 (4,096-8,192)".
_NUMBER = re.compile(r"[^\W\d_]")


def number_text(value: object) -> bool:
    """Whether a cell is a number (the page never wraps one): digits, and no letter."""
    text = str(value)
    return any(ch.isdigit() for ch in text) and _NUMBER.search(text) is None


ENVIRONMENT.tests["number_text"] = number_text


def flag_pairs(value: object) -> Markup:
    """A text with its flags, each with its value, in spans that never wrap (views.fit.FLAG: a
    browser would break "--cache" after its hyphens); the text itself, copied, is unchanged.
    Markup (a macro's output) stays as it is."""
    if isinstance(value, Markup):
        return value
    parts = FLAG.split(str(shown(value)))
    return Markup("").join(
        Markup('<span class="pair">{}</span>').format(p) if i % 2 else Markup.escape(p)
        for i, p in enumerate(parts)
    )


ENVIRONMENT.filters["flag_pairs"] = flag_pairs


def render_page(template: str, **context: Any) -> str:
    """One page from its template."""
    return ENVIRONMENT.get_template(template).render(**context)


@dataclass(frozen=True)
class Picture:
    """A figure on the page, inline as an SVG data URI: drawn (matplotlib, about a second) the
    first time `src` is read, so a page's views are built without drawing anything."""

    figure: Figure

    @property
    def alt(self) -> str:
        return self.figure.title

    @cached_property
    def src(self) -> str:
        return "data:image/svg+xml;base64," + base64.b64encode(render(self.figure, "svg")).decode("ascii")


def draw(pictures: Sequence[Picture]) -> None:
    """Draw these figures now (a page says, figure by figure, whose it is drawing)."""
    for picture in pictures:
        _ = picture.src


@dataclass(frozen=True)
class Swatch:
    """A configuration's colour and marker, drawn beside its name in a table (as on the figures)."""

    colour: str  # hex, from kvprobe.views.figures' palette (never from a file)
    glyph: str
    name: str  # the colour's name, for the tooltip and the tests


@dataclass(frozen=True)
class Table:
    """A table: a header row and rows of cells, all text. A first cell that names a
    configuration gets its swatch."""

    header: Sequence[str]
    rows: Sequence[Sequence[str]] = field(default_factory=list)
    swatches: Mapping[str, Swatch] = field(default_factory=dict)
