"""A user's diffusers model as the generator under audit: a ``UNet2DModel`` and its own scheduler.

Most hospital teams train with diffusers: a ``UNet2DModel`` with a ``DDPMScheduler`` (or DDIM), saved
as a pipeline folder. The scheduler *is* the library's definition of that model's forward and reverse
process (β schedule, prediction type, variance, clipping), so :class:`DiffusersModel` takes both from
it instead of re-deriving them:

- **forward** (Ho et al. 2020, Eq. 4): ``x_k = sqrt(ᾱ_k) x_0 + sqrt(1 − ᾱ_k) ε`` — ``scheduler.add_noise``;
- **reverse**: ``scheduler.step`` over ``scheduler.timesteps`` after ``set_timesteps(steps)``, exactly as
  ``DDPMPipeline`` / ``DDIMPipeline`` sample (same noise draws for the same generator).

Algorithm 1 on such a model maps the probe's continuous grid ``t ∈ (0, 1]`` to the training timestep
``k(t) = ceil(t · T) − 1`` (``T = num_train_timesteps``; ``t = 1`` → ``T − 1``), diffuses ``x_p`` with
``add_noise`` to the first inference timestep ``≤ k(t)`` and runs the scheduler's steps from there down
— the img2img / SDEdit convention of diffusers' pipelines (``strength = t``). For the linear β
schedule (1e-4 … 0.02, T = 1000) this is the discretised VP SDE (β_min = 0.1, β_max = 20) of Song et
al. 2020, so ``t`` means the same fraction of the forward process as for safcore's own sub-VP models.

Loading (:func:`load_model`) treats a model folder as data, never as code: weights only from
safetensors, the scheduler class only from an allow-list (:data:`SCHEDULERS`), no ``trust_remote_code``.

Images: unit range ``[0, 1]`` outside, model range ``[-1, 1]`` inside (diffusers' convention).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from safcore.generators.score_model import UNetBacked
from safcore.runtime.device import bf16_autocast
from safcore.runtime.progress import progress_bar

if TYPE_CHECKING:
    from diffusers import SchedulerMixin, UNet2DModel

__all__ = ["SCHEDULERS", "DiffusersModel", "ModelLoadError", "model_identity"]

#: Schedulers whose ``step`` safcore drives (class names as diffusers saves them in ``scheduler_config.json``).
SCHEDULERS: tuple[str, ...] = ("DDPMScheduler", "DDIMScheduler")
SchedulerChoice = Literal["model", "ddpm", "ddim"]
_CHOICE_CLASS = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler"}


class ModelLoadError(ValueError):
    """A model folder or id that safcore cannot audit; the message says why and what is allowed."""


def _scheduler_class(name: str) -> type:
    import diffusers

    if name not in SCHEDULERS:
        raise ModelLoadError(f"scheduler {name!r} is not supported; allowed: {', '.join(SCHEDULERS)}")
    return getattr(diffusers, name)


@dataclass
class SampleOutput:
    """Images a :class:`DiffusersModel` drew: ``images`` (n, C, H, W) in model range, ``nfe`` per image."""

    images: torch.Tensor
    nfe: int


class DiffusersModel(UNetBacked):
    """A diffusers ``UNet2DModel`` driven by its own scheduler (DDPM or DDIM).

    Args:
        unet: the trained network; any prediction type its scheduler names (``epsilon``,
            ``v_prediction``, ``sample``). Any module called as ``unet(x, timestep).sample`` with a
            diffusers-like ``config`` (``in_channels``, ``sample_size``) works (known-answer tests).
        scheduler: the scheduler it was trained with; used as a template (each call works on a fresh
            copy made with ``from_config``, so set_timesteps never leaks between calls).
        source: where the model came from (shown in reports).
        eta: DDIM's η (0: deterministic DDIM; ignored by DDPM).

    The probe and the audit treat it like a :class:`safcore.generators.score_model.ScoreModel`: see :meth:`diffuse`,
    :meth:`reverse`, :meth:`sample`, :meth:`marginal_std`.
    """

    sde = None  # no SDE: the scheduler defines forward and reverse

    def __init__(self, unet: UNet2DModel | torch.nn.Module, scheduler: SchedulerMixin, *, source: str = "",
                 eta: float = 0.0) -> None:
        name = type(scheduler).__name__
        if name not in SCHEDULERS:
            raise ModelLoadError(f"scheduler {name!r} is not supported; allowed: {', '.join(SCHEDULERS)}")
        if not 0.0 <= float(eta) <= 1.0:
            raise ValueError(f"eta = {eta!r}; allowed: a number in [0, 1]")
        self.unet = unet
        self.scheduler = scheduler
        self.source = str(source)
        self.eta = float(eta)
        self.prediction_type = str(scheduler.config.prediction_type)

    def __repr__(self) -> str:
        cfg = self.scheduler.config
        return (f"DiffusersModel({self.source or 'in memory'!s}: {type(self.scheduler).__name__}, "
                f"{cfg.beta_schedule}, {self.prediction_type}, T={cfg.num_train_timesteps}, "
                f"{self.channels}×{self.image_size}×{self.image_size})")

    # ------------------------------------------------------------------ what it is
    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def to(self, device: str | torch.device) -> DiffusersModel:
        self.unet.to(device)
        return self

    def eval(self) -> DiffusersModel:
        self.unet.eval()
        return self

    def with_scheduler(self, choice: SchedulerChoice, eta: float | None = None) -> DiffusersModel:
        """The same network under another scheduler built from this one's config (``"model"``: unchanged).

        ``"ddim"`` on a DDPM-trained network is DDIM sampling of that model (Song et al. 2021), as
        ``DDIMScheduler.from_config(ddpm.config)`` gives it in diffusers."""
        if choice == "model":
            return self if eta is None else DiffusersModel(self.unet, self.scheduler, source=self.source, eta=eta)
        if choice not in _CHOICE_CLASS:
            raise ValueError(f"scheduler choice {choice!r}; allowed: 'model', 'ddpm', 'ddim'")
        scheduler = _scheduler_class(_CHOICE_CLASS[choice]).from_config(self.scheduler.config)
        return DiffusersModel(self.unet, scheduler, source=self.source, eta=self.eta if eta is None else eta)

    def _fresh(self, steps: int) -> SchedulerMixin:
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= self.num_train_timesteps:
            raise ValueError(f"steps = {steps!r} inference steps; allowed: an integer in [1, {self.num_train_timesteps}] "
                             "(the scheduler's num_train_timesteps)")
        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        scheduler.set_timesteps(int(steps))
        return scheduler

    # ------------------------------------------------------------------ t ↔ timesteps
    def timestep(self, t: float) -> int:
        """The training timestep ``k(t) = ceil(t · T) − 1`` for ``t ∈ (0, 1]`` (``t = 1`` → ``T − 1``)."""
        if not 0.0 < float(t) <= 1.0:
            raise ValueError(f"t = {t!r}; allowed: (0, 1]")
        T = self.num_train_timesteps
        t = round(float(t), 6)  # the probe passes t as float32 (0.2 → 0.200000003); grids have ≤ 6 decimals
        return min(T - 1, max(0, math.ceil(round(t * T, 9)) - 1))

    def timesteps_from(self, t: float, steps: int) -> torch.Tensor:
        """The inference timesteps (of ``set_timesteps(steps)``) a reverse run from ``t`` takes: those ``≤ k(t)``.

        ``steps`` is the number of inference steps of a FULL run (``t = 1``); a run from ``t`` takes
        the tail of that schedule, so its step size is that of a full run (as the probe's sub-VP runs)."""
        timesteps = self._fresh(steps).timesteps
        return self._tail(timesteps, t)

    def _tail(self, timesteps: torch.Tensor, t: float) -> torch.Tensor:
        tail = timesteps[timesteps <= self.timestep(t)]
        if tail.numel() == 0:  # t below the schedule's last timestep: start at the last one
            tail = timesteps[-1:]
        return tail

    @property
    def dtype(self) -> torch.dtype:
        """The dtype :meth:`eps` computes in (the network's float32)."""
        return torch.float32

    @property
    def t_min(self) -> float:
        """The smallest probe time, ``1 / T``: the first training timestep ``k = 0``."""
        return 1.0 / self.num_train_timesteps

    def _k(self, t: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self.timestep(float(s)) for s in t.detach().cpu().tolist()], dtype=torch.long)

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a_t, σ_t) = (sqrt(ᾱ_k), sqrt(1 − ᾱ_k))`` at ``k(t)`` (Ho et al. 2020, Eq. 4), each ``(B,)``."""
        abar = self.scheduler.alphas_cumprod.double()[self._k(t)].to(t.device, t.dtype)
        return abar.sqrt(), (1.0 - abar).sqrt()

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε̂ of the U-Net at the training timestep ``k(t)``, shape of ``x``.

        A ``"sample"`` (x_0) or ``"v_prediction"`` network is turned into ε: ``ε = (x − a x̂_0) / σ``,
        ``ε = a v + σ x`` (Salimans & Ho 2022, with ``a² + σ² = 1``)."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        out = self.unet(x, self._k(t).to(x.device))
        out = (out.sample if hasattr(out, "sample") else out).to(x.dtype)
        if self.prediction_type == "epsilon":
            return out
        a, s = (c.reshape(-1, 1, 1, 1) for c in self.coefficients(t))
        if self.prediction_type == "sample":
            return (x - a * out) / s
        if self.prediction_type == "v_prediction":
            return a * out + s * x
        raise ValueError(f"prediction_type {self.prediction_type!r}; allowed: epsilon, sample, v_prediction")

    def time_for_ratio(self, ratio: float) -> float:
        """The training timestep ``k'`` whose ``sqrt((1 − ᾱ_k')/ᾱ_k')`` is closest to ``ratio`` in log scale, as
        ``t = (k' + 0.5)/T``, which :meth:`timestep` maps back to exactly ``k'`` (``ceil(t·T) − 1``)."""
        abar = self.scheduler.alphas_cumprod.double().cpu().numpy()
        with np.errstate(divide="ignore"):
            log_ratios = 0.5 * (np.log1p(-abar) - np.log(abar))
        k = int(np.argmin(np.abs(log_ratios - math.log(ratio))))
        t = (k + 0.5) / len(abar)
        if self.timestep(t) != k:  # cannot happen for T ≤ 10⁵ (timestep rounds t to 6 decimals)
            raise ValueError(f"t={t!r} does not map back to timestep {k} of T={len(abar)}")
        return t

    def marginal_std(self, ts: Sequence[float] | np.ndarray) -> np.ndarray:
        """``σ = sqrt(1 − ᾱ_{k(t)})`` of ``q(x_k | x_0)`` for each t (the forward kernel's noise std), shape (T,)."""
        alphas = self.scheduler.alphas_cumprod.double()
        return np.array([math.sqrt(1.0 - float(alphas[self.timestep(t)])) for t in np.asarray(ts, dtype=np.float64).reshape(-1)])

    # ------------------------------------------------------------------ forward and reverse
    def diffuse(self, x0: torch.Tensor, t_vec: torch.Tensor, steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``x_k ~ q(x_k | x_0)`` with ``scheduler.add_noise`` at the first timestep of :meth:`timesteps_from`.

        Args:
            x0: ``(B, C, H, W)`` model range.
            t_vec: ``(B,)`` times in (0, 1].
            steps: inference steps of a full run.
        Returns:
            ``(B, C, H, W)`` model range.
        """
        scheduler = self._fresh(steps)  # one schedule for the batch, not one per sample
        starts = torch.stack([self._tail(scheduler.timesteps, float(t))[0] for t in t_vec.tolist()])
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return scheduler.add_noise(x0, noise, starts.to(x0.device))

    def _unet(self, x: torch.Tensor, timestep: torch.Tensor, autocast_bf16: bool) -> torch.Tensor:
        with bf16_autocast(x.device, autocast_bf16):
            out = self.unet(x, timestep)
        out = out.sample if hasattr(out, "sample") else out
        return out.float()

    def _run(self, x: torch.Tensor, timesteps: torch.Tensor, scheduler: SchedulerMixin, generator, autocast_bf16: bool,
             bar=None) -> torch.Tensor:
        extra = {"eta": self.eta} if type(scheduler).__name__ == "DDIMScheduler" else {}
        for k in timesteps:
            out = self._unet(x, k.to(x.device), autocast_bf16)
            x = scheduler.step(out, k, x, generator=generator, **extra).prev_sample
            if bar is not None:
                bar.update(x.shape[0])
        return x

    @torch.inference_mode()
    def reverse(self, x_t: torch.Tensor, t_vec: torch.Tensor, steps: int, generator: torch.Generator | None = None,
                *, autocast_bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the scheduler's reverse steps from each sample's start ``t`` down to timestep 0.

        Samples that share a ``t`` run together (one scheduler, one timestep at a time, as the pipelines do).

        Returns:
            ``(images (B, C, H, W) model range, nfe (B,) int64)``, the network evaluations per trajectory.
        """
        out = torch.empty_like(x_t, dtype=torch.float32)
        nfe = torch.zeros(x_t.shape[0], dtype=torch.int64)
        ts = t_vec.detach().cpu()
        for t in sorted(set(ts.tolist()), reverse=True):
            rows = (ts == t).nonzero(as_tuple=True)[0]
            scheduler = self._fresh(steps)
            tail = self._tail(scheduler.timesteps, t)
            x = x_t[rows.to(x_t.device)].to(self.device, torch.float32)
            out[rows.to(out.device)] = self._run(x, tail, scheduler, generator, autocast_bf16).to(out.device)
            nfe[rows] = int(tail.numel())
        return out, nfe

    @torch.inference_mode()
    def sample(self, n: int, *, steps: int, generator: torch.Generator | None = None, batch_size: int | None = None,
               autocast_bf16: bool = False, progress: bool = True) -> SampleOutput:
        """``n`` images from the prior, ``x_T ~ N(0, σ_init² I)``, through all ``steps`` scheduler steps.

        With one batch this is ``DDPMPipeline(unet, scheduler)(n, generator, steps, output_type="pt")``
        step for step (same draws), before its ``(x + 1) / 2`` clamp.
        """
        from diffusers.utils.torch_utils import randn_tensor

        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n = {n!r} images; allowed: an integer ≥ 1")
        size = n if batch_size is None else int(batch_size)
        outs = []
        bar = progress_bar(total=n * steps, desc=f"sampling ({type(self.scheduler).__name__})", unit="nfe",
                           enabled=progress, leave=False)
        try:
            for start in range(0, n, size):
                b = min(size, n - start)
                scheduler = self._fresh(steps)
                shape = (b, self.channels, self.image_size, self.image_size)
                x = randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)
                x = x * scheduler.init_noise_sigma
                outs.append(self._run(x, scheduler.timesteps, scheduler, generator, autocast_bf16, bar).cpu())
        finally:
            bar.close()
        return SampleOutput(images=torch.cat(outs), nfe=int(steps))

    def identity(self) -> dict:
        """What the run store keys this model's samples and probes by: its weights' and configs' hashes."""
        return model_identity(self.unet, self.scheduler, eta=self.eta)


def model_identity(unet, scheduler=None, **extra) -> dict:
    """sha256 of a network's parameters and buffers (and its scheduler's config): the same weights give
    the same key wherever the folder lies, changed weights never reuse stale samples."""
    digest = hashlib.sha256()
    for name, tensor in sorted(unet.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    out = {"weights_sha256": digest.hexdigest()[:16], "class": type(unet).__name__}
    if scheduler is not None:
        config = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
        out["scheduler"] = type(scheduler).__name__
        out["scheduler_sha256"] = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {**out, **extra}
