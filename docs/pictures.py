"""The docs' pictures, made from real result files by kvprobe's own code: every figure the
docs show (PNG, from results/examples/), and screenshots of the pages in headless Chromium at
the window widths people use (1280 and 800 px); the README's hero (page-main-job.png) is the main
job's page cut to its decision and the one figure that shows why, at 800 px, so that it stays
legible at the docs' width. Run it again when a page changes: the tests
compare each page with the fingerprint written here (docs/img/pictures.json) and say so.

    python docs/pictures.py [--chromium /usr/bin/chromium] [--check-widths]

--check-widths also writes full-height screenshots at 1280 and 800 px into docs/img/check/
(not committed) to look at every figure for overlaps and cuts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kvprobe.result.store import Result  # noqa: E402
from kvprobe.views.figures import render  # noqa: E402
from kvprobe.views.html import page  # noqa: E402
from kvprobe.views.pictures import every_figure  # noqa: E402

IMG = ROOT / "docs" / "img"
EXAMPLES = ROOT / "results" / "examples"
# The page of the main job (`kvprobe run --cache q4_0 --ctx 8192`), and of the split-kv decision.
PAGES = {
    "page-main-job": EXAMPLES / "default-f16-q4_0-8192.json",
    "page-split-kv": EXAMPLES / "splitkv-f16-q8_0-q4_0-8192.json",
}
SWEEP = EXAMPLES / "sweep-default-smollm2"  # the README's sweep, its merged page
# The figures "Reading a result" shows: (result file, figure key, file name).
FIGURES = [
    ("splitkv-f16-q8_0-q4_0-8192.json", "frontier", "frontier-split-kv"),
    ("splitkv-f16-q8_0-q4_0-8192.json", "needle-accuracy", "needle-accuracy"),
    ("splitkv-f16-q8_0-q4_0-8192.json", "needle-logprob-diff", "needle-logprob-diff"),
    ("splitkv-f16-q8_0-q4_0-8192.json", "needle-heatmap-q4_0-minus-f16", "needle-heatmap-q4_0-minus-f16"),
    ("splitkv-f16-q8_0-q4_0-8192.json", "repetition-loop-rate", "repetition-loop-rate"),
    ("divergence-f16-q8_0-q4_0-8192.json", "divergence-kl", "divergence-kl"),
    ("weights-F16-vs-Q4_0-f16-q4_0-4096.json", "needle-logprob-diff", "weights-vs-kv-logprob-diff"),
]
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
]  # fmt: skip


def fingerprint(html: str) -> str:
    """The page without its images' bytes (their alt text stays): it changes when the page's
    words, tables or figures change, not when another matplotlib draws the same figure."""
    return hashlib.sha256(re.sub(r'src="data:[^"]*"', 'src=""', html).encode()).hexdigest()


def page_html(path: Path) -> str:
    loaded = Result.load(path)
    return page([(path.name, loaded.doc)])


def sweep_html() -> str | None:
    if not (SWEEP / "sweep.json").is_file():
        return None
    from kvprobe.sweep.collect import collect
    from kvprobe.sweep.view import cell_page_links, sweep_page

    report = collect(SWEEP)
    return sweep_page(report, cell_page_links(report, SWEEP / "report.html"))


def screenshot(chromium: str, html: str, out: Path, width: int, height: int) -> None:
    with tempfile.TemporaryDirectory(prefix="kvprobe-pictures-") as tmp:
        source = Path(tmp) / "page.html"
        source.write_text(html, encoding="utf-8")
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp}/profile", f"--window-size={width},{height}",
               f"--screenshot={out}", source.as_uri()]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)


# The hero's one figure: the answer log-prob difference with the verdict's margin lines.
HERO_FIGURE = 'alt="Answer log-probability minus'
HERO_WIDTH = 800  # the docs' column: the decision's table whole there (the page's narrow style)


def hero_html(html: str) -> str:
    """The page down to its decision (title, verdict badges, recommendation, the frontier
    table and its legend), then the one figure that shows why."""
    head = html.split("<h3>Rules of thumb", maxsplit=1)[0]
    start = html.index(HERO_FIGURE)
    figure = html[html.rindex("<img", 0, start) : html.index(">", start) + 1]
    return f"{head}{figure}\n</body></html>\n"


def trimmed(path: Path) -> None:
    """The screenshot cut below its last non-white row (and a margin)."""
    from PIL import Image, ImageChops

    with Image.open(path) as image:
        rgb = image.convert("RGB")
    box = ImageChops.difference(rgb, Image.new("RGB", rgb.size, "white")).getbbox()
    if box is not None:
        rgb.crop((0, 0, rgb.width, min(rgb.height, box[3] + 24))).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--check-widths", action="store_true")
    args = parser.parse_args()
    IMG.mkdir(exist_ok=True)
    for name, key, stem in FIGURES:
        figures = {f.key: f for f in every_figure(Result.load(EXAMPLES / name).doc)}
        (IMG / f"{stem}.png").write_bytes(render(figures[key], "png"))
    prints: dict[str, str] = {}
    pages = {stem: page_html(path) for stem, path in PAGES.items()}
    if (sweep := sweep_html()) is not None:
        pages["sweep-page"] = sweep
    for stem, html in pages.items():
        prints[stem] = fingerprint(html)
        if stem == "page-main-job":
            screenshot(args.chromium, hero_html(html), IMG / f"{stem}.png", HERO_WIDTH, 2400)
            trimmed(IMG / f"{stem}.png")
        else:
            screenshot(args.chromium, html, IMG / f"{stem}.png", 1280, 1000)
        if args.check_widths:
            (IMG / "check").mkdir(exist_ok=True)
            for width in (1280, 800):
                screenshot(args.chromium, html, IMG / "check" / f"{stem}-{width}.png", width, 16000)
    (IMG / "pictures.json").write_text(json.dumps(prints, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(FIGURES)} figures and {len(pages)} screenshots into {IMG}")


if __name__ == "__main__":
    main()
