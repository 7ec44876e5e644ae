"""Algorithm 1's search for t' (paper Sec. 3.4): ``t' = max{ t in grid : q_M(t) > 0 }``, exhaustive or top-down.

``t'`` is how far ``x_p`` can be pushed into noise and still come back as ``x_p``: high for a model that
memorises ``x_p``, low (or none) for one that does not. ``q_M`` is random, so ``t'`` is a random variable even
for a fixed model; :class:`~safcore.probe.results.ProbeResult` reports the count it rests on (k of n at t')
and, with ``ProbeConfig.repeats > 1``, the spread of t' over independent runs (:func:`run_seed`).

Models whose t' is known (exact scores of point masses, simulated q(t) curves) live in
:mod:`safcore.generators.known_answer`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from safcore.generators.base import Generator
from safcore.generators.loader import as_generator
from safcore.generators.sde import SDE
from safcore.runtime.parallel import derived_seed
from safcore.probe.config import Classifier, ProbeConfig, ScoreFn, Search, as_single_image
from safcore.probe.eq9 import eq9_indicator
from safcore.probe.results import ProbeResult
from safcore.probe.runner import QTally, fill_q_curve, tally_draws
from safcore.runtime.progress import progress_bar

__all__ = ["run_seed", "chunk_sizes", "topdown_search", "find_t_prime", "probe_result"]


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


def _generator_for(x_p: torch.Tensor, seed: int) -> torch.Generator:
    return torch.Generator(device=x_p.device).manual_seed(int(seed))


def run_seed(seed: int, run: int) -> int:
    """The seed of run ``run`` of a probe seeded with ``seed``: ``seed`` itself for run 0 (so one run
    reproduces an earlier single probe), then ``SeedSequence([seed, run])`` (independent streams that
    do not collide with the runs of ``seed + 1``): :func:`safcore.runtime.parallel.derived_seed`'s rule."""
    return derived_seed(seed, run)


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

    ``"exhaustive"``: :func:`~safcore.probe.runner.q_curve` on every grid t; t' is the LARGEST t with at least one positive
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

    ``repeats = R``: R independent runs (:func:`run_seed`), pooled — see
    :class:`~safcore.probe.results.ProbeResult` (THE t' is the largest over runs, i.e. Algorithm 1 with
    ``R · M`` samples per t; ``t_prime_runs`` keeps every run's t').

    Args:
        score_fn, sde, x_p, c_p, c_id: as in :func:`~safcore.probe.runner.q_curve`.
        config: :class:`~safcore.probe.config.ProbeConfig`.
        progress: tqdm bars.

    Returns:
        :class:`~safcore.probe.results.ProbeResult`.
    """
    x_p = as_single_image(x_p)
    cfg = config
    model = as_generator(score_fn, sde, method=cfg.method, eps=cfg.eps)
    grid = cfg.grid  # high -> low
    tallies: list[QTally] = []
    primes: list[float | None] = []
    for run in range(cfg.repeats):
        rng = _generator_for(x_p, run_seed(cfg.seed, run))
        if cfg.search == "exhaustive":
            tally = fill_q_curve(
                QTally(cfg.n_examples), model, None, x_p, c_p, c_id, grid, cfg.M,
                method=cfg.method, steps_full=cfg.steps_full, eps=cfg.eps, batch_size=cfg.batch_size,
                batch_waste=cfg.batch_waste, generator=rng, progress=progress,
            )  # fmt: skip
            positive = [t for t in tally.k if tally.k[t] > 0]
            primes.append(max(positive) if positive else None)
        else:
            tally, t_run = _topdown(model, x_p, c_p, c_id, cfg, rng, progress)
            primes.append(t_run)
        tallies.append(tally)
    return probe_result(model, None, cfg, tallies, primes, search=cfg.search)


def probe_result(
    score_fn: ScoreFn,
    sde: SDE | None,
    config: ProbeConfig,
    run_tallies: Sequence[QTally],
    run_primes: Sequence[float | None],
    *,
    search: Search,
) -> ProbeResult:
    """The :class:`~safcore.probe.results.ProbeResult` of ``R`` runs (their tallies and t'), as Algorithm 1 with ``R·M`` samples per t:
    THE t' is the largest of the runs' t', the counts are pooled, the Eq. 9 indicator is computed on the pooled
    counts (``σ_t`` of the model's kernel, :meth:`~safcore.generators.base.Generator.marginal_std`).
    Shared by :func:`find_t_prime` and the split searches of :mod:`safcore.study.distributed`."""
    gen = as_generator(score_fn, sde, method=config.method, eps=config.eps)
    grid = config.grid
    tally = QTally.merge(list(run_tallies))
    found = [t for t in run_primes if t is not None]
    t_prime = max(found) if found else None
    curve = tally.curve(_example_ts(grid, list(tally.n), t_prime, config.n_example_t))
    k_grid = [tally.k.get(t, 0) for t in grid]
    n_grid = [tally.n.get(t, 0) for t in grid]
    return ProbeResult(
        curve=curve,
        M=config.M,
        t_prime=t_prime,
        k_at_t_prime=None if t_prime is None else int(tally.k[t_prime]),
        n_at_t_prime=None if t_prime is None else int(tally.n[t_prime]),
        t_prime_runs=tuple(run_primes),
        eq9_indicator=eq9_indicator(grid, k_grid, n_grid, gen.marginal_std),
        nfe_exhaustive=config.repeats * config.nfe_exhaustive,
        search=search,
        grid=grid,
        config=config,
    )


def _topdown(
    model: Generator,
    x_p: torch.Tensor,
    c_p: Classifier,
    c_id: Classifier,
    cfg: ProbeConfig,
    generator: torch.Generator,
    progress: bool,
) -> tuple[QTally, float | None]:
    """One run of :func:`topdown_search` with the probe's reverse samples as ``draw``."""
    grid = cfg.grid
    tally = QTally(cfg.n_examples)
    bar = progress_bar(total=len(grid), desc="top-down t'", unit="t", enabled=progress, leave=False)

    def draw(i: int, m: int) -> int:
        t = grid[i]
        found = tally_draws(tally, model, None, x_p, c_p, c_id, cfg, t, m, generator)
        if found or tally.n[t] >= cfg.M:
            bar.update(1)
            bar.set_postfix(t=f"{t:.3f}", positive=bool(tally.k[t]))
        return found

    hit = topdown_search(len(grid), cfg.M, draw, cfg.first_chunk)
    bar.close()
    return tally, (grid[hit] if hit is not None else None)
