"""Models and q(t) curves whose t' is known, to test Algorithm 1 (:mod:`safcore.probe`) against.

Two kinds of known answer:

* :class:`PointMixtureScore` — the exact score of data made of point masses. One point at ``x_p``:
  every reverse sample comes back as ``x_p`` (q = 1 at every t, t' = top of the grid); one point
  elsewhere: never (q = 0, no t'); two points: q falls with t and its exact value is known by
  quadrature (:meth:`PointMixtureScore.q_exact`).
* :class:`PointMassDenoiser` — the same for a diffusers model: the exact ε / x_0 / v prediction of
  data that is one point, for the scheduler it is driven by (DDPM, DDIM; any prediction type). Every
  reverse run of that scheduler lands on the point.
* :class:`ClassPointMassDenoiser` (and :class:`MonaiClassPointMassDenoiser`) — a class-conditional one: labelled
  training images, each class a mixture of its images' point masses; conditioned on class ``c`` every run
  lands on one of the class-``c`` training images.
* Simulated curves: a known ``q(t)`` on a grid (:func:`sharp_curve`, :func:`logistic_tail_curve`,
  :func:`two_level_curve`, :func:`slow_logistic_curve`) and :class:`BernoulliDraws`, which answers
  the probe's own search code (:func:`safcore.probe.search.topdown_search`) with Bernoulli draws instead of
  reverse samples. :func:`t_prime_distribution` is the exact law of the exhaustive t' on such a
  curve, so a search can be checked against it without running a model.

Grids here are sorted HIGH → LOW (as :attr:`safcore.probe.ProbeConfig.grid`): index 0 is the
largest t, and a t' is reported as a grid index (``None``: no positive on the grid).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import expit

from safcore.data.datasets import to_model_range
from safcore.generators.sde import SDE

__all__ = [
    "PointMixtureScore",
    "PointMassDenoiser",
    "MonaiPointMassDenoiser",
    "SpaceToDepthAutoencoder",
    "DiscRestoringAutoencoder",
    "ClassPointMassDenoiser",
    "MonaiClassPointMassDenoiser",
    "sharp_curve",
    "logistic_tail_curve",
    "two_level_curve",
    "slow_logistic_curve",
    "BernoulliDraws",
    "simulate_exhaustive",
    "t_prime_distribution",
    "agreement_probability",
]


# --------------------------------------------------------------------------------------------------
# exact score of point masses
# --------------------------------------------------------------------------------------------------


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
# simulated q(t) curves
# --------------------------------------------------------------------------------------------------


class _Output:
    def __init__(self, sample: torch.Tensor) -> None:
        self.sample = sample


class PointMassDenoiser(torch.nn.Module):
    """The exact denoiser of data that is the single image ``target``, in a diffusers U-Net's place.

    For ``x_k = sqrt(ᾱ_k) x_0 + sqrt(1 − ᾱ_k) ε`` with ``x_0 = target`` always, the prediction the
    scheduler expects is exact: ``ε = (x_k − sqrt(ᾱ_k) target) / sqrt(1 − ᾱ_k)`` (``"epsilon"``),
    ``target`` (``"sample"``), or ``v = sqrt(ᾱ_k) ε − sqrt(1 − ᾱ_k) target`` (``"v_prediction"``,
    Salimans & Ho 2022). Then every predicted ``x_0`` is ``target`` and the scheduler's last step
    (``ᾱ_prev = 1``) returns it exactly: a :class:`safcore.generators.diffusers_model.DiffusersModel` built on it
    hands back ``target`` from every t — q = 1 at every t when ``target`` is ``x_p``, no positive when it
    is another image.

    Args:
        target: ``(C, H, W)`` in unit range.
        scheduler: the DDPM/DDIM scheduler whose ``alphas_cumprod`` and ``prediction_type`` it follows.

    Called as ``denoiser(x (B, C, H, W) model range, timestep)`` → an object with ``.sample`` (B, C, H, W).
    """

    def __init__(self, target: torch.Tensor, scheduler) -> None:
        super().__init__()
        if target.ndim != 3:
            raise ValueError(f"target must be one image (C, H, W), got shape {tuple(target.shape)}")
        self.register_buffer("target", to_model_range(target.float()))
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.clone().float())
        self.prediction_type = str(getattr(getattr(scheduler, "config", scheduler), "prediction_type"))  # MONAI: no config
        if self.prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(f"prediction_type {self.prediction_type!r}; allowed: epsilon, sample, v_prediction")
        c, h, _ = target.shape
        self.config = type("Config", (), {"in_channels": int(c), "out_channels": int(c), "sample_size": int(h)})()
        self.anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)  # gives the module a device

    def forward(self, x: torch.Tensor, timestep: torch.Tensor | int) -> _Output:
        k = torch.as_tensor(timestep, device=x.device).long().reshape(-1)
        a = self.alphas_cumprod.to(x.device)[k].reshape(-1, 1, 1, 1)
        x0 = self.target.to(x.device, x.dtype).expand_as(x)
        return _Output(_exact_prediction(self.prediction_type, x, x0, a))


def _exact_prediction(prediction_type: str, x: torch.Tensor, x0: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """What a scheduler of ``prediction_type`` expects of an exact denoiser whose ``E[x_0 | x_k]`` is ``x0``, at
    ``ᾱ_k = a``: ``ε = (x − sqrt(a) x0) / sqrt(1 − a)``, ``x0``, or ``v = sqrt(a) ε − sqrt(1 − a) x0``."""
    eps = (x - a.sqrt() * x0) / (1.0 - a).sqrt()
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    return a.sqrt() * eps - (1.0 - a).sqrt() * x0


class MonaiPointMassDenoiser(PointMassDenoiser):
    """:class:`PointMassDenoiser` called as MONAI calls a ``DiffusionModelUNet``: ``unet(x, timesteps=k)`` → the
    prediction ``(B, C, H, W)`` itself; ``scheduler`` a MONAI DDPM/DDIM scheduler (its ``alphas_cumprod`` and
    ``prediction_type``). A :class:`safcore.generators.monai_model.MonaiModel` built on it hands back ``target``
    from every t."""

    def __init__(self, target: torch.Tensor, scheduler) -> None:
        super().__init__(target, scheduler)
        self.in_channels = self.out_channels = self.config.in_channels

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x, timesteps).sample


class SpaceToDepthAutoencoder(torch.nn.Module):
    """A lossless linear autoencoder with a known answer: ``encode(x) = gain · pixel_unshuffle(x, 2)`` (each 2×2
    block of ``(B, C, H, W)`` becomes 4 channels of ``(B, 4C, H/2, W/2)``), ``decode`` its exact inverse. A
    :class:`~safcore.generators.latent_model.LatentModel` of it and a point-mass denoiser on ``scale · encode(x)``
    hands back ``x`` exactly, as the pixel model of ``x`` does."""

    def __init__(self, gain: float = 2.0) -> None:
        super().__init__()
        self.gain = float(gain)
        self.anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)  # gives the module a device

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain * torch.nn.functional.pixel_unshuffle(x, 2)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pixel_shuffle(z / self.gain, 2)


class DiscRestoringAutoencoder(SpaceToDepthAutoencoder):
    """A lossy autoencoder with a known answer: it provably erases an SAF. ``encode(x)`` first puts ``original``
    back inside the disc ``mask`` (``x ← x (1 − m) + original · m``, model range), then is
    :class:`SpaceToDepthAutoencoder`'s; so ``decode(encode(x))`` is ``x`` outside the disc and ``original`` inside,
    and for ``x_p`` (``x_i`` with the SAF painted in the disc) it returns the clean ``x_i`` exactly.

    Args:
        original: ``(C, H, W)`` unit range, the image whose disc region is restored (``x_i``).
        mask: ``(H, W)`` the disc ``L_p`` (1 inside, 0 outside).
    """

    def __init__(self, original: torch.Tensor, mask: torch.Tensor, gain: float = 2.0) -> None:
        super().__init__(gain)
        if original.ndim != 3 or tuple(mask.shape) != tuple(original.shape[-2:]):
            raise ValueError(f"original {tuple(original.shape)}, mask {tuple(mask.shape)}; allowed: (C, H, W) and (H, W)")
        self.register_buffer("original", to_model_range(original.float()))
        self.register_buffer("mask", mask.float())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mask.to(x.device, x.dtype)
        return super().encode(x * (1 - m) + self.original.to(x.device, x.dtype) * m)


class ClassPointMassDenoiser(PointMassDenoiser):
    """The exact denoiser of labelled point masses, in a class-conditional diffusers U-Net's place.

    Conditioned on class ``c`` the data is ``p_0(x | c) = (1/N_c) Σ_{j: y_j = c} δ(x − x_j)``; under
    ``x_k = sqrt(ᾱ_k) x_0 + sqrt(1 − ᾱ_k) ε`` its exact posterior mean is ``E[x_0 | x_k, c] = Σ_j r_j x_j`` with
    ``r = softmax_j(−||x_k − sqrt(ᾱ_k) x_j||² / (2 (1 − ᾱ_k)))`` over the class-``c`` images only, and the prediction
    the scheduler expects follows from it (:class:`PointMassDenoiser`). A DDPM/DDIM run's last step (``ᾱ_prev = 1``)
    returns that posterior mean, which at ``k = 0`` is one class-``c`` training image: every sample conditioned on
    ``c`` is a class-``c`` training image, never one of another class.

    Args:
        images: ``(N, C, H, W)`` unit range, the labelled training images.
        labels: ``(N,)`` integer labels in ``[0, num_classes)``.
        scheduler: the DDPM/DDIM scheduler whose ``alphas_cumprod`` and ``prediction_type`` it follows.
        num_classes: ``K`` (default ``max(labels) + 1``); recorded as ``config.num_class_embeds``.

    Called as ``denoiser(x (B, C, H, W) model range, timestep, class_labels=(B,))`` → an object with ``.sample``.
    """

    def __init__(self, images: torch.Tensor, labels, scheduler, num_classes: int | None = None) -> None:
        labels = torch.as_tensor(np.asarray(labels).reshape(-1), dtype=torch.long)
        if images.ndim != 4 or labels.shape != (images.shape[0],):
            raise ValueError(f"images {tuple(images.shape)} and labels {tuple(labels.shape)}; allowed: (N, C, H, W) "
                             "and (N,)")
        super().__init__(images[0], scheduler)
        k = int(labels.max()) + 1 if num_classes is None else int(num_classes)
        if int(labels.min()) < 0 or int(labels.max()) >= k:
            raise ValueError(f"labels lie in [{int(labels.min())}, {int(labels.max())}]; allowed: [0, {k})")
        self.register_buffer("images", to_model_range(images.float()))
        self.register_buffer("labels", labels)
        self.config.num_class_embeds, self.config.class_embed_type = k, None

    def posterior_mean(self, x: torch.Tensor, a: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        """``E[x_0 | x_k, c]`` ``(B, C, H, W)`` for ``x`` ``(B, C, H, W)``, ``ᾱ_k`` ``a`` ``(B or 1, 1, 1, 1)``."""
        if class_labels is None:
            raise ValueError("class_labels is required: this denoiser is class-conditional")
        c = torch.as_tensor(class_labels, device=x.device).long().reshape(-1).expand(x.shape[0])
        own = self.labels.to(x.device)[None, :] == c[:, None]  # (B, N)
        if not bool(own.any(1).all()):
            raise ValueError(f"class labels {sorted(set(c.tolist()))}: some class has no training image")
        xs = self.images.to(x.device, x.dtype)
        d2 = (x.unsqueeze(1) - a.sqrt().unsqueeze(1) * xs.unsqueeze(0)).flatten(2).pow(2).sum(-1)  # (B, N)
        r = torch.softmax((-d2 / (2 * (1.0 - a.reshape(-1, 1)))).masked_fill(~own, -math.inf), dim=1)
        return torch.einsum("bn,nchw->bchw", r, xs)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor | int, class_labels: torch.Tensor | None = None) -> _Output:
        k = torch.as_tensor(timestep, device=x.device).long().reshape(-1)
        a = self.alphas_cumprod.to(x.device)[k].reshape(-1, 1, 1, 1)
        return _Output(_exact_prediction(self.prediction_type, x, self.posterior_mean(x, a, class_labels), a))


class MonaiClassPointMassDenoiser(ClassPointMassDenoiser):
    """:class:`ClassPointMassDenoiser` called as MONAI calls a class-conditional ``DiffusionModelUNet``:
    ``unet(x, timesteps=k, class_labels=c)`` → the prediction itself; ``num_class_embeds`` as MONAI's attribute."""

    def __init__(self, images: torch.Tensor, labels, scheduler, num_classes: int | None = None) -> None:
        super().__init__(images, labels, scheduler, num_classes)
        self.in_channels = self.out_channels = self.config.in_channels
        self.num_class_embeds = self.config.num_class_embeds

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x, timesteps, class_labels).sample


