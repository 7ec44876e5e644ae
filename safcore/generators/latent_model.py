"""A latent diffusion model as the generator under audit: an autoencoder and a scheduler-driven network on its latents.

Most published medical generators diffuse the latents of an autoencoder (Rombach et al. 2022): an encoder ``E``
maps an image ``x`` (model range ``[-1, 1]``) to a latent, the diffusion network learns the distribution of
``z = s · E(x)`` (``s``: the scale factor that brings the latents to unit variance), and a draw is
``x = D(z / s)``. :class:`LatentModel` is that composition as a :class:`~safcore.generators.base.Generator`:

- ``encode(x) = s · E(x)``, ``decode(z) = D(z / s)``;
- ``coefficients``, ``eps``, ``diffuse``, ``reverse``, ``time_for_ratio``, ``marginal_std``: the inner
  :class:`~safcore.generators.scheduled.ScheduledModel`'s, in latent space (so Algorithm 1's ``t'`` is a time of
  the latent diffusion);
- ``sample``: latents from the inner model's prior through all its steps, decoded (in batches).

The libraries' autoencoders differ in how they are called; an adapter (:class:`AutoencoderAdapter`) hides it.
:func:`safcore.generators.loader.autoencoder_adapter` picks one for a module:

- diffusers ``AutoencoderKL`` (:class:`DiffusersKL`): ``E(x)`` = the mode (= mean) of its Gaussian posterior,
  ``vae.encode(x).latent_dist.mode()``; ``D(z) = vae.decode(z).sample``. The mean rather than a draw: the audit
  encodes ``x_p`` once and a draw would add the posterior's noise to the probe's own;
- diffusers ``VQModel`` (:class:`DiffusersVQ`): ``E(x) = vqvae.encode(x).latents``, the latents *before*
  quantization; ``D`` quantizes (``vqvae.decode(z).sample``, ``force_not_quantize=False``), as ``LDMPipeline``
  decodes its draws (the LDM convention: the quantizer is part of the decoder);
- MONAI ``AutoencoderKL`` (:class:`MonaiKL`): ``E(x)`` = ``z_mu`` of ``autoencoder.encode(x)`` (the posterior's
  mean; ``encode_stage_2_inputs``, which ``LatentDiffusionInferer`` trains on, draws from the posterior),
  ``D = decode_stage_2_outputs``;
- MONAI ``VQVAE`` (:class:`MonaiVQ`): ``E = encode_stage_2_inputs`` (the quantized latents),
  ``D = decode_stage_2_outputs`` (quantizes again: a no-op on quantized latents), as ``LatentDiffusionInferer``;
- :class:`TensorAutoencoder`: any module whose ``encode`` and ``decode`` return tensors (known-answer tests).

With MONAI's ``LatentDiffusionInferer(scheduler, scale_factor=s)`` and a :class:`~safcore.generators.monai_model.
MonaiModel` inside, :meth:`LatentModel.sample` is ``inferer.sample(noise, autoencoder, unet)`` bit for bit; with
a diffusers ``VQModel`` and a :class:`~safcore.generators.diffusers_model.DiffusersModel`, it is ``LDMPipeline``'s
draw before its ``(x + 1) / 2`` clamp (``s = vqvae.config.scaling_factor``).

Shapes: images ``(B, C, H, W)`` model range; latents ``(B, c, h, w)`` as the inner network takes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from safcore.generators.scheduled import SampleOutput, ScheduledModel, weights_sha256

__all__ = ["AutoencoderAdapter", "DiffusersKL", "DiffusersVQ", "MonaiKL", "MonaiVQ", "TensorAutoencoder", "LatentModel"]

#: Images encoded or decoded at once (memory stays bounded for a whole D_p).
CHUNK = 64


class AutoencoderAdapter:
    """One library's autoencoder behind ``encode(x) → E(x)`` and ``decode(z) → D(z)`` (module docstring).

    Args:
        module: the autoencoder (a ``torch.nn.Module``); ``kind`` names how it is called, as reports show it."""

    kind = "autoencoder"

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def __repr__(self) -> str:
        return f"{type(self.module).__name__} ({self.kind})"

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``E(x)``: images ``(B, C, H, W)`` model range → latents ``(B, c, h, w)`` (unscaled)."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``D(z)``: unscaled latents → images ``(B, C, H, W)`` model range."""
        raise NotImplementedError


class DiffusersKL(AutoencoderAdapter):
    kind = "diffusers KL, posterior mode"

    def encode(self, x):
        return self.module.encode(x).latent_dist.mode()

    def decode(self, z):
        return self.module.decode(z).sample


