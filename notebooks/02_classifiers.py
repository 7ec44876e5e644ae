# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · The adversary: c_p finds the SAF, c_id recognises x_p (paper §3.3, §5.2, appendix A)
#
# The attacker knows what the fingerprint looks like. `c_p` is trained to say *"this image carries the
# SAF"* — SAFs painted at random places on 50 % of training images and 10 % of validation images.
# `c_id` is trained one-against-all to say *"this is x_p"* — `x_p` in 10 % of training samples and 50 % of
# validation samples — with random grey discs of the SAF's shape, AugMix and Gaussian noise, so that it
# recognises `x_p`'s anatomy rather than the disc and survives diffusion artefacts. A generated image
# is a privacy breach only when both fire.

# %% tags=["parameters"]
DATASET = "breastmnist"  # a 2D MedMNIST flag, or the path of your own MedMNIST-layout .npz
N_D = 8  # training-set size; smoke: 8, cpu: 32, paper: 1000 … 50000
PROFILE = "smoke"  # smoke (CI, seconds) | cpu (laptop, minutes) | paper (GPU, ResNet50, patience 20)
SEED = 0  # draws the subset, x_i and the SAF's place
DEVICE = "auto"  # where every stage runs: auto (a GPU when visible) | cpu | cuda | cuda:N

# %%
import pandas as pd

from safcore.adversary import classifiers
from safcore.study import plotting
from safcore.study import Study

study = Study(DATASET, N_D, profile=PROFILE, seed=SEED, device=DEVICE)
{kind: study.profile.classifier_for(kind) for kind in ("c_p", "c_id")}

# %% [markdown]
# **Figure 1** — what each classifier sees in training (the paper's Fig. 7): `c_p`'s inputs with and
# without a SAF, and `c_id`'s augmented `x_p` and negatives.

# %%
examples = classifiers.augmented_examples(study.private, study.profile.classifier, n=16, seed=SEED)
figure = plotting.augmented_examples(examples)
study.save_figure(figure, "02_augmented_examples")

# %% [markdown]
# Train both (once; the run store keeps them) and look at their training curves.

# %%
c_p, c_id = study.c_p, study.c_id
figure = plotting.training_curves({"c_p": c_p.history, "c_id": c_id.history})
study.save_figure(figure, "02_training_curves")

# %% [markdown]
# Tab. 2's accuracies: `c_p` on the test split with SAFs painted on half of it, `c_id` on its own
# training set (identification only makes sense for a training image).

# %%
accuracies = study.classifier_accuracies()
pd.DataFrame([accuracies]).style.format("{:.1%}")

# %% [markdown]
# The adversary is fit for purpose: `c_p` fires on the SAF and not without it, `c_id` fires on `x_p`
# with or without its SAF, and not on the clean original's neighbours.

# %%
import torch

from safcore.data.fingerprint import apply_saf

others = study.private.others
with_saf = apply_saf(others, study.private.mask)  # the SAF at x_p's place on every other image
verdicts = {
    "c_p(x_p)": bool(c_p(study.private.x_p[None])[0]),
    "c_p(others)": float(c_p(others).float().mean()),
    "c_p(others + SAF)": float(c_p(with_saf).float().mean()),
    "c_id(x_p)": bool(c_id(study.private.x_p[None])[0]),
    "c_id(x_i, no SAF)": bool(c_id(study.private.x_i[None])[0]),
    "c_id(others + SAF)": float(c_id(with_saf).float().mean()),
}
verdicts

# %%
assert accuracies["saf_accuracy"] >= 0.75, f"c_p must detect the SAF on held-out images: {accuracies}"
assert accuracies["id_accuracy"] >= 0.9, f"c_id must single out x_p in D_p: {accuracies}"
assert verdicts["c_id(x_p)"], "c_id recognises x_p"
assert verdicts["c_p(others + SAF)"] > verdicts["c_p(others)"], "c_p reacts to the SAF"
assert verdicts["c_id(others + SAF)"] <= 0.25, "a SAF alone does not make an image x_p"
if PROFILE != "smoke":  # the smoke c_p (20 short epochs) still misses SAFs in some places
    assert verdicts["c_p(x_p)"], "x_p itself is a privacy breach: c_p finds its SAF"