def _grid_array(grid: Sequence[float] | np.ndarray) -> np.ndarray:
    g = np.asarray(grid, dtype=np.float64).reshape(-1)
    if g.size == 0:
        raise ValueError("the grid is empty")
    return g


def sharp_curve(grid: Sequence[float] | np.ndarray, t_star: float) -> np.ndarray:
    """``q(t) = 1`` for ``t < t_star``, 0 from ``t_star`` up: a model that lets ``x_p`` go at once.

    The exhaustive t' is the largest grid t below ``t_star`` with probability 1.
    """
    g = _grid_array(grid)
    return np.where(g < t_star - 1e-9, 1.0, 0.0)


def logistic_tail_curve(
    grid: Sequence[float] | np.ndarray, M: int, t_drop: float = 0.5, t_end: float = 0.8, width: float = 0.02
) -> np.ndarray:
    """A logistic drop at ``t_drop`` to a tail ``q ≈ 1/M`` that fades out (logistically) at ``t_end``.

    ``q(t) = (1 - (1 - 1/M)·σ((t - t_drop)/width)) · (1 - σ((t - t_end)/width))``, σ the logistic
    function: about 1 below ``t_drop``, about ``1/M`` on ``(t_drop, t_end)``, 0 above ``t_end``.
    """
    g = _grid_array(grid)
    if M < 1:
        raise ValueError(f"M={M!r} must be >= 1")
    return (1.0 - (1.0 - 1.0 / M) * expit((g - t_drop) / width)) * (1.0 - expit((g - t_end) / width))


