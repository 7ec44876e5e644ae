"""Where audited images come from: arrays, ``.npy`` / ``.npz`` files or PNG folders.

:func:`load_images` reads what a user generated elsewhere (new images drawn from a model:
:func:`safcore.generators.images_from_model.sample_images_from_unet`). It returns float32
``(N, C, H, W)`` in ``[0, 1]``, the form :func:`safcore.audit.sample_audit.audit` takes.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from safcore.runtime.checks import describe_head, expect_format, file_head, regular_file
from safcore.data.datasets import match_channels

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
            f"allowed: [0, 1] (model-range [-1, 1] images: apply safcore.data.datasets.from_model_range first)"
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
    for file in files:  # every file by its header, before any is decoded
        expect_format(file, "png", "image", "8-bit grey or RGB PNG files")
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


_ARRAY_FILES = "a .npy file (np.save), a .npz file (np.savez) or a folder of PNGs"


def _read_array_file(path: Path, key: str | None) -> tuple[np.ndarray, str | None]:
    """The image array of a ``.npy`` / ``.npz`` file, checked by its header first (a text file named
    ``samples.npy`` is named as text, not handed to numpy, whose error speaks of pickles)."""
    fmt = path.suffix.lower()[1:]
    expect_format(path, fmt, "images file", _ARRAY_FILES)
    try:
        if fmt == "npy":
            return np.load(path, allow_pickle=False), key
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            if key is None:
                key = names[0] if len(names) == 1 else ("images" if "images" in names else None)
            if key is None or key not in names:
                raise ValueError(f"{str(path)!r} holds arrays {names}; pass key= to choose one")
            return archive[key], key
    except ValueError as error:
        if "pickle" in str(error):  # an object array: numpy refuses it without allow_pickle
            raise ValueError(f"images file {str(path)!r} holds Python objects, not numbers; allowed: a uint8 or float "
                             "array (N, H, W), (N, H, W, C) or (N, C, H, W)") from None
        if str(path) in str(error):
            raise
        raise ValueError(f"images file {str(path)!r} cannot be read ({error})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"images file {str(path)!r} cannot be read: it is damaged or truncated "
                         f"({type(error).__name__}: {error})") from None


def check_images_fit(images: torch.Tensor, channels: int, size: int, what: str = "the images to audit",
                     against: str = "D_p's images") -> None:
    """Check that ``images`` (N, C, H, W) have ``channels`` channels and ``size`` × ``size`` px, before any work.

    safcore neither resizes nor converts colour: either would change what counts as a copy of ``x_p``.

    Raises:
        ValueError: one line naming both shapes and what to give instead.
    """
    if images.ndim != 4:
        raise ValueError(f"{what} have shape {tuple(images.shape)}; allowed: (N, C, H, W)")
    have = int(images.shape[1])
    if have != channels:
        name = {1: "grey (1 channel)", 3: "RGB (3 channels)"}
        raise ValueError(f"{what} are {name.get(have, f'{have}-channel')}; {against} are "
                         f"{name.get(channels, f'{channels}-channel')}: give {name.get(channels, str(channels))} images "
                         "made by the model trained on them (safcore does not convert colour)")
    height, width = int(images.shape[2]), int(images.shape[3])
    if (height, width) != (size, size):
        raise ValueError(f"{what} are {height}×{width} px; {against} are {size}×{size} px: give images at "
                         f"{size}×{size} px (safcore does not resize: it would change what counts as a copy)")


def load_images(source: torch.Tensor | np.ndarray | str | os.PathLike, channels: int | None = None, key: str | None = None) -> torch.Tensor:
    """Images to audit, as float32 ``(N, C, H, W)`` in ``[0, 1]``.

    Args:
        source: a tensor or array — uint8 in ``0..255`` or float in ``[0, 1]``, shaped ``(N, H, W)``,
            ``(N, H, W, C)`` or ``(N, C, H, W)`` with ``C`` in 1 or 3 — or the path of a ``.npy`` /
            ``.npz`` file holding such an array, or of a folder of ``.png`` files (read in name order). Every
            file is identified by its header before it is read (a text file named ``samples.npy`` is named as
            text; object arrays are refused, never unpickled).
        channels: ``3`` repeats grey images three times (the paper's convention); ``None`` keeps them.
        key: which array of an ``.npz`` to read; default its only array, or ``"images"``.
    Raises:
        ValueError: unreadable source (named, with what it is), bad dtype/range/shape, no images, or impossible
            ``channels`` (RGB images for grey data: :func:`check_images_fit`'s message).
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        what = f"images in {str(path)!r}"
        if not path.exists():
            raise ValueError(f"cannot read images from {str(path)!r}: it does not exist; allowed a folder of PNGs, a "
                             ".npy or a .npz file")
        if path.is_dir():
            raw: torch.Tensor | np.ndarray = _read_png_folder(path)
        elif path.suffix.lower() in (".npy", ".npz"):
            raw, key = _read_array_file(path, key)
        else:
            kind = describe_head(file_head(regular_file(path, "images file")))
            raise ValueError(f"cannot read images from {str(path)!r} ({kind}): allowed a folder of PNGs, a .npy or "
                             "a .npz file")
    elif isinstance(source, (torch.Tensor, np.ndarray)):
        raw, what = source, "images"
    else:
        raise ValueError(f"cannot read images from a {type(source).__name__}; allowed: Tensor, ndarray, folder, .npy, .npz")
    tensor = _to_nchw(_to_unit(raw, what), what)
    if tensor.shape[0] == 0:
        raise ValueError(f"{what}: the set is empty (0 images)")
    if channels is not None and channels != tensor.shape[1] and not (tensor.shape[1] == 1 and channels == 3):
        check_images_fit(tensor, channels, int(tensor.shape[-1]), what=what, against="the data's images")
    return match_channels(tensor, channels)
