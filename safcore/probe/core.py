"""Algorithm 1 (paper Sec. 3.4): q_M(t) curves, the anonymity indicator t' and the paper's Eq. 9 indicator.

For each noise level ``t`` of a grid, the SAF image ``x_p`` is diffused to ``x_{t,p} ~ p(x_t | x_p)``
(the forward SDE's marginal, paper Eq. 7), the learned reverse process is run from there ``M`` times,
and each reverse sample ``x'_{t,p}`` is shown to the adversary's two classifiers. A sample is
*positive* when ``c_p`` (the SAF is there) AND ``c_id`` (it is ``x_p``) both fire, and

    q_M(t) = (# positives) / M,          t' = max{ t in grid : q_M(t) > 0 }.

``t'`` is how far ``x_p`` can be pushed into noise and still come back as ``x_p``: high for a model
that memorises ``x_p``, low (or none) for one that does not. ``q_M`` is random, so ``t'`` is a random
variable even for a fixed model; :class:`ProbeResult` reports the count it rests on (k of n at t') and,
with ``ProbeConfig.repeats > 1``, the spread of t' over independent runs.

Models whose t' is known (exact scores of point masses, simulated q(t) curves) live in
:mod:`safcore.generators.known_answer`.

Conventions (CONTRIBUTING.md): ``x_p`` and everything the classifiers see is unit range ``[0, 1]``;
``x_{t,p}`` lives in the SDE's model range ``[-1, 1]``; a score function is any
``score_fn(x (B,C,H,W) model range, t (B,)) -> (B,C,H,W)``; a classifier is any callable
``(B,C,H,W) unit range -> bool (B,)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import torch

from safcore.measures.bounds import proportion_interval
from safcore.runtime.checks import check_seed
from safcore.data.datasets import from_model_range, to_model_range
from safcore.runtime.progress import progress_bar
from safcore.generators.sde import SDE

__all__ = [
    "DEFAULT_GRID",
    "QTally",
    "fill_q_curve",
    "probe_result",
    "tally_draws",
    "ProbeConfig",
    "ProbeExample",
    "QCurve",
    "ProbeResult",
    "diffuse",
    "marginal_std",
    "q_curve",
    "find_t_prime",
    "topdown_search",
    "chunk_sizes",
    "run_seed",
    "eq9_indicator",
    "probe_at",
    "steps_for",
    "as_single_image",
]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Classifier = Callable[[torch.Tensor], torch.Tensor]
Search = Literal["exhaustive", "topdown"]
SamplerMethod = Literal["euler_maruyama", "pc", "ode"]

#: The paper's grid (the author's code): t = 0.99, 0.98, ..., 0.01 (99 values, step 0.01).
DEFAULT_GRID: tuple[float, ...] = tuple(round(0.99 - 0.01 * i, 2) for i in range(99))


# --------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------


def _check_grid(grid: Sequence[float] | np.ndarray | torch.Tensor, eps: float) -> tuple[float, ...]:
    """Validate a grid of t and return it as a tuple sorted from high to low t."""
    if isinstance(grid, torch.Tensor):
        grid = grid.detach().cpu().reshape(-1).tolist()
    values = [float(t) for t in np.asarray(grid, dtype=np.float64).reshape(-1)]
    if len(values) == 0:
        raise ValueError("the t grid is empty; give at least one t in (eps, 1], e.g. (0.5,)")
    for t in values:
        if not math.isfinite(t) or t < 0.0 or t > 1.0:
            raise ValueError(f"t={t!r} in the grid is outside [0, 1]; every t must lie in (eps, 1]")
        if t <= eps:
            raise ValueError(
                f"t={t!r} in the grid is <= the sampler's end time eps={eps!r}; the reverse process "
                f"runs from t down to eps, so every t must lie in (eps, 1]"
            )
    if len(set(values)) != len(values):
        dup = sorted({t for t in values if values.count(t) > 1})
        raise ValueError(f"the t grid has repeated values {dup}; give each t once")
    return tuple(sorted(values, reverse=True))


@dataclass(frozen=True)
class ProbeConfig:
    """Settings of Algorithm 1.

    Args:
        M: reverse samples per ``t`` (paper: 16); ``>= 1``.
        grid: the t values to probe, any order, each in ``(eps, 1]`` (stored high → low). Default:
            0.99, 0.98, ..., 0.01 as in the author's code. A shorter grid caps the cost: probing only
            ``t >= 0.5`` answers "is t' at least 0.5?" (no t' then means t' < 0.5).
        search: ``"exhaustive"`` evaluates ``q_M`` on every grid t (the full curve of Fig. 6/9);
            ``"topdown"`` walks the grid from the top and stops at the first t with a positive: its t'
            has exactly the law of the exhaustive t', at the cost of every grid t above t' (cheap for a
            model that memorises, near-exhaustive for one that does not; see :func:`find_t_prime`).
        method: the reverse sampler (:func:`safcore.generators.sampling.sample`).
        steps_full: reverse steps of a FULL trajectory from ``t = 1`` to ``eps``. A trajectory started
            at ``t`` gets ``steps(t) = ceil((t - eps) / (1 - eps) · steps_full)`` steps, so its step
            size is (at most) that of a full trajectory: the probe sees the same discretisation at
            every t, and the cost of a trajectory grows linearly with t. (The ``"ode"`` sampler picks
            its own steps; its NFE is what the sampler reports.)
        eps: end time of the reverse process (Song et al.: 1e-3).
        first_chunk: the top-down search draws the M samples of one t in chunks whose cumulative sizes
            double (``first_chunk, 2·first_chunk, 4·first_chunk, ..., M``) and stops at the first
            positive. 1 spends the fewest network evaluations but makes up to ``log2(M) + 1`` sampler
            calls of few trajectories per t (slow in wall-clock time where a call's overhead dominates,
            as on a GPU; measured with an analytic score: 1.4–7× the exhaustive wall time at t' <= 0.7);
            ``M`` makes one call per t and draws all M samples at t' too (``k_at_t_prime`` out of M).
        batch_size: most trajectories per sampler call; the exhaustive search puts
            ``max(1, batch_size // M)`` t values (each with its M samples) into one call, every
            trajectory on its own grid of ``steps(t)`` steps (exactly as a single-t run).
        batch_waste: a t shares a sampler call with higher t only if ``steps(max t) <= (1 +
            batch_waste) · steps(t)``: a call runs ``steps(max t)`` iterations and a lower t's
            trajectories wait (padded, not evaluated) until their own ``steps(t)`` remain. Waiting
            costs no network evaluations (the exhaustive NFE is ``Σ_t M · steps(t)``), only
            iterations on a partly filled batch; the rule bounds them.
        seed: seeds one ``torch.Generator`` that draws both ``x_{t,p}`` and the sampler noise (run 0;
            further runs use :func:`run_seed`).
        repeats: independent runs of the search (``>= 1``), each with its own seed
            (:func:`run_seed`); :class:`ProbeResult` keeps every run's t' and pools their counts.
        n_example_t: number of grid t values (evenly spread, plus t' and the grid point above it)
            whose images are kept in :attr:`ProbeResult.examples` (paper Fig. 4).
        n_examples: images kept per example t (``<= M``).
    """

    M: int = 16
    grid: tuple[float, ...] = DEFAULT_GRID
    search: Search = "exhaustive"
    method: SamplerMethod = "euler_maruyama"
    steps_full: int = 1000
    eps: float = 1e-3
    first_chunk: int = 1
    batch_size: int = 256
    batch_waste: float = 0.1
    seed: int = 0
    repeats: int = 1
    n_example_t: int = 5
    n_examples: int = 8

    def __post_init__(self) -> None:
        if isinstance(self.M, bool) or not isinstance(self.M, (int, np.integer)) or self.M < 1:
            raise ValueError(f"M={self.M!r}: the number of reverse samples per t must be an int >= 1")
        if not (isinstance(self.eps, (int, float)) and 0.0 < self.eps < 1.0):
            raise ValueError(f"eps={self.eps!r}: the sampler's end time must lie in (0, 1)")
        object.__setattr__(self, "grid", _check_grid(self.grid, self.eps))
        if self.search == "adaptive":
            raise ValueError(
                "search='adaptive' (coarse pass + bisection) was removed: it returned t' more than one grid "
                "step below the exhaustive t' in most runs on gradual q(t) tails; use 'topdown' (same law "
                "as the exhaustive t') or 'exhaustive'"
            )
        if self.search not in get_args(Search):
            raise ValueError(f"search={self.search!r}; allowed: {', '.join(map(repr, get_args(Search)))}")
        if self.method not in get_args(SamplerMethod):
            raise ValueError(
                f"method={self.method!r}; allowed: {', '.join(map(repr, get_args(SamplerMethod)))}"
            )
        if not isinstance(self.steps_full, (int, np.integer)) or self.steps_full < 1:
            raise ValueError(f"steps_full={self.steps_full!r}: must be an int >= 1")
        check_seed(self.seed, "seed (ProbeConfig)")
        if not isinstance(self.first_chunk, (int, np.integer)) or not 1 <= self.first_chunk <= self.M:
            raise ValueError(f"first_chunk={self.first_chunk!r}: must be an int in [1, M={self.M}]")
        if not isinstance(self.batch_size, (int, np.integer)) or self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size!r}: must be an int >= 1")
        if not (isinstance(self.batch_waste, (int, float)) and self.batch_waste >= 0):
            raise ValueError(f"batch_waste={self.batch_waste!r}: must be a number >= 0")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, (int, np.integer)) or self.repeats < 1:
            raise ValueError(f"repeats={self.repeats!r}: the number of runs must be an int >= 1")
        if self.n_example_t < 0 or self.n_examples < 0:
            raise ValueError(
                f"n_example_t={self.n_example_t!r}, n_examples={self.n_examples!r}: must be >= 0"
            )

    @property
    def grid_step(self) -> float:
        """The largest gap between neighbouring grid values (0 for a one-point grid)."""
        g = np.asarray(self.grid)
        return float(np.max(-np.diff(g))) if g.size > 1 else 0.0

    def steps(self, t: float) -> int:
        """Reverse steps of a trajectory started at ``t``: ``ceil((t - eps)/(1 - eps) · steps_full)``."""
        return _steps_for(t, self.steps_full, self.eps)

    @property
    def nfe_exhaustive(self) -> int:
        """Network evaluations of ONE exhaustive Euler–Maruyama run on this grid, ``Σ_t M · steps(t)``."""
        return sum(self.M * self.steps(t) for t in self.grid)


def _steps_for(t: float, steps_full: int, eps: float) -> int:
    # round first so that e.g. 0.3 · 100 = 30.000000000000004 does not become 31 steps
    return max(1, math.ceil(round((t - eps) / (1.0 - eps) * steps_full, 9)))


# --------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------


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
    trajectories) and ``nfe`` their total.
    """

    ts: np.ndarray
    n: np.ndarray
    k: np.ndarray
    k_p: np.ndarray
    k_id: np.ndarray
    q: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    nfe_per_t: np.ndarray
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
        ts: the evaluated t, ascending, (T,) (every grid t for ``"exhaustive"``; for ``"topdown"`` the
            grid t from the top down to the lowest t' of the runs).
        n, k, k_p, k_id, q, ci_low, ci_high: as in :class:`QCurve`, (T,), pooled over runs.
        M: reverse samples per t asked for (per run).
        t_prime: the largest t with ``q_M(t) > 0`` (over all runs), or ``None`` when no positive occurred
            on the grid (t' lies below the smallest grid t; plot it as 0).
        k_at_t_prime, n_at_t_prime: the count t' rests on — positives and samples drawn at t', pooled
            over runs (``n < M`` where the top-down search stopped at the first positive); ``None``
            when there is no t'.
        t_prime_runs: each run's t' (``None``: no positive on the grid), in run order, (R,).
        eq9_indicator: the paper's Eq. 9 sum with 95 % upper limits of q (:func:`eq9_indicator`). An
            indicator that grows with t', NOT a probability of generating ``x_p``.
        nfe: image-network evaluations actually spent (summed over all trajectories and runs).
        nfe_exhaustive: what exhaustive Euler–Maruyama runs on the same grid cost,
            ``R · Σ_t M · steps(t)`` (what the exhaustive search spends) — the reference for the
            top-down search's saving (PC multiplies every count by ``1 + corrector steps``; for the
            ODE it is nominal).
        search: ``"exhaustive"`` or ``"topdown"``.
        grid: the full grid (high → low).
        examples: images of a few t (Fig. 4), ascending in t.
        config: the :class:`ProbeConfig` used.
    """

    ts: np.ndarray
    n: np.ndarray
    k: np.ndarray
    k_p: np.ndarray
    k_id: np.ndarray
    q: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    M: int
    t_prime: float | None
    k_at_t_prime: int | None
    n_at_t_prime: int | None
    t_prime_runs: tuple[float | None, ...]
    eq9_indicator: float
    nfe: int
    nfe_exhaustive: int
    search: Search
    grid: tuple[float, ...]
    examples: tuple[ProbeExample, ...] = ()
    config: ProbeConfig = field(default_factory=ProbeConfig)

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


# --------------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------------


def _as_single_image(x_p: torch.Tensor) -> torch.Tensor:
    if x_p.ndim == 4 and x_p.shape[0] == 1:
        x_p = x_p[0]
    if x_p.ndim != 3:
        raise ValueError(f"x_p must be one image (C, H, W) or (1, C, H, W), got shape {tuple(x_p.shape)}")
    return x_p


def diffuse(
    x_p_unit: torch.Tensor,
    t: float | torch.Tensor,
    sde: SDE,
    n: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw ``n`` noisy queries ``x_{t,p} ~ p(x_t | x_p) = N(a_t x_p, σ_t² I)`` (paper Eq. 7 context).

    The forward SDE's perturbation kernel (Song Eq. 29 for sub-VP), with ``(a_t x_p, σ_t) =
    sde.marginal_prob(x_p, t)``.

    Args:
        x_p_unit: the image ``x_p`` in unit range, (C, H, W) or (1, C, H, W).
        t: a float, or a tensor (n,) of per-sample times, each in [0, 1].
        sde: the model's forward SDE.
        n: number of draws.
        generator: torch generator for the Gaussian noise (on ``x_p``'s device).

    Returns:
        ``x_{t,p}`` in MODEL range (the SDE's state, unbounded), shape (n, C, H, W).
    """
    x0 = to_model_range(_as_single_image(x_p_unit)).unsqueeze(0).expand(n, -1, -1, -1)
    t_vec = torch.as_tensor(t, dtype=x0.dtype, device=x0.device)
    if t_vec.ndim == 0:
        t_vec = t_vec.expand(n)
    if t_vec.shape != (n,):
        raise ValueError(f"t must be a float or a tensor of shape ({n},), got shape {tuple(t_vec.shape)}")
    if bool(((t_vec < 0) | (t_vec > 1)).any()):
        raise ValueError(f"t outside [0, 1]: {t_vec[(t_vec < 0) | (t_vec > 1)].tolist()}")
    mean, std = sde.marginal_prob(x0, t_vec)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return mean + std.reshape(n, 1, 1, 1) * noise


def marginal_std(sde: SDE, ts: Sequence[float] | np.ndarray) -> np.ndarray:
    """``σ_t`` of ``p(x_t | x_0)`` for each t (the sub-VP std is ``1 - e^{2 lmc(t)}``), shape (T,)."""
    t = torch.as_tensor(np.asarray(ts, dtype=np.float64), dtype=torch.float64).reshape(-1)
    _, std = sde.marginal_prob(torch.zeros(t.shape[0], 1, 1, 1, dtype=torch.float64), t)
    return std.reshape(-1).cpu().numpy().astype(np.float64)


def eq9_indicator(
    grid: Sequence[float] | np.ndarray,
    k: Sequence[int] | np.ndarray,
    n: Sequence[int] | np.ndarray,
    sigma: Sequence[float] | np.ndarray | Callable[[np.ndarray], np.ndarray],
    *,
    confidence: float = 0.95,
) -> float:
    """The paper's Eq. 9 sum with upper limits of q: ``Σ_{i=0}^{t'} (σ_{t_{i+1}} - σ_{t_i}) · sup_{[t_i, t_{i+1}]} q``.

    Nodes: ``t_0 = 0`` (with ``σ_0 = 0``) and the grid ``t_1 < ... < t_N``. The sum runs over the
    intervals ``[t_0, t_1], [t_1, t_2], ...`` up to and including the one whose lower end is ``t'``
    (the largest grid t with ``k > 0``; the paper's ``Σ_{i=0}^{t'}``); when t' is the top of the grid
    it stops there, and with no t' it is the interval ``[0, t_1]`` alone. The sup of q over an interval
    is the larger of its endpoints' upper limits ``u``:

    * ``u_i`` = upper end of the two-sided exact (Clopper–Pearson) ``confidence`` interval of
      ``k_i`` of ``n_i`` (the top of the band in Fig. 6/9) — not the point estimate ``k_i / n_i``;
    * ``u = 1`` where q was not measured: at ``t_0 = 0`` (below the grid) and at every grid t with
      ``n_i = 0`` (the top-down search draws nothing below t').

    What it is: the indicator of paper Eq. 7–9, ``∫ q dσ_t`` up to t', i.e. t' measured on the σ scale
    and weighted by how often ``x_p`` comes back below it. It is NOT a probability of generating
    ``x_p`` (it reaches 0.86 for a model that generates ``x_p`` in about 3 % of its samples). It is an
    upper Darboux sum of that integral when q is monotone on each grid interval, with each ``u_i``
    holding at 95 % for its own t (not jointly over the grid).

    Args:
        grid: the grid t (N,), distinct, any order.
        k, n: positives and samples drawn at each grid t (N,); ``n = 0`` means "not evaluated".
        sigma: ``σ_t`` at ``grid`` (N,), or a callable mapping an array of t to σ (e.g.
            ``lambda t: marginal_std(sde, t)``).
        confidence: of the two-sided interval whose upper end is used.

    Returns:
        The sum, in ``[0, σ_max]``.
    """
    t = np.asarray(grid, dtype=np.float64).reshape(-1)
    kv = np.asarray(k).reshape(-1)
    nv = np.asarray(n).reshape(-1)
    s = np.asarray(sigma(t) if callable(sigma) else sigma, dtype=np.float64).reshape(-1)
    if not (t.shape == kv.shape == nv.shape == s.shape):
        raise ValueError(f"grid, k, n and sigma must have the same length, got {t.size}, {kv.size}, {nv.size}, {s.size}")
    if t.size == 0:
        raise ValueError("eq9_indicator needs at least one grid t")
    if np.unique(t).size != t.size:
        raise ValueError(f"the grid must be distinct, got {t.tolist()}")
    if np.any(kv != np.round(kv)) or np.any(nv != np.round(nv)) or np.any(kv < 0) or np.any(kv > nv):
        raise ValueError(f"need integer counts 0 <= k <= n, got k={kv.tolist()}, n={nv.tolist()}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r} must lie in (0, 1), e.g. 0.95")
    order = np.argsort(t)
    kv, nv, s = kv[order].astype(np.int64), nv[order].astype(np.int64), s[order]
    u = np.array([1.0 if ni == 0 else proportion_interval(ki, ni, confidence)[1] for ki, ni in zip(kv, nv)])
    nodes_s = np.concatenate([[0.0], s])
    nodes_u = np.concatenate([[1.0], u])
    positive = np.flatnonzero(kv > 0)
    last = int(positive.max()) + 1 if positive.size else 0  # node index of t' (0: below the grid)
    m = min(last, t.size - 1)  # index of the last interval summed
    widths = np.diff(nodes_s)[: m + 1]
    sups = np.maximum(nodes_u[:-1], nodes_u[1:])[: m + 1]
    return float(np.sum(widths * sups))


def _classify(clf: Classifier, x_unit: torch.Tensor, name: str) -> torch.Tensor:
    out = torch.as_tensor(clf(x_unit))
    if out.shape != (x_unit.shape[0],):
        raise ValueError(
            f"classifier {name} must return a bool tensor of shape ({x_unit.shape[0]},), "
            f"got shape {tuple(out.shape)}"
        )
    return out.detach().to("cpu").bool()


@dataclass
class _Batch:
    query: torch.Tensor  # model range, (B, C, H, W), on the sampling device
    samples: torch.Tensor  # unit range, clipped, CPU
    c_p: torch.Tensor  # bool (B,), CPU
    c_id: torch.Tensor
    nfe: torch.Tensor  # int64 (B,): network evaluations of each trajectory


def _is_scheduler_model(score_fn) -> bool:
    from safcore.generators.diffusers_model import DiffusersModel

    return isinstance(score_fn, DiffusersModel)


def _check_process(score_fn, sde: SDE | None) -> None:
    if sde is None and not _is_scheduler_model(score_fn):
        raise ValueError("sde=None is allowed only for a safcore.generators.diffusers_model.DiffusersModel (its scheduler defines the "
                         "forward and reverse process); pass the score model's SDE")


def _std_fn(score_fn, sde: SDE | None) -> Callable[[np.ndarray], np.ndarray]:
    """``σ(t)`` of the model's forward kernel: the SDE's, or the scheduler's ``sqrt(1 − ᾱ_{k(t)})``."""
    if _is_scheduler_model(score_fn):
        return score_fn.marginal_std
    return lambda t: marginal_std(sde, t)


def _run_batch(
    score_fn: ScoreFn,
    sde: SDE | None,
    x_p: torch.Tensor,
    c_p: Classifier,
    c_id: Classifier,
    t_vec: torch.Tensor,
    *,
    method: SamplerMethod,
    steps: int | torch.Tensor,
    steps_full: int,
    eps: float,
    generator: torch.Generator | None,
) -> _Batch:
    """Diffuse ``x_p`` to the per-sample times ``t_vec`` (B,), reverse, classify.

    A :class:`safcore.generators.diffusers_model.DiffusersModel` diffuses with its scheduler's ``add_noise`` and
    reverses with its ``step`` (``steps_full`` inference steps for a full run, the tail from each t);
    a score model with ``sde`` uses the SDE's kernel and :func:`safcore.generators.sampling.sample` with ``steps``
    (one count, or per sample (B,): each trajectory on its own grid ``linspace(t_i, eps, steps_i + 1)``).
    ``nfe`` of the batch is what the network evaluated for each trajectory.
    """
    from safcore.generators.sampling import sample  # the sampler sits beside probe in the data flow

    if _is_scheduler_model(score_fn):
        x0 = to_model_range(_as_single_image(x_p)).unsqueeze(0).expand(t_vec.shape[0], -1, -1, -1)
        query = score_fn.diffuse(x0, t_vec, steps_full, generator)
        images, nfe = score_fn.reverse(query, t_vec, steps_full, generator)
    else:
        query = diffuse(x_p, t_vec, sde, t_vec.shape[0], generator)
        res = sample(
            score_fn,
            sde,
            x_t=query,
            t_start=t_vec,
            method=method,
            steps=steps,
            eps=eps,
            generator=generator,
            progress=False,
        )
        images, nfe = res.images, res.nfe_per_sample.to(torch.int64)
    x_unit = from_model_range(images.detach()).clamp(0.0, 1.0)
    vp = _classify(c_p, x_unit, "c_p")
    vid = _classify(c_id, x_unit, "c_id")
    return _Batch(query.detach(), x_unit.to("cpu"), vp, vid, nfe)


def probe_at(
    score_fn: ScoreFn,
    sde: SDE | None,
    x_p: torch.Tensor,
    c_p: Classifier,
    c_id: Classifier,
    t: float,
    M: int = 8,
    *,
    method: SamplerMethod = "euler_maruyama",
    steps_full: int = 1000,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
) -> tuple[ProbeExample, int]:
    """One step of Algorithm 1 at a single t: M queries ``x_{t,p}``, their reverse samples, verdicts.

    Args: as in :func:`q_curve`; ``t`` in (eps, 1].

    Returns:
        (:class:`ProbeExample` with all M images, NFE spent = ``M · steps(t)`` for Euler–Maruyama).
    """
    if isinstance(M, bool) or not isinstance(M, (int, np.integer)) or M < 1:
        raise ValueError(f"M={M!r}: the number of reverse samples must be an int >= 1")
    (t,) = _check_grid((t,), eps)
    x_p = _as_single_image(x_p)
    _check_process(score_fn, sde)
    t_vec = torch.full((M,), t, dtype=torch.float32, device=x_p.device)
    b = _run_batch(
        score_fn, sde, x_p, c_p, c_id, t_vec,
        method=method, steps=_steps_for(t, steps_full, eps), steps_full=steps_full, eps=eps, generator=generator,
    )  # fmt: skip
    ex = ProbeExample(
        t=t,
        query=from_model_range(b.query).clamp(0.0, 1.0).to("cpu"),
        samples=b.samples,
        c_p=b.c_p,
        c_id=b.c_id,
    )
    return ex, int(b.nfe.sum())


class QTally:
    """Per-t counters and kept images of the q_M(t) search, filled batch by batch (public for
    :mod:`safcore.study.distributed`, whose split probe merges the tallies of several processes)."""

    def __init__(self, n_keep: int) -> None:
        self.n: dict[float, int] = {}
        self.k: dict[float, int] = {}
        self.k_p: dict[float, int] = {}
        self.k_id: dict[float, int] = {}
        self.nfe: dict[float, int] = {}
        self.images: dict[float, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
        self.n_keep = n_keep

    def add(self, t: float, b: _Batch, rows: slice | torch.Tensor) -> None:
        vp, vid = b.c_p[rows], b.c_id[rows]
        m = int(vp.shape[0])
        self.n[t] = self.n.get(t, 0) + m
        self.k[t] = self.k.get(t, 0) + int((vp & vid).sum())
        self.k_p[t] = self.k_p.get(t, 0) + int(vp.sum())
        self.k_id[t] = self.k_id.get(t, 0) + int(vid.sum())
        self.nfe[t] = self.nfe.get(t, 0) + int(b.nfe[rows].sum())
        kept = self.images.setdefault(t, [])
        have = sum(x[0].shape[0] for x in kept)
        take = max(0, min(m, self.n_keep - have))
        if take:
            q = from_model_range(b.query[rows][:take]).clamp(0.0, 1.0).to("cpu")
            kept.append((q, b.samples[rows][:take], vp[:take], vid[:take]))

    @classmethod
    def merge(cls, tallies: Sequence[QTally]) -> QTally:
        """One tally with the counts of ``tallies`` summed and their images concatenated (up to ``n_keep``)."""
        out = cls(tallies[0].n_keep)
        for tally in tallies:
            for name in ("n", "k", "k_p", "k_id", "nfe"):
                into, add = getattr(out, name), getattr(tally, name)
                for t, v in add.items():
                    into[t] = into.get(t, 0) + v
            for t, parts in tally.images.items():
                kept = out.images.setdefault(t, [])
                for part in parts:
                    have = sum(x[0].shape[0] for x in kept)
                    take = max(0, min(part[0].shape[0], out.n_keep - have))
                    if take:
                        kept.append(tuple(x[:take] for x in part))
        return out

    def curve(self, example_ts: Sequence[float]) -> QCurve:
        ts = np.array(sorted(self.n), dtype=np.float64)
        n = np.array([self.n[t] for t in ts], dtype=np.int64)
        k = np.array([self.k[t] for t in ts], dtype=np.int64)
        ci = [proportion_interval(ki, ni) for ki, ni in zip(k, n)]
        examples = []
        for t in sorted(set(example_ts)):
            parts = self.images.get(t, [])
            if not parts:
                continue
            examples.append(
                ProbeExample(
                    t=float(t),
                    query=torch.cat([p[0] for p in parts]),
                    samples=torch.cat([p[1] for p in parts]),
                    c_p=torch.cat([p[2] for p in parts]),
                    c_id=torch.cat([p[3] for p in parts]),
                )
            )
        nfe_per_t = np.array([self.nfe[t] for t in ts], dtype=np.int64)
        return QCurve(
            ts=ts,
            n=n,
            k=k,
            k_p=np.array([self.k_p[t] for t in ts], dtype=np.int64),
            k_id=np.array([self.k_id[t] for t in ts], dtype=np.int64),
            q=k / n,
            ci_low=np.array([c[0] for c in ci]),
            ci_high=np.array([c[1] for c in ci]),
            nfe_per_t=nfe_per_t,
            nfe=int(nfe_per_t.sum()),
            examples=tuple(examples),
        )


def _generator_for(x_p: torch.Tensor, seed: int) -> torch.Generator:
    return torch.Generator(device=x_p.device).manual_seed(int(seed))


# --------------------------------------------------------------------------------------------------
# q_M(t) on a grid
# --------------------------------------------------------------------------------------------------


def q_curve(
    score_fn: ScoreFn,
    sde: SDE | None,
    x_p: torch.Tensor,
    c_p: Classifier,
    c_id: Classifier,
    ts: Sequence[float] | np.ndarray,
    M: int = 16,
    *,
    method: SamplerMethod = "euler_maruyama",
    steps_full: int = 1000,
    eps: float = 1e-3,
    batch_size: int = 256,
    batch_waste: float = 0.1,
    generator: torch.Generator | None = None,
    n_examples: int = 8,
    example_ts: Sequence[float] | None = None,
    progress: bool = True,
) -> QCurve:
    """``q_M(t)`` at every t of ``ts`` (Algorithm 1's inner loops), with Clopper–Pearson intervals.

    For each t: ``M`` queries ``x_{t,p} ~ p(x_t | x_p)`` (:func:`diffuse`), one reverse trajectory
    from each (t → eps), and the count ``k`` of samples where ``c_p`` AND ``c_id`` fire;
    ``q_M(t) = k / M`` with the exact (Clopper–Pearson) 95 % interval of
    ``scipy.stats.binomtest(k, M).proportion_ci(method="exact")``.

    Batching: t values are taken high → low, up to ``max(1, batch_size // M)`` of them (with their M
    samples) per sampler call, using the sampler's per-sample start times AND step counts; when
    ``M > batch_size`` one t is split over several calls. Every trajectory runs on exactly the grid
    of a single-t run (:func:`probe_at`, the top-down search): ``steps(t)`` steps on
    ``linspace(t, eps, steps(t) + 1)``. A call of several t runs ``steps(max t)`` iterations; the
    trajectories of a lower t join late (their grids padded at the front) and are not evaluated
    before, so batching changes neither the law of q_M(t) nor the NFE: exactly
    ``Σ_t M · steps(t)`` (Euler–Maruyama; PC costs ``1 + corrector steps`` evaluations per step; the
    ODE's count is the solver's ``nfev`` per trajectory). A t joins a call only if it waits at most
    ``batch_waste`` of its steps (``steps(max t) <= (1 + batch_waste) · steps(t)``): waiting costs no
    network evaluations, but the call's early iterations run on a partly filled batch (wall time
    where a network call costs about the same whatever its batch, as on a GPU). ``steps_full`` must be
    large enough for the smallest t:
    a reverse process of very few steps cannot carry a query far from ``x_p``, so too coarse a
    sampler reports positives at low t that the model would not produce.

    Args:
        score_fn: ``(x (B,C,H,W) model range, t (B,)) -> score``; any model the sampler accepts.
        sde: the forward SDE the score model was trained for.
        x_p: the SAF image, unit range, (C, H, W) or (1, C, H, W).
        c_p, c_id: classifiers ``(B,C,H,W) unit range -> bool (B,)``; they see the reverse samples
            mapped to unit range and clipped to [0, 1].
        ts: the t values, each in (eps, 1].
        M: samples per t (>= 1).
        method, steps_full, eps: reverse sampler settings (see :class:`ProbeConfig`).
        batch_size: most trajectories per sampler call.
        batch_waste: largest fraction of its steps a t may wait (padded, not evaluated) in a call with
            higher t (see Batching).
        generator: draws the queries and the sampler noise (None: torch's global RNG).
        n_examples: images kept per example t.
        example_ts: the t values whose images are kept (default: none).
        progress: show a tqdm bar over sampler calls.

    Returns:
        :class:`QCurve` (ascending t); ``nfe`` counts image-network evaluations summed over all
        trajectories (a trajectory of ``s`` steps costs ``s``, whatever else shares its call).
    """
    grid = _check_grid(ts, eps)
    keep = set(float(t) for t in (example_ts or ()))
    tally = fill_q_curve(
        QTally(n_examples), score_fn, sde, x_p, c_p, c_id, grid, M, method=method, steps_full=steps_full, eps=eps,
        batch_size=batch_size, batch_waste=batch_waste, generator=generator, progress=progress,
    )  # fmt: skip
    return tally.curve([t for t in grid if t in keep])


def fill_q_curve(
    tally: QTally,
    score_fn: ScoreFn,
    sde: SDE | None,
    x_p: torch.Tensor,
    c_p: Classifier,
    c_id: Classifier,
    ts: Sequence[float] | np.ndarray,
    M: int,
    *,
    method: SamplerMethod,
    steps_full: int,
    eps: float,
    batch_size: int,
    batch_waste: float,
    generator: torch.Generator | None,
    progress: bool,
) -> QTally:
    """:func:`q_curve`'s sampling, counted into ``tally`` (which is returned)."""
    if isinstance(M, bool) or not isinstance(M, (int, np.integer)) or M < 1:
        raise ValueError(f"M={M!r}: the number of reverse samples per t must be an int >= 1")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: must be an int >= 1")
    if not batch_waste >= 0:
        raise ValueError(f"batch_waste={batch_waste!r}: must be >= 0")
    grid = _check_grid(ts, eps)
    x_p = _as_single_image(x_p)
    _check_process(score_fn, sde)

    # jobs: (list of t, samples per t) per sampler call (the rule of safcore.study.distributed.probe_jobs)
    jobs: list[tuple[tuple[float, ...], int]] = []
    if M <= batch_size:
        per_call = max(1, batch_size // M)
        group: list[float] = []
        for t in grid:  # high -> low; start a new call when full or when t would wait too many iterations
            s_max = _steps_for(group[0], steps_full, eps) if group else 0
            if group and (len(group) == per_call or s_max > (1.0 + batch_waste) * _steps_for(t, steps_full, eps)):
                jobs.append((tuple(group), M))
                group = []
            group.append(t)
        jobs.append((tuple(group), M))
    else:
        for t in grid:
            jobs += [((t,), min(batch_size, M - j)) for j in range(0, M, batch_size)]

    device = x_p.device
    for group, m in progress_bar(jobs, desc="q_M(t)", enabled=progress, leave=False):
        t_vec = torch.tensor(group, dtype=torch.float32, device=device).repeat_interleave(m)
        # each t with its own steps(t), exactly as probe_at / the top-down search run it alone
        steps = torch.tensor([_steps_for(t, steps_full, eps) for t in group], dtype=torch.int64).repeat_interleave(m)
        b = _run_batch(
            score_fn, sde, x_p, c_p, c_id, t_vec,
            method=method, steps=steps, steps_full=steps_full, eps=eps, generator=generator,
        )  # fmt: skip
        for j, t in enumerate(group):
            tally.add(t, b, slice(j * m, (j + 1) * m))
    return tally


# --------------------------------------------------------------------------------------------------
# t'
# --------------------------------------------------------------------------------------------------


def _example_ts(grid_desc: tuple[float, ...], evaluated: Sequence[float], t_prime: float | None, n_t: int) -> list[float]:
    """``n_t`` evaluated t evenly spread over the evaluated range, plus t' and its upper neighbour."""
    ev = sorted(evaluated)
    chosen: set[float] = set()
    if n_t > 0 and ev:
        idx = np.unique(np.round(np.linspace(0, len(ev) - 1, min(n_t, len(ev)))).astype(int))
        chosen |= {ev[i] for i in idx}
    if t_prime is not None:
        chosen.add(t_prime)
        i = grid_desc.index(t_prime)
        if i > 0 and grid_desc[i - 1] in ev:
            chosen.add(grid_desc[i - 1])
    return sorted(chosen)


def run_seed(seed: int, run: int) -> int:
    """The seed of run ``run`` of a probe seeded with ``seed``: ``seed`` itself for run 0 (so one run
    reproduces an earlier single probe), then ``SeedSequence([seed, run])`` (independent streams that
    do not collide with the runs of ``seed + 1``)."""
    if run == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(run)]).generate_state(1, dtype=np.uint64)[0] >> 1)


def chunk_sizes(M: int, first_chunk: int = 1) -> list[int]:
    """The top-down search's chunks at one t: cumulative sizes ``first_chunk, 2·first_chunk, …, M``.

    >>> chunk_sizes(16)
    [1, 1, 2, 4, 8]
    """
    sizes, done, target = [], 0, first_chunk
    while done < M:
        sizes.append(min(target, M) - done)
        done += sizes[-1]
        target *= 2
    return sizes


def topdown_search(n_t: int, M: int, draw: Callable[[int, int], int], first_chunk: int = 1) -> int | None:
    """The top-down t' search on a grid of ``n_t`` t sorted HIGH → LOW; returns the index of t' (None: none).

    From ``i = 0`` (the largest t) down: draw the M samples of ``grid[i]`` in the chunks of
    :func:`chunk_sizes` and stop at the first chunk with a positive; that i is t'. ``draw(i, m)``
    returns the positives among ``m`` new samples at ``grid[i]`` (the probe's reverse samples, or
    :class:`safcore.generators.known_answer.BernoulliDraws` on a known curve).

    Law: at every t above the answer it draws all M samples and sees no positive, exactly the events
    that make the exhaustive search's t' lie below that t; at the answer it stops on the first
    positive of M, which has the exhaustive chance ``1 - (1 - q)^M``. So its t' has exactly the law
    of the exhaustive t' — on any q(t), monotone or not.
    """
    for i in range(n_t):
        for m in chunk_sizes(M, first_chunk):
            if draw(i, m) > 0:
                return i
    return None


def find_t_prime(
    score_fn: ScoreFn,
    sde: SDE | None,
    x_p: torch.Tensor,
    c_p: Classifier,
    c_id: Classifier,
    config: ProbeConfig = ProbeConfig(),
    *,
    progress: bool = True,
) -> ProbeResult:
    """Algorithm 1: ``t' = max{t in grid : q_M(t) > 0}``, by exhaustive or top-down search.

    ``"exhaustive"``: :func:`q_curve` on every grid t; t' is the LARGEST t with at least one positive
    (not, as in the author's later code, 1 whenever exactly one positive occurs on the grid); when
    no t has a positive, ``t_prime`` is ``None`` (t' lies below the grid). Costs ``Σ_t M · steps(t)``
    network evaluations (batching several t into one sampler call keeps every trajectory's own grid
    and cost) and gives the whole q_M(t) curve (Fig. 6/9).

    ``"topdown"`` (:func:`topdown_search`): from the top of the grid down, each t in early-exit
    chunks, stop at the first t with a positive. Guarantee: its t' has EXACTLY the law of the
    exhaustive t' (it draws the same events, in the same order, up to the point where the exhaustive
    answer is fixed — every sample at a t, in either search, is one reverse trajectory on
    ``linspace(t, eps, steps(t) + 1)``, batched or not), so it agrees with an exhaustive run exactly
    as often as two exhaustive runs agree with each other — on sharp and gradual q(t) alike. Cost:
    ``Σ_{t > t'} M · steps(t)`` plus the samples drawn at t' (one to M trajectories) — cheap exactly
    for a model that memorises, where t' is near the top, and near-exhaustive for one that does not. On the paper grid (0.99 … 0.01,
    steps ∝ t) the grid t above t' cost 0 % of the exhaustive search at t' = 0.99, 7.9 % at 0.95,
    17 % at 0.90, 35 % at 0.80, 74 % at 0.5 and 96 % at 0.2, and 100 % with no t'; the samples at t'
    add at most ``M · steps(t') / Σ_t M · steps(t)`` (≤ 2 %). So it meets a 15 % budget only for
    t' >= 0.92–0.93. No search whose t' keeps the exhaustive law can do better: the exhaustive t'
    lies below a t only if all M samples there are negative, so every grid t above t' must be tested
    with M samples. To cap the cost, probe a shorter grid (``t >= 0.5`` answers "is t' >= 0.5?").
    It returns q only at the t it visited (the top of the grid down to t'), so draw the q_M(t)
    curve of Fig. 6/9 from an exhaustive search.

    Rejected (measured in ``benchmarks/bench_probe.py`` by Bernoulli simulation on known curves):
    coarse pass + bisection (the former ``"adaptive"``; 8–13 % of the exhaustive cost, but on gradual
    tails its t' fell below the exhaustive t' — mean 0.76 against 0.89 on a two-level curve with
    q = 0.05 on 0.4–0.9, agreement 0.30 against the 0.73 two exhaustive runs reach — because one
    negative verdict at a visited t, likely where q ≈ 1/M, sends the bisection below the whole tail)
    and a stride-10 scan from the top with a top-down scan of the first positive block (10–21 %, the
    same low bias, smaller: agreement 0.55 there). Both understate risk on exactly the curves where
    t' is uncertain.

    A diffusers model (:class:`safcore.generators.diffusers_model.DiffusersModel`, ``sde=None``) is probed through its own
    scheduler: ``t`` maps to the training timestep ``ceil(t·T) − 1``, ``x_p`` is noised with ``add_noise``
    and reversed with the scheduler's steps from there (``steps_full`` inference steps for a full run;
    ``method`` and ``eps`` do not apply); the Eq. 9 indicator uses its ``σ = sqrt(1 − ᾱ)``.

    ``repeats = R``: R independent runs (:func:`run_seed`), pooled — see :class:`ProbeResult` (THE
    t' is the largest over runs, i.e. Algorithm 1 with ``R · M`` samples per t; ``t_prime_runs``
    keeps every run's t').

    Args:
        score_fn, sde, x_p, c_p, c_id: as in :func:`q_curve`.
        config: :class:`ProbeConfig`.
        progress: tqdm bars.

    Returns:
        :class:`ProbeResult`.
    """
    x_p = _as_single_image(x_p)
    _check_process(score_fn, sde)
    cfg = config
    grid = cfg.grid  # high -> low
    tallies: list[QTally] = []
    primes: list[float | None] = []
    for run in range(cfg.repeats):
        gen = _generator_for(x_p, run_seed(cfg.seed, run))
        if cfg.search == "exhaustive":
            tally = fill_q_curve(
                QTally(cfg.n_examples), score_fn, sde, x_p, c_p, c_id, grid, cfg.M,
                method=cfg.method, steps_full=cfg.steps_full, eps=cfg.eps, batch_size=cfg.batch_size,
                batch_waste=cfg.batch_waste, generator=gen, progress=progress,
            )  # fmt: skip
            positive = [t for t in tally.k if tally.k[t] > 0]
            primes.append(max(positive) if positive else None)
        else:
            tally, t_run = _topdown(score_fn, sde, x_p, c_p, c_id, cfg, gen, progress)
            primes.append(t_run)
        tallies.append(tally)
    return probe_result(score_fn, sde, cfg, tallies, primes, search=cfg.search)


def probe_result(
    score_fn: ScoreFn,
    sde: SDE | None,
    config: ProbeConfig,
    run_tallies: Sequence[QTally],
    run_primes: Sequence[float | None],
    *,
    search: Search,
) -> ProbeResult:
    """The :class:`ProbeResult` of ``R`` runs (their tallies and t'), as Algorithm 1 with ``R·M`` samples per t:
    THE t' is the largest of the runs' t', the counts are pooled, the Eq. 9 indicator is computed on the pooled
    counts. Shared by :func:`find_t_prime` and the split searches of :mod:`safcore.study.distributed`."""
    grid = config.grid
    tally = QTally.merge(list(run_tallies))
    found = [t for t in run_primes if t is not None]
    t_prime = max(found) if found else None
    curve = tally.curve(_example_ts(grid, list(tally.n), t_prime, config.n_example_t))
    k_grid = [tally.k.get(t, 0) for t in grid]
    n_grid = [tally.n.get(t, 0) for t in grid]
    return ProbeResult(
        ts=curve.ts,
        n=curve.n,
        k=curve.k,
        k_p=curve.k_p,
        k_id=curve.k_id,
        q=curve.q,
        ci_low=curve.ci_low,
        ci_high=curve.ci_high,
        M=config.M,
        t_prime=t_prime,
        k_at_t_prime=None if t_prime is None else int(tally.k[t_prime]),
        n_at_t_prime=None if t_prime is None else int(tally.n[t_prime]),
        t_prime_runs=tuple(run_primes),
        eq9_indicator=eq9_indicator(grid, k_grid, n_grid, _std_fn(score_fn, sde)),
        nfe=curve.nfe,
        nfe_exhaustive=config.repeats * config.nfe_exhaustive,
        search=search,
        grid=grid,
        examples=curve.examples,
        config=config,
    )


def _topdown(
    score_fn: ScoreFn,
    sde: SDE | None,
    x_p: torch.Tensor,
    c_p: Classifier,
    c_id: Classifier,
    cfg: ProbeConfig,
    gen: torch.Generator,
    progress: bool,
) -> tuple[QTally, float | None]:
    """One run of :func:`topdown_search` with the probe's reverse samples as ``draw``."""
    grid = cfg.grid
    tally = QTally(cfg.n_examples)
    bar = progress_bar(total=len(grid), desc="top-down t'", unit="t", enabled=progress, leave=False)

    def draw(i: int, m: int) -> int:
        t = grid[i]
        found = tally_draws(tally, score_fn, sde, x_p, c_p, c_id, cfg, t, m, gen)
        if found or tally.n[t] >= cfg.M:
            bar.update(1)
            bar.set_postfix(t=f"{t:.3f}", positive=bool(tally.k[t]))
        return found

    hit = topdown_search(len(grid), cfg.M, draw, cfg.first_chunk)
    bar.close()
    return tally, (grid[hit] if hit is not None else None)


def tally_draws(
    tally: QTally,
    score_fn: ScoreFn,
    sde: SDE | None,
    x_p: torch.Tensor,
    c_p: Classifier,
    c_id: Classifier,
    cfg: ProbeConfig,
    t: float,
    m: int,
    generator: torch.Generator,
) -> int:
    """Diffuse ``x_p`` to ``t`` and reverse it ``m`` times (in batches of at most ``cfg.batch_size``, drawn from
    ``generator`` in turn), classify, count into ``tally``; returns the positives (``c_p`` AND ``c_id``) among them.
    One chunk of the top-down search."""
    before = tally.k.get(t, 0)
    for j in range(0, m, cfg.batch_size):  # respect batch_size inside a chunk
        mm = min(cfg.batch_size, m - j)
        t_vec = torch.full((mm,), t, dtype=torch.float32, device=x_p.device)
        b = _run_batch(
            score_fn, sde, x_p, c_p, c_id, t_vec,
            method=cfg.method, steps=cfg.steps(t), steps_full=cfg.steps_full, eps=cfg.eps, generator=generator,
        )  # fmt: skip
        tally.add(t, b, slice(0, mm))
    return tally.k[t] - before


# public names of the helpers that the split probe (safcore.study.distributed) shares with this module
steps_for = _steps_for
as_single_image = _as_single_image
