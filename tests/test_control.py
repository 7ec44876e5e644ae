"""The control: held-out images without near-duplicates, the calibrated copy rule, and copy counts beside it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from safcore.data import datasets as data_lib
from safcore.audit.sample_audit import audit
from safcore.measures.control import (
    CARLINI_THRESHOLD,
    NEAR_DUPLICATE_RMS,
    calibrate_copy_threshold,
    held_out,
    near_duplicates,
)
from safcore.measures.bounds import proportion_interval
from safcore.data.fingerprint import SAFConfig, make_private_dataset


def test_near_duplicates_are_those_within_the_stated_rms():
    torch.manual_seed(0)
    reference = torch.rand(5, 1, 8, 8)
    close = reference[:2] + 0.5 * NEAR_DUPLICATE_RMS * torch.sign(torch.randn(2, 1, 8, 8))  # RMS 0.03 away
    far = reference[2:4] + 2.0 * NEAR_DUPLICATE_RMS * torch.sign(torch.randn(2, 1, 8, 8))  # RMS 0.12 away
    candidates = torch.cat([close, far, torch.rand(3, 1, 8, 8)])
    assert near_duplicates(candidates, reference).tolist() == [True, True, False, False, False, False, False]
    kept = held_out(candidates, reference, source="test")
    assert (kept.n, kept.n_removed, kept.n_candidates) == (5, 2, 7) and "2 of 7 removed" in kept.describe()
    with pytest.raises(ValueError, match="rms = -1"):
        near_duplicates(candidates, reference, -1)


def test_conformal_threshold_lets_unseen_images_pass_at_most_alpha():
    """Exchangeable held-out and new values: a new one passes with probability rank/(m + 1) ≤ alpha."""
    rng = np.random.default_rng(0)
    m, reps = 299, 4000
    passes = []
    for _ in range(reps):
        values = rng.uniform(0.0, 1.0, m + 1)
        threshold = calibrate_copy_threshold(values[:m], alpha=0.01, carlini=1.0)
        passes.append(values[m] < threshold.value)
    assert threshold.rank == 3 and threshold.guarantee == pytest.approx(3 / 300)
    low, high = proportion_interval(int(np.sum(passes)), reps, 0.99)
    assert low <= 0.01 <= high
    # too few held-out images to resolve 1 %: the smallest one, and the guarantee says what that achieves
    few = calibrate_copy_threshold([0.3, 0.2, 0.4], alpha=0.01)
    assert few.value == 0.2 and few.rank == 1 and few.guarantee == pytest.approx(0.25)
    # never looser than Carlini et al.'s 0.5
    assert calibrate_copy_threshold(np.linspace(0.6, 1.0, 300)).value == CARLINI_THRESHOLD
    assert not calibrate_copy_threshold([]).calibrated


@pytest.fixture(scope="module")
def breast(data_root):
    data = data_lib.load_dataset("breastmnist", root=data_root)
    train = data.split("train")
    clean, chosen = data_lib.seeded_subset(train, 64, seed=0)
    private = make_private_dataset(data_lib.to_unit_tensor(clean, channels=1), seed=0, config=SAFConfig())
    reference = torch.cat([private.images, private.x_i[None]])
    candidates = torch.cat([data_lib.to_unit_tensor(data.split(s), channels=1) for s in ("val", "test")])
    control = held_out(candidates, reference, source="val + test")
    rest = data_lib.to_unit_tensor(train[np.setdiff1d(np.arange(len(train)), chosen)], channels=1)
    unseen = held_out(rest, reference, source="train split outside D_p").images
    return private, control, unseen


def _never(x):
    return torch.zeros(x.shape[0], dtype=torch.bool)


def test_copy_counts_of_a_memorizer_stand_far_above_the_control(breast):
    private, control, _ = breast
    assert control.n_removed == 12 and control.n == 222  # BreastMNIST val + test vs a 64-image D_p
    g = torch.Generator().manual_seed(0)
    picks = torch.randint(0, 64, (256,), generator=g)
    memorized = (private.images[picks] + 0.01 * torch.randn(256, 1, 28, 28, generator=g)).clamp(0, 1)
    result = audit(memorized, _never, _never, private.x_p, 64, train_images=private.images, x_p_index=private.index,
                   control=control.images)
    c = result.copies
    assert c.calibration.calibrated and c.calibration.value < CARLINI_THRESHOLD
    assert c.control["n"] == 222 and c.control["copies"] / c.control["n"] <= 0.01
    assert c.n_copies >= 0.95 * 256  # a copy machine: every sample, against ≤ 1 % of real unseen images
    assert c.n_xp_copies == int((picks == private.index).sum())
    assert "held-out real images: 1 of 222" in c.copies_text()


@pytest.mark.parametrize("kind", ["held-out images", "gaussian fit"])
def test_a_model_that_never_saw_the_data_copies_at_the_control_rate(breast, kind):
    """Samples drawn from images the model never saw (train-split images outside D_p, de-duplicated), or from
    a Gaussian fitted to D_p's pixels, pass the calibrated rule at the control rate (≤ 1 %)."""
    private, control, unseen = breast
    g = torch.Generator().manual_seed(1)
    if kind == "held-out images":
        samples = unseen
    else:
        flat = private.images.flatten(1).double()
        mean = flat.mean(0)
        _, s, v = torch.linalg.svd(flat - mean, full_matrices=False)
        z = torch.randn(256, s.numel(), generator=g, dtype=torch.float64)
        samples = (mean + (z * s / (len(flat) - 1) ** 0.5) @ v).clamp(0, 1).float().reshape(256, 1, 28, 28)
    result = audit(samples, _never, _never, private.x_p, 64, train_images=private.images, x_p_index=private.index,
                   control=control.images)
    c = result.copies
    low, _ = proportion_interval(c.n_copies, c.n)
    assert low <= 0.01 and c.n_copies / c.n <= 0.02, c.copies_text()
    # today's fixed 0.5 passes them far more often
    assert c.carlini_copies > 2 * max(c.n_copies, 1)
