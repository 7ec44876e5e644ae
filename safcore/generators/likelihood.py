"""Bits/dim through the probability-flow ODE (Song et al. 2020, Sec. 4.3 and App. D.2; paper Eq. 5).

The probability-flow ODE ``dx/dt = f̃(x, t) = f(x, t) - ½ g(t)² s(x, t)`` (Song Eq. 13) is a
continuous normalising flow, so (instantaneous change of variables, Song App. D.2)

    log p_0(x(0)) = log p_T(x(T)) + ∫_0^T ∇·f̃(x(t), t) dt,

integrated from ``eps`` to ``T`` with RK45 next to ``x(t)``; the divergence is Hutchinson's unbiased
estimate ``E_v[vᵀ (∂f̃/∂x) v]`` with one Rademacher (or Gaussian) ``v`` per image, fixed along the path
(score_sde ``likelihood.py``).

Units (score_sde's ``offset = 7 - inverse_scaler(-1)``, derived): the ODE gives the density
``p_Y`` of the model-range image ``y = 2x - 1``. For the unit-range image ``x`` the density is
``p_X(x) = 2^D p_Y(y)``, i.e. ``-log2 p_X / D = -log2 p_Y / D - 1``. An 8-bit image ``k ∈ {0..255}^D``
owns the bin ``[k/256, (k+1)/256)^D`` of volume ``256^{-D}``; uniform dequantisation
``x̃ = (k + u)/256, u ~ U[0,1)^D`` gives the variational bound
``-log2 P(k) / D ≤ E_u[-log2 p_X(x̃)] / D + log2 256``. Hence

* ``dequantize=True``  : ``bpd = -log2 p_Y(ỹ)/D + 8 - 1 = -log2 p_Y(ỹ)/D + 7`` (discrete bits/dim,
  the number to compare with published values; always ≥ 0 in expectation for a proper model);
* ``dequantize=False`` : ``bpd = -log2 p_X(x)/D = -log2 p_Y(y)/D - 1``, the continuous density of the
  unit-range image itself; it can be negative for peaked (e.g. memorising) models.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from scipy import integrate

from safcore.runtime.progress import progress_bar
from safcore.generators.sde import SDE

__all__ = ["bits_per_dim", "ode_log_likelihood", "LikelihoodResult", "NLLComparison", "nll_comparison"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Hutchinson = Literal["rademacher", "gaussian"]
HUTCHINSON_TYPES: tuple[str, ...] = ("rademacher", "gaussian")


@dataclass(frozen=True, eq=False)
class LikelihoodResult:
    """Output of :func:`ode_log_likelihood`.

    Attributes:
        logp: ``(B,)`` log-density in nats of the model-range images under the model.
        z: ``(B, C, H, W)`` the images mapped to ``t = T`` by the probability-flow ODE.
        nfe: ODE right-hand-side evaluations (each one network forward + one vector-Jacobian product),
            the largest over batches.
    """

    logp: torch.Tensor
    z: torch.Tensor = field(repr=False)
    nfe: int


def _device_of(score_fn: ScoreFn, y: torch.Tensor) -> torch.device:
    if isinstance(score_fn, torch.nn.Module):
        for p in score_fn.parameters():
            return p.device
    return y.device


def ode_log_likelihood(
    score_fn: ScoreFn,
    sde: SDE,
    y: torch.Tensor,
    *,
    hutchinson: Hutchinson = "rademacher",
    generator: torch.Generator | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float = 1e-5,
    batch_size: int | None = None,
    progress: bool = False,
) -> LikelihoodResult:
    """``log p_eps(y)`` in nats for model-range images ``y`` (B, C, H, W), shape ``(B,)``, by the
    instantaneous change of variables (Song App. D.2).

    Integrates ``[x, Δlogp]`` from ``t = eps`` to ``T`` with RK45 (``rtol``, ``atol``), then
    ``log p = prior_logp(x(T)) + Δlogp``. One Hutchinson probe per image (drawn from ``generator``).
    """
    if hutchinson not in HUTCHINSON_TYPES:
        raise ValueError(f"unknown hutchinson {hutchinson!r}; allowed: {', '.join(map(repr, HUTCHINSON_TYPES))}")
    if y.ndim != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(y.shape)}")
    if not (0.0 < eps < sde.T):
        raise ValueError(f"eps must lie in (0, {sde.T}), got {eps!r}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be None or >= 1, got {batch_size!r}")
    # the divergence needs autograd: leave any caller's inference_mode (clone: not an inference tensor)
    with torch.inference_mode(False):
        return _ode_log_likelihood(
            score_fn, sde, y.detach().clone(), hutchinson=hutchinson, generator=generator, rtol=rtol,
            atol=atol, eps=eps, batch_size=batch_size, progress=progress,
        )


def _ode_log_likelihood(
    score_fn: ScoreFn,
    sde: SDE,
    y: torch.Tensor,
    *,
    hutchinson: Hutchinson,
    generator: torch.Generator | None,
    rtol: float,
    atol: float,
    eps: float,
    batch_size: int | None,
    progress: bool,
) -> LikelihoodResult:
    device = _device_of(score_fn, y)
    y = y.to(device, torch.float32)
    rsde = sde.reverse(score_fn, probability_flow=True)
    size = y.shape[0] if batch_size is None else batch_size

    logps, zs, nfes = [], [], []
    bar = progress_bar(desc="likelihood ODE", unit="nfe", enabled=progress, leave=False)
    try:
        for start in range(0, y.shape[0], size):
            x = y[start : start + size]
            shape, b = x.shape, x.shape[0]
            n = x.numel()
            gen_dev = generator.device if generator is not None else device
            if hutchinson == "rademacher":
                v = torch.randint(0, 2, shape, generator=generator, device=gen_dev).float() * 2 - 1
            else:
                v = torch.randn(shape, generator=generator, device=gen_dev)
            v = v.to(device)

            def ode_func(t: float, state: np.ndarray, shape=shape, b=b, n=n, v=v) -> np.ndarray:
                xs = torch.from_numpy(state[:n].astype(np.float32)).to(device).reshape(shape)
                vec_t = torch.full((b,), t, dtype=torch.float32, device=device)
                with torch.enable_grad():
                    xs.requires_grad_(True)
                    drift, _ = rsde.sde(xs, vec_t)
                    (vjp,) = torch.autograd.grad((drift * v).sum(), xs)
                div = (vjp * v).flatten(1).sum(dim=1)
                bar.update(1)
                return np.concatenate(
                    [drift.detach().to("cpu", torch.float64).reshape(-1).numpy(),
                     div.detach().to("cpu", torch.float64).numpy()]
                )

            init = np.concatenate([x.to("cpu", torch.float64).reshape(-1).numpy(), np.zeros(b)])
            sol = integrate.solve_ivp(ode_func, (eps, sde.T), init, method="RK45", rtol=rtol, atol=atol)
            if not sol.success:
                raise RuntimeError(f"likelihood ODE solver failed: {sol.message}")
            end = sol.y[:, -1]
            z = torch.from_numpy(end[:n]).float().reshape(shape).to(device)
            delta = torch.from_numpy(end[n:]).to(device)
            logps.append(sde.prior_logp(z).double() + delta)
            zs.append(z)
            nfes.append(int(sol.nfev))
    finally:
        bar.close()
    return LikelihoodResult(logp=torch.cat(logps).float(), z=torch.cat(zs), nfe=max(nfes))


def bits_per_dim(
    score_fn: ScoreFn,
    sde: SDE,
    x_unit: torch.Tensor,
    *,
    dequantize: bool = True,
    hutchinson: Hutchinson = "rademacher",
    generator: torch.Generator | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float = 1e-5,
    batch_size: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Bits per dimension of unit-range images ``x_unit`` (B, C, H, W) in ``[0, 1]`` → ``(B,)``.

    With ``dequantize`` the images are read as 8-bit (``k = round(255 x)``; e.g. a SAF grey of 0.5
    becomes 128), dequantised uniformly to ``(k + u)/256`` and scored with the +7 offset (see the
    module docstring): discrete bits/dim, comparable to score_sde's numbers. Without it, the
    continuous density of ``x`` in unit range (``-log2 p_Y(2x-1)/D - 1``).
    """
    if x_unit.ndim != 4:
        raise ValueError(f"x_unit must have shape (B, C, H, W), got {tuple(x_unit.shape)}")
    lo, hi = x_unit.min().item(), x_unit.max().item()
    if not bool(torch.isfinite(x_unit).all()) or lo < 0.0 or hi > 1.0:
        raise ValueError(f"x_unit must be unit-range images in [0, 1], got values in [{lo:g}, {hi:g}]")
    x = x_unit.detach().float()
    if dequantize:
        k = torch.round(x * 255.0).clamp(0, 255)
        u = torch.rand(x.shape, generator=generator, device=generator.device if generator is not None else x.device)
        x = (k + u.to(x.device)) / 256.0
        offset = math.log2(256) - 1.0
    else:
        offset = -1.0
    y = 2.0 * x - 1.0
    res = ode_log_likelihood(
        score_fn, sde, y, hutchinson=hutchinson, generator=generator, rtol=rtol, atol=atol, eps=eps,
        batch_size=batch_size, progress=progress,
    )
    d = x[0].numel()
    return (-res.logp.cpu() / (d * math.log(2.0)) + offset).float()


