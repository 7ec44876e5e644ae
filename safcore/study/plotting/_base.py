"""What every figure module shares: the colours, :func:`save_figure` and the image-panel helpers.

Images are unit-range tensors or arrays, ``(C, H, W)`` / ``(B, C, H, W)`` with C = 1 or 3 (or ``(H, W)``);
grey ones are shown with ``cmap="gray", vmin=0, vmax=1``, colour ones transposed to ``(H, W, 3)``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

HIGHLIGHT_COLOUR = "#d62728"
GROUP_COLOURS = (HIGHLIGHT_COLOUR, "#ff7f0e", "#9467bd", "#2ca02c")
_PANEL = 1.45  # inches per image panel


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 150) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically (temporary file in the same folder, ``os.replace``)."""
    from safcore.runtime.runs import atomic_write

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"save_figure writes PNG; {str(path)!r} must end in .png")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_write(path, buffer.getvalue())


def _as_array(image: Any) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        return image.detach().to("cpu", torch.float32).numpy()
    return np.asarray(image, dtype=np.float32)


def _display(image: Any) -> np.ndarray:
    """One image, ``(H, W)``, ``(1|3, H, W)`` or ``(1, 1|3, H, W)`` → ``(H, W)`` or ``(H, W, 3)`` in [0, 1]."""
    array = _as_array(image)
    while array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[0] in (1, 3):
        array = array[0] if array.shape[0] == 1 else np.transpose(array, (1, 2, 0))
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3)):
        raise ValueError(f"cannot show an image of shape {np.shape(_as_array(image))}; expected (H, W), (1|3, H, W)")
    return np.clip(array, 0.0, 1.0)


def _batch(images: Any, name: str) -> list[np.ndarray]:
    """A batch ``(B, C, H, W)`` (or a sequence of images) → list of displayable arrays."""
    if isinstance(images, (torch.Tensor, np.ndarray)):
        array = _as_array(images)
        if array.ndim != 4:
            raise ValueError(f"{name} must be a batch (B, C, H, W); got shape {array.shape}")
        return [_display(x) for x in array]
    return [_display(x) for x in images]


def _show(ax: plt.Axes, image: Any, title: str | None = None, *, fontsize: float = 8) -> None:
    array = _display(image)
    if array.ndim == 2:
        ax.imshow(array, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(array, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title is not None:
        ax.set_title(title, fontsize=fontsize)


def _frame(ax: plt.Axes, label: str | None = None, colour: str = HIGHLIGHT_COLOUR) -> None:
    """A coloured frame around an image panel (drawn inside the axes, so it survives tight layouts)."""
    ax.add_patch(
        Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, edgecolor=colour, linewidth=3, clip_on=False)
    )
    if label:
        ax.text(
            0.03, 0.97, label, transform=ax.transAxes, color="white", fontsize=7, va="top", ha="left",
            bbox={"facecolor": colour, "edgecolor": "none", "pad": 1.0},
        )


def _image_axes(nrows: int, ncols: int, n_used: int, *, title: str | None = None) -> tuple[Figure, list[plt.Axes]]:
    fig, axes = plt.subplots(nrows, ncols, figsize=(_PANEL * ncols, _PANEL * nrows + (0.4 if title else 0)),
                             squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n_used:]:
        fig.delaxes(ax)
    if title:
        fig.suptitle(title)
    return fig, flat[:n_used]


def _indices(values: Iterable[Any] | torch.Tensor | np.ndarray) -> list[int]:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    if isinstance(values, np.ndarray):
        return [int(v) for v in values.reshape(-1)]
    return [int(v) for v in values]
