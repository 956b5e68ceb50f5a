"""The three pages (a result's, `compare --html`'s, a sweep's) from their Jinja2 templates: text
from files stays text on every one of them (markup, scripts, event handlers, `javascript:` links,
terminal escapes and bidirectional overrides), they share one base, and the templates ship with
the package."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import shutil
import tomllib
import unicodedata
import xml.etree.ElementTree as ET
from fnmatch import fnmatch
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import jinja2
import pytest

from kvprobe.cli import main
from kvprobe.sweep.collect import SweepReport, collect
from kvprobe.sweep.merge import Problem
from kvprobe.sweep.view import cell_page_links, sweep_page
from kvprobe.views.layout import ENVIRONMENT

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "results" / "examples"
QUICK = EXAMPLES / "quick-f16-q8_0-1024.json"
SWEEP = EXAMPLES / "sweep-default-smollm2"
TEMPLATES = ROOT / "kvprobe" / "views" / "templates"

EVIL = "</script><script>alert(1)</script><img src=x onerror=alert(2)>javascript:alert(3)\x1b[31m\u202e'\"&"
# What a page may hold: the templates' own elements, nothing a file could add.
TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "ul", "li", "b", "code",
        "table", "tr", "th", "td", "img", "a", "div", "span"}  # fmt: skip
HIDDEN = {"Cc", "Cf", "Zl", "Zp", "Cs"}
# The hostile labels are long: matplotlib says it cannot lay the sweep's heatmap out tightly.
pytestmark = pytest.mark.filterwarnings("ignore:constrained_layout not applied:UserWarning")


class Page(HTMLParser):
    """A page as a browser reads it: its elements with their attributes, and its text."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text = ""
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text += data


def assert_inert(html: str) -> Page:
    """Only the templates' own elements, no event handler, images inline, links relative paths,
    no character that hides or reorders text; every figure an SVG of the same kind."""
    page = Page(html)
    assert {tag for tag, _ in page.elements} <= TAGS
    for tag, attrs in page.elements:
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        if tag == "img":
            assert attrs["src"].startswith("data:image/svg+xml;base64,")
        if tag == "a":
            assert urlsplit(attrs["href"]).scheme == "", attrs["href"]
    assert [c for c in page.text if unicodedata.category(c) in HIDDEN and c not in "\t\n"] == []
    for tag, attrs in page.elements:
        if tag == "img":
            svg = base64.b64decode(attrs["src"].split(",", 1)[1]).decode("utf-8")
            assert [c for c in svg if unicodedata.category(c) in HIDDEN and c not in "\t\n\r"] == []
            for element in ET.fromstring(svg).iter():
                assert not element.tag.endswith("script")
                assert not [a for a in element.attrib if a.startswith("on")]
    return page


def hostile_result(folder: Path) -> Path:
    """The quick example with EVIL in every text a page shows of it, under a name that has it too."""
    doc = json.loads(QUICK.read_text())
    doc["command"] = f"kvprobe run --out {EVIL}"
    doc["model"]["name"] = f"model{EVIL}"
    doc["model"]["path"] = f"/models/{EVIL}.gguf"
    doc["scenario"]["name"] = f"scenario{EVIL}"
    doc["runtime"]["llama_cpp_build"] = EVIL
    doc["verdict"]["sentences"] = [f"{s}{EVIL}" for s in doc["verdict"]["sentences"]]
    doc["verdict"]["recommendation"]["sentence"] += EVIL
    doc["verdict"]["folklore"][0]["finding"] = EVIL
    path = folder / f"r{EVIL.replace('/', '')}.json"
    path.write_text(json.dumps(doc, ensure_ascii=False))
    return path


