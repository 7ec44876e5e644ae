"""Notebook 09's figures: what each defence (CADP, DP-SGD) costs against what it stops, measured by the
same audit, and what each defended model was trained on beside what it hands back."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from safcore.study.tables import DefenceResults, epsilon_text


def _check(results: Sequence[DefenceResults]) -> None:
    if not results or results[0].defence is not None:
        raise ValueError("the first of the results must be the undefended model (defence None), the reference; "
                         f"got {'none' if not results else type(results[0].defence).__name__}")


def _stop_text(kind: type, results: Sequence[DefenceResults], finite: Sequence[int]) -> str:
    """Largest ε of ``kind`` from which x_p is no longer handed back (no q-positive, no NN copy)."""
    defences = [r.defence for r in results]
    safe = [defences[i].epsilon for i in finite if isinstance(defences[i], kind)
            and results[i].audit.n_q == 0 and results[i].audit.copies.n_xp_copies == 0]
    if not safe:
        return f"{kind.__name__} at no ε tried"
    i = next(i for i in finite if isinstance(defences[i], kind) and defences[i].epsilon == max(safe))
    return (f"{kind.__name__} at ε ≤ {max(safe):g} (there {results[i].copies}/{results[i].audit.n} samples still "
            "copy a training image)")


def defences_vs_epsilon(results: Sequence[DefenceResults], *, setting: str) -> Figure:
    """Privacy against cost: each defence's ``|q|`` and ``x_p`` copies (left), ``t'`` (middle) and FID (right,
    log scale) against ε (log scale, ε = ∞ one decade right of the largest finite ε); the undefended model
    as a dashed line. The headline states how often x_p comes back undefended, from which ε each defence
    stops it, and what FID that costs.

    Args:
        results: the undefended model first (``defence=None``), then CADP and DP-SGD models.
        setting: what the headline starts with, e.g. ``"breastmnist, N_D = 16 (cpu)"``.

    Returns:
        The figure with three axes.
    """
    from safcore.defences import CADP, DPSGD

    _check(results)
    defences = [r.defence for r in results]
    audits, probes, fids = [r.audit for r in results], [r.probe for r in results], [r.fid for r in results]
    finite_eps = [d.epsilon for d in defences if d is not None and not math.isinf(d.epsilon)]
    inf_at = 10.0 ** (math.ceil(math.log10(max(finite_eps, default=1.0))) + 1)  # where ε = ∞ sits on the axis

    def x_of(defence):
        return inf_at if math.isinf(defence.epsilon) else defence.epsilon

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    none = 0
    for kind, marker in ((CADP, "o"), (DPSGD, "s")):
        idx = [i for i, d in enumerate(defences) if isinstance(d, kind)]
        if not idx:
            continue
        xs = [x_of(defences[i]) for i in idx]
        name = kind.__name__
        axes[0].plot(xs, [audits[i].n_q for i in idx], marker + "-", label=f"{name}: |q|")
        axes[0].plot(xs, [audits[i].copies.n_xp_copies for i in idx], marker + ":", label=f"{name}: x_p copies (NN)")
        axes[1].plot(xs, [probes[i].t_prime_or_zero for i in idx], marker + "-", label=name)
        axes[2].plot(xs, [fids[i].value for i in idx], marker + "-", label=name)
    axes[0].axhline(audits[none].n_q, color="k", ls="--", lw=1, label="no defence: |q|")
    axes[1].axhline(probes[none].t_prime_or_zero, color="k", ls="--", lw=1, label="no defence")
    axes[2].axhline(fids[none].value, color="k", ls="--", lw=1, label="no defence")
    ticks = sorted({x_of(d) for d in defences if d is not None})
    axes[2].set_yscale("log")
    for ax, ylabel, title in zip(axes, ["samples (of n)", "t' (diffusion time)", "FID_train (domain features)"],
                                 ["x_p handed back", "Algorithm 1: t'", "image quality (lower = closer)"]):
        ax.set(xscale="log", xlabel="ε per image (CADP) / per model (DP-SGD); ∞ at the right", ylabel=ylabel,
               title=title)
        ax.set_xticks(ticks, ["∞" if t == inf_at else f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.legend(fontsize=7)
    finite = [i for i, d in enumerate(defences) if d is not None and not math.isinf(d.epsilon)]
    kinds = [k for k in (CADP, DPSGD) if any(isinstance(defences[i], k) for i in finite)]
    stops = " and ".join(_stop_text(k, results, finite) for k in kinds)
    worst = max(fids[i].value for i in finite) if finite else float("nan")
    fig.suptitle(f"{setting}: undefended, x_p comes back {audits[none].copies.n_xp_copies}× in "
                 f"{audits[none].n} samples;\nit stops with {stops}; FID {fids[none].value:.1f} → up to {worst:.1f}",
                 fontsize=10)
    fig.tight_layout()
    return fig


def defence_images(results: Sequence[DefenceResults]) -> Figure:
    """What each model is trained on (top) and what it gives back (bottom), one column per model.

    Top: ``x_p`` with its SAF (undefended and DP-SGD columns) or its CADP-privatized version (what the score
    model saw in its place). Bottom: the model's first q-positive sample or, where there is none, the sample
    nearest to ``x_p`` (ℓ2), labelled so. Grey images: channel 0 of each (C, H, W) image is shown.

    Args:
        results: the undefended model first (``defence=None``; its study gives ``x_p``), then the defended ones.

    Returns:
        The figure: 2 × ``len(results)`` image axes.
    """
    from safcore.defences import CADP

    _check(results)
    fig, axes = plt.subplots(2, len(results), figsize=(1.7 * len(results), 3.9), squeeze=False)
    x_p = results[0].study.private.x_p
    for col, r in enumerate(results):
        d, s, a = r.defence, r.study, r.audit
        top, bottom = axes[0, col], axes[1, col]
        if d is None:
            top.imshow(x_p[0], cmap="gray", vmin=0, vmax=1)
            top.set_title("x_p (with SAF)", fontsize=8)
        elif isinstance(d, CADP):
            top.imshow(s.privatized().images[s.private.index, 0], cmap="gray", vmin=0, vmax=1)
            top.set_title(f"CADP ε={epsilon_text(d)}", fontsize=8)
        else:
            top.imshow(x_p[0], cmap="gray", vmin=0, vmax=1)
            top.set_title(f"DP-SGD ε={epsilon_text(d)}: x_p", fontsize=8)
        samples = s.samples()
        if a.q_indices:
            shown, label = samples[a.q_indices[0]], f"q-positive (|q|={a.n_q})"
        else:
            nearest = int(torch.cdist(samples.flatten(1), x_p.flatten()[None]).argmin())
            shown, label = samples[nearest], "nearest, no q"
        bottom.imshow(shown[0], cmap="gray", vmin=0, vmax=1)
        bottom.set_title(label, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("trained on", fontsize=8)
    axes[1, 0].set_ylabel("gives back", fontsize=8)
    fig.suptitle("x_p (left) beside what each defence trains on (top) and hands back (bottom)", fontsize=10)
    fig.tight_layout()
    return fig
