"""Forward SDEs (sub-VP, VP), their reverse-time SDE / probability-flow ODE, and an analytic score.

Follows Song et al. 2020 ("Score-based generative modeling through SDEs", score_sde_pytorch
``sde_lib.py``). Equation numbers "Song Eq. N" refer to that paper; "paper Eq. N" to
Dombrowski et al. 2023. All tensors live in the model range [-1, 1]; ``t`` is a tensor of shape
``(B,)`` in ``[0, T]`` with ``T = 1``.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = [
    "SDE",
    "ReverseSDE",
    "SubVPSDE",
    "VPSDE",
    "GaussianDataScore",
    "get_sde",
    "SDE_NAMES",
]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SDE_NAMES: tuple[str, ...] = ("subvp", "vp")


def _bcast(v: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample quantity of shape ``(B,)`` (or a scalar) against ``x`` (B, ...)."""
    v = torch.as_tensor(v, dtype=x.dtype, device=x.device)
    if v.ndim == 0:
        return v
    return v.reshape(v.shape[0], *([1] * (x.ndim - 1)))


class SDE(abc.ABC):
    """A forward SDE ``dx = f(x, t) dt + g(t) dw`` (Song Eq. 5 / paper Eq. 2) on ``t in [0, T]``."""

    @property
    def T(self) -> float:
        """End time of the forward process."""
        return 1.0

    @abc.abstractmethod
    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift ``f(x, t)`` (shape of ``x``) and diffusion ``g(t)`` (shape ``(B,)``)."""

    @abc.abstractmethod
    def marginal_prob(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (shape of ``x``) and std (shape ``(B,)``) of the perturbation kernel ``p_0t(x(t) | x(0)=x)``."""

    def prior_sampling(
        self,
        shape: tuple[int, ...] | torch.Size,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Draw ``x(T) ~ N(0, I)`` of the given ``shape`` (B, C, H, W)."""
        if generator is not None and device is None:
            device = generator.device
        return torch.randn(tuple(shape), generator=generator, device=device)

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, I) summed over all but the batch axis: ``-(D/2) log 2π - ||z||²/2``, shape ``(B,)``."""
        d = z[0].numel()
        return -0.5 * d * math.log(2 * math.pi) - 0.5 * z.flatten(1).pow(2).sum(dim=1)

    def discretize(
        self, x: torch.Tensor, t: torch.Tensor, dt: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward step ``x_{t+dt} = x + f + G z``: returns ``f = f(x,t) dt`` and ``G = g(t) sqrt(dt)``.

        ``dt`` > 0 is a float or a per-sample tensor of shape ``(B,)``; ``G`` has shape ``(B,)``.
        """
        drift, diffusion = self.sde(x, t)
        dt_t = torch.as_tensor(dt, dtype=x.dtype, device=x.device)
        return drift * _bcast(dt_t, x), diffusion * torch.sqrt(dt_t)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE (Song Eq. 6 / paper Eq. 3) or, with ``probability_flow``, the
        probability-flow ODE (Song Eq. 13 / paper Eq. 5) driven by ``score_fn``."""
        return ReverseSDE(self, score_fn, probability_flow)


class ReverseSDE:
    """Reverse-time process of a forward :class:`SDE`, integrated from ``t = T`` down to ``t ≈ 0``.

    ``sde(x, t)`` gives the drift for *negative* time steps, i.e. ``x_{t-h} = x_t - h·drift + g √h z``:
    drift = ``f(x,t) - g(t)² ∇log p_t(x)`` (Song Eq. 6) or ``f(x,t) - ½ g(t)² ∇log p_t(x)``
    (Song Eq. 13, probability flow, diffusion 0).
    """

    def __init__(self, forward_sde: SDE, score_fn: ScoreFn, probability_flow: bool = False) -> None:
        self.forward_sde = forward_sde
        self.score_fn = score_fn
        self.probability_flow = probability_flow

    @property
    def T(self) -> float:
        return self.forward_sde.T

    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reverse drift (shape of ``x``) and diffusion (shape ``(B,)``; zeros for the ODE)."""
        drift, diffusion = self.forward_sde.sde(x, t)
        score = self.score_fn(x, t)
        weight = 0.5 if self.probability_flow else 1.0
        drift = drift - _bcast(diffusion**2, x) * score * weight
        if self.probability_flow:
            diffusion = torch.zeros_like(diffusion)
        return drift, diffusion

    def discretize(
        self, x: torch.Tensor, t: torch.Tensor, dt: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reverse-diffusion discretisation (Song App. E): ``x_{t-dt} = x - rev_f + rev_G z``.

        ``rev_f = f - G² s(x, t)`` (× ½ for the ODE) with ``f, G`` from the forward
        :meth:`SDE.discretize`; ``rev_G = G`` (0 for the ODE), shape ``(B,)``.
        """
        f, g = self.forward_sde.discretize(x, t, dt)
        score = self.score_fn(x, t)
        weight = 0.5 if self.probability_flow else 1.0
        rev_f = f - _bcast(g**2, x) * score * weight
        rev_g = torch.zeros_like(g) if self.probability_flow else g
        return rev_f, rev_g


class _LinearBetaSDE(SDE):
    """Shared linear noise schedule ``β(t) = β_min + t (β_max - β_min)``."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        if not (0.0 < beta_min < beta_max):
            raise ValueError(
                f"need 0 < beta_min < beta_max, got beta_min={beta_min!r}, beta_max={beta_max!r}"
            )
        self.beta_0 = float(beta_min)
        self.beta_1 = float(beta_max)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """β(t), shape of ``t``."""
        return self.beta_0 + t * (self.beta_1 - self.beta_0)

    def log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """``lmc(t) = -¼ t² (β1-β0) - ½ t β0 = -½ ∫_0^t β(s) ds``, shape of ``t``."""
        return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta_min={self.beta_0}, beta_max={self.beta_1})"


class SubVPSDE(_LinearBetaSDE):
    """Sub-VP SDE (Song Sec. 3.4): ``dx = -½β(t) x dt + sqrt(β(t)(1 - e^{-2∫_0^t β})) dw``.

    Marginal ``p_0t(x(t)|x(0)) = N(e^{lmc} x(0), (1 - e^{2 lmc})² I)``: the std is
    ``1 - e^{2 lmc}`` with NO square root (its variance is bounded by the VP one, hence "sub").
    """

    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        beta_t = self.beta(t)
        drift = -0.5 * _bcast(beta_t, x) * x
        discount = 1.0 - torch.exp(-2 * self.beta_0 * t - (self.beta_1 - self.beta_0) * t**2)
        return drift, torch.sqrt(beta_t * discount)

    def marginal_prob(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lmc = self.log_mean_coeff(t)
        mean = _bcast(torch.exp(lmc), x) * x
        std = -torch.expm1(2.0 * lmc)  # 1 - e^{2 lmc}, accurate for small t
        return mean, std


class VPSDE(_LinearBetaSDE):
    """VP SDE (Song Eq. 11, continuous DDPM): ``dx = -½β(t) x dt + sqrt(β(t)) dw``.

    Marginal ``N(e^{lmc} x(0), (1 - e^{2 lmc}) I)``: std ``sqrt(1 - e^{2 lmc})``.
    """

    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        beta_t = self.beta(t)
        return -0.5 * _bcast(beta_t, x) * x, torch.sqrt(beta_t)

    def marginal_prob(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lmc = self.log_mean_coeff(t)
        mean = _bcast(torch.exp(lmc), x) * x
        std = torch.sqrt(-torch.expm1(2.0 * lmc))
        return mean, std

    def discretize(
        self, x: torch.Tensor, t: torch.Tensor, dt: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """DDPM discretisation (the DDPM chain of Song Sec. 3.4 with ``β_i = β(t) dt``): ``f = (sqrt(1-β_i) - 1) x``, ``G = sqrt(β_i)``."""
        beta_i = self.beta(t) * torch.as_tensor(dt, dtype=x.dtype, device=x.device)
        f = _bcast(torch.sqrt(1.0 - beta_i) - 1.0, x) * x
        return f, torch.sqrt(beta_i)


def get_sde(name: Literal["subvp", "vp"], beta_min: float = 0.1, beta_max: float = 20.0) -> SDE:
    """SDE by name: ``"subvp"`` (the paper's choice) or ``"vp"``."""
    if name == "subvp":
        return SubVPSDE(beta_min, beta_max)
    if name == "vp":
        return VPSDE(beta_min, beta_max)
    raise ValueError(f"unknown SDE {name!r}; allowed: {', '.join(map(repr, SDE_NAMES))}")


@dataclass(frozen=True)
class GaussianDataScore:
    """Exact score of ``p_t`` when the data is ``x(0) ~ N(mean, std² I)`` (model range).

    Any linear-drift SDE keeps it Gaussian: ``p_t = N(a_t·mean, (a_t² std² + σ_t²) I)`` with
    ``(a_t·1, σ_t) = sde.marginal_prob(1, t)``, so ``∇log p_t(x) = -(x - a_t mean) / var_t``.
    A score function ``(x (B,C,H,W), t (B,)) -> (B,C,H,W)``; used to check samplers and likelihoods.
    """

    sde: SDE
    mean: float
    std: float

    def __post_init__(self) -> None:
        if not self.std > 0:
            raise ValueError(f"GaussianDataScore needs std > 0, got {self.std!r}")

    def marginal(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of ``p_t``, each of shape ``(B,)``."""
        one = torch.ones_like(t)
        a_t, sigma_t = self.sde.marginal_prob(one, t)
        return a_t * self.mean, a_t**2 * self.std**2 + sigma_t**2

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        m, v = self.marginal(t.to(x.dtype))
        return -(x - _bcast(m, x)) / _bcast(v, x)

    def log_prob(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """``log p_t(x)`` summed over all but the batch axis, shape ``(B,)``; ``t=None`` means the data."""
        if t is None:
            m = torch.full((x.shape[0],), self.mean, dtype=x.dtype, device=x.device)
            v = torch.full_like(m, self.std**2)
        else:
            m, v = self.marginal(t.to(x.dtype))
        d = x[0].numel()
        sq = (x - _bcast(m, x)).flatten(1).pow(2).sum(dim=1)
        return -0.5 * d * torch.log(2 * math.pi * v) - 0.5 * sq / v
