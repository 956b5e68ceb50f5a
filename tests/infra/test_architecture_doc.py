"""docs/architecture.md names only what exists: every code span that reads as a kvprobe path or
a dotted name (`run/`, `run/execute.py`, `run/execute.execute_run`, `stats.inference.difference_test`,
`kvprobe.engine.get_engine`, `Runner.run_all`), every folder of its diagram, and every module named
in a row of its table of packages (in that row's folder), resolved against the source with `ast`
(nothing is imported). A name the code no longer has fails the test, naming it.

What reads as a name: a span with a `/` is a path (from the repository root where it starts with
one of its folders, `kvprobe/`, `tests/`, `benchmarks/`, else from `kvprobe/`), its last part
optionally `module.attribute...`; a bare `module.py` is a module somewhere in kvprobe (in the row's
folder, in the table); a dotted name is a module named by its last dotted parts (`kit.words`,
`kvprobe.run.execute`) followed by attributes, or a class followed by its members (base classes
included); a bare CamelCase or UPPER_CASE word (`RunRequest`, `TEXT_ROWS`) is a class, function,
constant or class member kvprobe defines somewhere. Spans with spaces or punctuation (`kvprobe run`,
`--ctx`, `k=q4_0,v=f16`), lower-case bare words (`ctx`, `check_run`) and file names of other kinds
(`sweep.json`) are prose, not names.
"""

from __future__ import annotations

import ast
import functools
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import kvprobe

PACKAGE = Path(kvprobe.__file__).parent
ROOT = PACKAGE.parent
DOC = ROOT / "docs" / "architecture.md"
REPO_FOLDERS = {"kvprobe", "tests", "benchmarks", "docs", "scenarios"}  # paths from the repository root
OTHER_FILES = {"json", "jsonl", "toml", "md", "html", "txt", "yml", "yaml", "svg", "png", "gguf", "cfg"}
MIN_NAMES = 250  # the doc names about 350: a parser that stopped matching would find far fewer

PATH = re.compile(r"[\w.-]+(?:/[\w.-]+)*/?")
DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")
IDENTIFIER = re.compile(r"[A-Z]\w*[a-z]\w*|[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+")  # `RunRequest`, `TEXT_ROWS`
CALL = re.compile(r"([\w./]+)\(.*\)")  # `get_engine(name)`: the name before the call
SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
DIAGRAM_FOLDER = re.compile(r"(?<![\w/.<-])((?:[a-z_]+/)+)(?![\w<])")
FENCE = re.compile(r"^\s*```(\S*)")


@dataclass(frozen=True)
class Name:
    text: str
    folder: str | None = None  # the package-table row's folder, where the name stands in one


@dataclass
class Checked:
    resolved: list[Name] = field(default_factory=list)
    missing: list[Name] = field(default_factory=list)


# --- the doc: its code spans, its diagram's folders, its table of packages --------------------------


def _table_cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def names_in(text: str) -> Iterator[Name]:
    """Every candidate name of the Markdown `text`: code spans outside fenced blocks (those in a
    row of the table whose first column is "where" carry that row's folder), and the folders of
    the fenced blocks without a language (the diagrams)."""
    fence: str | None = None
    in_packages = False
    for line in text.splitlines():
        opened = FENCE.match(line)
        if opened and fence is None:
            fence = opened.group(1)
            continue
        if opened and fence is not None:
            fence = None
            continue
        if fence is not None:
            if fence == "":
                yield from (Name(folder) for folder in DIAGRAM_FOLDER.findall(line))
            continue
        cells = _table_cells(line) if line.lstrip().startswith("|") else []
        if cells and cells[0] == "where":
            in_packages = True
            continue
        in_packages = in_packages and bool(cells)
        folder = None
        if in_packages and not set(cells[0]) <= {"-", ":"}:
            where = SPAN.findall(cells[0])
            folder = where[0].strip("/") if where else None
        for span in SPAN.findall(line):
            if folder is not None and span.strip("/") == folder:
                yield Name(span)  # the row's own folder, from kvprobe/
            else:
                yield Name(span, folder)


def where_column(text: str) -> set[str]:
    """The folders named in the first column of the table of packages."""
    found: set[str] = set()
    in_packages = False
    for line in text.splitlines():
        cells = _table_cells(line) if line.lstrip().startswith("|") else []
        if cells and cells[0] == "where":
            in_packages = True
        elif not cells:
            in_packages = False
        elif in_packages:
            found.update(span.strip("/") for span in SPAN.findall(cells[0]))
    return found


