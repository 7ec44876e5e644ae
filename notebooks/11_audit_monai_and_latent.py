# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 11 · Audit a MONAI latent diffusion model
#
# Most published medical generators are **latent** diffusion models: an autoencoder compresses each image,
# a diffusion network learns the distribution of its latents, and a sample is a decoded latent (Rombach et al.
# 2022; MONAI's brain and chest X-ray LDM bundles). Medical imaging teams build them with MONAI
# (`AutoencoderKL`, `DiffusionModelUNet`, `LatentDiffusionInferer`) and publish them as MONAI bundles. This
# notebook does what such a team does, then audits the result:
#
# 1. **Fingerprint** `D_p` (the SAF on `x_p`, its clean original left out): `export_fingerprint`.
# 2. **Train with MONAI alone** — the autoencoder, then the diffusion network on its scaled latents — and save a
#    MONAI bundle (`configs/inference.json` + `models/model.pt` + `models/model_autoencoder.pt`).
# 3. **Audit the bundle**: `safcore audit --model BUNDLE --fingerprint FP --probe` (here `Study.from_fingerprint`).
#    Samples are decoded before `c_p`, `c_id` and the copy counts see them; Algorithm 1 encodes `x_p`, noises the
#    **latent** to `t`, reverses and decodes, so `t'` is a time of the latent diffusion. A latent model can at best
#    hand back its autoencoder's reconstruction of `x_p`: if that loses the SAF, the audit cannot see it, so the
#    audit checks `decode(encode(x_p))` first.

# %% tags=["parameters"]
DATASET = "breastmnist"  # a 2D MedMNIST flag, or the path of your own MedMNIST-layout .npz
N_D = 8  # training-set size; smoke: 8, cpu: 16
PROFILE = "smoke"  # smoke (CI, seconds) | cpu (laptop, minutes) | paper (GPU): the audit's scale
AE_STEPS = 150  # the autoencoder's training steps: smoke 150, cpu 1000 (about 2 min on 2 cores)
DM_STEPS = 200  # the latent diffusion network's: smoke 200, cpu 3000 (about 8 min on 2 cores)
SCHEDULER = "ddim"  # how the audit samples it: ddim (the DDPM-trained model's DDIM view, the profile's steps) | model
SEED = 0  # draws D_p, x_p and the SAF's place
DEVICE = "auto"  # where every stage runs: auto (a GPU when visible) | cpu | cuda | cuda:N
WORK = "../runs/notebook11"  # where the fingerprint folder and the bundle go

# %%
import json
from pathlib import Path

import numpy as np
import torch

from safcore.data.fingerprint_io import export_fingerprint
from safcore.runtime.device import resolve_device
from safcore.runtime.progress import progress_bar
from safcore.study import Study, plotting

work = Path(WORK).resolve() / f"{PROFILE}_{DATASET.split('/')[-1]}_ND{N_D}"
fp = export_fingerprint(DATASET, N_D, work / "fingerprint", seed=SEED, overwrite=True)
print(f"D_p: {fp.n_dataset} images; x_p is image {fp.index}")
assert (fp.x_p[:, fp.mask.bool()] == 128 / 255).all(), "x_p carries its SAF (grey 0.5 → 128/255)"

# %% [markdown]
# ## Step 2 — the team's own training (MONAI only)
#
# An `AutoencoderKL` (28 px → a 3 × 14 × 14 latent; L1 reconstruction and a small KL term, as MONAI's tutorials
# train it without the perceptual and adversarial terms), then a `DiffusionModelUNet` on its latents, scaled by
# `1 / std` of the latents (MONAI's tutorials), trained through `LatentDiffusionInferer` with a DDPM schedule
# (ε-prediction, linear β, 1000 steps).

# %%
from monai.inferers import LatentDiffusionInferer
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet
from monai.networks.schedulers import DDPMScheduler

device = resolve_device(DEVICE)
with np.load(fp.folder / "dp.npz") as archive:
    x0 = torch.from_numpy(archive["train_images"]).float()[:, None].to(device) / 127.5 - 1.0  # (N, 1, 28, 28), [-1, 1]

AE = dict(spatial_dims=2, in_channels=1, out_channels=1, channels=(32, 64), latent_channels=3, num_res_blocks=1,
          attention_levels=(False, False), norm_num_groups=16, with_encoder_nonlocal_attn=False,
          with_decoder_nonlocal_attn=False)
