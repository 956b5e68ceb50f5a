"""Figures of a result: plain data first (what is drawn: series, intervals, markers), then drawn
with matplotlib (the `plot` extra) as SVG or PNG. Tests check the data, not the pixels; the
probes build the data (`Probe.figures`), this module only draws it.

Colours: Okabe-Ito (colour-blind safe), one colour and one marker per configuration on every
figure and table of every page (`config_style`, by the configuration's name, never by its place
in a figure): the reference is black and dashed, the document's own text grey and dotted, so
neither looks like a configuration. Verdicts (the page's badges, a sweep's decision heatmaps)
are neutral greys with an icon and their word (`VERDICTS`), so that no verdict reads as a
configuration. `colour_words` says in words what each colour means (the docs' text is checked
against it).
"""

from __future__ import annotations

import contextlib
import io
import textwrap
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from kvprobe.api.figures import Figure, Heatmap, LineFigure, Marker, Point, Scatter, Series, summary_series
from kvprobe.infra.display import visible
from kvprobe.infra.errors import UserError
from kvprobe.infra.paths import write_atomically

__all__ = [
    "Figure",
    "Heatmap",
    "LineFigure",
    "Marker",
    "Point",
    "Scatter",
    "Series",
    "Style",
    "VerdictLook",
    "colour_words",
    "config_style",
    "configuration_colours",
    "contrast_ratio",
    "render",
    "summary_series",
    "verdict_look",
    "write_png",
]

OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442")
REFERENCE_COLOUR = "#000000"
INSTALL_PLOT = 'pip install "kvprobe[plot]"'
TITLE_CHARS = 80  # what fits on one line of a 7.2-inch figure at 10 points
LEGEND_INSIDE = 4  # legend entries that fit inside the axes without covering the data


@dataclass(frozen=True)
class VerdictLook:
    """How a verdict is shown, on the page's badges and on the figures coloured by it: in
    neutral greys that no configuration is drawn in (a verdict must never read as a
    configuration), told apart by lightness, outline, icon and the word itself, so also in
    greyscale and to every colour vision. Text on its fill: contrast 7:1 at least (WCAG AAA)."""

    fill: str  # the word's background, a heatmap cell, a scatter point
    ink: str  # the text on the fill
    edge: str  # the outline
    dash: str  # the outline's CSS style
    icon: str  # before the word


VERDICT_EDGE = "#404040"  # dark grey: 10.4:1 on white
VERDICT_INK = "#222222"  # the page's own text colour
VERDICTS = {
    "reference": VerdictLook("#FFFFFF", VERDICT_INK, "#FFFFFF", "solid", ""),  # no verdict: no box
    "equivalent": VerdictLook("#FFFFFF", VERDICT_INK, VERDICT_EDGE, "solid", "✓"),  # white, outlined
    "undecided": VerdictLook("#D9D9D9", VERDICT_INK, VERDICT_EDGE, "dashed", "?"),  # light grey, dashed
    "worse": VerdictLook(VERDICT_EDGE, "#FFFFFF", VERDICT_EDGE, "solid", "✗"),  # dark grey, filled
}
# The figures coloured by decision (a sweep's heatmaps and frontiers): the verdicts' fills; the
# reference, where one is drawn, as the reference always is.
GROUP_COLOURS = {"reference": REFERENCE_COLOUR} | {
    group: look.fill for group, look in VERDICTS.items() if group != "reference"
}


def contrast_ratio(a: str, b: str) -> float:
    """WCAG 2's contrast ratio of two colours "#RRGGBB" (1 to 21; text wants 4.5 at least)."""

    def luminance(colour: str) -> float:
        rgb = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
        r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    dark, light = sorted([luminance(a), luminance(b)])
    return (light + 0.05) / (dark + 0.05)


def verdict_look(status: str) -> VerdictLook:
    """A verdict's look; a status kvprobe does not know is shown as undecided (nothing decided)."""
    return VERDICTS.get(status, VERDICTS["undecided"])


