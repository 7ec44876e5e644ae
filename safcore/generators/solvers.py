"""Fast reverse samplers of any SDE with a Gaussian kernel: DPM-Solver++ (2M), ODE and SDE variants.

Every forward SDE safcore samples (sub-VP, VP) has the kernel ``x_t = a_t x_0 + σ_t ε`` (``sde.marginal_prob``),
and its probability-flow ODE (Song Eq. 13) is, in the half log-SNR ``λ_t = log(a_t / σ_t)`` and the data
prediction ``x̂_0(x, t) = (x + σ_t² s(x, t)) / a_t`` (Tweedie's formula), solved exactly up to the integral of
``x̂_0`` (Lu et al. 2022b, "DPM-Solver++", Eq. 9):

    x_t = (σ_t / σ_s) x_s + σ_t ∫_{λ_s}^{λ_t} e^λ x̂_0(x_λ, λ) dλ.

**DPM-Solver++ (2M)** (Lu et al. 2022b, Alg. 2, data-prediction form) takes ``x̂_0`` linear in λ through the
last two evaluations: with ``h_i = λ_{t_i} − λ_{t_{i−1}}``, ``r_i = h_{i−1} / h_i``,

    D_i = (1 + 1/(2 r_i)) x̂_0(t_{i−1}) − 1/(2 r_i) x̂_0(t_{i−2}),
    x_{t_i} = (σ_{t_i} / σ_{t_{i−1}}) x_{t_{i−1}} − a_{t_i} (e^{−h_i} − 1) D_i,

and its first step is first-order (``D_1 = x̂_0(t_0)``, DDIM). One network evaluation per step.

**DPM-Solver++ (2M) SDE** (Lu et al. 2022b; diffusers' ``DPMSolverMultistepScheduler(algorithm_type=
"sde-dpmsolver++", solver_type="midpoint")``): the same ``D_i`` in the exact solution of the reverse SDE's
linear part,

    x_{t_i} = (σ_{t_i} / σ_{t_{i−1}}) e^{−h_i} x_{t_{i−1}} + a_{t_i} (1 − e^{−2h_i}) D_i + σ_{t_i} sqrt(1 − e^{−2h_i}) z.

**Time grid**: uniform in λ ("logSNR" spacing, which DPM-Solver recommends for pixel-space models of low
resolution; diffusers' ``DPMSolverMultistepScheduler`` defaults to a grid uniform in its discrete timesteps
instead; the methods ``dpm2m_t`` / ``dpm2m_sde_t`` take that grid uniform in t, Euler–Maruyama's, with
:func:`time_grid`). A run of ``N`` steps from ``t`` evaluates the network at ``λ_j = λ_t + j (λ_eps − λ_t) / N``,
``j = 0 … N−1``, and its last step goes to ``σ = 0`` — it returns ``x̂_0`` of its last evaluation, as diffusers'
``final_sigmas_type="zero"`` and DPM-Solver's ``denoise_to_zero`` do (NFE = N, the same as Euler–Maruyama with
its Tweedie last step). Algorithm 1 reverses from ``t < 1`` with the step size of a full run: a run from ``t``
takes :func:`logsnr_steps` steps, the fraction of the full run's λ range that lies below ``t`` (the λ analogue of
:func:`safcore.generators.base.steps_for`), on its own λ-uniform grid from ``t`` down to ``eps``.

Shapes: images ``(B, C, H, W)`` model range; times ``(B,)``.
"""

from __future__ import annotations

import math

import torch

from safcore.generators.sampling import ScoreFn, _bcast, _randn, tweedie_denoise
from safcore.generators.sde import SDE

__all__ = ["SOLVERS", "log_snr", "time_for_log_snr", "logsnr_steps", "logsnr_grid", "time_grid", "dpm_solver_2m"]

#: The multistep solvers of this module, as :func:`safcore.generators.sampling.sample` names them.
SOLVERS: tuple[str, ...] = ("dpm2m", "dpm2m_sde", "dpm2m_t", "dpm2m_sde_t")


def log_snr(sde: SDE, t: torch.Tensor) -> torch.Tensor:
    """``λ_t = log a_t − log σ_t`` of ``sde``'s kernel, float64, shape of ``t``."""
    t = torch.as_tensor(t, dtype=torch.float64)
    flat = t.reshape(-1)
    a, s = sde.marginal_prob(torch.ones_like(flat), flat)
    return (torch.log(a) - torch.log(s)).reshape(t.shape)


