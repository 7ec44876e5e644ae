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

from typing import TYPE_CHECKING, Literal

import torch

from safcore.generators.model_files import ModelLoadError
from safcore.generators.scheduled import SampleOutput, ScheduledModel, settings_sha256, weights_sha256
from safcore.generators.score_model import UNetBacked

if TYPE_CHECKING:
    from diffusers import SchedulerMixin, UNet2DModel

__all__ = ["SCHEDULERS", "SCHEDULER_CHOICES", "DiffusersModel", "ModelLoadError", "SampleOutput", "model_identity",
           "check_class_embedding"]

#: Schedulers whose ``step`` safcore drives (class names as diffusers saves them in ``scheduler_config.json``).
SCHEDULERS: tuple[str, ...] = ("DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler")
SchedulerChoice = Literal["model", "ddpm", "ddim", "dpm", "dpm_sde", "unipc"]
#: ``--scheduler`` choices: the class and what it is built with from the model's scheduler config. ``dpm``:
#: DPM-Solver++ (2M) (Lu et al. 2022b, data prediction, order 2); ``dpm_sde``: its stochastic variant (diffusers'
#: ``sde-dpmsolver++``, which draws fresh noise each step as DDPM does); ``unipc``: UniPC (Zhao et al. 2023, its
#: default bh2 / order 2); both with diffusers' defaults otherwise (grid uniform in the timesteps, last step to σ = 0).
_CHOICE_CLASS = {"ddpm": ("DDPMScheduler", {}), "ddim": ("DDIMScheduler", {}),
                 "dpm": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
                 "dpm_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
                 "unipc": ("UniPCMultistepScheduler", {"solver_order": 2})}
SCHEDULER_CHOICES: tuple[str, ...] = ("model", *_CHOICE_CLASS)


def _scheduler_class(name: str) -> type:
    import diffusers

    if name not in SCHEDULERS:
        raise ModelLoadError(f"scheduler {name!r} is not supported; allowed: {', '.join(SCHEDULERS)}")
    return getattr(diffusers, name)


def check_class_embedding(config, where: str) -> int | None:
    """``num_class_embeds`` of a ``UNet2DModel`` config (a dict or diffusers' ``FrozenDict``): ``None``
    (unconditional) or ``K`` with ``class_embed_type`` ``None`` (``nn.Embedding(K, ·)`` of a class label, called with
    ``class_labels``). Any other class embedding (``"timestep"``, ``"identity"``, ``"projection"``,
    ``"simple_projection"``) is not a class label and is refused.

    Raises:
        ModelLoadError: one line naming ``where`` and the entry."""
    get = config.get if hasattr(config, "get") else lambda key, default=None: getattr(config, key, default)
    kind, k = get("class_embed_type", None), get("num_class_embeds", None)
    if kind is not None:
        raise ModelLoadError(f"{where}: class_embed_type = {kind!r} is not a class-label embedding; allowed: null "
                             "(with num_class_embeds = K: a class-conditional UNet2DModel called with class_labels)")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ModelLoadError(f"{where}: num_class_embeds = {k!r}; allowed: null or an integer ≥ 1")
    return k