# The markers as characters, for the page's tables and badges (the same shape beside the name).
GLYPHS = {"o": "●", "D": "◆", "v": "▼", "P": "✚", "X": "✖", "h": "⬢", "p": "⬟", "*": "★", "s": "■",
          "<": "◀", ">": "▶", "x": "×"}  # fmt: skip


@dataclass(frozen=True)
class Style:
    """How one configuration is drawn everywhere: colour (hex and its name), marker, line."""

    colour: str
    name: str
    marker: str
    line: str = "-"

    @property
    def glyph(self) -> str:
        return GLYPHS.get(self.marker, "●")


COLOUR_NAMES = {
    "#000000": "black", "#E69F00": "orange", "#56B4E9": "sky blue", "#009E73": "bluish green",
    "#0072B2": "blue", "#D55E00": "vermillion", "#CC79A7": "reddish purple", "#F0E442": "yellow",
    "#999999": "grey", "#404040": "dark grey", "#D9D9D9": "light grey", "#FFFFFF": "white",
}  # fmt: skip
REFERENCE_STYLE = Style(REFERENCE_COLOUR, "black", "s", "--")
TEXT_STYLE = Style("#999999", "grey", "x", ":")  # "real text": the document's own, no configuration
TEXT_LABEL = "real text"  # a series whose label starts so is drawn in TEXT_STYLE
# The cache types llama.cpp takes, each its own colour and marker; "^" stays free for onsets.
CACHE_STYLES = {
    "q8_0": ("#0072B2", "o"), "q4_0": ("#D55E00", "D"), "q4_1": ("#E69F00", "v"),
    "q5_0": ("#009E73", "P"), "q5_1": ("#CC79A7", "X"), "iq4_nl": ("#56B4E9", "h"),
    # Full precision when it is not the reference (a second weight file's f16): squares.
    "f16": ("#CC79A7", "s"), "bf16": ("#56B4E9", "s"), "f32": ("#E69F00", "s"),
}  # fmt: skip
FALLBACK_MARKERS = ("o", "D", "v", "P", "X", "h", "p", "*")


def configuration_colours() -> set[str]:
    """Every colour a configuration may be drawn in (the reference and real text included):
    no verdict may look like one of them."""
    cached = {colour for colour, _ in CACHE_STYLES.values()}
    return {c.upper() for c in {*OKABE_ITO, *cached, REFERENCE_STYLE.colour, TEXT_STYLE.colour}}


def _split_style(config: str) -> Style | None:
    """A split K/V pair ("k=q8_0,v=f16"): the colour of its quantized type, K alone dash-dotted
    with a left triangle, V alone dotted with a right one, both quantized a star in K's colour."""
    parts = dict(p.split("=", 1) for p in config.split(",") if "=" in p)
    k, v = parts.get("k"), parts.get("v")
    if k is None or v is None or k not in CACHE_STYLES or v not in CACHE_STYLES:
        return None
    full = ("f16", "bf16", "f32")
    if v in full and k not in full:
        colour, marker, line = CACHE_STYLES[k][0], "<", "-."
    elif k in full and v not in full:
        colour, marker, line = CACHE_STYLES[v][0], ">", ":"
    else:
        colour, marker, line = CACHE_STYLES[k][0], "*", "-."
    return Style(colour, COLOUR_NAMES[colour], marker, line)


