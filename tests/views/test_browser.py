"""The page as a person sees it, in a real browser (headless Chromium) at 1280 and 800 px: the
verdict badges in the first screen, no table header broken inside a word, no number wrapped, no
sideways scroll of the page; and every figure's legend drawn in the colours of the one mapping
(kvprobe.views.figures.config_style) that the tables' swatches use too.

The page has no script; the geometry is measured by a test copy of it with a small inline script
that writes what it found into the DOM, which `--dump-dom` prints after layout."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from kvprobe.result.store import load_result
from kvprobe.views.figures import GROUP_COLOURS, LEGEND_ID, TEXT_LABEL, config_style
from kvprobe.views.html import page

EXAMPLES = Path(__file__).resolve().parents[2] / "results" / "examples"
MAIN = EXAMPLES / "default-f16-q4_0-8192.json"
UNTIL = EXAMPLES / "until-decided-f16-q4_0-8192.json"
REPETITION = EXAMPLES / "repetition-f16-q8_0-q4_0-8192.json"  # three configurations and real text
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
needs_browser = pytest.mark.skipif(
    CHROMIUM is None, reason="no headless browser: install Debian's chromium package to run it"
)

# For every header: each word's rectangles (a word on two lines has two tops). For every number
# cell, configuration cell and badge: its whole text on one line. The page's own width.
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
               scroll: document.documentElement.scrollWidth, headers: 0, cells: 0};
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
for (const el of document.querySelectorAll('td.num, td.config, .badge')) {
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


def _chromium(tmp: Path, html: str, width: int, *args: str) -> subprocess.CompletedProcess[str]:
    source = tmp / f"page-{width}.html"
    source.write_text(html, encoding="utf-8")
    cmd = [str(CHROMIUM), *FLAGS, f"--user-data-dir={tmp / 'profile'}", f"--window-size={width},1000", *args,
           source.as_uri()]  # fmt: skip
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
        assert measured["broken"] == [], f"{name} at {width} px: headers broken inside a word"
        assert measured["wrapped"] == [], f"{name} at {width} px: numbers or names wrapped"
        assert measured["scroll"] <= width, f"{name} at {width} px: the page scrolls sideways"


@needs_browser
@pytest.mark.parametrize("width", [1280, 800])
def test_the_verdict_is_seen_in_the_first_screen(pages: dict[str, str], width: int, tmp_path: Path) -> None:
    """The screenshot at each width: q4_0's "worse" badge, in the verdict's colour, within the
    first 400 px of the page (before the Recommendation paragraph is read)."""
    shot = tmp_path / f"shot-{width}.png"
    _chromium(tmp_path, pages[MAIN.stem], width, f"--screenshot={shot}")
    with Image.open(shot) as image:
        assert image.size == (width, 1000)
        top = image.convert("RGB").crop((0, 0, width, 400))
        worse = tuple(bytes.fromhex(GROUP_COLOURS["worse"][1:]))
        painted = sum(n for n, colour in top.getcolors(width * 400) or [] if colour == worse)
    assert painted >= 200, "no 'worse' badge in the first screen"


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
