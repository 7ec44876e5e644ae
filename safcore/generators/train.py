"""Continuous denoising score matching for a sub-VP score model, resumable and bit-reproducible.

Song et al. 2021 (score_sde), Eq. 7: the score network s_θ is trained with

    θ* = argmin_θ  E_t { λ(t) · E_{x(0)} E_{x(t)|x(0)} [ ‖ s_θ(x(t), t) − ∇ log p_0t(x(t) | x(0)) ‖² ] },

with t ~ U(ε, 1), ε = 1e-5, and the Gaussian perturbation kernel of the SDE,
x(t) = mean(t)·x(0) + std(t)·z, z ~ N(0, I), whose score is −z / std(t). Our network predicts the
noise, s_θ = −ε̂_θ / std (``safcore.generators.score_model.ScoreModel``), and with the weighting λ(t) = std(t)² the
objective becomes the plain noise-prediction loss ‖ε̂_θ(x(t), t) − z‖² — the ``likelihood_weighting
= False`` branch of score_sde's ``get_sde_loss_fn``. We average it over pixels (score_sde's
``reduce_mean = True``), so the loss of an untrained network is ≈ 1.

:func:`train` runs Adam with a linear learning-rate warm-up, gradient-norm clipping, an exponential
moving average of the weights (``diffusers.training_utils.EMAModel``) and optional bf16 autocast.
Every ``checkpoint_every`` steps it writes one atomic safetensors checkpoint (model, EMA, Adam
moments, RNG states, loss history; scalars as JSON metadata, nothing pickled). Calling
:func:`train` again with the same ``work_dir`` resumes from the latest checkpoint; on CPU the final
weights are bit-identical to those of an uninterrupted run with the same seed, because every random
draw (batch indices, diffusion times, noise) comes from one explicit ``torch.Generator`` whose state
is checkpointed.

Checkpoints survive a bad disk day: a new checkpoint is fsynced and read back (its header, and the
SHA-256 of its tensors recorded in its metadata) before older ones are deleted, and the previous one
is always kept beside it. Resuming skips an unreadable latest checkpoint (truncated, corrupt) with a
warning naming it and the one resumed from, and sets it aside as ``<name>.unreadable``. A checkpoint
records the SDE and the device type it was trained with; resuming with another is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from diffusers import UNet2DModel
from diffusers.training_utils import EMAModel
from safetensors import safe_open
from safetensors.torch import load_file

from safcore.data.datasets import check_image_size, to_model_range
from safcore.runtime.device import bf16_autocast
from safcore.generators.score_model import MeanPrior, UNET_PRESETS, ScoreModel, build_unet
from safcore.runtime.progress import progress_bar
from safcore.runtime.runs import atomic_save_safetensors, remove_stale_temporaries
from safcore.generators.sde import SubVPSDE

__all__ = [
    "TrainConfig",
    "resume_point",
    "TrainResult",
    "Trainer",
    "train",
    "load_kept",
    "kept_path",
    "latest_checkpoint",
    "read_checkpoint",
    "resolve_device",
    "sde_identity",
    "CheckpointError",
    "CheckpointFallbackWarning",
]

DeviceName = Literal["auto", "cpu", "cuda"]
_DEVICES = ("auto", "cpu", "cuda")
CHECKPOINT_FORMAT = "safcore-train-checkpoint/1"
KEPT_FORMAT = "safcore-ema-weights/1"
_CHECKPOINT_GLOB = "checkpoint_step*.safetensors"
_CHECKPOINT_NAME = re.compile(r"^checkpoint_step(\d+)\.safetensors$")
UNREADABLE_SUFFIX = ".unreadable"
_DEFAULT_SDE = "SubVPSDE(beta_min=0.1, beta_max=20.0)"  # what checkpoints without an "sde" entry were trained with


class CheckpointError(ValueError):
    """A checkpoint file cannot be read back whole: truncated, corrupt, or not a training checkpoint."""


class CheckpointFallbackWarning(UserWarning):
    """Resuming skipped an unreadable checkpoint and continued from an earlier one."""

# Fields of TrainConfig that change the trajectory of training: a checkpoint written under other
# values cannot be resumed. (``steps``, ``checkpoint_every`` and ``keep_steps`` may change between a run
# and its resumption: training longer from a checkpoint is the same trajectory. ``device`` may change
# as long as it resolves to the same device type, e.g. "auto" ↔ "cpu" on a machine without CUDA:
# Trainer.load_state checks the resolved type recorded in the checkpoint.)
_TRAJECTORY_FIELDS = ("preset", "batch_size", "lr", "warmup_steps", "grad_clip", "ema_decay", "eps", "bf16", "seed")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run.

    Args:
        preset: U-Net size preset of :func:`safcore.generators.score_model.build_unet` ("tiny", "small", "paper").
        steps: number of optimisation steps (≥ 1).
        batch_size: images per step, drawn uniformly with replacement from the training set.
        lr: Adam learning rate after warm-up (score_sde: 2e-4).
        warmup_steps: linear warm-up length; the learning rate at step s (1-based) is
            ``lr · min(1, s / warmup_steps)`` (score_sde: 5000 at paper scale); 0 disables it.
        grad_clip: maximal global gradient norm (score_sde: 1.0); 0 disables clipping.
        ema_decay: the EMA's maximal decay (score_sde: 0.9999 at paper scale; 0.999 suits the short
            CPU runs). ``EMAModel`` warms the decay up as (1 + s) / (10 + s) until it reaches this value.
        eps: smallest diffusion time; t ~ U(eps, 1) (score_sde: 1e-5).
        checkpoint_every: steps between resumable checkpoints (a final one is always written).
        keep_steps: steps whose EMA weights are kept as ``ema_step{N:06d}.safetensors``
            (training-length study); each must lie in [1, steps].
        bf16: run the network under ``torch.autocast(dtype=torch.bfloat16)`` (weights, loss,
            optimizer and EMA stay fp32).
        seed: seeds the weight initialisation and the training generator.
        device: "auto" (CUDA when available, else CPU), "cpu" or "cuda".
        mean_head: add the closed-form posterior mean of the noise's per-channel mean to the U-Net's ε̂
            (:class:`safcore.generators.score_model.MeanPrior`, its prior from the training images). ``None`` (default): on for
            RGB data, where the U-Net alone lets whole samples drift to black or white (issue 21), off for grey,
            whose committed models were trained without it; ``True`` / ``False`` force it. It enters the run key
            only where it is on.
    """

    preset: str = "small"
    steps: int = 1500
    batch_size: int = 32
    lr: float = 2e-4
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    eps: float = 1e-5
    checkpoint_every: int = 500
    keep_steps: tuple[int, ...] = ()
    bf16: bool = False
    seed: int = 0
    device: DeviceName = "auto"
    mean_head: bool | None = None

    def __post_init__(self) -> None:
        def _int(name: str, low: int) -> int:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"TrainConfig.{name} = {value!r}: must be an integer ≥ {low}")
            return value

        if self.preset not in UNET_PRESETS:
            raise ValueError(
                f"TrainConfig.preset = {self.preset!r}: unknown U-Net preset; allowed: {', '.join(map(repr, UNET_PRESETS))}"
            )
        steps = _int("steps", 1)
        _int("batch_size", 1)
        _int("warmup_steps", 0)
        _int("checkpoint_every", 1)
        _int("seed", 0)
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"TrainConfig.lr = {self.lr!r}: must be a finite number > 0")
        if not (isinstance(self.grad_clip, (int, float)) and math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise ValueError(f"TrainConfig.grad_clip = {self.grad_clip!r}: must be a finite number ≥ 0 (0 disables clipping)")
        if not (isinstance(self.ema_decay, (int, float)) and 0.0 <= self.ema_decay < 1.0):
            raise ValueError(f"TrainConfig.ema_decay = {self.ema_decay!r}: must lie in [0, 1)")
        if not (isinstance(self.eps, (int, float)) and 0.0 < self.eps < 1.0):
            raise ValueError(f"TrainConfig.eps = {self.eps!r}: must lie in (0, 1); score_sde uses 1e-5")
        if not isinstance(self.bf16, bool):
            raise ValueError(f"TrainConfig.bf16 = {self.bf16!r}: must be True or False")
        if self.mean_head is not None and not isinstance(self.mean_head, bool):
            raise ValueError(f"TrainConfig.mean_head = {self.mean_head!r}: must be None (on for RGB), True or False")
        if self.device not in _DEVICES:
            raise ValueError(f"TrainConfig.device = {self.device!r}: must be one of {_DEVICES}")
        keep = self.keep_steps
        if not isinstance(keep, tuple):
            raise ValueError(f"TrainConfig.keep_steps = {keep!r}: must be a tuple of steps, e.g. (500, 1000)")
        for k in keep:
            if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= steps:
                raise ValueError(f"TrainConfig.keep_steps contains {k!r}: each kept step must be an integer in [1, steps={steps}]")
        if len(set(keep)) != len(keep):
            raise ValueError(f"TrainConfig.keep_steps = {keep!r} contains duplicates")

    def uses_mean_head(self, channels: int) -> bool:
        """Whether a model of ``channels`` channels trained with this configuration gets the mean head."""
        return channels == 3 if self.mean_head is None else self.mean_head

    def to_dict(self) -> dict:
        """The configuration as JSON-able plain values (``mean_head`` only when set: older keys are unchanged)."""
        out = dataclasses.asdict(self)
        out["keep_steps"] = list(self.keep_steps)
        if self.mean_head is None:
            out.pop("mean_head")
        return out


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the score model carrying the EMA weights (eval mode).
        losses: the training loss of every step done so far, 1-based step s at index s − 1
            (including the steps of earlier, resumed-from calls).
        kept: ``{step: path}`` of the kept EMA weight files present in ``work_dir``.
        seconds_per_step: wall-clock seconds per optimisation step in this call (NaN if none ran).
        steps_done: the global step reached (``config.steps``, or ``stop_after``).
        resumed_from: the step of the checkpoint this call resumed from (0 for a fresh start).
        record: what the trainer reports beyond the losses (:meth:`Trainer.record`; DP-SGD: ε spent).
    """

    model: ScoreModel
    losses: tuple[float, ...]
    kept: dict[int, Path]
    seconds_per_step: float
    steps_done: int
    resumed_from: int
    record: dict = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        tail = self.losses[-min(len(self.losses), 50):]
        loss = sum(tail) / len(tail) if tail else float("nan")
        return (
            f"TrainResult(steps={self.steps_done}, resumed_from={self.resumed_from}, "
            f"loss(last {len(tail)})={loss:.4f}, {self.seconds_per_step:.3f} s/step, kept={sorted(self.kept)})"
        )


def resolve_device(device: DeviceName) -> torch.device:
    """Training's device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (the current CUDA device), checked by the package's
    one :func:`safcore.runtime.device.resolve_device` (``"cuda"`` without a GPU raises ``ValueError``)."""
    if device not in _DEVICES:
        raise ValueError(f"device {device!r}: must be one of {_DEVICES}")
    from safcore.runtime.device import resolve_device as resolve

    return resolve(device)


def _fingerprint(images: torch.Tensor) -> str:
    """SHA-256 (16 hex digits) of the training images' shape and float32 bytes."""
    data = images.detach().to("cpu", torch.float32).contiguous()
    digest = hashlib.sha256(str(tuple(data.shape)).encode())
    digest.update(data.numpy().tobytes())
    return digest.hexdigest()[:16]


class Trainer:
    """One training state (model, Adam, EMA, generator) and its single optimisation step.

    Args:
        images_unit (torch.Tensor of shape (N, C, S, S)): training images in [0, 1]; C = 1 or 3 and
            S = 28, 64 or 128 px set the U-Net's channels and ``sample_size`` / levels
            (:func:`safcore.generators.score_model.build_unet`).
        config: the :class:`TrainConfig`.
        sde: the forward SDE (default :class:`safcore.generators.sde.SubVPSDE`); its ``marginal_prob``
            gives the perturbation kernel's mean and std.

    The model is initialised after ``torch.manual_seed(config.seed)``; batch indices, diffusion times
    and noise come from ``self.generator`` (a CPU ``torch.Generator`` seeded with ``config.seed``),
    so a run is reproducible from its checkpoint regardless of other code using the global RNG.
    """

    def __init__(self, images_unit: torch.Tensor, config: TrainConfig, sde=None):
        if not isinstance(images_unit, torch.Tensor) or images_unit.ndim != 4:
            raise ValueError(
                f"images_unit must be a tensor of shape (N, C, H, W) in [0, 1], got "
                f"{type(images_unit).__name__} of shape {tuple(getattr(images_unit, 'shape', ()))}"
            )
        if images_unit.shape[0] < 1:
            raise ValueError("images_unit holds no images (N = 0)")
        if images_unit.shape[1] not in (1, 3):
            raise ValueError(f"images_unit has {images_unit.shape[1]} channels; allowed: 1 (grey) or 3 (RGB)")
        if images_unit.shape[-1] != images_unit.shape[-2]:
            raise ValueError(f"images_unit are {images_unit.shape[-2]}×{images_unit.shape[-1]} px; allowed: square images "
                             "of 28, 64 or 128 px")
        check_image_size(int(images_unit.shape[-1]), "the training images")
        if not torch.is_floating_point(images_unit):
            raise ValueError(f"images_unit must be floating point in [0, 1], got dtype {images_unit.dtype}")
        lo, hi = float(images_unit.min()), float(images_unit.max())
        if lo < 0.0 or hi > 1.0 or not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"images_unit must lie in [0, 1] (unit range), got values in [{lo:.4g}, {hi:.4g}]")
        self.config = config
        self.sde = sde if sde is not None else SubVPSDE()
        self.device = resolve_device(config.device)
        self.data_fingerprint = _fingerprint(images_unit)
        # Data stays on the training device in model range [-1, 1]; shape (N, C, H, W).
        self.data = to_model_range(images_unit.detach().to(self.device, torch.float32))
        torch.manual_seed(config.seed)
        unet = build_unet(config.preset, channels=int(images_unit.shape[1]), image_size=int(images_unit.shape[-1]))
        self.mean_prior = MeanPrior.from_images(self.data) if config.uses_mean_head(int(images_unit.shape[1])) else None
        self.model = ScoreModel(unet, self.sde, self.mean_prior).to(self.device)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.param_names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=config.lr)
        self.ema = EMAModel(self.params, decay=config.ema_decay, foreach=True)
        self.ema.to(self.device)
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed)
        self.step_count = 0
        self.losses: list[float] = []

    def lr_at(self, step: int) -> float:
        """Learning rate of 1-based ``step``: ``lr · min(1, step / warmup_steps)``."""
        w = self.config.warmup_steps
        return self.config.lr * (min(1.0, step / w) if w > 0 else 1.0)

    def loss(self, x0: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Noise-prediction DSM loss (Song et al. Eq. 7 with λ(t) = std²), averaged over pixels and batch.

        Args:
            x0 (torch.Tensor of shape (B, C, H, W)): clean images in model range [-1, 1].
            t (torch.Tensor of shape (B,)): diffusion times in [eps, 1].
            z (torch.Tensor of shape (B, C, H, W)): standard normal noise.
        Returns:
            scalar fp32 tensor mean((ε̂_θ(x_t, t) − z)²), x_t = mean(t)·x0 + std(t)·z.
        """
        mean, std = self.sde.marginal_prob(x0, t)
        xt = mean + std.reshape(-1, *([1] * (x0.ndim - 1))) * z
        with bf16_autocast(self.device, self.config.bf16):
            eps_hat = self.eps_hat(xt, t)
        return torch.mean((eps_hat.float() - z) ** 2)

    def eps_hat(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε̂_θ(x_t, t) (B, C, H, W) of the network being trained; a subclass may call it through a wrapper
        (:class:`safcore.study.distributed.DDPTrainer`: DDP, whose backward all-reduces the gradients)."""
        return self.model.eps(xt, t)

    @property
    def batch_per_step(self) -> int:
        """Images this process draws per step: ``config.batch_size`` (a data-parallel rank draws its share)."""
        return self.config.batch_size

    def draw_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batch indices, times t ~ U(eps, 1) of shape (B,) and noise z of shape (B, C, H, W), from the generator;
        B = :attr:`batch_per_step`."""
        cfg, g, b = self.config, self.generator, self.batch_per_step
        idx = torch.randint(0, self.data.shape[0], (b,), generator=g)
        t = torch.rand(b, generator=g) * (1.0 - cfg.eps) + cfg.eps
        z = torch.randn((b, *self.data.shape[1:]), generator=g)
        return self.data[idx.to(self.device)], t.to(self.device), z.to(self.device)

    def step(self) -> float:
        """One optimisation step (lr warm-up, loss, backward, clipping, Adam, EMA); returns the loss."""
        self.step_count += 1
        lr = self.lr_at(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x0, t, z = self.draw_batch()
        loss = self.loss(x0, t, z)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.optimizer.step()
        self.ema.step(self.params)
        value = float(loss.detach())
        self.losses.append(value)
        return value

    # ----------------------------------------------------------------- checkpoint state
    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The full training state as (tensors, string metadata) for a safetensors file; nothing pickled.

        Tensors: ``model.<name>``, ``ema.<name>``, ``optim.<i>.<key>`` (Adam's step, exp_avg,
        exp_avg_sq per parameter index i), ``rng.generator`` / ``rng.torch`` (/ ``rng.cuda``) byte
        states and ``losses`` (float64, one per step). Metadata: strings (JSON where structured),
        among them ``step``, the ``config``, the ``sde`` (:func:`sde_identity`) and the ``device_type``
        ("cpu" / "cuda") that :meth:`load_state` checks.
        """
        tensors: dict[str, torch.Tensor] = {}
        for name, p in zip(self.param_names, self.params):
            tensors[f"model.{name}"] = p.detach()
        for name, s in zip(self.param_names, self.ema.shadow_params):
            tensors[f"ema.{name}"] = s.detach()
        opt_state = self.optimizer.state_dict()
        for index, state in opt_state["state"].items():
            for key, value in state.items():
                if not isinstance(value, torch.Tensor):
                    value = torch.tensor(value)
                tensors[f"optim.{index}.{key}"] = value
        tensors["rng.generator"] = self.generator.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        tensors["losses"] = torch.tensor(self.losses, dtype=torch.float64)
        ema_scalars = {k: v for k, v in self.ema.state_dict().items() if k != "shadow_params"}
        metadata = {
            "format": CHECKPOINT_FORMAT,
            "step": str(self.step_count),
            "config": json.dumps(self.config.to_dict(), sort_keys=True),
            "data_fingerprint": self.data_fingerprint,
            "param_groups": json.dumps(opt_state["param_groups"]),
            "ema": json.dumps(ema_scalars),
            "unet_config": json.dumps(dict(self.model.unet.config)),
            "sde": sde_identity(self.sde),
            "device_type": self.device.type,
        }
        return tensors, metadata

    def load_state(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str], *, source: str = "checkpoint") -> None:
        """Restore the state written by :meth:`state_tensors`.

        Raises ``ValueError`` (nothing restored) if the checkpoint does not fit this trainer: another
        format, another trajectory configuration, other images, another SDE or another device type
        (a resumed run continues the same trajectory only on the device type it started on). A
        checkpoint written before checkpoints recorded their SDE counts as trained with the default
        ``SubVPSDE()``; its device type is read from its RNG states (``rng.cuda`` only on CUDA).
        """
        if metadata.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{source}: not a safcore training checkpoint (format {metadata.get('format')!r})")
        saved = json.loads(metadata["config"])
        mine = self.config.to_dict()
        differ = [f for f in _TRAJECTORY_FIELDS if saved.get(f) != mine[f]]
        if differ:
            details = ", ".join(f"{f}: saved {saved.get(f)!r} vs now {mine[f]!r}" for f in differ)
            raise ValueError(f"{source} was written with another training configuration ({details}); use a fresh work_dir")
        if metadata.get("data_fingerprint") != self.data_fingerprint:
            raise ValueError(f"{source} was written for other training images; use a fresh work_dir")
        saved_sde, my_sde = metadata.get("sde", _DEFAULT_SDE), sde_identity(self.sde)
        if saved_sde != my_sde:
            older = "" if "sde" in metadata else " (it records no SDE: written by an older safcore, whose default this was)"
            raise ValueError(
                f"{source} was trained with the SDE {saved_sde}{older}, but this run uses {my_sde}; resuming would "
                f"mix two diffusion processes in one model. Resume with sde={saved_sde} or use a fresh work_dir"
            )
        saved_device = metadata.get("device_type", "cuda" if "rng.cuda" in tensors else "cpu")
        if saved_device != self.device.type:
            raise ValueError(
                f"{source} was written on device type {saved_device!r}, but this run is on {self.device.type!r} "
                f"(TrainConfig.device = {self.config.device!r}); a run resumes only on the device type it started "
                f"on (its random states and kernels differ between devices). Resume with device={saved_device!r} "
                f"or use a fresh work_dir"
            )
        with torch.no_grad():
            for name, p in zip(self.param_names, self.params):
                p.copy_(tensors[f"model.{name}"])
        ema_state = json.loads(metadata["ema"])
        ema_state["shadow_params"] = [tensors[f"ema.{name}"].to(self.device) for name in self.param_names]
        self.ema.load_state_dict(ema_state)
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, field = key.split(".", 2)
                state.setdefault(int(index), {})[field] = value
        param_groups = json.loads(metadata["param_groups"])
        for group in param_groups:  # JSON turns Adam's betas tuple into a list
            if "betas" in group:
                group["betas"] = tuple(group["betas"])
        self.optimizer.load_state_dict({"state": state, "param_groups": param_groups})
        self.generator.set_state(tensors["rng.generator"])
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        self.step_count = int(metadata["step"])
        self.losses = [float(v) for v in tensors["losses"].tolist()]
        if len(self.losses) != self.step_count:
            raise ValueError(f"{source}: {len(self.losses)} losses stored for step {self.step_count} (corrupt)")

    def record(self) -> dict:
        """JSON-safe facts about this training beyond its losses (none for plain training)."""
        return {}

    def ema_model(self) -> ScoreModel:
        """A copy of the score model carrying the EMA weights, in eval mode."""
        unet = UNet2DModel.from_config(self.model.unet.config)
        model = ScoreModel(unet, self.sde, self.mean_prior).to(self.device)
        names = dict(zip(self.param_names, self.ema.shadow_params))
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(names[name])
        return model.eval()

    def save_checkpoint(self, work_dir: Path) -> Path:
        """Write ``checkpoint_step{N:06d}.safetensors`` (N = the current step) so that a readable one always remains.

        Guarantees, in this order: the state (:meth:`state_tensors`, plus the SHA-256 of its tensors
        as ``tensors_sha256``) is written to a temporary file, fsynced and renamed into place
        (:func:`safcore.runtime.runs.atomic_save_safetensors`); the file is read back (:func:`read_checkpoint`:
        format, step and tensor digest); only then are older checkpoints deleted, all but the previous
        one (the highest step below N), which stays as the fallback if this one is later found
        unreadable. Checkpoints of higher steps are never touched.

        Raises:
            CheckpointError: the file just written does not read back as written; it is renamed
                ``<name>.unreadable`` and nothing is deleted.
        """
        work_dir = Path(work_dir)
        tensors, metadata = self.state_tensors()
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        metadata = {**metadata, "tensors_sha256": _tensors_sha256(tensors)}
        path = work_dir / f"checkpoint_step{self.step_count:06d}.safetensors"
        atomic_save_safetensors(tensors, path, metadata)
        try:
            read_checkpoint(path, expect_step=self.step_count)
        except CheckpointError as error:
            aside = path.with_name(path.name + UNREADABLE_SUFFIX)
            os.replace(path, aside)
            raise CheckpointError(
                f"the checkpoint just written does not read back: {error}. It is set aside as {aside.name} and "
                f"the older checkpoints are kept; check the disk under {work_dir}"
            ) from error
        older = sorted(s for s in (_checkpoint_step(p) for p in work_dir.glob(_CHECKPOINT_GLOB)) if s is not None
                       and s < self.step_count)
        for step in older[:-1]:  # all but the previous one
            (work_dir / f"checkpoint_step{step:06d}.safetensors").unlink(missing_ok=True)
        return path

    def kept_tensors(self) -> dict[str, torch.Tensor]:
        """The current EMA weights under the UNet's state-dict names."""
        return {name.removeprefix("unet."): s for name, s in zip(self.param_names, self.ema.shadow_params)}

    def kept_metadata(self) -> dict[str, str]:
        """Metadata of a kept EMA weights file: format, step, config, data fingerprint, U-Net config."""
        return {
            "format": KEPT_FORMAT,
            "step": str(self.step_count),
            "config": json.dumps(self.config.to_dict(), sort_keys=True),
            "data_fingerprint": self.data_fingerprint,
            "unet_config": json.dumps(dict(self.model.unet.config)),
            **({"mean_prior": json.dumps(self.mean_prior.to_dict())} if self.mean_prior is not None else {}),
        }

    def save_kept(self, work_dir: Path) -> Path:
        """Write the current EMA weights as ``ema_step{N:06d}.safetensors`` (UNet state-dict names)."""
        return atomic_save_safetensors(self.kept_tensors(), kept_path(work_dir, self.step_count), self.kept_metadata())