def config_style(config: str, *, reference: bool = False) -> Style:
    """A configuration's colour (and the colour's name), marker and line, the same on every
    figure and table: the reference black and dashed; a cache type (q8_0, q4_0...) its own; a
    split K/V pair its quantized type's colour with its own marker and line; "real text" grey
    and dotted; any other name a palette colour fixed by its name (crc32)."""
    if config.startswith(TEXT_LABEL):
        return TEXT_STYLE
    if config.startswith(("old ", "new ")):  # compare --html: old dotted, new as always
        own = config_style(config[4:], reference=reference)
        return Style(own.colour, own.name, own.marker, ":") if config.startswith("old ") else own
    if reference:
        return REFERENCE_STYLE
    # Two weight files ("ref:q4_0", "test:q4_0"): the cache type's colour, the test weights dashed.
    weights, _, name = config.rpartition(":")
    if name in CACHE_STYLES:
        colour, marker = CACHE_STYLES[name]
        return Style(colour, COLOUR_NAMES[colour], marker, "--" if weights == "test" else "-")
    if (split := _split_style(name)) is not None:
        return split
    n = zlib.crc32(config.encode("utf-8"))
    colour = OKABE_ITO[n % len(OKABE_ITO)]
    return Style(colour, COLOUR_NAMES[colour], FALLBACK_MARKERS[(n // 7) % len(FALLBACK_MARKERS)])


def figure_styles(labels: Sequence[str], references: Sequence[bool]) -> list[Style]:
    """Each series' style (`config_style`); where two in one figure would look alike (names
    outside the table), the later keeps its colour with the first free marker and line."""
    taken: set[tuple[str, str, str]] = set()
    styles = []
    for label, ref in zip(labels, references, strict=True):
        own = config_style(label, reference=ref)
        others = [Style(own.colour, own.name, m, ln) for ln in ("-", "-.", ":") for m in FALLBACK_MARKERS]
        style = next((c for c in [own, *others] if (c.colour, c.marker, c.line) not in taken), own)
        taken.add((style.colour, style.marker, style.line))
        styles.append(style)
    return styles


def colour_words() -> dict[str, str]:
    """What each colour word means on the figures, for the docs' text to be checked against:
    each cache type's colour, the reference's, real text's, the decisions' (sweep heatmap), and
    the difference heatmap's ends (PuOr: a loss orange, a gain purple)."""
    words = {f"config {c}": COLOUR_NAMES[colour] for c, (colour, _) in CACHE_STYLES.items()}
    words |= {"reference": REFERENCE_STYLE.name, "real text": TEXT_STYLE.name}
    words |= {f"decision {g}": COLOUR_NAMES[c] for g, c in GROUP_COLOURS.items()}
    words |= {"heatmap loss": "orange", "heatmap gain": "purple", "not measured": "grey (hatched)"}
    return words


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError(f"figures need matplotlib: {INSTALL_PLOT}") from None
    return plt


def render(figure: Figure, fmt: str = "svg") -> bytes:
    """The figure drawn as SVG or PNG bytes."""
    with _drawn(figure, draw=False) as (fig, _, _):  # savefig draws it: once is enough
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
        return buf.getvalue()


@dataclass(frozen=True)
class Layout:
    """Where the parts of a drawn figure landed, in pixels (for the tests of overlaps)."""

    figure: Any  # every box: matplotlib Bbox
    axes: Any
    title: Any
    texts: list[Any]  # the points' labels (a scatter), or the cells' texts (a heatmap)
    legend: Any | None
    y_ticks: list[float]  # the y axis's major tick values inside its limits
    drawn: Any  # the box around everything drawn, colour bar and its tick labels included
    x_tick_labels: list[Any]  # the x axis's tick labels shown


def layout(figure: Figure) -> Layout:
    """The figure drawn, and where its title, labels and legend landed."""
    with _drawn(figure) as (fig, ax, labels):
        renderer = fig.canvas.get_renderer()
        legend = ax.get_legend()
        low, high = ax.get_ylim()
        return Layout(
            fig.bbox, ax.get_window_extent(renderer), ax.title.get_window_extent(renderer),
            [t.get_window_extent(renderer) for t in labels],
            legend.get_window_extent(renderer) if legend is not None else None,
            [float(v) for v in ax.get_yticks() if low <= v <= high],
            fig.get_tightbbox(renderer).transformed(fig.dpi_scale_trans),
            [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_visible() and t.get_text()],
        )  # fmt: skip


@contextlib.contextmanager
def _drawn(figure: Figure, *, draw: bool = True) -> Iterator[tuple[Any, Any, list[Any]]]:
    """The figure drawn with matplotlib (with `draw`; else laid out only), closed afterwards."""
    plt = _pyplot()
    # Labels come from files (model names, configuration ids): "$" must not start mathtext (a
    # stray one raises while drawing) and control characters are written out.
    with plt.rc_context({"text.parse_math": False}):
        figure = _visible_text(figure)
        # A heatmap's colour bar and its tick labels are laid out only by the constrained engine
        # (tight_layout leaves the labels past the right edge).
        engine = "constrained" if isinstance(figure, Heatmap) else None
        fig, ax = plt.subplots(figsize=_figure_size(figure), dpi=110, layout=engine)
        try:
            labels: list[Any] = []
            if isinstance(figure, Heatmap):
                labels = _draw_heatmap(ax, fig, figure)
            elif isinstance(figure, Scatter):
                labels = _draw_scatter(ax, figure)
            else:
                _draw_lines(ax, figure)
            # A long title is wrapped, not cut at the figure's edge.
            ax.set_title(textwrap.fill(figure.title, TITLE_CHARS), fontsize=10)
            ax.set_xlabel(figure.xlabel)
            ax.set_ylabel(figure.ylabel)
            if engine is None:
                fig.tight_layout()
            if isinstance(figure, Scatter):
                _untangle(fig, ax, labels)
            if isinstance(figure, Heatmap):
                labels = _fit_cell_texts(fig, labels)
            if draw:
                fig.canvas.draw()
            yield fig, ax, labels
        finally:
            plt.close(fig)


def _visible_text(figure: Figure) -> Figure:
    """The figure with every text written out visibly (display.visible)."""
    from dataclasses import fields, is_dataclass, replace

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return visible(value)
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, tuple):
            return tuple(clean(v) for v in value)
        if is_dataclass(value) and not isinstance(value, type):
            return replace(value, **{f.name: clean(getattr(value, f.name)) for f in fields(value)})
        return value

    cleaned: Figure = clean(figure)
    return cleaned


def _draw_lines(ax: Any, figure: LineFigure) -> None:
    styles = figure_styles([s.label for s in figure.series], [s.reference for s in figure.series])
    colour_of: dict[str, str] = {}
    for s, style in zip(figure.series, styles, strict=True):
        colour_of[s.label] = style.colour
        ax.plot(s.x, s.y, marker=style.marker, markersize=4, color=style.colour, linestyle=style.line,
                linewidth=1.6, label=s.label)  # fmt: skip
        if s.lo is not None and s.hi is not None:
            ax.fill_between(s.x, s.lo, s.hi, color=style.colour, alpha=0.15, linewidth=0)
    for m in figure.markers:
        ax.plot([m.x], [m.y], marker="^", markersize=11, color=colour_of.get(m.series, "#D55E00"),
                markeredgecolor="black", linestyle="none", label=m.label)  # fmt: skip
    levels = [*([figure.level] if figure.level is not None else []), *figure.levels]
    for i, (y, label) in enumerate(levels):
        # A margin drawn twice (±) is named once in the legend.
        named = label not in [lv[1] for lv in levels[:i]]
        ax.axhline(y, color="#666666", linestyle=(0, (1, 1.5)), linewidth=1.3, label=label if named else None)
    if figure.zero_line:
        ax.axhline(0.0, color="#999999", linewidth=0.8)
    if figure.log2_x:
        ax.set_xscale("log", base=2)
        ticks = sorted({x for s in figure.series for x in s.x})
        ax.set_xticks(ticks, [f"{int(t):,}" for t in ticks])
        ax.minorticks_off()
    ax.grid(True, alpha=0.3)
    _legend(ax)


def _legend(ax: Any) -> None:
    """Inside the axes where "best" finds room for a few entries; beside them, to the right, for
    more (the bands of many series leave no corner free, and a legend must not cover data)."""
    entries = len(ax.get_legend_handles_labels()[1])
    if entries > LEGEND_INSIDE:
        legend = ax.legend(
            fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0
        )
    elif entries:
        legend = ax.legend(fontsize=8, frameon=False)
    else:
        return
    _name_entries(legend)


LEGEND_ID = "kvprobe-legend-"


def _name_entries(legend: Any) -> None:
    """Each legend entry's mark carries its label in its SVG id (LEGEND_ID + the label's UTF-8
    in hex), so that a test reads from the page's own SVG which colour each entry is drawn in."""
    for handle, text in zip(legend.legend_handles, legend.get_texts(), strict=True):
        if handle is not None:
            handle.set_gid(LEGEND_ID + text.get_text().encode("utf-8").hex())


def _draw_scatter(ax: Any, figure: Scatter) -> list[Any]:
    """The points and their labels (placed by _untangle once the layout is final)."""
    seen: set[str] = set()
    labels = []
    floor = _log_floor(figure) if figure.log_y else None
    # One result's frontier: a point per configuration, in its own colour and marker (as on
    # every figure), its status in the legend; a sweep's (many contexts per configuration): by status.
    by_config = len({p.label for p in figure.points}) == len(figure.points) and figure.key == "frontier"
    for p in figure.points:
        at_zero = floor is not None and p.y <= 0
        y = floor if at_zero and floor is not None else p.y
        if by_config:
            style = config_style(p.label, reference=p.group == "reference")
            colour, marker, entry = style.colour, style.marker, f"{p.label}: {p.group}"
        else:
            colour, marker, entry = GROUP_COLOURS.get(p.group, verdict_look(p.group).fill), "o", p.group
        # Outlined: the white of "equivalent" must show on the white axes.
        edge = colour if by_config or p.group == "reference" else VERDICT_EDGE
        ax.plot([p.x], [y], marker="v" if at_zero else marker, markersize=8, color=colour,
                markeredgecolor=edge, linestyle="none", clip_on=not at_zero,
                label=None if entry in seen else entry)  # fmt: skip
        seen.add(entry)
        name = f"{p.label} (= 0)" if at_zero else p.label
        text = f"{name}\n{p.note}" if p.note else name
        labels.append(ax.annotate(text, (p.x, y), textcoords="offset points", xytext=(6, 4), fontsize=7))
    if figure.level is not None:
        ax.axhline(figure.level[0], color="#666666", linestyle=":", linewidth=1.2, label=figure.level[1])
    if floor is not None:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.set_yscale("log")
        top = max([p.y for p in figure.points] + ([figure.level[0]] if figure.level else []))
        ax.set_ylim(floor, max(top, floor) * 4)
        # Plain numbers: the page draws text without mathtext ($ in a model name must stay text).
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, alpha=0.3)
    _legend(ax)  # many configurations: beside the axes, off the points
    return labels


def _log_floor(figure: Scatter) -> float:
    """The bottom of a logarithmic y axis: a third of the smallest positive value (or of the
    level line), where the points at 0 are drawn."""
    positive = [p.y for p in figure.points if p.y > 0] + ([figure.level[0]] if figure.level else [])
    return min(positive, default=1e-3) / 3


# Where a label may go beside its point, in points: right or left, above or below; then
# further up or down, either side. The first place inside the axes that overlaps no label
# placed before wins; where none is free, the place that overlaps least.
_SPOTS = [
    (6, 4, "left", "bottom"), (6, -4, "left", "top"), (-6, 4, "right", "bottom"), (-6, -4, "right", "top")
]  # fmt: skip
_SPOTS += [(dx, dy * k, ha, va) for k in range(3, 40, 2) for dx, dy, ha, va in _SPOTS]


def _overlap(box: Any, others: Sequence[Any]) -> float:
    """The area `box` shares with the others."""
    return float(sum(max(0.0, min(box.x1, o.x1) - max(box.x0, o.x0)) * max(0.0, min(box.y1, o.y1)
                                                                            - max(box.y0, o.y0))
                     for o in others))  # fmt: skip


def _untangle(fig: Any, ax: Any, labels: Sequence[Any]) -> None:
    """Move each point's label to the first spot (_SPOTS) where it stays inside the axes (so it
    never runs into the title) and overlaps no label placed before."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    placed: list[Any] = []

    def put(label: Any, spot: tuple[int, int, str, str]) -> Any:
        dx, dy, ha, va = spot
        label.set_position((dx, dy))
        label.set_ha(ha)
        label.set_va(va)
        return label.get_window_extent(renderer)

    for label in sorted(labels, key=lambda a: (-a.xy[1], a.xy[0])):
        best: tuple[float, tuple[int, int, str, str]] | None = None
        for spot in _SPOTS:
            box = put(label, spot)
            if (
                not inside.x0 <= box.x0 <= box.x1 <= inside.x1
                or not inside.y0 <= box.y0 <= box.y1 <= inside.y1
            ):
                continue
            crowd = _overlap(box, placed)
            if best is None or crowd < best[0]:
                best = (crowd, spot)
            if crowd == 0:
                break
        placed.append(put(label, best[1] if best is not None else _SPOTS[0]))


def _figure_size(figure: Figure) -> tuple[float, float]:
    """Inches: a heatmap grows with its grid (a sweep of many models and caches), up to a page."""
    if not isinstance(figure, Heatmap):
        return (7.2, 4.2)
    columns, rows = len(figure.x_labels), len(figure.y_labels)
    # At most 12 inches wide: the page shows figures at most 980 px wide, and a wider one's
    # text would shrink below reading there.
    return (min(12.0, max(7.2, 3.0 + 1.0 * columns)), min(12.0, max(4.2, 1.6 + 0.55 * rows)))


def _grid_ticks(ax: Any, figure: Heatmap) -> None:
    """The cells' labels on both axes; long column labels (split-kv pairs) broken at their
    commas so that neighbours do not run together."""
    crowded = max((len(x) for x in figure.x_labels), default=0) * len(figure.x_labels) > 48
    columns = [x.replace(",", ",\n") if crowded else x for x in figure.x_labels]
    ax.set_xticks(range(len(columns)), columns, fontsize=8 if crowded else None)
    ax.set_yticks(range(len(figure.y_labels)), figure.y_labels)


def _fit_cell_texts(fig: Any, texts: list[Any]) -> list[Any]:
    """Cell texts made smaller until no two overlap; hidden if even 5 pt is too big (the colours
    and the tables still say it). Returns the texts still shown."""
    if not texts:
        return texts
    size = texts[0].get_fontsize()
    while True:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        boxes = [t.get_window_extent(renderer) for t in texts]
        crowded = any(b.overlaps(o) for i, b in enumerate(boxes) for o in boxes[:i])
        if not crowded:
            return texts
        if size <= 5:
            for t in texts:
                t.set_visible(False)
            return []
        size -= 1
        for t in texts:
            t.set_fontsize(size)


def _draw_heatmap(ax: Any, fig: Any, figure: Heatmap) -> list[Any]:
    """The heatmap drawn; returns the cells' texts."""
    import numpy as np

    data = np.array([[np.nan if v is None else v for v in row] for row in figure.values], dtype=float)
    if figure.categories:
        return _draw_categories(ax, fig, figure, data)
    cmap = "PuOr" if figure.diverging else "viridis"
    image = ax.imshow(data, cmap=cmap, vmin=figure.vmin, vmax=figure.vmax, aspect="auto", origin="lower")
    _grid_ticks(ax, figure)
    texts = []
    for (i, j), v in np.ndenumerate(data):
        if not np.isnan(v):
            text = f"{v:+.2f}" if figure.diverging else f"{v:.2f}"
            dark = not figure.diverging and v < 0.5
            colour = "white" if dark else "black"
            texts.append(ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour))
    _unmeasured(ax, figure)
    fig.colorbar(image, ax=ax, label=figure.colour_label)
    return texts


