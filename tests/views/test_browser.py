"""The page as a person sees it, in a real browser (headless Chromium) at 1280 and 800 px: the
verdict badges in the first screen, each verdict word shown in its own grey (no configuration's
colour), no table header broken inside a word, no number wrapped, no
sideways scroll of the page; and every figure's legend drawn in the colours of the one mapping
(kvprobe.views.figures.config_style) that the tables' swatches use too.

The page has no script; the geometry is measured by a test copy of it with a small inline script
that writes what it found into the DOM, which `--dump-dom` prints after layout."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from kvprobe.result.store import load_result
from kvprobe.views.figures import (
    LEGEND_ID,
    TEXT_LABEL,
    config_style,
    configuration_colours,
    contrast_ratio,
    verdict_look,
)
from kvprobe.views.html import page
from tests.helpers import browser, needs_browser

EXAMPLES = Path(__file__).resolve().parents[2] / "results" / "examples"
MAIN = EXAMPLES / "default-f16-q4_0-8192.json"
UNTIL = EXAMPLES / "until-decided-f16-q4_0-8192.json"
REPETITION = EXAMPLES / "repetition-f16-q8_0-q4_0-8192.json"  # three configurations and real text
DIVERGENCE = EXAMPLES / "divergence-f16-q8_0-q4_0-8192.json"  # q8_0 equivalent, q4_0 worse
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip

# For every header: each word's rectangles (a word on two lines has two tops). For every number
# cell, configuration cell, badge and llama.cpp flag with its value: its whole text on one line.
# The page's own width.
MEASURE = """<script>
function lines(range) {  // the lines a range's text lies on: a rectangle below the last starts one
  const rs = Array.from(range.getClientRects()).filter(b => b.width > 0).sort((a, b) => a.top - b.top);
  let n = 0, bottom = -1e9;
  for (const r of rs) {
    if (r.top >= bottom - 1) { n++; bottom = r.bottom; } else bottom = Math.max(bottom, r.bottom);
  }
  return n;
}
const found = {broken: [], wrapped: [], width: window.innerWidth,
               scroll: document.documentElement.scrollWidth, headers: 0, cells: 0,
               pairs: document.querySelectorAll('.pair').length};
for (const th of document.querySelectorAll('th')) {
  found.headers++;
  const w = document.createTreeWalker(th, NodeFilter.SHOW_TEXT); let n;
  while ((n = w.nextNode())) {
    for (const m of n.data.matchAll(/\\S+/g)) {
      const r = document.createRange(); r.setStart(n, m.index); r.setEnd(n, m.index + m[0].length);
      if (lines(r) > 1) found.broken.push(m[0]);
    }
  }
}
for (const el of document.querySelectorAll('td.num, td.config, .badge, .pair')) {
  found.cells++;
  const r = document.createRange(); r.selectNodeContents(el);
  if (lines(r) > 1) found.wrapped.push(el.textContent.trim());
}
const out = document.createElement('pre'); out.id = 'measured'; out.textContent = JSON.stringify(found);
document.body.appendChild(out);
</script>"""


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    """The main job's page, an --until-decided page, and one with three configurations and real text."""
    return {path.stem: page([(path.name, load_result(path))]) for path in (MAIN, UNTIL, REPETITION)}


def _chromium(
    tmp: Path, html: str, width: int, *args: str, height: int = 1000
) -> subprocess.CompletedProcess[str]:
    source = tmp / f"page-{width}.html"
    source.write_text(html, encoding="utf-8")
    cmd = [browser(), *FLAGS, f"--user-data-dir={tmp / 'profile'}", f"--window-size={width},{height}",
           *args, source.as_uri()]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)


@needs_browser
@pytest.mark.parametrize("width", [1280, 800])
def test_no_header_breaks_inside_a_word_and_no_number_wraps(
    pages: dict[str, str], width: int, tmp_path: Path
) -> None:
    for name, html in pages.items():
        probe = html.replace("</body>", MEASURE + "</body>")
        dom = _chromium(tmp_path, probe, width, "--virtual-time-budget=5000", "--dump-dom").stdout
        found = re.search(r'<pre id="measured">(.*?)</pre>', dom, re.S)
        assert found is not None, f"{name}: the measuring script did not run"
        measured = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
        assert measured["width"] == width, measured  # laid out at the width asked
        assert measured["headers"] >= 10, measured  # it measured the tables
        assert measured["cells"] >= 10, measured
        assert measured["pairs"] >= 5, measured  # -ctk f16 -ctv f16, -ctk q4_0 -ctv q4_0 -fa on
        assert measured["broken"] == [], f"{name} at {width} px: headers broken inside a word"
        assert measured["wrapped"] == [], f"{name} at {width} px: numbers or names wrapped"
        assert measured["scroll"] <= width, f"{name} at {width} px: the page scrolls sideways"


