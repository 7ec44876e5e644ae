"""Memorization of generated images: nearest training images, Carlini copies, per-image MAE / MSE.

Images are unit-range float tensors ``(B, C, H, W)``. ``nearest_neighbours`` (ℓ2 in pixel space),
``carlini_copies`` (Carlini et al. 2023: a sample is a copy when the ℓ2 distance to its nearest
training image is below 0.5 × the mean distance to the next 50 nearest), and the per-image ``mae`` /
``mse`` the paper plots in Fig. 3/10. The audit (:mod:`safcore.audit`) uses them as its independent
copy count beside the adversary's classifiers.
"""

from __future__ import annotations

import math

import torch


def _flat(images: torch.Tensor, label: str) -> torch.Tensor:
    if images.ndim < 2:
        raise ValueError(f"{label} must have shape (N, C, H, W); got {tuple(images.shape)}")
    return images.reshape(len(images), -1).double()


def nearest_neighbours(
    samples: torch.Tensor, train: torch.Tensor, k: int = 50, *, batch_size: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` training images nearest to each sample in pixel space (ℓ2, nearest first).

    Args:
        samples: (B, C, H, W).
        train: (N, C, H, W), same C, H, W.
        k: neighbours per sample; clipped to N.
        batch_size: samples per :func:`torch.cdist` call (memory ≈ batch_size × N doubles).

    Returns:
        ``indices`` (B, k) long into ``train`` and ``distances`` (B, k) float32, ascending.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r} must be a positive integer")
    if samples.shape[1:] != train.shape[1:]:
        raise ValueError(f"samples {tuple(samples.shape)} and train {tuple(train.shape)} differ in image shape")
    if len(train) == 0:
        raise ValueError("train is empty")
    k = min(k, len(train))
    reference = _flat(train, "train")
    queries = _flat(samples, "samples")
    indices, distances = [], []
    for i in range(0, len(queries), batch_size):
        d = torch.cdist(queries[i : i + batch_size], reference)  # float64: exact zeros for copies
        dist, idx = torch.topk(d, k, dim=1, largest=False, sorted=True)
        indices.append(idx)
        distances.append(dist.float())
    if not indices:
        return torch.zeros(0, k, dtype=torch.long), torch.zeros(0, k)
    return torch.cat(indices), torch.cat(distances)


def carlini_nearest(samples: torch.Tensor, train: torch.Tensor, k: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's nearest training image and its Carlini et al. 2023 ratio, from one neighbour search.

    The ratio is ℓ2 to the nearest training image over the mean ℓ2 to the next ``k``; ``k`` is clipped
    to N − 1. Where the next ``k`` are all at distance 0 (duplicates in ``train``) the ratio is 0 if the
    nearest is also at 0, else ``inf``.

    Returns:
        ``nearest`` (B,) long indices into ``train`` and ``ratio`` (B,) float32.
    """
    if len(train) < 2:
        raise ValueError(f"the Carlini criterion needs at least 2 training images; got {len(train)}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r} must be a positive integer")
    k = min(k, len(train) - 1)
    indices, distances = nearest_neighbours(samples, train, k + 1)
    nearest = distances[:, 0].double()
    others = distances[:, 1:].double().mean(dim=1)
    ratio = torch.where(others > 0, nearest / others.clamp_min(1e-300), torch.where(nearest > 0, math.inf, 0.0))
    return indices[:, 0], ratio.float()


def carlini_ratio(samples: torch.Tensor, train: torch.Tensor, k: int = 50) -> torch.Tensor:
    """ℓ2 to the nearest training image over the mean ℓ2 to the next ``k`` (Carlini et al. 2023), (B,);
    see :func:`carlini_nearest`."""
    return carlini_nearest(samples, train, k)[1]


def carlini_copies(samples: torch.Tensor, train: torch.Tensor, k: int = 50, threshold: float = 0.5) -> torch.Tensor:
    """Which samples are extracted training images by Carlini et al. 2023 (bool, (B,)).

    A sample is a copy when ``ℓ2(sample, nearest) < threshold × mean ℓ2(sample, next k nearest)``
    (paper values: threshold 0.5, k 50; k clipped to N − 1).
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold={threshold!r} must be in (0, 1]")
    return carlini_ratio(samples, train, k) < threshold


def _per_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.ndim != 4 or b.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W); got {tuple(a.shape)} and {tuple(b.shape)}")
    try:
        return (a - b).flatten(1)
    except RuntimeError as error:
        raise ValueError(f"image batches {tuple(a.shape)} and {tuple(b.shape)} do not broadcast") from error


def mae(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute pixel error per image, (B,); ``a``, ``b`` (B, C, H, W) or broadcastable (e.g. x_p (1, C, H, W))."""
    return _per_image(a, b).abs().mean(dim=1)


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared pixel error per image, (B,); shapes as in :func:`mae`."""
    return _per_image(a, b).square().mean(dim=1)
