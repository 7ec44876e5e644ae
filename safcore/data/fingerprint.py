"""The synthetic anatomic fingerprint (SAF): a constant grey disc painted onto one training image.

Paper §3.3, Eq. 10: ``x_p = x_i · (1 − L_p) + x_SAF · L_p`` where ``L_p`` is a circular mask that
lies entirely inside the image and ``x_SAF`` a constant grey. The defaults follow the author's later
code: grey 0.5 in every channel, radius ``9 · 2^(log2(size) − 6)`` px (3.94, 9 and 18 px at 28, 64 and
128 px: the disc covers the same share of the image at every size).

All images here are float tensors in ``[0, 1]`` of shape ``(..., C, H, W)``; the SAF's grey is painted
into every channel, so on an RGB image it is a neutral grey disc ``(x_SAF, x_SAF, x_SAF)``.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from safcore.runtime.checks import check_seed


def default_radius(image_size: int) -> float:
    """The author's radius rule, ``9 · 2^(log2(size) − 6)`` px (3.94 px at 28 px, 9 px at 64 px, 18 px at 128 px)."""
    return 9.0 * 2.0 ** (math.log2(image_size) - 6.0)


@dataclasses.dataclass(frozen=True)
class SAFConfig:
    """How the fingerprint looks.

    Args:
        radius: disc radius in pixels; ``None`` → :func:`default_radius` of the image size.
        grey: the constant value ``x_SAF`` in ``[0, 1]`` (all channels).
        center: ``(row, col)`` of the disc centre; ``None`` → drawn with the dataset seed.
    """

    radius: float | None = None
    grey: float = 0.5
    center: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.grey <= 1.0:
            raise ValueError(f"SAF grey {self.grey!r} is outside the allowed range [0, 1]")
        if self.radius is not None and not self.radius > 0:
            raise ValueError(f"SAF radius {self.radius!r} must be > 0 px")

    def resolved_radius(self, image_size: int) -> float:
        radius = default_radius(image_size) if self.radius is None else float(self.radius)
        check_radius(radius, image_size)
        return radius


def check_radius(radius: float, image_size: int) -> None:
    """A disc fits fully inside a ``size × size`` image iff ``0 < radius ≤ (size − 1) / 2``."""
    limit = (image_size - 1) / 2.0
    if not 0 < radius <= limit:
        raise ValueError(f"SAF radius {radius!r} px cannot fit inside a {image_size}×{image_size} image; allowed: (0, {limit}]")


def center_range(image_size: int, radius: float) -> tuple[float, float]:
    """The interval of centre coordinates for which the disc of ``radius`` lies inside the image.

    Pixel centres sit at integer coordinates ``0 … size−1``; the disc covers pixel ``(r, c)`` when
    ``(r − r0)² + (c − c0)² ≤ radius²``, so it is inside when ``radius ≤ r0 ≤ size − 1 − radius``.
    """
    check_radius(radius, image_size)
    return radius, image_size - 1 - radius


def circle_mask(image_size: int, radius: float, center: tuple[float, float]) -> torch.Tensor:
    """``L_p``: float ``(H, W)`` mask, 1 inside the disc of ``radius`` around ``center=(row, col)``.

    Raises:
        ValueError: the disc would leave the image (the SAF must lie entirely inside it).
    """
    low, high = center_range(image_size, radius)
    row, col = (float(c) for c in center)
    if not (low <= row <= high and low <= col <= high):
        raise ValueError(
            f"SAF centre {center!r} with radius {radius} leaves the {image_size}×{image_size} image; "
            f"each coordinate must lie in [{low:g}, {high:g}]"
        )
    grid = torch.arange(image_size, dtype=torch.float32)
    dist2 = (grid[:, None] - row) ** 2 + (grid[None, :] - col) ** 2
    return (dist2 <= radius**2 + 1e-6).float()


