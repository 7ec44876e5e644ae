"""Algorithm 1's figure: q_M(t) against the diffusion time t with its Clopper–Pearson band and t' (Fig. 6/9)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from safcore.study.plotting._base import _as_array


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
    xlabel: str = "diffusion time t (0 = image, 1 = noise)",
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
        xlabel: the x axis (a latent model's t is a time of its latent diffusion).

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
    ax.set(xlabel=xlabel, ylim=(-0.02, 1.05), title=title)
    ax.set_ylabel("$q_M(t)$: fraction of the M reverse samples\nthat are $x_p$ with its SAF", fontsize=9)
    ax.title.set_fontsize(10)
    band = Rectangle((0, 0), 1, 1, color="0.5", alpha=0.3, linewidth=0)
    handles, names = ax.get_legend_handles_labels()
    # below the axes, where it hides neither a curve nor a t' label
    ax.legend([*handles, band], [*names, "95 % Clopper–Pearson"], fontsize=8, loc="upper center",
              bbox_to_anchor=(0.5, -0.2), ncol=len(handles) + 1, frameon=False)  # fmt: skip
    fig.tight_layout()
    return fig
