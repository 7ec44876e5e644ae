"""Notebook 10's figure: the SAF audit beside the field's metrics (copies, membership inference, canaries)
against the training-set size ``N_D``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from safcore.study.tables import PeerResults


def peers_vs_n_d(results: Sequence[PeerResults], *, setting: str) -> Figure:
    """Each metric against ``N_D`` (log scale, one tick per ``N_D``): left, the share of samples that copy a
    training image (the audit's calibrated rule and Carlini's 0.5), each beside the share of held-out real
    images that pass the same rule (dotted), and the share that are ``x_p`` by the adversary (``|q|/n``);
    middle, the loss attack's AUC with its 95 % interval (chance 0.5 dotted); right, ``t'`` and the canary
    audit's ε lower bound. The headline states how each changes from the smallest to the largest ``N_D``.

    Args:
        results: one per ``N_D``, in increasing ``N_D``.
        setting: what the headline starts with, e.g. ``"breastmnist (cpu)"``.

    Returns:
        The figure with three axes.
    """
    if not results:
        raise ValueError("peers_vs_n_d needs the results of at least one N_D")
    by_n = {r.n_d: r for r in results}
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    xs = [r.n_d for r in results]
    peers = {n: by_n[n].peers for n in xs}
    rule = {n: peers[n]["copy_criteria"]["audit"] for n in xs}
    carlini = {n: peers[n]["copy_criteria"]["carlini_0.5"] for n in xs}
    for criterion, style, control_style, colour, name in ((rule, "o-", "o:", "C0", "copies / n (audit rule)"),
                                                          (carlini, "s--", "s:", "C1", "Carlini 0.5 / n")):
        axes[0].plot(xs, [criterion[n]["samples"] / criterion[n]["n"] for n in xs], style, color=colour, label=name)
        axes[0].plot(xs, [criterion[n]["control"] / criterion[n]["n_control"] for n in xs], control_style, color=colour,
                     label="  held-out control")
    axes[0].plot(xs, [by_n[n].audit.n_q / by_n[n].audit.n for n in xs], "^-", label="|q| / n (SAF audit)")
    axes[0].set(xscale="log", xlabel="N_D (training images)", ylabel="fraction of samples",
                title="memorization in samples")
    axes[0].legend(fontsize=8)
    auc = [peers[n]["mia_loss"]["auc"] for n in xs]
    err = [[a - peers[n]["mia_loss"]["auc_interval"][0] for a, n in zip(auc, xs)],
           [peers[n]["mia_loss"]["auc_interval"][1] - a for a, n in zip(auc, xs)]]
    axes[1].errorbar(xs, auc, yerr=err, fmt="o-", capsize=3)
    axes[1].axhline(0.5, color="grey", lw=0.8, ls=":")
    axes[1].set(xscale="log", xlabel="N_D (training images)", ylabel="AUC", ylim=(0, 1.05),
                title="MIA (loss attack), 95 % CI")
    axes[2].plot(xs, [by_n[n].probe.t_prime_or_zero for n in xs], "o-", label="t' (SAF audit)")
    axes[2].plot(xs, [by_n[n].canary.epsilon for n in xs], "s--", label="canary ε lower bound")
    axes[2].set(xscale="log", xlabel="N_D (training images)", ylabel="t' / ε", title="SAF indicators")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xticks(xs, [str(n) for n in xs])
        ax.minorticks_off()
    small, large = min(xs), max(xs)
    fig.suptitle(f"{setting}: from N_D = {small} to {large}, samples copying training images fall from "
                 f"{rule[small]['samples'] / rule[small]['n']:.0%} to {rule[large]['samples'] / rule[large]['n']:.0%} "
                 f"(held-out control ≤ {max(rule[n]['control'] / rule[n]['n_control'] for n in xs):.1%}), "
                 f"MIA AUC from {peers[small]['mia_loss']['auc']:.2f} to {peers[large]['mia_loss']['auc']:.2f}, "
                 f"t' from {by_n[small].probe.t_prime_or_zero:.2f} to {by_n[large].probe.t_prime_or_zero:.2f}")
    fig.tight_layout()
    return fig
