"""A user's MONAI model as the generator under audit: a 2-D ``DiffusionModelUNet`` and its own MONAI scheduler.

Medical imaging teams train with MONAI (its generative models are in MONAI core since 1.4:
``monai.networks.nets.DiffusionModelUNet``, ``monai.networks.schedulers.DDPMScheduler`` / ``DDIMScheduler``,
``monai.inferers.DiffusionInferer``). As for a diffusers model, the scheduler *is* the library's definition of the
model's processes (β schedule, prediction type, clipping), so :class:`MonaiModel` drives MONAI's own scheduler
through the loops of :class:`~safcore.generators.scheduled.ScheduledModel` (same ``t`` ↔ timestep convention,
``k(t) = ceil(t · T) − 1``, a run from ``t`` the tail of a full run's schedule):

- **forward** (Ho et al. 2020, Eq. 4): ``scheduler.add_noise(x_0, ε, k)``;
- **reverse**: ``scheduler.step(model_output, k, x)`` over ``scheduler.timesteps`` after ``set_timesteps(steps)``,
  as ``DiffusionInferer.sample`` does: the network is called as ``unet(x, timesteps=[k])`` (one float timestep
  for the batch), the prior is ``torch.randn`` and each step draws its noise with ``torch.randn`` (through
  ``generator``; ``None``: the global generator, as the inferer, which passes none). MONAI's DDPM ``step`` always
  steps ``k → k − 1``, whatever the inference grid, so a DDPM run of fewer than ``T`` steps never reaches ``x_0``:
  :meth:`sample` reproduces it as MONAI runs it, but the audit and the probe sample a MONAI DDPM model on all ``T``
  steps (:attr:`MonaiModel.full_schedule_only`; fewer steps: ``with_scheduler("ddim")``, or a fast solver:
``with_scheduler("dpm")`` / ``"unipc"``, diffusers' ``DPMSolverMultistepScheduler`` / ``UniPCMultistepScheduler``
built from MONAI's noise schedule, :func:`solver_scheduler`).

Only MONAI's names are used; ``monai`` is imported when a scheduler is built (the optional extra
``safcore[monai]``). Images: model range ``[-1, 1]`` inside, as for every generator.
"""

from __future__ import annotations

import copy
from typing import Literal

import numpy as np
import torch

from safcore.generators.model_files import ModelLoadError
from safcore.generators.scheduled import ScheduledModel, settings_sha256, weights_sha256

__all__ = ["MONAI_SCHEDULERS", "MonaiModel", "solver_scheduler"]

#: MONAI schedulers whose ``step`` safcore drives (class names in ``monai.networks.schedulers``).
MONAI_SCHEDULERS: tuple[str, ...] = ("DDPMScheduler", "DDIMScheduler")
_CHOICE_CLASS = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler"}
#: Fast multistep solvers a MONAI model runs through diffusers (the same choices and settings as a diffusers model's).
SOLVER_CHOICES: tuple[str, ...] = ("dpm", "dpm_sde", "unipc")


def _value(option) -> str:
    """A MONAI option (a ``StrEnum`` member or a plain string) as its string."""
    return str(getattr(option, "value", option))


def convert_scheduler(scheduler, name: str):
    """A MONAI scheduler of class ``name`` with ``scheduler``'s noise schedule (``β``, ``α``, ``ᾱ``), ``T``,
    prediction type and clipping (DDIM with ``ᾱ_prev = 1`` at its last step, DDPM with fixed-small variance)."""
    from monai.networks import schedulers

    if name not in MONAI_SCHEDULERS:
        raise ModelLoadError(f"MONAI scheduler {name!r} is not supported; allowed: {', '.join(MONAI_SCHEDULERS)}")
    lo, hi = scheduler.clip_sample_values
    out = getattr(schedulers, name)(num_train_timesteps=int(scheduler.num_train_timesteps),
                                    prediction_type=_value(scheduler.prediction_type),
                                    clip_sample=bool(scheduler.clip_sample), clip_sample_min=lo, clip_sample_max=hi)
    out.betas, out.alphas = scheduler.betas.clone(), scheduler.alphas.clone()
    out.alphas_cumprod = scheduler.alphas_cumprod.clone()
    return out


