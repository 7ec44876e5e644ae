"""Nearest neighbours, Carlini copies and per-image errors (safcore.measures.memorization)."""

import pytest
import torch

from safcore.measures import memorization


def test_nearest_neighbours_finds_the_copied_training_images():
    g = torch.Generator().manual_seed(0)
    train = torch.rand(10, 1, 28, 28, generator=g)
    samples = train[[3, 7]] + 0.001 * torch.randn(2, 1, 28, 28, generator=g)
    indices, distances = memorization.nearest_neighbours(samples, train, k=50, batch_size=1)
    assert indices.shape == distances.shape == (2, 10)  # k clipped to N
    assert indices[:, 0].tolist() == [3, 7]
    assert (distances[:, 1:] >= distances[:, :-1]).all()
    expected = (samples[0] - train[indices[0, 4]]).flatten().norm()
    assert distances[0, 4].item() == pytest.approx(expected.item(), rel=1e-5)
    exact, dist = memorization.nearest_neighbours(train[:4], train, k=1)
    assert exact[:, 0].tolist() == [0, 1, 2, 3] and dist.max().item() < 1e-5
    with pytest.raises(ValueError, match="k="):
        memorization.nearest_neighbours(samples, train, k=0)
    with pytest.raises(ValueError, match="image shape"):
        memorization.nearest_neighbours(samples[:, :, :14], train)


def test_carlini_copies_flags_copies_and_not_distinct_images():
    g = torch.Generator().manual_seed(1)
    train = torch.rand(60, 1, 28, 28, generator=g)
    copies = train[[0, 10, 59]]
    near_copy = (train[[20]] + 0.01 * torch.randn(1, 1, 28, 28, generator=g)).clamp(0, 1)
    fresh = torch.rand(3, 1, 28, 28, generator=g)
    samples = torch.cat([copies, near_copy, fresh])
    flags = memorization.carlini_copies(samples, train)
    assert flags.dtype == torch.bool
    assert flags.tolist() == [True, True, True, True, False, False, False]
    ratio = memorization.carlini_ratio(samples, train)
    nearest, same = memorization.carlini_nearest(samples, train)  # one search gives both
    assert torch.equal(same, ratio) and torch.equal(nearest, memorization.nearest_neighbours(samples, train, k=1)[0][:, 0])
    assert nearest[:4].tolist() == [0, 10, 59, 20]
    assert ratio[:3].max() < 1e-3 and ratio[4:].min() > 0.9
    # k is clipped to N - 1: two training images still work
    assert memorization.carlini_copies(train[:1], train[:2]).tolist() == [True]
    with pytest.raises(ValueError, match="at least 2"):
        memorization.carlini_copies(samples, train[:1])


def test_mae_and_mse_per_image_with_broadcasting():
    a = torch.zeros(3, 1, 28, 28)
    b = torch.full((3, 1, 28, 28), 0.5)
    b[2] = 0.0
    assert memorization.mae(a, b).tolist() == [0.5, 0.5, 0.0]
    assert memorization.mse(a, b).tolist() == [0.25, 0.25, 0.0]
    x_p = torch.full((1, 1, 28, 28), 0.25)
    assert memorization.mae(a, x_p).tolist() == [0.25] * 3
    with pytest.raises(ValueError):
        memorization.mae(a[0], b)
