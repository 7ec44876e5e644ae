"""The audit's figures: x_p beside each group of samples (Fig. 8), every q-positive framed among the
samples, how often each training image is copied (x_p marked), and x_p beside its copies per dataset
(notebook 07)."""

from __future__ import annotations

import math
import warnings
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
    _frame,
    _image_axes,
    _indices,
    _show,
)
from safcore.study.plotting.images import samples_by_group

if TYPE_CHECKING:
    from safcore.study.tables import DatasetResults


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


def xp_and_samples(results: Sequence[DatasetResults], *, n_shown: int = 11) -> Figure:
    """Notebook 07: one row per dataset: ``x_p`` (first panel), then its q-positives (framed, ``q``), then the
    samples that copy ``x_p`` by nearest neighbour but which the adversary missed (framed, ``missed x_p copy``),
    then other samples; each row labelled with ``|q|`` against ``E|q|``, the upper bound on P(x_p) and the
    nearest-neighbour copies.

    Args:
        results: :class:`safcore.study.tables.DatasetResults`, one per dataset (its study gives ``x_p``,
            (C, H, W), and the audited samples, (n, C, H, W)).
        n_shown: samples shown per row after ``x_p``.

    Returns:
        The figure of :func:`~safcore.study.plotting.images.samples_by_group`, one axes per image.
    """
    if n_shown < 1:
        raise ValueError(f"n_shown={n_shown!r} must be >= 1")
    rows_of_images, highlight = {}, {}
    for r in results:
        study, audit = r.study, r.audit
        samples = study.samples()
        q = list(audit.q_indices)
        missed = list(audit.missed_copies)
        others = [i for i in range(len(samples)) if i not in set(q) | set(missed)]
        shown = (q + missed + others)[:n_shown]
        label = (f"{study.data.name}\n|q| = {audit.n_q} (E|q| = {audit.expected_q:.3g})\n"
                 f"P(x_p) ≤ {audit.handed_back_interval()[1]:.1%}; NN copies {audit.copies.n_xp_copies}")
        rows_of_images[label] = torch.cat([study.private.x_p[None], samples[shown]])
        highlight[label] = {1 + j: "q" if i in set(q) else "missed x_p copy" for j, i in enumerate(shown)
                            if i in set(q) | set(missed)}
    return samples_by_group(rows_of_images, highlight, highlight_label="q",
                            title="x_p (first column), its q-positives (q) and the x_p copies the adversary missed")
