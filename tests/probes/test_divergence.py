"""The divergence probe's pure parts: KL, the fast per-position path, bins, Holm, onset,
and the compact arrays of the result file."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kvprobe.api import get_probe
from kvprobe.infra.errors import UserError
from kvprobe.probes.divergence.metrics import (
    CurveSettings,
    bin_edges,
    divergence_curve,
    kl_divergence,
    log_softmax,
    onset_bin,
    onset_tests,
    position_stats,
)
from kvprobe.probes.divergence.probe import null_check_summary
from kvprobe.result.arrays import decode_array, encode_array
from kvprobe.stats.inference import holm


def logits_of(probs: list[float], shift: float = 0.0) -> np.ndarray:
    row: np.ndarray = (np.log(np.array(probs)) + shift).astype(np.float32)
    return row[None, :]


def test_kl_of_identical_distributions_is_exactly_zero() -> None:
    rng = np.random.default_rng(1)
    x = (4 * rng.standard_normal((40, 5000))).astype(np.float32)
    assert np.all(kl_divergence(x, x.copy()) == 0.0)
    _, stats = position_stats(x, {"same": x.copy()}, rng.integers(0, 5000, 40))
    assert np.all(stats["same"].kld == 0.0)
    assert stats["same"].top1_agree.all()


def test_kl_matches_the_closed_form() -> None:
    # p = (1/2, 1/4, 1/4), q = (1/4, 1/2, 1/4): KL = 1/2 ln 2 - 1/4 ln 2 = ln(2) / 4
    p, q = [0.5, 0.25, 0.25], [0.25, 0.5, 0.25]
    expected = math.log(2) / 4
    # logits are defined up to a constant per row: shift one of them
    assert kl_divergence(logits_of(p), logits_of(q, shift=7.0))[0] == pytest.approx(expected, rel=1e-6)
    _, stats = position_stats(logits_of(p), {"q": logits_of(q, shift=-3.0)}, np.array([0]))
    assert stats["q"].kld[0] == pytest.approx(expected, rel=1e-6)
    assert not stats["q"].top1_agree[0]
    assert stats["q"].nll[0] == pytest.approx(math.log(4), rel=1e-6)  # -log q(token 0)


def test_kl_is_asymmetric_as_defined() -> None:
    # KL(p || q) with p = (0.9, 0.1), q = (0.5, 0.5) = 0.9 ln 1.8 + 0.1 ln 0.2
    expected = 0.9 * math.log(1.8) + 0.1 * math.log(0.2)
    assert kl_divergence(logits_of([0.9, 0.1]), logits_of([0.5, 0.5]))[0] == pytest.approx(expected)
    reverse = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert kl_divergence(logits_of([0.5, 0.5]), logits_of([0.9, 0.1]))[0] == pytest.approx(reverse)


def test_fast_path_matches_the_definition_on_a_large_vocabulary() -> None:
    rng = np.random.default_rng(2)
    ref = (3 * rng.standard_normal((37, 262_144))).astype(np.float32)
    test = ref + (0.05 * rng.standard_normal(ref.shape)).astype(np.float32)
    nxt = rng.integers(0, ref.shape[1], 37)
    nll_ref, stats = position_stats(ref, {"t": test}, nxt)
    exact = kl_divergence(ref, test)
    assert np.allclose(stats["t"].kld, exact, rtol=1e-4, atol=0)
    assert np.allclose(nll_ref, -log_softmax(ref)[np.arange(37), nxt], rtol=1e-6)
    assert np.allclose(stats["t"].nll, -log_softmax(test)[np.arange(37), nxt], rtol=1e-6)
    assert np.array_equal(stats["t"].top1_agree, ref.argmax(1) == test.argmax(1))


def test_bin_edges_are_log_spaced_and_end_on_every_checkpoint() -> None:
    assert bin_edges([1024, 2048, 4096, 8192]) == [1, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
    assert bin_edges([256]) == [1, 64, 128, 256]
    assert bin_edges([100, 300]) == [1, 64, 100, 300]


def test_holm_against_hand_computed_values() -> None:
    # sorted: 0.01 * 3 = 0.03; 0.03 * 2 = 0.06; 0.04 * 1 = 0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def synthetic_arrays(
    rise_from: int | None, seed: int, n: int = 8191, docs: int = 2
) -> list[dict[str, np.ndarray]]:
    """Per-position KL with an AR(1)-correlated noise, stepping up from `rise_from`."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(docs):
        noise = np.empty(n)
        noise[0] = rng.standard_normal()
        for i in range(1, n):
            noise[i] = 0.6 * noise[i - 1] + rng.standard_normal()
        kld = 0.01 * np.exp(0.5 * noise)
        if rise_from is not None:
            kld[rise_from - 1 :] *= 1.5
        out.append({"kld": kld, "top1_agree": rng.random(n) < 0.9, "nll": 3 + noise})
    return out