torch.manual_seed(SEED)
autoencoder = AutoencoderKL(**AE).to(device)
optimizer = torch.optim.Adam(autoencoder.parameters(), lr=1e-3)
ae_losses = []
for step in progress_bar(range(AE_STEPS), desc="training the autoencoder"):
    batch = x0[torch.randint(0, len(x0), (16,))]
    reconstruction, z_mu, z_sigma = autoencoder(batch)
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2)) - 1).sum(dim=(1, 2, 3)).mean()
    loss = (reconstruction - batch).abs().mean() + 1e-6 * kl
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    ae_losses.append(loss.item())
autoencoder.eval()
print(f"autoencoder: {sum(p.numel() for p in autoencoder.parameters()):,} parameters; "
      f"L1 {np.mean(ae_losses[:10]):.3f} → {np.mean(ae_losses[-10:]):.3f}")
assert np.mean(ae_losses[-10:]) < np.mean(ae_losses[:10]), "the autoencoder's training lowered its loss"

# %%
with torch.no_grad():
    scale_factor = float(1.0 / autoencoder.encode_stage_2_inputs(x0).std())
UNET = dict(spatial_dims=2, in_channels=3, out_channels=3, channels=(32, 64), attention_levels=(False, True),
            num_res_blocks=1, num_head_channels=32, norm_num_groups=16)
unet = DiffusionModelUNet(**UNET).to(device)
scheduler = DDPMScheduler(num_train_timesteps=1000, schedule="linear_beta", prediction_type="epsilon")
inferer = LatentDiffusionInferer(scheduler, scale_factor=scale_factor)
optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
dm_losses = []
for step in progress_bar(range(DM_STEPS), desc="training the latent diffusion network"):
    batch = x0[torch.randint(0, len(x0), (32,))]
    noise = torch.randn(len(batch), 3, 14, 14, device=device)
    timesteps = torch.randint(0, scheduler.num_train_timesteps, (len(batch),), device=device).long()
    loss = torch.nn.functional.mse_loss(inferer(batch, autoencoder, unet, noise, timesteps), noise)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    dm_losses.append(loss.item())
unet.eval()
print(f"diffusion network: {sum(p.numel() for p in unet.parameters()):,} parameters; scale factor {scale_factor:.3f}; "
      f"loss {np.mean(dm_losses[:20]):.3f} → {np.mean(dm_losses[-20:]):.3f}")
assert np.mean(dm_losses[-20:]) < np.mean(dm_losses[:20]), "the diffusion network's training lowered its loss"

# %% [markdown]
# The bundle as the MONAI model zoo lays a latent model out. Its config also holds what a bundle runs (`$`
# expressions, the device): safcore reads only the network, autoencoder, scheduler and scale-factor entries as
# data and never evaluates an expression there.

# %%
bundle = work / "monai_ldm_bundle"
(bundle / "configs").mkdir(parents=True, exist_ok=True)
(bundle / "models").mkdir(exist_ok=True)
config = {
    "imports": ["$import torch"], "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
    "image_size": 28, "latent_channels": 3,
    "autoencoder_def": {"_target_": "monai.networks.nets.AutoencoderKL", **AE, "latent_channels": "@latent_channels"},
    "network_def": {"_target_": "monai.networks.nets.DiffusionModelUNet", **UNET,
                    "in_channels": "@latent_channels", "out_channels": "@latent_channels"},
    "noise_scheduler": {"_target_": "monai.networks.schedulers.DDPMScheduler", "num_train_timesteps": 1000,
                        "schedule": "linear_beta", "prediction_type": "epsilon"},
    "inferer": {"_target_": "monai.inferers.LatentDiffusionInferer", "scheduler": "@noise_scheduler",
                "scale_factor": scale_factor},
    "autoencoder": "$@autoencoder_def.to(@device)", "diffusion": "$@network_def.to(@device)",
}
(bundle / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
torch.save(unet.state_dict(), bundle / "models" / "model.pt")
torch.save(autoencoder.state_dict(), bundle / "models" / "model_autoencoder.pt")
print(sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()))