def solver_scheduler(scheduler, choice: str):
    """Diffusers' multistep solver ``choice`` (``"dpm"``: ``DPMSolverMultistepScheduler``, DPM-Solver++ 2M;
    ``"unipc"``: ``UniPCMultistepScheduler``, bh2 order 2; the settings of
    :meth:`~safcore.generators.diffusers_model.DiffusersModel.with_scheduler`) on MONAI ``scheduler``'s noise
    schedule: its ``β`` as ``trained_betas`` (so ``ᾱ_k = Π_{j ≤ k}(1 − β_j)`` is MONAI's), ``T`` and prediction
    type; diffusers' defaults otherwise (grid uniform in the timesteps, ``linspace``, last step to σ = 0).

    Clipping: MONAI clips ``x̂_0`` to ``[lo, hi]`` when ``clip_sample``; the solvers then threshold ``x̂_0`` with
    ``sample_max_value = 1``, which is exactly ``clamp(x̂_0, −1, 1)`` (diffusers' dynamic threshold
    ``s = clamp(quantile, 1, 1) = 1``), so only MONAI's default ``[−1, 1]`` is allowed; no clipping otherwise.

    Raises:
        ValueError: another ``choice``, or clipping to a range other than ``[−1, 1]``."""
    import diffusers

    from safcore.generators.diffusers_model import _CHOICE_CLASS as DIFFUSERS_CHOICES

    if choice not in SOLVER_CHOICES:
        raise ValueError(f"solver choice {choice!r}; allowed: {', '.join(map(repr, SOLVER_CHOICES))}")
    clip = bool(scheduler.clip_sample)
    if clip and [float(v) for v in scheduler.clip_sample_values] != [-1.0, 1.0]:
        raise ValueError(f"MONAI clip_sample_values = {tuple(scheduler.clip_sample_values)!r} with --scheduler {choice}; "
                         "allowed: (-1, 1), the range diffusers' solvers clip x̂_0 to, or clip_sample = False")
    name, settings = DIFFUSERS_CHOICES[choice]
    return getattr(diffusers, name)(num_train_timesteps=int(scheduler.num_train_timesteps),
                                    trained_betas=scheduler.betas.double().cpu().tolist(),
                                    prediction_type=_value(scheduler.prediction_type), thresholding=clip,
                                    sample_max_value=1.0, **settings)


