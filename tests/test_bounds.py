"""Exact binomial bounds, sample sizes and tests (safcore.measures.bounds) against scipy and closed forms."""

import math

import pytest
from scipy import stats

from safcore.measures.bounds import binomial_p_value, proportion_interval, samples_to_bound, upper_bound


def test_upper_bound_is_scipys_exact_interval():
    assert upper_bound(0, 256) == pytest.approx(1 - 0.025 ** (1 / 256), rel=1e-9)  # ≈ 1.43 %, the number
    assert upper_bound(0, 256) == pytest.approx(0.0143, abs=5e-5)
    for k, n in [(0, 256), (8, 256), (7, 256), (256, 256), (151, 150_000), (1, 8)]:
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
        assert proportion_interval(k, n) == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert upper_bound(3, 10, confidence=0.99) > upper_bound(3, 10)
    with pytest.raises(ValueError, match="0 ≤ k ≤ n"):
        upper_bound(5, 4)
    with pytest.raises(ValueError, match="confidence"):
        upper_bound(1, 4, confidence=95)


def test_samples_to_bound_below_one_over_n_d():
    # zero x_p in n' samples bounds P below 1/16 from n' = 58 on (closed form), and not at 57
    n = samples_to_bound(0, 256, 1 / 16)
    assert n == 58 and upper_bound(0, n) < 1 / 16 <= upper_bound(0, n - 1)
    assert samples_to_bound(0, 10, 1 / 1000) == math.floor(math.log(0.025) / math.log1p(-1 / 1000)) + 1
    # at an observed rate of 1/64 the bound reaches 1/16 at some n' (checked against the bound itself)
    m = samples_to_bound(4, 256, 1 / 16)
    assert upper_bound(m // 64, m) < 1 / 16  # scipy agrees at the whole count below k'
    cp = lambda k, n: stats.beta.ppf(0.975, k + 1, n - k)  # noqa: E731 - the real-k' bound it bisects on
    assert cp((m - 1) / 64, m - 1) >= 1 / 16 > cp(m / 64, m)
    assert samples_to_bound(16, 256, 1 / 16) is None  # rate = target: never
    assert samples_to_bound(20, 256, 1 / 16) is None


def test_binomial_test_at_the_paper_rate_and_at_a_measured_copy_rate():
    assert binomial_p_value(0, 10, 4) == pytest.approx(0.75**10)
    assert binomial_p_value(0, 10, 4, rate=0.5) == pytest.approx((1 - 0.5 / 4) ** 10)
    # the case: N_D = 64, 128 of 256 samples are copies; |q| = 0 is not significant at that rate
    assert binomial_p_value(0, 256, 64) == pytest.approx(stats.binomtest(0, 256, 1 / 64, alternative="less").pvalue)
    assert binomial_p_value(0, 256, 64, rate=0.5) == pytest.approx((1 - 1 / 128) ** 256)
    assert binomial_p_value(0, 256, 64, rate=0.5) > 0.13
    with pytest.raises(ValueError, match="rate"):
        binomial_p_value(0, 10, 4, rate=0.0)
    with pytest.raises(ValueError, match="N_D"):
        binomial_p_value(0, 10, 0)
