"""What the field reports beside t': membership inference, extraction and nearest-neighbour memorization.

The peers the SAF audit is compared with (issue 14), one function per concept:

* **Membership inference on the score model** — a per-image statistic, lower → more likely a member:
  :func:`loss_attack` (the denoising / ε-prediction error, the training loss itself),
  :func:`secmi_t_error` (Duan et al. 2023, SecMI's t-error after deterministic inversion) and
  :func:`pia_error` (Kong et al. 2024, PIA's proximal initialisation). Each runs on anything
  :func:`as_eps_model` turns into ``ε̂(x, t)`` with its marginal ``(a_t, σ_t)``: a
  :class:`safcore.generators.score_model.ScoreModel` (or any object with ``eps`` and ``sde``), a score function with an
  ``sde`` (:class:`safcore.generators.known_answer.PointMixtureScore`, :class:`safcore.generators.sde.GaussianDataScore`; ε̂ =
  −σ_t · score) and a :class:`safcore.generators.diffusers_model.DiffusersModel` (its U-Net at timestep ``k(t)``).
* **The reference noise levels on each model's clock**: SecMI and PIA are defined at steps ``k`` of the
  DDPM they were published on (linear β from 10⁻⁴ to 0.02, T = 1000; :data:`SECMI_STEPS`,
  :data:`PIA_STEPS`). :func:`reference_times` maps each step to the model's own time with the same
  noise-to-signal ratio ``σ_t / a_t = sqrt((1 − ᾱ_k) / ᾱ_k)`` (:func:`time_for_ratio`), so the attacks
  see the published noise levels under the sub-VP SDE, the VP SDE and any diffusers schedule alike.
* **ROC numbers** (scikit-learn): :func:`roc_auc`, :func:`tpr_at_fpr` and :func:`roc_summary`, with
  Newcombe's (2006) score interval for the AUC (:func:`auc_interval`) and an exact Clopper–Pearson
  interval for the TPR at a threshold set on the non-members.
* **Extraction** (Carlini et al. 2023): :func:`carlini_extracted`, :func:`distinct_extracted` — which, and
  how many different, training images the samples copy.
* **Nearest-neighbour memorization**: Dar et al. 2024 (:func:`pearson_correlations`, :func:`dar_threshold`,
  :func:`dar_nearest`, :func:`dar_copies`) and Gu et al. 2023 (:func:`gu_ratio`, :func:`gu_memorized`,
  :func:`gu_memorization_ratio`).

Each attack's direction is fixed by its paper before any data is seen — a lower loss, t-error or PIA
distance means member (``member_if="lower"``, the default of every ROC function here) — and is never
chosen from the data: an AUC below 0.5 is reported as it is, not as ``1 − AUC``.

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
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.stats import binomtest, norm
from sklearn.metrics import roc_auc_score, roc_curve

from safcore.data.datasets import to_model_range
from safcore.measures.memorization import (  # the nearest-neighbour criteria live with the other copy rules
    carlini_nearest,
    dar_copies,
    dar_nearest,
    dar_threshold,
    gu_memorization_ratio,
    gu_memorized,
    gu_ratio,
    pearson_correlations,
)

__all__ = [
    "SDEEps",
    "ScoreEps",
    "DiffusersEps",
    "as_eps_model",
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
    "roc_auc",
    "tpr_at_fpr",
    "auc_interval",
    "tpr_interval",
    "ROCSummary",
    "roc_summary",
    "carlini_extracted",
    "distinct_extracted",
    "pearson_correlations",
    "dar_nearest",
    "dar_threshold",
    "dar_copies",
    "gu_ratio",
    "gu_memorized",
    "gu_memorization_ratio",
]

MemberIf = Literal["lower", "higher"]


# --------------------------------------------------------------------------------------------------
# ε̂(x, t) and (a_t, σ_t) from the models safcore knows
# --------------------------------------------------------------------------------------------------


def _time_vector(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


class SDEEps:
    """ε̂ of a model with ``eps(x, t)`` and an ``sde`` (a :class:`safcore.generators.score_model.ScoreModel`).

    ``eps(x (B, C, H, W) model range, t (B,))`` → (B, C, H, W); :meth:`coefficients` gives
    ``(a_t, σ_t)`` of ``sde.marginal_prob`` (score_sde's ``marginal_prob``: mean ``a_t x_0``, std ``σ_t``).
    ``t_min`` is the smallest time the model was trained at (:data:`SDE_T_MIN`).
    """

    t_min: float = 1e-5  # = SDE_T_MIN (score_sde's training ε, safcore.generators.train.TrainConfig.eps)

    def __init__(self, model) -> None:
        if not callable(getattr(model, "eps", None)) or getattr(model, "sde", None) is None:
            raise ValueError(f"{type(model).__name__} has no eps(x, t) and sde; SDEEps needs both")
        self.model = model
        self.sde = model.sde
        params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
        self.device = params[0].device if params else None
        self.dtype = params[0].dtype if params else None

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model.eps(x, _time_vector(t, x))

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a_t, σ_t)``, each (B,), for ``t`` (B,)."""
        return self.sde.marginal_prob(torch.ones_like(t), t)


class ScoreEps:
    """ε̂ of a score function: ``ε̂(x, t) = −σ_t · s(x, t)`` (score_sde ``get_score_fn`` read backwards).

    Args:
        score: ``s(x (B, C, H, W) model range, t (B,))`` → (B, C, H, W), e.g.
            :class:`safcore.generators.known_answer.PointMixtureScore` or :class:`safcore.generators.sde.GaussianDataScore`.
        sde: its forward SDE; default ``score.sde``.

    Computes in the dtype of the images it is given (float64 keeps the exact scores of point masses exact).
    ``t_min`` is the smallest time :func:`time_for_ratio` maps to (:data:`SDE_T_MIN`).
    """

    t_min: float = 1e-5  # = SDE_T_MIN

    def __init__(self, score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], sde=None) -> None:
        sde = sde if sde is not None else getattr(score, "sde", None)
        if sde is None or not callable(score):
            raise ValueError(f"{type(score).__name__} is not a score function with an sde; pass sde= explicitly")
        self.score = score
        self.sde = sde
        self.device = None
        self.dtype = None

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = _time_vector(t, x)
        _, sigma = self.coefficients(t)
        return -sigma.reshape(-1, *([1] * (x.ndim - 1))) * self.score(x, t)

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sde.marginal_prob(torch.ones_like(t), t)


