"""Fréchet distance between two image sets' features (FID), drawn to equal sizes.

**FID** (Heusel et al. 2017; Tab. 2 of the paper reports ``FID_train`` and ``FID_test``) is computed by
torchmetrics' :class:`~torchmetrics.image.fid.FrechetInceptionDistance`,
``‖μ_r − μ_f‖² + Tr(Σ_r + Σ_f − 2 (Σ_r Σ_f)^{1/2})``, over the features of one of the extractors of
:mod:`safcore.measures.features`: ``"inception"`` (torch-fidelity's InceptionV3, from local weights only),
``"domain"`` (safcore's domain extractor, :func:`safcore.measures.extractor_training.domain_extractor`) or
``"auto"`` — Inception when its weights are available, else the domain extractor.

:class:`FIDResult` records which extractor was used, so a table can say so. **A domain-extractor FID
in safcore's Tab. 2 is not comparable with the Inception FIDs in the paper's Tab. 2**: it is a
distance between other features (64-d, trained by safcore on the dataset's labels) and has its own
scale, so only its order across models and splits of one dataset means something.

**Equal sizes.** FID is biased upwards by small samples, and by an amount that depends on the number
of images on each side, so two FIDs are comparable only when they are computed from the same numbers
of images. :func:`fid` therefore by default (``equal_sizes=True``) draws the larger side down to the
size of the smaller one (or both sides down to ``n_per_side``) with :func:`subsample`: a seeded draw
without replacement, never an up-sampling. ``FID_train`` and ``FID_test`` are computed with the same
``n`` on both sides for this reason (see :meth:`safcore.study.hub.Study.fid`); :class:`FIDResult` records
the sizes used, the sizes drawn from and the seed.

Images are unit-range float tensors of shape ``(B, C, S, S)`` (``C`` = 1 or 3, ``S`` = 28, 64 or 128 px).
Memorization (nearest neighbours, Carlini copies, MAE/MSE) lives in :mod:`safcore.measures.memorization`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from safcore.measures.extractor_training import DomainExtractorConfig, domain_extractor
from safcore.measures.features import FeatureExtractor, InceptionFeatureExtractor, inception_available
from safcore.runtime.device import intra_op_threads
from safcore.runtime.progress import progress_bar

if TYPE_CHECKING:
    from safcore.data.datasets import MedMNISTData

__all__ = ["ExtractorChoice", "FIDResult", "FIDSide", "subsample", "resolve_extractor", "fid"]

log = logging.getLogger(__name__)

ExtractorChoice = Literal["auto", "inception", "domain"]


@dataclasses.dataclass(frozen=True)
class FIDResult:
    """A Fréchet distance and how it was measured.

    Attributes:
        value: the FID (lower is closer).
        extractor_name: ``"inception-v3"`` or ``"domain-resnet8[<dataset>]"`` (or a custom name).
        n_real, n_fake: images on each side that the FID was computed from (after any draw).
        note: why ``"auto"`` chose the extractor it did (empty otherwise).
        n_real_given, n_fake_given: images handed in on each side, before the draw (``None``: not
            recorded, i.e. the same as ``n_real`` / ``n_fake``).
        seed: the seed of the draw (:func:`subsample`) when a side was drawn down, ``None`` when
            every image given was used.
    """

    value: float
    extractor_name: str
    n_real: int
    n_fake: int
    note: str = ""
    n_real_given: int | None = None
    n_fake_given: int | None = None
    seed: int | None = None

    def __str__(self) -> str:
        def side(n: int, given: int | None, what: str) -> str:
            return f"{n} {what}" if given is None or given == n else f"{n} of {given} {what}"

        drawn = "" if self.seed is None else f", drawn with seed {self.seed}"
        return (
            f"FID {self.value:.2f} ({self.extractor_name}; {side(self.n_real, self.n_real_given, 'real')} vs "
            f"{side(self.n_fake, self.n_fake_given, 'generated')}{drawn})"
        )


FIDSide = Literal["real", "fake"]
_SIDE_STREAM = {"real": 0, "fake": 1}


def subsample(images: torch.Tensor, n: int, *, seed: int = 0, side: FIDSide = "real") -> torch.Tensor:
    """``n`` of ``images`` drawn without replacement, reproducibly; never more than are given.

    The draw is the first ``n`` entries of a permutation from ``numpy.random.default_rng((seed, s))``
    with ``s`` = 0 for ``side="real"`` and 1 for ``"fake"`` (two independent streams, so the
    generated subset does not depend on the size of the real set it is compared with), kept in the
    images' original order. With ``n == len(images)`` the images are returned unchanged.

    Args:
        images: (N, ...) any tensor indexed along its first axis.
        n: how many to keep, ``2 <= n <= N``.
        seed: seeds the draw (same seed, size and side → same subset).
        side: which stream to draw from.

    Raises:
        ValueError: ``n`` outside ``[2, N]`` (a set is never up-sampled), or an unknown ``side``.
    """
    if side not in _SIDE_STREAM:
        raise ValueError(f"side={side!r}; allowed: 'real', 'fake'")
    total = len(images)
    if not isinstance(n, int) or isinstance(n, bool) or not 2 <= n <= total:
        raise ValueError(
            f"n={n!r} must be an integer in [2, {total}]: FID needs 2 images per side and a set of {total} "
            f"is never up-sampled"
        )
    if n == total:
        return images
    order = np.random.default_rng((int(seed), _SIDE_STREAM[side])).permutation(total)[:n]
    keep = torch.from_numpy(np.sort(order))
    return images[keep.to(images.device)]


def resolve_extractor(
    extractor: FeatureExtractor | ExtractorChoice,
    *,
    dataset: str | os.PathLike | MedMNISTData | None = None,
    cache_dir: str | os.PathLike | None = None,
    domain_config: DomainExtractorConfig = DomainExtractorConfig(),
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[FeatureExtractor, str]:
    """Turn an extractor choice into a network; returns ``(extractor, note)``.

    ``"domain"`` (and ``"auto"`` without Inception weights) needs ``dataset`` and ``cache_dir``.

    Raises:
        InceptionUnavailableError: ``"inception"`` without torch-fidelity or local weights.
        ValueError: an unknown choice, or ``"domain"`` without ``dataset``/``cache_dir``.
    """
    if isinstance(extractor, FeatureExtractor):
        return extractor, ""
    if extractor not in ("auto", "inception", "domain"):
        raise ValueError(f"extractor={extractor!r}; allowed: a FeatureExtractor or 'auto', 'inception', 'domain'")
    note = ""
    if extractor == "inception" or (extractor == "auto" and inception_available()):
        return InceptionFeatureExtractor().to(device), ""
    if extractor == "auto":
        note = "Inception weights not available locally; used the domain feature extractor"
        log.info(note)
    if dataset is None or cache_dir is None:
        raise ValueError(
            f"extractor={extractor!r} needs the domain extractor, which needs dataset= (a flag, npz path or "
            f"MedMNISTData) and cache_dir= (a folder); got dataset={dataset!r}, cache_dir={cache_dir!r}"
        )
    return (
        domain_extractor(dataset, cache_dir, config=domain_config, device=device, progress=progress),
        note,
    )


def fid(
    real_unit: torch.Tensor,
    fake_unit: torch.Tensor,
    extractor: FeatureExtractor | ExtractorChoice = "auto",
    *,
    dataset: str | os.PathLike | MedMNISTData | None = None,
    cache_dir: str | os.PathLike | None = None,
    domain_config: DomainExtractorConfig = DomainExtractorConfig(),
    equal_sizes: bool = True,
    n_per_side: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    num_threads: int = 1,
    progress: bool = False,
) -> FIDResult:
    """Fréchet distance between the feature distributions of two image sets (torchmetrics FID).

    By default both sides have the same number of images (FID's small-sample bias depends on both
    sizes, see the module docstring): the larger side is drawn down to the size of the smaller with
    :func:`subsample` (seeded, without replacement; the smaller side is used whole, never
    up-sampled). :class:`FIDResult` records the sizes used and given and the seed of the draw.

    Args:
        real_unit: (N_r, C, S, S) in [0, 1], the reference (e.g. the train or test split); S = 28, 64
            or 128 px with the domain extractor (Inception resizes any size to 299 px).
        fake_unit: (N_f, C, S, S) in [0, 1], the generated samples, the same size.
        extractor: a :class:`~safcore.measures.features.FeatureExtractor`, or ``"inception"``, ``"domain"``,
            ``"auto"`` (see the module docstring).
        equal_sizes: draw the larger side down to ``min(N_r, N_f)`` images (``False``: use every
            image on both sides, as given).
        n_per_side: draw both sides down to this many images instead (``2 <= n_per_side <=
            min(N_r, N_f)``); this is how FIDs against different references are made comparable
            (:meth:`safcore.study.hub.Study.fid`). Overrides ``equal_sizes``.
        seed: seeds the draw (see :func:`subsample`).
        dataset, cache_dir: what the domain extractor is trained on and where it is cached.
        domain_config: its training settings.
        batch_size: images per forward pass.
        device: where features are computed.
        num_threads: torch intra-op threads while computing (restored afterwards; 0 = leave as is);
            one by default for the reason given in
            :class:`~safcore.measures.extractor_training.DomainExtractorConfig`.
        progress: progress bar over the batches (and the extractor's training).

    Raises:
        ValueError: shapes that are not (N, C, H, W) with C in {1, 3}, fewer than 2 images on a side,
            ``n_per_side`` outside ``[2, min(N_r, N_f)]``.
        InceptionUnavailableError: ``extractor="inception"`` without local weights.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    for label, images in (("real_unit", real_unit), ("fake_unit", fake_unit)):
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"{label} must have shape (N, 1|3, H, W); got {tuple(images.shape)}")
        if len(images) < 2:
            raise ValueError(f"{label} has {len(images)} image(s); FID needs at least 2 on each side")
    if tuple(real_unit.shape[-2:]) != tuple(fake_unit.shape[-2:]):
        raise ValueError(f"real_unit are {tuple(real_unit.shape[-2:])} px, fake_unit {tuple(fake_unit.shape[-2:])} px; "
                         "FID compares images of one size")
    n_real_given, n_fake_given = len(real_unit), len(fake_unit)
    if n_per_side is not None:
        smaller = min(n_real_given, n_fake_given)
        if not isinstance(n_per_side, int) or isinstance(n_per_side, bool) or not 2 <= n_per_side <= smaller:
            raise ValueError(
                f"n_per_side={n_per_side!r} must be an integer in [2, {smaller}] "
                f"({n_real_given} real and {n_fake_given} generated images given; none is up-sampled)"
            )
        target: int | None = n_per_side
    else:
        target = min(n_real_given, n_fake_given) if equal_sizes else None
    drawn = target is not None and (n_real_given != target or n_fake_given != target)
    if target is not None:
        real_unit = subsample(real_unit, target, seed=seed, side="real")
        fake_unit = subsample(fake_unit, target, seed=seed, side="fake")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be >= 1")
    if num_threads < 0:
        raise ValueError(f"num_threads={num_threads!r} must be >= 0 (0 = leave torch's setting)")
    network, note = resolve_extractor(
        extractor, dataset=dataset, cache_dir=cache_dir, domain_config=domain_config, device=device, progress=progress
    )
    metric = FrechetInceptionDistance(feature=network, normalize=True, reset_real_features=True).to(device)
    batches = [(real_unit, True), (fake_unit, False)]
    total = sum(math.ceil(len(x) / batch_size) for x, _ in batches)
    with (
        intra_op_threads(num_threads),
        torch.inference_mode(),
        progress_bar(total=total, desc=f"FID [{network.name}]", enabled=progress) as bar,
    ):
        for images, is_real in batches:
            for i in range(0, len(images), batch_size):
                metric.update(images[i : i + batch_size].float().to(device), real=is_real)
                bar.update(1)
        value = float(metric.compute())
    return FIDResult(
        value=max(value, 0.0) if value > -1e-6 else value,
        extractor_name=network.name,
        n_real=len(real_unit),
        n_fake=len(fake_unit),
        note=note,
        n_real_given=n_real_given,
        n_fake_given=n_fake_given,
        seed=int(seed) if drawn else None,
    )
