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

What a checkpoint holds, how it is written, read back and resumed from, and the kept EMA weights:
:mod:`safcore.generators.checkpoints`.

Data parallel (:class:`Trainer` with ``parallel``, :class:`safcore.runtime.parallel.DataParallel`): each of the W
ranks builds the same initial model, draws its share ``batch_size / W`` of the global batch from its own generator
seeded with ``derived_seed(config.seed, rank)`` (:func:`safcore.runtime.parallel.derived_seed`) and runs the U-Net
through the group's wrapper (``DistributedDataParallel``), whose backward all-reduces (averages) the gradients; the
recorded loss is the mean over ranks. Clipping, Adam and the EMA then see identical gradients, so weights and EMA
stay identical on all ranks. Checkpoints and kept weights are written by the main rank and record the world size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DModel
from diffusers.training_utils import EMAModel

from safcore.data.datasets import check_image_size, to_model_range
from safcore.generators.checkpoints import (
    KEPT_FORMAT,
    kept_path,
    restore_training_state,
    resume_point,
    training_state,
    write_checkpoint,
)
from safcore.generators.score_model import UNET_PRESETS, MeanPrior, ScoreModel, build_unet
from safcore.generators.sde import SubVPSDE
from safcore.runtime.device import bf16_autocast, check_device_name, resolve_device, training_attention
from safcore.runtime.parallel import DDP_FORMAT, DataParallel, rank_seeds
from safcore.runtime.progress import progress_bar
from safcore.runtime.runs import atomic_save_safetensors, remove_stale_temporaries