def two_level_curve(
    grid: Sequence[float] | np.ndarray, level: float = 0.05, t_low: float = 0.4, t_end: float = 0.9
) -> np.ndarray:
    """``q = 1`` below ``t_low``, ``level`` on ``[t_low, t_end]``, 0 above ``t_end``."""
    g = _grid_array(grid)
    return np.where(g < t_low - 1e-9, 1.0, np.where(g <= t_end + 1e-9, float(level), 0.0))


def slow_logistic_curve(grid: Sequence[float] | np.ndarray, t_half: float = 0.5, width: float = 0.08) -> np.ndarray:
    """``q(t) = σ((t_half - t)/width)``: a slow decline whose tail stays above 0 up to the top of the grid."""
    g = _grid_array(grid)
    return expit((t_half - g) / width)


# --------------------------------------------------------------------------------------------------
# Bernoulli simulation of Algorithm 1 on a known curve
# --------------------------------------------------------------------------------------------------


class BernoulliDraws:
    """Reverse samples replaced by Bernoulli(q[i]) draws: the ``draw(i, m)`` that probe searches call.

    ``draw(i, m)`` returns how many of ``m`` samples at grid index ``i`` are positive, and counts their
    cost ``m · steps[i]`` in :attr:`nfe` (what ``m`` Euler–Maruyama trajectories from ``grid[i]`` cost).

    Args:
        q: the curve on the grid (high → low t), (T,), values in [0, 1].
        steps: reverse steps per trajectory at each grid t (T,) (e.g. ``[cfg.steps(t) for t in cfg.grid]``).
        rng: numpy random generator.
    """

    def __init__(self, q: Sequence[float] | np.ndarray, steps: Sequence[int] | np.ndarray, rng: np.random.Generator):
        self.q = np.asarray(q, dtype=np.float64).reshape(-1)
        self.steps = np.asarray(steps, dtype=np.int64).reshape(-1)
        if self.q.shape != self.steps.shape:
            raise ValueError(f"q and steps differ in length: {self.q.size} vs {self.steps.size}")
        if np.any(self.q < 0) or np.any(self.q > 1):
            raise ValueError(f"q must lie in [0, 1], got {self.q.tolist()}")
        self.rng = rng
        self.nfe = 0

    def __call__(self, i: int, m: int) -> int:
        self.nfe += int(m * self.steps[i])
        return int(self.rng.binomial(int(m), self.q[i]))


