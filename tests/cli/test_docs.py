"""The docs stay true to the code: the command-line reference is what the parser generates
(every option of every command, none that does not exist), every `kvprobe <command> --option`
written anywhere in the README or the docs exists, the docs' home page is the README, the README
stays short, and each page screenshot is of the page the code makes today."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
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