class MonaiModel(ScheduledModel):
    """A MONAI ``DiffusionModelUNet`` (``spatial_dims=2``) driven by its own MONAI DDPM or DDIM scheduler.

    Args:
        unet: the trained network, called as ``unet(x, timesteps=k)`` → ``(B, C, H, W)``; any prediction type its
            scheduler names (``epsilon``, ``sample``, ``v_prediction``). Any module with ``in_channels`` called
            so works (known-answer tests: :class:`~safcore.generators.known_answer.MonaiPointMassDenoiser`).
        scheduler: the MONAI scheduler it was trained with; a template (each call steps a deep copy, so
            ``set_timesteps`` never leaks between calls).
        image_size: the side of the square images it makes (px): a MONAI U-Net is fully convolutional and does
            not record it.
        source: where the model came from (shown in reports).
        eta: DDIM's η (0: deterministic DDIM, as ``DiffusionInferer.sample``; ignored by DDPM).
        solver: ``None`` (MONAI's scheduler steps) or ``"dpm"`` / ``"unipc"``: diffusers' multistep solver on
            ``scheduler``'s noise schedule steps instead (:func:`solver_scheduler`; ``scheduler`` still defines
            ``T``, ``ᾱ``, the prediction type and the forward process; the network is called MONAI's way).
    """

    def __init__(self, unet: torch.nn.Module, scheduler, *, image_size: int, source: str = "",
                 eta: float = 0.0, solver: str | None = None) -> None:
        name = type(scheduler).__name__
        if name not in MONAI_SCHEDULERS or not type(scheduler).__module__.startswith("monai."):
            raise ModelLoadError(f"scheduler {type(scheduler).__module__}.{name} is not supported; allowed: MONAI's "
                                 f"{', '.join(MONAI_SCHEDULERS)} (monai.networks.schedulers)")
        if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
            raise ValueError(f"image_size = {image_size!r}; allowed: an integer ≥ 1 (px)")
        if not 0.0 <= float(eta) <= 1.0:
            raise ValueError(f"eta = {eta!r}; allowed: a number in [0, 1]")
        self.unet, self.scheduler = unet, scheduler
        self._image_size, self.source, self.eta = int(image_size), str(source), float(eta)
        self.prediction_type = _value(scheduler.prediction_type)
        self.solver = None if solver is None else solver_scheduler(scheduler, solver)  # a diffusers template
        self.solver_choice = solver

    def __repr__(self) -> str:
        return (f"MonaiModel({self.source or 'in memory'!s}: {self.scheduler_name}, {self.prediction_type}, "
                f"T={self.num_train_timesteps}, {self.channels}×{self.image_size}×{self.image_size}"
                + (f", {self.num_classes} classes" if self.num_classes is not None else "")
                + (f", class {self.label}" if self.label is not None else "") + ")")

    @property
    def num_classes(self) -> int | None:
        """The network's ``num_class_embeds`` (MONAI's class conditioning, ``class_labels``); ``None``: unconditional."""
        k = getattr(self.unet, "num_class_embeds", None)
        return None if k is None else int(k)

    # ------------------------------------------------------------------ what it is
    @property
    def channels(self) -> int:
        """Image channels the network takes (1 grey, 3 RGB)."""
        return int(self.unet.in_channels)

    @property
    def image_size(self) -> int:
        return self._image_size

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.num_train_timesteps)

    @property
    def scheduler_name(self) -> str:
        """``"monai.DDPMScheduler"`` / ``"monai.DDIMScheduler"``, as run keys record it; a solver view:
        ``"diffusers.DPMSolverMultistepScheduler[monai.DDPMScheduler]"`` (the solver on that noise schedule)."""
        name = f"monai.{type(self.scheduler).__name__}"
        return name if self.solver is None else f"diffusers.{type(self.solver).__name__}[{name}]"

    @property
    def full_schedule_only(self) -> bool:
        """MONAI's ``DDPMScheduler.step`` always steps ``k → k − 1`` (whatever ``set_timesteps`` chose), so a DDPM run
        of fewer than ``T`` steps stops far from ``x_0``: the audit runs it on all ``T`` (fewer steps: its DDIM view
        or a solver view, which steps its own grid)."""
        return self.solver is None and type(self.scheduler).__name__ == "DDPMScheduler"

    def with_scheduler(self, choice: Literal["model", "ddpm", "ddim", "dpm", "dpm_sde", "unipc"],
                       eta: float | None = None) -> MonaiModel:
        """The same network under MONAI's other scheduler with this one's noise schedule (``"model"``: unchanged),
        or under diffusers' multistep solver ``"dpm"`` / ``"unipc"`` on it (:func:`solver_scheduler`)."""
        eta = self.eta if eta is None else eta
        solver = self.solver_choice if choice == "model" else None
        if choice == "model" or choice in SOLVER_CHOICES:
            scheduler = self.scheduler
            solver = choice if choice in SOLVER_CHOICES else solver
        elif choice in _CHOICE_CLASS:
            scheduler = convert_scheduler(self.scheduler, _CHOICE_CLASS[choice])
        else:
            raise ValueError(f"scheduler choice {choice!r}; allowed: 'model', 'ddpm', 'ddim', {', '.join(map(repr, SOLVER_CHOICES))}")
        return MonaiModel(self.unet, scheduler, image_size=self.image_size, source=self.source,
                          eta=eta, solver=solver).conditioned(self.label)

    def settings(self) -> dict:
        """The scheduler's settings that change what the model generates (its ``ᾱ`` by hash)."""
        s = self.scheduler
        final = getattr(s, "final_alpha_cumprod", None)
        return {"class": self.scheduler_name, "num_train_timesteps": self.num_train_timesteps,
                "prediction_type": self.prediction_type, "clip_sample": bool(s.clip_sample),
                "clip_sample_values": [float(v) for v in s.clip_sample_values],
                "variance_type": _value(getattr(s, "variance_type", None)),
                "steps_offset": getattr(s, "steps_offset", None),
                "final_alpha_cumprod": None if final is None else float(final),
                "alphas_cumprod_sha256": settings_sha256({"abar": s.alphas_cumprod.double().tolist()})}

    def identity(self) -> dict:
        """What the run store keys this model's samples and probes by: its weights' and settings' hashes (a solver
        view adds its diffusers config's hash; MONAI's own schedulers are keyed as before)."""
        solver = {} if self.solver is None else {"solver_sha256": settings_sha256(
            {k: v for k, v in dict(self.solver.config).items() if not k.startswith("_")})}
        return {"weights_sha256": weights_sha256(self.unet), "class": type(self.unet).__name__,
                "scheduler": self.scheduler_name, "scheduler_sha256": settings_sha256(self.settings()),
                "image_size": self.image_size, "eta": self.eta, **solver, **self._label_key()}

    # ------------------------------------------------------------------ how MONAI runs it (ScheduledModel)
    @property
    def _alphas_cumprod(self) -> torch.Tensor:
        return self.scheduler.alphas_cumprod

    def _new_scheduler(self):
        """A deep copy of MONAI's scheduler, or a fresh diffusers solver (its multistep state empty)."""
        if self.solver is not None:
            return type(self.solver).from_config(self.solver.config)
        return copy.deepcopy(self.scheduler)

    def _network(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """``unet(x, timesteps=k)``: ``k`` ``(B,)`` per row, or one timestep for the batch as
        ``DiffusionInferer.sample`` passes it (``torch.Tensor((k,))``, float ``(1,)``); a conditioned model adds
        ``class_labels`` ``(B,)`` (how a class-conditional ``DiffusionModelUNet`` is called: MONAI's inferer has no
        label argument, its users call the network with ``class_labels``)."""
        labels = self._class_labels(x)  # None: unconditional, called exactly as before
        if labels is None:
            return self.unet(x, timesteps=k.reshape(-1).to(x.device, torch.float32))
        return self.unet(x, timesteps=k.reshape(-1).to(x.device, torch.float32), class_labels=labels)

    def _step(self, scheduler, out: torch.Tensor, k: torch.Tensor, x: torch.Tensor, generator) -> torch.Tensor:
        if self.solver is not None:  # diffusers' multistep solver: deterministic (DPM-Solver++ 2M, UniPC)
            return scheduler.step(out, k, x).prev_sample
        if type(scheduler).__name__ == "DDIMScheduler":
            return scheduler.step(out, k, x, eta=self.eta, generator=generator)[0]
        return scheduler.step(out, k, x, generator=generator)[0]

    def _prior(self, shape: tuple[int, ...], scheduler, generator) -> torch.Tensor:
        """``x_T ~ N(0, I)``: the ``torch.randn`` noise a MONAI user hands ``DiffusionInferer.sample``."""
        return torch.randn(shape, generator=generator, device=self.device, dtype=torch.float32)
