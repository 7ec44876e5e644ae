"""Reverse-time samplers: Euler–Maruyama, predictor–corrector and the probability-flow ODE.

Song et al. 2020 (score_sde_pytorch ``sampling.py``): the reverse SDE (Song Eq. 6 / paper Eq. 3) is
integrated by Euler–Maruyama or by the reverse-diffusion predictor + Langevin corrector (Song
Sec. 4.2), the probability-flow ODE (Song Eq. 13 / paper Eq. 5) by RK45. Every sampler can start
from the prior at ``t = 1`` or from given noisy images ``x_t`` at a per-sample time ``t_start``
(Algorithm 1 of the paper diffuses ``x_p`` to ``t`` and denoises it back), EM and PC with a per-sample
step count as well (one call, each trajectory on its own grid ``linspace(t_start_i, eps, steps_i + 1)``).
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from scipy import integrate
from tqdm.auto import tqdm

from safcore.runtime.batching import in_micro_batches
from safcore.runtime.device import bf16_autocast
from safcore.runtime.progress import progress_bar
from safcore.generators.sde import SDE, VPSDE, ReverseSDE

__all__ = ["SampleResult", "sample", "tweedie_denoise", "METHODS", "Method", "FINAL_STEPS", "FinalStep", "LOGSNR_METHODS",
           "TIME_SOLVER_METHODS", "reverse_steps"]

Method = Literal["euler_maruyama", "pc", "ode", "dpm2m", "dpm2m_sde", "dpm2m_t", "dpm2m_sde_t"]
METHODS: tuple[str, ...] = ("euler_maruyama", "pc", "ode", "dpm2m", "dpm2m_sde", "dpm2m_t", "dpm2m_sde_t")
#: Methods whose grid is uniform in the half log-SNR λ (:mod:`safcore.generators.solvers`), not in t.
LOGSNR_METHODS: tuple[str, ...] = ("dpm2m", "dpm2m_sde")
#: DPM-Solver++ (2M) on a grid uniform in t (as Euler–Maruyama's; a run from t takes ``steps_for`` steps).
TIME_SOLVER_METHODS: tuple[str, ...] = ("dpm2m_t", "dpm2m_sde_t")
FinalStep = Literal["tweedie", "noise_free"]
FINAL_STEPS: tuple[str, ...] = ("tweedie", "noise_free")
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True, eq=False)
class SampleResult:
    """Samples and what they cost.

    Attributes:
        images: ``(B, C, H, W)`` float32 in the MODEL range ``[-1, 1]`` (not clipped).
        nfe: score-network evaluations of a trajectory, the largest over trajectories (EM: ``steps``;
            PC: ``steps·(1 + corrector steps)``; ODE: the solver's ``nfev``, the largest over batches).
        n_images: ``B``.
        method: the sampler used.
        steps: time steps taken, the largest over trajectories (ODE: accepted RK45 steps, the largest
            over batches).
        nfe_per_sample: int64 ``(B,)`` on the CPU, the score-network evaluations each trajectory
            actually received (EM: its ``steps_i``; PC: ``steps_i·(1 + corrector steps)``; ODE: the
            ``nfev`` of its batch). With per-sample step counts the entries differ; their sum is the
            number of images the network evaluated.
    """

    images: torch.Tensor = field(repr=False)
    nfe: int
    n_images: int
    method: str
    steps: int
    nfe_per_sample: torch.Tensor | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return f"{self.method:<14} | {self.n_images:>6} images | steps {self.steps:>5} | NFE {self.nfe:>5}"


def _check_time_start(
    t_start: float | torch.Tensor, eps: float, batch: int, device: torch.device
) -> torch.Tensor:
    ts = torch.as_tensor(t_start, dtype=torch.float32).detach().to("cpu")
    if ts.ndim == 0:
        ts = ts.expand(batch).clone()
    elif ts.shape != (batch,):
        raise ValueError(f"t_start must be a float or a tensor of shape ({batch},), got shape {tuple(ts.shape)}")
    if not bool(torch.isfinite(ts).all()) or bool((ts < 0).any()) or bool((ts > 1).any()):
        raise ValueError(f"t_start must lie in [0, 1], got values in [{ts.min().item():g}, {ts.max().item():g}]")
    if bool((ts <= eps).any()):
        raise ValueError(f"t_start must be > eps={eps:g} (the end time), got min t_start={ts.min().item():g}")
    return ts.to(device)


def _check_steps(steps: int | torch.Tensor | Sequence[int], batch: int) -> int | torch.Tensor:
    """``steps`` as an int (one count for every trajectory) or an int64 CPU tensor ``(B,)`` of per-sample counts."""
    if isinstance(steps, numbers.Integral) and not isinstance(steps, bool):
        if steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        return int(steps)
    if isinstance(steps, (bool, str, bytes, numbers.Number)) or steps is None:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    st = torch.as_tensor(steps).detach().to("cpu")
    if st.ndim == 0 and not (st.dtype.is_floating_point or st.dtype.is_complex or st.dtype == torch.bool):
        return _check_steps(int(st), batch)
    if st.dtype.is_floating_point or st.dtype.is_complex or st.dtype == torch.bool:
        raise ValueError(f"per-sample steps must be integers, got dtype {st.dtype}")
    if st.shape != (batch,):
        raise ValueError(f"steps must be an integer or a tensor of shape ({batch},), got shape {tuple(st.shape)}")
    if bool((st < 1).any()):
        raise ValueError(f"steps must be integers >= 1, got min {int(st.min())}")
    return st.to(torch.int64)


def _default_device(score_fn: ScoreFn, generator: torch.Generator | None) -> torch.device:
    if isinstance(score_fn, torch.nn.Module):
        with contextlib.suppress(StopIteration):
            return next(score_fn.parameters()).device
    if generator is not None:
        return torch.device(generator.device)
    return torch.device("cpu")


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def _randn(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """N(0, I) like ``x``, drawn on the generator's device (a CPU generator also drives GPU sampling)."""
    if generator is None or generator.device == x.device:
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device).to(x.device)