__all__ = [
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "train",
]



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
        device: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:N" or a ``torch.device``
            (:func:`safcore.runtime.device.resolve_device`). A ``torch.device`` is recorded (:meth:`to_dict`) by its
            type: its index says where this process trains, not how.
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
    device: str | torch.device = "auto"
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
        check_device_name(self.device, "TrainConfig.device")
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
        if isinstance(self.device, torch.device):
            out["device"] = self.device.type
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

    def __init__(self, images_unit: torch.Tensor, config: TrainConfig, sde=None, *, parallel: DataParallel | None = None):
        world = 1 if parallel is None else parallel.world_size
        if config.batch_size % world:
            raise ValueError(
                f"TrainConfig.batch_size = {config.batch_size} (the global batch) is not a multiple of the world size "
                f"{world}; allowed: a multiple of {world}, e.g. {max(1, round(config.batch_size / world)) * world}"
            )
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
        self.step_count = 0
        self.losses: list[float] = []
        self.parallel = parallel
        if parallel is not None and parallel.accelerator is not None and parallel.accelerator.device.type != self.device.type:
            raise ValueError(
                f"TrainConfig.device = {config.device!r} resolves to {self.device.type!r} but the accelerator runs on "
                f"{parallel.accelerator.device.type!r}; use device={parallel.accelerator.device.type!r}"
            )
        self.local_batch = config.batch_size // world
        self.rank_seeds = rank_seeds(config.seed, world)  # [config.seed] for one process
        self.generator = torch.Generator(device="cpu").manual_seed(self.rank_seeds[0 if parallel is None else parallel.rank])
        # data parallel: the DDP wrapper shares the U-Net's parameters (self.params, the optimizer and the EMA see them)
        self.net = None if parallel is None else parallel.wrap(self.model.unet)
        self._gathered: tuple[int, list[torch.Tensor]] | None = None

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
        # the attention kernel that pays on this device (runtime.device.training_attention_kernel; in the manifest)
        with bf16_autocast(self.device, self.config.bf16), training_attention(self.device, self.config.bf16):
            eps_hat = self.eps_hat(xt, t)
        return torch.mean((eps_hat.float() - z) ** 2)

    def eps_hat(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε̂_θ(x_t, t) (B, C, H, W) of the network being trained, through the data-parallel wrapper when there is
        one (DDP, whose backward all-reduces the gradients)."""
        return self.model.eps(xt, t, unet=self.net)

    @property
    def batch_per_step(self) -> int:
        """Images this process draws per step: ``config.batch_size``, or a data-parallel rank's share ``B / W``."""
        return self.local_batch

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
        if self.parallel is not None and self.parallel.world_size > 1:  # the mean over ranks (equal local batches)
            value = float(np.mean(self.parallel.gather(value)))
            self.losses[-1] = value
        return value

    # ----------------------------------------------------------------- checkpoint state
    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The full training state as (tensors, string metadata) (:func:`safcore.generators.checkpoints.training_state`).

        Data parallel: plus ``rng.generator.rank{r}`` for every rank and metadata ``distributed`` (format, world
        size, rank seeds), from the states :meth:`gather_generator_states` gathered at this step (not collective
        itself)."""
        if self.parallel is None:
            return training_state(self)
        if self._gathered is None or self._gathered[0] != self.step_count:
            if self.parallel.world_size > 1:
                raise RuntimeError("Trainer.state_tensors: call gather_generator_states() on every rank at this "
                                   "step first (save_checkpoint does)")
            self._gathered = (self.step_count, [self.generator.get_state()])
        tensors, metadata = training_state(self)
        for r, state in enumerate(self._gathered[1]):
            tensors[f"rng.generator.rank{r}"] = state
        metadata["distributed"] = json.dumps(self._ddp_record(), sort_keys=True)
        return tensors, metadata

    def load_state(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str], *, source: str = "checkpoint") -> None:
        """Restore the state written by :meth:`state_tensors` (:func:`safcore.generators.checkpoints.restore_training_state`;
        ``ValueError`` if it does not fit this trainer). Data parallel: then this rank's generator state; a
        checkpoint of another world size or of single-process training is refused (its trajectory cannot be
        continued here)."""
        if self.parallel is not None:
            if "distributed" not in metadata:
                raise ValueError(f"{source} was written by single-process training (safcore.generators.train.train); a "
                                 f"distributed run cannot continue it; use a fresh work_dir")
            saved = json.loads(metadata["distributed"])
            if saved.get("world_size") != self.parallel.world_size:
                raise ValueError(
                    f"{source} was written by a run with world size {saved.get('world_size')}; this run has world size "
                    f"{self.parallel.world_size}. Each rank's data stream depends on the world size, so a resume is "
                    f"exact only with the same one: relaunch with --num_processes {saved.get('world_size')} or use a "
                    f"fresh work_dir"
                )
        restore_training_state(self, tensors, metadata, source=source)
        if self.parallel is not None:
            self.generator.set_state(tensors[f"rng.generator.rank{self.parallel.rank}"])

    def gather_generator_states(self) -> list[torch.Tensor]:
        """Every rank's generator state (rank order); a collective call: every rank must make it."""
        states = [s.clone() for s in self.parallel.gather(self.generator.get_state())]
        self._gathered = (self.step_count, states)
        return states

    def _ddp_record(self) -> dict:
        return {"format": DDP_FORMAT, "world_size": self.parallel.world_size, "rank_seeds": self.rank_seeds,
                "seed_rule": "derived_seed(config.seed, rank)"}
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
        """Write ``checkpoint_step{N:06d}.safetensors`` (N = the current step) with :meth:`state_tensors`
        (:func:`safcore.generators.checkpoints.write_checkpoint`: read back before older ones are deleted).

        Data parallel: every rank gathers the generator states; the main process writes; all ranks then learn
        whether it succeeded (a barrier).

        Raises:
            CheckpointError: the file just written does not read back as written.
        """
        if self.parallel is None:
            return write_checkpoint(*self.state_tensors(), work_dir, self.step_count)
        self.gather_generator_states()
        path = Path(work_dir) / f"checkpoint_step{self.step_count:06d}.safetensors"
        error: BaseException | None = None
        if self.parallel.is_main:
            try:
                path = write_checkpoint(*self.state_tensors(), work_dir, self.step_count)
            except Exception as caught:  # re-raised below, after the other ranks have heard of it
                error = caught
        outcome = self.parallel.gather(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        if outcome[0] is not None:
            raise RuntimeError(f"the main process failed to write {path}: {outcome[0]}")
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
            **({"distributed": json.dumps(self._ddp_record(), sort_keys=True)} if self.parallel is not None else {}),
        }

    def save_kept(self, work_dir: Path) -> Path:
        """Write the current EMA weights as ``ema_step{N:06d}.safetensors`` (UNet state-dict names); data parallel:
        the main rank writes, the others write nothing."""
        path = kept_path(work_dir, self.step_count)
        if self.parallel is not None and not self.parallel.is_main:
            return path
        return atomic_save_safetensors(self.kept_tensors(), path, self.kept_metadata())

    def ema_digest(self) -> str:
        """SHA-256 of the EMA weights' bytes (to check that every rank holds the same EMA)."""
        digest = hashlib.sha256()
        for s in self.ema.shadow_params:
            digest.update(s.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
        return digest.hexdigest()


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
            trainer.step()
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


