"""The result file's schema, generated: the JSON Schema (draft 2020-12) of the typed document
(kvprobe.api.result and .verdict, pydantic models whose attribute docstrings are the
descriptions), with each registered probe's part spliced in (`Probe.schema_part`: its item
rows, the rules of its summary rows, its section, its scenario section, and their docs). The
whole is assembled from the registry when first needed (`built`); kvprobe.result.check checks
a file with the models and with the probes' parts, and kvprobe.result.schema_doc writes the
tables of docs/result-schema.md from the descriptions. A field is typed wherever it appears; it
is required where a reader indexes it. Ties between fields are kvprobe.result.ties."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

from kvprobe.api import Probe, SchemaPart, all_probes, is_built_in
from kvprobe.api.result import (
    SCHEMA_VERSION,
    ConfigEntry,
    ItemFields,
    ModelInfo,
    ResultDoc,
    Runtime,
    SummaryFields,
)
from kvprobe.api.verdict import Verdict
from kvprobe.result.blocks import Check, Schema, checker, listing, record, ref, when

_AS_IN_ITEMS = "as in items"
_ESTIMATE = "estimate, interval [lo, hi], number of items"
TEXT_ITEMS = 'rows of the documents\' own text, measured by no configuration (`config: "(text)"`)'
# The doc's tables of kvprobe's own records: table name -> the model whose fields it lists.
TABLES = {"model": ModelInfo, "verdict": Verdict, "runtime": Runtime, "config": ConfigEntry}


# --- the models' schema, in the compact form the doc and the checks read -------------------------------


def def_name(model: type) -> str:
    """A model's name among the schema's `$defs`: ConfigVerdict -> config_verdict."""
    return re.sub(r"(?<!^)(?=[A-Z][a-z])|(?<=[a-z])(?=[A-Z])", "_", model.__name__).lower()


def _compact(node: Any) -> Any:
    """pydantic's schema as a person writes one: no titles or defaults, `"type": ["integer",
    "null"]` for a nullable value, descriptions on one line, `$defs` in snake_case."""
    if isinstance(node, list):
        return [_compact(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _compact(v) for k, v in node.items() if k not in ("title", "default")}
    if out.get("additionalProperties") is True:
        del out["additionalProperties"]  # what JSON Schema allows anyway
    if isinstance(out.get("description"), str):
        out["description"] = " ".join(out["description"].split("\n"))
    if isinstance(out.get("$ref"), str):
        out["$ref"] = "#/$defs/" + _snake(out["$ref"].rsplit("/", 1)[-1])
    options = out.get("anyOf")
    if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
        other = next(o for o in options if o != {"type": "null"})
        if "type" in other:  # a nullable value: one schema whose type admits null
            del out["anyOf"]
            kinds = other["type"] if isinstance(other["type"], list) else [other["type"]]
            out = {**other, **out, "type": [*kinds, "null"]}
            if "enum" in other:
                out["enum"] = [*other["enum"], None]
    return out


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z][a-z])|(?<=[a-z])(?=[A-Z])", "_", name).lower()


@functools.cache
def generated() -> Schema:
    """The schema of the typed document alone (no probe's part), with the row records'."""
    whole: Schema = _compact(ResultDoc.model_json_schema())
    defs = {_snake(k): v for k, v in whole.pop("$defs").items()}
    for model in (ItemFields, SummaryFields):
        defs[def_name(model)] = _compact(model.model_json_schema())
    return {**whole, "$defs": defs}


# --- the probes' parts, spliced in -------------------------------------------------------------------------

Parts = list[tuple[Probe, SchemaPart]]


def _parts(probes: Sequence[Probe]) -> Parts:
    return [(p, part) for p in probes if (part := p.schema_part()) is not None]


def _notes(parts: Parts, key: str) -> list[str]:
    """What the probes add to the description of a shared field (SchemaPart.notes)."""
    return [part.notes[key] for _, part in parts if key in part.notes]


def _either(names: Sequence[str]) -> str:
    shown = [f"`{n}`" for n in names]
    return " or ".join(shown) if len(shown) < 3 else f"{', '.join(shown[:-1])} or {shown[-1]}"


def _rules(rules: list[Schema]) -> dict[str, Any]:
    return {"allOf": rules} if rules else {}  # JSON Schema allows no empty allOf


def _joined(target: dict[str, Schema], more: dict[str, Schema], what: str) -> None:
    """`more` added to `target`: a name two of them define is an error, not a silent overwrite."""
    clash = sorted(set(target) & set(more))
    if clash:
        raise ValueError(f"the result schema has {what} {', '.join(clash)} twice (a probe's SchemaPart)")
    target.update(more)


def _fields(model: type) -> dict[str, Schema]:
    return dict(generated()["$defs"][def_name(model)]["properties"])


def item_common() -> Schema:
    """What every item row holds, whichever probe measured it."""
    own = generated()["$defs"][def_name(ItemFields)]
    return record(_fields(ItemFields), own.get("required", []))


def _item(parts: Parts) -> Schema:
    """An item row: the fields every probe's have, and those of the probe that measured it."""
    rules = [when({"probe": {"const": p.name}}, ref(part.item)) for p, part in parts if part.item]
    common = item_common()
    return record(common["properties"], common["required"], **_rules(rules))


def summary_common(probes: Sequence[Probe], parts: Parts) -> Schema:
    """What every summary row holds (every probe's own fields too), its rules apart."""

    def along(base: str, key: str) -> str:
        return "; ".join([base, *_notes(parts, key)])

    def estimate(key: str) -> str:
        return " ".join([_ESTIMATE, *(f"({note})" for note in _notes(parts, key))])

    own = _fields(SummaryFields)
    described = {
        "probe": _either([p.name for p in probes]),
        "metric": " ".join(_notes(parts, "summary_row.metric")) or "the metric's name",
        "config": along(_AS_IN_ITEMS, "summary_row.config"),
        "ctx": along(_AS_IN_ITEMS, "summary_row.ctx"),
        **{k: estimate(f"summary_row.{k}") for k in ("value", "ci", "n")},
    }
    fields = {k: {**schema, "description": described.get(k, "")} for k, schema in own.items()}
    for _, part in parts:
        _joined(fields, dict(part.summary_fields), "the summary-row field")
    required = generated()["$defs"][def_name(SummaryFields)].get("required", [])
    return record(fields, required)


def _summary_row(probes: Sequence[Probe], parts: Parts) -> Schema:
    common = summary_common(probes, parts)
    rules = [r for _, part in parts for r in part.summary_rules]
    return record(common["properties"], common["required"], **_rules(rules))


def _statistics_doc(probes: Sequence[Probe], parts: Parts) -> str:
    """`statistics`, naming what each probe's failed statistics are called (`what`)."""
    extra = {p.name: part.statistics for p, part in parts}
    labels: list[str] = []
    for p in probes:
        labels += [p.summary_label] if p.summary_label else []
        labels += extra.get(p.name, ())
    return (
        "`complete` (every statistic was computed) and `errors`: "
        f"[{{`what` ({', '.join([*labels, 'verdict'])}), "
        "`error`}] for each that failed; the measured items are in the file either way, and the statistics "
        "can be recomputed from it"
    )


def spec_schema(parts: Parts) -> Schema:
    """`scenario.spec`: the sections a reader indexes (the probes' SchemaPart.spec)."""
    spec: dict[str, Schema] = {}
    for _, part in parts:
        _joined(spec, dict(part.spec), "the scenario section")
    return record(spec)


def sections(probes: Sequence[Probe], parts: Parts) -> dict[str, Schema]:
    """The probes' own top-level sections (`Probe.has_section`)."""
    return {p.name: part.section for p, part in parts if p.has_section and part.section is not None}


def _result(probes: Sequence[Probe], parts: Parts) -> Schema:
    """The top level: the document's own fields, with each probe's section after `summary`."""
    top = generated()
    text_notes = _notes(parts, "result.text_items")
    own = dict(top["properties"])
    own["items"] = listing(ref("item"), own["items"]["description"])
    own["text_items"] = listing(ref("item"), ": ".join([TEXT_ITEMS, *text_notes]) + "; see below")
    own["summary"] = listing(ref("summary_row"), own["summary"]["description"])
    own["statistics"] = {**own["statistics"], "description": _statistics_doc(probes, parts)}
    fields: dict[str, Schema] = {}
    for name, value in own.items():
        fields[name] = value
        if name == "summary":
            _joined(fields, sections(probes, parts), "the top-level field")
    return record(fields, top["required"])


def _defs(probes: Sequence[Probe], parts: Parts) -> dict[str, Schema]:
    defs: dict[str, Schema] = {"item": _item(parts), "summary_row": _summary_row(probes, parts)}
    for _, part in parts:
        _joined(defs, dict(part.defs), "the definition")
    own = dict(generated()["$defs"])
    own["scenario_record"] = {
        **own["scenario_record"],
        "properties": {**own["scenario_record"]["properties"], "spec": spec_schema(parts)},
    }
    _joined(defs, own, "the definition")
    return defs


class Built:
    """The result schema of a set of probes: the JSON Schema, its definitions, the doc's tables,
    and the compiled checks of its parts (each made once, when first asked for)."""

    def __init__(self, probes: Sequence[Probe]):
        self.probes = tuple(probes)
        parts = _parts(self.probes)
        self.parts = parts
        self.defs = _defs(self.probes, parts)
        self.result = _result(self.probes, parts)
        self.schema: Schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://kvprobe.invalid/result-schema-{SCHEMA_VERSION}.json",
            "title": f"kvprobe result file, schema version {SCHEMA_VERSION}",
            **self.result,
            "$defs": self.defs,
        }
        # The doc's tables: whose fields, with a type column.
        self.tables: dict[str, tuple[Schema, bool]] = {"result": (self.result, True)}
        self.tables |= {name: (self.defs[def_name(model)], False) for name, model in TABLES.items()}
        self.tables["summary_row"] = (self.defs["summary_row"], False)
        for _, part in parts:
            self.tables |= {name: (s, False) for name, s in part.tables.items()}
        self._checks: dict[str, Check] = {}

    def check(self, name: str, schema: Callable[[], Schema]) -> Check:
        """A compiled check, by name, of `schema()` (whose `$ref`s may name these definitions)."""
        if name not in self._checks:
            self._checks[name] = checker(schema(), self.defs)
        return self._checks[name]

    def definition(self, name: str) -> Check:
        """The compiled check of one of the definitions ("item", "summary_row", ...)."""
        return self.check(f"$defs/{name}", lambda: ref(name))


_BUILT: dict[tuple[int, ...], Built] = {}  # a Built keeps its probes alive: their ids stay theirs


def built(probes: Sequence[Probe] | None = None) -> Built:
    """The result schema of `probes`, by default of every registered probe (built once)."""
    chosen = all_probes() if probes is None else list(probes)
    key = tuple(id(p) for p in chosen)
    if key not in _BUILT:
        _BUILT[key] = Built(chosen)
    return _BUILT[key]


def documented() -> Built:
    """The schema docs/result-schema.md describes: kvprobe's own probes' (not the plug-ins installed)."""
    return built([p for p in all_probes() if is_built_in(p)])
