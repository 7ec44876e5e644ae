"""Membership inference on a diffusion model: a per-image statistic, lower → more likely a member.

Three attacks the SAF audit is compared with (issue 14), each on any model
:func:`safcore.generators.loader.as_generator` accepts (it uses the generator's ``ε̂(x, t)``
:meth:`~safcore.generators.base.Generator.eps` and its kernel ``(a_t, σ_t)``
:meth:`~safcore.generators.base.Generator.coefficients`): a :class:`safcore.generators.score_model.ScoreModel`,
a score function with an ``sde`` (:class:`safcore.generators.known_answer.PointMixtureScore`,
:class:`safcore.generators.sde.GaussianDataScore`; ε̂ = −σ_t · score) and a
:class:`safcore.generators.diffusers_model.DiffusersModel` (its U-Net at timestep ``k(t)``):

* :func:`loss_attack` — the denoising / ε-prediction error, the training loss itself;
* :func:`secmi_t_error` — Duan et al. 2023, SecMI's t-error after deterministic inversion;
* :func:`pia_error` — Kong et al. 2024, PIA's proximal initialisation.

**The reference noise levels on each model's clock**: SecMI and PIA are defined at steps ``k`` of the
DDPM they were published on (linear β from 10⁻⁴ to 0.02, T = 1000; :data:`SECMI_STEPS`,
:data:`PIA_STEPS`). :func:`reference_times` maps each step to the model's own time with the same
noise-to-signal ratio ``σ_t / a_t = sqrt((1 − ᾱ_k) / ᾱ_k)`` (:func:`time_for_ratio`), so the attacks
see the published noise levels under the sub-VP SDE, the VP SDE and any diffusers schedule alike.

Each attack's direction is fixed by its paper before any data is seen (lower → member; the ROC numbers
of :mod:`safcore.measures.roc` take it as ``member_if="lower"``) and is never chosen from the data.

Images are unit-range float tensors ``(N, C, H, W)``; the attacks move them to the model range
``[-1, 1]`` themselves. Times ``t`` are in ``(0, 1]``, the fraction of the forward process (a
:class:`~safcore.generators.diffusers_model.DiffusersModel` maps ``t`` to its training timestep ``ceil(t·T) − 1``).

A DDIM step (Song et al. 2021, Eq. 12 with η = 0) is written for any marginal ``x_t = a_t x_0 + σ_t ε``:
``x_s = a_s x̂_0 + σ_s ε̂`` with ``x̂_0 = (x_t − σ_t ε̂) / a_t``. In ``y = x / a``, ``p = σ / a`` it is the
Euler step ``y_s = y_t + ε̂ (p_s − p_t)`` of the probability-flow ODE ``dy = ε̂ dp`` (Song et al. 2020,
Eq. 13), which holds for the VP and the sub-VP SDE alike (for sub-VP ``g² = β(1 − a⁴) = d(σ²)/dt −
2 (ȧ/a) σ²``); PIA's code takes the same step in the same variables (``get_y``, ``get_p``). In ``(y, p)`` the step is
the same for every marginal, so matching ``p`` to the reference's steps puts a model's DDIM steps at the
reference's noise levels.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from safcore.data.datasets import to_model_range
from safcore.generators.base import SDE_T_MIN, Generator
from safcore.generators.loader import as_generator

__all__ = [
    "REFERENCE_T",
    "REFERENCE_BETAS",
    "SECMI_STEPS",
    "PIA_STEPS",
    "SDE_T_MIN",
    "reference_ratio",
    "time_for_ratio",
    "reference_times",
    "ddim_step",
    "loss_attack",
    "secmi_t_error",
    "pia_error",
]


def _attacked(model) -> Generator:
    """The model under attack as a :class:`~safcore.generators.base.Generator` (:func:`as_generator`).

    Raises:
        ValueError: ``cannot attack a <type>; allowed: …`` for anything that is not a model safcore audits.
    """
    try:
        return as_generator(model)
    except ValueError:
        raise ValueError(
            f"cannot attack a {type(model).__name__}; allowed: a ScoreModel, a DiffusersModel, a Generator, "
            "or a score function with an sde (PointMixtureScore, GaussianDataScore)"
        ) from None


# --------------------------------------------------------------------------------------------------
# the reference implementations' noise levels on each model's own clock
# --------------------------------------------------------------------------------------------------

#: The DDPM that SecMI and PIA were published on (Ho et al. 2020): T steps, β linear from 10⁻⁴ to 0.02
#: (jinhaoduan/SecMI ``mia_evals/secmia.py`` lines 25–27 with flags ``beta_1``, ``beta_T``, ``T``;
#: kong13661/PIA ``DDPM/components.py`` line 17, ``noise_level = cumprod(1 − betas)``).
REFERENCE_T: int = 1000
REFERENCE_BETAS: tuple[float, float] = (1e-4, 0.02)
#: SecMI's steps (``secmi_attack(timestep=10, t_sec=100)``, secmia.py line 239): the image is step 0,
#: inverted over 0, 10, …, 90, then one step to ``t_sec = 100`` and back.
SECMI_STEPS: tuple[int, ...] = tuple(range(0, 101, 10))
#: PIA's steps: ε at step 0 (components.py line 124), the attack at step 200 (Kong et al. 2024 report
#: t = 200 for DDPM).
PIA_STEPS: tuple[int, int] = (0, 200)


def _check_step(name: str, k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= int(k) < REFERENCE_T:
        raise ValueError(f"{name}={k!r}; allowed: a reference DDPM step, an integer in [0, {REFERENCE_T - 1}]")
    return int(k)


def reference_ratio(steps: Sequence[int]) -> np.ndarray:
    """The reference DDPM's noise-to-signal ratio at its steps: ``σ/a = sqrt((1 − ᾱ_k) / ᾱ_k)``, (K,) float64.

    ``ᾱ_k = Π_{i ≤ k} (1 − β_i)`` (Ho et al. 2020, Eq. 4; steps counted from 0 as both references index
    their ``cumprod``), β linear from ``REFERENCE_BETAS[0]`` to ``REFERENCE_BETAS[1]`` over
    :data:`REFERENCE_T` steps; computed as ``−expm1(Σ log1p(−β_i))`` so that ``1 − ᾱ_0 = β_0`` keeps its
    digits.
    """
    ks = np.array([_check_step("step", k) for k in steps], dtype=np.int64)
    betas = np.linspace(REFERENCE_BETAS[0], REFERENCE_BETAS[1], REFERENCE_T, dtype=np.float64)
    log_abar = np.cumsum(np.log1p(-betas))[ks]
    return np.sqrt(-np.expm1(log_abar) / np.exp(log_abar))


def time_for_ratio(model, ratio: float) -> float:
    """The model's own time ``t`` whose noise-to-signal ratio ``σ_t / a_t`` is ``ratio``.

    * SDE models (an :class:`~safcore.generators.base.SDEGenerator`; sub-VP and VP): the root of
      ``log(σ_t/a_t) = log(ratio)`` on ``[t_min, T]`` (``scipy.optimize.brentq``; ``σ/a`` rises monotonically in t for both
      SDEs). A ratio below that of ``t_min`` (:data:`SDE_T_MIN`) is clipped to ``t_min``, one above that
      of ``T = 1`` to ``T``, each with a ``UserWarning``: the sub-VP SDE's ``σ_t ≈ β_min t`` falls to 0
      faster than the VP's ``sqrt(β_min t)``, so a very small ratio may lie below what its trained times
      reach.
    * a :class:`~safcore.generators.diffusers_model.DiffusersModel`: its own training timestep ``k'`` whose
      ``sqrt((1 − ᾱ_k')/ᾱ_k')`` is closest to ``ratio`` in log scale, returned as ``t = (k' + 0.5)/T``, which
      :meth:`~safcore.generators.diffusers_model.DiffusersModel.timestep` maps back to
      exactly ``k'`` (``ceil(t·T) − 1``). A model trained on the reference schedule gets the reference's
      own steps back.

    Args:
        model: anything :func:`~safcore.generators.loader.as_generator` accepts.
        ratio: ``σ/a > 0``.
    """
    gen = _attacked(model)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.floating)) or not (
        math.isfinite(ratio) and ratio > 0
    ):
        raise ValueError(f"ratio={ratio!r}; allowed: a finite noise-to-signal ratio σ/a > 0")
    return gen.time_for_ratio(float(ratio))


def reference_times(model, steps: Sequence[int]) -> tuple[float, ...]:
    """The model's own times for the reference DDPM's ``steps``: :func:`time_for_ratio` of
    :func:`reference_ratio` (equal noise-to-signal ratio ``σ/a``), one per step.

    For the VP SDE (β from 0.1 to 20) step ``k`` lands near ``t = (k + 1)/1000``; for the sub-VP SDE
    step 0 lands at t ≈ 0.027, step 100 at t ≈ 0.18 and step 200 at t ≈ 0.26; for a diffusers model
    with the reference's schedule at step ``k`` itself.

    Args:
        model: anything :func:`~safcore.generators.loader.as_generator` accepts.
        steps: reference steps, integers in ``[0, REFERENCE_T)``.
    """
    gen = _attacked(model)
    return tuple(time_for_ratio(gen, float(r)) for r in reference_ratio(steps))


def _prepare(model: Generator, images: torch.Tensor) -> torch.Tensor:
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W); got {tuple(images.shape)}")
    x = to_model_range(images)
    if model.dtype is not None:
        x = x.to(model.dtype)
    if model.device is not None:
        x = x.to(model.device)
    return model.encode(x)  # the attacks run where the diffusion runs: a latent model's latents


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def _check_time(name: str, t: float) -> float:
    if not 0.0 < float(t) <= 1.0:
        raise ValueError(f"{name}={t!r}; allowed: a time in (0, 1]")
    return float(t)


def _check_batch(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; allowed: a positive integer")
    return batch_size


def ddim_step(model: Generator, x: torch.Tensor, t: float, s: float) -> torch.Tensor:
    """One deterministic DDIM step from time ``t`` to ``s`` (either direction; Song et al. 2021, Eq. 12, η = 0).

    ``x̂_0 = (x − σ_t ε̂(x, t)) / a_t``, ``x_s = a_s x̂_0 + σ_s ε̂(x, t)`` — SecMI's ``ddim_singlestep``
    (jinhaoduan/SecMI ``mia_evals/secmia.py`` lines 18–45) with ``a = sqrt(ᾱ)``, ``σ = sqrt(1 − ᾱ)``.

    Args:
        x: (B, C, H, W) model range. Returns the same shape.
    """
    tt = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
    ss = torch.full_like(tt, float(s))
    eps = model.eps(x, tt).to(x.dtype)
    a_t, s_t = model.coefficients(tt)
    a_s, s_s = model.coefficients(ss)
    x0 = (x - _bcast(s_t, x) * eps) / _bcast(a_t, x)
    return _bcast(a_s, x) * x0 + _bcast(s_s, x) * eps


# --------------------------------------------------------------------------------------------------
# membership inference statistics (lower → more likely a member)
# --------------------------------------------------------------------------------------------------


@torch.inference_mode()
def loss_attack(
    model,
    images: torch.Tensor,
    *,
    n_draws: int = 8,
    t_range: tuple[float, float] = (0.01, 0.3),
    seed: int = 0,
    batch_size: int = 64,
) -> torch.Tensor:
    """The loss (denoising-error) attack: each image's ε-prediction error, lower → more likely a member.

    ``L(x_0) = (1/n) Σ_j mean_pixels (ε̂(a_{t_j} x_0 + σ_{t_j} ε_j, t_j) − ε_j)²`` — the training
    objective (Ho et al. 2020, Eq. 14; Song et al. 2020, Eq. 7 in ε form) at ``n_draws`` fixed ``(t_j,
    ε_j)``, the same for every image (drawn from ``seed``: ``t_j ~ U(t_range)``, ``ε_j ~ N(0, I)``). The
    baseline of Matsumoto et al. 2023 and Carlini et al. 2023; PIA's ``NaiveAttacker``
    (kong13661/PIA ``DDPM/components.py`` lines 173–193: random ε, error at steps 10 … 300 of 1000)
    is this statistic at one t. ``t_range`` is in the model's own time: the default (0.01, 0.3) is
    about those steps under the VP SDE only (:func:`reference_times` maps steps onto other clocks).
    Members are the low losses, fixed before the data.

    Args:
        model: anything :func:`~safcore.generators.loader.as_generator` accepts.
        images: (N, C, H, W) unit range.

    Returns:
        (N,) float64 on the CPU.
    """
    gen = _attacked(model)
    if isinstance(n_draws, bool) or not isinstance(n_draws, int) or n_draws < 1:
        raise ValueError(f"n_draws={n_draws!r}; allowed: a positive integer")
    t_lo, t_hi = (_check_time("t_range", t) for t in t_range)
    if not t_lo <= t_hi:
        raise ValueError(f"t_range={t_range!r}; allowed: (low, high) with low <= high in (0, 1]")
    x0 = _prepare(gen, images)
    generator = torch.Generator().manual_seed(int(seed))
    ts = t_lo + (t_hi - t_lo) * torch.rand(n_draws, generator=generator, dtype=torch.float64)
    noise = torch.randn((n_draws, *x0.shape[1:]), generator=generator, dtype=torch.float64).to(x0.device, x0.dtype)
    out = torch.zeros(len(x0), dtype=torch.float64)
    for start in range(0, len(x0), _check_batch(batch_size)):
        x = x0[start : start + batch_size]
        total = torch.zeros(len(x), dtype=torch.float64)
        for t, e in zip(ts.tolist(), noise):
            tt = torch.full((len(x),), t, dtype=x.dtype, device=x.device)
            a, s = gen.coefficients(tt)
            e = e.expand_as(x)
            x_t = _bcast(a, x) * x + _bcast(s, x) * e
            total += (gen.eps(x_t, tt) - e).flatten(1).pow(2).mean(1).double().cpu()
        out[start : start + len(x)] = total / n_draws
    return out


def _check_times(name: str, times: Sequence[float], count: str, ok: Callable[[int], bool]) -> list[float]:
    ts = [float(t) for t in times]
    if not ok(len(ts)) or not all(0.0 < t <= 1.0 for t in ts) or any(s <= t for t, s in itertools.pairwise(ts)):
        raise ValueError(f"{name}={tuple(times)!r}; allowed: {count} strictly increasing times in (0, 1]")
    return ts


def _distinct_times(steps: Sequence[int], times: tuple[float, ...]) -> None:
    if any(s <= t for t, s in itertools.pairwise(times)):
        raise ValueError(
            f"reference steps {tuple(steps)} map to times {times} on this model, which do not all differ "
            "(its timesteps or trained times cannot resolve them); pass times= explicitly"
        )


@torch.inference_mode()
def secmi_t_error(
    model,
    images: torch.Tensor,
    *,
    t_sec: int = 100,
    interval: int = 10,
    times: Sequence[float] | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """SecMI's t-error (Duan et al. 2023, SecMI_stat), lower → more likely a member.

    As jinhaoduan/SecMI ``mia_evals/secmia.py`` ``get_intermediate_results`` (lines 163–185): the image
    ``x_0`` (model range) is taken as ``x`` at step 0 and inverted deterministically (DDIM steps,
    :func:`ddim_step`, which is ``ddim_singlestep``, lines 18–45) over steps ``0, interval, …, t_sec −
    interval``; from there one deterministic step to ``t_sec`` and one back give ``x̃``; the statistic is
    ``‖x_{t_sec − interval} − x̃‖²`` summed over pixels (``naive_statistic_attack``, lines 268–290). The
    defaults are the reference's ``t_sec = 100``, ``timestep = 10`` (line 239; :data:`SECMI_STEPS`),
    steps of the reference DDPM that :func:`reference_times` maps onto this model's clock by equal
    ``σ/a``. Members are the LOW t-errors, fixed by the paper (the reference's ``roc`` counts ``score ≤
    threshold`` as member, line 335); nothing here flips it after seeing the data.

    Args:
        model: anything :func:`~safcore.generators.loader.as_generator` accepts.
        images: (N, C, H, W) unit range.
        t_sec, interval: reference DDPM steps; ``t_sec`` a multiple (≥ 2) of ``interval``, below
            :data:`REFERENCE_T`.
        times: instead of ``t_sec`` and ``interval``, this model's own times (at least 3, strictly
            increasing in (0, 1]): the first is the image's, the inversion runs over all but the last,
            the last is ``t_sec``.

    Returns:
        (N,) float64 on the CPU.
    """
    gen = _attacked(model)
    if times is None:
        t_sec, interval = _check_step("t_sec", t_sec), _check_step("interval", interval)
        if interval < 1 or t_sec % interval or t_sec < 2 * interval:
            raise ValueError(f"t_sec={t_sec!r} must be a multiple (>= 2) of interval={interval!r}")
        steps = tuple(range(0, t_sec + 1, interval))
        grid = reference_times(gen, steps)
        _distinct_times(steps, grid)
    else:
        grid = _check_times("times", times, "at least 3", lambda n: n >= 3)
    *inversion, t_end = grid
    x0 = _prepare(gen, images)
    out = torch.zeros(len(x0), dtype=torch.float64)
    for start in range(0, len(x0), _check_batch(batch_size)):
        x = x0[start : start + batch_size]
        for t, s in itertools.pairwise(inversion):
            x = ddim_step(gen, x, t, s)
        forward = ddim_step(gen, x, inversion[-1], t_end)
        back = ddim_step(gen, forward, t_end, inversion[-1])
        out[start : start + len(x)] = (x - back).flatten(1).double().pow(2).sum(1).cpu()
    return out


@torch.inference_mode()
def pia_error(
    model,
    images: torch.Tensor,
    *,
    step: int = 200,
    times: tuple[float, float] | None = None,
    p: float = 4.0,
    batch_size: int = 64,
) -> torch.Tensor:
    """PIA (Kong et al. 2024, proximal initialisation), lower → more likely a member.

    ``ε_0 = ε̂(x_0, t_0)``, ``x_t = a_t x_0 + σ_t ε_0``, statistic ``Σ_pixels |ε̂(x_t, t) − ε_0|^p`` — as
    kong13661/PIA ``DDPM/components.py`` class ``PIA`` (lines 113–139: ``eps_getter(x0, …, 0)`` at step 0,
    ``get_xt``, ``distance`` with ``lp = 4``), with ``t_0`` and ``t`` the reference DDPM's step 0 and
    ``step`` mapped onto this model's clock by equal ``σ/a`` (:func:`reference_times`). The reference
    evaluates steps 10 … 300 and reports the best; the paper reports t = 200 for DDPM, fixed here
    (:data:`PIA_STEPS`) rather than chosen from the data. Members are the LOW distances, fixed by the paper
    (the reference labels members 0 for a score that rises with the distance, ``DDPM/attack.py`` line
    119); nothing here flips it after seeing the data.

    Args:
        model: anything :func:`~safcore.generators.loader.as_generator` accepts.
        images: (N, C, H, W) unit range.
        step: the reference DDPM step of the attack, an integer in ``[1, REFERENCE_T)``.
        times: instead of ``step``, this model's own ``(t_0, t)``, ``0 < t_0 < t ≤ 1``.
        p: the exponent (the reference's ``lp``); the ranking is that of the ℓp norm.

    Returns:
        (N,) float64 on the CPU.
    """
    gen = _attacked(model)
    if times is None:
        step = _check_step("step", step)
        if step < 1:
            raise ValueError(f"step={step!r}; allowed: a reference DDPM step in [1, {REFERENCE_T - 1}]")
        t_zero, t = reference_times(gen, (0, step))
        _distinct_times((0, step), (t_zero, t))
    else:
        t_zero, t = _check_times("times", times, "2", lambda n: n == 2)
    if not p > 0:
        raise ValueError(f"p={p!r}; allowed: p > 0")
    x0 = _prepare(gen, images)
    out = torch.zeros(len(x0), dtype=torch.float64)
    for start in range(0, len(x0), _check_batch(batch_size)):
        x = x0[start : start + batch_size]
        t0 = torch.full((len(x),), t_zero, dtype=x.dtype, device=x.device)
        tt = torch.full_like(t0, t)
        eps0 = gen.eps(x, t0).to(x.dtype)
        a, s = gen.coefficients(tt)
        x_t = _bcast(a, x) * x + _bcast(s, x) * eps0
        diff = (gen.eps(x_t, tt) - eps0).flatten(1).double()
        out[start : start + len(x)] = diff.abs().pow(p).sum(1).cpu()
    return out
