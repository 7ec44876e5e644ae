"""Exact binomial statements about how often a model generates ``x_p``: intervals, sample sizes, tests.

An audit sees ``k`` samples that are ``x_p`` among ``n``. What a hospital can sign is an upper bound:
"with 95 % confidence this model generates ``x_p`` in at most ``u`` of its samples" — the upper end of
the exact (Clopper–Pearson) interval, ``scipy.stats.binomtest(k, n).proportion_ci(method="exact")``,
i.e. the ``1 − α/2`` quantile of ``Beta(k + 1, n − k)`` (0 of 256 gives ``u = 1 − 0.025^{1/256} ≈ 1.43 %``).
:func:`samples_to_bound` says how many samples push that bound below a target such as ``1/N_D``, and
:func:`binomial_p_value` is the paper's one-sided test (§5.3), with H0 at ``1/N_D`` or at any rate.
"""

from __future__ import annotations

import math

from scipy import stats

__all__ = ["proportion_interval", "upper_bound", "samples_to_bound", "binomial_p_value"]


def _check_counts(k: int, n: int) -> None:
    if isinstance(n, bool) or isinstance(k, bool) or int(n) != n or int(k) != k or n < 1 or not 0 <= k <= n:
        raise ValueError(f"need integers n ≥ 1 and 0 ≤ k ≤ n, got k = {k!r}, n = {n!r}")


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence = {confidence!r} must lie in (0, 1), e.g. 0.95")


def proportion_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper–Pearson) two-sided ``confidence`` interval of a binomial proportion ``k / n``.

    Equals ``scipy.stats.binomtest(k, n).proportion_ci(confidence, method="exact")``.
    """
    _check_counts(k, n)
    _check_confidence(confidence)
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def upper_bound(k: int, n: int, confidence: float = 0.95) -> float:
    """Upper end of :func:`proportion_interval`: the most often ``x_p`` can be generated, given ``k`` of ``n``."""
    return proportion_interval(k, n, confidence)[1]


def _upper(k: float, n: int, alpha: float) -> float:
    return 1.0 if k >= n else float(stats.beta.ppf(1.0 - alpha / 2.0, k + 1, n - k))


def samples_to_bound(k: int, n: int, target: float, confidence: float = 0.95) -> int | None:
    """The smallest number of samples ``n'`` whose exact upper bound falls below ``target``.

    The audit's observed rate ``k / n`` is assumed to hold for the larger sample: ``k' = n' k / n``, taken
    as a real number in the Clopper–Pearson quantile ``Beta(k' + 1, n' − k')`` so the bound falls
    monotonically with ``n'``;
    with ``k = 0`` this is the closed form ``n' = ⌊log(α/2) / log(1 − target)⌋ + 1``
    (e.g. ``target = 1/16`` needs 58 samples without a single ``x_p``).

    Returns:
        ``n'`` (≥ 1), or ``None`` when the observed rate is at or above ``target`` (no number of samples
        can bound it below).
    """
    _check_counts(k, n)
    _check_confidence(confidence)
    if not 0.0 < target < 1.0:
        raise ValueError(f"target = {target!r} must lie in (0, 1), e.g. 1/N_D")
    alpha = 1.0 - confidence
    rate = k / n
    if rate >= target:
        return None
    if k == 0:
        return int(math.floor(math.log(alpha / 2.0) / math.log1p(-target))) + 1

    def below(m: int) -> bool:
        return _upper(m * rate, m, alpha) < target

    high = n
    while not below(high):
        high *= 2
        if high > 10**12:
            return None
    low = 1
    while low < high:  # the bound falls with m at a fixed rate: bisect to the first m below target
        mid = (low + high) // 2
        if below(mid):
            high = mid
        else:
            low = mid + 1
    return high


def binomial_p_value(n_q: int, n: int, n_dataset: int, rate: float | None = None) -> float:
    """One-sided binomial test of H0 ``p = p0`` vs H1 ``p < p0`` given ``n_q`` of ``n`` (paper §5.3).

    ``p0 = 1/N_D`` (the paper: every sample reproduces one training image, each equally often) unless
    ``rate`` is given, in which case ``p0 = rate / N_D`` (a model that copies a training image in a
    fraction ``rate`` of its samples, uniformly over the ``N_D`` images). Equals ``P(X ≤ n_q)`` for
    ``X ~ Binomial(n, p0)``; e.g. ``n_q = 0`` gives ``(1 − p0)^n``.
    """
    if isinstance(n_dataset, bool) or int(n_dataset) != n_dataset or n_dataset < 1:
        raise ValueError(f"n_dataset (N_D) = {n_dataset!r} must be an integer ≥ 1")
    _check_counts(n_q, n)
    if rate is not None and not 0.0 < rate <= 1.0:
        raise ValueError(f"rate = {rate!r}: the fraction of samples that copy a training image must lie in (0, 1]")
    p0 = (1.0 if rate is None else float(rate)) / n_dataset
    return float(stats.binomtest(int(n_q), int(n), p0, alternative="less").pvalue)
