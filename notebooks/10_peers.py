# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 10 · The SAF audit beside the field's metrics
#
# A researcher reading safcore's verdict asks how it compares with what everybody else reports. Here the
# same models and samples are measured by:
#
# - **membership inference** on the score model — the loss (denoising-error) attack, SecMI's t-error (Duan et
#   al. 2023) and PIA (Kong et al. 2024) at the reference implementations' noise levels (DDPM steps 0, 10, …,
#   100 and 0, 200 of the linear schedule, mapped to the model's own clock by matching σ_t/a_t), each in the
#   direction its paper fixes (a lower error means member) before any data is seen; AUC with Newcombe's
#   (2006) score interval, TPR at 1 % FPR with its exact interval where the non-members resolve it
#   (members = `D_p`, non-members = as many held-out images of the same dataset, near-duplicates of `D_p`
#   removed);
# - **extraction** — Carlini et al. 2023 copies and the number of *distinct* training images extracted;
# - **nearest-neighbour memorization** — a pixel-space adaptation of Dar et al. 2024 (they correlate
#   encoder embeddings; here pixels, above the 95th percentile of training-to-held-out correlations) and
#   Gu et al. 2023's ratio (nearest / second-nearest ℓ2 < 1/3) — every copy count beside the same count on
#   real held-out images the model never saw (val + test, near-duplicates of `D_p` removed);
# - **SAF canaries as a privacy audit** — Steinke, Nasr & Jagielski 2023: `m` SAFs on `m` images, each in
#   the training set with probability ½, one training run, a membership guess per canary from the samples,
#   and the ε lower bound their theorem gives at δ = 1e-5.

# %% tags=["parameters"]
DATASET = "breastmnist"  # a 2D MedMNIST flag, or the path of your own MedMNIST-layout .npz
N_DS = [8, 16]  # training-set sizes; cpu: [16, 64, 546]
PROFILE = "smoke"  # smoke (CI, seconds) | cpu (laptop, minutes) | paper (GPU)
SEED = 0
DEVICE = "auto"  # where every stage runs: auto (a GPU when visible) | cpu | cuda | cuda:N

# %%
import matplotlib.pyplot as plt
import pandas as pd

from safcore.study import Study

studies = {n_d: Study(DATASET, n_d, profile=PROFILE, seed=SEED, device=DEVICE) for n_d in N_DS}
audits = {n_d: study.audit() for n_d, study in studies.items()}
probes = {n_d: study.probe() for n_d, study in studies.items()}
peers = {n_d: study.peers() for n_d, study in studies.items()}
canaries = {n_d: study.canary_audit() for n_d, study in studies.items()}

# %% [markdown]
# **One table** — which method flags which model. Every copy count stands beside the same count on the
# held-out control (`k/n | j/m`: samples | held-out real images). MIA AUCs with Newcombe's 95 % interval;
# a TPR at 1 % FPR needs ≥ 100 non-members ("—" where fewer: the rate cannot be resolved). `ε ≥` is the
# canary audit's lower bound (95 % confidence, δ = 1e-5) from `r` guesses of which `v` were right.

# %%
def fmt(summary, what="auc"):
    if what == "auc":
        low, high = summary["auc_interval"]
        return f"{summary['auc']:.2f} [{low:.2f}, {high:.2f}]"
    tpr, interval = summary["tprs"][0], summary["tpr_intervals"][0]
    return "—" if tpr is None else f"{tpr:.2f} [{interval[0]:.2f}, {interval[1]:.2f}]"


def beside(criterion):
    return f"{criterion['samples']}/{criterion['n']} | {criterion['control']}/{criterion['n_control']}"


rows = []
for n_d in N_DS:
    result, probe, peer, (canary, design, _) = audits[n_d], probes[n_d], peers[n_d], canaries[n_d]
    criteria = peer["copy_criteria"]
    rows.append({
        "N_D": n_d, "|q|": result.n_q, "E|q|": round(result.expected_q, 2), "verdict": result.verdict().kind,
        "t'": probe.t_prime_or_zero, "copies (audit rule)": beside(criteria["audit"]),
        "Carlini 0.5": beside(criteria["carlini_0.5"]), "distinct extracted": peer["distinct_extracted"],
        "Dar (pixel)": beside(criteria["dar_pixel"]), "Gu": beside(criteria["gu"]),
        "MIA loss AUC": fmt(peer["mia_loss"]), "loss TPR@1%": fmt(peer["mia_loss"], "tpr"),
        "SecMI AUC": fmt(peer["mia_secmi"]), "PIA AUC": fmt(peer["mia_pia"]),
        "canary ε ≥": round(canary.epsilon, 3), "canary v/r (m)": f"{canary.v}/{canary.r} ({canary.m})",
        "n": result.n, "non-members": peer["n_nonmembers"],
        "near-duplicates removed (non-members | control)":
            f"{peer['nonmember_pool']['n_removed']} | {criteria['control_set']['n_removed']}",
    })
table = pd.DataFrame(rows).set_index("N_D")
table.T

