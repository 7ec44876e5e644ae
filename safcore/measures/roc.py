"""How well a membership statistic tells members from non-members: AUC and TPR at a fixed FPR, with intervals.

scikit-learn's ``roc_auc_score`` / ``roc_curve`` give the numbers: :func:`roc_auc` (the Mann–Whitney AUC),
:func:`tpr_at_fpr` (the highest TPR at FPR ≤ ``fpr``, as Carlini et al. 2022 read it off the curve) and
:func:`roc_summary` (both, as a :class:`ROCSummary`), with Newcombe's (2006) score interval for the AUC
(:func:`auc_interval`) and an exact Clopper–Pearson interval for the TPR at a threshold set on the
non-members (:func:`tpr_interval`).

An attack's direction is fixed by its paper before any data is seen — a lower loss, t-error or PIA distance
means member (``member_if="lower"``, the default of every function here) — and is never chosen from the
data: an AUC below 0.5 is reported as it is, not as ``1 − AUC``.

Statistics are per image, ``(N_m,)`` for the members and ``(N_n,)`` for the non-members.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scipy.optimize import brentq
from scipy.stats import binomtest, norm
from sklearn.metrics import roc_auc_score, roc_curve

__all__ = ["MemberIf", "roc_auc", "tpr_at_fpr", "auc_interval", "tpr_interval", "ROCSummary", "roc_summary"]

MemberIf = Literal["lower", "higher"]


def _labels_scores(member, nonmember, member_if: MemberIf) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(member, dtype=np.float64).reshape(-1)
    n = np.asarray(nonmember, dtype=np.float64).reshape(-1)
    if m.size == 0 or n.size == 0:
        raise ValueError(f"need members and non-members; got {m.size} members and {n.size} non-members")
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(n))):
        raise ValueError("statistics must be finite numbers (found NaN or inf)")
    if member_if not in ("lower", "higher"):
        raise ValueError(f"member_if={member_if!r}; allowed: 'lower' (an error) or 'higher' (a score)")
    sign = -1.0 if member_if == "lower" else 1.0
    labels = np.concatenate([np.ones(m.size), np.zeros(n.size)])
    return labels, sign * np.concatenate([m, n])


def roc_auc(member, nonmember, *, member_if: MemberIf = "lower") -> float:
    """Area under the ROC curve of telling members from non-members by a statistic (``roc_auc_score``).

    The Mann–Whitney estimate of ``P(member ranks as member before non-member)`` (ties count ½). The
    direction is the caller's, fixed before the data (the attacks here: ``"lower"``); an AUC below 0.5
    is returned as it is.

    Args:
        member, nonmember: the statistic per image, (N_m,) and (N_n,).
        member_if: ``"lower"`` when a low value means member (the attacks here are errors), ``"higher"``
            for a score.
    """
    labels, scores = _labels_scores(member, nonmember, member_if)
    return float(roc_auc_score(labels, scores))


def _check_confidence(confidence: float) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r}; allowed: a level in (0, 1)")
    return float(confidence)


def auc_interval(auc: float, n_members: int, n_nonmembers: int, confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's score interval for an AUC (Mann–Whitney θ̂): the θ with ``(θ̂ − θ)² ≤ z² V(θ)``.

    Newcombe, R. G. (2006), "Confidence intervals for an effect size measure based on the Mann–Whitney
    statistic. Part 2: asymptotic methods and evaluation", Statistics in Medicine 25:559–573, Method 5:
    the Hanley & McNeil (1982) variance written as a function of θ,

        V(θ) = θ(1 − θ) [1 + (N/2 − 1) ((1 − θ)/(2 − θ) + θ/(1 + θ))] / (m n),   N = m + n,

    (Hanley–McNeil's ``Q1 = θ/(2 − θ)``, ``Q2 = 2θ²/(1 + θ)``, with both ``m − 1`` and ``n − 1`` replaced by
    ``N/2 − 1``), and the interval's ends are the two roots of ``(θ̂ − θ)² = z² V(θ)`` in ``[0, θ̂]`` and
    ``[θ̂, 1]`` (``brentq``), ``z`` the ``(1 + confidence)/2`` normal quantile. Like Wilson's interval for a
    proportion it always contains θ̂ and stays inside [0, 1], and it does not collapse at the edges: with
    perfect separation (θ̂ = 1) it is ``[L, 1]`` with ``L < 1`` (16 vs 16 members: L ≈ 0.87), where a
    percentile bootstrap gives [1, 1].

    Args:
        auc: θ̂ in [0, 1]; n_members, n_nonmembers: m, n ≥ 1.
    """
    if not (isinstance(auc, (int, float, np.floating)) and 0.0 <= float(auc) <= 1.0):
        raise ValueError(f"auc={auc!r}; allowed: an AUC in [0, 1]")
    for name, count in (("n_members", n_members), ("n_nonmembers", n_nonmembers)):
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise ValueError(f"{name}={count!r}; allowed: a positive integer")
    theta_hat, m, n = float(auc), int(n_members), int(n_nonmembers)
    z = float(norm.ppf((1.0 + _check_confidence(confidence)) / 2.0))
    half = (m + n) / 2.0 - 1.0

    def excess(theta: float) -> float:  # (θ̂ − θ)² − z² V(θ): ≥ 0 outside the interval, ≤ 0 inside
        v = theta * (1.0 - theta) * (1.0 + half * ((1.0 - theta) / (2.0 - theta) + theta / (1.0 + theta))) / (m * n)
        return (theta_hat - theta) ** 2 - z * z * v

    def inside(direction: float) -> float:
        # a θ strictly inside the interval on the given side of θ̂ (θ̂ itself unless it is 0 or 1)
        if 0.0 < theta_hat < 1.0:
            return theta_hat
        h = 0.5
        while excess(theta_hat + direction * h) >= 0.0 and h > 1e-15:
            h /= 2.0
        return theta_hat + direction * h

    lower = 0.0 if theta_hat == 0.0 else float(brentq(excess, 0.0, inside(-1.0), xtol=1e-14))
    upper = 1.0 if theta_hat == 1.0 else float(brentq(excess, inside(1.0), 1.0, xtol=1e-14))
    return min(lower, theta_hat), max(upper, theta_hat)


