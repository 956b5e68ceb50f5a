"""The divergence probe from sampled positions' top n (an engine without full logits, a
llama-server): the truncated KL against the full KL from real llama.cpp logits, the recorder,
the journal, and the section through the statistics, the file's checks and the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from kvprobe.api import RunSetup, get_probe
from kvprobe.api.cache_types import CacheConfig
from kvprobe.api.documents import Document
from kvprobe.api.engine import ContextSettings, TopLogprobs
from kvprobe.api.result import ResultDoc
from kvprobe.engine.llamacpp.model import Model
from kvprobe.infra.errors import UserError
from kvprobe.plan.scenario import Scenario, load_scenario
from kvprobe.probes.divergence.metrics import (
    DivergenceRecorder,
    kl_divergence,
    log_softmax,
    truncated_kl,
)
from kvprobe.probes.divergence.probe import (
    DivergenceRun,
    divergence_figures,
    divergence_lines,
    divergence_table,
    kl_blocks,
    unit_data_problem,
)
from kvprobe.result.store import Result, write_result
from kvprobe.stats.statistics import add_statistics
from tests.helpers import kvprobe

STRIDE, N_PROBS = 4, 64


def full_logits(model: Model, tokens: list[int], cache: str) -> np.ndarray:
    settings = ContextSettings(n_ctx=1024, chunk=64, n_threads=2, flash_attn=True, attn_rotation=True)
    with model.context(CacheConfig(cache, cache), settings) as ctx:
        rows: np.ndarray = ctx.feed_logits(tokens)
    return rows


def prose(model: Model, n: int) -> list[int]:
    text = " ".join(f"Sentence {i} is about the number {i * 7 % 13}." for i in range(400))
    return [model.bos or 1, *model.tokenize(text)][:n]


def top_of(logits: np.ndarray, tokens: list[int], positions: np.ndarray, n: int) -> TopLogprobs:
    """What a server reports at `positions` (P predicts token P from the rows' P - 1), built
    from full logits: the n most likely ids sorted, their float32 log-probs, the target's."""
    lp = log_softmax(logits[positions - 1])
    ids = np.argsort(-lp, axis=1, kind="stable")[:, :n]
    target = lp[np.arange(len(positions)), np.asarray(tokens)[positions]]
    return TopLogprobs(
        positions.astype(np.int64),
        ids.astype(np.int32),
        np.take_along_axis(lp, ids, axis=1).astype(np.float32),
        target,
        target.copy(),
    )


@pytest.fixture(scope="module")
def logits(tiny_model: Model) -> tuple[list[int], np.ndarray, np.ndarray]:
    tokens = prose(tiny_model, 512)
    return tokens, full_logits(tiny_model, tokens, "f16"), full_logits(tiny_model, tokens, "q4_0")


def test_truncated_kl_is_the_closed_form_where_the_buckets_say_it() -> None:
    # p = (.5, .3, .2), q = (.3, .5, .2): top 1 share no id (KL 0 over one bucket); top 2 share
    # {0, 1}, and the tail {2} is one token, so the truncated KL is the full KL.
    lp, lq = np.log([[0.5, 0.3, 0.2]]), np.log([[0.3, 0.5, 0.2]])
    ids_p, ids_q = np.array([[0, 1, 2]]), np.array([[1, 0, 2]])
    lp_sorted, lq_sorted = np.take_along_axis(lp, ids_p, 1), np.take_along_axis(lq, ids_q, 1)
    assert truncated_kl(ids_p[:, :1], lp_sorted[:, :1], ids_q[:, :1], lq_sorted[:, :1])[0] == 0.0
    full = 0.5 * math.log(0.5 / 0.3) + 0.3 * math.log(0.3 / 0.5)
    two = truncated_kl(ids_p[:, :2], lp_sorted[:, :2], ids_q[:, :2], lq_sorted[:, :2])
    assert two[0] == pytest.approx(full)
    with pytest.raises(ValueError, match="twice"):
        truncated_kl(np.array([[0, 0]]), lp_sorted[:, :2], ids_q[:, :2], lq_sorted[:, :2])


def test_truncated_kl_bounds_the_full_kl_from_real_logits(
    tiny_model: Model, logits: tuple[list[int], np.ndarray, np.ndarray]
) -> None:
    tokens, ref, test = logits
    positions = np.arange(1, len(tokens))
    full = kl_divergence(ref[:-1], test[:-1])
    assert full.mean() > 1e-3  # q4_0 moves the tiny model's distribution
    previous = np.zeros(len(positions))
    for n in (1, 4, 16, 64, 256, tiny_model.n_vocab):
        r, t = top_of(ref, tokens, positions, n), top_of(test, tokens, positions, n)
        kl = truncated_kl(r.ids, r.logprobs, t.ids, t.logprobs)
        assert (kl <= full + 1e-6).all()  # a lower bound at every position (float32 rounding)
        assert (kl >= previous - 1e-7).all()  # a larger n never lowers it
        previous = kl
        if n == 1:
            assert kl.mean() < 0.5 * full.mean()  # a real bound, not the full KL itself
    np.testing.assert_allclose(previous, full, rtol=1e-4, atol=2e-6)  # n = n_vocab: the full KL


def run_for(model: Model, result: ResultDoc, tokens: list[int]) -> DivergenceRun:
    setup = RunSetup(
        model=model, scenario=load_scenario("quick"), ctx=result.run.ctx, seed=0, mode="onepass",
        checkpoints=result.run.checkpoints, documents=[Document(0, tokens, [])], baseline=result.baseline,
        null_check=False,
    )  # fmt: skip
    return DivergenceRun(setup)


def test_top_rows_go_through_the_probe_the_journal_and_the_statistics(
    tiny_model: Model, tiny_quick_result: Path, tmp_path: Path
) -> None:
    """The quick run's result with its divergence section replaced by one measured from top-n
    rows at every 4th position (built from real logits, as a server reports them), fed a
    checkpoint at a time as the runner does."""
    result = Result.load(tiny_quick_result).doc
    ctx, checkpoints = result.run.ctx, result.run.checkpoints
    ref_id, test_id = (c.id for c in result.configs)
    tokens = prose(tiny_model, ctx + 8)  # past ctx: the probe scores positions below ctx only
    rows = {c: full_logits(tiny_model, tokens, c) for c in (ref_id, test_id)}  # f16 and q8_0
    document = Document(0, tokens, [])
    run, units, done = run_for(tiny_model, result, tokens), [], 0
    for length in checkpoints:  # a segment's positions: their prefixes end inside it
        positions = np.arange(1 + STRIDE * math.ceil(max(done, 0) / STRIDE), length + 1, STRIDE)
        top = {c: top_of(x, tokens, positions, N_PROBS) for c, x in rows.items()}
        if length == checkpoints[-1]:  # one target the engine could only bound (its upper bound)
            bound = top[test_id].target_logprob[-3] + 0.5
            top[test_id].target_logprob[-3], top[test_id].target_bound[-3] = np.nan, bound
        run.on_top(document, top)
        units.append(run.end_unit())
        done = length
    assert all(unit_data_problem(json.loads(json.dumps(u)), ref_id) is None for u in units)
    replayed = run_for(tiny_model, result, tokens)
    for unit in units:
        replayed.replay_unit(json.loads(json.dumps(unit)))  # the journal holds JSON
    section = run.section([])
    assert section is not None
    assert section == replayed.section([])
    assert (section["stride"], section["kl"], section["n_probs"]) == (STRIDE, "top_n_tail", N_PROBS)
    n = len(range(1, ctx, STRIDE))
    assert section["nll_bounded"][test_id] == {"n": 1, "share": 1 / n}
    assert section["nll_bounded"][ref_id]["n"] == 0
    kld = run.arrays()[test_id][0]["kld"]
    sampled = np.arange(1, ctx, STRIDE)
    r, t = top_of(rows[ref_id], tokens, sampled, N_PROBS), top_of(rows[test_id], tokens, sampled, N_PROBS)
    np.testing.assert_array_equal(kld, truncated_kl(r.ids, r.logprobs, t.ids, t.logprobs))
    assert (kld <= kl_divergence(rows[ref_id][sampled - 1], rows[test_id][sampled - 1]) + 1e-6).all()

    result.set_section("divergence", section)
    add_statistics(result)
    assert result.statistics.complete, result.statistics.errors
    path = write_result(result, tmp_path / "top.json")
    doc = Result.load(path).doc  # the schema and the ties, the report's too
    pooled = next(
        r for r in doc["summary"] if r["probe"] == "divergence" and r["metric"] == "kld_mean"
        and r["scope"] == "pooled" and r["config"] == test_id
    )  # fmt: skip
    assert pooled["n"] == n
    assert pooled["bin"] == [1, ctx]
    assert pooled["value"] == pytest.approx(float(kld.mean()), rel=1e-6)
    bins = [r for r in doc["summary"] if r["metric"] == "kld_mean" and r["scope"] == "bin"]
    assert sum(r["n"] for r in bins) == n  # every sampled position in exactly one bin
    assert test_id in doc["verdict"]["configs"]
    assert all((start - 1) % STRIDE == 0 for start, _ in kl_blocks(doc)[test_id])

    words = f"KL over the top {N_PROBS} + tail (a lower bound of the full KL), every 4th position"
    assert str(divergence_table(doc).title).startswith(words)
    lines = divergence_lines(doc)
    assert lines[0].startswith(words)
    assert f"{test_id}: the NLL is only a lower bound at 1 position (0.78%)" in lines[1]
    assert words in divergence_figures(doc)[0].title
    report = kvprobe("report", str(path))
    assert report.returncode == 0, report.stderr
    assert words in " ".join(report.stdout.split())  # the table's title may wrap


def test_the_recorder_refuses_rows_off_its_stride(logits: tuple[list[int], np.ndarray, np.ndarray]) -> None:
    tokens, ref, test = logits
    recorder = DivergenceRecorder("f16", top_stride=STRIDE)

    def both(at: np.ndarray) -> dict[str, TopLogprobs]:
        return {"f16": top_of(ref, tokens, at, 8), "q4_0": top_of(test, tokens, at, 8)}

    at = np.arange(1, 100, STRIDE)
    recorder.add_top(0, tokens, both(at))
    with pytest.raises(ValueError, match="values of document 0"):
        recorder.add_top(0, tokens, both(at[-1] + 2 * STRIDE + np.arange(0, 40, STRIDE)))  # one skipped
    with pytest.raises(ValueError, match="every 4th"):
        recorder.add_top(0, tokens, both(np.arange(2, 40, STRIDE)))
    with pytest.raises(ValueError, match="one run reads one kind"):
        recorder.add_chunk(0, tokens, 0, {"f16": ref[:10], "q4_0": test[:10]})


def test_the_scenario_sets_the_servers_stride_and_top_n(tmp_path: Path) -> None:
    def scenario(extra: str) -> Scenario:
        path = tmp_path / "s.toml"
        path.write_text(f'probes = ["divergence"]\n[divergence]\n{extra}\n')
        return load_scenario(str(path))

    chosen = scenario("server_stride = 16\nserver_n_probs = 200")
    needs = get_probe("divergence").needs(chosen, mode="onepass")
    assert (needs.top_stride, needs.top_n) == (16, 200)
    # the defaults stay out of the scenario hash: results and journals before them keep theirs
    assert scenario("server_stride = 4\nserver_n_probs = 1000").sha256 == scenario("").sha256
    for bad, key in (("server_stride = 0", "server_stride"), ("server_n_probs = 100001", "server_n_probs")):
        with pytest.raises(UserError, match=f"divergence.{key}"):
            scenario(bad)