def _unmeasured(ax: Any, figure: Heatmap) -> None:
    """The cells without a value that `text` names (a run stopped once decided): hatched grey,
    and the name written once across each run of such columns, so no blank cell is left unsaid."""
    from matplotlib.patches import Rectangle

    if figure.text is None:
        return
    rows = len(figure.y_labels)
    said: dict[tuple[int, str], int] = {}  # (first column, text) -> columns it spans
    for j in range(len(figure.x_labels)):
        for i in range(rows):
            if figure.values[i][j] is None and figure.text[i][j]:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="#eeeeee", edgecolor="#999999",
                                       hatch="//", linewidth=0))  # fmt: skip
        column = {figure.text[i][j] if figure.values[i][j] is None else "" for i in range(rows)}
        if len(column) == 1 and (text := column.pop()):
            start = next((k for k, t in said if t == text and k + said[(k, t)] == j), j)
            said[(start, text)] = said.get((start, text), 0) + 1
            continue
        for i in range(rows):  # a single cell: its own small label
            if figure.values[i][j] is None and figure.text[i][j]:
                ax.text(j, i, figure.text[i][j].replace(" ", "\n", 1), ha="center", va="center", fontsize=6,
                        color="#333333")  # fmt: skip
    for (start, text), span in said.items():
        width = max(8, int(span * 11))  # characters a line may hold across the span
        ax.text(start + (span - 1) / 2, (rows - 1) / 2, textwrap.fill(text, width), ha="center",
                va="center", fontsize=8, color="#333333",
                bbox={"facecolor": "white", "edgecolor": "#999999", "boxstyle": "round,pad=0.3"})  # fmt: skip


