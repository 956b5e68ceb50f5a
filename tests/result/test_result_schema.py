"""The result schema (kvprobe.result.schema): the one statement of what a result file holds. The
committed doc's tables are generated from it; every committed result keeps it; and mutated real
result files, run through `kvprobe report` and `kvprobe compare` in-process, end either in
success or in one line with exit code 2, never in a traceback."""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest

from kvprobe.api.result import ResultDoc
from kvprobe.cli import main
from kvprobe.infra.errors import UserError
from kvprobe.result import schema, schema_doc
from kvprobe.result.blocks import Check, first_problem
from kvprobe.result.store import Result, load_result
from kvprobe.sweep.manifest import KIND as MANIFEST_KIND
from kvprobe.sweep.manifest import MANIFEST, load_manifest
from tests.helpers import MUTATION_LITERALS, Mutation, examples, kvprobe, mutated_text

ROOT = Path(__file__).resolve().parents[2]


def _committed_result(p: Path) -> bool:
    return (
        "sweeps" not in p.relative_to(ROOT / "results").parts
        and "schema_version" in (doc := json.loads(p.read_text()))
        and doc.get("kind") != MANIFEST_KIND
    )


# Result files only (a user's own sweeps under results/sweeps/ are not the project's): a sweep
# folder's manifest (sweep.json) has its own loader, tested below.
COMMITTED = examples("results/**/*.json", _committed_result)
SWEEPS = sorted(p.parent for p in examples(f"results/examples/**/{MANIFEST}"))
DOC = ROOT / "docs" / "result-schema.md"
# Every needle, repetition and divergence field, K-vs-V and the null check: two documents,
# a K/V split, every probe.
RICH_SCENARIO = """
name = "rich"
probes = ["needle", "repetition", "divergence"]
[plan]
documents = 2
chunk = 256
[needle]
per_segment = 2
[repetition]
tokens = 16
offsets = 2
[divergence]
onset_reference = 64
"""


def test_the_doc_tables_are_generated_from_the_schema() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert schema_doc.render_doc(text) == text, (
        "run: python -m kvprobe.result.schema_doc docs/result-schema.md"
    )
    tables = schema.documented().tables  # the file's own, and each built-in probe's
    assert text.count("<!-- table: ") == len(tables) + 1  # and the migrations
    for name, (table_schema, _) in tables.items():
        for field in table_schema["properties"]:
            assert f"`{field}`" in text, (name, field)


def test_the_schema_is_a_json_schema_of_draft_2020_12() -> None:
    whole = schema.built().schema
    jsonschema.Draft202012Validator.check_schema(whole)
    assert json.loads(json.dumps(whole)) == whole  # plain JSON, printable (--json)