class DiffusersModel(ScheduledModel, UNetBacked):
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
        self._num_classes = check_class_embedding(getattr(unet, "config", {}), f"{type(unet).__name__} config")

    def __repr__(self) -> str:
        cfg = self.scheduler.config
        return (f"DiffusersModel({self.source or 'in memory'!s}: {type(self.scheduler).__name__}, "
                f"{cfg.beta_schedule}, {self.prediction_type}, T={cfg.num_train_timesteps}, "
                f"{self.channels}×{self.image_size}×{self.image_size}"
                + (f", {self._num_classes} classes" if self._num_classes is not None else "")
                + (f", class {self.label}" if self.label is not None else "") + ")")

    # ------------------------------------------------------------------ what it is
    @property
    def num_classes(self) -> int | None:
        """``num_class_embeds`` of the U-Net (``class_embed_type`` ``None``); ``None``: unconditional."""
        return self._num_classes

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def scheduler_name(self) -> str:
        """The scheduler's class name as diffusers saves it (``"DDPMScheduler"``), as run keys record it."""
        return type(self.scheduler).__name__

    def with_scheduler(self, choice: SchedulerChoice, eta: float | None = None) -> DiffusersModel:
        """The same network under another scheduler built from this one's config (``"model"``: unchanged).

        ``"ddim"`` on a DDPM-trained network is DDIM sampling of that model (Song et al. 2021), as
        ``DDIMScheduler.from_config(ddpm.config)`` gives it in diffusers; ``"dpm"`` / ``"unipc"`` are the multistep
        solvers ``DPMSolverMultistepScheduler`` (dpmsolver++, order 2) / ``UniPCMultistepScheduler`` built the same
        way (a reverse run from ``t < 1`` starts them on the tail of the full grid: :meth:`ScheduledModel.reverse`)."""
        if choice == "model":
            if eta is None:
                return self
            return DiffusersModel(self.unet, self.scheduler, source=self.source, eta=eta).conditioned(self.label)
        if choice not in _CHOICE_CLASS:
            raise ValueError(f"scheduler choice {choice!r}; allowed: {', '.join(map(repr, SCHEDULER_CHOICES))}")
        name, settings = _CHOICE_CLASS[choice]
        scheduler = _scheduler_class(name).from_config(self.scheduler.config, **settings)
        return DiffusersModel(self.unet, scheduler, source=self.source,
                              eta=self.eta if eta is None else eta).conditioned(self.label)

    # ------------------------------------------------------------------ how diffusers runs it (ScheduledModel)
    @property
    def _alphas_cumprod(self) -> torch.Tensor:
        return self.scheduler.alphas_cumprod

    def _new_scheduler(self) -> SchedulerMixin:
        return type(self.scheduler).from_config(self.scheduler.config)

    def _network(self, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        labels = self._class_labels(x)  # None: unconditional, called exactly as before
        out = self.unet(x, k) if labels is None else self.unet(x, k, class_labels=labels)
        return out.sample if hasattr(out, "sample") else out

    def _step(self, scheduler, out: torch.Tensor, k: torch.Tensor, x: torch.Tensor, generator) -> torch.Tensor:
        name = type(scheduler).__name__
        if name == "UniPCMultistepScheduler":  # deterministic: its step takes no generator
            return scheduler.step(out, k, x).prev_sample
        extra = {"eta": self.eta} if name == "DDIMScheduler" else {}
        return scheduler.step(out, k, x, generator=generator, **extra).prev_sample

    def _prior(self, shape: tuple[int, ...], scheduler, generator) -> torch.Tensor:
        """``x_T ~ N(0, σ_init² I)`` with diffusers' ``randn_tensor``: with one batch, :meth:`sample` is
        ``DDPMPipeline(unet, scheduler)(n, generator, steps, output_type="pt")`` step for step (same draws),
        before its ``(x + 1) / 2`` clamp."""
        from diffusers.utils.torch_utils import randn_tensor

        x = randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)
        return x * scheduler.init_noise_sigma

    def identity(self) -> dict:
        """What the run store keys this model's samples and probes by: its weights' and configs' hashes."""
        return model_identity(self.unet, self.scheduler, eta=self.eta, **self._label_key())


def model_identity(unet, scheduler=None, **extra) -> dict:
    """:func:`~safcore.generators.scheduled.weights_sha256` of a network (and its scheduler's config's hash): the
    same weights give the same key wherever the folder lies, changed weights never reuse stale samples."""
    out = {"weights_sha256": weights_sha256(unet), "class": type(unet).__name__}
    if scheduler is not None:
        config = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
        out["scheduler"] = type(scheduler).__name__
        out["scheduler_sha256"] = settings_sha256(config)
    return {**out, **extra}