# Each badge as laid out: its box, and its verdict word's box, text, computed colours, whether
# it is visible (display, visibility, opacity) and on top at its centre (nothing covers it).
BADGES = """<script>
const box = el => { const r = el.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
const seen = {width: window.innerWidth, height: window.innerHeight, badges: []};
for (const b of document.querySelectorAll('.badge')) {
  const w = b.querySelector('.word'), s = w && getComputedStyle(w), r = w && w.getBoundingClientRect();
  const hit = r && document.elementFromPoint((r.left + r.right) / 2, (r.top + r.bottom) / 2);
  seen.badges.push({config: b.dataset.config, box: box(b), border: getComputedStyle(b).borderTopColor,
    word: w && {text: w.innerText, box: box(w), colour: s.color, background: s.backgroundColor,
                edge: s.borderTopColor, on_top: !!hit && w.contains(hit),
                visible: w.checkVisibility({opacityProperty: true, visibilityProperty: true})}});
}
const out = document.createElement('pre'); out.id = 'badges'; out.textContent = JSON.stringify(seen);
document.body.appendChild(out);
</script>"""
SCREEN = 800  # the first screen: what a window 800 px high shows before any scrolling


def _rgb(css: str) -> str:
    """A computed CSS colour ("rgb(64, 64, 64)") as "#404040"."""
    found = re.fullmatch(r"rgba?\((\d+), (\d+), (\d+)(?:, ([\d.]+))?\)", css)
    assert found is not None, css
    assert found.group(4) in (None, "1"), f"{css}: not opaque"
    return "#" + "".join(f"{int(c):02X}" for c in found.groups()[:3])


def _verdicts(path: Path) -> dict[str, str]:
    """Each configuration's verdict word, from the result itself (not from the page)."""
    doc = load_result(path)
    said = (doc.get("verdict") or {}).get("configs") or {}
    return {
        str(c["id"]): "reference"
        if c["id"] == doc["baseline"]
        else str(((said.get(c["id"]) or {}).get("equivalence") or {}).get("status") or "undecided")
        for c in doc["configs"]
    }


def _badges(html: str, width: int, tmp: Path) -> dict[str, Any]:
    dom = _chromium(tmp, html.replace("</body>", BADGES + "</body>"), width, "--virtual-time-budget=5000",
                    "--dump-dom").stdout  # fmt: skip
    found = re.search(r'<pre id="badges">(.*?)</pre>', dom, re.S)
    assert found is not None, "the measuring script did not run"
    seen = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<"))
    # Laid out at the width asked; the window (less its frame here) at least the first screen high,
    # so that a point anywhere in it can be asked what is on top.
    assert seen["width"] == width, seen
    assert seen["height"] >= SCREEN, seen
    return {b["config"]: b for b in seen["badges"]}


def _check_word(config: str, status: str, badge: dict[str, Any], width: int) -> None:
    """A verdict word shown in the first screen, in its designed look, and like no configuration."""
    word, look = badge["word"], verdict_look(status)
    assert word is not None, f"{config}: a badge without its verdict word"
    left, top, right, bottom = word["box"]
    assert right - left > 10, f"{config}: the verdict word has no box: {word}"
    assert bottom - top > 8, f"{config}: the verdict word has no box: {word}"
    assert left >= 0, f"{config}: the verdict word is off the screen: {word}"
    assert right <= width, f"{config}: the verdict word is off the screen: {word}"
    assert top >= 0, f"{config}: the verdict word is off the screen: {word}"
    assert bottom <= SCREEN, f"{config}: the verdict word is below the first screen: {word}"
    assert badge["box"][3] <= SCREEN, f"{config}: the badge runs below the first screen"
    assert word["visible"], f"{config}: the verdict word is hidden"
    assert word["on_top"], f"{config}: the verdict word is covered"
    assert status in word["text"], (config, word["text"])
    ink, fill, edge = _rgb(word["colour"]), _rgb(word["background"]), _rgb(word["edge"])
    assert (ink, fill, edge) == (look.ink, look.fill, look.edge), (config, status, ink, fill, edge)
    assert contrast_ratio(ink, fill) >= 4.5, (config, ink, fill)
    like = {ink, fill, edge, _rgb(badge["border"])} & configuration_colours()
    assert not like, f"{config}: its verdict drawn in a configuration's colour: {like}"


