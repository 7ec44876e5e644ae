"""A network driven by its own discrete-time scheduler (DDPM, DDIM): what every such :class:`Generator` shares.

A scheduler of ``T`` training timesteps defines the model's processes (Ho et al. 2020; Song et al. 2021):

- **forward** (Ho et al. 2020, Eq. 4): ``x_k = sqrt(ᾱ_k) x_0 + sqrt(1 − ᾱ_k) ε`` — ``scheduler.add_noise``;
- **reverse**: ``scheduler.step`` over ``scheduler.timesteps`` after ``set_timesteps(steps)``.

Algorithm 1 maps the probe's continuous grid ``t ∈ (0, 1]`` to the training timestep ``k(t) = ceil(t · T) − 1``
(``t = 1`` → ``T − 1``), diffuses ``x_p`` with ``add_noise`` to the first inference timestep ``≤ k(t)`` and runs the
scheduler's steps from there down: the tail of a full run of ``steps`` steps (the img2img / SDEdit convention,
``strength = t``). :class:`ScheduledModel` holds that mapping, the kernel ``(a_t, σ_t) = (sqrt(ᾱ_k), sqrt(1 − ᾱ_k))``
and the forward/reverse/sample loops; a library's model (:class:`~safcore.generators.diffusers_model.DiffusersModel`,
:class:`~safcore.generators.monai_model.MonaiModel`) adds how its network is called, how its scheduler steps and
how its prior is drawn.

Shapes: images ``(B, C, H, W)`` in the model range ``[-1, 1]``; times ``(B,)`` in ``(0, 1]``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from safcore.generators.base import check_label
from safcore.runtime.batching import in_micro_batches
from safcore.runtime.device import bf16_autocast
from safcore.runtime.progress import progress_bar

__all__ = ["ScheduledModel", "SampleOutput", "weights_sha256", "settings_sha256"]


@dataclass
class SampleOutput:
    """Images a scheduler-driven model drew: ``images`` (n, C, H, W) in model range, ``nfe`` per image."""

    images: torch.Tensor
    nfe: int


def weights_sha256(network: torch.nn.Module) -> str:
    """sha256 (16 hex digits) of a network's parameters and buffers by name: the same weights give the same key
    wherever the folder lies, changed weights never reuse stale samples."""
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def settings_sha256(settings: dict) -> str:
    """sha256 (16 hex digits) of a settings dict as sorted JSON (values that are not JSON: their ``str``)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ScheduledModel:
    """The shared part of a network driven by its own DDPM/DDIM scheduler (module docstring).

    A subclass sets ``unet``, ``scheduler``, ``eta`` and ``prediction_type`` (``"epsilon"``, ``"sample"``,
    ``"v_prediction"``) and provides ``num_train_timesteps``, ``scheduler_name``, ``_alphas_cumprod`` (``ᾱ``, ``(T,)``),
    ``_new_scheduler`` (a fresh copy of its scheduler), ``_network`` (the raw prediction ``(B, C, H, W)``),
    ``_step`` (one reverse step, the previous sample) and ``_prior`` (the first sample of a run from ``t = 1``).
    A class-conditional network (``num_classes`` not ``None``) is run through :meth:`conditioned`: ``_network`` then
    passes :meth:`_class_labels` (the fixed ``label`` for each row, ``(B,)`` int64) as the library's ``class_labels``.
    """

    sde = None  # no SDE: the scheduler defines forward and reverse
    space = "pixel"  # a latent model wraps one of these (safcore.generators.latent_model.LatentModel)
    unet: torch.nn.Module
    eta: float
    prediction_type: str
    label: int | None = None  # the class every call passes (conditioned); None: unconditioned

    # ------------------------------------------------------------------ classes
    @property
    def num_classes(self) -> int | None:
        """``K`` of a class-conditional network (its ``num_class_embeds``); ``None``: unconditional."""
        return None

    def conditioned(self, label: int | None):
        """The same network and scheduler with every call passing class ``label`` (an integer in ``[0, K)``;
        ``None``: unconditioned); an unconditional model returns ``self`` for ``None`` and refuses a label."""
        label = check_label(label, self.num_classes)
        if label == self.label:
            return self
        out = copy.copy(self)  # shares the network and the scheduler template (each call copies the scheduler)
        out.label = label
        return out

    def _class_labels(self, x: torch.Tensor) -> torch.Tensor | None:
        """``(B,)`` int64 of :attr:`label` for the rows of ``x``; ``None`` for an unconditional model."""
        if self.label is None:
            if self.num_classes is not None:
                raise ValueError(f"{type(self).__name__} is class-conditional ({self.num_classes} classes) but no class "
                                 f"is fixed; allowed: model.conditioned(label) with label in [0, {self.num_classes})")
            return None
        return torch.full((x.shape[0],), self.label, dtype=torch.long, device=x.device)

    def _label_key(self) -> dict:
        """What :meth:`identity` adds for a conditioned model (nothing for an unconditioned one)."""
        return {} if self.label is None else {"class_label": self.label}

    # ------------------------------------------------------------------ what a subclass provides
    @property
    def num_train_timesteps(self) -> int:
        raise NotImplementedError

    @property
    def scheduler_name(self) -> str:
        """The scheduler as run keys record it."""
        raise NotImplementedError

    @property
    def _alphas_cumprod(self) -> torch.Tensor:
        raise NotImplementedError

    def _new_scheduler(self):
        raise NotImplementedError

    def _network(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _step(self, scheduler, out: torch.Tensor, k: torch.Tensor, x: torch.Tensor, generator) -> torch.Tensor:
        raise NotImplementedError

    def _prior(self, shape: tuple[int, ...], scheduler, generator) -> torch.Tensor:
        raise NotImplementedError

    @property
    def full_schedule_only(self) -> bool:
        """Whether the scheduler reaches ``x_0`` only on its full grid of ``T`` steps (a scheduler whose ``step``
        always goes ``k → k − 1``, whatever the inference grid): the audit then samples and probes with all ``T``."""
        return False

    # ------------------------------------------------------------------ what it is
    @property
    def device(self) -> torch.device:
        """Where the network's parameters are."""
        return next(self.unet.parameters()).device

    def to(self, device: str | torch.device):
        self.unet.to(device)
        return self

    def eval(self):
        self.unet.eval()
        return self

    def _fresh(self, steps: int):
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= self.num_train_timesteps:
            raise ValueError(f"steps = {steps!r} inference steps; allowed: an integer in [1, {self.num_train_timesteps}] "
                             "(the scheduler's num_train_timesteps)")
        scheduler = self._new_scheduler()
        scheduler.set_timesteps(int(steps))
        return scheduler

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The images themselves: the network diffuses pixels."""
        return images

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z

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
        abar = self._alphas_cumprod.double()[self._k(t)].to(t.device, t.dtype)
        return abar.sqrt(), (1.0 - abar).sqrt()

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε̂ of the network at the training timestep ``k(t)``, shape of ``x``.

        A ``"sample"`` (x_0) or ``"v_prediction"`` network is turned into ε: ``ε = (x − a x̂_0) / σ``,
        ``ε = a v + σ x`` (Salimans & Ho 2022, with ``a² + σ² = 1``)."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        out = self._network(x, self._k(t).to(x.device)).to(x.dtype)
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
        abar = self._alphas_cumprod.double().cpu().numpy()
        with np.errstate(divide="ignore"):
            log_ratios = 0.5 * (np.log1p(-abar) - np.log(abar))
        k = int(np.argmin(np.abs(log_ratios - math.log(ratio))))
        t = (k + 0.5) / len(abar)
        if self.timestep(t) != k:  # cannot happen for T ≤ 10⁵ (timestep rounds t to 6 decimals)
            raise ValueError(f"t={t!r} does not map back to timestep {k} of T={len(abar)}")
        return t

    def marginal_std(self, ts: Sequence[float] | np.ndarray) -> np.ndarray:
        """``σ = sqrt(1 − ᾱ_{k(t)})`` of ``q(x_k | x_0)`` for each t (the forward kernel's noise std), shape (T,)."""
        alphas = self._alphas_cumprod.double()
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
        with bf16_autocast(x.device, autocast_bf16):  # micro-batches inside runtime.batching.forward_batch
            out = in_micro_batches(lambda rows: self._network(x[rows], timestep if timestep.ndim == 0 else
                                                               timestep[rows]), x.shape[0])
        return out.float()

    def _run(self, x: torch.Tensor, timesteps: torch.Tensor, scheduler, generator, autocast_bf16: bool,
             bar=None) -> torch.Tensor:
        for k in timesteps:
            out = self._unet(x, k.to(x.device), autocast_bf16)
            x = self._step(scheduler, out, k, x, generator)
            if bar is not None:
                bar.update(x.shape[0])
        return x

    @torch.inference_mode()
    def reverse(self, x_t: torch.Tensor, t_vec: torch.Tensor, steps: int, generator: torch.Generator | None = None,
                *, autocast_bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the scheduler's reverse steps from each sample's start ``t`` down to timestep 0.

        Samples that share a ``t`` run together (one scheduler, one timestep at a time, as the pipelines do).
        Rows of different t are not batched into one network call: a stochastic scheduler's ``step`` draws its
        noise from ``generator`` inside the library, one t's whole run after another's, and interleaving the t
        would reorder those draws (other images for the stored probes); the SDE path batches across t.

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
            if hasattr(scheduler, "set_begin_index"):  # a multistep scheduler starts on the tail, as img2img pipelines
                scheduler.set_begin_index(int(scheduler.timesteps.numel() - tail.numel()))
            x = x_t[rows.to(x_t.device)].to(self.device, torch.float32)
            out[rows.to(out.device)] = self._run(x, tail, scheduler, generator, autocast_bf16).to(out.device)
            nfe[rows] = int(tail.numel())
        return out, nfe

    @torch.inference_mode()
    def sample(self, n: int, *, steps: int, generator: torch.Generator | None = None, batch_size: int | None = None,
               autocast_bf16: bool = False, progress: bool = True) -> SampleOutput:
        """``n`` images from the prior (:meth:`_prior`) through all ``steps`` scheduler steps, in batches of
        ``batch_size`` (default all at once)."""
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
                x = self._prior((b, self.channels, self.image_size, self.image_size), scheduler, generator)
                outs.append(self._run(x, scheduler.timesteps, scheduler, generator, autocast_bf16, bar).cpu())
        finally:
            bar.close()
        return SampleOutput(images=torch.cat(outs), nfe=int(steps))