def test_the_json_schema_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    assert schema_doc.main(["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["$defs"]["item"] == schema.built().defs["item"]


@pytest.mark.parametrize("folder", SWEEPS, ids=[p.name for p in SWEEPS])
def test_every_committed_sweep_loads_and_its_cells_keep_the_schema(folder: Path) -> None:
    manifest = load_manifest(folder)
    done = [cell for cell in manifest.cells.values() if cell.status == "done"]
    assert done
    for cell in done:
        doc = json.loads((folder / cell.out).read_text())
        assert first_problem(_validator(), doc) is None, cell.out


@pytest.mark.parametrize("path", COMMITTED, ids=[p.name for p in COMMITTED])
def test_every_committed_result_keeps_the_schema(path: Path) -> None:
    doc = json.loads(path.read_text())
    assert first_problem(_validator(), doc) is None
    assert _by_reference(doc)
    assert Result.load(path).doc["schema_version"] == 4


@pytest.fixture(scope="module")
def rich_result(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Path:
    folder = tmp_path_factory.mktemp("rich")
    (folder / "rich.toml").write_text(RICH_SCENARIO)
    out = folder / "rich.json"
    proc = kvprobe(
        "run", "--model", str(tiny_model_path), "--scenario", str(folder / "rich.toml"), "--ctx", "1024",
        "--cache", "q4_0", "--split-kv", "--null-check", "--threads", "2", "--no-html", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out


def test_a_wrong_type_is_named_by_its_json_path(tmp_path: Path, rich_result: Path) -> None:
    doc = json.loads(rich_result.read_text())
    cid = next(c for c in doc["verdict"]["configs"] if "=" in c)  # named in brackets: k=q4_0,v=f16
    doc["verdict"]["configs"][cid]["equivalence"]["status"] = "fine"
    bad = tmp_path / "R.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(UserError) as info:
        load_result(bad)
    assert str(info.value) == (
        f'result file {bad}: verdict.configs["{cid}"].equivalence.status must be "equivalent" or '
        '"undecided" or "worse", not "fine"; use an intact file or run it again'
    )


# --- mutations of real result files ----------------------------------------------------------------


_WRONG: dict[type, list[Any]] = {  # what each type of value is replaced with
    str: [7, ["x"], {"x": 1}],
    bool: [1, "true"],
    int: ["7", 1.5, -1, True, [7]],
    float: ["0.5", True, [0.5], {}],
    list: ["x", {}, [[[[]]]]],
    dict: ["x", [], 0],
}


def _walk(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """Every field, with the first and the last entry of each list."""
    yield path, value
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _walk(child, (*path, key))
    elif isinstance(value, list):
        for i in sorted({0, len(value) - 1}) if value else ():
            yield from _walk(value[i], (*path, i))


def _shape(doc: dict[str, Any], path: tuple[str | int, ...]) -> tuple[str, ...]:
    """Fields that mean the same: list entries alike, unless they are rows of different probes
    and metrics; configuration ids alike."""
    ids = {c["id"] for c in doc["configs"]} | {"(text)", "(null)"}
    out: list[str] = []
    node: Any = doc
    for step in path:
        child = node[step]
        if isinstance(step, int):
            row = child if isinstance(child, dict) else {}
            out.append(f"[{row.get('probe', '')}/{row.get('metric', '')}]")
        else:
            out.append("*" if step in ids else step)
        node = child
    return tuple(out)


def mutations(doc: dict[str, Any]) -> list[Mutation]:
    """For one field of every kind: deleted, of each wrong type, null, nested, and for numbers
    NaN, infinity and a number beyond a double; plus nesting past any limit."""
    seen: set[tuple[str, ...]] = set()
    out: list[Mutation] = []
    for path, value in _walk(doc):
        shape = _shape(doc, path)
        if not path or shape in seen:
            continue
        seen.add(shape)
        out.append(Mutation(path, "delete"))
        out += [Mutation(path, "type", wrong) for wrong in _WRONG.get(type(value), [])]
        out += [Mutation(path, "null"), Mutation(path, "nest", [value])]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out += [Mutation(path, "nan"), Mutation(path, "inf"), Mutation(path, "huge")]
    out += [Mutation(p, "deep") for p in (("verdict",), ("summary", 0, "ci"), ("scenario", "spec"))]
    return out


def _validator() -> Check:
    """The whole file's schema, compiled (kvprobe.result.blocks.checker; first_problem names the field)."""
    return schema.built().check("result", lambda: schema.built().schema)


def _whole_number(_checker: Any, value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@functools.cache
def _reference() -> Any:
    """jsonschema's validator of the whole file, the reference the compiled check must agree
    with (with the compiled check's integers: 1.0 is no whole number)."""
    kind = jsonschema.Draft202012Validator
    strict = jsonschema.validators.extend(
        kind, type_checker=kind.TYPE_CHECKER.redefine("integer", _whole_number)
    )
    return strict(schema.built().schema)


def _by_reference(doc: Any) -> bool:
    return bool(_reference().is_valid(doc))


@dataclass
class Outcomes:
    refused: int = 0
    accepted: int = 0
    rendered: int = 0

    def __str__(self) -> str:
        return f"{self.refused} refused in one line, {self.accepted} accepted ({self.rendered} drawn)"


def _one_line(capsys: pytest.CaptureFixture[str], rc: int, what: str) -> None:
    err = capsys.readouterr().err
    assert rc in (0, 2), what
    if rc == 2:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1, (what, err)
        assert "Traceback" not in err


def _figures(doc: ResultDoc) -> list[Any]:
    from kvprobe.api import all_probes
    from kvprobe.views.decision import frontier_figure

    return [frontier_figure(doc), *(f for p in all_probes() for f in p.figures(doc))]


def _page_text(doc: ResultDoc) -> str:
    """What the page shows besides its figures, read (the figures are drawn where they changed)."""
    from kvprobe.views.html import result_view
    from kvprobe.views.terminal import matrix_rows

    return repr(result_view("r", doc)) + repr(matrix_rows([("r", doc)]))


def run_mutation(
    original: Path, m: Mutation, folder: Path, capsys: pytest.CaptureFixture[str], outcomes: Outcomes
) -> None:
    """`report` (plain and with --margin), `compare` both ways; where the file is accepted, the
    page and the figures too. Success, or exit 2 with one line; nothing written where refused."""
    doc = json.loads(original.read_text())
    path = folder / "m.json"
    path.write_text(mutated_text(doc, m))
    before = path.read_bytes()
    what = f"{original.name}: {m}"
    try:
        shown: ResultDoc | None = Result.load(path).doc
    except UserError as exc:
        shown, refusal = None, str(exc)
    if shown is None:
        assert "\n" not in refusal, what
    rc = main(["report", str(path)])
    _one_line(capsys, rc, what)
    assert (rc == 0) == (shown is not None), what
    for argv in (["report", str(path), "--margin", "kld_mean=0.01"], ["compare", str(original), str(path)],
                 ["compare", str(path), str(original)]):  # fmt: skip
        _one_line(capsys, main(argv), what)
    assert path.read_bytes() == before, what
    if shown is None:
        outcomes.refused += 1
        return
    outcomes.accepted += 1
    if _figures(shown) != _figures(Result.load(original).doc):  # drawn only where the data changed
        page, pngs = folder / "page.html", folder / "png"
        rc = main(["report", str(path), "--margin", "kld_mean=0.01", "--html", str(page), "--png", str(pngs)])
        _one_line(capsys, rc, what)
        outcomes.rendered += 1
    else:
        _page_text(shown)


def _select(cases: list[Mutation], stride: int) -> list[Mutation]:
    """All of them with KVPROBE_MUTATIONS=all; otherwise every `stride`-th (still each kind of
    mutation, on fields all over the file), so that the suite stays quick."""
    return cases if os.environ.get("KVPROBE_MUTATIONS") == "all" else cases[::stride]


STRIDES = {"quick": 3, "rich": 9}  # the rich file's statistics take longer


@pytest.mark.parametrize("which", list(STRIDES))
def test_mutated_results_are_refused_in_one_line_or_shown(
    which: str,
    tiny_quick_result: Path,
    rich_result: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    original = tiny_quick_result if which == "quick" else rich_result
    cases = _select(mutations(json.loads(original.read_text())), STRIDES[which])
    outcomes = Outcomes()
    for m in cases:
        run_mutation(original, m, tmp_path, capsys, outcomes)
    print(f"{which}: {len(cases)} mutations: {outcomes}")  # the count, shown with -s
    assert outcomes.refused > len(cases) / 2  # the schema refuses most, and every kind:
    assert outcomes.accepted > 0


def test_the_compiled_check_agrees_with_jsonschema(tiny_quick_result: Path) -> None:
    """The loader's check is the schema compiled by fastjsonschema; jsonschema, the reference,
    must agree with it on every file, valid or not (every fifth mutation: jsonschema is slow)."""
    doc = json.loads(tiny_quick_result.read_text())
    validator = _validator()
    verdicts = set()
    for m in [m for m in mutations(doc) if m.kind not in MUTATION_LITERALS][::5]:
        mutated = json.loads(mutated_text(doc, m))
        valid = first_problem(validator, mutated) is None
        assert _by_reference(mutated) == valid, str(m)
        verdicts.add(valid)
    assert verdicts == {True, False}


def test_nan_in_a_journal_is_a_number_to_both(rich_result: Path) -> None:
    """A journal may hold NaN (an answer's log-prob): both checks take it as jsonschema does."""
    item = next(it for it in json.loads(rich_result.read_text())["items"] if it["probe"] == "needle")
    item = {**item, "logprob": math.nan}
    assert first_problem(schema.built().definition("item"), item) is None
    assert jsonschema.Draft202012Validator({"$ref": "#/$defs/item", "$defs": schema.built().defs}).is_valid(
        item
    )
