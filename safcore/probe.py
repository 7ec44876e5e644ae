"""Algorithm 1 (paper Sec. 3.4): q_M(t) curves, the anonymity indicator t' and the Darboux bound (Eq. 9).

For each noise level ``t`` of a grid, the SAF image ``x_p`` is diffused to ``x_{t,p} ~ p(x_t | x_p)``
(the forward SDE's marginal, paper Eq. 7), the learned reverse process is run from there ``M`` times,
and each reverse sample ``x'_{t,p}`` is shown to the adversary's two classifiers. A sample is
*positive* when ``c_p`` (the SAF is there) AND ``c_id`` (it is ``x_p``) both fire, and

    q_M(t) = (# positives) / M,          t' = max{ t in grid : q_M(t) > 0 }.

``t'`` is how far ``x_p`` can be pushed into noise and still come back as ``x_p``: high for a model
that memorises ``x_p``, low (or none) for one that does not.

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
from scipy.special import expit
from scipy.stats import binomtest

from safcore.data import from_model_range, to_model_range
from safcore.progress import progress_bar
from safcore.sde import SDE

__all__ = [
    "DEFAULT_GRID",
    "ProbeConfig",
    "ProbeExample",
    "QCurve",
    "ProbeResult",
    "diffuse",
    "marginal_std",
    "q_curve",
    "find_t_prime",
    "darboux_upper_sum",
    "PointMixtureScore",
    "probe_at",
    "adaptive_search",
    "chunk_sizes",
]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Classifier = Callable[[torch.Tensor], torch.Tensor]
Search = Literal["exhaustive", "adaptive"]
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
            0.99, 0.98, ..., 0.01 as in the author's code.
        search: ``"exhaustive"`` evaluates ``q_M`` on every grid t (the full curve of Fig. 6/9, and
            the Darboux bound); ``"adaptive"`` finds ``t'`` with far fewer network evaluations
            (see :func:`find_t_prime`).
        method: the reverse sampler (:func:`safcore.sampling.sample`).
        steps_full: reverse steps of a FULL trajectory from ``t = 1`` to ``eps``. A trajectory started
            at ``t`` gets ``steps(t) = ceil((t - eps) / (1 - eps) · steps_full)`` steps, so its step
            size is (at most) that of a full trajectory: the probe sees the same discretisation at
            every t, and the cost of a trajectory grows linearly with t. (The ``"ode"`` sampler picks
            its own steps; its NFE is what the sampler reports.)
        eps: end time of the reverse process (Song et al.: 1e-3).
        coarse_step: spacing in t of the adaptive search's coarse pass.
        first_chunk: the adaptive search evaluates the M samples of one t in chunks whose cumulative
            sizes double (``first_chunk, 2·first_chunk, 4·first_chunk, ..., M``) and stops at the first
            positive.
        batch_size: most trajectories per sampler call; the exhaustive search puts
            ``max(1, batch_size // M)`` t values (each with its M samples) into one call.
        batch_waste: a t shares a sampler call with higher t only if that costs it at most this
            fraction of extra steps (all trajectories of a call take the same number of steps), so
            the exhaustive NFE stays within ``(1 + batch_waste) · Σ_t M · steps(t)``.
        seed: seeds one ``torch.Generator`` that draws both ``x_{t,p}`` and the sampler noise.
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
    coarse_step: float = 0.2
    first_chunk: int = 1
    batch_size: int = 256
    batch_waste: float = 0.1
    seed: int = 0
    n_example_t: int = 5
    n_examples: int = 8

    def __post_init__(self) -> None:
        if isinstance(self.M, bool) or not isinstance(self.M, (int, np.integer)) or self.M < 1:
            raise ValueError(f"M={self.M!r}: the number of reverse samples per t must be an int >= 1")
        if not (isinstance(self.eps, (int, float)) and 0.0 < self.eps < 1.0):
            raise ValueError(f"eps={self.eps!r}: the sampler's end time must lie in (0, 1)")
        object.__setattr__(self, "grid", _check_grid(self.grid, self.eps))
        if self.search not in get_args(Search):
            raise ValueError(f"search={self.search!r}; allowed: {', '.join(map(repr, get_args(Search)))}")
        if self.method not in get_args(SamplerMethod):
            raise ValueError(
                f"method={self.method!r}; allowed: {', '.join(map(repr, get_args(SamplerMethod)))}"
            )
        if not isinstance(self.steps_full, (int, np.integer)) or self.steps_full < 1:
            raise ValueError(f"steps_full={self.steps_full!r}: must be an int >= 1")
        if not (0.0 < self.coarse_step <= 1.0):
            raise ValueError(f"coarse_step={self.coarse_step!r}: must lie in (0, 1]")
        if not isinstance(self.first_chunk, (int, np.integer)) or not 1 <= self.first_chunk <= self.M:
            raise ValueError(f"first_chunk={self.first_chunk!r}: must be an int in [1, M={self.M}]")
        if not isinstance(self.batch_size, (int, np.integer)) or self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size!r}: must be an int >= 1")
        if not (isinstance(self.batch_waste, (int, float)) and self.batch_waste >= 0):
            raise ValueError(f"batch_waste={self.batch_waste!r}: must be a number >= 0")
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
    fewer where the adaptive search stopped at the first positive), ``k`` = positives
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

    Attributes:
        ts: the evaluated t, ascending, (T,) (every grid t for ``"exhaustive"``, the visited ones for
            ``"adaptive"``).
        n, k, k_p, k_id, q, ci_low, ci_high: as in :class:`QCurve`, (T,).
        M: reverse samples per t asked for.
        t_prime: the largest t with ``q_M(t) > 0``, or ``None`` when no positive occurred on the
            grid (t' lies below the smallest grid t; plot it as 0).
        darboux_bound: the upper Darboux sum of Eq. 9 (:func:`darboux_upper_sum`); for the adaptive
            search, which does not measure q below t', the conservative value with ``q = 1`` on every
            grid t <= t' and 0 above.
        nfe: image-network evaluations actually spent (summed over all trajectories).
        nfe_exhaustive: what an exhaustive Euler–Maruyama search on the same grid costs,
            ``Σ_t M · steps(t)`` (no batching overhead) — the reference for the adaptive search's
            saving (PC multiplies every count by ``1 + corrector steps``; for the ODE it is nominal).
        search: ``"exhaustive"`` or ``"adaptive"``.
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
    darboux_bound: float
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

    def __str__(self) -> str:
        tp = "none (no positive on the grid)" if self.t_prime is None else f"{self.t_prime:.2f}"
        return (
            f"t' = {tp} ({self.search}, M={self.M}, {len(self.ts)} t, NFE={self.nfe:,}), "
            f"Darboux bound = {self.darboux_bound:.4g}"
        )


@dataclass(frozen=True, eq=False)
class PointMixtureScore:
    """Exact score of data made of point masses, ``p_0 = Σ_k w_k δ(x - c_k)``: a model whose t' is known.

    Under a linear-drift SDE ``p_t = Σ_k w_k N(a_t c_k, σ_t² I)`` with ``(a_t, σ_t)`` from
    ``sde.marginal_prob``, so (Song Eq. 29 marginal, mixture of Gaussians)

        ∇ log p_t(x) = -(x - Σ_k r_k a_t c_k) / σ_t²,   r_k = softmax_k(log w_k - ||x - a_t c_k||² / (2σ_t²)).

    The exact reverse process from ``x_t`` ends at ``c_k`` with probability ``r_k(x_t, t)``. One
    point at ``x_p``: every reverse sample comes back as ``x_p`` (q = 1 at every t); one point
    elsewhere: never (q = 0); two points: q falls with t (:meth:`q_exact`).

    Args:
        sde: the forward SDE.
        centers: the points ``c_k`` in unit range, (K, C, H, W).
        log_weights: unnormalised ``log w_k`` (K,); default equal weights.
    """

    sde: SDE
    centers: torch.Tensor
    log_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.centers.ndim != 4 or self.centers.shape[0] < 1:
            raise ValueError(f"centers must have shape (K, C, H, W) with K >= 1, got {tuple(self.centers.shape)}")
        if self.log_weights is not None and len(self.log_weights) != self.centers.shape[0]:
            raise ValueError(
                f"log_weights has {len(self.log_weights)} entries for {self.centers.shape[0]} centers"
            )

    def _log_w(self, like: torch.Tensor) -> torch.Tensor:
        k = self.centers.shape[0]
        lw = self.log_weights if self.log_weights is not None else (0.0,) * k
        return torch.as_tensor(lw, dtype=like.dtype, device=like.device)

    def _a_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        one = torch.ones_like(t)
        return self.sde.marginal_prob(one, t)  # a_t·1 and σ_t, each (B,)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Score at ``x`` (B, C, H, W) model range, ``t`` (B,) → (B, C, H, W)."""
        t = t.to(x.dtype)
        c = to_model_range(self.centers.to(x.device, x.dtype))  # (K, C, H, W)
        a, s = self._a_sigma(t)
        means = a.reshape(-1, 1, 1, 1, 1) * c.unsqueeze(0)  # (B, K, C, H, W)
        d2 = (x.unsqueeze(1) - means).flatten(2).pow(2).sum(-1)  # (B, K)
        r = torch.softmax(self._log_w(x).unsqueeze(0) - d2 / (2 * s.reshape(-1, 1) ** 2), dim=1)
        mix = (r.reshape(*r.shape, 1, 1, 1) * means).sum(1)
        return -(x - mix) / s.reshape(-1, 1, 1, 1) ** 2

    def q_exact(self, t: float, k: int = 0, n_quad: int = 80) -> float:
        """Exact ``q(t)``: probability that the exact reverse process from ``x_t ~ p(x_t | c_k)`` ends at
        ``c_k``, i.e. ``E[r_k(x_t, t)]``; two components only (Gauss–Hermite quadrature over the
        one-dimensional projection of the noise on ``c_k - c_j``)."""
        if self.centers.shape[0] != 2:
            raise ValueError("q_exact needs exactly two centers")
        j = 1 - k
        c = to_model_range(self.centers.double())
        dist2 = float((c[k] - c[j]).pow(2).sum())
        a, s = (float(v) for v in self._a_sigma(torch.tensor([float(t)], dtype=torch.float64)))
        lw = self._log_w(c)
        u = a * a * dist2 / (s * s)  # squared distance between the two means in noise units
        # log r_k/r_j = log w_k/w_j + u/2 + sqrt(u)·ξ with ξ ~ N(0, 1)
        xi, wq = np.polynomial.hermite_e.hermegauss(n_quad)
        logit = float(lw[k] - lw[j]) + u / 2 + math.sqrt(u) * xi
        return float(np.sum(wq * expit(logit)) / math.sqrt(2 * math.pi))


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


