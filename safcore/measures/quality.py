"""The sample-quality gate: does the model under audit generate images like its data at all?

An audit counts copies of ``x_p`` among a model's samples. If the model generates noise, black frames or
colours no real image has, every count is about a broken model, not about ``x_p``'s privacy in a model
anyone would publish — and the reader must be told that first. Before counting, the samples are
compared with real held-out images of the dataset (the control of :mod:`safcore.measures.control`, which the
model never saw) on what a reader would check by eye and what an FID sees:

- **Per sample, calibrated on the control.** Each image is described by the penultimate features of the
  dataset's domain extractor (:func:`safcore.measures.extractor_training.domain_extractor`, trained on its labels) and its
  pixel statistics (per channel: mean and spread). The held-out images are
  split in two halves: on half ``A`` the features are standardised and a Ledoit–Wolf covariance is fitted
  (``sklearn.covariance.LedoitWolf``); on half ``B`` the split-conformal threshold of the squared
  Mahalanobis distance is set, the ``⌈(1 − α)(m_B + 1)⌉``-th smallest (Vovk et al. 2005; Lei et al. 2018),
  so that a new real image lies beyond it with probability ≤ ``α`` = 1 %. A sample beyond it is *unlike
  the data*. The same rule on ``D_p``'s own images (real, seen by the model) is reported as its control.
- **Population.** FID with the domain extractor between the samples and half ``B`` beside the FID of half
  ``A`` (other real images) against ``B``, at equal ``n``; per-channel mean and spread and the fraction
  of saturated pixels of the samples beside those of the held-out images.

The gate fails when more than :data:`MAX_UNLIKE_FRACTION` of the samples are unlike the data, or when
their pixels are saturated far more often than real images' (:data:`MAX_EXTRA_SATURATED`; saturation is
judged on the whole set, not per image: a sampler that clips a few pixels of a good image is common).
Measured on BreastMNIST (cpu profile, 256 samples, seed 0, `tests/test_quality.py` keeps them): the
trained models' samples are unlike the data in 1, 15 and 0 of 256 (``N_D`` = 16, 64, 546), their training
images in 0, 1 and 0, held-out images in ≤ 1 % by construction; uniform noise, all-black and all-white
images in 256 of 256, intensity-inverted samples in 94–200 of 256. FID alone does not separate them
(all-black images: FID 19–23 against 1.3–6.6 for the trained models and 0.4–1.6 for other held-out
images), so it is reported, not gated on.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

__all__ = ["MAX_UNLIKE_FRACTION", "MAX_EXTRA_SATURATED", "QUALITY_ALPHA", "MIN_CONTROL", "SampleQuality", "pixel_statistics", "sample_quality"]

MAX_UNLIKE_FRACTION = 0.25
"""The largest fraction of samples that may lie outside the range of real held-out images before the
audit says the model does not generate images like its data."""

QUALITY_ALPHA = 0.01
"""The largest rate at which a real held-out image is called unlike the data."""

MIN_CONTROL = 20
"""Fewest held-out images the gate needs (10 to fit the feature distribution, 10 to calibrate it)."""

MAX_EXTRA_SATURATED = 0.25
"""The gate also fails when the fraction of saturated pixels in the samples exceeds the held-out images' by
more than this (RetinaMNIST's broken cpu model: 70 % against 12 %; trained BreastMNIST models: 6 % against 1 %)."""

SATURATED_LOW, SATURATED_HIGH = 0.5 / 255.0, 254.5 / 255.0  # pixels written as 0 or 255 in 8 bits


def pixel_statistics(images: torch.Tensor) -> torch.Tensor:
    """Per image and channel: mean, standard deviation and fraction of saturated pixels (0 or 255 in 8 bits).

    ``images`` ``(N, C, H, W)`` in [0, 1] → ``(N, 3 C)`` float64: ``[means | stds | saturated]``.
    """
    x = images.detach().to("cpu", torch.float64)
    saturated = ((x <= SATURATED_LOW) | (x >= SATURATED_HIGH)).double()
    return torch.cat([x.mean((2, 3)), x.std((2, 3)), saturated.mean((2, 3))], dim=1)


@dataclasses.dataclass(frozen=True)
class SampleQuality:
    """How the audited samples compare with real held-out images of the dataset.

    Attributes:
        n: samples judged.
        unlike_indices: samples beyond the calibrated threshold (unlike every real image), ascending.
        threshold: the squared Mahalanobis distance beyond which an image is unlike the data.
        n_fit, n_calibration: held-out images that fitted the feature distribution and set the threshold.
        alpha: the calibrated rate at which a real image is called unlike the data (the threshold's rank
            ``⌈(1 − α)(m + 1)⌉`` caps it at ``1 / (m + 1)`` when the calibration half is small).
        training_unlike: ``(k, N_D)``, the same rule on the model's training images (its control), or None.
        fid, fid_control: FID (domain extractor) of the samples and of other held-out images against the
            same held-out half, at ``fid_n`` images per side.
        extractor_name: the feature extractor.
        channel_mean, channel_std, saturated: the samples' per-channel mean of the image means, mean of the
            image spreads, and the fraction of saturated pixels over all channels.
        reference_mean, reference_std, reference_saturated: the same on the held-out images.
        max_unlike: the fraction of unlike samples above which the gate fails.
    """

    n: int
    unlike_indices: tuple[int, ...]
    threshold: float
    n_fit: int
    n_calibration: int
    alpha: float
    training_unlike: tuple[int, int] | None
    fid: float
    fid_control: float
    fid_n: int
    extractor_name: str
    channel_mean: tuple[float, ...]
    channel_std: tuple[float, ...]
    saturated: float
    reference_mean: tuple[float, ...]
    reference_std: tuple[float, ...]
    reference_saturated: float
    max_unlike: float = MAX_UNLIKE_FRACTION
    max_extra_saturated: float = MAX_EXTRA_SATURATED

    @property
    def n_unlike(self) -> int:
        return len(self.unlike_indices)

    @property
    def unlike_fraction(self) -> float:
        return self.n_unlike / self.n

    @property
    def too_saturated(self) -> bool:
        return self.saturated > self.reference_saturated + self.max_extra_saturated

    @property
    def passed(self) -> bool:
        """Whether the samples are like the data: at most :attr:`max_unlike` of them are unlike every real image
        and their pixels are not saturated far more often than real images' (:data:`MAX_EXTRA_SATURATED`)."""
        return self.unlike_fraction <= self.max_unlike and not self.too_saturated

    @staticmethod
    def _channels(values: tuple[float, ...]) -> str:
        return "/".join(f"{v:.2f}" for v in values)

    def findings(self) -> list[str]:
        """What sets the samples apart from real images, in words (the unlike count first)."""
        found = [f"{self.n_unlike} of {self.n} samples ({self.unlike_fraction:.0%}) lie outside the range of real "
                 f"held-out images (held-out: ≤ {self.alpha:.0%} by calibration"
                 + (f"; the training images: {self.training_unlike[0]} of {self.training_unlike[1]}" if self.training_unlike else "")
                 + ")"]
        found.append(f"{self.saturated:.0%} of their pixels are saturated (black or white; held-out {self.reference_saturated:.0%})")
        found.append(f"channel mean {self._channels(self.channel_mean)} and spread {self._channels(self.channel_std)} "
                     f"(held-out {self._channels(self.reference_mean)} and {self._channels(self.reference_std)})")
        found.append(f"FID {self.fid:.3g} against held-out images (other held-out images: {self.fid_control:.3g}; "
                     f"{self.extractor_name}, {self.fid_n} per side)")
        return found

    def describe(self) -> str:
        head = "The samples are like real images of the dataset" if self.passed else \
            "The model under audit does not generate images like its training data"
        return head + ": " + "; ".join(self.findings()) + "."

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "n_unlike": self.n_unlike, "passed": self.passed}


