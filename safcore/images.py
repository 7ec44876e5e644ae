"""Where audited images come from: arrays, ``.npy`` / ``.npz`` files, PNG folders, or a diffusers U-Net.

:func:`load_images` reads what a user generated elsewhere; :func:`sample_images_from_unet` draws new
images from any diffusers ``UNet2DModel`` (read as a sub-VP ε-predictor). Both return float32
``(N, C, H, W)`` in ``[0, 1]``, the form :func:`safcore.audit.audit` takes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from safcore.data import match_channels

if TYPE_CHECKING:
    from diffusers import UNet2DModel

    from safcore.models import ScoreModel
    from safcore.sampling import Method
    from safcore.sde import SDE

IMAGE_SUFFIXES = (".png",)


def _to_unit(array: torch.Tensor | np.ndarray, what: str) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array)) if isinstance(array, np.ndarray) else array.detach().cpu()
    if tensor.dtype == torch.uint8:
        return tensor.float() / 255.0
    if tensor.dtype == torch.bool or not (tensor.is_floating_point()):
        raise ValueError(f"{what} have dtype {tensor.dtype}; allowed: uint8 (0..255) or float in [0, 1]")
    tensor = tensor.float()
    if tensor.numel() and not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{what} contain NaN or infinite values; allowed: finite values in [0, 1]")
    if tensor.numel() and (float(tensor.min()) < 0.0 or float(tensor.max()) > 1.0):
        raise ValueError(
            f"{what} are float with values in [{float(tensor.min()):.3g}, {float(tensor.max()):.3g}]; "
            f"allowed: [0, 1] (model-range [-1, 1] images: apply safcore.data.from_model_range first)"
        )
    return tensor


def _to_nchw(tensor: torch.Tensor, what: str) -> torch.Tensor:
    if tensor.ndim == 3:
        return tensor[:, None]
    if tensor.ndim == 4:
        if tensor.shape[1] in (1, 3):
            return tensor
        if tensor.shape[-1] in (1, 3):
            return tensor.permute(0, 3, 1, 2)
        raise ValueError(f"{what} of shape {tuple(tensor.shape)}: neither (N, C, H, W) nor (N, H, W, C) with C in (1, 3)")
    raise ValueError(f"{what} of shape {tuple(tensor.shape)}: allowed (N, H, W), (N, H, W, C) or (N, C, H, W)")


def _read_png_folder(folder: Path) -> np.ndarray:
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"folder {str(folder)!r} holds no {'/'.join(IMAGE_SUFFIXES)} images")
    images = []
    for file in files:
        with Image.open(file) as image:
            if image.mode not in ("L", "RGB"):
                raise ValueError(f"{str(file)!r} has PIL mode {image.mode!r}; allowed: 'L' (grey) or 'RGB' (8 bit)")
            images.append(np.asarray(image))
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ValueError(f"the images in {str(folder)!r} differ in shape: {sorted(shapes)}")
    return np.stack(images)  # (N, H, W) or (N, H, W, 3) uint8


def load_images(source: torch.Tensor | np.ndarray | str | os.PathLike, channels: int | None = None, key: str | None = None) -> torch.Tensor:
    """Images to audit, as float32 ``(N, C, H, W)`` in ``[0, 1]``.

    Args:
        source: a tensor or array — uint8 in ``0..255`` or float in ``[0, 1]``, shaped ``(N, H, W)``,
            ``(N, H, W, C)`` or ``(N, C, H, W)`` with ``C`` in 1 or 3 — or the path of a ``.npy`` /
            ``.npz`` file holding such an array, or of a folder of ``.png`` files (read in name order).
        channels: ``3`` repeats grey images three times (the paper's convention); ``None`` keeps them.
        key: which array of an ``.npz`` to read; default its only array, or ``"images"``.
    Raises:
        ValueError: unreadable source, bad dtype/range/shape, no images, or impossible ``channels``.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        what = f"images in {str(path)!r}"
        if path.is_dir():
            raw: torch.Tensor | np.ndarray = _read_png_folder(path)
        elif path.suffix == ".npy" and path.is_file():
            raw = np.load(path, allow_pickle=False)
        elif path.suffix == ".npz" and path.is_file():
            with np.load(path, allow_pickle=False) as archive:
                names = list(archive.files)
                if key is None:
                    key = names[0] if len(names) == 1 else ("images" if "images" in names else None)
                if key is None or key not in names:
                    raise ValueError(f"{str(path)!r} holds arrays {names}; pass key= to choose one")
                raw = archive[key]
        else:
            raise ValueError(f"cannot read images from {str(path)!r}: allowed a folder of PNGs, a .npy or a .npz file")
    elif isinstance(source, (torch.Tensor, np.ndarray)):
        raw, what = source, "images"
    else:
        raise ValueError(f"cannot read images from a {type(source).__name__}; allowed: Tensor, ndarray, folder, .npy, .npz")
    tensor = _to_nchw(_to_unit(raw, what), what)
    if tensor.shape[0] == 0:
        raise ValueError(f"{what}: the set is empty (0 images)")
    return match_channels(tensor, channels)


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
    :class:`safcore.models.ScoreModel` and sampled from the prior with
    :func:`safcore.sampling.sample` (``method``, ``steps``).

    Returns:
        float32 ``(n, C, H, W)`` in ``[0, 1]`` on the CPU.
    """
    from diffusers import UNet2DModel

    from safcore.data import from_model_range
    from safcore.models import ScoreModel
    from safcore.sampling import sample

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n = {n!r} images: must be an integer ≥ 1")
    if isinstance(unet_or_path, ScoreModel):
        model = unet_or_path if sde is None else ScoreModel(unet_or_path.unet, sde)
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