def darboux_upper_sum(
    ts: Sequence[float] | np.ndarray,
    q: Sequence[float] | np.ndarray,
    sigma: Sequence[float] | np.ndarray | Callable[[np.ndarray], np.ndarray],
) -> float:
    """Upper Darboux sum of paper Eq. 9 on a sampled curve.

    ``Σ_i (σ_{t_{i+1}} - σ_{t_i}) · sup_{[t_i, t_{i+1}]} q`` over neighbouring grid points
    ``t_0 < t_1 < ... < t_N`` (sorted here), where the sup of a curve known only at the grid points is
    the larger endpoint value ``max(q_i, q_{i+1})``.

    What it bounds: the integral of Eq. 7/8, ``∫ q(t) dσ_t`` from the smallest grid t to the largest,
    i.e. the probability mass of reproducing ``x_p`` accumulated over noise levels — from above,
    whenever q is monotone on each grid interval (then the endpoint max is the sup), up to the
    Monte-Carlo error of ``q_M``. Pass the whole curve: with ``q_M = 0`` above ``t'`` the sum runs
    "up to t'" and includes the interval from t' to the next grid point (whose sup is ``q(t')``,
    since q is only known to vanish at that next point). The interval below the smallest grid t is
    not included.

    Args:
        ts: grid times (T,), distinct.
        q: curve values in [0, 1] at ``ts`` (T,).
        sigma: ``σ_t`` at ``ts`` (T,), or a callable mapping an array of t to σ (e.g.
            ``lambda t: marginal_std(sde, t)``).

    Returns:
        The sum (0.0 for a single point).
    """
    t = np.asarray(ts, dtype=np.float64).reshape(-1)
    qv = np.asarray(q, dtype=np.float64).reshape(-1)
    s = np.asarray(sigma(t) if callable(sigma) else sigma, dtype=np.float64).reshape(-1)
    if not (t.shape == qv.shape == s.shape):
        raise ValueError(f"ts, q and sigma must have the same length, got {t.size}, {qv.size}, {s.size}")
    if t.size == 0:
        raise ValueError("darboux_upper_sum needs at least one t")
    if np.unique(t).size != t.size:
        raise ValueError(f"ts must be distinct, got {t.tolist()}")
    if np.any(qv < 0) or np.any(qv > 1) or not np.all(np.isfinite(qv)):
        raise ValueError(f"q must lie in [0, 1], got {qv.tolist()}")
    order = np.argsort(t)
    qv, s = qv[order], s[order]
    return float(np.sum(np.diff(s) * np.maximum(qv[:-1], qv[1:])))


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
    nfe_each: int  # network evaluations per trajectory


