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
from safcore.study import Study, plotting, tables

studies = {n_d: Study(DATASET, n_d, profile=PROFILE, seed=SEED, device=DEVICE) for n_d in N_DS}
audits = {n_d: study.audit() for n_d, study in studies.items()}
probes = {n_d: study.probe() for n_d, study in studies.items()}
peers = {n_d: study.peers() for n_d, study in studies.items()}
canaries = {n_d: study.canary_audit() for n_d, study in studies.items()}
results = [tables.PeerResults(n_d, audits[n_d], probes[n_d], peers[n_d], canaries[n_d][0]) for n_d in N_DS]

# %% [markdown]
# **One table** — which method flags which model. Every copy count stands beside the same count on the
# held-out control (`k/n | j/m`: samples | held-out real images). MIA AUCs with Newcombe's 95 % interval;
# a TPR at 1 % FPR needs ≥ 100 non-members ("—" where fewer: the rate cannot be resolved). `ε ≥` is the
# canary audit's lower bound (95 % confidence, δ = 1e-5) from `r` guesses of which `v` were right.

# %%
table = tables.peers_table(results)
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
fig = plotting.peers_vs_n_d(results, setting=f"{DATASET} ({PROFILE})")
if PROFILE != "smoke":  # figures/ keeps the real runs' figures only
    studies[max(N_DS)].save_figure(fig, "10_peers")
