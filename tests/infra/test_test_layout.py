"""The tests' own layout, read with `ast` (nothing is imported): the test files mirror kvprobe's
packages (tests/<package>/test_*.py), what they share lives in one module, tests/helpers.py
(the shared fixtures in tests/conftest.py), and no test file imports another: a helper moved or
renamed in one test file then cannot break the tests of another, nor run its tests twice.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import kvprobe

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
PACKAGE = Path(kvprobe.__file__).parent
# tests.test_x, tests.cli.test_cli, tests.cli.test_cli.kvprobe: a test module, or a name in one
TEST_MODULE = re.compile(r"^tests(\.\w+)*\.test_\w*(\.|$)")


def _test_files() -> list[Path]:
    files = sorted(TESTS.rglob("test_*.py"))
    assert files, f"no test file found under {TESTS}: the checks below would check nothing"
    assert Path(__file__).resolve() in files
    return files


def _imports(source: str, package: list[str]) -> Iterator[tuple[int, str]]:
    """Every module an import in `source` (a module of `package`) names, as (line, dotted
    name), relative imports resolved; for `from M import N` both M and M.N (N may be a module)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"


def _test_imports(path: Path) -> list[str]:
    package = list(path.relative_to(ROOT).parent.parts)
    return [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for line, name in _imports(path.read_text(), package)
        if TEST_MODULE.match(name)
    ]


def test_no_test_file_imports_another_test_file() -> None:
    # conftest.py and helpers.py neither: they are imported by every test file
    paths = [*_test_files(), TESTS / "conftest.py", TESTS / "helpers.py"]
    found = [problem for path in paths for problem in _test_imports(path)]
    assert not found, "what tests share belongs in tests/helpers.py:\n" + "\n".join(found)


# The sources below write `T_` for `test_`, so that a grep of the tests for imports of test files
# finds none here.
@pytest.mark.parametrize(
    ("source", "imports_a_test_file"),
    [
        ("from tests.cli.T_cli import kvprobe", True),
        ("import tests.run.T_resume", True),
        ("from tests.cli import T_cli", True),
        ("from tests.T_x import y", True),
        ("from .T_cli import kvprobe", True),
        ("from . import T_cli", True),
        ("from ..run.T_resume import kvprobe", True),
        ("from tests.helpers import kvprobe", False),
        ("from kvprobe.infra.T_hooks import STOP_AFTER", False),
        ("from ..helpers import kvprobe", False),
    ],
)
def test_every_way_of_importing_a_test_file_is_seen(source: str, imports_a_test_file: bool) -> None:
    names = [name for _, name in _imports(source.replace("T_", "test_"), ["tests", "cli"])]
    assert any(TEST_MODULE.match(n) for n in names) == imports_a_test_file, names


def test_the_tests_mirror_kvprobes_packages_with_one_helpers_module() -> None:
    folders = {p.parent for p in _test_files()}
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert TESTS not in folders, "a test file lives in the folder of the package it tests"
    assert {f.relative_to(TESTS).as_posix() for f in folders} <= packages
    shared = sorted(
        p.relative_to(TESTS).as_posix()
        for p in TESTS.rglob("*.py")
        if not p.name.startswith("test_") and p.name != "__init__.py"
    )
    assert shared == ["conftest.py", "helpers.py"]


def test_there_is_one_kvprobe_runner() -> None:
    """`kvprobe()`, the command run in a child process, is defined once: in tests/helpers.py."""
    defined = sorted(
        path.relative_to(TESTS).as_posix()
        for path in TESTS.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef) and node.name == "kvprobe"
    )
    assert defined == ["helpers.py"]
