# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · False positives: why a sample counts only when both classifiers fire (appendix B, Fig. 8)
#
# Each classifier alone is fooled now and then: `c_p` by any round uniform patch, `c_id` by images of
# similar texture and structure. A generated image is a privacy breach (`q`) only when both fire. This
# notebook shows every false positive of each classifier beside the q-positives and `x_p`.

# %% tags=["parameters"]
DATASET = "breastmnist"  # a 2D MedMNIST flag, or the path of your own MedMNIST-layout .npz
N_D = 8  # training-set size; smoke: 8, cpu: 32, paper: 1000 … 50000
PROFILE = "smoke"  # smoke (CI, seconds) | cpu (laptop, minutes) | paper (GPU)
N_SAMPLES = None  # images to audit; None → the profile's (paper: 150 000)
SEED = 0  # draws the subset, x_i and the SAF's place
DEVICE = "auto"  # where every stage runs: auto (a GPU when visible) | cpu | cuda | cuda:N

# %%
from safcore.measures import memorization
from safcore.study import plotting
from safcore.study import Study

study = Study(DATASET, N_D, profile=PROFILE, seed=SEED, device=DEVICE)
samples = study.samples(N_SAMPLES)
result = study.audit(N_SAMPLES)
print(result)

# %% [markdown]
# **Figure 1** — the q-positives, `c_p`'s false positives (SAF-like but not `x_p`) and `c_id`'s
# (`x_p`-like but without the SAF), each beside `x_p`; and the samples that copy `x_p` by nearest
# neighbour (an independent count) which the adversary did not catch.

# %%
missed = result.missed_copies
groups = {"q-positives": result.q_indices, "c_p+ only": result.cp_false_positives, "c_id+ only": result.cid_false_positives,
          "x_p copies (nearest neighbour) the adversary missed": missed}
headline = (f"|q| = {result.n_q} of {result.n} (E|q| = {result.expected_q:.3g}); {result.copies.n_xp_copies} x_p copies "
            f"by nearest neighbour, {len(missed)} missed; P(x_p) ≤ {result.handed_back_interval()[1]:.1%} at 95 %")
figure = plotting.audit_gallery(samples, groups, study.private.x_p, title=headline)
study.save_figure(figure, "06_false_positives")
{name: len(indices) for name, indices in groups.items()}

# %% [markdown]
# Every q-positive is `x_p`: its nearest training image is `x_p` itself, and it carries the SAF where
# `x_p` does. The two lists of single-classifier positives are disjoint from `q`.

# %%
nearest, distance = memorization.nearest_neighbours(samples, study.private.images, k=1)
mask = study.private.mask.bool()
for i in result.q_indices:
    assert int(nearest[i, 0]) == study.private.index, f"q-positive {i} is closest to training image {int(nearest[i, 0])}, not x_p"
    assert (samples[i][:, mask] - study.private.grey).abs().mean() < 0.1, f"q-positive {i} lacks the SAF"
assert not set(result.q_indices) & set(result.cp_false_positives) and not set(result.q_indices) & set(result.cid_false_positives)
assert set(result.q_indices) == set(result.cp_indices) & set(result.cid_indices)

# %% [markdown]
# The other way round: how many of the samples that copy `x_p` (nearest neighbour) the adversary
# caught, and how often each classifier fires on samples that are not `x_p`. Copies found by either count
# make the verdict "reproduces" whatever the adversary's recall (a weak adversary can only undercount);
# where nothing was found and the adversary misses copies or fires on most samples, the verdict must say
# "inconclusive" rather than "not observed".

# %%
check = result.copies
print(f"x_p copies {check.n_xp_copies}: c_p caught {check.cp_hits}, c_id {check.cid_hits}, both {check.q_hits}; "
      f"c_p fires on {check.cp_others}/{check.n_others} and c_id on {check.cid_others}/{check.n_others} other samples")
print(result.verdict())
assert check.q_hits + len(check.q_not_copies) == result.n_q
weak = (check.n_xp_copies and check.q_recall < 0.9) or check.cp_rate_others > 0.5 or not result.cp_on_x_p
found = max(result.n_q, check.n_xp_copies)
if found:
    assert result.verdict().kind == "reproduces" and f"at least {found} of {result.n}" in result.verdict().headline
else:
    assert result.verdict().kind != "not_observed" or not weak, "a weak adversary never claims absence"
