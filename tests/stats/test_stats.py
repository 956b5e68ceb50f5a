import math

import pytest

from kvprobe.stats.inference import bootstrap_mean_interval, wilson_interval


def wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize(("k", "n"), [(8, 10), (0, 16), (16, 16), (37, 64)])
def test_wilson_matches_closed_form(k: int, n: int) -> None:
    lo, hi = wilson_interval(k, n)
    exp_lo, exp_hi = wilson_by_hand(k, n)
    assert lo == pytest.approx(exp_lo, abs=1e-9)
    assert hi == pytest.approx(exp_hi, abs=1e-9)


def test_wilson_known_case() -> None:
    # 8 of 10: the textbook Wilson 95% interval is [0.490, 0.943].
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.49, 0.943)


def test_wilson_empty_is_nan() -> None:
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_bootstrap_interval_contains_mean_and_is_seeded() -> None:
    values = [-1.0, -2.0, -0.5, -3.0, -1.5, -2.5, -0.2, -4.0]
    lo, hi = bootstrap_mean_interval(values, seed=1)
    mean = sum(values) / len(values)
    assert lo < mean < hi
    assert (lo, hi) == bootstrap_mean_interval(values, seed=1)


def test_bootstrap_constant_data() -> None:
    assert bootstrap_mean_interval([2.0, 2.0, 2.0], seed=0) == (2.0, 2.0)