def _wrap_score(score_fn: ScoreFn, autocast_bf16: bool) -> ScoreFn:
    """Score in float32, optionally computed under bf16 autocast (≈1.5× faster on AVX512-BF16 CPUs), in
    micro-batches inside a :func:`safcore.runtime.batching.forward_batch` block (no draw changes)."""

    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with bf16_autocast(x.device, autocast_bf16):
            out = in_micro_batches(lambda rows: score_fn(x[rows], t if t.ndim == 0 else t[rows]), x.shape[0])
        return out.float()

    return call


def _langevin_alpha(sde: SDE, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """score_sde's ``alpha`` factor of the Langevin step size, shape ``(B,)``.

    VP: ``α_i = 1 - β_i`` with the discrete ``β_i = β(t)·h`` (score_sde reads ``sde.alphas``).
    Sub-VP has no discrete DDPM chain (score_sde crashes reading ``sde.alphas``); we use the
    ``α = 1`` convention of its VE branch: the step is then set by the SNR alone, ``ε = 2 (r‖z‖/‖s‖)²``,
    which is the textbook Langevin step size targeting a signal-to-noise ratio ``r``.
    """
    if isinstance(sde, VPSDE):
        return (1.0 - sde.beta(t) * h).clamp_min(1e-4)
    return torch.ones_like(t)


def _langevin_step(
    score: ScoreFn,
    sde: SDE,
    x: torch.Tensor,
    t: torch.Tensor,
    h: torch.Tensor,
    snr: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One Langevin corrector step (Song Sec. 4.2): ``x + ε s(x,t) + sqrt(2ε) z`` with
    ``ε = 2α (snr·‖z‖ / ‖s‖)²`` per sample (norms per sample, not batch means as in score_sde,
    because one batch may mix very different ``t``)."""
    grad = score(x, t)
    noise = _randn(x, generator)
    grad_norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
    noise_norm = noise.flatten(1).norm(dim=1)
    step = 2.0 * _langevin_alpha(sde, t, h) * (snr * noise_norm / grad_norm) ** 2
    return x + _bcast(step, x) * grad + _bcast(torch.sqrt(2.0 * step), x) * noise


def tweedie_denoise(score: ScoreFn, sde: SDE, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Tweedie's formula ``E[x_0 | x_t] = (x_t + σ_t² ∇log p_t(x_t)) / a_t`` for the Gaussian kernel
    ``p_0t = N(a_t x_0, σ_t² I)`` of any linear-drift SDE; ``x`` (B, C, H, W), ``t`` (B,). One NFE."""
    a_t, sigma_t = sde.marginal_prob(torch.ones_like(t), t)
    return (x + _bcast(sigma_t**2, x) * score(x, t)) / _bcast(a_t, x)


def _sde_grid(ts: torch.Tensor, steps: int | torch.Tensor, eps: float) -> tuple[int, torch.Tensor, torch.Tensor | None]:
    """``(K, h, start)``: the iterations of a batch, each sample's step size ``h_i = (t_start_i - eps)/steps_i``
    (computed as a run with ``steps_i`` steps alone computes it) and, on the CPU, the iteration at which each
    sample takes its first step (``K - steps_i``; ``None`` when every sample takes all ``K``)."""
    if isinstance(steps, int):
        return steps, (ts - eps) / steps, None
    steps = steps.to("cpu", torch.int64)
    n_iter = int(steps.max())
    h = torch.empty_like(ts)
    for s in torch.unique(steps).tolist():  # the same division (by a Python int) as a run with s steps
        m = (steps == s).to(ts.device)
        h[m] = (ts[m] - eps) / int(s)
    start = n_iter - steps
    return n_iter, h, (start if bool((start > 0).any()) else None)


def _sample_sde(
    score: ScoreFn,
    sde: SDE,
    x: torch.Tensor,
    ts: torch.Tensor,
    *,
    method: str,
    steps: int | torch.Tensor,
    eps: float,
    snr: float,
    corrector_steps: int,
    final_step: str,
    generator: torch.Generator | None,
    bar: tqdm | None,
) -> torch.Tensor:
    """Integrate the reverse SDE on each sample's uniform grid ``t_{i,j} = t_start_i - j·h_i``,
    ``h_i = (t_start_i - eps)/steps_i``, ``j = 0..steps_i-1`` (the points of
    ``linspace(t_start_i, eps, steps_i + 1)`` but the last). The last step (from ``t = eps + h_i``) is
    Tweedie's denoiser (``final_step="tweedie"``) or the step without its noise (``"noise_free"``,
    score_sde's ``denoise``).

    ``steps`` is one count for all samples or an int64 tensor ``(B,)``. With per-sample counts the
    batch runs ``K = max_i steps_i`` iterations and sample i joins at iteration ``K - steps_i`` (its
    grid is padded at the front). Until it joins it is left out of everything — score evaluations,
    corrector steps, noise draws — so padding is an exact no-op for every method and its trajectory
    (time grid, step count, corrector steps, last step) is that of a run with ``steps_i`` steps alone;
    every sample takes its last step at iteration ``K - 1``. The network evaluates only the moving
    samples: a trajectory costs its own ``steps_i`` (× ``1 + corrector_steps`` for PC) evaluations."""
    rsde: ReverseSDE = sde.reverse(score, probability_flow=False)
    n_iter, h, start = _sde_grid(ts, steps, eps)
    sqrt_h = torch.sqrt(h)
    if start is not None:
        start_dev = start.to(ts.device)
        n_moving, rows_all = -1, None
    for k in range(n_iter):
        last = k == n_iter - 1
        rows = None  # the samples that move at this iteration (None: all of them)
        if start is None:
            xa, ta, ha, sha = x, ts - k * h, h, sqrt_h
        else:
            j = (k - start_dev).to(ts.dtype)  # each sample's own step index (negative: not joined yet)
            moving = start <= k  # on the CPU: no device sync
            if int(moving.sum()) != n_moving:  # the moving set grows at a few iterations only
                n_moving = int(moving.sum())
                rows_all = None if n_moving == x.shape[0] else torch.nonzero(moving).squeeze(1).to(x.device)
            rows = rows_all
            if rows is None:
                xa, ta, ha, sha = x, ts - j * h, h, sqrt_h
            else:
                ha, sha = h[rows], sqrt_h[rows]
                xa, ta = x[rows], ts[rows] - j[rows] * ha
        if method == "pc":  # Langevin corrector(s) at t before the predictor (Song Sec. 4.2)
            for _ in range(corrector_steps):
                xa = _langevin_step(score, sde, xa, ta, ha, snr, generator)
        if last and final_step == "tweedie":
            xa = tweedie_denoise(score, sde, xa, ta)
        elif method == "euler_maruyama":
            # x_{t-h} = x_t - h·[f - g² s] + g √h z   (Euler–Maruyama on Song Eq. 6)
            drift, diffusion = rsde.sde(xa, ta)
            x_mean = xa - _bcast(ha, xa) * drift
            xa = x_mean if last else x_mean + _bcast(diffusion * sha, xa) * _randn(xa, generator)
        else:  # "pc" predictor: reverse diffusion x - rev_f + rev_G z (Song App. E)
            rev_f, rev_g = rsde.discretize(xa, ta, ha)
            x_mean = xa - rev_f
            xa = x_mean if last else x_mean + _bcast(rev_g, xa) * _randn(xa, generator)
        x = xa if rows is None else x.index_copy(0, rows, xa)
        if bar is not None:
            bar.update(1)
    return x


def _sample_ode(
    score: ScoreFn,
    sde: SDE,
    x: torch.Tensor,
    ts: torch.Tensor,
    *,
    eps: float,
    rtol: float,
    atol: float,
    bar: tqdm | None,
) -> tuple[torch.Tensor, int, int]:
    """RK45 on the probability-flow ODE in normalised time ``s ∈ [0, 1]``, ``t_i(s) = t_i + s (eps - t_i)``:
    ``dx/ds = (eps - t_i) · [f(x, t) - ½ g(t)² s(x, t)]``. Returns ``(x_eps, nfev, accepted steps)``."""
    rsde = sde.reverse(score, probability_flow=True)
    shape, device = x.shape, x.device
    span = eps - ts  # dt/ds, negative, shape (B,)

    def ode_func(s: float, y: np.ndarray) -> np.ndarray:
        xs = torch.from_numpy(y.astype(np.float32)).to(device).reshape(shape)
        t = ts + s * span
        with torch.inference_mode():
            drift, _ = rsde.sde(xs, t)
            dx = _bcast(span, xs) * drift
        if bar is not None:
            bar.update(1)
        return dx.detach().to("cpu", torch.float64).reshape(-1).numpy()

    y0 = x.detach().to("cpu", torch.float64).reshape(-1).numpy()
    sol = integrate.solve_ivp(ode_func, (0.0, 1.0), y0, method="RK45", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"probability-flow ODE solver failed: {sol.message}")
    out = torch.from_numpy(sol.y[:, -1].astype(np.float32)).reshape(shape).to(device)
    return out, int(sol.nfev), int(len(sol.t) - 1)


def reverse_steps(sde: SDE, method: str, t: float, steps_full: int, eps: float) -> int:
    """Steps of a reverse run of ``method`` from ``t`` with the step size of a full run of ``steps_full`` steps:
    :func:`safcore.generators.base.steps_for` (a grid uniform in t) or, for :data:`LOGSNR_METHODS`,
    :func:`safcore.generators.solvers.logsnr_steps` (a grid uniform in λ)."""
    if method in LOGSNR_METHODS:
        from safcore.generators.solvers import logsnr_steps

        return logsnr_steps(sde, t, steps_full, eps)
    from safcore.generators.base import steps_for

    return steps_for(t, steps_full, eps)


def _chunks(n: int, batch_size: int | None) -> Iterator[slice]:
    size = n if batch_size is None else batch_size
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def sample(
    score_fn: ScoreFn,
    sde: SDE,
    *,
    shape: tuple[int, int, int, int] | None = None,
    x_t: torch.Tensor | None = None,
    t_start: float | torch.Tensor = 1.0,
    method: Method = "euler_maruyama",
    steps: int | torch.Tensor | Sequence[int] = 100,
    eps: float = 1e-3,
    snr: float = 0.16,
    corrector_steps: int = 1,
    final_step: FinalStep = "tweedie",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    autocast_bf16: bool = False,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> SampleResult:
    """Draw samples by integrating the reverse-time process from ``t_start`` down to ``eps``.

    Args:
        score_fn: ``(x (B,C,H,W) model range, t (B,)) -> score (B,C,H,W)``, e.g. a ``ScoreModel``.
        sde: the forward SDE the score belongs to.
        shape: ``(B, C, H, W)``: start from the prior ``N(0, I)`` at ``t = T = 1``.
        x_t: ``(B, C, H, W)`` noisy images in model range to start from at ``t_start`` (Algorithm 1).
        t_start: start time, a float or a ``(B,)`` tensor with one start time per sample; trajectory
            i takes ``steps_i`` steps on its own uniform grid ``linspace(t_start_i, eps, steps_i + 1)``.
        method: ``"euler_maruyama"`` (Song Eq. 6, NFE = steps), ``"pc"`` (reverse-diffusion
            predictor + Langevin corrector, NFE = steps·(1 + corrector_steps)) or ``"ode"``
            (probability-flow ODE, Song Eq. 13, RK45 with ``rtol``/``atol``; NFE = nfev; ``steps``
            is not used), ``"dpm2m"`` (DPM-Solver++ (2M) of the probability-flow ODE, NFE = steps) or
            ``"dpm2m_sde"`` (its SDE variant, NFE = steps); these two run on a grid uniform in λ from each
            ``t_start_i`` (:mod:`safcore.generators.solvers`) and end with ``x̂_0`` (``final_step`` does not apply).
        steps: time steps of every trajectory (an int), or per sample (an integer tensor or sequence
            of shape ``(B,)``). Per-sample counts keep one call for trajectories of different lengths
            (Algorithm 1 batches several t, each with its own ``steps(t)``): a batch runs
            ``max_i steps_i`` iterations, a shorter trajectory joins late (its grid padded at the
            front) and is left out of every network evaluation, corrector step and noise draw until
            then, so each trajectory has exactly the time grid, step count and last step of a run
            with ``steps_i`` steps alone (its images differ from such a run only by how the noise is
            drawn), and costs only its own evaluations (``nfe_per_sample``).
        eps: end of the time grid (score_sde: 1e-3); the ODE ends exactly there.
        final_step: how EM and PC take their last step, from ``t = eps + h``: ``"tweedie"`` jumps
            to ``E[x_0 | x_t]`` (Tweedie's formula, same NFE), ``"noise_free"`` takes the usual step
            without its noise (score_sde's ``denoise``). For sub-VP, ``σ_t ≈ ∫β`` is linear in t
            near 0, so ``g² h / σ_t²`` exceeds 2 on the last uniform step even at 200 steps and the
            plain step amplifies the remaining noise; Tweedie removes it.
        snr: signal-to-noise ratio of the Langevin corrector (score_sde: 0.16).
        generator: source of all randomness (prior and step noise); the result depends on
            ``batch_size`` since batches draw in sequence.
        batch_size: trajectories integrated together (``None``: all at once).
        autocast_bf16: evaluate the score under bf16 autocast (the state stays float32).
        device: where to integrate; default the score model's device, else the generator's, else CPU.
        progress: show a tqdm progress bar.

    Returns:
        :class:`SampleResult` with images in the model range on ``device``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown sampler method {method!r}; allowed: {', '.join(map(repr, METHODS))}")
    if isinstance(steps, bool) or (isinstance(steps, numbers.Number) and not isinstance(steps, numbers.Integral)):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if isinstance(steps, numbers.Integral) and steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not (0.0 < eps < 1.0):
        raise ValueError(f"eps (the end time) must lie in (0, 1), got {eps!r}")
    if not snr > 0:
        raise ValueError(f"snr must be > 0, got {snr!r}")
    if isinstance(corrector_steps, bool) or not isinstance(corrector_steps, numbers.Integral) or corrector_steps < 1:
        raise ValueError(f"corrector_steps must be an integer >= 1, got {corrector_steps!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"batch_size must be None or an integer >= 1, got {batch_size!r}")
    if final_step not in FINAL_STEPS:
        raise ValueError(f"unknown final_step {final_step!r}; allowed: {', '.join(map(repr, FINAL_STEPS))}")
    if (shape is None) == (x_t is None):
        raise ValueError("give exactly one of shape= (start from the prior) or x_t= (start from noisy images)")

    if x_t is not None:
        if x_t.ndim != 4:
            raise ValueError(f"x_t must have shape (B, C, H, W), got {tuple(x_t.shape)}")
        dev = torch.device(device) if device is not None else x_t.device
        x0 = x_t.detach().to(dev, torch.float32)
    else:
        if len(shape) != 4 or any(int(s) < 1 for s in shape):
            raise ValueError(f"shape must be (B, C, H, W) with positive sizes, got {shape!r}")
        if isinstance(t_start, torch.Tensor) or float(t_start) != sde.T:
            raise ValueError(
                f"sampling from the prior starts at t = T = {sde.T}; got t_start={t_start!r} "
                "(pass x_t= to start from noisy images at another time)"
            )
        dev = torch.device(device) if device is not None else _default_device(score_fn, generator)
        gen_dev = generator.device if generator is not None else dev
        x0 = sde.prior_sampling(tuple(int(s) for s in shape), generator=generator, device=gen_dev).float().to(dev)
    n = x0.shape[0]
    ts_all = _check_time_start(t_start, eps, n, dev)
    steps_all = _check_steps(steps, n)  # an int, or int64 (B,) on the CPU
    score = _wrap_score(score_fn, autocast_bf16)

    chunks = list(_chunks(n, batch_size))
    corrector_steps = int(corrector_steps)
    per_step = 1 if method == "euler_maruyama" else 1 + corrector_steps  # evaluations per step of a trajectory

    def chunk_steps(sl: slice) -> int | torch.Tensor:
        return steps_all if isinstance(steps_all, int) else steps_all[sl]

    def iterations(sl: slice) -> int:
        st = chunk_steps(sl)
        return st if isinstance(st, int) else int(st.max())

    total = None if method == "ode" else sum(iterations(sl) for sl in chunks)
    unit = "nfe" if method == "ode" else "step"
    bar = progress_bar(total=total, desc=f"sampling ({method})", unit=unit, enabled=progress, leave=False)
    outs, nfe_parts, taken = [], [], []
    try:
        with torch.inference_mode():
            for sl in chunks:
                x, ts = x0[sl], ts_all[sl]
                m = x.shape[0]
                if method == "ode":
                    out, nfev, n_steps = _sample_ode(score, sde, x, ts, eps=eps, rtol=rtol, atol=atol, bar=bar)
                    nfe_parts.append(torch.full((m,), nfev, dtype=torch.int64))
                    taken.append(n_steps)
                elif method in LOGSNR_METHODS + TIME_SOLVER_METHODS:
                    from safcore.generators.solvers import dpm_solver_2m

                    st = chunk_steps(sl)
                    out = dpm_solver_2m(score, sde, x, ts, steps=st, eps=eps, stochastic="_sde" in method,
                                        spacing="time" if method in TIME_SOLVER_METHODS else "logsnr",
                                        generator=generator, bar=bar)
                    st_vec = torch.full((m,), st, dtype=torch.int64) if isinstance(st, int) else st.clone()
                    nfe_parts.append(st_vec)
                    taken.append(iterations(sl))
                else:
                    st = chunk_steps(sl)
                    out = _sample_sde(
                        score, sde, x, ts, method=method, steps=st, eps=eps, snr=snr,
                        corrector_steps=corrector_steps, final_step=final_step, generator=generator, bar=bar,
                    )
                    st_vec = torch.full((m,), st, dtype=torch.int64) if isinstance(st, int) else st.clone()
                    nfe_parts.append(st_vec * per_step)
                    taken.append(iterations(sl))
                outs.append(out)
    finally:
        bar.close()
    images = torch.cat(outs)  # outside inference_mode: a normal tensor
    nfe_per_sample = torch.cat(nfe_parts)
    return SampleResult(images=images, nfe=int(nfe_per_sample.max()), n_images=n, method=method, steps=max(taken),
                        nfe_per_sample=nfe_per_sample)