def sde_identity(sde) -> str:
    """How a checkpoint names its SDE: ``repr(sde)`` (e.g. ``SubVPSDE(beta_min=0.1, beta_max=20.0)``), or
    ``module.QualName`` for a class without its own ``__repr__`` (the default one holds a memory address)."""
    if type(sde).__repr__ is object.__repr__:
        return f"{type(sde).__module__}.{type(sde).__qualname__}"
    return repr(sde)


def _tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order (CPU tensors)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())  # the bytes, without a copy
    return digest.hexdigest()


def _checkpoint_step(path: Path) -> int | None:
    """The step in a ``checkpoint_step{N}.safetensors`` name; ``None`` for any other name."""
    match = _CHECKPOINT_NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def _checkpoints(work_dir: Path) -> list[Path]:
    """The checkpoint files of ``work_dir``, highest step first."""
    found = [p for p in Path(work_dir).glob(_CHECKPOINT_GLOB) if _checkpoint_step(p) is not None]
    return sorted(found, key=_checkpoint_step, reverse=True)


def kept_path(work_dir: str | Path, step: int) -> Path:
    """``work_dir / f"ema_step{step:06d}.safetensors"``."""
    return Path(work_dir) / f"ema_step{step:06d}.safetensors"


def latest_checkpoint(work_dir: str | Path) -> Path | None:
    """The checkpoint of highest step in ``work_dir`` (``None`` if there is none), readable or not
    (:func:`train` resumes from the highest *readable* one)."""
    found = _checkpoints(Path(work_dir))
    return found[0] if found else None


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    return load_file(str(path)), metadata