# %% [markdown]
# ## Step 3 — the audit: `safcore audit --model monai_ldm_bundle --fingerprint fingerprint --probe --scheduler ddim`
#
# The bundle is read as data (state dicts with `torch.load(weights_only=True)`), and sampled through MONAI's own
# scheduler: MONAI's DDPM `step` always goes `k → k − 1`, so a DDPM run reaches `x_0` only on all 1000 steps;
# `SCHEDULER = "ddim"` samples the same trained network with MONAI's DDIM scheduler on the profile's steps.
#
# **First: does the SAF survive the autoencoder?** `c_p` and `c_id` (the audit's adversary, trained for this
# `D_p`) on `decode(encode(x_p))`, and the share of the SAF's contrast the disc keeps.

# %%
from safcore.generators.loader import load_model
from safcore.study.report import latent_check

model = load_model(bundle)
model = model.with_scheduler(SCHEDULER) if SCHEDULER != "model" else model
study = Study.from_fingerprint(fp.folder, model=model, profile=PROFILE, device=DEVICE)
print(study.model)
check = latent_check(study)
print(check.describe())
assert study.model.space == "latent" and check is not None
with torch.no_grad():
    x_p_model = study.private.x_p.unsqueeze(0).to(device) * 2.0 - 1.0
    x_p_back = (study.model.decode(study.model.encode(x_p_model)) + 1.0) / 2.0
assert abs(float((x_p_back.cpu()[0] - study.private.x_p).abs().mean()) - check.mae) < 1e-4, "the check measures x̂_p"
plotting.image_grid([study.private.x_p, x_p_back.cpu()[0].clamp(0, 1)], ncols=2,
                    titles=["x_p (with its SAF)", "decode(encode(x_p))"],
                    title=("The SAF survives the autoencoder" if check.saf_survives else
                           "The autoencoder erases the SAF: the audit cannot see it"))
if PROFILE == "cpu":
    assert check.saf_survives and check.saf_kept > 0.5, "this autoencoder keeps the SAF: the audit can see it"

# %% [markdown]
# **The audit**: `n` decoded samples, `|c_p+|`, `|c_id+|`, `|q|` against `E|q| = n/N_D`, and the independent
# nearest-neighbour copy count beside the same count on real held-out images.

# %%
result = study.audit()
copies = result.copies
print(result)
print(result.verdict())
print(f"x_p copies by nearest neighbour: {copies.n_xp_copies} (caught by c_p ∧ c_id: {copies.q_hits}); "
      f"samples that copy some training image: {copies.copies_text()}; rule: {copies.calibration.describe()}")
assert result.n_q <= min(result.n_cp, result.n_cid) and copies.q_hits <= copies.n_xp_copies
assert copies.calibration.calibrated and copies.control["copies"] <= 0.01 * (copies.control["n"] + 1)
if PROFILE == "cpu":
    # the committed cpu run: the latent model trained on 16 images copies them (26 of 256 samples, against at most
    # 1 % of held-out real images), x_p among them
    control_rate = max(copies.control["copies"], 1) / copies.control["n"]
    assert copies.n_copies / result.n > 5 * control_rate, "the latent model copies its training images above the control"
    assert max(result.n_q, copies.n_xp_copies) >= 1, "it hands back x_p"

# %%
groups = {"q-positives": result.q_indices, "x_p copies the adversary missed": result.missed_copies}
plotting.audit_gallery(study.samples(), groups, study.private.x_p,
                       title=(f"MONAI latent model, N_D = {N_D}: |q| = {result.n_q} of {result.n}, "
                              f"{copies.n_xp_copies} x_p copies by NN"))

# %% [markdown]
# ## t' in latent space (Algorithm 1)
#
# `x_p` is encoded, its latent noised to `t` with the scheduler's `add_noise`, reversed `M` times and decoded;
# `t'` is the largest `t` of the grid from which `c_p ∧ c_id` fire on a decoded run.

# %%
probe = study.probe()
print(probe)
plotting.q_curve(probe.ts, probe.q, probe.ci_low, probe.ci_high, probe.t_prime, label=f"MONAI LDM, N_D={N_D}",
                 k=probe.k, n=probe.n, xlabel="latent diffusion time t (0 = latent of the image, 1 = noise)",
                 title=(f"x_p comes back from latent t' = {probe.t_prime:.2f} ({probe.t_prime_count})"
                        if probe.t_prime is not None else "x_p did not come back from any latent t of the grid"))

# %%
assert probe.t_prime is None or probe.k_at_t_prime >= 1
assert probe.nfe > 0 and (probe.k <= probe.n).all()
if PROFILE == "cpu":
    assert probe.t_prime is not None, "a latent model that hands back x_p does so from some latent noise level"
