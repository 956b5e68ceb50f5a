"""The docs stay true to the code: the command-line reference is what the parser generates
(every option of every command, none that does not exist), every `kvprobe <command> --option`
written anywhere in the README or the docs exists, the docs' home page is the README, the README
stays short, and each page screenshot is of the page the code makes today."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from kvprobe.cli.reference import documented_options, reference

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
SITE_LINE = "The docs are a site: `nox -s docs` builds it (mkdocs, material theme) into `site/`.\n"


def test_the_cli_reference_is_what_the_parser_generates() -> None:
    assert (DOCS / "cli.md").read_text() == reference(), "run: python -m kvprobe.cli.reference > docs/cli.md"


def test_the_cli_reference_names_every_option_and_no_other() -> None:
    text = (DOCS / "cli.md").read_text()
    sections = dict(re.findall(r"## `kvprobe (\w+)`\n(.*?)(?=\n## `kvprobe |\Z)", text, re.S))
    for command, options in documented_options().items():
        named = set(re.findall(r"`(--[a-z][a-z0-9-]*)`", sections[command]))
        assert named == options, command


COMMAND = re.compile(r"kvprobe (run|report|compare|doctor|quantize|sweep|scenarios)\b([^`\n]*)")


def written_options() -> list[tuple[str, str, str]]:
    """(page, command, option) for every `kvprobe <command> ... --option` in the README and docs."""
    found = []
    for page in PAGES:
        for command, words in COMMAND.findall(page.read_text()):
            # A comment, a pipe or the next command ends this one.
            own = words.split("#")[0].split(" | ")[0].split(" && ")[0]
            for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", own):
                found.append((page.name, command, option))
    return found


def test_every_option_written_in_the_docs_exists() -> None:
    options = documented_options()
    written = written_options()
    assert len(written) > 100  # the docs are full of commands: the scan must find them
    missing = sorted({(page, f"kvprobe {c} {o}") for page, c, o in written if o not in options[c]})
    assert not missing, missing


def test_the_docs_home_page_is_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    home = readme.replace("](docs/", "](").replace("docs/img/", "img/")
    home = home.replace(SITE_LINE, "")
    assert (DOCS / "index.md").read_text() == home


def test_the_readme_reads_in_two_minutes() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    for heading in ("## Install and run the main job", "## Install and run the tests", "## Commands"):
        assert heading in lines
    assert 'pip install -e ".[model,plot]" && kvprobe run --cache q4_0 --ctx 8192' in lines
    assert "python3 -m pip install nox && python3 -m nox" in lines


def test_the_page_screenshots_are_of_todays_pages() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib (the plot extra) draws the pages")
    spec = importlib.util.spec_from_file_location("docs_pictures", DOCS / "pictures.py")
    assert spec is not None
    assert spec.loader is not None
    pictures = importlib.util.module_from_spec(spec)
    sys.modules["docs_pictures"] = pictures
    spec.loader.exec_module(pictures)
    recorded = json.loads((DOCS / "img" / "pictures.json").read_text())
    now = {stem: pictures.fingerprint(pictures.page_html(path)) for stem, path in pictures.PAGES.items()}
    if (sweep := pictures.sweep_html()) is not None:
        now["sweep-page"] = pictures.fingerprint(sweep)
    assert now == recorded, "a page changed since its screenshot: run python docs/pictures.py"
    for stem in recorded:
        assert (DOCS / "img" / f"{stem}.png").is_file()


# --- the built site, as a reader sees it -----------------------------------------------------

# Characters of a code block's line that the content column holds without scrolling at 1280 px:
# the material theme's column is 938 px there (the contents in the left navigation, mkdocs.yml's
# toc.integrate), less the copy button's room (docs/stylesheets/extra.css), at 8.18 px per
# character of its 13.6 px monospace font: measured once in headless Chromium (108).
CODE_COLUMN = 108
COLOUR = re.compile(
    r"\b(black|white|grey|gray|red|orange|yellow|green|blue|purple|violet|pink|brown|vermillion|cyan|magenta)\b",
    re.I,
)
MARKDOWN_LEFT = {
    "a list written inline (a list needs a blank line before it)": re.compile(r"(?:^|\s)[*-] `"),
    "bold markers": re.compile(r"\*\*"),
    "a link left as text": re.compile(r"\[[^\]\n]+\]\([^)\s]+\)"),
}


class PageText(HTMLParser):
    """The article of a built page: its text with inline code shown as `…` (so that a marker
    next to it stays visible), and each code block's lines apart."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0  # inside <article>
        self.pre = 0
        self.code = 0
        self.text: list[str] = []
        self.blocks: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.depth += tag == "article"
        self.pre += tag == "pre"
        if tag == "pre":
            self.blocks.append("")
        if tag == "code" and not self.pre:
            self.code += 1
            self.text.append("`…")
        if tag in ("p", "li", "td", "th", "h1", "h2", "h3", "h4", "div", "br"):
            self.text.append("\n")

    def handle_endtag(self, tag: str) -> None:
        self.depth -= tag == "article"
        self.pre -= tag == "pre"
        if tag == "code" and not self.pre:
            self.code -= 1
            self.text.append("`")

    def handle_data(self, data: str) -> None:
        if not self.depth:
            return
        if self.pre:
            self.blocks[-1] += data
        elif not self.code:
            self.text.append(data)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The docs site, built once as `nox -s docs` builds it (strict: a warning fails)."""
    if importlib.util.find_spec("mkdocs") is None:
        if os.environ.get("CI"):  # CI's tests session installs the docs extra: its absence is a fault
            pytest.fail("mkdocs (the docs extra) is not installed in CI's tests session")
        pytest.skip("mkdocs (the docs extra) builds the site")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out


def built_pages(site: Path) -> dict[str, PageText]:
    pages = {}
    for md in sorted(DOCS.glob("*.md")):
        parser = PageText()
        parser.feed((site / md.with_suffix(".html").name).read_text())
        pages[md.name] = parser
    return pages


def test_no_markdown_is_left_in_the_rendered_text(site: Path) -> None:
    left = []
    for name, page in built_pages(site).items():
        text = "".join(page.text)
        assert len(text) > 200, name  # the article was found
        for what, pattern in MARKDOWN_LEFT.items():
            left += [f"{name}: {what}: {m.group(0)!r}" for m in pattern.finditer(text)]
    assert not left, left


def test_nested_lists_stay_nested(site: Path) -> None:
    """Python-Markdown nests a list only under four spaces: fewer flatten it into its parent."""
    html = (site / "reading-results.html").read_text()
    assert re.search(r"<li><strong>needle</strong>:\s*<ul>", html)
    shallow = []
    for page in PAGES:
        fenced = False
        for n, line in enumerate(page.read_text().splitlines(), 1):
            fenced ^= line.lstrip().startswith("```")
            if not fenced and re.match(r" {1,3}([*-]|\d+\.) ", line):
                shallow.append(f"{page.name}:{n}: {line.strip()[:50]}")
    assert not shallow, shallow


def test_code_blocks_fit_the_content_column(site: Path) -> None:
    wide = [
        f"{name}: {len(line)} characters: {line[:60]}…"
        for name, page in built_pages(site).items()
        for block in page.blocks
        for line in block.splitlines()
        if len(line) > CODE_COLUMN
    ]
    assert not wide, wide


def clauses(sentence: str) -> list[str]:
    return [c for c in re.split(r"[,;:()]", sentence) if c.strip()]


def test_every_colour_word_is_what_the_figures_draw(site: Path) -> None:
    """A colour named in the text is the colour the figures give the thing named beside it
    (kvprobe.views.figures.colour_words): in the same clause, else in the same sentence."""
    pytest.importorskip("matplotlib", reason="the figures (the plot extra)")
    from kvprobe.views.figures import colour_words

    words = colour_words()
    names = {"real text": r"real text|own text", "heatmap loss": r"loss", "heatmap gain": r"gain"}
    meanings = {
        key: re.compile(rf"(?<![\w-])({names.get(key, re.escape(key.split(' ', 1)[-1]))})(?![\w-])")
        for key in words
    }
    wrong, checked = [], 0
    for name, page in built_pages(site).items():
        text = " ".join("".join(page.text).replace("`…", "").replace("`", "").split())
        for sentence in re.split(r"(?<=[.!?])\s+", text):
            for clause in clauses(sentence):
                for colour in {m.group(1).lower() for m in COLOUR.finditer(clause)}:
                    checked += 1
                    near = [k for k, p in meanings.items() if p.search(clause)] or [
                        k for k, p in meanings.items() if p.search(sentence)
                    ]
                    if not any(colour in words[k].replace("gray", "grey").split() for k in near):
                        wrong.append(f"{name}: {colour!r} in {sentence[:120]!r} (figures: "
                                     + ", ".join(f"{k} {words[k]}" for k in near) + ")")  # fmt: skip
    assert checked >= 5  # the docs name colours: the scan must find them
    assert not wrong, wrong


def test_the_site_works_from_files(site: Path) -> None:
    """Read from file:// (no server), a link to a folder shows a listing: every link between
    pages names its .html file."""
    folders = []
    for page in site.glob("*.html"):
        for href in re.findall(r'href="([^"#:?]*)(?:#[^"]*)?"', page.read_text()):
            if (
                href
                and not href.startswith(("assets/", "img/", "/"))
                and not href.endswith((".html", ".css", ".png", ".svg", ".json", ".js", ".xml"))
            ):
                folders.append(f"{page.name}: {href}")
    assert not folders, folders
