"""The audit's independent copy count: which samples copy a training image, beside the adversary's verdicts.

Given the training set ``D_p``, the audit counts copies of ``x_p`` independently of the adversary
(:func:`copy_check`, a :class:`CopyCheck`): each sample's nearest training image in pixel space and the
Carlini et al. 2023 ratio (:func:`safcore.measures.memorization.carlini_nearest`), its threshold calibrated
on real held-out images so that at most 1 % of them pass (:mod:`safcore.measures.control`). It reports the
same counts on those held-out images beside the samples', the adversary's recall on the copies, its firing
rate on everything else, and how evenly the model copies its training images (:func:`evenness_test`).

Images are unit-range float tensors ``(n, C, H, W)``; verdicts of the classifiers are bool ``(n,)``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from scipy import stats

from safcore.measures.control import CARLINI_THRESHOLD, CONTROL_ALPHA, CopyThreshold, copy_threshold_for
from safcore.measures.memorization import carlini_nearest

__all__ = ["CopyCheck", "evenness_test", "copy_check"]


@dataclasses.dataclass(frozen=True)
class CopyCheck:
    """Copies of training images found by nearest neighbour, beside the adversary's verdicts.

    A sample *copies* training image ``j`` when ``j`` is its nearest training image (ℓ2 in pixel
    space) and the Carlini et al. 2023 ratio ``ℓ2(nearest) / mean ℓ2(next k)`` is below ``threshold``.
    A copy of ``x_p`` is found whether or not it carries the SAF, so it checks both classifiers.

    Attributes:
        x_p_index: position of ``x_p`` in ``D_p``.
        threshold, k: the copy rule: Carlini ratio below ``threshold`` (calibrated, see ``calibration``), ``k`` neighbours.
        nearest: each sample's nearest training image, ``(n,)`` indices into ``D_p``.
        ratio: each sample's Carlini ratio, ``(n,)``.
        copy_indices: samples that copy some training image, ascending.
        xp_copy_indices: samples that copy ``x_p``, ascending.
        per_image: copies of each training image, ``(N_D,)`` (how evenly the model copies).
        cp_hits, cid_hits, q_hits: how many of the ``x_p`` copies ``c_p``, ``c_id`` and both caught.
        q_not_copies: q-positives that are not copies of ``x_p``, ascending.
        cp_others, cid_others: how many samples that are NOT copies of ``x_p`` each classifier fires on.
        evenness_p: the test that the copies fall uniformly on the ``N_D`` training images
            (:func:`evenness_test`; NaN with fewer than 2 copies or ``N_D = 1``); small: the model copies
            some images far more often than others, and ``|q| < E|q|`` may say that, not privacy.
        xp_copies_with_saf: the copies of ``x_p`` whose SAF disc is visibly there (mean ``|x − grey|``
            inside the disc below a tolerance), ascending; ``None`` when the disc was not given. The
            others reproduce ``x_p``'s anatomy without its fingerprint: breaches ``|q|`` cannot count,
            and ``c_p`` is right not to fire on them.
        calibration: the copy rule (:class:`safcore.measures.control.CopyThreshold`): ``threshold`` calibrated on
            held-out images so that at most ``alpha`` of them pass, or Carlini's 0.5 without a control.
        control: the held-out images' counts under the same rule (None without a control):
            ``{"n": m, "copies": …, "xp_copies": …, "carlini_0.5": …}`` — what chance similarity gives.
        carlini_copies: samples passing Carlini et al.'s published 0.5 (for comparison with the
            calibrated rule; their control rate is ``control["carlini_0.5"]``).
        evenness_method: ``"chi2"`` (every expected count ≥ 5) or ``"monte-carlo"`` (an exact-in-law
            multinomial test by simulation where expected counts are small).
    """

    x_p_index: int
    threshold: float
    k: int
    nearest: tuple[int, ...]
    ratio: tuple[float, ...]
    copy_indices: tuple[int, ...]
    xp_copy_indices: tuple[int, ...]
    per_image: tuple[int, ...]
    cp_hits: int
    cid_hits: int
    q_hits: int
    q_not_copies: tuple[int, ...]
    cp_others: int
    cid_others: int
    evenness_p: float
    xp_copies_with_saf: tuple[int, ...] | None = None
    q_hits_with_saf: int | None = None
    calibration: CopyThreshold | None = None
    control: dict | None = None
    carlini_copies: int | None = None
    evenness_method: str = "chi2"

    @property
    def n(self) -> int:
        return len(self.nearest)

    @property
    def n_copies(self) -> int:
        """Samples that copy some training image."""
        return len(self.copy_indices)

    @property
    def n_xp_copies(self) -> int:
        """Samples that copy ``x_p`` (nearest neighbour + Carlini criterion)."""
        return len(self.xp_copy_indices)

    @property
    def n_nearest_xp(self) -> int:
        """Samples whose nearest training image is ``x_p`` (copies or not)."""
        return sum(1 for j in self.nearest if j == self.x_p_index)

    @property
    def copy_rate(self) -> float:
        """Fraction of samples that copy some training image."""
        return self.n_copies / self.n

    def _recall(self, hits: int) -> float:
        return hits / self.n_xp_copies if self.n_xp_copies else math.nan

    @property
    def cp_recall(self) -> float:
        """Fraction of ``x_p`` copies on which ``c_p`` fires (NaN without copies)."""
        return self._recall(self.cp_hits)

    @property
    def cid_recall(self) -> float:
        """Fraction of ``x_p`` copies on which ``c_id`` fires."""
        return self._recall(self.cid_hits)

    @property
    def q_recall(self) -> float:
        """Fraction of ``x_p`` copies that are q-positives (both classifiers fire)."""
        return self._recall(self.q_hits)

    @property
    def n_xp_copies_without_saf(self) -> int:
        """Copies of ``x_p`` without a visible SAF (0 when the disc was not given)."""
        return 0 if self.xp_copies_with_saf is None else self.n_xp_copies - len(self.xp_copies_with_saf)

    @property
    def q_recall_with_saf(self) -> float:
        """Fraction of the copies of ``x_p`` WITH a visible SAF that are q-positives (what the adversary
        is built to catch); :attr:`q_recall` when the disc was not given; NaN without such copies."""
        if self.xp_copies_with_saf is None:
            return self.q_recall
        n = len(self.xp_copies_with_saf)
        return self.q_hits_with_saf / n if n else math.nan

    @property
    def control_copy_rate(self) -> float | None:
        """Fraction of the held-out images that copy a training image under the audit's rule (None without control)."""
        return None if not self.control or not self.control["n"] else self.control["copies"] / self.control["n"]

    def copies_text(self) -> str:
        """``"k of n samples (held-out real images: j of m)"`` for the copy count."""
        text = f"{self.n_copies} of {self.n} samples"
        if self.control and self.control["n"]:
            text += f" (held-out real images: {self.control['copies']} of {self.control['n']})"
        return text

    @property
    def n_others(self) -> int:
        return self.n - self.n_xp_copies

    @property
    def cp_rate_others(self) -> float:
        """Fraction of the samples that are not ``x_p`` copies on which ``c_p`` fires (NaN if none)."""
        return self.cp_others / self.n_others if self.n_others else math.nan

    @property
    def cid_rate_others(self) -> float:
        """Fraction of the samples that are not ``x_p`` copies on which ``c_id`` fires."""
        return self.cid_others / self.n_others if self.n_others else math.nan


