# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Memorization grows with training length (paper §5.3, Fig. 3 and Fig. 10)
#
# The score model's EMA weights are kept at several training steps. From each we sample the same number
# of images and audit them: early on the model has only learned coarse structure and never returns `x_p`;
# trained longer it starts to hand back `x_p`, SAF included, and the returned copies get ever closer to it
# (MAE / MSE to `x_p` of the q-positives).

# %% tags=["parameters"]
DATASET = "breastmnist"  # a 2D MedMNIST flag, or the path of your own MedMNIST-layout .npz
N_D = 8  # training-set size; smoke: 8, cpu: 32, paper: 1000
PROFILE = "smoke"  # smoke (CI, seconds) | cpu (laptop, minutes) | paper (GPU)
N_SAMPLES = None  # images sampled per kept step; None → the profile's (paper: 10 000)
SEED = 0  # draws the subset, x_i and the SAF's place
DEVICE = "auto"  # where every stage runs: auto (a GPU when visible) | cpu | cuda | cuda:N

# %%
import pandas as pd

from safcore.study import plotting
from safcore.study import Study

study = Study(DATASET, N_D, profile=PROFILE, seed=SEED, device=DEVICE)
steps = list(study.profile.train.keep_steps)
steps

# %% [markdown]
# The training loss, then one audit per kept step (samples are cached in the run store).

# %%
figure = plotting.loss_curve(study.losses)
study.save_figure(figure, "03_loss")
audits = {step: study.audit(N_SAMPLES, step=step) for step in steps}
table = pd.DataFrame([{"step": step, **result.to_row()} for step, result in audits.items()]).set_index("step")
table

# %% [markdown]
# **Figure 1** — `|q|` and the q-positives' MAE / MSE to `x_p` against training steps (Fig. 3, Fig. 10 right).

# %%
figure = plotting.memorization_vs_steps(steps, table["|q|"].tolist(), table["MAE"].tolist(), table["MSE"].tolist())
study.save_figure(figure, "03_memorization_vs_steps")

# %% [markdown]
# **Figure 2** — the absolute pixel error between `x_p` and the closest q-positive of the last step
# (Fig. 10 left), and samples of each kept step.

# %%
last = audits[steps[-1]]
samples = study.samples(N_SAMPLES, step=steps[-1])
if last.n_q:
    closest = min(last.q_indices, key=lambda i: float(((samples[i] - study.private.x_p) ** 2).mean()))
    study.save_figure(plotting.error_map(study.private.x_p, samples[closest]), "03_error_map")
figure = plotting.samples_by_group({f"step {s}": study.samples(N_SAMPLES, step=s)[:8] for s in steps})
study.save_figure(figure, "03_samples_by_step")

# %% [markdown]
# What a reader should see, asserted. The training loss falls at every profile; the `smoke` profile's
# tiny U-Net is too small and too briefly trained to memorize, so the memorization finding is asserted
# from the `cpu` profile on (its committed run: `reports/cpu/03_training_length.ipynb`).

# %%
first, final = audits[steps[0]], audits[steps[-1]]
losses = study.losses
assert sum(losses[-50:]) / 50 < sum(losses[:50]) / 50, "the denoising loss falls with training"
if PROFILE != "smoke":
    assert final.n_q > 0, "the fully trained model hands x_p back"
    assert final.n_q >= first.n_q, "memorization does not shrink with training"
    assert final.n_q >= 0.25 * final.expected_q, f"|q| = {final.n_q} is near E|q| = {final.expected_q:.1f}"
print(f"|q| goes from {first.n_q} (step {steps[0]}) to {final.n_q} (step {steps[-1]}); E|q| = {final.expected_q:.1f}")