# %%
for n_d in N_DS:
    peer = peers[n_d]
    assert peer["n_members"] == n_d and peer["distinct_extracted"] <= min(n_d, peer["carlini_copies"])
    assert 0.0 <= peer["gu_memorization_ratio"] <= 1.0
    for name in ("mia_loss", "mia_secmi", "mia_pia"):
        low, high = peer[name]["auc_interval"]
        assert 0.0 <= low <= peer[name]["auc"] <= high <= 1.0 and low < high  # never degenerate, even at n = 8
        assert (peer[name]["tprs"][0] is None) == (peer["n_nonmembers"] < 100)  # 1 % FPR needs ≥ 100 non-members
    audit_rule = peer["copy_criteria"]["audit"]
    assert audit_rule["control"] <= 0.01 * (audit_rule["n_control"] + 1), "the audit's rule passes ≤ 1 % of held-out images"
    canary = canaries[n_d][0]
    assert canary.epsilon >= 0.0 and canary.v <= canary.r <= canary.m
if PROFILE == "cpu":
    small, large = min(N_DS), max(N_DS)
    # the 16-image model is a copy machine: every metric that looks at its samples says so ...
    assert peers[small]["carlini_copies"] > audits[small].n // 2 and peers[small]["distinct_extracted"] >= small // 2
    rule = peers[small]["copy_criteria"]["audit"]
    assert rule["samples"] / rule["n"] >= 10 * max(rule["control"], 1) / rule["n_control"], "far above the control"
    assert peers[small]["mia_loss"]["auc"] > 0.9
    # ... and trained on all of BreastMNIST it copies nothing
    assert peers[large]["carlini_copies"] == 0 and audits[large].n_q == 0

# %% [markdown]
# **Figure** — each metric against `N_D`: the share of samples that copy a training image (the audit's
# calibrated rule and Carlini's 0.5), each beside the share of held-out real images that pass the same rule
# (dotted), the share that are `x_p` by the adversary (`|q|/n`), and the loss attack's AUC with its interval.

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
xs = list(N_DS)
rule = {n: peers[n]["copy_criteria"]["audit"] for n in xs}
carlini = {n: peers[n]["copy_criteria"]["carlini_0.5"] for n in xs}
axes[0].plot(xs, [rule[n]["samples"] / rule[n]["n"] for n in xs], "o-", color="C0", label="copies / n (audit rule)")
axes[0].plot(xs, [rule[n]["control"] / rule[n]["n_control"] for n in xs], "o:", color="C0", label="  held-out control")
axes[0].plot(xs, [carlini[n]["samples"] / carlini[n]["n"] for n in xs], "s--", color="C1", label="Carlini 0.5 / n")
axes[0].plot(xs, [carlini[n]["control"] / carlini[n]["n_control"] for n in xs], "s:", color="C1", label="  held-out control")
axes[0].plot(xs, [audits[n].n_q / audits[n].n for n in xs], "^-", label="|q| / n (SAF audit)")
axes[0].set(xscale="log", xlabel="N_D (training images)", ylabel="fraction of samples", title="memorization in samples")
axes[0].legend(fontsize=8)
auc = [peers[n]["mia_loss"]["auc"] for n in xs]
err = [[a - peers[n]["mia_loss"]["auc_interval"][0] for a, n in zip(auc, xs)],
       [peers[n]["mia_loss"]["auc_interval"][1] - a for a, n in zip(auc, xs)]]
axes[1].errorbar(xs, auc, yerr=err, fmt="o-", capsize=3)
axes[1].axhline(0.5, color="grey", lw=0.8, ls=":")
axes[1].set(xscale="log", xlabel="N_D (training images)", ylabel="AUC", ylim=(0, 1.05), title="MIA (loss attack), 95 % CI")
axes[2].plot(xs, [probes[n].t_prime_or_zero for n in xs], "o-", label="t' (SAF audit)")
axes[2].plot(xs, [canaries[n][0].epsilon for n in xs], "s--", label="canary ε lower bound")
axes[2].set(xscale="log", xlabel="N_D (training images)", ylabel="t' / ε", title="SAF indicators")
axes[2].legend(fontsize=8)
for ax in axes:
    ax.set_xticks(xs, [str(n) for n in xs])
    ax.minorticks_off()
small, large = min(xs), max(xs)
fig.suptitle(f"{DATASET} ({PROFILE}): from N_D = {small} to {large}, samples copying training images fall from "
             f"{rule[small]['samples'] / rule[small]['n']:.0%} to {rule[large]['samples'] / rule[large]['n']:.0%} "
             f"(held-out control ≤ {max(rule[n]['control'] / rule[n]['n_control'] for n in xs):.1%}), "
             f"MIA AUC from {peers[small]['mia_loss']['auc']:.2f} to {peers[large]['mia_loss']['auc']:.2f}, "
             f"t' from {probes[small].t_prime_or_zero:.2f} to {probes[large].t_prime_or_zero:.2f}")
fig.tight_layout()
if PROFILE != "smoke":  # figures/ keeps the real runs' figures only
    studies[max(N_DS)].save_figure(fig, "10_peers")
