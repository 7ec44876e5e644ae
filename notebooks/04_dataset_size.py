# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Dataset size decides whether x_p comes back (paper §5.3, Tab. 1, Fig. 5)
#
# For each training-set size `N_D` we train a score model on `D_p`, sample `n` images and audit them with
# the same kind of adversary, count the copies of `x_p` independently by nearest neighbour, and probe how
# much noise `x_p` survives (`t'`, Algorithm 1; notebook 05).
# An unbiased model that reproduces its training images would return `x_p` `E|q| = n / N_D` times; the
# one-sided binomial test asks whether `|q|` is significantly lower (H0: p = 1/N_D, H1: p < 1/N_D).
# Small `N_D` memorize (`|q|` near `E|q|`), large ones do not (`|q| = 0`).

# %% tags=["parameters"]
DATASET = "breastmnist"  # a 2D MedMNIST flag, or the path of your own MedMNIST-layout .npz
N_DS = [8, 64]  # training-set sizes; cpu: [16, 64, 546] on BreastMNIST (up to 4708 on PneumoniaMNIST); paper: [1000, 5000, 10000, 20000, 50000]
PROFILE = "smoke"  # smoke (CI, seconds) | cpu (laptop, minutes) | paper (GPU)
N_SAMPLES = 256  # images sampled per model (paper: 150 000); ≥ 3·max(N_DS) lets the test reject H0 when |q| = 0
SEED = 0  # draws the subsets, x_i and the SAF's place
DEVICE = "auto"  # where every stage runs: auto (a GPU when visible) | cpu | cuda | cuda:N

# %%
import pandas as pd

from safcore.study import plotting
from safcore.study import Study

studies = {n_d: Study(DATASET, n_d, profile=PROFILE, seed=SEED, device=DEVICE) for n_d in N_DS}
audits = {n_d: study.audit(N_SAMPLES) for n_d, study in studies.items()}
probes = {n_d: study.probe() for n_d, study in studies.items()}

# %% [markdown]
# **Table 1** — positives of each classifier and of both, against `E|q|`, with the binomial test's p-value
# and the exact 95 % upper bound on P(sample is `x_p`), `t'` from the same model — and, beside the
# adversary, the independent count: samples whose nearest training image is `x_p` (Carlini et al.'s
# ratio, its threshold calibrated so that at most 1 % of real held-out images pass), how many of those the
# adversary caught, how often `c_p` fires on other samples, how many samples copy *some* training image —
# beside the same count on the held-out val + test images the model never saw (near-duplicates of `D_p`
# removed) — and the number of samples that are `x_p` as far as the audit can tell (the larger of `|q|` and
# the copy count), whose exact upper bound is `P(x_p) ≤`.

# %%
table = pd.DataFrame([result.to_row() for result in audits.values()]).set_index("N_D")
table["t'"] = [probes[n_d].t_prime_or_zero for n_d in table.index]
table["t' k/n"] = [probes[n_d].t_prime_count for n_d in table.index]
table[["n", "E|q|", "|c_p+|", "|c_id+|", "|q|", "p", "x_p copies (NN)", "caught", "x_p handed back", "P(x_p) ≤",
       "c_p+ others", "copies", "copies, held-out", "copy threshold", "t'", "t' k/n", "verdict"]].T

# %%
for n_d, study in studies.items():
    print(f"N_D = {n_d}: control = {study.control.describe()}; copy rule: {audits[n_d].copies.calibration.describe()}")

# %% [markdown]
# What each audit may conclude, in words (a copy found by either count is a finding; an adversary that
# misses copies or fires on most samples only makes a claim of absence inconclusive):

# %%
for n_d, result in audits.items():
    print(f"N_D = {n_d}: {result.verdict()}\n")

# %% [markdown]
# **Figure 1** — representative samples per `N_D` (the paper's Fig. 5); q-positives framed.

# %%
figure = plotting.samples_by_group(
    {f"N_D = {n_d}": study.samples(N_SAMPLES)[:16] for n_d, study in studies.items()},
    highlight={f"N_D = {n_d}": {i for i in audits[n_d].q_indices if i < 16} for n_d in N_DS},
)
studies[N_DS[0]].save_figure(figure, "04_samples_by_dataset_size")

# %% [markdown]
# What Tab. 1 shows, asserted: the largest `N_D` does not hand `x_p` back (`|q| = 0`, and no sample is
# `x_p` by nearest neighbour either; H0 rejected where `n` is large enough for the test to have power), and —
# from the `cpu` profile on, whose models are large enough to memorize (committed run:
# `reports/cpu/04_dataset_size.ipynb`) — the smallest does, with `|q|` near `E|q|`, and hands `x_p` back
# from more noise than the largest: `t'` falls as `N_D` grows.

# %%
small, large = audits[min(N_DS)], audits[max(N_DS)]
for result in audits.values():  # the copy rule is calibrated: real images the model never saw rarely pass it
    control = result.copies.control
    assert control["copies"] <= 0.01 * (control["n"] + 1), f"held-out pass rate ≤ 1 %: {control}"
assert large.n_q == 0, f"large N_D does not hand x_p back: {large}"
assert large.copies.n_xp_copies == 0, f"the nearest-neighbour count agrees: no copy of x_p at large N_D: {large}"
assert large.verdict().kind != "reproduces"
if large.expected_q >= 3:  # with E|q| < 3 even |q| = 0 is no evidence against H0 (p = (1 - 1/N_D)^n > 0.05)
    assert large.rejects_h0(), f"|q| = 0 is significantly below E|q|: {large}"
assert small.n_q >= large.n_q
if PROFILE != "smoke":
    assert small.n_q > 0 and small.n_q >= 0.25 * small.expected_q, f"small N_D memorizes: {small}"
    assert small.copies.n_xp_copies >= 0.25 * small.expected_q, f"the NN count sees x_p copied too: {small}"
    assert small.verdict().kind == "reproduces", "copies found are a finding"
    control = small.copies.control
    assert small.copies.copy_rate >= 10 * max(control["copies"], 1) / control["n"], "a copy machine, far above its control"
    t_prime_small, t_prime_large = probes[min(N_DS)].t_prime_or_zero, probes[max(N_DS)].t_prime_or_zero
    assert t_prime_small > t_prime_large, f"t' falls as N_D grows: {t_prime_small} vs {t_prime_large}"