class DiffusersVQ(AutoencoderAdapter):
    kind = "diffusers VQ, latents before quantization"

    def encode(self, x):
        return self.module.encode(x).latents

    def decode(self, z):
        return self.module.decode(z).sample


class MonaiKL(AutoencoderAdapter):
    kind = "MONAI KL, posterior mean"

    def encode(self, x):
        return self.module.encode(x)[0]

    def decode(self, z):
        return self.module.decode_stage_2_outputs(z)


class MonaiVQ(AutoencoderAdapter):
    kind = "MONAI VQ, quantized latents"

    def encode(self, x):
        return self.module.encode_stage_2_inputs(x)

    def decode(self, z):
        return self.module.decode_stage_2_outputs(z)


class TensorAutoencoder(AutoencoderAdapter):
    kind = "encode/decode"

    def encode(self, x):
        return self.module.encode(x)

    def decode(self, z):
        return self.module.decode(z)


class LatentModel:
    """An autoencoder and a scheduler-driven diffusion network on its scaled latents (module docstring).

    Args:
        autoencoder: the autoencoder behind its adapter (:func:`safcore.generators.loader.autoencoder_adapter`).
        diffusion: the network on the latents with its scheduler (a ``DiffusersModel`` or a ``MonaiModel`` whose
            ``channels`` / ``image_size`` are the latents').
        scale_factor: ``s`` of ``z = s · E(x)`` (MONAI: ``LatentDiffusionInferer.scale_factor``; diffusers: the
            autoencoder's ``config.scaling_factor``), a number > 0.
        source: where the model came from (shown in reports).
    """

    sde = None
    space = "latent"

    def __init__(self, autoencoder: AutoencoderAdapter, diffusion: ScheduledModel, *, scale_factor: float,
                 source: str = "") -> None:
        if not isinstance(autoencoder, AutoencoderAdapter):
            raise ValueError(f"autoencoder is a {type(autoencoder).__name__}; allowed: an AutoencoderAdapter "
                             "(safcore.generators.loader.autoencoder_adapter(module) picks one)")
        if not all(hasattr(diffusion, a) for a in ("with_scheduler", "num_train_timesteps", "diffuse", "reverse")):
            raise ValueError(f"diffusion is a {type(diffusion).__name__}; allowed: a DiffusersModel or a MonaiModel on "
                             "the latents")
        if isinstance(scale_factor, bool) or not isinstance(scale_factor, (int, float)) or not 0.0 < scale_factor < np.inf:
            raise ValueError(f"scale_factor = {scale_factor!r}; allowed: a number > 0")
        self.autoencoder, self.diffusion = autoencoder, diffusion
        self.scale_factor, self.source = float(scale_factor), str(source)
        self._image_shape: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return (f"LatentModel({self.source or 'in memory'!s}: autoencoder {self.autoencoder!r}, scale_factor "
                f"{self.scale_factor:.6g}, latents {self.diffusion.channels}×{self.diffusion.image_size}×"
                f"{self.diffusion.image_size}; {self.diffusion!r})")

    # ------------------------------------------------------------------ what it is
    @property
    def unet(self) -> torch.nn.Module:
        """The diffusion network on the latents."""
        return self.diffusion.unet

    @property
    def device(self) -> torch.device:
        return self.diffusion.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def t_min(self) -> float:
        return self.diffusion.t_min

    @property
    def num_train_timesteps(self) -> int:
        return self.diffusion.num_train_timesteps

    @property
    def scheduler_name(self) -> str:
        return self.diffusion.scheduler_name

    @property
    def full_schedule_only(self) -> bool:
        return self.diffusion.full_schedule_only

    @property
    def prediction_type(self) -> str:
        return self.diffusion.prediction_type

    def _shape(self) -> tuple[int, int]:
        """``(channels, image_size)`` of the decoded images: one zero latent decoded (once)."""
        if self._image_shape is None:
            size = self.diffusion.image_size
            z = torch.zeros(1, self.diffusion.channels, size, size, device=self.device)
            image = self.decode(z)
            if image.ndim != 4 or image.shape[-1] != image.shape[-2]:
                raise ValueError(f"the autoencoder decodes a latent to shape {tuple(image.shape)}; allowed: square 2-D "
                                 "images (1, C, S, S)")
            self._image_shape = (int(image.shape[1]), int(image.shape[-1]))
        return self._image_shape

    @property
    def channels(self) -> int:
        """Channels of the images (not of the latents)."""
        return self._shape()[0]

    @property
    def image_size(self) -> int:
        """Side of the square images in px (not of the latents)."""
        return self._shape()[1]

    def to(self, device: str | torch.device):
        self.diffusion.to(device)
        self.autoencoder.module.to(device)
        return self

    def eval(self):
        self.diffusion.eval()
        self.autoencoder.module.eval()
        return self

    def with_scheduler(self, choice: str, eta: float | None = None) -> LatentModel:
        """The same autoencoder with the inner network under another scheduler (``inner.with_scheduler``)."""
        return LatentModel(self.autoencoder, self.diffusion.with_scheduler(choice, eta), scale_factor=self.scale_factor,
                           source=self.source)

    @property
    def num_classes(self) -> int | None:
        """The inner network's classes (``None``: unconditional)."""
        return self.diffusion.num_classes

    @property
    def label(self) -> int | None:
        """The inner network's fixed class (``None``: none fixed, or unconditional)."""
        return self.diffusion.label

    def conditioned(self, label: int | None) -> LatentModel:
        """The same autoencoder with the inner network's class fixed to ``label`` (``inner.conditioned``)."""
        inner = self.diffusion.conditioned(label)
        if inner is self.diffusion:
            return self
        return LatentModel(self.autoencoder, inner, scale_factor=self.scale_factor, source=self.source)

    def identity(self) -> dict:
        """The inner model's identity, the autoencoder's weights hash and class, the scale factor."""
        return {**self.diffusion.identity(), "space": "latent",
                "autoencoder": type(self.autoencoder.module).__name__, "autoencoder_kind": self.autoencoder.kind,
                "autoencoder_sha256": weights_sha256(self.autoencoder.module), "scale_factor": self.scale_factor}

    # ------------------------------------------------------------------ images ↔ latents
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``z = s · E(x)`` for images ``(B, C, H, W)`` model range, in chunks of :data:`CHUNK`; float32 latents on
        the images' device."""
        out = [self.autoencoder.encode(x.to(self.device, torch.float32)).float() * self.scale_factor
               for x in images.split(CHUNK)]
        return torch.cat(out).to(images.device)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``x = D(z / s)`` for latents ``(B, c, h, w)``, in chunks of :data:`CHUNK`; float32 images model range on
        the latents' device."""
        out = [self.autoencoder.decode(x.to(self.device, torch.float32) / self.scale_factor).float()
               for x in z.split(CHUNK)]
        return torch.cat(out).to(z.device)

    # ------------------------------------------------------------------ the inner model's kernel and processes
    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.diffusion.coefficients(t)

    def marginal_std(self, ts: Sequence[float] | np.ndarray) -> np.ndarray:
        return self.diffusion.marginal_std(ts)

    def time_for_ratio(self, ratio: float) -> float:
        return self.diffusion.time_for_ratio(ratio)

    def timestep(self, t: float) -> int:
        return self.diffusion.timestep(t)

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε̂ of the inner network for latents ``x``."""
        return self.diffusion.eps(x, t)

    def diffuse(self, x0: torch.Tensor, t_vec: torch.Tensor, steps: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Latents ``x0`` → ``z_t ~ q(z_t | z_0)`` (the inner scheduler's ``add_noise``)."""
        return self.diffusion.diffuse(x0, t_vec, steps, generator)

    def reverse(self, x_t: torch.Tensor, t_vec: torch.Tensor, steps: int, generator: torch.Generator | None = None,
                *, autocast_bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents from each row's ``t`` to ``z_0`` (the inner model's :meth:`~ScheduledModel.reverse`), not decoded."""
        return self.diffusion.reverse(x_t, t_vec, steps, generator, autocast_bf16=autocast_bf16)

    def sample(self, n: int, *, steps: int, generator: torch.Generator | None = None, batch_size: int | None = None,
               autocast_bf16: bool = False, progress: bool = True) -> SampleOutput:
        """``n`` images: latents of the inner model's :meth:`~ScheduledModel.sample` (its prior, all ``steps`` steps)
        decoded, ``batch_size`` at a time (default all at once); ``(n, C, H, W)`` model range on the CPU."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n = {n!r} images; allowed: an integer ≥ 1")
        size = n if batch_size is None else int(batch_size)
        outs = []
        for start in range(0, n, size):
            latents = self.diffusion.sample(min(size, n - start), steps=steps, generator=generator,
                                            autocast_bf16=autocast_bf16, progress=progress).images
            outs.append(self.decode(latents.to(self.device)).cpu())
        return SampleOutput(images=torch.cat(outs), nfe=int(steps))