def time_for_log_snr(sde: SDE, lam: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """The ``t ∈ [lo, hi]`` with ``λ_t = lam`` (``λ`` falls monotonically in t), by bisection in float64 to
    machine precision; ``lam``, ``lo``, ``hi`` float64 of one shape."""
    lo, hi = lo.clone(), hi.clone()
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        above = log_snr(sde, mid) > lam  # mid lies below the root
        lo = torch.where(above, mid, lo)
        hi = torch.where(above, hi, mid)
    return 0.5 * (lo + hi)


def logsnr_steps(sde: SDE, t: float, steps_full: int, eps: float) -> int:
    """Steps of a run from ``t`` with the λ step of a full run of ``steps_full`` steps from ``T`` to ``eps``:
    ``ceil((λ_eps − λ_t) / (λ_eps − λ_T) · steps_full)``, at least 1 (rounded first, as ``steps_for``)."""
    lam = log_snr(sde, torch.tensor([float(t), float(eps), float(sde.T)], dtype=torch.float64)).tolist()
    frac = (lam[1] - lam[0]) / (lam[1] - lam[2])
    return max(1, math.ceil(round(frac * steps_full, 9)))


def logsnr_grid(sde: SDE, ts: torch.Tensor, steps: torch.Tensor, eps: float) -> torch.Tensor:
    """Each row's λ-uniform time grid, float64 ``(B, K + 1)`` with ``K = max steps``, right-aligned: row ``i``
    holds ``t_i = t(λ_0) > … > t(λ_{steps_i}) = eps`` in columns ``K − steps_i … K`` (its first entry repeated
    in front), so that column ``k`` is its time at iteration ``k`` of a batch of :func:`dpm_solver_2m`."""
    ts64 = ts.detach().to("cpu", torch.float64)
    steps = steps.to("cpu", torch.int64)
    n_iter = int(steps.max())
    lam_0, lam_e = log_snr(sde, ts64), log_snr(sde, torch.full_like(ts64, eps))
    j = (torch.arange(n_iter + 1, dtype=torch.int64).unsqueeze(0) - (n_iter - steps).unsqueeze(1)).clamp_min(0)
    frac = j.to(torch.float64) / steps.unsqueeze(1).to(torch.float64)
    lam = lam_0.unsqueeze(1) + frac * (lam_e - lam_0).unsqueeze(1)
    lo, hi = torch.full_like(lam, eps), ts64.unsqueeze(1).expand_as(lam)
    grid = time_for_log_snr(sde, lam, lo, hi)
    grid[frac == 0] = ts64.unsqueeze(1).expand_as(lam)[frac == 0]  # the ends exactly
    grid[:, -1] = eps
    return grid


def time_grid(ts: torch.Tensor, steps: torch.Tensor, eps: float) -> torch.Tensor:
    """Each row's time grid uniform in t (Euler–Maruyama's: ``t_j = t − j (t − eps) / steps_i``), float64
    ``(B, K + 1)``, right-aligned as :func:`logsnr_grid`."""
    ts64 = ts.detach().to("cpu", torch.float64)
    steps = steps.to("cpu", torch.int64)
    n_iter = int(steps.max())
    j = (torch.arange(n_iter + 1, dtype=torch.int64).unsqueeze(0) - (n_iter - steps).unsqueeze(1)).clamp_min(0)
    frac = j.to(torch.float64) / steps.unsqueeze(1).to(torch.float64)
    grid = ts64.unsqueeze(1) + frac * (eps - ts64).unsqueeze(1)
    grid[:, -1] = eps
    return grid


def _kernel(sde: SDE, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(a_t, σ_t, λ_t)`` in float64, each ``(B,)``."""
    a, s = sde.marginal_prob(torch.ones_like(t), t)
    return a, s, torch.log(a) - torch.log(s)


def dpm_solver_2m(score: ScoreFn, sde: SDE, x: torch.Tensor, ts: torch.Tensor, *, steps: int | torch.Tensor,
                  eps: float, stochastic: bool = False, spacing: str = "logsnr",
                  generator: torch.Generator | None = None, bar=None) -> torch.Tensor:
    """DPM-Solver++ (2M) (``stochastic=False``) or its SDE variant from each row's ``t`` down to ``x̂_0``.

    Args:
        score: ``s(x (B, C, H, W), t (B,))`` in float32.
        sde: the forward SDE (its ``marginal_prob`` gives ``a_t``, ``σ_t``).
        x: ``(B, C, H, W)`` float32 states at ``ts``.
        ts: ``(B,)`` start times in ``(eps, T]``.
        steps: one count for every row or int64 ``(B,)``: row ``i`` takes ``steps_i`` network evaluations on its
            λ-uniform grid (module docstring). With per-row counts a batch runs ``K = max steps_i`` iterations and
            row ``i`` joins at iteration ``K − steps_i``; until then it is left out of every evaluation and noise
            draw, so it is a run of ``steps_i`` steps alone; every row takes its last step at iteration ``K − 1``.
        eps: the end of the grid.
        stochastic: the SDE variant (noise drawn from ``generator``).
        spacing: ``"logsnr"`` (a grid uniform in λ, :func:`logsnr_grid`) or ``"time"`` (uniform in t,
            :func:`time_grid`; the steps of a run from ``t`` are then ``steps_for``'s).
        bar: a progress bar updated once per iteration.

    Returns:
        ``(B, C, H, W)`` float32: ``x̂_0`` of each row's last evaluation.
    """
    b = x.shape[0]
    st = torch.full((b,), steps, dtype=torch.int64) if isinstance(steps, int) else steps.to("cpu", torch.int64)
    n_iter = int(st.max())
    if spacing not in ("logsnr", "time"):
        raise ValueError(f"spacing = {spacing!r}; allowed: 'logsnr', 'time'")
    grid = logsnr_grid(sde, ts, st, eps) if spacing == "logsnr" else time_grid(ts, st, eps)  # (B, K + 1) float64
    start = n_iter - st  # the iteration at which each row takes its first step
    grid_dev = grid.to(x.device)
    d_prev = torch.zeros_like(x)  # x̂_0 of each row's previous evaluation
    lam_prev = torch.zeros(b, dtype=torch.float64, device=x.device)
    n_moving, rows = -1, None
    for k in range(n_iter):
        last = k == n_iter - 1
        moving = start <= k
        if int(moving.sum()) != n_moving:  # the moving set grows at a few iterations only
            n_moving = int(moving.sum())
            rows = None if n_moving == b else torch.nonzero(moving).squeeze(1).to(x.device)
        if rows is None:
            xa, t_s, t_t, first = x, grid_dev[:, k], grid_dev[:, k + 1], (start == k).to(x.device)
        else:
            xa, t_s, t_t = x[rows], grid_dev[rows, k], grid_dev[rows, k + 1]
            first = (start == k).to(x.device)[rows]
        d0 = tweedie_denoise(score, sde, xa, t_s.to(x.dtype))
        if last:
            xa = d0
        else:
            _, s_s, lam_s = _kernel(sde, t_s)
            a_t, s_t, lam_t = _kernel(sde, t_t)
            h = lam_t - lam_s
            lp = lam_prev if rows is None else lam_prev[rows]
            half_r = torch.where(first, torch.zeros_like(h), 0.5 * h / torch.where(first, h, lam_s - lp))  # 1/(2 r_i)
            dp = d_prev if rows is None else d_prev[rows]
            d = d0 + _bcast(half_r.to(x.dtype), xa) * (d0 - dp)  # D_i of Alg. 2 (first step: x̂_0)
            if stochastic:
                c_x = (s_t / s_s * torch.exp(-h)).to(x.dtype)
                c_d = (-a_t * torch.expm1(-2.0 * h)).to(x.dtype)
                c_z = (s_t * torch.sqrt(-torch.expm1(-2.0 * h))).to(x.dtype)
                xa = _bcast(c_x, xa) * xa + _bcast(c_d, xa) * d + _bcast(c_z, xa) * _randn(xa, generator)
            else:
                c_x = (s_t / s_s).to(x.dtype)
                c_d = (-a_t * torch.expm1(-h)).to(x.dtype)
                xa = _bcast(c_x, xa) * xa + _bcast(c_d, xa) * d
            if rows is None:
                d_prev, lam_prev = d0, lam_s
            else:
                d_prev = d_prev.index_copy(0, rows, d0)
                lam_prev = lam_prev.index_copy(0, rows, lam_s)
        x = xa if rows is None else x.index_copy(0, rows, xa)
        if bar is not None:
            bar.update(1)
    return x
