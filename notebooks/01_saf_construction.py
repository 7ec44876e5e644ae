# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · The synthetic anatomic fingerprint (paper §3.3, Eq. 10)
#
# A hospital wants to publish a diffusion model instead of its images. To measure whether the model
# hands back an identifiable training image, we plant one: a constant grey disc `x_SAF` painted onto
# one training image `x_i` at a place `L_p` that lies fully inside the image,
#
# $$x_p = x_i\,(1 - L_p) + x_{SAF}\,L_p \qquad \text{(Eq. 10)}$$
#
# and `x_i`'s clean original leaves the training set, so `D_p` keeps its size `N_D` and `x_p` is the only
# image in the world that carries this fingerprint.

# %% tags=["parameters"]
DATASET = "breastmnist"  # a 2D MedMNIST flag, or the path of your own .npz in the MedMNIST layout
DATA_ROOT = None  # None → $SAFCORE_DATA_ROOT, else medmnist's default root
N_D = 64  # training-set size |N_D| (paper: 1000 … 50000)
SEED = 0  # draws the subset, x_i and the SAF's place
RADIUS = None  # SAF radius in px; None → the author's rule, ≈ 3.9 px at 28 px
GREY = 0.5  # the SAF's constant grey x_SAF, in [0, 1]

# %%
from safcore.data import datasets as data
from safcore.data import fingerprint
from safcore.runtime import paths
from safcore.study import plotting
from safcore.runtime.runs import write_manifest

dataset = data.load_dataset(DATASET, root=DATA_ROOT)
clean, subset_index = data.seeded_subset(dataset.split("train"), N_D, seed=SEED)
images = data.to_unit_tensor(clean)
dataset

# %% [markdown]
# Paint the SAF onto one seeded training image and drop its clean original.

# %%
saf = fingerprint.SAFConfig(radius=RADIUS, grey=GREY)
private = fingerprint.make_private_dataset(images, seed=SEED, config=saf)
private.parameters()

# %% [markdown]
# **Figure 1** — `x_i`, the mask `L_p`, and `x_p` (compare the paper's Fig. 2 and Fig. 7).

# %%
figure = plotting.saf_construction(private.x_i, private.mask, private.x_p)
name = f"01_saf_construction_{dataset.name}.png"
plotting.save_figure(figure, paths.figures_dir() / name)
write_manifest(paths.figures_dir() / name, config={"dataset": DATASET, "N_D": N_D, **private.parameters()}, seed=SEED);

# %% [markdown]
# **Figure 2** — the training set `D_p` the score model will see; the one image with the fingerprint is
# framed. Nothing else in `D_p` carries it, and `x_i` itself is gone.

# %%
shown = min(private.n, 64)
grid = plotting.image_grid(private.images[:shown], ncols=16, highlight={private.index} if private.index < shown else set())
plotting.save_figure(grid, paths.figures_dir() / f"01_private_dataset_{dataset.name}.png")

# %% [markdown]
# The facts the rest of the audit stands on:

# %%
outside = ~private.mask.bool()
assert (private.x_p[:, outside] == private.x_i[:, outside]).all(), "x_p must equal x_i outside the mask"
assert (private.x_p[:, private.mask.bool()] == GREY).all(), "the SAF is the constant grey inside the mask"
assert private.n == N_D, "D_p keeps the size N_D"
assert not any((image == private.x_i).all() for image in private.images), "x_i's clean original is absent from D_p"
assert sum(bool((image == private.x_p).all()) for image in private.images) == 1, "x_p appears exactly once"
print(f"D_p: {private.n} images, x_p at index {private.index}, SAF radius {private.radius:.2f} px at {private.center}")
