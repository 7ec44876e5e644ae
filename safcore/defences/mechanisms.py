"""Per-image output perturbation: clip one latent vector, add calibrated noise (local differential privacy).

Each released image gets its own mechanism run on its own latent ``z ∈ R^D`` (one row of a batch):

* clip **each row** to norm ``‖z‖_p ≤ C`` (``p = 1`` for Laplace, ``p = 2`` for Gaussian). Replacing the
  image by any other moves the clipped latent by at most ``2C`` in that norm — the sensitivity ``Δ = 2C``
  of the (replace-one, local) neighbouring relation. The public CADP code (Cardio-AI/CADP,
  ``latent_dp.norm_clip``) divides a whole batch by one matrix norm, which bounds no single image's
  latent; here no row's clipping depends on another row.
* **Laplace** (Dwork et al. 2006): i.i.d. ``Lap(b)`` per coordinate with ``b = Δ₁ / ε = 2C / ε`` gives
  pure ε-DP for the released row.
* **Gaussian**: i.i.d. ``N(0, σ²)`` with σ from the *analytic* Gaussian mechanism (Balle & Wang 2018,
  Theorem 8): the smallest σ with ``Φ(Δ/(2σ) − εσ/Δ) − e^ε Φ(−Δ/(2σ) − εσ/Δ) ≤ δ``, ``Δ = Δ₂ = 2C``;
  valid for every ε > 0 (the classical ``σ = Δ √(2 ln(1.25/δ)) / ε`` only for ε < 1, and larger).

``ε = ∞`` means no mechanism: no clipping, no noise.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from scipy import optimize, special

__all__ = ["Mechanism", "check_epsilon", "check_delta", "check_bound", "clip_per_image", "laplace_scale",
           "gaussian_sigma", "classical_gaussian_sigma", "perturb"]

Mechanism = Literal["laplace", "gaussian"]
MECHANISMS = ("laplace", "gaussian")


def check_epsilon(epsilon: float, where: str = "epsilon") -> float:
    """``epsilon`` as a float: a number > 0 (``math.inf`` allowed: no mechanism); NaN, ≤ 0 and non-numbers raise."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or math.isnan(epsilon) or epsilon <= 0:
        raise ValueError(f"{where} = {epsilon!r}; allowed: a number > 0, or math.inf for no noise")
    return float(epsilon)


def check_delta(delta: float, where: str = "delta") -> float:
    """``delta`` as a float in the open interval (0, 1)."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or math.isnan(delta) or not 0 < delta < 1:
        raise ValueError(f"{where} = {delta!r}; allowed: a number in (0, 1), e.g. 1e-5")
    return float(delta)


def check_bound(bound: float, where: str = "clip") -> float:
    """A clipping norm ``C``: a finite number > 0."""
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound) or bound <= 0:
        raise ValueError(f"{where} = {bound!r}; allowed: a finite number > 0")
    return float(bound)


def clip_per_image(z: torch.Tensor, bound: float, norm: Literal[1, 2]) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale each row of ``z`` (B, D) to ``‖z_i‖_norm ≤ bound``; rows inside the ball are unchanged.

    Returns:
        ``(clipped (B, D), was_clipped (B,) bool)``.
    """
    if norm not in (1, 2):
        raise ValueError(f"norm = {norm!r}; allowed: 1 (Laplace) or 2 (Gaussian)")
    bound = check_bound(bound)
    if z.ndim != 2:
        raise ValueError(f"latents must have shape (B, D); got {tuple(z.shape)}")
    norms = torch.linalg.vector_norm(z, ord=norm, dim=1)
    factor = torch.clamp(bound / norms.clamp_min(torch.finfo(z.dtype).tiny), max=1.0)
    return z * factor[:, None], norms > bound


def laplace_scale(epsilon: float, bound: float) -> float:
    """Laplace scale ``b = 2C / ε`` for ε-DP of one clipped row (ℓ1 sensitivity of replacement = 2C)."""
    return 2.0 * check_bound(bound) / check_epsilon(epsilon)


