"""kvprobe's import rules, read from the source with `ast` (nothing is imported): no cycle, no
arrow climbing back up the floors, and few function-local imports of kvprobe's own modules, each
with a comment saying why (docs/development.md, "Layers").

A room is a package of kvprobe (`kvprobe.run`) or a top-level module (`kvprobe.__main__`); a
room imports only rooms on its own floor or below. An import under
`if TYPE_CHECKING:` is an arrow too (the types a module names are what it depends on), but it
runs nothing, so it cannot make a cycle at run time.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import kvprobe

PACKAGE = Path(kvprobe.__file__).parent

# Lowest first; rooms on one floor may import each other (without a cycle). The probes are
# plug-ins over the stages' helpers (schema blocks, statistics) that nothing names; `run`
# drives a run to its result, verdict and report, so it stands over result, stats and views.
FLOORS: list[set[str]] = [
    {"infra", "__init__"},  # `kvprobe` itself holds only __version__
    {"api"},
    {"plan", "weights", "engine"},
    {"result"},
    {"stats"},
    {"probes"},
    {"views"},
    {"run"},
    {"sweep"},
    {"cli", "__main__"},
]
FLOOR = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}
MAX_LOCAL_IMPORTS = 5
# Arrows that climb, tolerated while they are being removed (none left): `test_nothing_is_pending`
# says when one is gone, so that the list only shrinks.
PENDING: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Arrow:
    source: str  # the importing module, dotted
    target: str  # the imported module, dotted
    line: int
    local: bool  # inside a function
    typing_only: bool  # under `if TYPE_CHECKING:`
    commented: bool  # a comment on its own lines, or a comment line just above it

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line} -> {self.target}"


def modules() -> dict[str, Path]:
    """Every module of kvprobe by its dotted name."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _target(name: str, known: dict[str, Path]) -> str:
    """The module `name` stands for: itself, else the longest module it starts with."""
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, local: bool, typing_only: bool) -> Iterator[tuple[ast.AST, bool, bool]]:
    for child in ast.iter_child_nodes(node):
        yield child, local, typing_only
        inner_local = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        inner_typing = typing_only or (isinstance(child, ast.If) and _is_type_checking(child))
        yield from _walk(child, inner_local, inner_typing)


def _arrows_of(name: str, path: Path, known: dict[str, Path]) -> Iterator[Arrow]:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    for node, local, typing_only in _walk(ast.parse(text), False, False):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from kvprobe.x import y`: the module y where there is one, else x.
            targets = [_target(f"{node.module}.{alias.name}", known) for alias in node.names]
        for target in targets:
            if target != "kvprobe" and not target.startswith("kvprobe."):
                continue
            assert isinstance(node, (ast.Import, ast.ImportFrom))
            end = node.end_lineno or node.lineno
            above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
            commented = above.startswith("#") or any("#" in line for line in lines[node.lineno - 1 : end])
            yield Arrow(name, _target(target, known), node.lineno, local, typing_only, commented)


@functools.cache
def arrows() -> tuple[Arrow, ...]:
    known = modules()
    return tuple(a for name, path in known.items() for a in _arrows_of(name, path, known))


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, as the nodes along it, or None."""
    state: dict[str, int] = {}  # 1: on the path now, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_graph_is_read() -> None:
    """The rules below see kvprobe's imports (a parser that found none would pass them all)."""
    found = arrows()
    assert len(found) > 100
    assert any(a.source == "kvprobe.cli.run" and a.target.startswith("kvprobe.run") for a in found)
    assert set(map(room, modules())) <= set(FLOOR), "a new package: give it a floor in FLOORS"


def test_no_cycle_between_rooms() -> None:
    edges: dict[str, set[str]] = {}
    for a in arrows():
        if not a.typing_only and room(a.source) != room(a.target) and (a.source, a.target) not in PENDING:
            edges.setdefault(room(a.source), set()).add(room(a.target))
    cycle = _cycle(edges)
    assert cycle is None, " -> ".join(cycle or [])


def test_no_cycle_between_modules() -> None:
    edges: dict[str, set[str]] = {}
    for a in arrows():
        if not a.typing_only and a.source != a.target:
            edges.setdefault(a.source, set()).add(a.target)
    cycle = _cycle(edges)
    assert cycle is None, " -> ".join(cycle or [])


def test_no_arrow_climbs_back_up() -> None:
    climbing = [
        f"{a.where} ({room(a.source)} is on floor {FLOOR[room(a.source)]}, {room(a.target)} on "
        f"{FLOOR[room(a.target)]})"
        for a in arrows()
        if FLOOR[room(a.target)] > FLOOR[room(a.source)] and (a.source, a.target) not in PENDING
    ]
    assert not climbing, "\n".join(climbing)


def test_nothing_is_pending() -> None:
    left = sorted({(a.source, a.target) for a in arrows()} & PENDING)
    assert not left, left


def test_few_function_local_imports_each_with_a_reason() -> None:
    local = [a for a in arrows() if a.local and not a.typing_only]
    statements = {(a.source, a.line): a for a in local}  # one statement may import several names
    silent = [a.where for a in statements.values() if not a.commented]
    assert not silent, "a function-local import says why in a comment:\n" + "\n".join(silent)
    assert len(statements) <= MAX_LOCAL_IMPORTS, "\n".join(a.where for a in statements.values())


def test_the_rules_see_what_they_forbid(tmp_path: Path) -> None:
    """A cycle, and a function-local import with and without its reason, are seen as such."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import kvprobe.api\n"
        "if TYPE_CHECKING:\n    from kvprobe.run import execute\n"
        "def f() -> None:\n    from kvprobe.infra import paths  # why\n"
        "    import kvprobe.cli\n"
    )
    known = {**modules(), "kvprobe.m": source}
    found = {a.target: a for a in _arrows_of("kvprobe.m", source, known)}
    assert not found["kvprobe.api"].local
    assert found["kvprobe.run.execute"].typing_only
    assert found["kvprobe.infra.paths"].local
    assert found["kvprobe.infra.paths"].commented
    assert found["kvprobe.cli"].local
    assert not found["kvprobe.cli"].commented
