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
#   al. 2023) and PIA (Kong et al. 2024): AUC and TPR at 1 % FPR with bootstrap intervals (members = `D_p`,
#   non-members = as many held-out images of the same dataset);
# - **extraction** — Carlini et al. 2023 copies and the number of *distinct* training images extracted;
# - **nearest-neighbour memorization** — Dar et al. 2024 (correlation above the 95th percentile of
#   training-to-validation correlations) and Gu et al. 2023's ratio (nearest / second-nearest ℓ2 < 1/3);
# - **SAF canaries as a privacy audit** — Steinke, Nasr & Jagielski 2023: `m` SAFs on `m` images, each in
#   the training set with probability ½, one training run, a membership guess per canary from the samples,
#   and the ε lower bound their theorem gives at δ = 1e-5.

# %% tags=["parameters"]
DATASET = "breastmnist"  # a 2D MedMNIST flag, or the path of your own MedMNIST-layout .npz
N_DS = [8, 16]  # training-set sizes; cpu: [16, 64, 546]
PROFILE = "smoke"  # smoke (CI, seconds) | cpu (laptop, minutes) | paper (GPU)
N_BOOTSTRAP = 1000  # bootstrap resamples for the ROC intervals
SEED = 0
DEVICE = "auto"  # where every stage runs: auto (a GPU when visible) | cpu | cuda | cuda:N

# %%
import matplotlib.pyplot as plt
import pandas as pd

from safcore.study import Study

studies = {n_d: Study(DATASET, n_d, profile=PROFILE, seed=SEED, device=DEVICE) for n_d in N_DS}
audits = {n_d: study.audit() for n_d, study in studies.items()}
probes = {n_d: study.probe() for n_d, study in studies.items()}
peers = {n_d: study.peers(n_bootstrap=N_BOOTSTRAP) for n_d, study in studies.items()}
canaries = {n_d: study.canary_audit() for n_d, study in studies.items()}

# %% [markdown]
# **One table** — which method flags which model. MIA intervals are 95 % bootstrap intervals; a TPR at
# 1 % FPR needs ≥ 100 non-members (blank where `N_D` is smaller). `ε ≥` is the canary audit's lower bound
# (95 % confidence, δ = 1e-5) from `r` guesses of which `v` were right.

# %%
def fmt(summary, what="auc"):
    if what == "auc":
        low, high = summary["auc_interval"]
        return f"{summary['auc']:.2f} [{low:.2f}, {high:.2f}]"
    tpr = summary["tprs"][0]
    return "—" if tpr is None else f"{tpr:.2f}"


rows = []
for n_d in N_DS:
    result, probe, peer, (canary, design, _) = audits[n_d], probes[n_d], peers[n_d], canaries[n_d]
    rows.append({
        "N_D": n_d, "|q|": result.n_q, "E|q|": round(result.expected_q, 2), "verdict": result.verdict().kind,
        "t'": probe.t_prime_or_zero, "Carlini copies": peer["carlini_copies"], "distinct extracted": peer["distinct_extracted"],
        "Dar copies": peer["dar_copies"], "Gu ratio": round(peer["gu_memorization_ratio"], 3),
        "MIA loss AUC": fmt(peer["mia_loss"]), "loss TPR@1%": fmt(peer["mia_loss"], "tpr"),
        "SecMI AUC": fmt(peer["mia_secmi"]), "PIA AUC": fmt(peer["mia_pia"]),
        "canary ε ≥": round(canary.epsilon, 3), "canary v/r (m)": f"{canary.v}/{canary.r} ({canary.m})",
        "n": result.n, "non-members": peer["n_nonmembers"],
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
        assert 0.0 <= low <= peer[name]["auc"] <= high <= 1.0
    canary = canaries[n_d][0]
    assert canary.epsilon >= 0.0 and canary.v <= canary.r <= canary.m
if PROFILE == "cpu":
    small, large = min(N_DS), max(N_DS)
    # the 16-image model is a copy machine: every metric that looks at its samples says so ...
    assert peers[small]["carlini_copies"] > audits[small].n // 2 and peers[small]["distinct_extracted"] >= small // 2
    assert peers[small]["mia_loss"]["auc"] > 0.9
    # ... and trained on all of BreastMNIST it copies nothing
    assert peers[large]["carlini_copies"] == 0 and audits[large].n_q == 0

# %% [markdown]
# **Figure** — each metric against `N_D`: the share of samples that copy a training image (Carlini),
# that copy `x_p` by the adversary (`|q|/n`), and the loss attack's AUC with its interval.

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
xs = list(N_DS)
axes[0].plot(xs, [peers[n]["carlini_copies"] / audits[n].n for n in xs], "o-", label="Carlini copies / n")
axes[0].plot(xs, [peers[n]["gu_memorization_ratio"] for n in xs], "s--", label="Gu ratio")
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
             f"{peers[small]['carlini_copies'] / audits[small].n:.0%} to {peers[large]['carlini_copies'] / audits[large].n:.0%}, "
             f"MIA AUC from {peers[small]['mia_loss']['auc']:.2f} to {peers[large]['mia_loss']['auc']:.2f}, "
             f"t' from {probes[small].t_prime_or_zero:.2f} to {probes[large].t_prime_or_zero:.2f}")
fig.tight_layout()
if PROFILE != "smoke":  # figures/ keeps the real runs' figures only
    studies[max(N_DS)].save_figure(fig, "10_peers")