def _analytic_delta(sigma: float, epsilon: float, sensitivity: float) -> float:
    """δ(σ) of the Gaussian mechanism (Balle & Wang 2018, Theorem 8), computed in log space."""
    a = sensitivity / (2.0 * sigma)
    b = epsilon * sigma / sensitivity
    first = special.ndtr(a - b)
    second = math.exp(epsilon + special.log_ndtr(-a - b))
    return first - second


def gaussian_sigma(epsilon: float, delta: float, bound: float) -> float:
    """σ of the analytic Gaussian mechanism for (ε, δ)-DP of one row clipped to ``‖·‖₂ ≤ bound`` (Δ₂ = 2C).

    The smallest σ with ``δ(σ) ≤ delta`` (Balle & Wang 2018, Theorem 8), found by root finding on
    ``log σ``; δ(σ) decreases in σ."""
    epsilon, delta = check_epsilon(epsilon), check_delta(delta)
    if math.isinf(epsilon):
        raise ValueError("epsilon = inf needs no noise; gaussian_sigma is for finite epsilon")
    sensitivity = 2.0 * check_bound(bound)

    def excess(log_sigma: float) -> float:
        return _analytic_delta(math.exp(log_sigma), epsilon, sensitivity) - delta

    lo, hi = math.log(sensitivity) - 30.0, math.log(sensitivity) + 30.0
    return math.exp(optimize.brentq(excess, lo, hi, xtol=1e-12, rtol=1e-12, maxiter=500))


def classical_gaussian_sigma(epsilon: float, delta: float, bound: float) -> float:
    """The classical calibration ``σ = Δ₂ √(2 ln(1.25/δ)) / ε`` (Dwork & Roth 2014, Thm A.1; ε < 1 only),
    with Δ₂ = 2C — what the public CADP code uses (with Δ = C). For comparison only."""
    epsilon, delta = check_epsilon(epsilon), check_delta(delta)
    if epsilon >= 1:
        raise ValueError(f"epsilon = {epsilon!r}: the classical Gaussian calibration holds only for epsilon < 1")
    return 2.0 * check_bound(bound) * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon


def perturb(z: torch.Tensor, *, epsilon: float, mechanism: Mechanism, bound: float, delta: float | None = None,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Clip every row of ``z`` (B, D) and add the mechanism's noise; ``ε = ∞`` returns ``z`` unchanged.

    Noise row i depends only on the generator's state and i, never on the other rows' values.

    Returns:
        ``(z̃ (B, D), was_clipped (B,), scale)``: ``scale`` is Laplace's b or Gaussian's σ (0 for ε = ∞).
    """
    epsilon = check_epsilon(epsilon)
    if mechanism not in MECHANISMS:
        raise ValueError(f"mechanism = {mechanism!r}; allowed: {', '.join(MECHANISMS)}")
    if math.isinf(epsilon):
        return z.clone(), torch.zeros(z.shape[0], dtype=torch.bool, device=z.device), 0.0
    if mechanism == "laplace":
        clipped, was = clip_per_image(z, bound, 1)
        scale = laplace_scale(epsilon, bound)
        # inverse CDF from one uniform per coordinate: Lap(b) = −b·sign(u)·log(1 − 2|u|), u ~ U(−½, ½)
        u = torch.rand(z.shape, generator=generator, dtype=torch.float64).to(z.device) - 0.5
        noise = -scale * torch.sign(u) * torch.log1p(-2.0 * u.abs())
    else:
        if delta is None:
            raise ValueError("the Gaussian mechanism needs delta in (0, 1)")
        clipped, was = clip_per_image(z, bound, 2)
        scale = gaussian_sigma(epsilon, delta, bound)
        noise = scale * torch.randn(z.shape, generator=generator, dtype=torch.float64).to(z.device)
    return clipped + noise.to(z.dtype), was, scale
