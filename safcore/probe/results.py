"""What Algorithm 1 (paper Sec. 3.4) returns: example images (:class:`ProbeExample`, paper Fig. 4), a ``q_M(t)``
curve with Clopper–Pearson intervals (:class:`QCurve`, Fig. 6/9) and the outcome for one ``x_p``
(:class:`ProbeResult`: the curve, t' and the count it rests on, the Eq. 9 indicator)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from safcore.probe.config import ProbeConfig, Search

__all__ = ["ProbeExample", "QCurve", "ProbeResult"]


def _of_curve(name: str) -> property:
    """A read-only property of :class:`ProbeResult` returning ``result.curve.<name>``."""
    return property(lambda self: getattr(self.curve, name), doc=f"``curve.{name}`` (:class:`QCurve`).")


@dataclass(frozen=True, eq=False)
class ProbeExample:
    """Images of one probed t (paper Fig. 4): query images beside their reverse samples.

    Attributes:
        t: the noise level.
        query: ``x_{t,p}`` mapped to unit range and clipped to [0, 1] for display, (n, C, H, W).
        samples: the reverse samples ``x'_{t,p}`` in unit range (clipped), (n, C, H, W).
        c_p, c_id: the classifiers' verdicts on ``samples``, bool (n,).
    """

    t: float
    query: torch.Tensor
    samples: torch.Tensor
    c_p: torch.Tensor
    c_id: torch.Tensor

    @property
    def positive(self) -> torch.Tensor:
        """``c_p AND c_id``, bool (n,)."""
        return self.c_p & self.c_id


@dataclass(frozen=True, eq=False)
class QCurve:
    """``q_M(t)`` on a set of t (ascending), with 95 % Clopper–Pearson intervals.

    All arrays have shape (T,). ``n`` = reverse samples drawn at each t (M for a full evaluation,
    fewer where the top-down search stopped at the first positive), ``k`` = positives
    (``c_p`` AND ``c_id``), ``k_p`` / ``k_id`` = how often each classifier fired on its own,
    ``q = k / n``; ``nfe_per_t`` = image-network evaluations spent at each t (summed over its
    trajectories; ``None`` in a result read back by :func:`safcore.probe.io.load_probe`, whose
    ``probe.json`` keeps only the total) and ``nfe`` their total. ``examples``: images of a few t
    (Fig. 4), ascending in t.
    """

    ts: np.ndarray
    n: np.ndarray
    k: np.ndarray
    k_p: np.ndarray
    k_id: np.ndarray
    q: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    nfe_per_t: np.ndarray | None
    nfe: int
    examples: tuple[ProbeExample, ...] = ()


@dataclass(frozen=True, eq=False)
class ProbeResult:
    """The outcome of Algorithm 1 for one ``x_p``.

    With ``repeats = R > 1`` the R runs are pooled: the counts below are summed over runs, and
    ``t_prime`` is the largest t with a positive in ANY run — the t' of Algorithm 1 with ``R · M``
    samples per t (never below a single run's t'; the conservative reading). The single runs' t'
    (each with M samples per t, comparable with the paper's M = 16) are in ``t_prime_runs``.

    Attributes:
        curve: the pooled :class:`QCurve` on the evaluated t, ascending (every grid t for ``"exhaustive"``;
            for ``"topdown"`` the grid t from the top down to the lowest t' of the runs). Its fields are
            read through the result too: ``ts``, ``n``, ``k``, ``k_p``, ``k_id``, ``q``, ``ci_low``,
            ``ci_high`` (T,), ``nfe`` (image-network evaluations actually spent, summed over all
            trajectories and runs) and ``examples`` (images of a few t, Fig. 4, ascending in t) are
            read-only properties returning ``curve``'s.
        M: reverse samples per t asked for (per run).
        t_prime: the largest t with ``q_M(t) > 0`` (over all runs), or ``None`` when no positive occurred
            on the grid (t' lies below the smallest grid t; plot it as 0).
        k_at_t_prime, n_at_t_prime: the count t' rests on — positives and samples drawn at t', pooled
            over runs (``n < M`` where the top-down search stopped at the first positive); ``None``
            when there is no t'.
        t_prime_runs: each run's t' (``None``: no positive on the grid), in run order, (R,).
        eq9_indicator: the paper's Eq. 9 sum with 95 % upper limits of q
            (:func:`safcore.probe.eq9.eq9_indicator`). An indicator that grows with t', NOT a probability of
            generating ``x_p``.
        nfe_exhaustive: what exhaustive Euler–Maruyama runs on the same grid cost,
            ``R · Σ_t M · steps(t)`` (what the exhaustive search spends) — the reference for the
            top-down search's saving (PC multiplies every count by ``1 + corrector steps``; for the
            ODE it is nominal).
        search: ``"exhaustive"`` or ``"topdown"``.
        grid: the full grid (high → low).
        config: the :class:`ProbeConfig` used.
    """

    curve: QCurve
    M: int
    t_prime: float | None
    k_at_t_prime: int | None
    n_at_t_prime: int | None
    t_prime_runs: tuple[float | None, ...]
    eq9_indicator: float
    nfe_exhaustive: int
    search: Search
    grid: tuple[float, ...]
    config: ProbeConfig = field(default_factory=ProbeConfig)

    # read access to the curve's fields (result.ts is result.curve.ts, ...)
    ts = _of_curve("ts")
    n = _of_curve("n")
    k = _of_curve("k")
    k_p = _of_curve("k_p")
    k_id = _of_curve("k_id")
    q = _of_curve("q")
    ci_low = _of_curve("ci_low")
    ci_high = _of_curve("ci_high")
    nfe = _of_curve("nfe")
    examples = _of_curve("examples")

    @property
    def t_prime_or_zero(self) -> float:
        """``t'`` with "no positive on the grid" mapped to 0 (for plots and tables)."""
        return 0.0 if self.t_prime is None else self.t_prime

    @property
    def t_prime_count(self) -> str:
        """The count t' rests on, ``"k/n"`` at t' (``"-"`` without a t'), for tables and figures."""
        return "-" if self.t_prime is None else f"{self.k_at_t_prime}/{self.n_at_t_prime}"

    @property
    def t_prime_spread(self) -> tuple[float | None, float | None, float | None]:
        """(min, median, max) of ``t_prime_runs``; ``None`` (no t') counts as below every grid t, and the
        median of an even number of runs is the lower middle value (so it is a grid t or ``None``)."""
        runs = sorted(self.t_prime_runs, key=lambda t: -1.0 if t is None else t)
        return runs[0], runs[(len(runs) - 1) // 2], runs[-1]

    def __str__(self) -> str:
        fmt = lambda t: "none" if t is None else f"{t:.2f}"
        if self.t_prime is None:
            head = f"t' = none (no positive at any of the {len(self.grid)} grid t"
        else:
            head = f"t' = {self.t_prime:.2f} ({self.k_at_t_prime} of {self.n_at_t_prime} positive at t'"
        if len(self.t_prime_runs) > 1:
            lo, mid, hi = self.t_prime_spread
            head += f"; {len(self.t_prime_runs)} runs: min {fmt(lo)}, median {fmt(mid)}, max {fmt(hi)}"
        return (
            f"{head}; {self.search}, M={self.M}, {len(self.ts)} t, NFE={self.nfe:,}), "
            f"Eq. 9 indicator = {self.eq9_indicator:.4g}"
        )