class DiffusersEps:
    """ε̂ of a :class:`safcore.generators.diffusers_model.DiffusersModel`: its U-Net at the training timestep ``k(t)``.

    ``(a_t, σ_t) = (sqrt(ᾱ_k), sqrt(1 − ᾱ_k))`` (Ho et al. 2020, Eq. 4); an ``"sample"`` (x_0) or
    ``"v_prediction"`` network is turned into ε: ``ε = (x − a x̂_0) / σ``, ``ε = a v + σ x`` (Salimans &
    Ho 2022, with ``a² + σ² = 1``).
    """

    def __init__(self, model) -> None:
        for name in ("unet", "scheduler", "timestep"):
            if not hasattr(model, name):
                raise ValueError(f"{type(model).__name__} has no {name!r}; DiffusersEps needs a safcore DiffusersModel")
        self.model = model
        self.prediction_type = str(model.scheduler.config.prediction_type)
        if self.prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(f"prediction_type {self.prediction_type!r}; allowed: epsilon, sample, v_prediction")
        self.alphas_cumprod = model.scheduler.alphas_cumprod.double()
        self.device = model.device
        self.dtype = torch.float32

    def _k(self, t: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self.model.timestep(float(s)) for s in t.detach().cpu().tolist()], dtype=torch.long)

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        abar = self.alphas_cumprod[self._k(t)].to(t.device, t.dtype)
        return abar.sqrt(), (1.0 - abar).sqrt()

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = _time_vector(t, x)
        out = self.model.unet(x, self._k(t).to(x.device))
        out = (out.sample if hasattr(out, "sample") else out).to(x.dtype)
        if self.prediction_type == "epsilon":
            return out
        a, s = (c.reshape(-1, 1, 1, 1) for c in self.coefficients(t))
        if self.prediction_type == "sample":
            return (x - a * out) / s
        return a * out + s * x


EpsModel = SDEEps | ScoreEps | DiffusersEps


