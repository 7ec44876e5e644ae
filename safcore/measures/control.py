"""The control: real held-out images the model never saw, and copy thresholds calibrated on them.

A copy count means nothing without the same count on images that no model generated. The control set
is a dataset's val and test splits with every image that lies within :data:`NEAR_DUPLICATE_RMS` of a
training image removed (MedMNIST's splits share near-duplicates: at ``N_D = 546`` 92 of BreastMNIST's
234 val + test images lie within RMS 0.06 of a training image, 18 within 0.01; none lies between 0.06
and 0.07, the bulk at ≥ 0.08 — the gap this default sits in). The same hygiene applies to membership
inference's non-members.

The audit's own copy rule (:func:`calibrate_copy_threshold`) is Carlini et al. 2023's ratio
``ℓ2(nearest) / mean ℓ2(next k)`` with its threshold lowered until held-out images pass it at most at
``alpha`` (1 %): a split-conformal quantile of the held-out images' ratios (Vovk et al. 2005; Lei et al.
2018, the rule behind SDMetrics' DCR baseline, which compares a synthetic record's distance to the
closest real record with the held-out records' distances). A new held-out image then passes with
probability ``rank / (m + 1) ≤ alpha`` (exchangeability), whatever ``N_D``: the rule adapts where a
fixed 0.5 does not (with ``k`` clipped to ``N_D − 1`` held-out BreastMNIST images pass 0.5 in 8 % at
``N_D = 16`` and 39 % at 546). The ratio, not the raw distance, is calibrated so that the criterion
stays Carlini's (density-normalised) and is only made stricter; it is capped at their 0.5.

Images are unit-range float tensors ``(N, C, H, W)``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from safcore.measures.memorization import carlini_nearest, dar_nearest, dar_threshold, gu_memorized, nearest_neighbours

__all__ = [
    "NEAR_DUPLICATE_RMS",
    "CONTROL_ALPHA",
    "CARLINI_THRESHOLD",
    "HeldOut",
    "CopyThreshold",
    "rms_to_nearest",
    "near_duplicates",
    "held_out",
    "calibrate_copy_threshold",
    "copy_threshold_for",
    "copy_criteria",
]

NEAR_DUPLICATE_RMS = 0.06
"""Held-out images closer than this RMS pixel distance (unit range; ≈ 15 of 255 grey levels) to any
training image are near-duplicates and leave every control, calibration and non-member set."""

CONTROL_ALPHA = 0.01
"""The largest pass rate of held-out images the audit's copy rule may have."""

CARLINI_THRESHOLD = 0.5
"""Carlini et al. 2023's published ratio threshold (their k = 50 nearest of 50 000)."""


