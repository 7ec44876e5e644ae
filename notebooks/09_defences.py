# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 · Defences measured by the same audit: CADP and DP-SGD
#
# The audit tells a hospital that its model hands back `x_p`. What would stop it, and at what cost?
# Two published answers, measured here with the sample-level audit (`|q|`, `t'`, copies) beside image
# quality (FID) and utility (a classifier trained on the released data, tested on real images):
#
# - **CADP** (Tölle et al. 2022): every training image — `x_p` with its SAF included — is encoded by a
#   label-conditioned INN (FrEIA), its latent clipped to norm ≤ C *per image* and noised (Laplace, scale
#   2C/ε: ε-DP per released image, given its label), then decoded. The INN is trained on the dataset's
#   train split **without** `D_p`'s images. ε = ∞: the INN round trip alone.
# - **DP-SGD** (Abadi et al. 2016, Opacus): the score model is trained with per-sample clipping and Gaussian
#   noise for a target ε at δ = 1/N_D² (RDP accountant). ε = ∞: clipping without noise.
#
# `c_p` and `c_id` stay the attacker's (trained on clean data and the clean `x_p`).

# %% tags=["parameters"]
DATASET = "breastmnist"  # a 2D MedMNIST flag, or the path of your own MedMNIST-layout .npz
N_D = 8  # training-set size; cpu: 16 (the model that memorizes without a defence)
PROFILE = "smoke"  # smoke (CI, seconds) | cpu (laptop) | paper (GPU)
CADP_EPSILONS = [float("inf"), 1.0]  # cpu: [.inf, 10000, 1000, 10, 1, 0.1]
DPSGD_EPSILONS = [1.0]  # cpu: [.inf, 10, 1]
MECHANISM = "laplace"  # CADP's noise: laplace (pure ε-DP) | gaussian ((ε, δ)-DP, δ = 1e-5)
SEED = 0
DEVICE = "auto"  # where every stage runs: auto (a GPU when visible) | cpu | cuda | cuda:N

# %%
import dataclasses
import math

from safcore.defences import CADP, DPSGD
from safcore.runtime.runs import config_key
from safcore.study import Study, plotting, tables
from safcore.study.profiles import get_profile

base = get_profile(PROFILE)
profile = dataclasses.replace(base, n_fid=base.n_samples)  # FID from the audited samples themselves
defences = [None] + [CADP(epsilon=e, mechanism=MECHANISM) for e in CADP_EPSILONS] + [DPSGD(epsilon=e) for e in DPSGD_EPSILONS]
studies = [Study(DATASET, N_D, profile=profile, seed=SEED, defence=d, device=DEVICE) for d in defences]
audits = [s.audit() for s in studies]
probes = [s.probe() for s in studies]
fids = [s.fid("train") for s in studies]
utilities = [s.utility() for s in studies]
copies = [s.copies() for s in studies]
results = [tables.DefenceResults(*r) for r in zip(defences, studies, audits, probes, fids, utilities, copies)]

# %% [markdown]
# **The table.** `|q|`: samples both classifiers call `x_p` with its SAF; `x_p` copies: samples whose
# nearest training image is `x_p` by the audit's copy rule (Carlini et al.'s ratio, its threshold calibrated
# so that ≤ 1 % of real held-out images pass; independent of the classifiers); copies: samples that copy any
# training image, beside the same count on the held-out val + test images (near-duplicates of `D_p`
# removed); `P(x_p) ≤`: exact 95 % upper bound from the larger of `|q|` and the `x_p` copies; FID_train
# against `D_p`, the images trained on, at n = min(n_fid, N_D, |test|)
# (safcore's domain extractor — comparable across these rows, not with Inception FIDs); utility: balanced
# test accuracy of a classifier trained on the model's samples (labelled by a classifier trained on the real
# `D_p`), on the privatized images (CADP), and on the real `D_p` (the reference); chance = 0.5 on a binary task.

# %%
table = tables.defences_table(results)
table

# %%
assert len({config_key(s.model_config()) for s in studies}) == len(studies)  # every defence is its own run
assert len({config_key(s.classifier_config("c_id")) for s in studies}) == 1  # one attacker for all
for d, s, u in zip(defences, studies, utilities):
    assert 0.0 <= u["samples"] <= 1.0 and u["real"] == utilities[0]["real"]
    if isinstance(d, DPSGD) and not math.isinf(d.epsilon):
        assert abs(s.training_record()["epsilon"] - d.epsilon) <= 0.05 * d.epsilon  # the accountant hit the target
    if isinstance(d, CADP) and math.isinf(d.epsilon):  # ε = ∞ is the INN round trip: D_p comes back
        assert (s.privatized().images - s.private.images).abs().max() < 1e-3
    if isinstance(d, CADP) and d.epsilon <= 1.0:  # ε ≤ 1 in 784 dimensions: the images are noise
        assert (s.privatized().images - s.private.images).abs().mean() > 0.1
if PROFILE == "cpu":
    for i, d in enumerate(defences):
        if d is None or math.isinf(d.epsilon):
            # the undefended 16-image model hands x_p back — and so do CADP's INN round trip and DP-SGD's
            # per-sample clipping without noise: neither is a defence by itself
            assert audits[i].copies.n_xp_copies >= 4 and copies[i] > audits[i].n // 2
        elif d.epsilon <= 10:
            # with noise at ε ≤ 10, x_p never comes back and no sample copies any training image ...
            assert audits[i].n_q == 0 and audits[i].copies.n_xp_copies == 0 and copies[i] == 0
            # ... and the price is the images: FID at least ten times the undefended model's
            assert fids[i].value > 10 * fids[0].value

# %% [markdown]
# **Privacy against cost.** Each defence's `|q|` and `x_p` copies (left), `t'` (middle) and FID (right, log
# scale) against ε; the undefended model as a dashed line. A `t'` at the grid's bottom means `x_p` comes back
# only from a barely noised `x_p` — what any model does.

# %%
fig = plotting.defences_vs_epsilon(results, setting=f"{DATASET}, N_D = {N_D} ({PROFILE})")
if PROFILE != "smoke":
    studies[0].save_figure(fig, "09_defences")

# %% [markdown]
# **What the model is trained on and what it gives back.** Top: `x_p` with its SAF and its CADP-privatized
# versions (what the score model saw in its place). Bottom: per defended model, its first q-positive sample —
# or, where there is none, the sample nearest to `x_p` (ℓ2), labelled so.

# %%
fig = plotting.defence_images(results)
if PROFILE != "smoke":
    studies[0].save_figure(fig, "09_defences_images")