def as_eps_model(model) -> EpsModel:
    """The ``eps(x, t)`` / ``coefficients(t)`` view the attacks use, for any model safcore audits.

    Accepts an adapter (returned as is), a :class:`~safcore.generators.diffusers_model.DiffusersModel`, an object with
    ``eps`` and an ``sde`` (:class:`~safcore.generators.score_model.ScoreModel`), or a score function with an ``sde``
    (:class:`~safcore.generators.known_answer.PointMixtureScore`, :class:`~safcore.generators.sde.GaussianDataScore`).
    """
    if isinstance(model, (SDEEps, ScoreEps, DiffusersEps)):
        return model
    if hasattr(model, "scheduler") and hasattr(model, "unet") and hasattr(model, "timestep"):
        return DiffusersEps(model)
    if callable(getattr(model, "eps", None)) and getattr(model, "sde", None) is not None:
        return SDEEps(model)
    if callable(model) and getattr(model, "sde", None) is not None:
        return ScoreEps(model)
    raise ValueError(
        f"cannot attack a {type(model).__name__}; allowed: a ScoreModel (eps and sde), a DiffusersModel, "
        "or a score function with an sde (PointMixtureScore, GaussianDataScore)"
    )


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
#: The smallest time an SDE model is mapped to: score_sde's training ε (``t ~ U(ε, 1)``,
#: :class:`safcore.generators.train.TrainConfig` ``eps``); the model never saw a smaller t.
SDE_T_MIN: float = 1e-5


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

    * SDE models (:class:`SDEEps`, :class:`ScoreEps`; sub-VP and VP): the root of ``log(σ_t/a_t) =
      log(ratio)`` on ``[t_min, T]`` (``scipy.optimize.brentq``; ``σ/a`` rises monotonically in t for both
      SDEs). A ratio below that of ``t_min`` (:data:`SDE_T_MIN`) is clipped to ``t_min``, one above that
      of ``T = 1`` to ``T``, each with a ``UserWarning``: the sub-VP SDE's ``σ_t ≈ β_min t`` falls to 0
      faster than the VP's ``sqrt(β_min t)``, so a very small ratio may lie below what its trained times
      reach.
    * :class:`DiffusersEps`: the model's own training timestep ``k'`` whose ``sqrt((1 − ᾱ_k')/ᾱ_k')`` is
      closest to ``ratio`` in log scale, returned as ``t = (k' + 0.5)/T``, which the adapter maps back to
      exactly ``k'`` (``ceil(t·T) − 1``). A model trained on the reference schedule gets the reference's
      own steps back.

    Args:
        model: anything :func:`as_eps_model` accepts.
        ratio: ``σ/a > 0``.
    """
    eps_model = as_eps_model(model)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.floating)) or not (
        math.isfinite(ratio) and ratio > 0
    ):
        raise ValueError(f"ratio={ratio!r}; allowed: a finite noise-to-signal ratio σ/a > 0")
    target = math.log(float(ratio))
    if isinstance(eps_model, DiffusersEps):
        abar = eps_model.alphas_cumprod.double().cpu().numpy()
        with np.errstate(divide="ignore"):
            log_ratios = 0.5 * (np.log1p(-abar) - np.log(abar))
        k = int(np.argmin(np.abs(log_ratios - target)))
        t = (k + 0.5) / len(abar)
        if eps_model.model.timestep(t) != k:  # cannot happen for T ≤ 10⁵ (timestep rounds t to 6 decimals)
            raise ValueError(f"t={t!r} does not map back to timestep {k} of T={len(abar)}")
        return t

    def log_ratio(t: float) -> float:
        a, s = eps_model.coefficients(torch.tensor([t], dtype=torch.float64))
        return math.log(float(s[0])) - math.log(float(a[0]))

    lo, hi = float(eps_model.t_min), float(eps_model.sde.T)
    f_lo, f_hi = log_ratio(lo) - target, log_ratio(hi) - target
    if f_lo >= 0.0:
        if f_lo > 0.0:
            warnings.warn(f"σ/a = {ratio:.3g} lies below the model's at t_min = {lo:g} "
                          f"({math.exp(f_lo + target):.3g}); clipped to t_min", stacklevel=2)
        return lo
    if f_hi <= 0.0:
        if f_hi < 0.0:
            warnings.warn(f"σ/a = {ratio:.3g} lies above the model's at t = {hi:g} "
                          f"({math.exp(f_hi + target):.3g}); clipped to t = {hi:g}", stacklevel=2)
        return hi
    return float(brentq(lambda t: log_ratio(t) - target, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps))


def reference_times(model, steps: Sequence[int]) -> tuple[float, ...]:
    """The model's own times for the reference DDPM's ``steps``: :func:`time_for_ratio` of
    :func:`reference_ratio` (equal noise-to-signal ratio ``σ/a``), one per step.

    For the VP SDE (β from 0.1 to 20) step ``k`` lands near ``t = (k + 1)/1000``; for the sub-VP SDE
    step 0 lands at t ≈ 0.027, step 100 at t ≈ 0.18 and step 200 at t ≈ 0.26; for a diffusers model
    with the reference's schedule at step ``k`` itself.

    Args:
        model: anything :func:`as_eps_model` accepts.
        steps: reference steps, integers in ``[0, REFERENCE_T)``.
    """
    eps_model = as_eps_model(model)
    return tuple(time_for_ratio(eps_model, float(r)) for r in reference_ratio(steps))


def _prepare(model: EpsModel, images: torch.Tensor) -> torch.Tensor:
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W); got {tuple(images.shape)}")
    x = to_model_range(images)
    if model.dtype is not None:
        x = x.to(model.dtype)
    if model.device is not None:
        x = x.to(model.device)
    return x


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


def ddim_step(model: EpsModel, x: torch.Tensor, t: float, s: float) -> torch.Tensor:
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
        model: anything :func:`as_eps_model` accepts.
        images: (N, C, H, W) unit range.

    Returns:
        (N,) float64 on the CPU.
    """
    eps_model = as_eps_model(model)
    if isinstance(n_draws, bool) or not isinstance(n_draws, int) or n_draws < 1:
        raise ValueError(f"n_draws={n_draws!r}; allowed: a positive integer")
    t_lo, t_hi = (_check_time("t_range", t) for t in t_range)
    if not t_lo <= t_hi:
        raise ValueError(f"t_range={t_range!r}; allowed: (low, high) with low <= high in (0, 1]")
    x0 = _prepare(eps_model, images)
    generator = torch.Generator().manual_seed(int(seed))
    ts = t_lo + (t_hi - t_lo) * torch.rand(n_draws, generator=generator, dtype=torch.float64)
    noise = torch.randn((n_draws, *x0.shape[1:]), generator=generator, dtype=torch.float64).to(x0.device, x0.dtype)
    out = torch.zeros(len(x0), dtype=torch.float64)
    for start in range(0, len(x0), _check_batch(batch_size)):
        x = x0[start : start + batch_size]
        total = torch.zeros(len(x), dtype=torch.float64)
        for t, e in zip(ts.tolist(), noise):
            tt = torch.full((len(x),), t, dtype=x.dtype, device=x.device)
            a, s = eps_model.coefficients(tt)
            e = e.expand_as(x)
            x_t = _bcast(a, x) * x + _bcast(s, x) * e
            total += (eps_model.eps(x_t, tt) - e).flatten(1).pow(2).mean(1).double().cpu()
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
        model: anything :func:`as_eps_model` accepts.
        images: (N, C, H, W) unit range.
        t_sec, interval: reference DDPM steps; ``t_sec`` a multiple (≥ 2) of ``interval``, below
            :data:`REFERENCE_T`.
        times: instead of ``t_sec`` and ``interval``, this model's own times (at least 3, strictly
            increasing in (0, 1]): the first is the image's, the inversion runs over all but the last,
            the last is ``t_sec``.

    Returns:
        (N,) float64 on the CPU.
    """
    eps_model = as_eps_model(model)
    if times is None:
        t_sec, interval = _check_step("t_sec", t_sec), _check_step("interval", interval)
        if interval < 1 or t_sec % interval or t_sec < 2 * interval:
            raise ValueError(f"t_sec={t_sec!r} must be a multiple (>= 2) of interval={interval!r}")
        steps = tuple(range(0, t_sec + 1, interval))
        grid = reference_times(eps_model, steps)
        _distinct_times(steps, grid)
    else:
        grid = _check_times("times", times, "at least 3", lambda n: n >= 3)
    *inversion, t_end = grid
    x0 = _prepare(eps_model, images)
    out = torch.zeros(len(x0), dtype=torch.float64)
    for start in range(0, len(x0), _check_batch(batch_size)):
        x = x0[start : start + batch_size]
        for t, s in itertools.pairwise(inversion):
            x = ddim_step(eps_model, x, t, s)
        forward = ddim_step(eps_model, x, inversion[-1], t_end)
        back = ddim_step(eps_model, forward, t_end, inversion[-1])
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
        model: anything :func:`as_eps_model` accepts.
        images: (N, C, H, W) unit range.
        step: the reference DDPM step of the attack, an integer in ``[1, REFERENCE_T)``.
        times: instead of ``step``, this model's own ``(t_0, t)``, ``0 < t_0 < t ≤ 1``.
        p: the exponent (the reference's ``lp``); the ranking is that of the ℓp norm.

    Returns:
        (N,) float64 on the CPU.
    """
    eps_model = as_eps_model(model)
    if times is None:
        step = _check_step("step", step)
        if step < 1:
            raise ValueError(f"step={step!r}; allowed: a reference DDPM step in [1, {REFERENCE_T - 1}]")
        t_zero, t = reference_times(eps_model, (0, step))
        _distinct_times((0, step), (t_zero, t))
    else:
        t_zero, t = _check_times("times", times, "2", lambda n: n == 2)
    if not p > 0:
        raise ValueError(f"p={p!r}; allowed: p > 0")
    x0 = _prepare(eps_model, images)
    out = torch.zeros(len(x0), dtype=torch.float64)
    for start in range(0, len(x0), _check_batch(batch_size)):
        x = x0[start : start + batch_size]
        t0 = torch.full((len(x),), t_zero, dtype=x.dtype, device=x.device)
        tt = torch.full_like(t0, t)
        eps0 = eps_model.eps(x, t0).to(x.dtype)
        a, s = eps_model.coefficients(tt)
        x_t = _bcast(a, x) * x + _bcast(s, x) * eps0
        diff = (eps_model.eps(x_t, tt) - eps0).flatten(1).double()
        out[start : start + len(x)] = diff.abs().pow(p).sum(1).cpu()
    return out


# --------------------------------------------------------------------------------------------------
# ROC numbers
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# extraction (Carlini et al. 2023)
# --------------------------------------------------------------------------------------------------


def carlini_extracted(samples: torch.Tensor, train: torch.Tensor, k: int = 50, threshold: float = 0.5) -> torch.Tensor:
    """The training images that at least one sample copies (Carlini et al. 2023), sorted indices into ``train``.

    A sample is a copy of its nearest training image when ``ℓ2(sample, nearest) < threshold × mean ℓ2 to
    the next k`` (:func:`safcore.measures.memorization.carlini_nearest`); Carlini et al. count an image extracted
    once however many samples copy it.

    Args:
        samples: (B, C, H, W); train: (N, C, H, W), N ≥ 2.

    Returns:
        (E,) long, E ≤ min(B, N).
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold={threshold!r} must be in (0, 1]")
    nearest, ratio = carlini_nearest(samples, train, k)
    return torch.unique(nearest[ratio < threshold])


def distinct_extracted(samples: torch.Tensor, train: torch.Tensor, k: int = 50, threshold: float = 0.5) -> int:
    """How many DIFFERENT training images the samples copy (Carlini et al. 2023's extraction count)."""
    return int(carlini_extracted(samples, train, k, threshold).numel())


# --------------------------------------------------------------------------------------------------
# one model, every peer metric
# --------------------------------------------------------------------------------------------------


def peer_metrics(
    model,
    members: torch.Tensor,
    nonmembers: torch.Tensor,
    samples: torch.Tensor,
    validation: torch.Tensor,
    *,
    n_draws: int = 8,
    seed: int = 0,
) -> dict:
    """The field's metrics on one model, as plain values (what ``Study.peers`` stores).

    Membership inference on the model (members = its training set, non-members = held-out images of
    the same split family): the loss attack (``n_draws`` draws from ``seed``), SecMI's t-error and PIA at
    the reference's steps (:data:`SECMI_STEPS`, :data:`PIA_STEPS` on the model's clock), each as a
    :class:`ROCSummary` with lower → member fixed (AUC with Newcombe's interval, TPR at 1 % / 0.1 % FPR
    with a Clopper–Pearson interval where the non-member count resolves them).
    Memorization in its samples against the members: Carlini et al.'s copies and distinct images
    extracted, Dar et al.'s correlation copies (threshold from ``validation``), Gu et al.'s ratio.

    Args:
        model: anything :func:`as_eps_model` accepts.
        members, nonmembers, samples, validation: (N, C, H, W) in [0, 1].
    """
    from safcore.measures.memorization import carlini_copies

    out: dict = {"n_members": int(members.shape[0]), "n_nonmembers": int(nonmembers.shape[0]), "n_samples": int(samples.shape[0])}
    attacks = {
        "loss": lambda x: loss_attack(model, x, n_draws=n_draws, seed=seed),
        "secmi": lambda x: secmi_t_error(model, x),
        "pia": lambda x: pia_error(model, x),
    }
    for name, attack in attacks.items():
        summary = roc_summary(attack(members), attack(nonmembers), member_if="lower")
        out[f"mia_{name}"] = summary.to_dict()
    copies = carlini_copies(samples, members)
    out["carlini_copies"] = int(copies.sum())
    out["distinct_extracted"] = distinct_extracted(samples, members)
    out["dar_copies"] = int(dar_copies(samples, members, validation).sum())
    out["dar_threshold"] = dar_threshold(members, validation)
    out["gu_memorization_ratio"] = gu_memorization_ratio(samples, members)
    return out