DIVERGENCE_METRICS = get_probe("divergence").metrics
CURVE = CurveSettings(checkpoints=[1024, 2048, 4096, 8192], block=32, onset_reference=256, seed=0)


def reference_arrays(n: int = 8191, docs: int = 2) -> list[dict[str, np.ndarray]]:
    return [{"nll": np.full(n, 3.0)} for _ in range(docs)]


def test_curve_finds_a_planted_rise() -> None:
    rows, onsets = divergence_curve(
        {"f16": reference_arrays(), "q4_0": synthetic_arrays(2048, seed=3)}, "f16", CURVE, DIVERGENCE_METRICS
    )
    assert onsets["q4_0"] is not None
    assert onsets["q4_0"]["bin"] == [2048, 4096]
    kld = {(r["bin"][0], r["scope"]): r for r in rows if r["metric"] == "kld_mean" and r["config"] == "q4_0"}
    assert kld[(4096, "bin")]["ctx"] == 8192
    assert kld[(4096, "bin")]["n"] == 2 * 4096  # predicted tokens 4096..8191 of two documents
    assert kld[(1, "pooled")]["n"] == 2 * 8191
    lo, hi = kld[(1024, "bin")]["ci"]
    assert lo < kld[(1024, "bin")]["value"] < hi
    ppl = [r for r in rows if r["metric"] == "ppl" and r["config"] == "f16"]
    assert [r["value"] for r in ppl] == pytest.approx([math.exp(3.0)] * len(ppl))
    assert len(ppl) == len(bin_edges(CURVE.checkpoints))  # every bin plus the pooled row


def test_curve_flags_nothing_without_a_rise() -> None:
    flagged = 0
    for seed in range(20):
        _, onsets = divergence_curve(
            {"f16": reference_arrays(), "q8_0": synthetic_arrays(None, seed=100 + seed)},
            "f16",
            CURVE,
            DIVERGENCE_METRICS,
        )
        flagged += onsets["q8_0"] is not None
    assert flagged / 20 <= 0.05  # the seeded false-alarm rate must not exceed alpha: at most 1 of 20


def test_onset_needs_every_longer_bin_significant() -> None:
    ref = np.full(16, 1.0) + np.linspace(0, 0.1, 16)
    high = np.full(16, 5.0)
    bins = [(256, 512, high), (512, 1024, ref.copy()), (1024, 2048, high)]
    tests = onset_tests(ref, bins)
    onset = onset_bin(tests)
    assert onset is not None
    assert (onset.lo, onset.hi) == (1024, 2048)  # the dip at 512 breaks the run from 256


def test_arrays_round_trip_compactly() -> None:
    values = np.random.default_rng(4).random(8191).astype(np.float32)
    record = encode_array(values, "<f4")
    assert np.array_equal(decode_array(record), values)
    assert len(record["zlib_base64"]) < 4 * 8191 * 1.4  # binary, not one JSON number per token
    record["n"] = 10
    with pytest.raises(UserError, match="declares"):
        decode_array(record)


def test_null_check_summary() -> None:
    ref = [{"nll": np.array([1.0, 2.0, 3.0])}]
    same = [{"kld": np.zeros(3), "top1_agree": np.ones(3, bool), "nll": np.array([1.0, 2.0, 3.0])}]
    assert null_check_summary(ref, same)["passed"]
    noisy = [
        {"kld": np.array([0.0, 1e-9, 0.0]), "top1_agree": np.ones(3, bool), "nll": np.array([1.0, 2.0, 3.0])}
    ]
    summary = null_check_summary(ref, noisy)
    assert not summary["passed"]
    assert summary["nonzero_kld"] == 1
