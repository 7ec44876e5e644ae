# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · t' — how far can x_p be pushed into noise and still come back? (Algorithm 1)
#
# Diffuse the fingerprinted image `x_p` to time `t` with the model's own SDE, `x_{t,p} ~ p(x_t | x_p)`,
# run the learned reverse process `M` times from there and ask the adversary whether each sample is
# `x_p` with its SAF (`c_p` AND `c_id`). `q_M(t)` is the fraction that is; the paper's indicator is
#
# $$t' = \max\{t : q_M(t) > 0\},$$
#
# reported with the count it rests on (`k` of `n` samples at `t'`) and the paper's Eq. 9 indicator (its sum
# over `[0, t']` with 95 % upper limits of `q`: an indicator, not a probability). A model that memorizes
# returns `x_p` from deep in the noise (high `t'`); one that generalizes lets it go early.

# %% tags=["parameters"]
DATASET = "breastmnist"  # a 2D MedMNIST flag (downloaded if no data root is set), or your own MedMNIST-layout .npz
N_D = 8  # training-set size; smoke: 8, cpu: 32, paper: 1000 … 50000
PROFILE = "smoke"  # smoke (CI, seconds) | cpu (laptop, minutes) | paper (GPU)
M = None  # reverse samples per t; None → the profile's (paper: 16)
GRID = None  # t values to probe, e.g. [0.9, 0.5, 0.1]; None → the profile's grid (paper: 0.99 … 0.01)
SEARCH = "exhaustive"  # exhaustive (the whole q_M(t) curve) | topdown (t' alone, same law; cheap when t' is high)
REPEATS = 1  # independent runs of the search; t' is then the largest over runs, printed with their spread
SEED = 0  # draws the subset, x_i and the SAF's place
DEVICE = "auto"  # where every stage runs: auto (a GPU when visible) | cpu | cuda | cuda:N
N_D_LARGE = 64  # a larger training set for comparison: t' should fall as N_D grows

# %%
from safcore.data import datasets as data
from safcore.study import plotting
from safcore.study import Study

# N_D and N_D_LARGE must fit the train split: otherwise stop here, in one line, with the flags that fit
# (a flag's size comes from medmnist's INFO, so nothing is downloaded to find out).
data.check_n_dataset(DATASET, N_D, name="N_D")
data.check_n_dataset(DATASET, N_D_LARGE, name="N_D_LARGE")
study = Study(DATASET, N_D, profile=PROFILE, seed=SEED, device=DEVICE)
changes = {k: v for k, v in {"M": M, "grid": GRID, "search": SEARCH, "repeats": REPEATS}.items() if v is not None}
probe_config = study.probe_config(**changes)
study

# %% [markdown]
# Algorithm 1 on the model trained on `D_p` (trained once, then reused from the run store).

# %%
result = study.probe(probe_config)
print(result)

# %% [markdown]
# **Figure 1** — `q_M(t)` with 95 % Clopper–Pearson bands and `t'` with its count (compare the paper's Fig. 6 and 9).

# %%
figure = plotting.q_curve(result.ts, result.q, result.ci_low, result.ci_high, result.t_prime, label=f"N_D = {N_D}",
                          k=result.k, n=result.n)
study.save_figure(figure, "05_q_curve")

# %% [markdown]
# **Figure 2** — query images `x_{t,p}` beside the reverse samples they lead to (the paper's Fig. 4).

# %%
figure = plotting.reverse_examples({e.t: e.query for e in result.examples}, {e.t: e.samples for e in result.examples})
study.save_figure(figure, "05_reverse_examples")

# %% [markdown]
# The same probe on a model trained on a larger `D_p` (same seed, same SAF): is its `t'` lower?

# %%
large = Study(DATASET, N_D_LARGE, profile=PROFILE, seed=SEED, device=DEVICE)
result_large = large.probe(large.probe_config(**changes))
print(result_large)

# %% [markdown]
# **Figure 3** — both curves together, each `t'` with its count.

# %%
pair = (result, result_large)
figure = plotting.q_curve([r.ts for r in pair], [r.q for r in pair], [r.ci_low for r in pair], [r.ci_high for r in pair],
                          [r.t_prime for r in pair], [f"N_D = {N_D}", f"N_D = {N_D_LARGE}"], k=[r.k for r in pair],
                          n=[r.n for r in pair])
study.save_figure(figure, "05_q_curve_by_dataset_size")

# %% [markdown]
# What this notebook shows, asserted:

# %%
import numpy as np

for r in (result, result_large):  # Algorithm 1's own facts, at every profile
    positive = r.ts[r.k > 0]
    assert r.t_prime == (float(positive.max()) if len(positive) else None), "t' is the largest t with q_M(t) > 0"
    assert np.all((r.ci_low <= r.q + 1e-12) & (r.q <= r.ci_high + 1e-12)), "q_M(t) lies in its Clopper–Pearson band"
    assert r.t_prime is None or r.k_at_t_prime == r.k[r.ts == r.t_prime][0] > 0, "t' rests on k_at_t_prime positives"
    assert 0 < r.eq9_indicator <= 1 and r.nfe > 0
if PROFILE != "smoke":  # the smoke U-Net is too small to keep the SAF; cpu run: reports/cpu/05_tprime.ipynb
    assert result.t_prime is not None, "the model returns x_p from some t of the grid"
    assert SEARCH != "exhaustive" or result.q[0] >= 0.5, "from little noise it returns x_p in most samples"
    assert result.t_prime_or_zero > result_large.t_prime_or_zero, "t' falls as N_D grows"
small, large_ = result.t_prime_or_zero, result_large.t_prime_or_zero  # no t' on the grid counts as 0
sign = ">" if small > large_ else "<" if small < large_ else "="
print(f"t'(N_D={N_D}) = {small:.2f} {sign} t'(N_D={N_D_LARGE}) = {large_:.2f} (0 = no positive on the grid)")

# %% [markdown]
# **Explore it yourself** — move `t` and watch `x_{t,p}` and its reverse samples with both verdicts.

# %%
from safcore.probe.explorer import explore

explorer = explore(study.score_model, study.score_model.sde, study.private.x_p, study.c_p, study.c_id, M=4, t=0.3,
                   steps_full=study.profile.probe.steps_full)
explorer
