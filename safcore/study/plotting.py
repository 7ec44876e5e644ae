"""Figures of the paper, drawn from safcore's results (matplotlib + seaborn).

Every function returns a :class:`matplotlib.figure.Figure` (its axes in reading order in
``fig.axes``) and draws nothing else; :func:`save_figure` writes one as PNG atomically. Images are
unit-range tensors or arrays, ``(C, H, W)`` / ``(B, C, H, W)`` with C = 1 or 3 (or ``(H, W)``);
grey ones are shown with ``cmap="gray", vmin=0, vmax=1``, colour ones transposed to ``(H, W, 3)``.

Figure ↔ paper: :func:`saf_construction` Eq. 10; :func:`memorization_vs_steps` Fig. 3/10 (right);
:func:`reverse_examples` Fig. 4; :func:`samples_by_group` Fig. 5; :func:`q_curve` Fig. 6/9;
:func:`augmented_examples` Fig. 7; :func:`audit_gallery` Fig. 8; :func:`error_map` Fig. 10 (left);
the audit's own checks: :func:`samples_overview` (every q-positive framed) and :func:`copies_per_image`.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

if TYPE_CHECKING:
    from safcore.adversary.classifiers import AugmentedExamples

HIGHLIGHT_COLOUR = "#d62728"
GROUP_COLOURS = (HIGHLIGHT_COLOUR, "#ff7f0e", "#9467bd", "#2ca02c")
_PANEL = 1.45  # inches per image panel


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# image figures
# --------------------------------------------------------------------------------------------------


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


def audit_gallery(
    images: torch.Tensor | np.ndarray,
    indices_by_group: Mapping[str, Iterable[int]],
    x_p: Any,
    *,
    max_per_group: int = 8,
    title: str | None = None,
) -> Figure:
    """Paper Fig. 8: ``x_p`` on the left, then one row per group of samples (q-positives, each
    classifier's false positives), at most ``max_per_group`` each.

    Args:
        images: (B, C, H, W) the audited samples.
        indices_by_group: row label → indices into ``images`` (an empty group shows "none").
        x_p: (C, H, W) the fingerprinted training image.
        max_per_group: images shown per row (the row label gives the full count).
        title: a headline stating the finding (e.g. ``|q|``, ``E|q|`` and the upper bound).

    Returns:
        The figure: one axes for ``x_p``, then per group one per shown image (one for "none").
    """
    if not indices_by_group:
        raise ValueError("audit_gallery needs at least one group")
    if max_per_group < 1:
        raise ValueError(f"max_per_group={max_per_group!r} must be >= 1")
    array = _as_array(images)
    if array.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W); got shape {array.shape}")
    groups = {name: _indices(idx) for name, idx in indices_by_group.items()}
    for name, idx in groups.items():
        bad = [i for i in idx if not 0 <= i < len(array)]
        if bad:
            raise ValueError(f"group {name!r} has indices {bad[:5]} outside 0..{len(array) - 1}")
    ncols = max(1, max(min(len(idx), max_per_group) for idx in groups.values()))
    nrows = len(groups)
    fig, axes = plt.subplots(nrows, ncols + 1, figsize=(_PANEL * (ncols + 1) + 0.4, (_PANEL + 0.35) * nrows + (0.5 if title else 0)),
                             squeeze=False)
    for r, (name, idx) in enumerate(groups.items()):
        _show(axes[r, 0], x_p, r"$\mathbf{x}_p$ (training image)", fontsize=8)
        _frame(axes[r, 0], "x_p", colour="#1f77b4")
        for c in range(1, ncols + 1):
            axes[r, c].axis("off")
        if not idx:
            axes[r, 1].text(0.05, 0.5, "none", ha="left", va="center", fontsize=9, transform=axes[r, 1].transAxes)
        for c, i in enumerate(idx[:max_per_group]):
            _show(axes[r, c + 1], array[i], f"#{i}", fontsize=7)
        axes[r, 1].text(0.0, 1.22, f"{name} ({len(idx)}{', first ' + str(max_per_group) + ' shown' if len(idx) > max_per_group else ''})",
                        transform=axes[r, 1].transAxes, ha="left", va="bottom", fontsize=9, fontweight="bold")
    if title:
        fig.suptitle(title, fontsize=10)
    with warnings.catch_warnings():  # the group headings sit above the axes; tight_layout may give up on them
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    return fig


def samples_overview(
    images: torch.Tensor | np.ndarray,
    groups: Mapping[str, Iterable[int]],
    *,
    n_show: int = 64,
    ncols: int = 16,
    title: str | None = None,
) -> Figure:
    """A grid of audited samples in which EVERY sample of ``groups`` is shown and framed.

    The grid holds every grouped sample (e.g. all q-positives, wherever they are among the ``n``),
    filled up to ``n_show`` with the other samples in order; each panel is titled with its index in
    the audited set and grouped ones are framed in their group's colour and tagged with its label.

    Args:
        images: (n, C, H, W) the audited samples.
        groups: label → indices into ``images`` (first group wins where they overlap; at most four).
        n_show: panels at most; grouped samples beyond it are left out and the title says how many.
        ncols: panels per row.
        title: a headline stating the finding.
    """
    array = _as_array(images)
    if array.ndim != 4 or len(array) == 0:
        raise ValueError(f"images must be (n, C, H, W) with n ≥ 1; got shape {array.shape}")
    if len(groups) > len(GROUP_COLOURS):
        raise ValueError(f"{len(groups)} groups; at most {len(GROUP_COLOURS)} can be told apart")
    if n_show < 1 or ncols < 1:
        raise ValueError(f"n_show={n_show!r} and ncols={ncols!r} must be >= 1")
    label_of: dict[int, tuple[str, str]] = {}
    for (name, idx), colour in zip(groups.items(), GROUP_COLOURS):
        for i in _indices(idx):
            if not 0 <= i < len(array):
                raise ValueError(f"group {name!r} has index {i} outside 0..{len(array) - 1}")
            label_of.setdefault(i, (name, colour))
    marked = sorted(label_of)[:n_show]
    fill = [i for i in range(len(array)) if i not in label_of][: max(0, n_show - len(marked))]
    shown = sorted(marked + fill)
    left_out = len(label_of) - len(marked)
    if left_out:
        title = f"{title or ''}\n({left_out} grouped samples beyond the {n_show} panels are not shown)".strip()
    ncols = min(ncols, len(shown))
    fig, axes = _image_axes(math.ceil(len(shown) / ncols), ncols, len(shown), title=title)
    for ax, i in zip(axes, shown):
        _show(ax, array[i], f"#{i}", fontsize=6)
        if i in label_of:
            name, colour = label_of[i]
            _frame(ax, name, colour=colour)
    fig.tight_layout()
    return fig


def copies_per_image(
    per_image: Sequence[int] | np.ndarray,
    x_p_index: int,
    *,
    n_samples: int | None = None,
    control_rate: float | None = None,
    title: str | None = None,
) -> Figure:
    """How often the model copies each of its training images, ``x_p`` marked (the audit's evenness check).

    Args:
        per_image: ``(N_D,)`` samples whose nearest training image is that image and which are copies
            (:attr:`safcore.audit.copies.CopyCheck.per_image`).
        x_p_index: which bar is ``x_p``.
        n_samples: the audited ``n`` (draws the line ``E|q| = n / N_D``).
        control_rate: the fraction of real held-out images that pass the same copy rule
            (:attr:`safcore.audit.copies.CopyCheck.control_copy_rate`); with ``n_samples`` draws the control's
            level ``control_rate · n / N_D`` per image: what chance similarity would give.
        title: headline; default states x_p's count against the mean.
    """
    counts = np.asarray(per_image, dtype=np.int64).reshape(-1)
    if counts.size == 0:
        raise ValueError("per_image is empty")
    if not 0 <= x_p_index < counts.size:
        raise ValueError(f"x_p_index={x_p_index!r} outside 0..{counts.size - 1}")
    order = np.argsort(-counts, kind="stable")
    rank = int(np.flatnonzero(order == x_p_index)[0])
    fig, ax = plt.subplots(figsize=(min(12.0, 3.0 + 0.25 * counts.size), 3.2))
    colours = ["#7f7f7f"] * counts.size
    colours[rank] = HIGHLIGHT_COLOUR
    ax.bar(np.arange(counts.size), counts[order], color=colours, width=0.8)
    ax.annotate("x_p", (rank, counts[x_p_index]), xytext=(0, 4), textcoords="offset points", ha="center",
                color=HIGHLIGHT_COLOUR, fontsize=9)
    mean = counts.sum() / counts.size
    ax.axhline(mean, color="black", linestyle=":", linewidth=1, label=f"uniform over the copies ({mean:.3g})")
    if n_samples is not None:
        ax.axhline(n_samples / counts.size, color="#1f77b4", linestyle="--", linewidth=1,
                   label=f"E|q| = n / N_D ({n_samples / counts.size:.3g})")
        if control_rate is not None:
            level = control_rate * n_samples / counts.size
            ax.axhline(level, color="#2ca02c", linestyle="-.", linewidth=1,
                       label=f"held-out real images' rate × n / N_D ({level:.2g})")
    ax.set_xlabel(f"training image, ranked by copies (N_D = {counts.size})")
    ax.set_ylabel("samples copying it")
    ax.set_xticks([])
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(title or f"x_p is copied in {counts[x_p_index]} samples (rank {rank + 1} of {counts.size}); "
                          f"{counts.sum()} copies in all", fontsize=10)
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


# --------------------------------------------------------------------------------------------------
# curves
# --------------------------------------------------------------------------------------------------


def _history_table(history: Any) -> dict[str, np.ndarray]:
    """A classifier history (list of per-epoch dicts, or a dict of per-epoch lists) → column arrays."""
    if isinstance(history, Mapping):
        columns = {k: np.asarray(v, dtype=float) for k, v in history.items()}
    else:
        rows = list(history)
        keys = sorted({k for row in rows for k in row})
        columns = {k: np.asarray([row.get(k, np.nan) for row in rows], dtype=float) for k in keys}
    if not any(k in columns for k in ("train_loss", "val_loss", "train_acc", "val_acc")):
        raise ValueError(f"a history needs train_loss/val_loss/train_acc/val_acc; got {sorted(columns)}")
    length = max(len(v) for v in columns.values())
    if "epoch" not in columns:
        columns["epoch"] = np.arange(1, length + 1, dtype=float)
    return columns


def training_curves(history: Any) -> Figure:
    """Classifier training: loss (left) and accuracy (right) per epoch, train solid, val dashed.

    Args:
        history: one history — a list of per-epoch dicts with ``epoch``, ``train_loss``,
            ``train_acc``, ``val_loss``, ``val_acc`` (as :class:`safcore.adversary.classifiers.Classifier` and
            the domain FID extractor keep it) or a dict of such lists — or a mapping
            ``name -> history`` to overlay several (``{"c_p": ..., "c_id": ...}``).

    Returns:
        The figure with two axes.
    """
    if isinstance(history, Mapping) and history and all(
        not isinstance(v, (int, float)) and len(v) > 0 and isinstance(next(iter(v)), Mapping) for v in history.values()
    ):
        named = {str(k): _history_table(v) for k, v in history.items()}
    else:
        named = {"": _history_table(history)}
    palette = sns.color_palette("colorblind", len(named))
    with sns.axes_style("whitegrid"):
        fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.3))
    for colour, (name, table) in zip(palette, named.items()):
        prefix = f"{name} " if name else ""
        for ax, metric in ((loss_ax, "loss"), (acc_ax, "acc")):
            for split, style in (("train", "-"), ("val", "--")):
                values = table.get(f"{split}_{metric}")
                if values is not None and np.isfinite(values).any():
                    ax.plot(table["epoch"][: len(values)], values, style, color=colour, marker="o", markersize=3,
                            label=f"{prefix}{split}")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(-0.02, 1.02))
    for ax in (acc_ax, loss_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
            break
    fig.tight_layout()
    return fig


def loss_curve(losses: Sequence[float], *, smooth: int = 50, title: str = "score-model training loss") -> Figure:
    """The score model's denoising score-matching loss per step, raw (faint) and a running mean.

    Args:
        losses: one loss per optimiser step.
        smooth: window of the running mean (clipped to the number of steps).

    Returns:
        The figure with one axes (log-scaled y when every loss is positive).
    """
    values = np.asarray(list(losses), dtype=float)
    if values.size == 0:
        raise ValueError("loss_curve needs at least one loss value")
    window = max(1, min(int(smooth), values.size))
    running = np.convolve(values, np.ones(window) / window, mode="valid")
    steps = np.arange(1, values.size + 1)
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(6, 3.3))
    ax.plot(steps, values, color="0.75", linewidth=0.8, label="per step")
    ax.plot(steps[window - 1 :], running, color=sns.color_palette("colorblind")[0], label=f"running mean ({window})")
    if (values > 0).all():
        ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _is_curve_list(value: Any) -> bool:
    """Whether ``value`` holds several curves (a list of 1-D arrays) rather than one curve."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return _as_array(value).ndim == 2
    return isinstance(value, (list, tuple)) and len(value) > 0 and np.ndim(_as_array(value[0])) == 1


def q_curve(
    ts: Any,
    q: Any,
    ci_low: Any,
    ci_high: Any,
    t_prime: float | None | Sequence[float | None],
    label: str | Sequence[str] = "",
    *,
    k: Any = None,
    n: Any = None,
    title: str | None = None,
    stop_at_t_prime: bool = True,
) -> Figure:
    """Paper Fig. 6/9: ``q_M(t)`` against the diffusion time t, with 95 % Clopper–Pearson bands and t'.

    ``q_M(t)`` is the fraction of the M reverse samples started from ``x_{t,p}`` (``x_p`` diffused to t)
    that the adversary takes for ``x_p`` with its SAF (``c_p`` AND ``c_id``); t' is the largest t where
    it is above 0. One curve: 1-D ``ts, q, ci_low, ci_high`` (and ``k, n``), a float ``t_prime`` and a
    string ``label``. Several (one per ``N_D``): lists of those, one entry per curve.

    Args:
        ts: the probed t, (T,).
        q: q_M(t), (T,).
        ci_low, ci_high: the 95 % Clopper–Pearson band, (T,).
        t_prime: the largest t with q > 0; ``None`` (no positive on the grid) draws no line.
        label: legend entry.
        k, n: positives and reverse samples at each t, (T,) (``ProbeResult.k`` / ``.n``); when given,
            t' is annotated with the count it rests on, ``k/n`` at t'.
        title: the headline; default: the finding, e.g. "x_p comes back from t' = 0.90 (1/8)".
        stop_at_t_prime: like the paper, stop each curve after its ``t'`` (the grid beyond is q = 0).

    Returns:
        The figure with one axes.
    """
    several = _is_curve_list(ts)

    def per_curve(value: Any, count: int, what: str) -> list:
        if not several:
            return [value]
        if isinstance(value, (list, tuple)) or (isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 2):
            return list(value)
        if value is None or isinstance(value, (str, float, int)):
            return [value] * count
        raise ValueError(f"{what} must be one entry per curve ({count} curves)")

    curves = list(zip(ts, q, ci_low, ci_high)) if several else [(ts, q, ci_low, ci_high)]
    primes = per_curve(t_prime, len(curves), "t_prime")
    labels = per_curve(label, len(curves), "label")
    ks, ns = per_curve(k, len(curves), "k"), per_curve(n, len(curves), "n")
    if not (len(curves) == len(primes) == len(labels) == len(ks) == len(ns)):
        raise ValueError(
            f"{len(curves)} curves but {len(primes)} t' values, {len(labels)} labels, {len(ks)} k and {len(ns)} n"
        )
    if any((kk is None) != (nn is None) for kk, nn in zip(ks, ns)):
        raise ValueError("give k and n together (the counts t' rests on), or neither")
    palette = sns.color_palette("colorblind", len(curves))
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(6.4, 3.9))
    findings, lowest = [], []
    for colour, (t, qq, lo, hi), tp, name, kk, nn in zip(palette, curves, primes, labels, ks, ns):
        t, qq, lo, hi = (_as_array(v).reshape(-1) for v in (t, qq, lo, hi))
        if not (len(t) == len(qq) == len(lo) == len(hi)):
            raise ValueError(f"ts, q, ci_low, ci_high differ in length: {len(t)}, {len(qq)}, {len(lo)}, {len(hi)}")
        count = ""
        if kk is not None and tp is not None:
            kk, nn = _as_array(kk).reshape(-1), _as_array(nn).reshape(-1)
            if not len(kk) == len(nn) == len(t):
                raise ValueError(f"k and n must have one count per t: {len(kk)}, {len(nn)} for {len(t)} t")
            at = np.flatnonzero(np.abs(t - tp) < 1e-9)
            if at.size != 1:
                raise ValueError(f"t' = {tp} is not one of the probed t")
            count = f" ({int(kk[at[0]])}/{int(nn[at[0]])})"
        order = np.argsort(t)
        t, qq, lo, hi = t[order], qq[order], lo[order], hi[order]
        lowest.append(float(t[0]))
        keep = t <= tp + 1e-12 if (stop_at_t_prime and tp is not None) else np.ones_like(t, dtype=bool)
        ax.fill_between(t[keep], lo[keep], hi[keep], color=colour, alpha=0.2, linewidth=0)
        ax.plot(t[keep], qq[keep], marker="o", markersize=3, color=colour, label=name or None)
        who = f" for {name}" if several and name else ""
        if tp is not None:
            ax.axvline(tp, color=colour, linestyle="--", linewidth=1.2)
            right_edge = tp > 0.8 * float(np.max(t))  # write the label left of a line near the right border
            ax.annotate(f"t' = {tp:.2f}{count}", (tp, 1.0), xytext=(-3 if right_edge else 3, -12),
                        textcoords="offset points", ha="right" if right_edge else "left", color=colour, fontsize=8)
            findings.append(f"{tp:.2f}{count}{who}")
        else:
            findings.append(f"none ≥ {float(t[0]):.2f}{who}")
    if title is None:
        if len(curves) == 1 and primes[0] is None:
            title = f"$x_p$ did not come back from any probed t (t ≥ {lowest[0]:.2f})"
        else:
            title = "$x_p$ comes back from t' = " + ", ".join(findings)
    ax.set(xlabel="diffusion time t (0 = image, 1 = noise)", ylim=(-0.02, 1.05), title=title)
    ax.set_ylabel("$q_M(t)$: fraction of the M reverse samples\nthat are $x_p$ with its SAF", fontsize=9)
    ax.title.set_fontsize(10)
    band = Rectangle((0, 0), 1, 1, color="0.5", alpha=0.3, linewidth=0)
    handles, names = ax.get_legend_handles_labels()
    # below the axes, where it hides neither a curve nor a t' label
    ax.legend([*handles, band], [*names, "95 % Clopper–Pearson"], fontsize=8, loc="upper center",
              bbox_to_anchor=(0.5, -0.2), ncol=len(handles) + 1, frameon=False)  # fmt: skip
    fig.tight_layout()
    return fig


def memorization_vs_steps(steps: Sequence[int], n_q: Sequence[int], mae: Sequence[float], mse: Sequence[float]) -> Figure:
    """Paper Fig. 3/10 (right): ``|q|`` (left) and the MAE/MSE of q-positives to ``x_p`` (right, log)
    against training steps; steps without q-positives (MAE/MSE NaN) leave gaps.

    Returns:
        The figure with two axes.
    """
    steps_a = np.asarray(list(steps), dtype=float)
    n_q_a, mae_a, mse_a = (np.asarray(list(v), dtype=float) for v in (n_q, mae, mse))
    if not (len(steps_a) == len(n_q_a) == len(mae_a) == len(mse_a)) or len(steps_a) == 0:
        raise ValueError(
            f"steps, n_q, mae, mse must be non-empty and equally long; got {len(steps_a)}, {len(n_q_a)}, "
            f"{len(mae_a)}, {len(mse_a)}"
        )
    palette = sns.color_palette("colorblind", 3)
    with sns.axes_style("whitegrid"):
        fig, (count_ax, error_ax) = plt.subplots(1, 2, figsize=(9, 3.3))
    count_ax.plot(steps_a, n_q_a, marker="o", color=palette[0])
    count_ax.set(xlabel="training step", ylabel="|q|", title="q-positives (copies of $x_p$)")
    for values, name, colour in ((mae_a, "MAE", palette[1]), (mse_a, "MSE", palette[2])):
        ax_values = np.where(values > 0, values, np.nan)
        error_ax.plot(steps_a, ax_values, marker="o", color=colour, label=name)
    if np.isfinite(np.where(mae_a > 0, mae_a, np.nan)).any() or np.isfinite(np.where(mse_a > 0, mse_a, np.nan)).any():
        error_ax.set_yscale("log")
    error_ax.set(xlabel="training step", ylabel="error to $x_p$", title="q-positives vs $x_p$")
    error_ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
