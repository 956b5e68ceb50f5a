"""One number per concept: every figure the report prints with a label of scope ("mean KL
(positions 1–255)", "answer log-prob (at 1,024 tokens)", "mean KL (whole document)") is rebuilt
from the result file's own items and arrays, and two printings of one label never disagree.
The main job's output is this report (kvprobe.views.terminal.print_run_report prints both)."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from typing import Any

import numpy as np
import pytest

from kvprobe.result.arrays import decode_array
from tests.helpers import ROOT, kvprobe

EXAMPLES = ["default-f16-q4_0-8192", "splitkv-f16-q8_0-q4_0-8192", "weights-F16-vs-Q4_0-f16-q4_0-4096"]
NUMBER = r"([−+\-]?\d+(?:\.\d+)?)"
SCOPE = r"\((positions [\d,]+–[\d,]+|at [\d,]+ tokens|whole document)\)"
CONCEPTS = (
    "mean KL", "KL 99.9th percentile", "answer log-prob drop", "answer log-prob", "accuracy drop", "accuracy",
)  # fmt: skip
LABELLED = re.compile(rf"(?<![\w-])({'|'.join(re.escape(c) for c in CONCEPTS)}) {SCOPE} {NUMBER}")
# Where the text names the configuration whose figures follow: a verdict's sentence ("q4_0 loses
# quality"), the Recommendation's "q4_0 (worse ...", the divergence line "q4_0: mean KL", K vs V's
# "K-only k=q4_0,v=f16:", weights vs KV's "(ref:q4_0 against ref:f16)".
SUBJECT = re.compile(
    r"(?P<a>[\w:=,.]+) (?:loses quality|is equivalent|is worse|\((?:worse|equivalent|undecided))"
    r"|(?P<b>[\w:=,.]+): mean KL|[KV]-only (?P<c>[\w:=,.]+): |\((?P<d>[\w:=,.]+) against "
)


def _value(text: str) -> float:
    return float(text.replace("−", "-"))


def _decimals(text: str) -> int:
    return len(text.split(".")[1]) if "." in text else 0


def printed(report: str, configs: set[str]) -> dict[tuple[str, str, str], list[str]]:
    """(configuration, concept, scope) -> every value printed for it; the configuration is the
    one last named before the figure."""
    flat = re.sub(r"\s+", " ", report)  # a wrapped line may end in a space
    named_at = [(m.start(), next(g for g in m.groups() if g)) for m in SUBJECT.finditer(flat)]
    subjects = [(at, name) for at, name in named_at if name in configs]
    found: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for m in LABELLED.finditer(flat):
        named = [name for at, name in subjects if at < m.start()]
        if named:
            found[(named[-1], m.group(1), m.group(2))].append(m.group(3))
    return found


def _kl(doc: dict[str, Any], config: str, name: str) -> np.ndarray:
    recs = [r for r in doc["divergence"]["positions"] if r["config"] == config and name in r]
    return np.concatenate([decode_array(r[name]).astype(float) for r in recs])


def rebuilt(doc: dict[str, Any], config: str, concept: str, scope: str) -> float | None:
    """The figure from the file itself: KL from its per-position arrays, the paired items'
    mean differences from its items (None: a concept this test does not rebuild)."""
    if concept in ("mean KL", "KL 99.9th percentile"):
        values = _kl(doc, config, "kld")
        positions = np.arange(1, len(values) + 1) if doc["divergence"]["documents"] == 1 else None
        if scope == "whole document":
            chosen = values
        else:
            lo, hi = (int(x.replace(",", "")) for x in scope.removeprefix("positions ").split("–"))
            assert positions is not None, "one document in the examples"
            chosen = values[(positions >= lo) & (positions <= hi)]
        return float(chosen.mean() if concept == "mean KL" else np.quantile(chosen, 0.999))
    at = re.fullmatch(r"at ([\d,]+) tokens", scope)
    if at is None:
        return None
    ctx = int(at.group(1).replace(",", ""))
    field = "logprob" if concept.startswith("answer log-prob") else "correct"
    base = [it for it in doc["items"] if it["probe"] == "needle" and it["ctx"] == ctx]
    ref = {(it["doc"], it["key"]): it for it in base if it["config"] == doc["baseline"]}
    test = {(it["doc"], it["key"]): it for it in base if it["config"] == config}
    pairs = [(float(test[k][field]), float(ref[k][field])) for k in test if k in ref]
    diff = float(np.mean([t - r for t, r in pairs]))
    return -diff if concept.endswith("drop") else diff


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_labelled_number_is_the_files_and_agrees_with_itself(name: str) -> None:
    path = ROOT / "results" / "examples" / f"{name}.json"
    proc = kvprobe("report", str(path), "--details", env={"COLUMNS": "1000"})  # the labelled figures
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(path.read_text())
    configs = {c["id"] for c in doc["configs"]}
    found = printed(proc.stdout, configs)
    checked = 0
    for (config, concept, scope), values in found.items():
        assert config in configs, f"{config!r} is no configuration of {name}"
        # One label, one value: printed at different precisions, they agree at the coarsest.
        places = min(_decimals(v) for v in values)
        assert len({round(_value(v), places) for v in values}) == 1, (config, concept, scope, values)
        truth = rebuilt(doc, config, concept, scope)
        if truth is None:
            continue
        for v in values:  # the file's float32 arrays against the run's float64: 1e-6 relative
            half_unit = 0.5 * 10 ** -_decimals(v) + 1e-6 * abs(truth)
            assert abs(_value(v) - truth) <= half_unit, (config, concept, scope, v, truth)
        checked += 1
    assert checked >= 3, f"only {checked} labelled figures found in the report of {name}"
