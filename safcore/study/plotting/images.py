"""Image figures: grids, Eq. 10's construction, samples beside their nearest training image, rows per
group (Fig. 5), reverse samples per t (Fig. 4), the adversary's training examples (Fig. 7) and the
error map (Fig. 10, left)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from safcore.study.plotting._base import (
    _PANEL,
    GROUP_COLOURS,
    HIGHLIGHT_COLOUR,
    _as_array,
    _batch,
    _display,
    _frame,
    _image_axes,
    _indices,
    _show,
)

if TYPE_CHECKING:
    from safcore.adversary.classifiers import AugmentedExamples

def image_grid(
    images: torch.Tensor | np.ndarray | Sequence[Any],
    ncols: int = 8,
    titles: Sequence[str] | None = None,
    highlight: Iterable[int] = (),
    highlight_label: str = "x_p",
    *,
    title: str | None = None,
) -> Figure:
    """A grid of images; those whose index is in ``highlight`` get a red frame and ``highlight_label``.

    Args:
        images: (B, C, H, W) in [0, 1] (or a sequence of images).
        ncols: panels per row.
        titles: one title per image, or ``None``.
        highlight: indices into ``images`` to frame (e.g. the q-positives among samples).
        highlight_label: the tag written in a highlighted panel.
        title: the figure's title.

    Returns:
        The figure, one axes per image.
    """
    shown = _batch(images, "images")
    if not shown:
        raise ValueError("image_grid needs at least one image")
    if ncols < 1:
        raise ValueError(f"ncols={ncols!r} must be >= 1")
    if titles is not None and len(titles) != len(shown):
        raise ValueError(f"{len(titles)} titles for {len(shown)} images")
    marked = set(_indices(highlight))
    ncols = min(ncols, len(shown))
    fig, axes = _image_axes(math.ceil(len(shown) / ncols), ncols, len(shown), title=title)
    for i, (ax, image) in enumerate(zip(axes, shown)):
        _show(ax, image, titles[i] if titles is not None else None)
        if i in marked:
            _frame(ax, highlight_label)
    fig.tight_layout()
    return fig


def saf_construction(x_i: Any, mask: Any, x_p: Any) -> Figure:
    """Eq. 10 in three panels: the clean image ``x_i``, the mask ``L_p`` and the fingerprinted ``x_p``.

    Args:
        x_i: (C, H, W) unit range.
        mask: (H, W) (or (1, H, W)) in {0, 1}.
        x_p: (C, H, W) unit range.
    """
    fig, axes = plt.subplots(1, 3, figsize=(3 * 2.0, 2.5))
    _show(axes[0], x_i, r"$\mathbf{x}_i$", fontsize=11)
    _show(axes[1], mask, r"$L_p$ (SAF mask)", fontsize=11)
    _show(axes[2], x_p, r"$\mathbf{x}_p$", fontsize=11)
    fig.suptitle(r"$\mathbf{x}_p = \mathbf{x}_i\,(1 - L_p) + \mathbf{x}_{SAF}\,L_p$   (Eq. 10)")
    fig.tight_layout()
    return fig


def samples_vs_nearest(
    samples: torch.Tensor | np.ndarray,
    train: torch.Tensor | np.ndarray,
    indices: torch.Tensor | np.ndarray,
    distances: torch.Tensor | np.ndarray,
    *,
    pairs_per_row: int = 4,
    max_pairs: int = 16,
) -> Figure:
    """Each sample beside its nearest training image, titled with their ℓ2 distance.

    Args:
        samples: (B, C, H, W) generated images.
        train: (N, C, H, W) training images.
        indices, distances: from :func:`safcore.measures.memorization.nearest_neighbours`, (B, k) or (B,); the first
            column is used.
        pairs_per_row: pairs side by side in one row.
        max_pairs: show at most the first this many samples.

    Returns:
        The figure, two axes per shown pair (sample, then its neighbour).
    """
    shown = _batch(samples, "samples")[:max_pairs]
    train_array = _as_array(train)
    idx = _as_array(indices).astype(np.int64).reshape(len(_as_array(indices)), -1)[:, 0]
    dist = _as_array(distances).reshape(len(_as_array(distances)), -1)[:, 0]
    if len(idx) < len(shown) or len(dist) < len(shown):
        raise ValueError(f"{len(shown)} samples but {len(idx)} neighbour indices and {len(dist)} distances")
    if not shown:
        raise ValueError("samples_vs_nearest needs at least one sample")
    per_row = min(pairs_per_row, len(shown))
    fig, axes = _image_axes(math.ceil(len(shown) / per_row), 2 * per_row, 2 * len(shown))
    for i, sample in enumerate(shown):
        _show(axes[2 * i], sample, f"sample {i}")
        _show(axes[2 * i + 1], train_array[idx[i]], f"train {idx[i]}\nℓ2 = {dist[i]:.3g}")
        _frame(axes[2 * i + 1], None, colour="#7f7f7f")
    fig.tight_layout()
    return fig


def samples_by_group(
    groups: Mapping[str, torch.Tensor | np.ndarray],
    highlight: Mapping[str, Iterable[int] | Mapping[int, str]] | None = None,
    highlight_label: str = "q",
    *,
    title: str | None = None,
) -> Figure:
    """One row of images per group (e.g. samples per ``N_D``, paper Fig. 5, or per training step).

    Args:
        groups: row label → (n, C, H, W) images.
        highlight: row label → indices (into that row) to frame, or index → tag (each tag its own colour).
        highlight_label: the tag written in framed panels when ``highlight`` gives bare indices.

    Returns:
        The figure, one axes per image.
    """
    if not groups:
        raise ValueError("samples_by_group needs at least one group")
    rows = {name: _batch(images, f"groups[{name!r}]") for name, images in groups.items()}
    other_tags = sorted({str(tag) for chosen in (highlight or {}).values() if isinstance(chosen, Mapping)
                         for tag in chosen.values()} - {highlight_label})
    ncols = max(1, max(len(r) for r in rows.values()))
    fig = plt.figure(figsize=(_PANEL * ncols + 1.2, _PANEL * len(rows)))
    grid = fig.add_gridspec(len(rows), ncols)
    for r, (name, images) in enumerate(rows.items()):
        chosen = (highlight or {}).get(name, ())
        marked = ({int(i): str(tag) for i, tag in chosen.items()} if isinstance(chosen, Mapping)
                  else {i: highlight_label for i in _indices(chosen)})
        if not images:
            ax = fig.add_subplot(grid[r, 0])
            ax.axis("off")
            ax.text(0.5, 0.5, "none", ha="center", va="center")
        for c, image in enumerate(images):
            ax = fig.add_subplot(grid[r, c])
            _show(ax, image)
            if c in marked:
                tag = marked[c]
                _frame(ax, tag, colour=HIGHLIGHT_COLOUR if tag == highlight_label
                       else GROUP_COLOURS[1 + other_tags.index(tag) % (len(GROUP_COLOURS) - 1)])
            if c == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def reverse_examples(
    query_images_by_t: Mapping[float, Any],
    samples_by_t: Mapping[float, Any],
    *,
    per_t: int = 1,
) -> Figure:
    """Paper Fig. 4: for each t, the query ``x_{t,p}`` (top row) above the reverse sample it leads to.

    Args:
        query_images_by_t: t → (C, H, W) or (n, C, H, W) queries in unit range.
        samples_by_t: t → the matching reverse samples, same shapes.
        per_t: how many (query, sample) columns to show per t.

    Returns:
        The figure: 2 rows × (number of t × per_t) axes, ascending in t.
    """
    ts = sorted(query_images_by_t)
    if not ts:
        raise ValueError("reverse_examples needs at least one t")
    if sorted(samples_by_t) != ts:
        raise ValueError(f"queries are given for t = {ts} but samples for t = {sorted(samples_by_t)}")

    def _first(images: Any) -> list[np.ndarray]:
        array = _as_array(images)
        return _batch(array, "images")[:per_t] if array.ndim == 4 else [_display(array)]

    columns: list[tuple[float, np.ndarray, np.ndarray]] = []
    for t in ts:
        for query, sample in zip(_first(query_images_by_t[t]), _first(samples_by_t[t])):
            columns.append((t, query, sample))
    fig, axes = plt.subplots(2, len(columns), figsize=(_PANEL * len(columns) + 0.8, 2 * _PANEL + 0.3), squeeze=False)
    for c, (t, query, sample) in enumerate(columns):
        _show(axes[0, c], query, f"t = {t:.2f}")
        _show(axes[1, c], sample)
    axes[0, 0].set_ylabel(r"$\mathbf{x}_{t,p}$", rotation=0, ha="right", va="center")
    axes[1, 0].set_ylabel("reverse\nsample", rotation=0, ha="right", va="center", fontsize=9)
    fig.tight_layout()
    return fig


def augmented_examples(examples: AugmentedExamples, *, max_per_row: int = 16) -> Figure:
    """Paper Fig. 7: what ``c_p`` (top row) and ``c_id`` (bottom row) are trained on; positives framed.

    Args:
        examples: :class:`safcore.adversary.classifiers.AugmentedExamples` (images (n, C, H, W), bool labels (n,)).
        max_per_row: images per row.

    Returns:
        The figure, one axes per image.
    """
    rows = [
        ("c_p: SAF?", examples.saf_images, examples.saf_labels, "SAF"),
        ("c_id: x_p?", examples.id_images, examples.id_labels, "x_p"),
    ]
    ncols = max(1, max(min(len(images), max_per_row) for _, images, _, _ in rows))
    fig = plt.figure(figsize=(_PANEL * ncols + 1.2, 2 * _PANEL + 0.3))
    grid = fig.add_gridspec(2, ncols)
    for r, (name, images, labels, tag) in enumerate(rows):
        shown = _batch(images, name)[:max_per_row]
        flags = [bool(v) for v in _as_array(labels).reshape(-1)]
        for c, image in enumerate(shown):
            ax = fig.add_subplot(grid[r, c])
            _show(ax, image)
            if flags[c]:
                _frame(ax, tag)
            if c == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    fig.tight_layout()
    return fig


def error_map(x_p: Any, sample: Any) -> Figure:
    """Paper Fig. 10 (left): ``x_p``, a generated ``x'_p`` and their absolute pixel error.

    Args:
        x_p: (C, H, W) or (1, C, H, W) the fingerprinted training image.
        sample: (C, H, W) or (1, C, H, W) a q-positive sample.

    Returns:
        The figure: three image axes and the error map's colour bar.
    """
    a, b = _display(x_p), _display(sample)
    if a.shape != b.shape:
        raise ValueError(f"x_p {a.shape} and sample {b.shape} differ in shape")
    error = np.abs(a - b)
    if error.ndim == 3:
        error = error.mean(axis=-1)
    fig, axes = plt.subplots(1, 3, figsize=(3 * 2.1 + 0.6, 2.5))
    _show(axes[0], a, r"$\mathbf{x}_p$", fontsize=10)
    _show(axes[1], b, r"$\mathbf{x}'_p$ (sample)", fontsize=10)
    shown = axes[2].imshow(error, cmap="magma", vmin=0.0, vmax=max(float(error.max()), 1e-6), interpolation="nearest")
    axes[2].set_xticks([])
    axes[2].set_yticks([])
    axes[2].set_title(f"|x_p − x'_p|, MAE {float(np.abs(a - b).mean()):.2g}", fontsize=10)
    bar = fig.colorbar(shown, ax=axes[2], fraction=0.046, pad=0.04)
    bar.set_label("absolute error (pixel value, 0–1)", fontsize=8)
    fig.tight_layout()
    return fig
