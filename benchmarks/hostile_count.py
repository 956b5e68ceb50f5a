"""Count the hostile inputs the tests try, by class (issue 38): the cases of the hostile-input,
bad-input and fuzz test files, as pytest collects them, grouped by the class of failure each
guards against; the property-based tests (hypothesis) apart, with the examples each tries.

    python benchmarks/hostile_count.py              # the table, as docs/measured.md shows it
    python benchmarks/hostile_count.py --ids        # and every test id under its class

Nothing runs but pytest's collection: the numbers are what the suite tries today. A test that
no rule below names is counted under "other", never left out."""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ("tests/**/test_bad_input.py", "tests/**/test_hostile_*.py", "tests/**/test_fuzz_*.py")
EXAMPLES_ENV = "KVPROBE_FUZZ_EXAMPLES"  # as tests/conftest.py: examples per property
PLAIN_PYTEST_EXAMPLES = 100  # the "kvprobe" hypothesis profile, without `nox -s fuzz`
# Each class, and what its tests are called; the first that matches a test id takes it.
CLASSES: list[tuple[str, str]] = [
    (
        "untrusted text: controls written out on the terminal and the page",
        r"bidi|literally|locks_text|visible_writes",
    ),
    ("the fuzzing's own check (it walks every field)", r"field_walk"),
    (
        "outputs written only where asked (data loss)",
        r"test_hostile_outputs\.py::test_(a_lock_path|force_|quantize_|report_|sweep_takes)"
        r"|copied_sweep|manifest_cannot_point|link_in_a_sweep|replaces_only|schema_1_manifest|path_a_manifest",
    ),
    (
        "inputs that cannot change under a run; results checked against their cell",
        r"fingerprint|changed_during|changed_after|rewritten_before|items_are_copied|typed_options"
        r"|another_cells_place|another_run_of|model_that_changed|weights_vs_kv_cell",
    ),
    (
        "every reader bounded (hangs, memory)",
        r"bounded_regular_file|allocates|long_unbroken|300k|cache_file_is_an_empty|odd_file_in_the_cache"
        r"|fifo_in_a_sweep|proc_file|reader_checks|what_it_is_drawing",
    ),
    (
        "system failures in one line (tracebacks)",
        r"longer_than_the_system|standard_output|output_pipe|ctrl_c_while|cannot_grow|full_disk"
        r"|cannot_be_written|damaged_manifest",
    ),
    ("messages that tell the truth", r"ctrl_c_after|sentinel"),
    ("hostile command lines and files across every command", r"test_bad_input\.py::"),
]


def examples() -> tuple[int, str]:
    """Examples per property, and who runs that many: KVPROBE_FUZZ_EXAMPLES, else `nox -s fuzz`'s."""
    if os.environ.get(EXAMPLES_ENV):
        return int(os.environ[EXAMPLES_ENV]), EXAMPLES_ENV
    found = re.search(r"^FUZZ_EXAMPLES_CI = (\d+)", (ROOT / "noxfile.py").read_text(), re.MULTILINE)
    return (int(found[1]), "nox -s fuzz, as CI runs it") if found else (PLAIN_PYTEST_EXAMPLES, "pytest")


def test_files() -> list[Path]:
    return sorted({p for pattern in FILES for p in ROOT.glob(pattern)})


def collected(files: list[Path]) -> list[str]:
    """Every test id pytest collects in `files` (parametrized cases one by one)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         *(str(f.relative_to(ROOT)) for f in files)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        sys.exit(f"pytest could not collect the tests:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return [line for line in proc.stdout.splitlines() if "::" in line]


def properties(files: list[Path]) -> set[str]:
    """`file::function` of every property-based test (decorated with hypothesis's @given)."""
    found = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and any(_is_given(d) for d in node.decorator_list):
                found.add(f"{path.relative_to(ROOT)}::{node.name}")
    return found


def _is_given(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return (isinstance(target, ast.Name) and target.id == "given") or (
        isinstance(target, ast.Attribute) and target.attr == "given"
    )


def by_class(ids: list[str], props: set[str]) -> tuple[dict[str, list[str]], list[str]]:
    """The cases of each class (in CLASSES' order, "other" last), and the property tests."""
    classes: dict[str, list[str]] = defaultdict(list)
    found_props = []
    for test_id in ids:
        if test_id.split("[", 1)[0] in props:
            found_props.append(test_id)
            continue
        name = next((c for c, rule in CLASSES if re.search(rule, test_id)), "other")
        classes[name].append(test_id)
    ordered = {c: classes[c] for c, _ in CLASSES if classes[c]}
    if classes["other"]:
        ordered["other"] = classes["other"]
    return ordered, found_props


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", action="store_true", help="also list every test id under its class")
    args = parser.parse_args()
    files = test_files()
    ids = collected(files)
    classes, props = by_class(ids, properties(files))
    each, who = examples()
    print(f"hostile inputs the tests try ({len(files)} files: {', '.join(FILES)})\n")
    print("| class | cases |\n|---|---|")
    for name, cases in classes.items():
        print(f"| {name} | {len(cases)} |")
    cases_total = sum(len(c) for c in classes.values())
    print(f"| **every case** | **{cases_total}** |")
    print(
        f"| property-based fuzzing (valid inputs generated, then mutated) | {len(props)} properties x "
        f"{each} examples = {len(props) * each:,} ({who}) |"
    )
    if args.ids:
        for name, cases in [*classes.items(), ("properties", props)]:
            print(f"\n{name}:")
            for test_id in cases:
                print(f"  {test_id}")


if __name__ == "__main__":
    main()
