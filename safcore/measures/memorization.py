"""Memorization of generated images: nearest training images, the field's copy criteria, per-image MAE / MSE.

Images are unit-range float tensors ``(B, C, H, W)``. ``nearest_neighbours`` (ℓ2 in pixel space),
``carlini_copies`` (Carlini et al. 2023: a sample is a copy when the ℓ2 distance to its nearest
training image is below 0.5 × the mean distance to the next 50 nearest) with ``carlini_extracted`` /
``distinct_extracted`` (which, and how many different, training images the samples copy), a pixel-space
ADAPTATION of Dar et al. 2024's correlation criterion (they correlate the embeddings of a trained encoder),
Gu et al. 2023's nearest / second-nearest ratio, and the per-image ``mae`` / ``mse`` the paper plots in
Fig. 3/10. The audit (:mod:`safcore.audit.copies`) uses them as its independent copy count beside the adversary's
classifiers; :mod:`safcore.measures.control` calibrates them on held-out images.
"""

from __future__ import annotations

import math

import numpy as np
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


def carlini_extracted(samples: torch.Tensor, train: torch.Tensor, k: int = 50, threshold: float = 0.5) -> torch.Tensor:
    """The training images that at least one sample copies (Carlini et al. 2023), sorted indices into ``train``.

    A sample is a copy of its nearest training image when ``ℓ2(sample, nearest) < threshold × mean ℓ2 to
    the next k`` (:func:`carlini_nearest`); Carlini et al. count an image extracted once however many
    samples copy it.

    Args:
        samples: (B, C, H, W); train: (N, C, H, W), N ≥ 2.

    Returns:
        (E,) long, E ≤ min(B, N).
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold={threshold!r} must be in (0, 1]")
    nearest, ratio = carlini_nearest(samples, train, k)
    return torch.unique(nearest[ratio < threshold])


def distinct_extracted(samples: torch.Tensor, train: torch.Tensor, k: int = 50, threshold: float = 0.5) -> int:
    """How many DIFFERENT training images the samples copy (Carlini et al. 2023's extraction count)."""
    return int(carlini_extracted(samples, train, k, threshold).numel())


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


# --------------------------------------------------------------------------------------------------
# nearest-neighbour memorization: Dar et al. 2024 (in pixel space), Gu et al. 2023
# --------------------------------------------------------------------------------------------------


def _standardised(images: torch.Tensor, label: str) -> torch.Tensor:
    if images.ndim < 2 or len(images) == 0:
        raise ValueError(f"{label} must be a non-empty batch (N, ...); got {tuple(images.shape)}")
    flat = images.reshape(len(images), -1).double()
    centred = flat - flat.mean(1, keepdim=True)
    norm = centred.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, centred / norm.clamp_min(1e-300), torch.zeros_like(centred))


def pearson_correlations(a: torch.Tensor, b: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
    """Pearson correlation of every image in ``a`` with every image in ``b`` over their pixels, (A, B) float64.

    A constant image correlates 0 with everything (its correlation is undefined; 0 = no linear relation).
    Flattened features of any shape work too (Dar et al. correlate embeddings of a trained encoder).
    """
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"a {tuple(a.shape)} and b {tuple(b.shape)} differ in image shape")
    za, zb = _standardised(a, "a"), _standardised(b, "b")
    return torch.cat([za[i : i + batch_size] @ zb.T for i in range(0, len(za), batch_size)])


def dar_nearest(samples: torch.Tensor, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's most-correlated training image and that correlation (Dar et al. 2024).

    Returns:
        ``nearest`` (B,) long indices into ``train`` and ``correlation`` (B,) float64.
    """
    corr = pearson_correlations(samples, train)
    best, idx = corr.max(dim=1)
    return idx, best


def dar_threshold(train: torch.Tensor, validation: torch.Tensor, percentile: float = 95.0) -> float:
    """Dar et al. 2024's copy threshold (adapted to pixels; remove ``validation``'s near-duplicates of ``train``
    first, :func:`safcore.measures.control.held_out`, or they set it): the ``percentile`` of each training image's correlation with its
    most-correlated validation image (images the model never saw: what chance similarity looks like)."""
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile={percentile!r}; allowed: [0, 100]")
    _, corr = dar_nearest(train, validation)
    return float(np.percentile(corr.numpy(), percentile))


def dar_copies(
    samples: torch.Tensor, train: torch.Tensor, validation: torch.Tensor, percentile: float = 95.0
) -> torch.Tensor:
    """Which samples are copies by Dar et al. 2024 (bool, (B,)): the correlation with the nearest
    training image exceeds :func:`dar_threshold` (the 95th percentile of training-to-nearest-validation
    correlations)."""
    threshold = dar_threshold(train, validation, percentile)
    return dar_nearest(samples, train)[1] > threshold


def gu_ratio(samples: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """ℓ2 to the nearest training image over ℓ2 to the second-nearest (Gu et al. 2023), (B,) float64.

    As sail-sg/DiffMemorize ``mem_ratio.py`` (``knn_distance[:, 0] / knn_distance[:, 1]``); 0/0 (a sample
    equal to a training image that appears twice) is NaN there and here, and counts as not memorized.
    """
    if len(train) < 2:
        raise ValueError(f"the Gu et al. ratio needs at least 2 training images; got {len(train)}")
    _, d = nearest_neighbours(samples, train, k=2)
    d = d.double()
    return d[:, 0] / d[:, 1]


def gu_memorized(samples: torch.Tensor, train: torch.Tensor, threshold: float = 1.0 / 3.0) -> torch.Tensor:
    """Which samples are memorized by Gu et al. 2023 (bool, (B,)): :func:`gu_ratio` < ``threshold`` (1/3)."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold={threshold!r} must be in (0, 1]")
    return gu_ratio(samples, train) < threshold


def gu_memorization_ratio(samples: torch.Tensor, train: torch.Tensor, threshold: float = 1.0 / 3.0) -> float:
    """Gu et al. 2023's memorization ratio: the fraction of samples :func:`gu_memorized` marks (DiffMemorize's
    ``memorize_ratio.mean()``, plotted against training-set size)."""
    if len(samples) == 0:
        raise ValueError("samples is empty")
    return float(gu_memorized(samples, train, threshold).double().mean())