def _run_batch(
    score_fn: ScoreFn,
    sde: SDE,
    x_p: torch.Tensor,
    c_p: Classifier,
    c_id: Classifier,
    t_vec: torch.Tensor,
    *,
    method: SamplerMethod,
    steps: int,
    eps: float,
    generator: torch.Generator | None,
) -> _Batch:
    """Diffuse ``x_p`` to the per-sample times ``t_vec`` (B,), reverse, classify."""
    from safcore.sampling import sample  # the sampler sits beside probe in the data flow

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
    x_unit = from_model_range(res.images.detach()).clamp(0.0, 1.0)
    vp = _classify(c_p, x_unit, "c_p")
    vid = _classify(c_id, x_unit, "c_id")
    return _Batch(query.detach(), x_unit.to("cpu"), vp, vid, int(res.nfe))


def probe_at(
    score_fn: ScoreFn,
    sde: SDE,
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
    t_vec = torch.full((M,), t, dtype=torch.float32, device=x_p.device)
    b = _run_batch(
        score_fn, sde, x_p, c_p, c_id, t_vec,
        method=method, steps=_steps_for(t, steps_full, eps), eps=eps, generator=generator,
    )  # fmt: skip
    ex = ProbeExample(
        t=t,
        query=from_model_range(b.query).clamp(0.0, 1.0).to("cpu"),
        samples=b.samples,
        c_p=b.c_p,
        c_id=b.c_id,
    )
    return ex, M * b.nfe_each


def _proportion_ci(k: int, n: int) -> tuple[float, float]:
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=0.95, method="exact")
    return float(ci.low), float(ci.high)