def rms_to_nearest(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """RMS pixel distance of each image to its nearest ``reference`` image, ``(B,)`` float64.

    ``ℓ2 / sqrt(C·H·W)``: 0.01 is about 2.5 grey levels of 255 on every pixel.
    """
    if len(reference) == 0:
        raise ValueError("the reference set is empty; near-duplicates need at least one reference image")
    if len(images) == 0:
        return torch.zeros(0, dtype=torch.float64)
    _, dist = nearest_neighbours(images, reference, 1)
    return dist[:, 0].double() / math.sqrt(images[0].numel())


def near_duplicates(images: torch.Tensor, reference: torch.Tensor, rms: float = NEAR_DUPLICATE_RMS) -> torch.Tensor:
    """Which ``images`` lie within RMS ``rms`` of some ``reference`` image (bool ``(B,)``)."""
    if not (isinstance(rms, (int, float)) and math.isfinite(rms) and rms >= 0):
        raise ValueError(f"rms = {rms!r}; allowed: a finite distance ≥ 0 (unit-range RMS, e.g. {NEAR_DUPLICATE_RMS})")
    return rms_to_nearest(images, reference) < float(rms)


@dataclasses.dataclass(frozen=True, eq=False)
class HeldOut:
    """Real images the model never saw, de-duplicated against its training images.

    Attributes:
        images: the kept images ``(m, C, H, W)``.
        n_candidates: how many were considered (e.g. val + test).
        n_removed: near-duplicates removed (within ``rms`` of a training image).
        rms: the near-duplicate distance.
        source: where the candidates came from, in words.
    """

    images: torch.Tensor
    n_candidates: int
    n_removed: int
    rms: float
    source: str

    @property
    def n(self) -> int:
        return int(self.images.shape[0])

    def describe(self) -> str:
        return (f"{self.n} held-out real images ({self.source}; {self.n_removed} of {self.n_candidates} removed as "
                f"near-duplicates within RMS {self.rms:g} of a training image)")

    def to_dict(self) -> dict:
        return {"n": self.n, "n_candidates": self.n_candidates, "n_removed": self.n_removed, "rms": self.rms,
                "source": self.source}


def held_out(candidates: torch.Tensor, training: torch.Tensor, *, rms: float = NEAR_DUPLICATE_RMS,
             source: str = "held-out images") -> HeldOut:
    """The control set: ``candidates`` ``(M, C, H, W)`` without their near-duplicates of ``training``.

    ``training`` is every image the model saw or that stands for the fingerprinted patient (``D_p`` and
    ``x_p``'s clean original), ``(N, C, H, W)``.
    """
    if candidates.ndim != 4 or training.ndim != 4 or candidates.shape[1:] != training.shape[1:]:
        raise ValueError(f"candidates {tuple(candidates.shape)} and training images {tuple(training.shape)} must be "
                         "(N, C, H, W) batches of the same image shape")
    dup = near_duplicates(candidates, training, rms)
    return HeldOut(candidates[~dup], int(candidates.shape[0]), int(dup.sum()), float(rms), source)


@dataclasses.dataclass(frozen=True)
class CopyThreshold:
    """The audit's copy rule: a sample copies its nearest training image when its Carlini ratio is below
    :attr:`value`.

    Attributes:
        value: the ratio threshold, ``min(carlini, calibrated)``.
        carlini: Carlini et al.'s published threshold (0.5), the cap.
        alpha: the pass rate the calibration allows held-out images.
        n_control: held-out images it was calibrated on (0: not calibrated, ``value = carlini``).
        rank: the order statistic used (the ``rank``-th smallest held-out ratio), 0 if not calibrated.
        k: neighbours in Carlini's mean (clipped to ``N_D − 1``).
    """

    value: float
    carlini: float = CARLINI_THRESHOLD
    alpha: float = CONTROL_ALPHA
    n_control: int = 0
    rank: int = 0
    k: int = 50

    @property
    def calibrated(self) -> bool:
        return self.n_control > 0

    @property
    def guarantee(self) -> float:
        """The probability that a new held-out image passes: ``rank / (n_control + 1)`` (NaN uncalibrated)."""
        return self.rank / (self.n_control + 1) if self.calibrated else math.nan

    def describe(self) -> str:
        if not self.calibrated:
            return (f"Carlini ratio < {self.value:g} (k = {self.k}; NOT calibrated: no held-out images, so the rate at "
                    "which unseen images pass is unknown)")
        if self.value >= self.carlini:
            return (f"Carlini ratio < {self.value:g}, k = {self.k} (Carlini's own threshold: it is already stricter than "
                    f"the calibration on {self.n_control} held-out images asks, which lets an unseen image pass with "
                    f"probability ≤ {self.guarantee:.2%}, target {self.alpha:.0%})")
        return (f"Carlini ratio < {self.value:.3g}, k = {self.k}: the smallest ratio but {self.rank - 1} of "
                f"{self.n_control} held-out images, so an unseen image passes with probability ≤ "
                f"{self.guarantee:.2%} (target {self.alpha:.0%})" if self.rank > 1 else
                f"Carlini ratio < {self.value:.3g}, k = {self.k}: the smallest ratio of {self.n_control} held-out "
                f"images, so an unseen image passes with probability ≤ {self.guarantee:.2%} (target {self.alpha:.0%})")


def calibrate_copy_threshold(control_ratios, *, alpha: float = CONTROL_ALPHA, carlini: float = CARLINI_THRESHOLD,
                             k: int = 50) -> CopyThreshold:
    """The split-conformal copy threshold from held-out images' Carlini ratios (``(m,)``).

    With ``r = ⌊alpha (m + 1)⌋`` and ``τ = r``-th smallest ratio, a new image exchangeable with the
    held-out ones has ``P(ratio < τ) ≤ r / (m + 1) ≤ alpha``. Fewer than ``1/alpha − 1`` held-out images
    cannot resolve ``alpha``: then ``r = 1`` (the smallest ratio) and :attr:`CopyThreshold.guarantee`
    says what it achieves (``1/(m + 1)``). The result is capped at ``carlini``.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha = {alpha!r}; allowed: a rate in (0, 1), e.g. 0.01")
    values = np.sort(np.asarray(control_ratios, dtype=np.float64).reshape(-1))
    if values.size == 0:
        return CopyThreshold(value=float(carlini), carlini=float(carlini), alpha=float(alpha), n_control=0, rank=0, k=k)
    if np.isnan(values).any():
        raise ValueError("the held-out images' ratios contain NaN")
    rank = max(1, int(math.floor(alpha * (values.size + 1) + 1e-9)))
    return CopyThreshold(value=float(min(carlini, values[rank - 1])), carlini=float(carlini), alpha=float(alpha),
                         n_control=int(values.size), rank=rank, k=k)


def copy_threshold_for(training: torch.Tensor, control: torch.Tensor | None, *, alpha: float = CONTROL_ALPHA,
                       k: int = 50) -> tuple[CopyThreshold, torch.Tensor | None, torch.Tensor | None]:
    """Calibrate the copy rule for ``training`` ``(N, C, H, W)`` on ``control`` (or not, when None or empty).

    Returns:
        the :class:`CopyThreshold`, and the control images' nearest training image ``(m,)`` and ratio
        ``(m,)`` (None without a control).
    """
    k_used = int(min(k, max(len(training) - 1, 1)))
    if control is None or len(control) == 0 or len(training) < 2:
        return CopyThreshold(value=CARLINI_THRESHOLD, alpha=alpha, k=k_used), None, None
    nearest, ratio = carlini_nearest(control.detach().float().cpu(), training.detach().float().cpu(), k)
    return calibrate_copy_threshold(ratio.numpy(), alpha=alpha, k=k_used), nearest, ratio


def copy_criteria(samples: torch.Tensor, training: torch.Tensor, control: HeldOut, *, alpha: float = CONTROL_ALPHA,
                  dar_percentile: float = 95.0, gu_threshold: float = 1.0 / 3.0) -> dict:
    """Every copy criterion on the samples AND on the held-out control, side by side.

    * ``"audit"``: the audit's rule, Carlini's ratio below the threshold calibrated on ``control``
      (:func:`copy_threshold_for`);
    * ``"carlini_0.5"``: Carlini et al. 2023's published rule, ratio < 0.5 (``k`` clipped to ``N − 1``);
    * ``"dar_pixel"``: an ADAPTATION of Dar et al. 2024 — Pearson correlation of pixels (they correlate
      the embeddings of a trained encoder) with the nearest training image above the ``dar_percentile``
      of each training image's best correlation with the control (their validation split);
    * ``"gu"``: Gu et al. 2023, ℓ2 to the nearest over ℓ2 to the second-nearest training image < 1/3.

    Args:
        samples: ``(n, C, H, W)``; training: ``D_p`` ``(N, C, H, W)``, ``N ≥ 2``; control: :func:`held_out`.

    Returns:
        ``{name: {"samples": k, "n": n, "control": j, "n_control": m, "rule": text}}`` plus
        ``"control_set"`` (:meth:`HeldOut.to_dict`).
    """
    if len(training) < 2:
        raise ValueError(f"copy criteria need at least 2 training images; got {len(training)}")
    samples, training = samples.detach().float().cpu(), training.detach().float().cpu()
    held = control.images.detach().float().cpu()
    threshold, _, control_ratio = copy_threshold_for(training, held, alpha=alpha)
    _, sample_ratio = carlini_nearest(samples, training, 50)
    out: dict = {"control_set": control.to_dict()}

    def row(rule: str, on_samples: torch.Tensor, on_control: torch.Tensor | None) -> dict:
        return {"samples": int(on_samples.sum()), "n": int(len(samples)),
                "control": None if on_control is None else int(on_control.sum()), "n_control": int(len(held)), "rule": rule}

    out["audit"] = row(threshold.describe(), sample_ratio < threshold.value,
                       None if control_ratio is None else control_ratio < threshold.value)
    out["carlini_0.5"] = row(f"Carlini ratio < {CARLINI_THRESHOLD:g} (k = {threshold.k})", sample_ratio < CARLINI_THRESHOLD,
                             None if control_ratio is None else control_ratio < CARLINI_THRESHOLD)
    if len(held):
        dar = dar_threshold(training, held, dar_percentile)
        out["dar_pixel"] = row(f"pixel correlation with the nearest training image > {dar:.4f} (the {dar_percentile:g}th "
                               "percentile of training-to-held-out correlations; an adaptation of Dar et al.'s embeddings)",
                               dar_nearest(samples, training)[1] > dar, dar_nearest(held, training)[1] > dar)
    out["gu"] = row(f"ℓ2 nearest / second-nearest < {gu_threshold:.3g}", gu_memorized(samples, training, gu_threshold),
                    gu_memorized(held, training, gu_threshold) if len(held) else None)
    return out