def hostile_sweep() -> SweepReport:
    """The sweep example with EVIL in its command, model labels, cell names and problems."""
    report = collect(SWEEP)
    rows = [dataclasses.replace(r, model=f"{r.model}{EVIL}", cell=f"{r.cell}{EVIL}") for r in report.rows]
    manifest = dataclasses.replace(report.manifest, command=f"kvprobe sweep {EVIL}")
    problems = [Problem(f"cell{EVIL}", "failed", f"why{EVIL}")]
    return dataclasses.replace(report, rows=rows, problems=problems, manifest=manifest)


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One page of each kind, made from hostile text by the real commands (the sweep's from its
    report, since a sweep's names come from a spec that refuses most of them)."""
    folder = tmp_path_factory.mktemp("pages")
    evil = hostile_result(folder)
    made = {}
    for name, argv in {
        "report": ["report", str(evil)],
        "several": ["report", str(evil), str(QUICK)],
        "compare": ["compare", str(QUICK), str(evil)],
    }.items():
        assert main([*argv, "--html", str(folder / f"{name}.html")]) == 0, name
        made[name] = (folder / f"{name}.html").read_text(encoding="utf-8")
    made["sweep"] = sweep_page(hostile_sweep(), {EVIL: f"cells/{EVIL}"})
    return made


@pytest.mark.parametrize("kind", ["report", "several", "compare", "sweep"])
def test_text_from_files_stays_text_on_every_page(pages: dict[str, str], kind: str) -> None:
    page = assert_inert(pages[kind])
    shown = EVIL.replace("\x1b", "\\x1b").replace("\u202e", "\\u202e")  # written out, as on the terminal
    assert shown in page.text  # the reader sees what the file says
    assert "<script" not in pages[kind]
    assert "&lt;/script&gt;&lt;script&gt;" in pages[kind]


def test_the_pages_share_one_base(pages: dict[str, str]) -> None:
    """Head, style sheet and title heading come from base.html on every page."""
    heads = {kind: html.split("</style>")[0].split("<style>")[1] for kind, html in pages.items()}
    assert len(set(heads.values())) == 1
    for kind, html in pages.items():
        assert html.startswith("<!DOCTYPE html>"), kind
        title = Page(html.split("</title>")[0] + "</title>").text.strip()
        # A result's page is titled by what it measured (its model first), the others "kvprobe ...".
        assert title.startswith("model" if kind == "report" else "kvprobe"), kind
        assert Page(html).text.count(title) >= 2, kind  # the <title> and the <h1>
    for template in TEMPLATES.glob("*.html"):
        if template.name not in ("base.html", "macros.html"):
            assert '{% extends "base.html" %}' in template.read_text(), template.name


def test_a_misspelt_name_in_a_template_fails_instead_of_printing_nothing() -> None:
    with pytest.raises(jinja2.UndefinedError):
        ENVIRONMENT.from_string("{{ titel }}").render(title="x")


def test_the_templates_ship_with_the_package() -> None:
    """pyproject.toml's package data holds every template, Jinja2 is a declared dependency, and
    the templates are found through the package (as a non-editable install finds them)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = project["tool"]["setuptools"]["package-data"]["kvprobe"]
    templates = [p.relative_to(ROOT / "kvprobe").as_posix() for p in TEMPLATES.rglob("*") if p.is_file()]
    assert {"views/templates/base.html", "views/templates/report.html"} <= set(templates)
    assert [t for t in templates if not any(fnmatch(t, g) for g in globs)] == []
    assert any(d.lower().startswith("jinja2") for d in project["project"]["dependencies"])
    assert isinstance(ENVIRONMENT.loader, jinja2.PackageLoader)
    assert sorted(ENVIRONMENT.list_templates()) == sorted(p.name for p in TEMPLATES.glob("*.html"))


def test_cell_links_stay_paths_whatever_the_folder_is_called(tmp_path: Path) -> None:
    """A sweep folder named like a URL scheme or with a "#" still links each cell's own page."""
    folder = tmp_path / "javascript:alert(1) #1"
    shutil.copytree(SWEEP, folder)
    for result in (folder / "cells").glob("*.json"):
        result.with_suffix(".html").write_text("<!DOCTYPE html>")
    report = collect(folder)
    links = cell_page_links(report, tmp_path / "page.html")
    assert sorted(links) == sorted(report.results)
    for href in links.values():
        parts = urlsplit(href)
        assert (parts.scheme, parts.fragment, parts.query) == ("", "", "")
        assert (tmp_path / unquote(href)).is_file()


def test_a_results_page_says_what_and_its_verdicts_first() -> None:
    """The title is the model, the caches, the context and the day; a badge per configuration
    comes before the Recommendation; a configuration shown worse is not marked ● frontier."""
    from kvprobe.result.store import load_result
    from kvprobe.views.html import result_view

    path = EXAMPLES / "default-f16-q4_0-8192.json"
    doc = load_result(path)
    view = result_view(path.name, doc)
    assert view.title == "gemma-3-270m-q4_k_m.gguf: q4_0 against f16 at 8,192 tokens, 7 Dec 2026"
    weights = EXAMPLES / "weights-F16-vs-Q4_0-f16-q4_0-4096.json"
    assert result_view(weights.name, load_result(weights)).title.startswith(
        "ref gemma-3-270m-F16.gguf vs test gemma-3-270m-Q4_0.gguf: "
    )  # both weight files of the weights-vs-KV design
    assert [(b.config, b.status) for b in view.badges] == [("f16", "reference"), ("q4_0", "worse")]
    assert view.badges[1].saves == "saves 72% of KV memory"
    assert view.decision is not None
    frontier = view.decision.frontier
    marks = {row[0]: row[frontier.header.index("frontier")] for row in frontier.rows}
    assert marks == {"f16": "●", "q4_0": ""}
    from kvprobe.views.layout import render_page

    html = render_page("report.html", title=view.title, results=[view], matrix=None)
    assert html.index('data-status="worse"') < html.index("<h2>Recommendation</h2>")
    assert "● frontier:" in Page(html).text
    assert "shown worse" in Page(html).text
    # Each verdict word in its look (a grey, an icon), never in a configuration's colour.
    from kvprobe.views.figures import VERDICTS, configuration_colours

    words = dict(re.findall(r'data-status="(\w+)">.*?<span class="word" style="([^"]*)">', html))
    assert set(words) == {"reference", "worse"}
    for status, style in words.items():
        look = VERDICTS[status]
        assert style == f"background: {look.fill}; color: {look.ink}; border: 2px {look.dash} {look.edge}"
        assert not set(re.findall(r"#[0-9A-F]{6}", style.upper())) & configuration_colours(), style
    assert '<span class="icon" aria-hidden="true">✗</span> worse</span>' in html
    # A llama.cpp flag stays with its value (a span that never wraps); the text copied is the flags.
    pairs = " ".join(f'<span class="pair">{p}</span>' for p in ("-ctk q4_0", "-ctv q4_0", "-fa on"))
    assert pairs in html
    assert "-ctk q4_0 -ctv q4_0 -fa on" in Page(html).text
    assert '(add <span class="pair">--split-kv</span>)' in html  # the rules of thumb's flags too