def _features(images: torch.Tensor, extractor, batch_size: int = 256) -> np.ndarray:
    out = []
    device = next(iter(extractor.parameters()), torch.empty(0)).device
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            batch = images[i : i + batch_size].float()
            feats = extractor(batch.to(device)).detach().to("cpu", torch.float64)
            c = batch.shape[1]
            out.append(torch.cat([feats, pixel_statistics(batch)[:, : 2 * c]], dim=1))  # features, means, spreads
    return torch.cat(out).numpy()


def _chunked_statistics(images: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """:func:`pixel_statistics` a chunk at a time (the paper profile audits 150 000 images: one float64 copy of
    them all would take 2.8 GB)."""
    return torch.cat([pixel_statistics(images[i : i + chunk]) for i in range(0, len(images), chunk)])


def _check(images: torch.Tensor, what: str) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"{what} must be a (N, C, H, W) tensor in [0, 1]; got {tuple(getattr(images, 'shape', ()))}")


def sample_quality(
    samples: torch.Tensor,
    reference: torch.Tensor,
    extractor,
    *,
    training: torch.Tensor | None = None,
    alpha: float = QUALITY_ALPHA,
    max_unlike: float = MAX_UNLIKE_FRACTION,
    seed: int = 0,
) -> SampleQuality:
    """Judge whether ``samples`` look like ``reference`` (real held-out images), see the module docstring.

    Args:
        samples: the audited images ``(n, C, H, W)`` in [0, 1].
        reference: real held-out images of the dataset ``(m, C, H, W)``, de-duplicated against the training
            set (:attr:`safcore.study.hub.Study.control`); ``m ≥`` :data:`MIN_CONTROL`.
        extractor: a :class:`safcore.measures.features.FeatureExtractor` (the dataset's domain extractor).
        training: the model's training images, judged by the same rule as the control.
        alpha: the calibrated rate of real images called unlike the data.
        max_unlike: the gate fails above this fraction of unlike samples.
        seed: splits the held-out images into the fitting and calibration halves.

    Raises:
        ValueError: shapes that differ, fewer than :data:`MIN_CONTROL` reference images, ``alpha`` or
            ``max_unlike`` outside (0, 1).
    """
    from sklearn.covariance import LedoitWolf

    from safcore.measures.fid import fid

    _check(samples, "samples")
    _check(reference, "reference")
    if tuple(samples.shape[1:]) != tuple(reference.shape[1:]):
        raise ValueError(f"samples are {tuple(samples.shape[1:])} (C, H, W), the reference images "
                         f"{tuple(reference.shape[1:])}: the quality gate compares images of one shape")
    if len(samples) < 2:
        raise ValueError(f"the quality gate needs at least 2 samples; got {len(samples)}")
    if len(reference) < MIN_CONTROL:
        raise ValueError(f"the quality gate needs at least {MIN_CONTROL} held-out images; got {len(reference)}")
    for name, value in (("alpha", alpha), ("max_unlike", max_unlike)):
        if not (isinstance(value, (int, float)) and 0.0 < value < 1.0):
            raise ValueError(f"{name} = {value!r}; allowed: a number in (0, 1)")
    order = np.random.default_rng((int(seed), 7)).permutation(len(reference))
    half = len(reference) // 2
    fit_set, calibration = reference[torch.from_numpy(order[:half])], reference[torch.from_numpy(order[half:])]
    f_fit = _features(fit_set, extractor)
    # standardise; a feature (nearly) constant on real images (e.g. no saturated pixel in any of them) gets a
    # floor of a tenth of the median spread, so that one odd calibration image cannot set an infinite threshold
    spread = f_fit.std(0)
    centre, scale = f_fit.mean(0), np.maximum(spread, 0.1 * np.median(spread) + 1e-12)
    covariance = LedoitWolf().fit((f_fit - centre) / scale)

    def distance(images: torch.Tensor) -> np.ndarray:
        return covariance.mahalanobis((_features(images, extractor) - centre) / scale)

    scores = np.sort(distance(calibration))
    m = len(scores)
    rank = min(math.ceil((1 - alpha) * (m + 1)), m)  # 1-based; the largest when m is small
    threshold = float(scores[rank - 1])
    unlike = np.flatnonzero(distance(samples) > threshold)
    training_unlike = None
    if training is not None:
        _check(training, "training")
        training_unlike = (int((distance(training) > threshold).sum()), len(training))
    n_fid = min(len(samples), len(fit_set), len(calibration))
    device = next(iter(extractor.parameters()), torch.empty(0)).device  # FID where the extractor is (a GPU stays one)
    fid_samples = fid(calibration, samples, extractor, n_per_side=n_fid, seed=seed, device=device).value
    fid_control = fid(calibration, fit_set, extractor, n_per_side=n_fid, seed=seed, device=device).value
    s, r = _chunked_statistics(samples), _chunked_statistics(reference)
    c = samples.shape[1]

    def tup(t: torch.Tensor) -> tuple[float, ...]:
        return tuple(float(v) for v in t)

    return SampleQuality(
        n=len(samples),
        unlike_indices=tuple(int(i) for i in unlike),
        threshold=threshold,
        n_fit=len(fit_set),
        n_calibration=m,
        alpha=float(alpha),
        training_unlike=training_unlike,
        fid=float(fid_samples),
        fid_control=float(fid_control),
        fid_n=int(n_fid),
        extractor_name=str(getattr(extractor, "name", type(extractor).__name__)),
        channel_mean=tup(s[:, :c].mean(0)),
        channel_std=tup(s[:, c : 2 * c].mean(0)),
        saturated=float(s[:, 2 * c :].mean()),
        reference_mean=tup(r[:, :c].mean(0)),
        reference_std=tup(r[:, c : 2 * c].mean(0)),
        reference_saturated=float(r[:, 2 * c :].mean()),
        max_unlike=float(max_unlike),
    )
