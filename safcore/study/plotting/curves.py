"""Training curves: the classifiers' loss and accuracy per epoch, the score model's loss per step, and
memorization against training steps (Fig. 3/10, right)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.figure import Figure

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