def read_checkpoint(path: str | Path, *, expect_step: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a training checkpoint whole and check it is what was written.

    Guarantees on return: the safetensors file opened and all its tensors loaded; its metadata has the
    training-checkpoint format and a step equal to the one in its name (and to ``expect_step`` if given);
    its loss history has one entry per step; and, where the metadata records ``tensors_sha256`` (every
    checkpoint since it was introduced), the loaded tensors hash to it.

    Raises:
        CheckpointError: naming the file and what is wrong (truncated or corrupt file, wrong format or
            step, digest mismatch). Whether the checkpoint fits a trainer is :meth:`Trainer.load_state`'s check.
    """
    path = Path(path)
    try:
        tensors, metadata = _read_safetensors(path)
    except Exception as error:  # safetensors raises its own SafetensorError (e.g. "invalid header length")
        raise CheckpointError(f"{path} cannot be read ({type(error).__name__}: {error}); it is truncated or corrupt") from error
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: format {metadata.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    named = _checkpoint_step(path)
    try:
        step = int(metadata.get("step", ""))
    except ValueError:
        raise CheckpointError(f"{path}: metadata step {metadata.get('step')!r} is not an integer") from None
    for expected, what in ((named, "its name"), (expect_step, "the step written")):
        if expected is not None and step != expected:
            raise CheckpointError(f"{path}: metadata says step {step}, but {what} says {expected}")
    losses = tensors.get("losses")
    if losses is None or losses.numel() != step:
        count = "no" if losses is None else losses.numel()
        raise CheckpointError(f"{path}: {count} losses stored for step {step}; expected one per step")
    recorded = metadata.get("tensors_sha256")
    if recorded is not None and _tensors_sha256(tensors) != recorded:
        raise CheckpointError(f"{path}: its tensors do not match the SHA-256 recorded when it was written (corrupt)")
    return tensors, metadata


def resume_point(work_dir: Path) -> tuple[Path, dict[str, torch.Tensor], dict[str, str]] | None:
    """The highest-step readable checkpoint of ``work_dir`` with its content; ``None`` if there is none.

    Unreadable checkpoints above it are renamed ``<name>.unreadable`` (kept for inspection, out of the
    way of later resumes and of :meth:`Trainer.save_checkpoint`'s clean-up) and a
    :class:`CheckpointFallbackWarning` names each of them and the checkpoint resumed from.

    Raises:
        ValueError: checkpoints exist but none is readable (naming every file and its fault).
    """
    bad: list[tuple[Path, CheckpointError]] = []
    for path in _checkpoints(work_dir):
        try:
            tensors, metadata = read_checkpoint(path)
        except CheckpointError as error:
            bad.append((path, error))
            continue
        if bad:
            for unreadable, _ in bad:
                os.replace(unreadable, unreadable.with_name(unreadable.name + UNREADABLE_SUFFIX))
            faults = "; ".join(str(error) for _, error in bad)
            warnings.warn(
                f"resuming from the previous checkpoint {path} (step {metadata['step']}) because the latest "
                f"{'checkpoint is' if len(bad) == 1 else 'checkpoints are'} unreadable: {faults}. Set aside as "
                f"{', '.join(p.name + UNREADABLE_SUFFIX for p, _ in bad)}; the steps after "
                f"{metadata['step']} are trained again.",
                CheckpointFallbackWarning,
                stacklevel=3,
            )
        return path, tensors, metadata
    if bad:
        faults = "\n  ".join(str(error) for _, error in bad)
        raise ValueError(
            f"no readable checkpoint to resume from in {work_dir}; every one is damaged:\n  {faults}\n"
            f"Delete them (or the whole work_dir) to train from the start."
        )
    return None


def train(
    images_unit: torch.Tensor,
    config: TrainConfig,
    work_dir: str | Path,
    *,
    sde=None,
    progress: bool = True,
    stop_after: int | None = None,
    make_trainer=None,
) -> TrainResult:
    """Train a score model by denoising score matching (module docstring), resuming from ``work_dir``.

    Args:
        images_unit (torch.Tensor of shape (N, C, S, S)): training images in [0, 1]; C (1 or 3) and
            S (28, 64 or 128 px) set the U-Net's channels and size (checked before ``work_dir`` is made).
        config: the :class:`TrainConfig`.
        work_dir: folder for checkpoints and kept EMA weights; if it holds a checkpoint of this
            configuration and these images, training continues from the latest readable one (an
            unreadable later one is set aside with a :class:`CheckpointFallbackWarning`).
            Temporary files that dead processes left in it are removed first.
        sde: the forward SDE (default :class:`safcore.generators.sde.SubVPSDE`).
        progress: show a tqdm progress bar with the running loss.
        stop_after: stop once this global step is done, without a final checkpoint (simulates a
            crash; the next call resumes from the last periodic checkpoint). ``None``: run to
            ``config.steps``.
        make_trainer: ``make_trainer(images_unit, config, sde)`` builds the training state (default
            :class:`Trainer`; DP-SGD: :class:`safcore.defences.dpsgd.DPTrainer`). Its checkpoints carry
            what it needs to resume (e.g. the privacy accountant).

    Returns:
        :class:`TrainResult` with the EMA score model.

    Raises:
        ValueError: bad ``stop_after``, a checkpoint of another configuration, other images, another
            SDE or device type, a checkpoint beyond ``config.steps``, or checkpoints none of which is readable.
        CheckpointError: a checkpoint written in this call does not read back (the disk is failing).
    """
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int) or not 1 <= stop_after <= config.steps):
        raise ValueError(f"stop_after = {stop_after!r}: must be None or an integer in [1, steps={config.steps}]")
    work_dir = Path(work_dir)
    trainer = (make_trainer or Trainer)(images_unit, config, sde)  # checks the images before anything is written
    work_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(work_dir)
    found = resume_point(work_dir)
    if found is not None:
        checkpoint, tensors, metadata = found
        trainer.load_state(tensors, metadata, source=str(checkpoint))
        if trainer.step_count > config.steps:
            raise ValueError(
                f"{checkpoint} is at step {trainer.step_count}, beyond steps={config.steps}; "
                f"use load_kept() for earlier steps or a fresh work_dir"
            )
    resumed_from = trainer.step_count
    target = config.steps if stop_after is None else stop_after
    keep = set(config.keep_steps)
    bar = progress_bar(total=target, initial=resumed_from, enabled=progress, desc=f"train {config.preset}", unit="step")
    start = time.perf_counter()
    try:
        while trainer.step_count < target:
            loss = trainer.step()
            step = trainer.step_count
            if step in keep:
                trainer.save_kept(work_dir)
            if step % config.checkpoint_every == 0 or step == config.steps:
                trainer.save_checkpoint(work_dir)
            bar.update(1)
            if progress and (step % 10 == 0 or step == target):
                bar.set_postfix(loss=f"{sum(trainer.losses[-10:]) / len(trainer.losses[-10:]):.4f}")
    finally:
        bar.close()
    ran = trainer.step_count - resumed_from
    elapsed = time.perf_counter() - start
    kept = {k: kept_path(work_dir, k) for k in sorted(keep) if kept_path(work_dir, k).is_file()}
    return TrainResult(
        model=trainer.ema_model(),
        record=trainer.record(),
        losses=tuple(trainer.losses),
        kept=kept,
        seconds_per_step=elapsed / ran if ran else float("nan"),
        steps_done=trainer.step_count,
        resumed_from=resumed_from,
    )


def load_kept(
    work_dir_or_file: str | Path, step: int | None = None, sde=None, *, device: DeviceName = "cpu"
) -> ScoreModel:
    """Load kept EMA weights (``ema_step{N:06d}.safetensors``) as an eval-mode :class:`ScoreModel`.

    Args:
        work_dir_or_file: a training ``work_dir`` (then ``step`` is required) or the file itself.
        step: the kept step; checked against the file's metadata when a file is given.
        sde: the SDE of the score model (default :class:`safcore.generators.sde.SubVPSDE`).
        device: where to put the model.
    """
    path = Path(work_dir_or_file)
    if path.is_dir():
        if step is None:
            raise ValueError(f"load_kept({str(path)!r}): a work_dir needs the step to load")
        file = kept_path(path, step)
        if not file.is_file():
            available = sorted(int(p.stem.removeprefix("ema_step")) for p in path.glob("ema_step*.safetensors"))
            raise ValueError(f"no kept EMA weights for step {step} in {path}; kept steps: {available}")
    elif path.is_file():
        file = path
    else:
        raise ValueError(f"load_kept: {str(path)!r} is neither a work_dir nor a kept-weights file")
    tensors, metadata = _read_safetensors(file)
    if metadata.get("format") != KEPT_FORMAT:
        raise ValueError(f"{file}: not a kept EMA weights file (format {metadata.get('format')!r})")
    if step is not None and int(metadata["step"]) != step:
        raise ValueError(f"{file} holds step {metadata['step']}, not the requested step {step}")
    unet = UNet2DModel.from_config(json.loads(metadata["unet_config"]))
    unet.load_state_dict(tensors, strict=True)
    prior = json.loads(metadata["mean_prior"]) if "mean_prior" in metadata else None
    prior = MeanPrior(tuple(prior["mean"]), tuple(prior["var"])) if prior is not None else None
    model = ScoreModel(unet, sde if sde is not None else SubVPSDE(), prior)
    return model.to(resolve_device(device)).eval()