def tpr_interval(hits: int, n_members: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact Clopper–Pearson (1934) interval of a hit rate ``hits / n_members``
    (``scipy.stats.binomtest(...).proportion_ci(method="exact")``).

    For a TPR at a threshold set on the non-members it is conditional on that threshold: it covers the
    members' hit rate at that fixed threshold, not the variation of the threshold with the non-members drawn.
    """
    if isinstance(n_members, bool) or not isinstance(n_members, (int, np.integer)) or n_members < 1:
        raise ValueError(f"n_members={n_members!r}; allowed: a positive integer")
    if isinstance(hits, bool) or not isinstance(hits, (int, np.integer)) or not 0 <= hits <= n_members:
        raise ValueError(f"hits={hits!r}; allowed: an integer in [0, n_members={n_members}]")
    test = binomtest(int(hits), int(n_members))
    ci = test.proportion_ci(confidence_level=_check_confidence(confidence), method="exact")
    return float(ci.low), float(ci.high)


def _resolvable(n_nonmembers: int, fpr: float) -> bool:
    """A false-positive rate ``fpr`` is resolved when at least ``1/fpr`` non-members exist."""
    return n_nonmembers * fpr >= 1.0 - 1e-9


def _hits_at(labels: np.ndarray, scores: np.ndarray, fpr: float) -> int:
    """Members at the threshold of the highest TPR with FPR ≤ ``fpr`` (``roc_curve`` counts ``score ≥ threshold``)."""
    f, t, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    best = int(np.flatnonzero(f <= fpr + 1e-12)[np.argmax(t[f <= fpr + 1e-12])])
    return int((scores[labels == 1] >= thresholds[best]).sum())


def _check_fpr(fpr: float) -> float:
    if not 0.0 < float(fpr) < 1.0:
        raise ValueError(f"fpr={fpr!r}; allowed: a rate in (0, 1)")
    return float(fpr)


def tpr_at_fpr(member, nonmember, fpr: float, *, member_if: MemberIf = "lower") -> float | None:
    """The highest true-positive rate at a false-positive rate ≤ ``fpr`` (``roc_curve``), as Carlini et
    al. 2022 (LiRA) read it off the curve; ``None`` with fewer than ``1/fpr`` non-members, where no
    threshold can make that rate."""
    fpr = _check_fpr(fpr)
    labels, scores = _labels_scores(member, nonmember, member_if)
    if not _resolvable(int((labels == 0).sum()), fpr):
        return None
    return _hits_at(labels, scores, fpr) / int((labels == 1).sum())


@dataclass(frozen=True)
class ROCSummary:
    """AUC and TPR at fixed FPRs with their intervals.

    ``auc_interval``: Newcombe's (2006, Method 5) score interval (:func:`auc_interval`). ``tprs[i]``
    belongs to ``fprs[i]``: the members' hit rate at the threshold set on the non-members, with an exact
    Clopper–Pearson interval conditional on that threshold (:func:`tpr_interval`); both are ``None``
    where the non-members are too few (fewer than ``1/fpr``) to resolve that rate. All at ``confidence``.
    """

    auc: float
    auc_interval: tuple[float, float]
    fprs: tuple[float, ...]
    tprs: tuple[float | None, ...]
    tpr_intervals: tuple[tuple[float, float] | None, ...]
    n_members: int
    n_nonmembers: int
    confidence: float

    def tpr_at(self, fpr: float) -> float | None:
        """The TPR at one of :attr:`fprs`."""
        for f, t in zip(self.fprs, self.tprs):
            if math.isclose(f, fpr):
                return t
        raise ValueError(f"fpr={fpr!r} was not computed; allowed: {list(self.fprs)}")

    def to_dict(self) -> dict:
        """Plain values (JSON-serialisable; an unresolved TPR is ``null``)."""
        return asdict(self)

    def __str__(self) -> str:
        parts = [f"AUC {self.auc:.3f} [{self.auc_interval[0]:.3f}, {self.auc_interval[1]:.3f}]"]
        for f, t, ci in zip(self.fprs, self.tprs, self.tpr_intervals):
            name = f"TPR@{f * 100:g}%FPR"
            parts.append(f"{name} not resolvable with {self.n_nonmembers} non-members" if t is None
                         else f"{name} {t:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]")
        return (" · ".join(parts) + f" ({self.n_members} members, {self.n_nonmembers} non-members; "
                f"{self.confidence:.0%} intervals, TPR's conditional on its threshold)")


def roc_summary(
    member,
    nonmember,
    *,
    member_if: MemberIf = "lower",
    fprs: Sequence[float] = (0.01, 0.001),
    confidence: float = 0.95,
) -> ROCSummary:
    """AUC and TPR@FPR (scikit-learn ``roc_curve``/``roc_auc_score``) with intervals that hold at small n.

    The AUC's interval is Newcombe's score interval (:func:`auc_interval`, Newcombe 2006 Method 5); each
    TPR is the members' hit rate at the threshold of the highest TPR with FPR ≤ ``fpr`` on the
    non-members, with the exact Clopper–Pearson interval of that rate (:func:`tpr_interval`), conditional
    on the threshold. A rate needs at least ``1/fpr`` non-members; below that its TPR and interval are
    ``None``. ``member_if`` is the attack's direction, fixed before the data; nothing here flips it.

    Args:
        member, nonmember: the statistic per image, (N_m,) and (N_n,).
        member_if: ``"lower"`` (an error: the attacks here) or ``"higher"`` (a score).
    """
    labels, scores = _labels_scores(member, nonmember, member_if)
    fprs = tuple(_check_fpr(f) for f in fprs)
    confidence = _check_confidence(confidence)
    n_m, n_n = int((labels == 1).sum()), int((labels == 0).sum())
    auc = float(roc_auc_score(labels, scores))
    hits = [_hits_at(labels, scores, f) if _resolvable(n_n, f) else None for f in fprs]
    return ROCSummary(
        auc=auc, auc_interval=auc_interval(auc, n_m, n_n, confidence), fprs=fprs,
        tprs=tuple(None if k is None else k / n_m for k in hits),
        tpr_intervals=tuple(None if k is None else tpr_interval(k, n_m, confidence) for k in hits),
        n_members=n_m, n_nonmembers=n_n, confidence=confidence,
    )