def _draw_categories(ax: Any, fig: Any, figure: Heatmap, data: Any) -> list[Any]:
    """Each cell in its category's colour, with its text; the colour bar names the categories."""
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Rectangle

    n = len(figure.categories)
    looks = [verdict_look(c) for c in figure.categories]
    cmap = ListedColormap(
        [GROUP_COLOURS.get(c, look.fill) for c, look in zip(figure.categories, looks, strict=True)]
    )
    image = ax.imshow(data, cmap=cmap, vmin=-0.5, vmax=n - 0.5, aspect="auto", origin="lower")
    # Each cell outlined (a white "equivalent" cell is a cell, not a gap), as the badges are.
    rows, columns = data.shape
    ax.hlines([i - 0.5 for i in range(rows + 1)], -0.5, columns - 0.5, colors=VERDICT_EDGE, linewidth=0.8)
    ax.vlines([j - 0.5 for j in range(columns + 1)], -0.5, rows - 0.5, colors=VERDICT_EDGE, linewidth=0.8)
    _grid_ticks(ax, figure)
    texts = []
    for (i, j), v in np.ndenumerate(data):
        text = figure.text[i][j] if figure.text is not None else ""
        if np.isnan(v):  # no verdict (a cell without a result): hatched, never a verdict's look
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="#eeeeee", edgecolor="#999999",
                                   hatch="//", linewidth=0))  # fmt: skip
            if text:
                texts.append(ax.text(j, i, text, ha="center", va="center", fontsize=8, color="#333333"))
        elif text:
            category = figure.categories[int(v)]
            look = verdict_look(category)
            ink = "white" if category == "reference" else look.ink  # on the reference's black
            shown = f"{look.icon} {text}" if look.icon else text
            texts.append(ax.text(j, i, shown, ha="center", va="center", fontsize=8, color=ink))
    bar = fig.colorbar(image, ax=ax, ticks=range(n), label=figure.colour_label)
    bar.ax.set_yticklabels(
        [f"{look.icon} {c}".strip() for c, look in zip(figure.categories, looks, strict=True)]
    )
    bar.outline.set_edgecolor(VERDICT_EDGE)
    return texts


def write_png(
    figures: Sequence[Figure],
    folder: str,
    *,
    force: bool = False,
    on_figure: Callable[[int], None] | None = None,
) -> list[str]:
    """Every figure as FOLDER/<key>.png; returns the paths. No file is written if one of them
    exists already (unless `force`): a report never overwrites half of an earlier one.
    `on_figure(i)` hears before figure i is drawn (progress)."""
    from pathlib import Path

    out = Path(folder)
    targets = [out / f"{figure.key}.png" for figure in figures]
    existing = [p for p in targets if p.exists()]
    if existing and not force:
        raise UserError(
            f"--png {out}: {existing[0].name} and {len(existing) - 1} more exist already: choose another "
            "folder or pass --force"
            if len(existing) > 1
            else f"--png {out}: {existing[0].name} exists already: choose another folder or pass --force"
        )
    for i, (figure, path) in enumerate(zip(figures, targets, strict=True)):
        if on_figure is not None:
            on_figure(i)
        write_atomically(path, render(figure, "png"), "--png")
    return [str(p) for p in targets]
