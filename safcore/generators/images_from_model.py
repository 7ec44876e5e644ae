"""Unit-range images drawn from a generator: the form an audit takes (float32 ``(N, C, H, W)`` in ``[0, 1]``, CPU).

:func:`draw_unit_images` is one draw from the prior by a :class:`safcore.generators.score_model.ScoreModel` (through
:func:`safcore.generators.sampling.sample`) or by a model with its own ``sample`` (a
:class:`safcore.generators.diffusers_model.DiffusersModel`); :func:`sample_images_from_unet` reads any diffusers
``UNet2DModel`` (or a folder it was saved to) as a sub-VP ε-predictor and samples from it.
"""

from __future__ import annotations

import os

import torch
from diffusers import UNet2DModel

from safcore.data.datasets import from_model_range
from safcore.generators.sampling import Method, sample
from safcore.generators.score_model import ScoreModel
from safcore.generators.sde import SDE

__all__ = ["draw_unit_images", "sample_images_from_unet"]


def draw_unit_images(
    model,
    n: int,
    generator: torch.Generator,
    *,
    shape: tuple[int, int, int] | None = None,
    method: Method = "euler_maruyama",
    steps: int = 100,
    eps: float = 1e-3,
    autocast_bf16: bool = False,
) -> torch.Tensor:
    """``n`` samples from the prior in one call, as unit-range float32 images ``(n, C, H, W)`` on the CPU.

    A :class:`~safcore.generators.score_model.ScoreModel` draws with :func:`safcore.generators.sampling.sample`
    (``method``, ``steps``, ``eps``; ``shape`` ``(C, H, W)``, default its channels and image size); any other model
    (:class:`safcore.generators.diffusers_model.DiffusersModel`) with its own ``sample`` (its scheduler's ``steps``
    steps; ``method``, ``eps`` and ``shape`` do not apply). The images are ``(x + 1) / 2`` of the model-range
    samples, clamped to ``[0, 1]``.
    """
    if isinstance(model, ScoreModel):
        if shape is None:
            shape = (model.channels, model.image_size, model.image_size)
        result = sample(model, model.sde, shape=(n, *shape), method=method, steps=steps, eps=eps, generator=generator,
                        autocast_bf16=autocast_bf16, progress=False)
    else:
        result = model.sample(n, steps=steps, generator=generator, autocast_bf16=autocast_bf16, progress=False)
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
    if isinstance(unet_or_path, ScoreModel):
        model = unet_or_path if sde is None else ScoreModel(unet_or_path.unet, sde, unet_or_path.mean_prior)
    elif isinstance(unet_or_path, UNet2DModel):
        model = ScoreModel(unet_or_path, sde)
    elif isinstance(unet_or_path, (str, os.PathLike)):
        model = ScoreModel.from_pretrained(unet_or_path, sde)
    else:
        raise ValueError(f"expected a UNet2DModel, a ScoreModel or a saved model's folder, got {type(unet_or_path).__name__}")
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