def evenness_test(per_image, *, draws: int = 20_000, seed: int = 0) -> tuple[float, str]:
    """p-value of "the copies fall uniformly on the ``N_D`` training images" and the method used.

    Pearson's χ² statistic ``Σ (c_j − e)² / e`` with ``e = (Σ c) / N_D``; its χ² law
    (``scipy.stats.chisquare``) only where every expected count is ≥ 5 (Cochran's rule), else the
    statistic's exact law under the multinomial null by simulation: ``draws`` multinomial draws from
    ``numpy.random.default_rng(seed)``, ``p = (1 + #{T* ≥ T}) / (draws + 1)`` (Davison & Hinkley 1997,
    Eq. 4.11). NaN with fewer than 2 copies or one image.
    """
    counts = np.asarray(per_image, dtype=np.int64).reshape(-1)
    n, n_images = int(counts.sum()), int(counts.size)
    if n < 2 or n_images < 2:
        return math.nan, "none"
    expected = n / n_images
    if expected >= 5:
        return float(stats.chisquare(counts.astype(np.float64)).pvalue), "chi2"
    observed = float(((counts - expected) ** 2).sum() / expected)
    rng = np.random.default_rng(seed)
    exceed = 0
    for start in range(0, draws, 2000):  # in blocks: draws × N_D counts would not fit at paper scale
        sims = rng.multinomial(n, np.full(n_images, 1.0 / n_images), size=min(2000, draws - start))
        exceed += int((((sims - expected) ** 2).sum(axis=1) / expected >= observed - 1e-9).sum())
    return (1 + exceed) / (draws + 1), "monte-carlo"


