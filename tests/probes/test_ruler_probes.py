"""The RULER-style question probes (multi-key, multi-value, multi-query, variable tracking,
aggregation, near-duplicates): each question's answer is checked against the document's own
text, read back with the real tokenizer of the tests' tiny GGUF; then the ruler scenario runs
end to end through llama.cpp in raw and chat form."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kvprobe.api import Document, PlantedSpan, get_probe, registered
from kvprobe.infra.errors import UserError
from kvprobe.plan.documents import build_plan
from kvprobe.plan.scenario import load_scenario, parse_scenario
from kvprobe.probes.kit import Drawn, Group, Question, QuestionProbe, count, text
from kvprobe.probes.kit.questions import Fact, Planted, candidate, complete_groups
from kvprobe.probes.kit.words import NOUNS, distinct
from tests.helpers import CHATML, CHATML_TOKENS, kvprobe, write_tiny_model

RULER = ("multikey", "multivalue", "multiquery", "vartrack", "aggregation", "nearduplicate")
CTX = 8192  # the tiny tokenizer spells text nearly a byte a token: the first segments are crowded


@pytest.fixture(scope="module")
def plan(tiny_model: Any) -> tuple[list[int], list[Document]]:
    scenario = load_scenario("ruler")
    probes = [get_probe(n) for n in scenario.probes]
    return build_plan(tiny_model, scenario, CTX, seed=0, probes=probes)


def _asked(
    name: str, documents: list[Document], checkpoints: list[int]
) -> list[tuple[Document, int, Question]]:
    probe = get_probe(name)
    assert isinstance(probe, QuestionProbe)
    scenario = load_scenario("ruler")
    return [(d, L, q) for d in documents for L in checkpoints for q in probe.questions(scenario, d, L)]


def _text(model: Any, document: Document, length: int) -> str:
    return str(model.detokenize(document.tokens[:length]))


def test_every_probe_plants_its_own_spans_and_asks_about_them(
    plan: tuple[list[int], list[Document]], tiny_model: Any
) -> None:
    checkpoints, documents = plan
    for name in ("needle", *RULER):
        spans = [s for d in documents for s in d.spans_of(name)]
        assert spans, name
        asked = _asked(name, documents, checkpoints) if name != "needle" else []
        for _, L, q in asked:
            assert all(s.probe == name and s.end <= L for s in q.spans)
    assert {s.probe for d in documents for s in d.spans} == {"needle", *RULER}
    # Each span carries what it states as a typed payload: the kit reads it back, never parses text.
    for d in documents:
        for s in d.spans:
            if s.probe in RULER:
                assert isinstance(s.payload, Planted), s
                assert s.payload.fact.text in _text(tiny_model, d, s.end), s
    # A question at a longer checkpoint is asked again (the same key), further from its spans.
    for name in RULER:
        keys = {
            L: {q.key for d, L2, q in _asked(name, documents, checkpoints) if L2 == L} for L in checkpoints
        }
        assert keys[checkpoints[0]] <= keys[checkpoints[-1]], name
        assert len(keys[checkpoints[-1]]) > len(keys[checkpoints[0]]), name


def test_multikey_asks_each_needle_among_look_alike_keys(
    plan: tuple[list[int], list[Document]], tiny_model: Any
) -> None:
    checkpoints, documents = plan
    asked = _asked("multikey", documents, checkpoints)
    for d, L, q in asked:
        text = _text(tiny_model, d, L)
        found = re.findall(rf"access code for vault {re.escape(q.key)} is (\d+)\.", text)
        assert found == [q.answer.strip()]
        stem = q.key.split("-")[0]
        assert len(re.findall(rf"vault {stem}-", text)) == len(q.candidates) >= 2  # the look-alikes
        assert q.answer.strip() in q.candidates


def test_multivalue_answer_lists_every_value_in_order(
    plan: tuple[list[int], list[Document]], tiny_model: Any
) -> None:
    checkpoints, documents = plan
    for d, L, q in _asked("multivalue", documents, checkpoints):
        found = re.findall(rf"magic numbers for {re.escape(q.key)} is (\d+)\.", _text(tiny_model, d, L))
        assert q.answer == " " + ", ".join(found)
        assert len(found) == 4


def test_multiquery_answer_follows_the_order_the_question_names(
    plan: tuple[list[int], list[Document]], tiny_model: Any
) -> None:
    checkpoints, documents = plan
    for d, L, q in _asked("multiquery", documents, checkpoints):
        text = _text(tiny_model, d, L)
        keys = q.key.split("+")
        assert keys == sorted(keys)
        assert len(keys) == 3
        named = re.search(r"numbers of the (.*) parcels are", q.raw)
        assert named
        assert named.group(1) == f"{keys[0]}, {keys[1]} and {keys[2]}"
        values = [re.findall(rf"of the {re.escape(k)} parcel is (\d+)\.", text) for k in keys]
        assert q.answer == " " + ", ".join(v[0] for v in values)


def test_vartrack_answer_is_every_variable_that_resolves_to_the_value(
    plan: tuple[list[int], list[Document]], tiny_model: Any
) -> None:
    checkpoints, documents = plan
    hops: Counter[int] = Counter()
    for d, L, q in _asked("vartrack", documents, checkpoints):
        # Resolve every assignment of the text, as a reader would.
        binding: dict[str, str] = {}
        for name, rhs in re.findall(r"VAR ([A-Z]{5}) = (VAR [A-Z]{5}|\d+)\.", _text(tiny_model, d, L)):
            binding[name] = binding.get(rhs[4:], "?") if rhs.startswith("VAR ") else rhs
        value = re.search(r"assigned the value (\d+) in", q.raw)
        assert value
        holders = [n for n, v in binding.items() if v == value.group(1)]
        assert q.answer.split() == holders  # in the order they were assigned
        assert f", {len(holders)} variables are assigned" in q.raw
        assert q.fields["hops"] == len(holders) - 1
        hops[q.fields["hops"]] += 1
    assert set(hops) == {1, 2, 3, 4}


def test_aggregation_answer_is_the_most_frequent_words_in_order(
    plan: tuple[list[int], list[Document]], tiny_model: Any
) -> None:
    checkpoints, documents = plan
    for d, L, q in _asked("aggregation", documents, checkpoints):
        words = re.findall(rf"The {re.escape(q.key)} tally adds (\w+)\.", _text(tiny_model, d, L))
        counts = Counter(words).most_common()
        assert [c for _, c in counts] == [4, 3, 2, 1, 1]  # distinct counts: the order is fixed
        assert q.answer == " " + ", ".join(w for w, _ in counts[:3])


def test_nearduplicate_asks_the_kth_of_near_identical_records(
    plan: tuple[list[int], list[Document]], tiny_model: Any
) -> None:
    checkpoints, documents = plan
    asked = _asked("nearduplicate", documents, checkpoints)
    for d, L, q in asked:
        book = q.key.split("#")[0]
        records = re.findall(
            rf"The {re.escape(book)} logbook records parcel (\d+)\.", _text(tiny_model, d, L)
        )
        k = q.fields["ordinal"]
        assert q.answer.strip() == records[k - 1]
        assert list(q.candidates) == records
        assert f"The {['first', 'second', 'third', 'fourth'][k - 1]} record" in q.raw
    assert {q.fields["ordinal"] for _, _, q in asked} == {1, 2, 3, 4}


def _span(group: int, size: int, value: str, position: int) -> PlantedSpan:
    fact = Fact("k", value, f"k is {value}.")
    return PlantedSpan(0, f"g{group}/{size}", value, position, 5, "multikey", Planted(group, size, fact))


def test_a_group_is_asked_only_once_all_its_spans_are_before_the_checkpoint() -> None:
    spans = [_span(0, 2, "a", 10), _span(0, 2, "b", 90), _span(1, 1, "c", 40)]
    assert [g.values for g in complete_groups(spans, 50)] == [["c"]]
    assert [g.values for g in complete_groups(spans, 95)] == [["a", "b"], ["c"]]
    assert [[s.position for s in g.spans] for g in complete_groups(spans, 95)] == [[10, 90], [40]]
    # A group the document had no room for (one span of two planted) is never asked.
    assert complete_groups(spans[:1], 10_000) == []
    # A span without the kit's payload is a programming error, said at once.
    with pytest.raises(TypeError, match="no kit payload"):
        complete_groups([PlantedSpan(0, "g0/1", "a", 10, 5, "multikey")], 50)


def test_candidate_names_which_planted_answer_the_output_gave() -> None:
    assert candidate(" 4818213.", ["1234567", "4818213"]) == 2
    assert candidate("The parcel 1234567", ["1234567"]) is None  # it must start with it
    assert candidate("", ["1234567"]) is None


def test_default_scenario_documents_are_unchanged_by_the_new_probes(tiny_model: Any) -> None:
    """The default scenario plants only needles: the new probes' sections are not hashed into it
    and plant nothing in it (existing results stay comparable)."""
    default = load_scenario("default")
    _, documents = build_plan(tiny_model, default, CTX, seed=0, probes=[get_probe(n) for n in default.probes])
    assert {s.probe for d in documents for s in d.spans} == {"needle"}
    names = set(default.to_dict())
    assert not names & set(RULER)
    ruler = load_scenario("ruler").to_dict()
    assert set(RULER) <= set(ruler)


@pytest.mark.parametrize(
    ("section", "key", "value", "words"),
    [
        ("vartrack", "max_hops", 0, "between 1 and 8"),
        ("multikey", "template", "no key here {value}", "must contain {key}"),
        ("aggregation", "common", 9, "between 1 and 6"),
        ("nearduplicate", "duplicates", 9, "between 2 and 8"),
        ("multiquery", "query", "no keys", "must contain {keys}"),
        ("multivalue", "values", 1, "between 2 and 8"),
        ("multikey", "template", "{key} is {value} {oops}.", "unknown placeholder or a stray brace"),
        ("vartrack", "query", "value {value} count {count} {", "unknown placeholder or a stray brace"),
        ("vartrack", "chains", 17, "between 1 and 16"),
        ("aggregation", "chat_query", "Which words?", "must contain {tally}"),
        (
            "nearduplicate",
            "query",
            "The {book} logbook's record is parcel",
            "must contain {book} and {ordinal}",
        ),
        ("multivalue", "template", "{key} holds it.", "must contain {key} and {value}"),
    ],
)
def test_bad_sections_are_refused_in_one_line(section: str, key: str, value: Any, words: str) -> None:
    with pytest.raises(UserError, match=re.escape(words)) as info:
        parse_scenario({"probes": [section], section: {key: value}}, "x.toml")
    assert f"{section}.{key}" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_plan_its_draws_cannot_make_is_refused_before_any_model_loads() -> None:
    """Every draw of a document is tried in check_run: 16 look-alike keys in 16 groups over 41
    checkpoints need more distinct 4-digit values than exist, which once failed only while the
    documents were built, after the model had loaded."""
    checkpoints = [256 * (i + 1) for i in range(40)]
    data: dict[str, Any] = {"probes": ["multikey"], "plan": {"checkpoints": checkpoints},
            "multikey": {"groups": 16, "keys": 16, "value_digits": 4}}  # fmt: skip
    scenario = parse_scenario(data, "x.toml")
    probe = get_probe("multikey")
    with pytest.raises(
        UserError, match=r"the multikey plan \(656 groups per document\): 10,496 distinct values"
    ):
        probe.check_run(scenario, mode="onepass", ctx=16_384, baseline=None, null_check=False)
    data["multikey"]["value_digits"] = 5
    probe.check_run(
        parse_scenario(data, "x.toml"), mode="onepass", ctx=16_384, baseline=None, null_check=False
    )


COLOURS = ("red", "green", "blue", "amber")


@dataclass(frozen=True)
class ColourSpec:
    groups: int = count(2, 1, 4)
    generate: bool = False
    template: str = text("The colour of the {item} is {colour}.", "item", "colour")
    query: str = text("The colour of the {item} is", "item")
    chat_query: str = text("What colour is the {item}?", "item")


class ColourProbe(QuestionProbe[ColourSpec]):
    """Colours (a test's probe): one fact a group, asked back."""

    name, order, title = "colour", 90, "Colours"

    def draw(self, spec: ColourSpec, n: int, rng: random.Random) -> Drawn:
        items = distinct(n, lambda r: r.choice(NOUNS), rng, "items", len(NOUNS))
        return Drawn.of([[self.fact(spec, item, rng.choice(COLOURS))] for item in items])

    def ask(self, spec: ColourSpec, groups: list[Group]) -> list[Question]:
        return [self.pose(spec, g, fill={"item": g.subject}, answer=g.values[0]) for g in groups]


def test_a_question_probe_is_its_section_and_two_hooks(tiny_model: Any) -> None:
    """A plug-in question probe declares its section (bounds, placeholders) and says what it draws
    and asks: the kit names its section after it, checks the section, plants, and asks."""
    with registered(ColourProbe()) as probe:
        assert isinstance(probe, ColourProbe)
        assert probe.sections == {"colour": ColourSpec}
        assert probe.about == "Colours (a test's probe): one fact a group, asked back."
        for key, value, words in (("groups", 5, "between 1 and 4"), ("template", "The {item}.", "{colour}")):
            with pytest.raises(UserError, match=re.escape(words)):
                parse_scenario({"probes": ["colour"], "colour": {key: value}}, "x.toml")
        scenario = parse_scenario({"probes": ["colour"]}, "x.toml")
        checkpoints, documents = build_plan(tiny_model, scenario, 2048, seed=0, probes=[probe])
        asked = [(d, L, q) for d in documents for L in checkpoints for q in probe.questions(scenario, d, L)]
        # Two groups a segment, each asked at its own checkpoint and every later one.
        assert len({(d.index, q.key) for d, _, q in asked}) == len(documents) * 2 * len(checkpoints)
        assert len(asked) == len(documents) * (2 + 4)
        for d, L, q in asked:
            assert f"{q.raw}{q.answer}." in _text(tiny_model, d, L)
            assert q.answer.strip() in COLOURS
        plan = {"checkpoints": [256 * (i + 1) for i in range(45)]}
        many = parse_scenario({"probes": ["colour"], "plan": plan}, "x.toml")
        with pytest.raises(UserError, match=r"the colour plan \(92 groups per document\): 92 distinct items"):
            probe.check_run(many, mode="onepass", ctx=16_384, baseline=None, null_check=False)


# --- end to end, through llama.cpp ------------------------------------------------------------


# The ruler scenario, smaller: the tiny tokenizer's spans are long, and the run is a plumbing test.
SMALL_RULER = """
name = "ruler-small"
probes = ["needle", "multikey", "multivalue", "multiquery", "vartrack", "aggregation", "nearduplicate"]
[plan]
documents = 1
checkpoints = [1024, 2048]
[needle]
per_segment = 2
[multikey]
keys = 2
[multivalue]
values = 2
[multiquery]
groups = 1
keys = 2
[vartrack]
chains = 2
max_hops = 2
[aggregation]
groups = 1
common = 2
rare = 1
[nearduplicate]
duplicates = 2
"""


def _run(model: Path, out: Path, *extra: str) -> dict[str, Any]:
    scenario = out.with_suffix(".toml")
    scenario.write_text(SMALL_RULER)
    proc = kvprobe(
        "run", "--model", str(model), "--scenario", str(scenario), "--ctx", "2048", "--cache", "q4_0",
        "--threads", "2", "--out", str(out), *extra,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(out.read_text())
    doc["_stdout"] = proc.stdout
    return doc


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("chatml")
    return write_tiny_model(
        folder / "chatml.gguf", chat_template=CHATML, control_tokens=CHATML_TOKENS, eos_token="<|im_end|>"
    )


@pytest.mark.parametrize("form", ["raw", "chat"])
def test_ruler_scenario_runs_every_probe_in_one_pass(
    form: str, tiny_model_path: Path, chat_model: Path, tmp_path: Path
) -> None:
    model = tiny_model_path if form == "raw" else chat_model
    doc = _run(model, tmp_path / "r.json")
    assert doc["prompt"]["format"] == form
    probes = {it["probe"] for it in doc["items"]}
    assert probes >= {"needle", *RULER}
    for name in RULER:
        rows = [it for it in doc["items"] if it["probe"] == name]
        f16 = {(r["doc"], r["ctx"], r["key"]) for r in rows if r["config"] == "f16"}
        q4 = {(r["doc"], r["ctx"], r["key"]) for r in rows if r["config"] == "q4_0"}
        assert f16 == q4
        assert f16
        assert all(r["answer_tokens"] >= 1 and r["logprob"] <= 0 for r in rows)
        assert ("output_ended_turn" in rows[0]) == (form == "chat")
        metrics = {r["metric"] for r in doc["summary"] if r["probe"] == name}
        assert metrics == {f"{name}_accuracy", f"{name}_logprob"}
        assert doc["timing"]["probes"][name]["items"] == len(rows)
    # One unit per document and checkpoint: one pass, every probe at once.
    assert len(doc["timing"]["units"]) == doc["scenario"]["spec"]["plan"]["documents"] * len(
        doc["run"]["checkpoints"]
    )
    out = doc["_stdout"]
    assert "Probes side by side" in out
    for name in RULER:
        assert re.search(rf"│ {name}\s+│ q4_0", out), name
    page = (tmp_path / "r.html").read_text()
    assert "Probes side by side" in page
    assert "Variable tracking: accuracy by context length" in page


def test_report_and_compare_rebuild_the_probe_table_from_the_file(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    doc = _run(tiny_model_path, tmp_path / "a.json")
    report = kvprobe("report", str(tmp_path / "a.json"))
    assert report.returncode == 0, report.stderr

    def table(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith("│ ") and "q4_0" in line]

    assert table(report.stdout) == table(doc["_stdout"])
    compare = kvprobe("compare", str(tmp_path / "a.json"), str(tmp_path / "a.json"))
    assert compare.returncode == 0, compare.stderr
    assert "vartrack_logprob" in compare.stdout
    assert "nearduplicate_accuracy" in compare.stdout
