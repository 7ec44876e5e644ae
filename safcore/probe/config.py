"""Algorithm 1's settings (paper Sec. 3.4): :class:`ProbeConfig`, its t grid and the checks of the probe's inputs.

The grid is the set of noise levels ``t`` at which ``q_M(t)`` is estimated; the paper (the author's code) uses
``t = 0.99, 0.98, …, 0.01`` (:data:`DEFAULT_GRID`). Grids are stored HIGH → LOW.

Conventions (CONTRIBUTING.md): ``x_p`` and everything the classifiers see is unit range ``[0, 1]``; a score
function is any ``score_fn(x (B,C,H,W) model range, t (B,)) -> (B,C,H,W)``; a classifier is any callable
``(B,C,H,W) unit range -> bool (B,)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch

from safcore.generators.base import steps_for
from safcore.generators.sampling import Method
from safcore.runtime.checks import check_seed

__all__ = ["DEFAULT_GRID", "ProbeConfig", "as_single_image", "check_grid", "steps_for"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Classifier = Callable[[torch.Tensor], torch.Tensor]
Search = Literal["exhaustive", "topdown"]
SamplerMethod = Method  # the samplers of safcore.generators.sampling.sample

#: The paper's grid (the author's code): t = 0.99, 0.98, ..., 0.01 (99 values, step 0.01).
DEFAULT_GRID: tuple[float, ...] = tuple(round(0.99 - 0.01 * i, 2) for i in range(99))


def as_single_image(x_p: torch.Tensor) -> torch.Tensor:
    """``x_p`` as one image ``(C, H, W)``; accepts ``(C, H, W)`` or ``(1, C, H, W)``, else raises ValueError."""
    if x_p.ndim == 4 and x_p.shape[0] == 1:
        x_p = x_p[0]
    if x_p.ndim != 3:
        raise ValueError(f"x_p must be one image (C, H, W) or (1, C, H, W), got shape {tuple(x_p.shape)}")
    return x_p


def check_grid(grid: Sequence[float] | np.ndarray | torch.Tensor, eps: float) -> tuple[float, ...]:
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
            model that memorises, near-exhaustive for one that does not; see :func:`safcore.probe.search.find_t_prime`).
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
            further runs use :func:`safcore.probe.search.run_seed`).
        repeats: independent runs of the search (``>= 1``), each with its own seed
            (:func:`~safcore.probe.search.run_seed`); :class:`~safcore.probe.results.ProbeResult` keeps
            every run's t' and pools their counts.
        n_example_t: number of grid t values (evenly spread, plus t' and the grid point above it)
            whose images are kept in :attr:`~safcore.probe.results.ProbeResult.examples` (paper Fig. 4).
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
        object.__setattr__(self, "grid", check_grid(self.grid, self.eps))
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
        return steps_for(t, self.steps_full, self.eps)

    @property
    def nfe_exhaustive(self) -> int:
        """Network evaluations of ONE exhaustive Euler–Maruyama run on this grid, ``Σ_t M · steps(t)``."""
        return sum(self.M * self.steps(t) for t in self.grid)
