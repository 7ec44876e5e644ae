"""Unit-range images drawn from a generator: the form an audit takes (float32 ``(N, C, H, W)`` in ``[0, 1]``, CPU).

:func:`draw_unit_images` is one draw from the prior by a :class:`safcore.generators.score_model.ScoreModel` (through
:func:`safcore.generators.sampling.sample`) or by a model with its own ``sample`` (a
:class:`safcore.generators.diffusers_model.DiffusersModel`); :func:`sample_images_from_unet` reads any diffusers
``UNet2DModel`` (or a folder it was saved to) as a sub-VP ε-predictor and samples from it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from safcore.data.datasets import from_model_range
from safcore.generators.sampling import Method, sample
from safcore.generators.loader import as_generator, as_score_model
from safcore.generators.sde import SDE

if TYPE_CHECKING:
    from diffusers import UNet2DModel

    from safcore.generators.score_model import ScoreModel

__all__ = ["draw_unit_images", "sample_images_from_unet"]


def draw_unit_images(
    model,
    n: int,
    generator: torch.Generator,
    *,
    method: Method = "euler_maruyama",
    steps: int = 100,
    eps: float = 1e-3,
    autocast_bf16: bool = False,
) -> torch.Tensor:
    """``n`` samples from the prior in one call, as unit-range float32 images ``(n, C, H, W)`` on the CPU.

    Any model :func:`~safcore.generators.loader.as_generator` accepts, through its generator's ``sample``: a
    :class:`~safcore.generators.score_model.ScoreModel` with :func:`safcore.generators.sampling.sample` (``method``,
    ``steps``, ``eps``, its channels and image size), a :class:`~safcore.generators.diffusers_model.DiffusersModel`
    with its scheduler's ``steps`` steps (``method`` and ``eps`` do not apply). The images are ``(x + 1) / 2`` of the model-range
    samples, clamped to ``[0, 1]``.
    """
    generator_model = as_generator(model, method=method, eps=eps)
    result = generator_model.sample(n, steps=steps, generator=generator, autocast_bf16=autocast_bf16, progress=False)
    return from_model_range(result.images.float().cpu()).clamp(0.0, 1.0)


def sample_images_from_unet(
    unet_or_path: UNet2DModel | ScoreModel | str | os.PathLike,
    n: int,
    *,
    sde: SDE | None = None,
    method: Method = "euler_maruyama",
    steps: int = 1000,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """``n`` images from a diffusers ``UNet2DModel`` (or a folder it was saved to), unit range.

    The U-Net is read as an ε-predictor of the given SDE (default sub-VP) through
    :class:`safcore.generators.score_model.ScoreModel` and sampled from the prior with
    :func:`safcore.generators.sampling.sample` (``method``, ``steps``).

    Returns:
        float32 ``(n, C, H, W)`` in ``[0, 1]`` on the CPU.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n = {n!r} images: must be an integer ≥ 1")
    model = as_score_model(unet_or_path, sde)
    if device is not None:
        model = model.to(device)
    model.eval()
    size = int(model.unet.config.sample_size if isinstance(model.unet.config.sample_size, int) else model.unet.config.sample_size[0])
    generator = torch.Generator(model.device).manual_seed(seed)
    result = sample(
        model, model.sde, shape=(n, model.channels, size, size), method=method, steps=steps,
        generator=generator, batch_size=batch_size, progress=progress,
    )
    return from_model_range(result.images).float().cpu()
