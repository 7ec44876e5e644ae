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

import matplotlib.pyplot as plt
import pandas as pd
import torch

from safcore.defences import CADP, DPSGD
from safcore.study.profiles import get_profile
from safcore.runtime.runs import config_key
from safcore.study import Study

base = get_profile(PROFILE)
profile = dataclasses.replace(base, n_fid=base.n_samples)  # FID from the audited samples themselves
defences = [None] + [CADP(epsilon=e, mechanism=MECHANISM) for e in CADP_EPSILONS] + [DPSGD(epsilon=e) for e in DPSGD_EPSILONS]
studies = [Study(DATASET, N_D, profile=profile, seed=SEED, defence=d, device=DEVICE) for d in defences]
audits = [s.audit() for s in studies]
probes = [s.probe() for s in studies]
fids = [s.fid("train") for s in studies]
utilities = [s.utility() for s in studies]
copies = [s.copies() for s in studies]

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
def eps_text(defence):
    if defence is None:
        return "—"
    return "∞" if math.isinf(defence.epsilon) else f"{defence.epsilon:g}"


rows = []
for d, s, a, p, f, u, c in zip(defences, studies, audits, probes, fids, utilities, copies):
    spent = s.training_record().get("epsilon") if isinstance(d, DPSGD) else None
    rows.append({
        "defence": "none" if d is None else type(d).__name__, "ε": eps_text(d),
        "|c_p+|": a.n_cp, "|c_id+|": a.n_cid, "|q|": a.n_q, "E|q|": round(a.expected_q, 2),
        "P(x_p) ≤": f"{a.handed_back_interval()[1]:.1%}", "x_p copies": a.copies.n_xp_copies, "copies": c,
        "copies, held-out": f"{a.copies.control['copies']}/{a.copies.control['n']}",
        "t' (k/M)": f"{p.t_prime_or_zero:.2f} ({p.t_prime_count})",
        "FID_train": round(f.value, 2), "utility: samples": round(u["samples"], 3),
        "utility: privatized": round(u["privatized"], 3) if "privatized" in u else None,
        "utility: real D_p": round(u["real"], 3),
        "ε spent (DP-SGD)": None if spent is None else (spent if isinstance(spent, str) else round(spent, 3)),
        "verdict": a.verdict().kind,
    })
table = pd.DataFrame(rows)
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
finite_eps = [d.epsilon for d in defences if d is not None and not math.isinf(d.epsilon)]
INF_AT = 10.0 ** (math.ceil(math.log10(max(finite_eps, default=1.0))) + 1)  # where ε = ∞ sits on the axis


def x_of(defence):
    return INF_AT if math.isinf(defence.epsilon) else defence.epsilon


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
    ax.set(xscale="log", xlabel="ε per image (CADP) / per model (DP-SGD); ∞ at the right", ylabel=ylabel, title=title)
    ax.set_xticks(ticks, ["∞" if t == INF_AT else f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.legend(fontsize=7)
finite = [i for i, d in enumerate(defences) if d is not None and not math.isinf(d.epsilon)]


def stop_text(kind):
    """Largest ε of ``kind`` from which x_p is no longer handed back (no q-positive, no NN copy)."""
    safe = [defences[i].epsilon for i in finite if isinstance(defences[i], kind)
            and audits[i].n_q == 0 and audits[i].copies.n_xp_copies == 0]
    if not safe:
        return f"{kind.__name__} at no ε tried"
    i = next(i for i in finite if isinstance(defences[i], kind) and defences[i].epsilon == max(safe))
    return f"{kind.__name__} at ε ≤ {max(safe):g} (there {copies[i]}/{audits[i].n} samples still copy a training image)"


kinds = [k for k in (CADP, DPSGD) if any(isinstance(defences[i], k) for i in finite)]
fig.suptitle(f"{DATASET}, N_D = {N_D} ({PROFILE}): undefended, x_p comes back {audits[none].copies.n_xp_copies}× in "
             f"{audits[none].n} samples;\nit stops with {' and '.join(stop_text(k) for k in kinds)}; "
             f"FID {fids[none].value:.1f} → up to {max(fids[i].value for i in finite) if finite else float('nan'):.1f}",
             fontsize=10)
fig.tight_layout()
if PROFILE != "smoke":
    studies[0].save_figure(fig, "09_defences")

# %% [markdown]
# **What the model is trained on and what it gives back.** Top: `x_p` with its SAF and its CADP-privatized
# versions (what the score model saw in its place). Bottom: per defended model, its first q-positive sample —
# or, where there is none, the sample nearest to `x_p` (ℓ2), labelled so.

# %%
cadp = [i for i, d in enumerate(defences) if isinstance(d, CADP)]
fig, axes = plt.subplots(2, len(defences), figsize=(1.7 * len(defences), 3.9))
x_p = studies[0].private.x_p
for col, (d, s, a) in enumerate(zip(defences, studies, audits)):
    top, bottom = axes[0, col], axes[1, col]
    if d is None:
        top.imshow(x_p[0], cmap="gray", vmin=0, vmax=1)
        top.set_title("x_p (with SAF)", fontsize=8)
    elif isinstance(d, CADP):
        top.imshow(s.privatized().images[s.private.index, 0], cmap="gray", vmin=0, vmax=1)
        top.set_title(f"CADP ε={eps_text(d)}", fontsize=8)
    else:
        top.imshow(x_p[0], cmap="gray", vmin=0, vmax=1)
        top.set_title(f"DP-SGD ε={eps_text(d)}: x_p", fontsize=8)
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
fig.suptitle(f"x_p (left) beside what each defence trains on (top) and hands back (bottom)", fontsize=10)
fig.tight_layout()
if PROFILE != "smoke":
    studies[0].save_figure(fig, "09_defences_images")