def copy_check(
    images: torch.Tensor,
    train_images: torch.Tensor,
    x_p_index: int,
    cp: torch.Tensor,
    cid: torch.Tensor,
    *,
    control: torch.Tensor | None = None,
    alpha: float = CONTROL_ALPHA,
    k: int = 50,
    saf_mask: torch.Tensor | None = None,
    saf_grey: float = 0.5,
    saf_tolerance: float = 0.1,
) -> CopyCheck:
    """Count copies of ``x_p`` by nearest neighbour and compare them with the classifiers' verdicts.

    A sample copies training image ``j`` when ``j`` is its nearest (ℓ2) and its Carlini ratio lies below
    the threshold calibrated on ``control`` (:func:`safcore.measures.control.calibrate_copy_threshold`: held-out
    images pass at most at ``alpha``; Carlini's 0.5 without a control). The control's own counts under
    the same rule are kept beside the samples'.

    Args:
        images: ``(n, C, H, W)`` audited images in ``[0, 1]``.
        train_images: ``D_p`` ``(N_D, C, H, W)``, with ``x_p`` (and its SAF) at ``x_p_index``.
        x_p_index: where ``x_p`` is in ``train_images``.
        cp, cid: the classifiers' verdicts on ``images``, bool ``(n,)``.
        control: real held-out images ``(m, C, H, W)`` the model never saw, de-duplicated against
            ``D_p`` (:func:`safcore.measures.control.held_out`); None: the rule stays uncalibrated.
        alpha: the held-out pass rate the calibrated rule may have.
        k: neighbours in Carlini's mean (their 50; clipped to ``N_D − 1``).
        saf_mask: the SAF's disc ``L_p`` ``(H, W)``; with it each copy of ``x_p`` is checked for a visible
            SAF: mean ``|x − saf_grey|`` over the disc's pixels (all channels) below ``saf_tolerance``.
    """
    if train_images.ndim != 4 or tuple(train_images.shape[1:]) != tuple(images.shape[1:]):
        raise ValueError(
            f"train_images must be (N_D, C, H, W) like the images {tuple(images.shape[1:])}, "
            f"got {tuple(train_images.shape)}"
        )
    if control is not None and (control.ndim != 4 or tuple(control.shape[1:]) != tuple(images.shape[1:])):
        raise ValueError(f"control images must be (m, C, H, W) like the images {tuple(images.shape[1:])}, "
                         f"got {tuple(control.shape)}")
    n_dataset = int(train_images.shape[0])
    if isinstance(x_p_index, bool) or not isinstance(x_p_index, (int, np.integer)) or not 0 <= x_p_index < n_dataset:
        raise ValueError(f"x_p_index = {x_p_index!r} must be an integer in [0, {n_dataset - 1}] (N_D = {n_dataset})")
    images = images.detach().float().cpu()
    train = train_images.detach().float().cpu()
    calibration, control_nearest, control_ratio = copy_threshold_for(train, control, alpha=alpha, k=k)
    if n_dataset >= 2:
        nearest, ratio = carlini_nearest(images, train, k)  # one neighbour search for both
    else:  # one training image: every sample is nearest to it; the criterion has nothing to compare with
        nearest, ratio = torch.zeros(len(images), dtype=torch.long), torch.zeros(len(images))
    is_copy = ratio < calibration.value
    is_xp = is_copy & (nearest == int(x_p_index))
    cp, cid = cp.bool().cpu(), cid.bool().cpu()
    q = cp & cid
    per_image = torch.bincount(nearest[is_copy], minlength=n_dataset)
    evenness_p, evenness_method = evenness_test(per_image.numpy())
    idx = lambda mask: tuple(int(i) for i in torch.nonzero(mask).flatten())  # noqa: E731
    with_saf = q_hits_with_saf = None
    if saf_mask is not None:
        disc = saf_mask.detach().cpu().bool()
        if disc.shape != images.shape[-2:]:
            raise ValueError(f"saf_mask is {tuple(disc.shape)}; expected the image size {tuple(images.shape[-2:])}")
        visible = (images[:, :, disc] - float(saf_grey)).abs().flatten(1).mean(1) < saf_tolerance
        with_saf = idx(is_xp & visible)
        q_hits_with_saf = int((q & is_xp & visible).sum())
    control_counts = None
    if control_ratio is not None:
        passes = control_ratio < calibration.value
        control_counts = {"n": int(len(control_ratio)), "copies": int(passes.sum()),
                          "xp_copies": int((passes & (control_nearest == int(x_p_index))).sum()),
                          "carlini_0.5": int((control_ratio < CARLINI_THRESHOLD).sum())}
    return CopyCheck(
        x_p_index=int(x_p_index),
        threshold=float(calibration.value),
        k=int(min(k, max(n_dataset - 1, 1))),
        nearest=tuple(int(j) for j in nearest),
        ratio=tuple(float(r) for r in ratio),
        copy_indices=idx(is_copy),
        xp_copy_indices=idx(is_xp),
        per_image=tuple(int(c) for c in per_image),
        cp_hits=int((cp & is_xp).sum()),
        cid_hits=int((cid & is_xp).sum()),
        q_hits=int((q & is_xp).sum()),
        q_not_copies=idx(q & ~is_xp),
        cp_others=int((cp & ~is_xp).sum()),
        cid_others=int((cid & ~is_xp).sum()),
        evenness_p=evenness_p,
        xp_copies_with_saf=with_saf,
        q_hits_with_saf=q_hits_with_saf,
        calibration=calibration,
        control=control_counts,
        carlini_copies=int((ratio < CARLINI_THRESHOLD).sum()) if n_dataset >= 2 else None,
        evenness_method=evenness_method,
    )