def random_centers(n: int, image_size: int, radius: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` centres ``(row, col)`` drawn uniformly so that each disc lies inside the image. Shape ``(n, 2)``."""
    low, high = center_range(image_size, radius)
    return low + (high - low) * torch.rand(n, 2, generator=generator)


def random_circle_masks(
    n: int, image_size: int, radius: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``n`` discs of the SAF's shape at random places inside the image: float ``(n, 1, H, W)``.

    The masks that c_p's positives and c_id's random circular masking are made with (paper §5.2).
    """
    centers = random_centers(n, image_size, radius, generator)
    grid = torch.arange(image_size, dtype=torch.float32)
    dr = grid[None, :, None] - centers[:, 0, None, None]
    dc = grid[None, None, :] - centers[:, 1, None, None]
    return ((dr**2 + dc**2) <= radius**2 + 1e-6).float()[:, None]


def apply_saf(x: torch.Tensor, mask: torch.Tensor, grey: float = 0.5) -> torch.Tensor:
    """Eq. 10: ``x · (1 − L) + grey · L``, the same grey in every channel.

    Args:
        x: images ``(..., C, H, W)`` in ``[0, 1]``.
        mask: ``(H, W)`` or broadcastable to ``x`` (e.g. ``(B, 1, H, W)``), values in ``{0, 1}``.
        grey: ``x_SAF``, a constant in ``[0, 1]``.
    """
    if not 0.0 <= grey <= 1.0:
        raise ValueError(f"SAF grey {grey!r} is outside the allowed range [0, 1]")
    mask = mask.to(x.dtype)
    return x * (1.0 - mask) + grey * mask


@dataclasses.dataclass(frozen=True)
class PrivateDataset:
    """``D_p``: the training set with one image replaced by its fingerprinted version.

    Attributes:
        images: ``(N_D, C, H, W)`` — D_p, same size as the clean set; ``images[index]`` is ``x_p``.
        index: position of ``x_p`` in ``images`` (the drawn ``i``).
        x_p: ``(C, H, W)`` the fingerprinted image.
        x_i: ``(C, H, W)`` its clean original, absent from ``images``.
        mask: ``(H, W)`` the mask ``L_p``.
        center, radius, grey, seed: every parameter used.
    """

    images: torch.Tensor
    index: int
    x_p: torch.Tensor
    x_i: torch.Tensor
    mask: torch.Tensor
    center: tuple[float, float]
    radius: float
    grey: float
    seed: int

    @property
    def n(self) -> int:
        return int(self.images.shape[0])

    @property
    def others(self) -> torch.Tensor:
        """The ``N_D − 1`` training images that are not ``x_p``: ``(N_D − 1, C, H, W)``."""
        keep = torch.ones(self.n, dtype=torch.bool)
        keep[self.index] = False
        return self.images[keep]

    def parameters(self) -> dict:
        """The SAF parameters as plain values (for manifests)."""
        return {"index": self.index, "center": list(self.center), "radius": self.radius, "grey": self.grey, "seed": self.seed}


def make_private_dataset(images: torch.Tensor, *, seed: int, config: SAFConfig = SAFConfig()) -> PrivateDataset:
    """Turn a clean set of ``N_D`` images into ``D_p`` (paper §3.3).

    One image ``x_i``, drawn with ``seed``, is replaced by ``x_p`` (Eq. 10) at the same index; its
    clean original is thus removed and ``N_D`` is unchanged. The disc centre is drawn with the same
    seed unless ``config.center`` fixes it.

    Args:
        images: ``(N_D, C, H, W)`` float in ``[0, 1]``.
    """
    check_seed(seed)
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must have shape (N, C, H, W) with H == W, got {tuple(images.shape)}")
    if images.shape[0] < 1:
        raise ValueError("cannot fingerprint an empty dataset (N_D must be ≥ 1)")
    size = int(images.shape[-1])
    radius = config.resolved_radius(size)
    generator = torch.Generator().manual_seed(int(seed))
    index = int(torch.randint(images.shape[0], (1,), generator=generator))
    drawn = random_centers(1, size, radius, generator)[0]
    center = tuple(float(c) for c in config.center) if config.center is not None else (float(drawn[0]), float(drawn[1]))
    mask = circle_mask(size, radius, center)
    x_i = images[index].clone()
    x_p = apply_saf(x_i, mask, config.grey)
    private = images.clone()
    private[index] = x_p
    return PrivateDataset(
        images=private, index=index, x_p=x_p, x_i=x_i, mask=mask, center=center, radius=radius, grey=config.grey, seed=int(seed)
    )
