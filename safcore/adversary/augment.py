"""What each classifier sees (paper App. A): the SAF batches of ``c_p`` and the one-against-all stream of ``c_id``
with its circular masking, AugMix and Gaussian noise; all random draws from an explicit ``torch.Generator`` (AugMix
from the global torch RNG, as torchvision does)."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import torch
from torchvision.transforms import v2

from safcore.data.fingerprint import PrivateDataset, apply_saf, random_circle_masks

if TYPE_CHECKING:
    from safcore.adversary.classifiers import ClassifierConfig

__all__ = ["augmix_images", "add_noise", "saf_batch", "id_augment", "id_samples", "AugmentedExamples",
           "augmented_examples"]


def augmix_images(images: torch.Tensor, severity: int = 3) -> torch.Tensor:
    """torchvision AugMix applied to each image separately (a batched call would give every image the
    same operations). ``(B, C, H, W)`` unit range → same shape; goes through uint8 as AugMix needs.

    Uses the global torch RNG (as torchvision does).
    """
    augment = v2.AugMix(severity=severity)
    as_uint8 = (images.clamp(0, 1) * 255.0).round().to(torch.uint8).cpu()
    out = torch.stack([augment(image) for image in as_uint8])
    return out.to(images.device, torch.float32) / 255.0


def add_noise(images: torch.Tensor, noise_std: float, generator: torch.Generator) -> torch.Tensor:
    """``images + σ·ε`` with ``σ ~ U(0, noise_std)`` per image and ``ε ~ N(0, I)``, clamped to ``[0, 1]``
    (``(B, C, H, W)``; unchanged when ``noise_std`` is 0)."""
    if noise_std <= 0:
        return images
    std = torch.rand(images.shape[0], 1, 1, 1, generator=generator) * noise_std
    noise = torch.randn(images.shape, generator=generator)
    return (images + (std * noise).to(images.device)).clamp(0.0, 1.0)


def saf_batch(
    images: torch.Tensor,
    probability: float,
    radius: float,
    grey: float,
    generator: torch.Generator,
    *,
    augmix: bool = False,
    severity: int = 3,
    noise_std: float = 0.0,
    exact: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``c_p``'s input: each image gets the SAF (Eq. 10, disc at a random place) with ``probability``.

    Args:
        images: ``(B, C, H, W)`` unit range.
        noise_std: Gaussian noise of a std drawn from ``U(0, noise_std)`` per image, after AugMix.
        exact: paint exactly ``max(1, round(probability · B))`` images (validation) instead of
            drawing each independently (training).
    Returns:
        ``(images (B, C, H, W), labels (B,) float in {0, 1})``; AugMix, if on, comes after the SAF.
    """
    n, size = images.shape[0], images.shape[-1]
    if exact:
        labels = torch.zeros(n)
        count = min(n, max(1, round(probability * n))) if probability > 0 else 0
        labels[torch.randperm(n, generator=generator)[:count]] = 1.0
    else:
        labels = (torch.rand(n, generator=generator) < probability).float()
    masks = random_circle_masks(n, size, radius, generator) * labels[:, None, None, None]
    out = apply_saf(images, masks.to(images.device), grey)
    if augmix:
        out = augmix_images(out, severity)
    return add_noise(out, noise_std, generator), labels


def id_augment(
    images: torch.Tensor,
    radius: float,
    grey: float,
    generator: torch.Generator,
    *,
    mask_probability: float,
    noise_std: float,
    augmix: bool,
    severity: int = 3,
) -> torch.Tensor:
    """``c_id``'s augmentation of ``(B, C, H, W)`` unit-range images (paper §5.2), in this order:
    a grey disc of the SAF's shape at a random place with ``mask_probability``; AugMix; Gaussian
    noise with a std drawn from ``U(0, noise_std)`` per image; clamp to ``[0, 1]``."""
    n, size = images.shape[0], images.shape[-1]
    keep = (torch.rand(n, generator=generator) < mask_probability).float()
    masks = random_circle_masks(n, size, radius, generator) * keep[:, None, None, None]
    out = apply_saf(images, masks.to(images.device), grey)
    if augmix:
        out = augmix_images(out, severity)
    return add_noise(out, noise_std, generator)


def id_samples(
    private: PrivateDataset,
    negatives: torch.Tensor,
    probability: float,
    generator: torch.Generator,
    *,
    exact: bool = False,
    min_slots: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``c_id``'s (un-augmented) one-against-all stream: each slot is ``x_p`` with ``probability``,
    else the next negative of a random permutation. ``ceil(n_neg / (1 − p))`` slots, so every
    negative appears once per epoch on average, or ``min_slots`` if larger. ``exact`` fixes the
    number of positives at ``slots − n_neg``.

    Returns ``(images (S, C, H, W), labels (S,) float)``.
    """
    n_neg = negatives.shape[0]
    slots = max(math.ceil(n_neg / (1.0 - probability)), min_slots or 0)
    if exact:
        n_pos = max(1, slots - n_neg)
        labels = torch.zeros(n_neg + n_pos)
        labels[torch.randperm(n_neg + n_pos, generator=generator)[:n_pos]] = 1.0
    else:
        labels = (torch.rand(slots, generator=generator) < probability).float()
    n_slots_neg = int((labels == 0).sum())
    order = torch.cat([torch.randperm(n_neg, generator=generator) for _ in range(math.ceil(max(n_slots_neg, 1) / n_neg))])
    images = torch.empty((labels.shape[0], *negatives.shape[1:]), dtype=negatives.dtype)
    images[labels == 0] = negatives[order[:n_slots_neg]]
    images[labels == 1] = private.x_p.to(negatives.dtype)
    return images, labels


@dataclasses.dataclass(frozen=True)
class AugmentedExamples:
    """What each classifier is trained on (for the paper's Fig. 7): images ``(n, C, H, W)`` unit
    range and labels ``(n,)`` bool (``saf``: has an SAF; ``id``: is ``x_p``)."""

    saf_images: torch.Tensor
    saf_labels: torch.Tensor
    id_images: torch.Tensor
    id_labels: torch.Tensor


def augmented_examples(private: PrivateDataset, config: ClassifierConfig, *, n: int = 16, seed: int = 0) -> AugmentedExamples:
    """``n`` training inputs of ``c_p`` and of ``c_id`` built exactly as in training (appendix A):
    ``c_p`` from the images of ``D_p`` other than ``x_p`` with SAFs at ``saf_p_train``; ``c_id`` from
    the one-against-all stream at ``id_p_train`` with masking, AugMix and noise."""
    if n < 1:
        raise ValueError(f"n = {n!r} must be ≥ 1")
    others = private.others
    if others.shape[0] == 0:
        raise ValueError("D_p holds only x_p: c_p and c_id need other training images")
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pick = torch.randint(others.shape[0], (n,), generator=generator)
        saf_images, saf_labels = saf_batch(
            others[pick], config.saf_p_train, private.radius, private.grey, generator,
            augmix=config.augmix, severity=config.augmix_severity, noise_std=config.saf_noise_std,
        )
        stream, id_labels = id_samples(private, others, config.id_p_train, generator, min_slots=n)
        pick = torch.randperm(stream.shape[0], generator=generator)[:n]
        id_images = id_augment(
            stream[pick], private.radius, private.grey, generator, mask_probability=config.mask_probability,
            noise_std=config.noise_std, augmix=config.augmix, severity=config.augmix_severity,
        )
    return AugmentedExamples(saf_images, saf_labels.bool(), id_images, id_labels[pick].bool())