# --- the code: modules, their top-level names, classes and their members ------------------------------


@functools.cache
def modules() -> dict[str, Path]:
    """Every module of kvprobe by its dotted name (a package by its __init__.py)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _module_of(path: Path) -> str | None:
    return next((name for name, p in modules().items() if p == path), None)


def _statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """A module's or a class's statements, those under `if`/`try`/`with` included."""
    for node in body:
        yield node
        if isinstance(node, (ast.If, ast.Try, ast.With)):
            yield from _statements(node.body)
            yield from _statements(getattr(node, "orelse", []))
            for handler in getattr(node, "handlers", []):
                yield from _statements(handler.body)


def _defined(body: list[ast.stmt]) -> dict[str, ast.AST]:
    """Names a body defines: functions, classes, assignments and (in a module) imports."""
    out: dict[str, ast.AST] = {}
    for node in _statements(body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for leaf in ast.walk(target):
                    if isinstance(leaf, ast.Name):
                        out[leaf.id] = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                out[alias.asname or alias.name.split(".")[0]] = node
    return out


@functools.cache
def top_level(module: str) -> dict[str, ast.AST]:
    return _defined(ast.parse(modules()[module].read_text(encoding="utf-8")).body)


@functools.cache
def classes() -> dict[str, list[ast.ClassDef]]:
    """Every class of kvprobe (nested ones too) by its name."""
    out: dict[str, list[ast.ClassDef]] = {}
    for module in modules():
        for node in ast.walk(ast.parse(modules()[module].read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                out.setdefault(node.name, []).append(node)
    return out


def _base_names(node: ast.ClassDef) -> Iterator[str]:
    for written in node.bases:
        base = written
        while isinstance(base, ast.Subscript):  # QuestionProbe[Spec], Generic[S]
            base = base.value
        if isinstance(base, ast.Name):
            yield base.id
        elif isinstance(base, ast.Attribute):
            yield base.attr


def class_has(node: ast.ClassDef, parts: list[str], seen: frozenset[int] = frozenset()) -> bool:
    """Whether the class (or a base class of kvprobe's) has the member chain `parts`."""
    if not parts:
        return True
    member = _defined(node.body).get(parts[0])
    if member is not None:
        return len(parts) == 1 or (isinstance(member, ast.ClassDef) and class_has(member, parts[1:]))
    seen = seen | {id(node)}
    return any(
        class_has(base, parts, seen)
        for name in _base_names(node)
        for base in classes().get(name, [])
        if id(base) not in seen
    )


def module_has(module: str, parts: list[str]) -> bool:
    """Whether `module` has the attribute chain `parts`: a top-level name, then a class's members,
    or through a name it imports from kvprobe."""
    if not parts:
        return True
    found = top_level(module).get(parts[0])
    if found is None:
        return False
    if len(parts) == 1:
        return True
    if isinstance(found, ast.ClassDef):
        return class_has(found, parts[1:])
    if isinstance(found, ast.ImportFrom) and found.module and found.level == 0:
        return dotted_exists([*found.module.split("."), *parts])
    return False


def dotted_exists(parts: list[str]) -> bool:
    """A module named by its last dotted parts, then attributes; or a class, then its members."""
    for cut in range(len(parts), 0, -1):
        tail = ".".join(parts[:cut])
        for module in modules():
            if (module == tail or module.endswith("." + tail)) and module_has(module, parts[cut:]):
                return True
    return any(class_has(node, parts[1:]) for node in classes().get(parts[0], []))


@functools.cache
def defined_anywhere() -> frozenset[str]:
    """Every name kvprobe defines (not imports): top-level names, classes, class members."""
    out: set[str] = set()
    for module in modules():
        tree = ast.parse(modules()[module].read_text(encoding="utf-8"))
        bodies = [tree.body] + [n.body for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
        for body in bodies:
            out.update(
                k for k, v in _defined(body).items() if not isinstance(v, (ast.Import, ast.ImportFrom))
            )
    return frozenset(out)


def path_exists(text: str, folder: str | None) -> bool:
    """A folder (`run/`), a file (`run/execute.py`, `tests/...`), a module without its suffix
    (`plan/scenario`) or a module's attribute (`run/execute.execute_run`)."""
    segments = text.rstrip("/").split("/")
    bases = [PACKAGE / folder, PACKAGE] if folder else [PACKAGE]
    for base in [ROOT] if segments[0] in REPO_FOLDERS else bases:
        target = base.joinpath(*segments)
        if text.endswith("/"):
            if target.is_dir():
                return True
            continue
        if target.exists():
            return True
        head, *attributes = segments[-1].split(".")
        parent = target.parent
        for source in (parent / f"{head}.py", parent / head / "__init__.py"):
            module = _module_of(source) if source.is_file() else None
            if module is not None and module_has(module, attributes):
                return True
    return False


def bare_module_exists(text: str, folder: str | None) -> bool:
    """`runner.py`: in the table row's folder, else anywhere in kvprobe."""
    if folder is not None:
        return (PACKAGE / folder / text).is_file()
    return any(PACKAGE.rglob(text))


def kind(text: str) -> str | None:
    """What the span names: a "path", a "module" (a bare `x.py`), a "dotted" name, an
    "identifier" (a bare CamelCase or UPPER_CASE name), or None (prose)."""
    call = CALL.fullmatch(text)
    if call:
        text = call.group(1)
    if "/" in text and PATH.fullmatch(text) and not text.startswith("-"):
        return "path"
    if re.fullmatch(r"\w+\.py", text):
        return "module"
    if DOTTED.fullmatch(text) and text.rsplit(".", 1)[1] not in OTHER_FILES:
        return "dotted"
    if IDENTIFIER.fullmatch(text):
        return "identifier"
    return None


def resolves(name: Name) -> bool | None:
    """Whether the name exists; None where the span is prose or a placeholder (`probes/<name>/`)."""
    found = kind(name.text)
    text = CALL.sub(r"\1", name.text)
    if found is None or "<" in text:
        return None
    if found == "path":
        return path_exists(text, name.folder)
    if found == "module":
        return bare_module_exists(text, name.folder)
    if found == "identifier":
        return text in defined_anywhere()
    return dotted_exists(text.split("."))


def check(doc: Path) -> Checked:
    """Every name of `doc`, resolved or missing (each distinct name once)."""
    checked = Checked()
    for name in dict.fromkeys(names_in(doc.read_text(encoding="utf-8"))):
        found = resolves(name)
        if found is not None:
            (checked.resolved if found else checked.missing).append(name)
    return checked


def _shown(names: list[Name]) -> str:
    return "\n".join(f"`{n.text}`" + (f" (in the row of {n.folder}/)" if n.folder else "") for n in names)


# --- the tests ---------------------------------------------------------------------------------------


def test_every_name_in_the_architecture_doc_exists() -> None:
    checked = check(DOC)
    assert not checked.missing, "docs/architecture.md names what the code does not have:\n" + _shown(
        checked.missing
    )
    assert len(checked.resolved) >= MIN_NAMES, (
        f"only {len(checked.resolved)} names found: is the parser broken?"
    )


def test_the_table_of_packages_names_every_package() -> None:
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert packages, "no package found"
    left_out = packages - where_column(DOC.read_text(encoding="utf-8"))
    assert not left_out, f"docs/architecture.md's table of packages lacks: {sorted(left_out)}"


def test_a_name_that_does_not_exist_is_reported(tmp_path: Path) -> None:
    """The checker sees what it must refuse: each bogus name below, in prose and in the table."""
    copy = tmp_path / "architecture.md"
    shutil.copy(DOC, copy)
    bogus = [
        "run/execute.no_such_function",
        "run/no_such_module.py",
        "no_such_folder/",
        "kvprobe.stats.no_such_module",
        "stats.verdict.no_such_function",
        "Runner.no_such_method",
        "result/store.Result.no_such_method",
        "tests/no_such_test.py",
        "NoSuchRecord",
        "NO_SUCH_CONSTANT",
    ]
    with copy.open("a", encoding="utf-8") as out:
        out.write("\n" + " ".join(f"`{name}`" for name in bogus) + "\n")
        out.write("\n| where | job | knows llama.cpp? |\n|---|---|---|\n")
        out.write("| `run/` | `no_such.py`, `runner.py` | no |\n")
        out.write("\n```\ncli/ ──► no_such_stage/\n```\n")
    checked = check(copy)
    missing = {n.text for n in checked.missing}
    assert missing == {*bogus, "no_such.py", "no_such_stage/"}, _shown(checked.missing)
    assert Name("runner.py", "run") in checked.resolved  # the row's modules are found in its folder
    assert [kind(s) for s in ("kvprobe run", "sweep.json", "--ctx", "ctx")] == [None] * 4