def _check_painted(shot: Path, badges: dict[str, Any], verdicts: dict[str, str]) -> None:
    """In the screenshot, each verdict word's box painted in its fill, with its text in its ink."""
    with Image.open(shot) as image:
        rgb = image.convert("RGB")
    for config, status in verdicts.items():
        look, (left, top, right, bottom) = verdict_look(status), badges[config]["word"]["box"]
        inner = rgb.crop((int(left) + 3, int(top) + 3, int(right) - 3, int(bottom) - 3))
        data = inner.tobytes()  # RGB, three bytes a pixel
        colours = Counter("#" + data[i : i + 3].hex().upper() for i in range(0, len(data), 3))
        assert max(colours, key=lambda c: colours[c]) == look.fill, (config, "its fill not painted", colours)
        assert colours.get(look.ink, 0) >= 10, (config, "its word not painted", colours)


@needs_browser
@pytest.mark.parametrize(  # every verdict (worse, undecided, equivalent), and both widths
    ("path", "width"), [(MAIN, 1280), (MAIN, 800), (REPETITION, 800), (DIVERGENCE, 800)]
)
def test_every_verdict_is_seen_in_the_first_screen(
    pages: dict[str, str], path: Path, width: int, tmp_path: Path
) -> None:
    """Each configuration's badge in the first screen (800 px high), its verdict word shown (a
    box of its own inside the screen, visible, on top) in the verdict's designed grey and ink,
    readable (contrast 4.5:1 at least), and in no configuration's colour: a verdict must not
    read as a configuration. Then the screenshot: the word's box painted in its fill, its text
    in its ink."""
    verdicts = _verdicts(path)
    html = pages[path.stem] if path.stem in pages else page([(path.name, load_result(path))])
    badges = _badges(html, width, tmp_path)
    assert set(badges) == set(verdicts), f"badges for {sorted(badges)}, configurations {sorted(verdicts)}"
    for config, status in verdicts.items():
        _check_word(config, status, badges[config], width)
    shot = tmp_path / f"shot-{width}.png"
    _chromium(tmp_path, html, width, f"--screenshot={shot}", height=SCREEN)
    _check_painted(shot, badges, verdicts)


def _legends(html: str) -> list[tuple[str, str]]:
    """Every figure's legend entries on the page, from its own SVG: (label, colour drawn)."""
    entries = []
    for data in re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', html):
        svg = base64.b64decode(data).decode("utf-8")
        for m in re.finditer(rf'<g id="{LEGEND_ID}([0-9a-f]+)">(.*?)<g id="text_', svg, re.S):
            # A mark's fill (a marker, an onset's triangle edged in black), else its line's stroke.
            colour = re.search(r"fill: (#[0-9a-f]{6})", m.group(2)) or re.search(
                r"stroke: (#[0-9a-f]{6})", m.group(2)
            )
            assert colour is not None
            entries.append((bytes.fromhex(m.group(1)).decode("utf-8"), colour.group(1)))
    return entries


@pytest.mark.parametrize("path", [MAIN, REPETITION])
def test_every_legend_and_table_draws_a_configuration_in_its_one_colour(
    pages: dict[str, str], path: Path
) -> None:
    doc = load_result(path)
    html = pages[path.stem]
    configs = {c["id"] for c in doc["configs"]}
    expected = {c: config_style(c, reference=c == doc["baseline"]).colour.lower() for c in configs}
    checked = set()
    for label, colour in _legends(html):
        name = label.removeprefix("onset ").split(": ")[0]
        if label.startswith(TEXT_LABEL):
            assert colour == config_style(label).colour.lower()
            assert colour not in expected.values()  # real text looks like no configuration
        elif name in expected:
            assert colour == expected[name], (path.name, label, colour)
            checked.add(name)
    assert checked == configs, f"configurations in no legend: {configs - checked}"
    # The tables' and badges' swatches: the same colour beside the same name.
    swatch = r'<span class="swatch" style="color: (#[0-9A-Fa-f]{6})"[^>]*>[^<]*</span>(?:<b>)?([^<]+)<'
    shown = re.findall(swatch, html)
    assert len(shown) >= 2 * len(configs)
    for colour, config in shown:
        assert colour.lower() == expected[config], (config, colour)