class _Tally:
    """Per-t counters and kept images, filled batch by batch."""

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
        self.nfe[t] = self.nfe.get(t, 0) + m * b.nfe_each
        kept = self.images.setdefault(t, [])
        have = sum(x[0].shape[0] for x in kept)
        take = max(0, min(m, self.n_keep - have))
        if take:
            q = from_model_range(b.query[rows][:take]).clamp(0.0, 1.0).to("cpu")
            kept.append((q, b.samples[rows][:take], vp[:take], vid[:take]))

    def curve(self, example_ts: Sequence[float]) -> QCurve:
        ts = np.array(sorted(self.n), dtype=np.float64)
        n = np.array([self.n[t] for t in ts], dtype=np.int64)
        k = np.array([self.k[t] for t in ts], dtype=np.int64)
        ci = [_proportion_ci(ki, ni) for ki, ni in zip(k, n)]
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
    sde: SDE,
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
    samples) per sampler call, using the sampler's per-sample start times; when ``M > batch_size``
    one t is split over several calls. The sampler gives every trajectory of a call the same number
    of steps, so a call starting at several t uses ``steps(max t)`` for all of them (per-sample step
    size ``(t - eps)/steps``, never coarser than a full trajectory's). A t joins a call only if that
    costs it at most ``batch_waste`` extra steps (``steps(max t) <= (1 + batch_waste) · steps(t)``),
    so ``Σ_t M · steps(t) <= nfe <= (1 + batch_waste) · Σ_t M · steps(t)``; with
    ``batch_waste = 0`` (or ``batch_size < 2 M``) the NFE is exactly ``Σ_t M · steps(t)``
    (Euler–Maruyama; PC costs ``1 + corrector steps`` evaluations per step; the ODE's count is the
    solver's ``nfev`` per trajectory). ``steps_full`` must be large enough for the smallest t:
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
        batch_waste: largest fraction of extra steps a t may take by sharing a call with higher t.
        generator: draws the queries and the sampler noise (None: torch's global RNG).
        n_examples: images kept per example t.
        example_ts: the t values whose images are kept (default: none).
        progress: show a tqdm bar over sampler calls.

    Returns:
        :class:`QCurve` (ascending t); ``nfe`` counts image-network evaluations summed over all
        trajectories (a batch of B trajectories of ``s`` steps costs ``B · s``).
    """
    if isinstance(M, bool) or not isinstance(M, (int, np.integer)) or M < 1:
        raise ValueError(f"M={M!r}: the number of reverse samples per t must be an int >= 1")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: must be an int >= 1")
    if not batch_waste >= 0:
        raise ValueError(f"batch_waste={batch_waste!r}: must be >= 0")
    grid = _check_grid(ts, eps)
    x_p = _as_single_image(x_p)
    keep = set(float(t) for t in (example_ts or ()))
    tally = _Tally(n_examples)

    # jobs: (list of t, samples per t) per sampler call
    jobs: list[tuple[tuple[float, ...], int]] = []
    if M <= batch_size:
        per_call = max(1, batch_size // M)
        group: list[float] = []
        for t in grid:  # high -> low; start a new call when full or when t would waste steps
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
        b = _run_batch(
            score_fn, sde, x_p, c_p, c_id, t_vec,
            method=method, steps=_steps_for(max(group), steps_full, eps), eps=eps, generator=generator,
        )  # fmt: skip
        for j, t in enumerate(group):
            tally.add(t, b, slice(j * m, (j + 1) * m))
    # keep only requested examples
    return tally.curve([t for t in grid if t in keep])


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


def find_t_prime(
    score_fn: ScoreFn,
    sde: SDE,
    x_p: torch.Tensor,
    c_p: Classifier,
    c_id: Classifier,
    config: ProbeConfig = ProbeConfig(),
    *,
    progress: bool = True,
) -> ProbeResult:
    """Algorithm 1: ``t' = max{t in grid : q_M(t) > 0}``, by exhaustive or adaptive search.

    ``"exhaustive"``: :func:`q_curve` on every grid t; t' is the LARGEST t with at least one positive
    (not, as in the author's later code, 1 whenever exactly one positive occurs on the grid); when
    no t has a positive, ``t_prime`` is ``None`` (t' lies below the grid). The Darboux bound is
    :func:`darboux_upper_sum` of the measured curve with ``σ_t`` = the SDE's marginal std.

    ``"adaptive"``: assumes that q(t) falls with t (Fig. 6/9) and spends evaluations only where they
    decide t'. (1) Coarse pass from the top of the grid down, every ``coarse_step`` in t (and the
    smallest grid t), until the first t with a positive. (2) Bisection on the grid between that t
    and the coarse point above it (which had none). At each visited t the M samples are drawn in
    chunks of doubling cumulative size and the evaluation stops at the first positive — a positive
    needs one, a "no positive" verdict needs all M. t' is the smallest-index grid t found positive.

    What "agree" means: q_M(t) is random, so t' is a random variable even for a fixed model; the
    two searches use different random draws. They agree (``|t'_adaptive - t'_exhaustive| <=`` one
    grid step, or both none) whenever the true q(t) drops from well above 1/M to ~0 within a grid
    step and is monotone; where q lingers at ~1/M over several grid steps each search's t' may land
    anywhere in that tail, and a positive at a large t isolated between zeros (possible for
    exhaustive) is found by adaptive only if it falls on a visited t.

    Args:
        score_fn, sde, x_p, c_p, c_id: as in :func:`q_curve`.
        config: :class:`ProbeConfig`.
        progress: tqdm bars.

    Returns:
        :class:`ProbeResult`.
    """
    x_p = _as_single_image(x_p)
    cfg = config
    gen = _generator_for(x_p, cfg.seed)
    grid = cfg.grid  # high -> low
    nfe_exhaustive = sum(cfg.M * cfg.steps(t) for t in grid)
    sig = lambda t: marginal_std(sde, t)  # noqa: E731

    if cfg.search == "exhaustive":
        curve = q_curve(
            score_fn, sde, x_p, c_p, c_id, grid, cfg.M,
            method=cfg.method, steps_full=cfg.steps_full, eps=cfg.eps, batch_size=cfg.batch_size,
            batch_waste=cfg.batch_waste, generator=gen, n_examples=cfg.n_examples, example_ts=grid, progress=progress,
        )  # fmt: skip
        pos = curve.ts[curve.k > 0]
        t_prime = float(pos.max()) if pos.size else None
        bound = darboux_upper_sum(curve.ts, curve.q, sig)
        keep = _example_ts(grid, curve.ts.tolist(), t_prime, cfg.n_example_t)
        examples = tuple(e for e in curve.examples if e.t in keep)
    else:
        curve, t_prime = _adaptive(score_fn, sde, x_p, c_p, c_id, cfg, gen, progress)
        q_hat = [1.0 if (t_prime is not None and t <= t_prime) else 0.0 for t in grid]
        bound = darboux_upper_sum(grid, q_hat, sig)
        keep = _example_ts(grid, curve.ts.tolist(), t_prime, cfg.n_example_t)
        examples = tuple(e for e in curve.examples if e.t in keep)

    return ProbeResult(
        ts=curve.ts,
        n=curve.n,
        k=curve.k,
        k_p=curve.k_p,
        k_id=curve.k_id,
        q=curve.q,
        ci_low=curve.ci_low,
        ci_high=curve.ci_high,
        M=cfg.M,
        t_prime=t_prime,
        darboux_bound=bound,
        nfe=curve.nfe,
        nfe_exhaustive=nfe_exhaustive,
        search=cfg.search,
        grid=grid,
        examples=examples,
        config=cfg,
    )


def chunk_sizes(M: int, first_chunk: int = 1) -> list[int]:
    """The adaptive search's chunks at one t: cumulative sizes ``first_chunk, 2·first_chunk, …, M``.

    >>> chunk_sizes(16)
    [1, 1, 2, 4, 8]
    """
    sizes, done, target = [], 0, first_chunk
    while done < M:
        sizes.append(min(target, M) - done)
        done += sizes[-1]
        target *= 2
    return sizes


def adaptive_search(
    grid: Sequence[float], positive_at: Callable[[int], bool], coarse_step: float = 0.2
) -> int | None:
    """The adaptive t' search on a grid sorted HIGH → LOW; returns the index of t' (None: no positive).

    (1) Coarse pass from ``grid[0]`` down, visiting points at least ``coarse_step`` apart and the last
    grid point, until ``positive_at(i)`` is True. (2) Bisection on indices between that point and the
    coarse point before it (False there). Exact on a curve where q > 0 exactly below some t; with a
    random q_M see :func:`find_t_prime`. ``positive_at`` is whatever decides "some positive at
    grid[i]" (the probe's early-exit evaluation, or a simulation on a known curve).
    """
    coarse = [0]
    for i in range(1, len(grid)):
        if grid[i] <= grid[coarse[-1]] - coarse_step + 1e-9:
            coarse.append(i)
    if coarse[-1] != len(grid) - 1:
        coarse.append(len(grid) - 1)
    lo: int | None = None  # the last coarse point without a positive
    hi: int | None = None  # the first coarse point with one
    for i in coarse:
        if positive_at(i):
            hi = i
            break
        lo = i
    if hi is not None and lo is not None:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if positive_at(mid):
                hi = mid
            else:
                lo = mid
    return hi


def _adaptive(
    score_fn: ScoreFn,
    sde: SDE,
    x_p: torch.Tensor,
    c_p: Classifier,
    c_id: Classifier,
    cfg: ProbeConfig,
    gen: torch.Generator,
    progress: bool,
) -> tuple[QCurve, float | None]:
    """:func:`adaptive_search` with the early-exit evaluation of :func:`chunk_sizes` at each t."""
    grid = cfg.grid
    tally = _Tally(cfg.n_examples)
    device = x_p.device
    bar = progress_bar(desc="adaptive t'", unit="t", enabled=progress, leave=False)

    def positive_at(i: int) -> bool:
        t = grid[i]
        steps = cfg.steps(t)
        for m in chunk_sizes(cfg.M, cfg.first_chunk):
            for j in range(0, m, cfg.batch_size):  # respect batch_size inside a chunk
                mm = min(cfg.batch_size, m - j)
                t_vec = torch.full((mm,), t, dtype=torch.float32, device=device)
                b = _run_batch(
                    score_fn, sde, x_p, c_p, c_id, t_vec,
                    method=cfg.method, steps=steps, eps=cfg.eps, generator=gen,
                )  # fmt: skip
                tally.add(t, b, slice(0, mm))
            if tally.k[t] > 0:
                break
        bar.update(1)
        bar.set_postfix(t=f"{t:.3f}", positive=tally.k[t] > 0)
        return tally.k[t] > 0

    hi = adaptive_search(grid, positive_at, cfg.coarse_step)
    bar.close()
    t_prime = grid[hi] if hi is not None else None
    evaluated = sorted(tally.n)
    return tally.curve(_example_ts(grid, evaluated, t_prime, cfg.n_example_t)), t_prime