def simulate_exhaustive(q: Sequence[float] | np.ndarray, M: int, rng: np.random.Generator) -> int | None:
    """One exhaustive search on a known curve (high → low t): the index of t' (None: no positive).

    ``k_i ~ Binomial(M, q_i)`` at every grid t; t' is the first index (largest t) with ``k_i > 0``.
    """
    hit = np.flatnonzero(rng.binomial(int(M), np.asarray(q, dtype=np.float64)) > 0)
    return int(hit[0]) if hit.size else None


def t_prime_distribution(q: Sequence[float] | np.ndarray, M: int) -> tuple[np.ndarray, float]:
    """Exact law of the exhaustive t' on a known curve (grid high → low).

    With ``p_i = 1 - (1 - q_i)^M`` the chance of at least one positive among M samples at grid t_i,
    ``P(t' = t_i) = p_i · Π_{j < i} (1 - p_j)`` and ``P(no t') = Π_j (1 - p_j)``.

    Returns:
        (``P(t' = grid[i])`` for each i, (T,), ``P(no t')``).
    """
    qv = np.asarray(q, dtype=np.float64).reshape(-1)
    p = 1.0 - (1.0 - qv) ** int(M)
    survive = np.concatenate([[1.0], np.cumprod(1.0 - p)])  # P(no positive at indices < i)
    return p * survive[:-1], float(survive[-1])


def agreement_probability(q: Sequence[float] | np.ndarray, M: int, tolerance: int = 1) -> float:
    """``P(|t'_1 - t'_2| <= tolerance grid steps, or both none)`` for two independent exhaustive searches.

    The agreement that randomness alone allows: a search whose t' has the exhaustive law agrees with
    an exhaustive run exactly this often.
    """
    dist, none = t_prime_distribution(q, M)
    n = dist.size
    idx = np.arange(n)
    near = np.abs(idx[:, None] - idx[None, :]) <= tolerance
    return float(dist @ near @ dist + none * none)
