"""Equivalence (TOST) against a margin: hand-computed cases, the decision rules, and a small
calibration at the margin (the full one is benchmarks/tost_calibration.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from kvprobe.stats.equivalence import (
    EQUIVALENT,
    UNDECIDED,
    WORSE,
    Tost,
    bound_test,
    items_to_decide,
    tost_binary,
    tost_continuous,
)
from kvprobe.stats.inference import newcombe_paired_interval
from kvprobe.stats.verdict import combine, equivalence


def test_small_samples_use_the_t_interval_by_hand() -> None:
    # Three items are too few for the bootstrap: the t interval. d = [0.3, 0.1, 0.2]: mean 0.2,
    # sd 0.1, se 0.057735, t(0.975, 2 df) = 4.3027.
    d = np.array([0.3, 0.1, 0.2])
    found = tost_continuous(d, np.zeros(3), 0.25, metric="answer_logprob")
    q, se = stats.t.isf(0.025, 2), 0.1 / math.sqrt(3)
    assert found.ci == pytest.approx((0.2 - q * se, 0.2 + q * se))
    assert found.status == UNDECIDED
    # p: the larger one-sided p, here H0 diff >= +0.25: t = (0.2 - 0.25) / se
    assert found.p == pytest.approx(stats.t.cdf(-0.05 / se, 2))
    assert tost_continuous(d, np.zeros(3), 1.0, metric="answer_logprob").status == EQUIVALENT


def test_bootstrap_t_interval_follows_the_data() -> None:
    rng = np.random.default_rng(1)
    d = rng.normal(0.02, 0.1, 64)
    found = tost_continuous(d, np.zeros(64), 0.25, metric="answer_logprob", seed=3)
    se = d.std(ddof=1) / 8
    t_ci = (d.mean() - 1.998 * se, d.mean() + 1.998 * se)
    # On normal data the studentized bootstrap agrees with the t interval to within a fraction of se.
    assert found.ci[0] == pytest.approx(t_ci[0], abs=0.3 * se)
    assert found.ci[1] == pytest.approx(t_ci[1], abs=0.3 * se)
    assert found.status == EQUIVALENT
    assert found.p is not None
    assert found.p < 0.025
    again = tost_continuous(d, np.zeros(64), 0.25, metric="answer_logprob", seed=3)
    assert again == found  # seeded: the same file gives the same verdict


def test_worse_beyond_the_margin_and_on_the_better_side() -> None:
    worse = tost_continuous(np.full(20, -1.0) + np.linspace(0, 0.1, 20), np.zeros(20), 0.25, metric="m")
    assert worse.status == WORSE
    assert worse.items_needed is None
    better = tost_continuous(np.full(20, 1.0) + np.linspace(0, 0.1, 20), np.zeros(20), 0.25, metric="m")
    assert better.status == UNDECIDED  # beyond the margin, but not worse: no number of items decides
    assert better.items_needed is None
    # lower is worse=False (a metric where higher is worse): the sides swap
    assert tost_continuous(np.full(20, 1.0) + np.linspace(0, 0.1, 20), np.zeros(20), 0.25, metric="m",
                           lower_is_worse=False).status == WORSE  # fmt: skip


def test_identical_values_are_equivalent_with_a_zero_width_interval() -> None:
    found = tost_continuous([-1.0, -2.0, -3.0], [-1.0, -2.0, -3.0], 0.25, metric="m")
    assert found.ci == (0.0, 0.0)
    assert found.status == EQUIVALENT


def test_binary_tost_is_the_newcombe_interval_inside_the_margin() -> None:
    # 90 both right, 3 only the reference, 2 only the test, 5 neither
    ref = np.array([1] * 90 + [1] * 3 + [0] * 2 + [0] * 5, dtype=float)
    test = np.array([1] * 90 + [0] * 3 + [1] * 2 + [0] * 5, dtype=float)
    found = tost_binary(test, ref, 0.05, metric="accuracy")
    assert found.ci == pytest.approx(newcombe_paired_interval(90, 3, 2, 5, confidence=0.95))
    assert found.value == pytest.approx(-0.01)
    lo, hi = found.ci
    assert found.status == (EQUIVALENT if lo > -0.05 and hi < 0.05 else UNDECIDED)
    assert tost_binary(test, ref, 0.2, metric="accuracy").status == EQUIVALENT
    # 16 items that all agree cannot show ±0.05: the interval is wider than the margin
    sixteen = tost_binary(np.ones(16), np.ones(16), 0.05, metric="accuracy")
    assert sixteen.status == UNDECIDED
    assert sixteen.items_needed is not None
    assert sixteen.items_needed > 16


def test_bound_test() -> None:
    assert bound_test(0.008, [0.007, 0.009], 0.01, metric="kld_mean", n=100).status == EQUIVALENT
    assert bound_test(0.1, [0.09, 0.11], 0.01, metric="kld_mean", n=100).status == WORSE
    assert bound_test(0.0099, [0.009, 0.011], 0.01, metric="kld_mean", n=100).status == UNDECIDED


def test_items_to_decide_by_hand() -> None:
    # half-width 0.1 at n = 16: sigma = 0.1 * 4 / 1.95996 = 0.20409; gap 0.25 - 0.05 = 0.2;
    # n = ((1.95996 + 0.84162) * 0.20409 / 0.2)^2 = 8.17 -> at least n + 1
    assert items_to_decide(-0.05, (-0.15, 0.05), 16, 0.25, worse_side=True) == 17
    sigma = 0.3 * 4 / 1.959964
    expected = math.ceil(((1.959964 + 0.841621) * sigma / 0.05) ** 2)
    assert items_to_decide(-0.2, (-0.5, 0.1), 16, 0.25, worse_side=True) == expected
    assert items_to_decide(0.3, (0.1, 0.5), 16, 0.25, worse_side=False) is None


def _t(metric: str, status: str) -> Tost:
    return Tost(metric, 0.0, (0.0, 0.0), 0.1, "two-sided", status, 16)


def test_combine_lets_log_prob_decide_where_accuracy_cannot() -> None:
    assert combine([_t("accuracy", UNDECIDED), _t("answer_logprob", EQUIVALENT)])[0] == EQUIVALENT
    assert combine([_t("accuracy", UNDECIDED), _t("answer_logprob", UNDECIDED)])[0] == UNDECIDED
    assert combine([_t("accuracy", WORSE), _t("answer_logprob", EQUIVALENT)]) == (WORSE, ["accuracy"])
    assert combine([_t("kld_mean", UNDECIDED), _t("answer_logprob", EQUIVALENT)]) == (UNDECIDED, ["kld_mean"])
    assert combine([_t("accuracy", EQUIVALENT)])[0] == EQUIVALENT  # shown equivalent on its own
    # KL (another probe) does not stand in for the needles' answers: accuracy still blocks
    assert combine([_t("accuracy", UNDECIDED), _t("kld_mean", EQUIVALENT)])[0] == UNDECIDED


def test_effective_context_ends_before_the_onset() -> None:
    ok = [_t("answer_logprob", EQUIVALENT)]
    tests = {1024: ok, 2048: ok, 4096: ok, 8192: ok}
    plain = equivalence(tests, None, [1024, 2048, 4096, 8192])
    assert plain["status"] == EQUIVALENT
    assert plain["effective_context"] == 8192
    # equivalent within the margins everywhere, but a significant (small) loss from 4,096
    capped = equivalence(tests, 4096, [1024, 2048, 4096, 8192])
    assert capped["effective_context"] == 2048
    assert capped["status"] == UNDECIDED
    gap = equivalence({1024: ok, 2048: [_t("answer_logprob", UNDECIDED)], 4096: ok}, None, [1024, 2048, 4096])
    assert gap["effective_context"] == 1024  # a prefix: a later equivalent checkpoint does not reopen it
    lost = equivalence({1024: [_t("kld_mean", WORSE)]}, None, [1024])
    assert lost["status"] == WORSE
    assert lost["effective_context"] is None
    assert lost["first_worse"] == 1024


def test_false_equivalence_at_the_margin_stays_within_five_percent() -> None:
    """A small calibration: skewed differences (a log-normal tail, like the answers' log-prob
    losses) with their true mean exactly at -margin are called equivalent in at most 5% of
    simulations (plus three standard errors of the simulation)."""
    rng = np.random.default_rng(7)
    pool = -rng.lognormal(0.0, 1.0, 20000)
    pool = (pool - pool.mean()) / pool.std() * 0.3 - 0.25
    sims, n = 600, 32
    hits = sum(
        tost_continuous(rng.choice(pool, n), np.zeros(n), 0.25, metric="m", seed=i).status == EQUIVALENT
        for i in range(sims)
    )
    assert hits / sims <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / sims)


def test_too_few_items_are_never_evidence() -> None:
    """One item, or two identical ones, give a zero-width interval: not equivalence."""
    assert tost_continuous([-0.1], [0.0], 0.25, metric="m").status == UNDECIDED
    assert tost_continuous([-1.0, -2.0], [-1.0, -2.0], 0.25, metric="m").status == UNDECIDED
    assert tost_continuous([-0.1], [0.0], 0.25, metric="m", paired=False).status == UNDECIDED
    assert tost_binary(np.ones(2), np.ones(2), 0.5, metric="accuracy").status == UNDECIDED


def test_a_bound_without_an_upper_end_decides_nothing_unless_the_lower_is_past_it() -> None:
    assert bound_test(0.1, [0.05, None], 0.5, metric="kld_p999", n=100).status == UNDECIDED
    assert bound_test(0.9, [0.6, None], 0.5, metric="kld_p999", n=100).status == WORSE


def test_tail_interval_from_order_statistics_by_hand() -> None:
    from kvprobe.probes.divergence.metrics import order_statistic_interval

    values = np.arange(1, 5001, dtype=float)  # x_(k) = k
    lo, hi = order_statistic_interval(values, 0.999)
    # X ~ Binomial(5000, 0.999): the 2.5% and 97.5% points bracket the order statistics
    assert lo == stats.binom.ppf(0.025, 5000, 0.999)
    assert hi == stats.binom.ppf(0.975, 5000, 0.999) + 1
    assert lo <= np.quantile(values, 0.999) <= hi
    _, none = order_statistic_interval(values[:3000], 0.999)
    assert none is None  # 3,000 positions cannot bound the 99.9th percentile from above


def test_few_kl_blocks_give_no_interval() -> None:
    from kvprobe.api import by_name
    from kvprobe.probes.divergence.metrics import checkpoint_spans

    arrays = {"f16": [{"kld": np.zeros(1100)}], "q8_0": [{"kld": np.full(1100, 0.001)}]}
    spans = checkpoint_spans(arrays, "f16", [1024, 1030], [by_name("kld_mean")], block=32, seed=0)
    first, last = spans["q8_0"]
    assert first["kld_mean"]["ci"][1] is not None  # 32 blocks
    assert last["kld_mean"]["ci"] == [None, None]  # positions 1,024-1,029: one block