@dataclass(frozen=True, eq=False)
class NLLComparison:
    """Bits/dim of the private image ``x_p`` next to other training images.

    Attributes:
        bpd_p: bits/dim of ``x_p``.
        bpd_others: ``(N,)`` bits/dim of the other images.
        rank: how many other images have a lower bits/dim than ``x_p`` (0: ``x_p`` is the most likely).
        z_score: ``(bpd_p - mean(bpd_others)) / std(bpd_others)``; strongly negative when ``x_p`` is
            singled out (memorised more than the rest). NaN for fewer than two others.
    """

    bpd_p: float
    bpd_others: torch.Tensor
    rank: int
    z_score: float

    @property
    def mean_others(self) -> float:
        return float(self.bpd_others.mean())

    def __str__(self) -> str:
        n = self.bpd_others.numel()
        return (
            f"bits/dim x_p {self.bpd_p:.3f} | others {self.mean_others:.3f} ± "
            f"{float(self.bpd_others.std()) if n > 1 else float('nan'):.3f} (n={n}) | "
            f"rank {self.rank}/{n} | z {self.z_score:+.2f}"
        )


def nll_comparison(
    score_fn: ScoreFn,
    sde: SDE,
    x_p: torch.Tensor,
    others: torch.Tensor,
    **kwargs,
) -> NLLComparison:
    """Bits/dim (paper Sec. 3.1: NLL of the training set) of ``x_p`` (C, H, W) or (1, C, H, W) and of
    ``others`` (N, C, H, W), all unit range, in one call so all share the solver; ``kwargs`` go to
    :func:`bits_per_dim`."""
    if x_p.ndim == 3:
        x_p = x_p.unsqueeze(0)
    if x_p.ndim != 4 or x_p.shape[0] != 1:
        raise ValueError(f"x_p must be one image (C, H, W) or (1, C, H, W), got {tuple(x_p.shape)}")
    if others.ndim != 4 or others.shape[1:] != x_p.shape[1:] or others.shape[0] < 1:
        raise ValueError(
            f"others must have shape (N, {', '.join(map(str, x_p.shape[1:]))}) with N >= 1, got {tuple(others.shape)}"
        )
    bpd = bits_per_dim(score_fn, sde, torch.cat([x_p.to(others.device), others]), **kwargs)
    bpd_p, bpd_o = float(bpd[0]), bpd[1:]
    std = float(bpd_o.std()) if bpd_o.numel() > 1 else float("nan")
    z = (bpd_p - float(bpd_o.mean())) / std if bpd_o.numel() > 1 and std > 0 else float("nan")
    return NLLComparison(bpd_p=bpd_p, bpd_others=bpd_o, rank=int((bpd_o < bpd_p).sum()), z_score=z)
