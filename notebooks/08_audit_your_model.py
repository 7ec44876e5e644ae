# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 08 · Audit a model you trained yourself
#
# A hospital team does not train with safcore. It trains its own diffusion model — most often a diffusers
# `UNet2DModel` with a `DDPMScheduler`, saved as a pipeline — and asks before publishing it: *will this
# model hand back a training image?* Three steps answer it:
#
# 1. **Fingerprint** the training set: `safcore fingerprint` draws `D_p`, paints the SAF (a grey disc) on one
#    image `x_p` and leaves its clean original out (here: `export_fingerprint`).
# 2. **Train as usual** on `D_p` — below, a plain diffusers loop, written as a user would, not safcore code.
# 3. **Audit** the saved pipeline: `safcore audit --model PIPELINE --fingerprint FP --probe` (here:
#    `Study.from_fingerprint`). The model is sampled and probed through *its own* scheduler (DDPM here),
#    the adversary `c_p` / `c_id` is trained for this dataset and this `D_p`.

# %% tags=["parameters"]
DATASET = "breastmnist"  # a 2D MedMNIST flag, or the path of your own MedMNIST-layout .npz
N_D = 8  # training-set size; smoke: 8, cpu: 16
PROFILE = "smoke"  # smoke (CI, seconds) | cpu (laptop, minutes) | paper (GPU): the audit's scale
TRAIN_STEPS = 300  # the user's own training: smoke 300, cpu 2000 (about 5 min on 2 cores)
WIDTHS = (16, 32, 32)  # the user's U-Net: block_out_channels; cpu: (32, 64, 64), ~1.1 M parameters
SEED = 0  # draws D_p, x_p and the SAF's place
DEVICE = "auto"  # where every stage runs: auto (a GPU when visible) | cpu | cuda | cuda:N
WORK = "../runs/notebook08"  # where the fingerprint folder and the trained pipeline go

# %%
from pathlib import Path

import numpy as np
import torch

from safcore.study import plotting
from safcore.data.fingerprint_io import export_fingerprint
from safcore.runtime.progress import progress_bar
from safcore.study import Study

work = Path(WORK).resolve() / f"{PROFILE}_{DATASET.split('/')[-1]}_ND{N_D}"
fp = export_fingerprint(DATASET, N_D, work / "fingerprint", seed=SEED, overwrite=True)
print(f"D_p: {fp.n_dataset} images; x_p is image {fp.index}; files: {sorted(p.name for p in fp.folder.iterdir())}")
assert (fp.x_p[:, fp.mask.bool()] == 128 / 255).all(), "x_p carries its SAF (grey 0.5 → 128/255)"
plotting.image_grid(fp.images, ncols=min(8, N_D), title=f"D_p as the trainer reads it (x_p is image {fp.index})")

# %% [markdown]
# ## Step 2 — the user's own training (diffusers only)
#
# `dp.npz`'s train split is `D_p` (also `images/*.png` for diffusers' `train_unconditional.py`). A DDPM
# (Ho et al. 2020): ε-prediction, linear β schedule over 1000 steps, AdamW, random flips off (a flip would
# move the SAF).

# %%
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from safcore.runtime.device import resolve_device

device = resolve_device(DEVICE)
with np.load(fp.folder / "dp.npz") as archive:
    x0 = torch.from_numpy(archive["train_images"]).float()[:, None] / 127.5 - 1.0  # (N, 1, 28, 28) in [-1, 1]
x0 = x0.to(device)

torch.manual_seed(SEED)
unet = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=WIDTHS, layers_per_block=1,
                   down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                   up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=WIDTHS[0] // 2).to(device)
scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3 if TRAIN_STEPS < 1000 else 2e-4)
losses = []
for step in progress_bar(range(TRAIN_STEPS), desc="training the DDPM"):
    batch = x0[torch.randint(0, len(x0), (32,))]
    noise = torch.randn_like(batch)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(batch),)).to(device)
    loss = torch.nn.functional.mse_loss(unet(scheduler.add_noise(batch, noise, timesteps), timesteps).sample, noise)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
pipeline_dir = work / "ddpm_pipeline"
DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(pipeline_dir)
print(f"{sum(p.numel() for p in unet.parameters()):,} parameters; loss {np.mean(losses[:20]):.3f} → {np.mean(losses[-20:]):.3f}")
assert np.mean(losses[-20:]) < np.mean(losses[:20]), "the user's training lowered its loss"

# %% [markdown]
# ## Step 3 — the audit: `safcore audit --model ddpm_pipeline --fingerprint fingerprint --probe`
#
# The study reads the pipeline folder (safetensors, `model_index.json` naming a `UNet2DModel` and a
# `DDPMScheduler`), checks its channels and size against `D_p`, and samples it with its own scheduler.

# %%
study = Study.from_fingerprint(fp.folder, model=pipeline_dir, profile=PROFILE, device=DEVICE)
result = study.audit()
print(study.score_model)
print(result.verdict())
assert type(study.score_model.scheduler).__name__ == "DDPMScheduler"
assert result.n_q <= min(result.n_cp, result.n_cid) and result.copies.q_hits <= result.copies.n_xp_copies

# %% [markdown]
# The adversary's count beside the independent count (every sample's nearest training image, Carlini et al.
# 2023's ratio below a threshold calibrated so that ≤ 1 % of real held-out images pass), each copy count
# beside the same count on those held-out images, with the exact 95 % upper bound on how often the model
# hands back `x_p` (from the larger of `|q|` and the `x_p` copies):

# %%
check = result.copies
row = result.to_row()
print(f"|q| = {result.n_q} of {result.n} (E|q| = {result.expected_q:.3g}); "
      f"P(x_p) ≤ {result.handed_back_interval()[1]:.2%} at 95 %")
print(f"x_p copies by nearest neighbour: {check.n_xp_copies} (caught by c_p ∧ c_id: {check.q_hits}); "
      f"samples that copy some training image: {check.copies_text()}; rule: {check.calibration.describe()}")
assert check.calibration.calibrated and check.control["copies"] <= 0.01 * (check.control["n"] + 1)
assert row["|q|"] == result.n_q and row["verdict"] == result.verdict().kind
if PROFILE == "cpu":
    # the committed cpu run: a DDPM trained on 16 images copies them, x_p among them (reports/cpu/08_…)
    assert check.n_copies >= result.n // 2 and check.n_xp_copies >= 1

# %%
groups = {"q-positives": result.q_indices, "x_p copies the adversary missed": result.missed_copies}
plotting.audit_gallery(study.samples(), groups, study.private.x_p,
                       title=f"DDPM on N_D = {N_D}: |q| = {result.n_q} of {result.n}, {check.n_xp_copies} x_p copies by NN")

# %%
plotting.copies_per_image(check.per_image, check.x_p_index, n_samples=result.n)

# %% [markdown]
# ## t' through the model's own scheduler (Algorithm 1)
#
# `t ∈ (0, 1]` maps to the DDPM timestep `ceil(t · 1000) − 1`; `x_p` is noised with the scheduler's
# `add_noise` and denoised with its `step` from there — the model's own definition of its reverse process.

# %%
probe = study.probe()
print(probe)
plotting.q_curve(probe.ts, probe.q, probe.ci_low, probe.ci_high, probe.t_prime, label=f"DDPM, N_D={N_D}", k=probe.k,
                 n=probe.n, title=(f"x_p comes back from t' = {probe.t_prime:.2f} ({probe.t_prime_count})"
                                   if probe.t_prime is not None else "x_p did not come back from any t of the grid"))

# %%
assert probe.t_prime is None or probe.k_at_t_prime >= 1
assert probe.nfe > 0 and (probe.k <= probe.n).all()
if PROFILE == "cpu":
    assert probe.t_prime is not None, "a DDPM that copies x_p hands it back from some noise level"
