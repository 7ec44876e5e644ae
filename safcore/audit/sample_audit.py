"""The sampling audit: how often does a model hand back ``x_p``? (paper §5.3, Tab. 1 and 2, App. B, D).

Given ``n`` generated images, count ``|c_p+|`` (carry the SAF), ``|c_id+|`` (identified as ``x_p``) and
``|q| = |c_p+ ∩ c_id+|``; compare ``|q|`` with its expectation ``E|q| = n / N_D`` under the null
hypothesis that ``x_p`` is generated as often as any training image, with a one-sided binomial test
(H0: p = 1/N_D, H1: p < 1/N_D); and measure how close the q-positives are to ``x_p`` (MAE, MSE). The
result keeps every index so galleries can show the q-positives and each classifier's false positives
(Fig. 8).

``|q|`` counts only the copies that both classifiers catch. Given the training set ``D_p``, the audit
also counts copies of ``x_p`` independently of the adversary (:class:`CopyCheck`: each sample's nearest
training image in pixel space and the Carlini et al. 2023 ratio, its threshold calibrated on real
held-out images so that at most 1 % of them pass, :mod:`safcore.measures.control`), reports the same counts on
those held-out images beside the samples', measures the adversary's recall on the copies and its
firing rate on everything else, and how evenly the model copies its training images.
:meth:`AuditResult.verdict` turns this into the sentence a report may print: any copy of ``x_p`` found
— by the adversary or by the copy count, SAF visible or not — means the model hands ``x_p`` back, in at
least ``max(|q|, copies)`` of ``n`` samples; an adversary that misses copies, fires on most samples,
does not see ``x_p``'s own fingerprint or detects the SAF poorly makes a claim of absence
*inconclusive*. Every count comes with its exact (Clopper–Pearson) 95 % interval (:mod:`safcore.measures.bounds`).

Images to audit come from :mod:`safcore.data.images` (arrays, files, PNG folders, a diffusers U-Net).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from scipy import stats

from safcore.measures.bounds import binomial_p_value, proportion_interval, samples_to_bound, upper_bound
from safcore.measures.control import CARLINI_THRESHOLD, CONTROL_ALPHA, CopyThreshold, copy_threshold_for
from safcore.data.images import load_images
from safcore.measures.memorization import carlini_nearest
from safcore.runtime.progress import progress_bar
from safcore.measures.quality import SampleQuality

__all__ = [
    "AdversaryRequirements",
    "AuditResult",
    "CopyCheck",
    "Verdict",
    "audit",
    "binomial_p_value",
    "copy_check",
    "evenness_test",
    "load_images",
]

ImageClassifier = Callable[[torch.Tensor], torch.Tensor]
VerdictKind = Literal["inconclusive", "reproduces", "not_observed", "unlike_data"]


# --------------------------------------------------------------------------------------------
# The independent copy count


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


# --------------------------------------------------------------------------------------------
# What the audit may conclude


@dataclasses.dataclass(frozen=True)
class AdversaryRequirements:
    """What the adversary must achieve before an audit may say anything but "inconclusive".

    Args:
        min_saf_accuracy: ``c_p``'s accuracy on held-out images with and without an SAF.
        min_recall: fraction of the nearest-neighbour copies of ``x_p`` that must be q-positives.
        max_cp_rate_others: largest fraction of the other samples on which ``c_p`` may fire.
        max_cid_rate_others: the same for ``c_id``.
        confidence: of the Clopper–Pearson bounds.
    """

    min_saf_accuracy: float = 0.95
    min_recall: float = 0.90
    max_cp_rate_others: float = 0.5
    max_cid_rate_others: float = 0.5
    confidence: float = 0.95

    def __post_init__(self) -> None:
        for name in ("min_saf_accuracy", "min_recall", "max_cp_rate_others", "max_cid_rate_others"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"AdversaryRequirements.{name} = {value!r} must lie in [0, 1]")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"AdversaryRequirements.confidence = {self.confidence!r} must lie in (0, 1)")


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What an audit may say, in words.

    Attributes:
        kind: ``"reproduces"`` (``x_p`` was handed back: a q-positive or a nearest-neighbour copy, SAF
            visible or not; also when the samples are otherwise unlike the data — a found copy is never
            hidden), ``"unlike_data"`` (the model does not generate images like its data and no copy was
            found: the counts say nothing about a model that does), ``"inconclusive"`` (nothing was found, but the adversary is too weak to claim
            absence) or ``"not_observed"`` (nothing was found by an adversary that meets the requirements).
        headline: one sentence for the top of a report.
        reasons: why the verdict is inconclusive (empty otherwise).
        warnings: what a reader must know besides (classifier false positives, uneven copying, …).
    """

    kind: VerdictKind
    headline: str
    reasons: tuple[str, ...]
    warnings: tuple[str, ...]

    def __str__(self) -> str:
        lines = [self.headline]
        lines += [f"  - not conclusive: {r}" for r in self.reasons]
        lines += [f"  - warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _pct(x: float) -> str:
    return f"{100 * x:.2g} %" if x < 0.1 else f"{100 * x:.0f} %"


# --------------------------------------------------------------------------------------------
# The audit


@dataclasses.dataclass(frozen=True)
class AuditResult:
    """Counts of one audit, as a row of the paper's Tab. 1 / Tab. 2, with the checks beside them.

    Attributes:
        n: number of audited (generated) images.
        n_dataset: ``N_D``, the size of the training set ``D_p``.
        expected_q: ``E|q| = n / N_D``, what an unbiased model that reproduces its training images
            uniformly would give.
        n_cp, n_cid, n_q: ``|c_p+|``, ``|c_id+|`` and ``|q| = |c_p+ ∩ c_id+|``.
        p_value: one-sided binomial test of H0 ``p = 1/N_D`` against H1 ``p < 1/N_D`` with ``n_q``
            successes in ``n`` trials (``scipy.stats.binomtest(..., alternative="less")``).
        q_indices, cp_indices, cid_indices: positions (in the audited set) of the q-positives, the
            ``c_p`` positives and the ``c_id`` positives, ascending.
        mae, mse: mean absolute / squared error of the q-positives to ``x_p`` over all their pixels
            (NaN when ``n_q = 0``).
        copies: the independent copy count (:class:`CopyCheck`), when the training set was given.
        cp_on_x_p, cid_on_x_p: whether each classifier fires on ``x_p`` itself.
        saf_accuracy: ``c_p``'s accuracy on held-out images, when the caller measured it.
        quality: the sample-quality gate (:class:`safcore.measures.quality.SampleQuality`), when held-out images and
            a feature extractor were given; a failed gate leads the verdict.
    """

    n: int
    n_dataset: int
    expected_q: float
    n_cp: int
    n_cid: int
    n_q: int
    p_value: float
    q_indices: tuple[int, ...]
    cp_indices: tuple[int, ...]
    cid_indices: tuple[int, ...]
    mae: float
    mse: float
    copies: CopyCheck | None = None
    cp_on_x_p: bool | None = None
    cid_on_x_p: bool | None = None
    saf_accuracy: float | None = None
    quality: SampleQuality | None = None

    @property
    def missed_copies(self) -> tuple[int, ...]:
        """Samples that copy ``x_p`` by nearest neighbour but are not q-positives (empty without the copy count)."""
        q = set(self.q_indices)
        return () if self.copies is None else tuple(i for i in self.copies.xp_copy_indices if i not in q)

    @property
    def cp_false_positives(self) -> tuple[int, ...]:
        """Images ``c_p`` flags that are not q-positives (``c_p+`` but ``c_id−``)."""
        q = set(self.q_indices)
        return tuple(i for i in self.cp_indices if i not in q)

    @property
    def cid_false_positives(self) -> tuple[int, ...]:
        """Images ``c_id`` flags that are not q-positives (``c_id+`` but ``c_p−``)."""
        q = set(self.q_indices)
        return tuple(i for i in self.cid_indices if i not in q)

    def rejects_h0(self, alpha: float = 0.05) -> bool:
        """Whether the test rejects H0 at level ``alpha``: ``x_p`` is generated less often than 1/N_D."""
        return self.p_value < alpha

    # ---------------------------------------------------------------- bounds
    def q_upper(self, confidence: float = 0.95) -> float:
        """Exact (Clopper–Pearson) upper bound on P(sample is ``x_p`` with its SAF) from ``|q|``."""
        return upper_bound(self.n_q, self.n, confidence)

    def copies_upper(self, confidence: float = 0.95) -> float | None:
        """The same bound from the nearest-neighbour count of ``x_p`` copies (None without it)."""
        return None if self.copies is None else upper_bound(self.copies.n_xp_copies, self.n, confidence)

    def samples_to_bound(self, confidence: float = 0.95) -> int | None:
        """Samples needed to bound P(``x_p``) below ``1/N_D`` at the rate seen here (None: never —
        the observed rate is at or above ``1/N_D``). Uses the larger of ``|q|`` and the NN copy count."""
        k = self.n_handed_back
        return samples_to_bound(k, self.n, 1.0 / self.n_dataset, confidence) if self.n_dataset > 1 else None

    @property
    def n_handed_back(self) -> int:
        """Samples that are ``x_p``, as far as this audit can tell: the larger of ``|q|`` (the adversary's
        count, SAF visible) and the nearest-neighbour copies of ``x_p`` (SAF visible or not)."""
        return self.n_q if self.copies is None else max(self.n_q, self.copies.n_xp_copies)

    def handed_back_interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """Exact (Clopper–Pearson) interval of P(sample is ``x_p``) from :attr:`n_handed_back`."""
        return proportion_interval(self.n_handed_back, self.n, confidence)

    # ---------------------------------------------------------------- the verdict
    def _adversary_reasons(self, req: AdversaryRequirements) -> list[str]:
        """Why the adversary is too weak to claim that ``x_p`` is absent."""
        c = self.copies
        reasons: list[str] = []
        if self.saf_accuracy is not None and self.saf_accuracy < req.min_saf_accuracy:
            reasons.append(
                f"c_p detects the SAF on held-out images with {self.saf_accuracy:.1%} accuracy "
                f"(required ≥ {req.min_saf_accuracy:.0%})"
            )
        if self.cp_on_x_p is False:
            reasons.append("c_p does not fire on x_p itself: it cannot see this fingerprint")
        if self.cid_on_x_p is False:
            reasons.append("c_id does not recognise x_p itself")
        if c is not None:
            judged = c.n_xp_copies if c.xp_copies_with_saf is None else len(c.xp_copies_with_saf)
            hits = c.q_hits if c.q_hits_with_saf is None else c.q_hits_with_saf
            what = "" if c.xp_copies_with_saf is None else " with a visible SAF"
            if judged and c.q_recall_with_saf < req.min_recall:
                reasons.append(
                    f"the adversary caught {hits} of the {judged} samples that copy x_p{what} by nearest "
                    f"neighbour (recall {c.q_recall_with_saf:.0%}, required ≥ {req.min_recall:.0%}; of all "
                    f"{c.n_xp_copies} x_p copies c_p caught {c.cp_hits}, c_id {c.cid_hits})"
                )
            for name, rate, limit, count in (("c_p", c.cp_rate_others, req.max_cp_rate_others, c.cp_others),
                                             ("c_id", c.cid_rate_others, req.max_cid_rate_others, c.cid_others)):  # fmt: skip
                if c.n_others and rate > limit:
                    reasons.append(f"{name} fires on {count} of the {c.n_others} samples that are not copies of x_p ({rate:.0%})")
        return reasons

    def verdict(self, requirements: AdversaryRequirements = AdversaryRequirements()) -> Verdict:
        """What this audit may conclude (see :class:`Verdict`), judged by ``requirements``.

        A copy of ``x_p`` that was found — a q-positive or a nearest-neighbour copy, SAF visible or not —
        is a finding whatever the adversary's recall: the verdict is ``"reproduces"`` and its headline
        states ``k = max(|q|, x_p copies)`` of ``n`` with its exact interval. "Inconclusive" is only ever
        about absence: nothing was found, but the adversary is too weak to say so. "Not observed" needs
        no copy by either count and an adversary that meets ``requirements``. Before all of this, the
        sample-quality gate (:mod:`safcore.measures.quality`): when the samples are not like the data, the headline
        says so first; with no copy found the verdict is ``"unlike_data"``, with one it stays ``"reproduces"``.
        """
        req, c = requirements, self.copies
        unlike = self.quality is not None and not self.quality.passed
        lead = self.quality.describe() + " " if unlike else ""
        reasons = self._adversary_reasons(req)
        warnings: list[str] = []
        one = _pct(1 / self.n_dataset)
        if c is None:
            warnings.append("no independent copy count (the training set was not given): copies the classifiers miss are not checked")
        else:
            if c.calibration is not None and not c.calibration.calibrated:
                warnings.append("the copy rule is not calibrated on held-out images (none given): how often images the model "
                                "never saw pass it is unknown")
            if c.q_not_copies:
                warnings.append(f"{len(c.q_not_copies)} q-positive(s) are not nearest-neighbour copies of x_p")
            for name, rate, limit, count in (("c_p", c.cp_rate_others, req.max_cp_rate_others, c.cp_others),
                                             ("c_id", c.cid_rate_others, req.max_cid_rate_others, c.cid_others)):  # fmt: skip
                if count and not (c.n_others and rate > limit):
                    warnings.append(f"{name} fires on {count} of the {c.n_others} samples that are not copies of x_p ({rate:.0%})")
            if not math.isnan(c.evenness_p) and c.evenness_p < 0.05:
                top = int(np.argmax(c.per_image))
                test = "χ²" if c.evenness_method == "chi2" else "multinomial Monte-Carlo"
                warnings.append(
                    f"the model copies its training images unevenly ({test} p = {c.evenness_p:.2g}; image {top} in "
                    f"{c.per_image[top]} samples, x_p in {c.per_image[c.x_p_index]}): |q| below E|q| can mean "
                    f"uneven copying, not protection"
                )
            if c.n_copies == 0:
                warnings.append(f"none of the {c.n} samples copies a training image: E|q| = n/N_D, which assumes every "
                                f"sample is a copy, does not describe this model")
            elif c.copy_rate < 1.0:
                warnings.append(f"E|q| = n/N_D assumes every sample is a copy; {c.copies_text()} copy a training image")
        k = self.n_handed_back
        if k > 0:
            low, high = self.handed_back_interval(req.confidence)
            found = [f"|q| = {self.n_q} by the adversary (SAF detected and x_p recognised)"]
            if c is not None:
                saf = ""
                if c.xp_copies_with_saf is not None:
                    saf = f", {len(c.xp_copies_with_saf)} with its SAF visible, {c.n_xp_copies_without_saf} without"
                found.append(f"{c.n_xp_copies} nearest-neighbour copies of x_p{saf}")
                if c.control and c.control["n"]:
                    found[-1] += f" (held-out real images pass the copy rule for x_p in {c.control['xp_copies']} of {c.control['n']})"
            headline = (f"The model hands back x_p in at least {k} of {self.n} samples ({_pct(low)}–{_pct(high)} at "
                        f"{req.confidence:.0%}; 1/N_D = {one}): " + "; ".join(found) + ".")  # fmt: skip
            if c is not None and c.n_xp_copies_without_saf:
                headline += (f" {c.n_xp_copies_without_saf} reproduce x_p's anatomy WITHOUT its SAF: a breach of this "
                             f"patient's image that |q| cannot count.")  # fmt: skip
            warnings = [f"the adversary is weak, so x_p may come back more often than counted: {r}" for r in reasons] + warnings
            if unlike:
                headline = lead + "Even so: " + headline[0].lower() + headline[1:]
            return Verdict("reproduces", headline, (), tuple(warnings))
        u = self.q_upper(req.confidence)
        need = self.samples_to_bound(req.confidence)
        if need is None:
            need_text = f"this is not below 1/N_D = {one} at any sample size"
        elif need <= self.n:
            need_text = f"that is below 1/N_D = {one} ({need:,} samples suffice)"
        else:
            need_text = f"bounding it below 1/N_D = {one} needs ≥ {need:,} samples without a copy"
        nn = "neither the adversary nor the nearest-neighbour count found a copy" if c is not None else "the adversary found no copy"
        if unlike:
            headline = (lead + f"No copy of x_p in {self.n} samples ({nn}) says nothing about x_p's privacy in a model "
                        f"that learns its data: train or load the model that would be published and audit that.")
            return Verdict("unlike_data", headline, tuple(reasons), tuple(warnings))
        if reasons:
            headline = (f"INCONCLUSIVE: no copy of x_p in {self.n} samples ({nn}), but the adversary is too weak to "
                        f"claim x_p is absent.")  # fmt: skip
            return Verdict("inconclusive", headline, tuple(reasons), tuple(warnings))
        headline = (f"x_p was not generated in {self.n} samples ({nn}): P(sample is x_p) ≤ {_pct(u)} at "
                    f"{req.confidence:.0%} confidence (E|q| = {self.expected_q:.3g}, p = {self.p_value:.2g}); {need_text}.")  # fmt: skip
        return Verdict("not_observed", headline, (), tuple(warnings))

    # ---------------------------------------------------------------- rows
    def to_row(self) -> dict:
        """The scalar columns as a dict (``pd.DataFrame([r.to_row() for r in results])``)."""
        row = {
            "N_D": self.n_dataset,
            "n": self.n,
            "E|q|": self.expected_q,
            "|c_p+|": self.n_cp,
            "|c_id+|": self.n_cid,
            "|q|": self.n_q,
            "p": self.p_value,
            "x_p handed back": self.n_handed_back,
            "samples unlike data": (f"{self.quality.n_unlike}/{self.quality.n}" if self.quality is not None else "—"),
            "P(x_p) ≤": self.handed_back_interval()[1],
            "MAE": self.mae,
            "MSE": self.mse,
        }
        if self.copies is not None:
            c = self.copies
            row |= {
                "x_p copies (NN)": c.n_xp_copies,
                "with SAF": len(c.xp_copies_with_saf) if c.xp_copies_with_saf is not None else math.nan,
                "caught": c.q_hits,
                "c_p recall": c.cp_recall,
                "c_id recall": c.cid_recall,
                "c_p+ others": c.cp_others,
                "copies": c.n_copies,
                "copies, held-out": (f"{c.control['copies']}/{c.control['n']}" if c.control else "—"),
                "copy threshold": c.threshold,
            }
        row["verdict"] = self.verdict().kind
        return row

    def __str__(self) -> str:
        text = (
            f"N_D {self.n_dataset:>6} | n {self.n:>7} | E|q| {self.expected_q:>9.2f} | |c_p+| {self.n_cp:>6} | "
            f"|c_id+| {self.n_cid:>6} | |q| {self.n_q:>6} | p {self.p_value:.3g} | "
            f"P(x_p) ≤ {self.q_upper():.3g} | MAE {self.mae:.3g} | MSE {self.mse:.3g}"
        )
        if self.copies is not None:
            c = self.copies
            saf = "" if c.xp_copies_with_saf is None else f", {len(c.xp_copies_with_saf)} with a visible SAF"
            text += (f"\nx_p copies by nearest neighbour {c.n_xp_copies}{saf} (caught {c.q_hits}: c_p {c.cp_hits}, "
                     f"c_id {c.cid_hits}) | c_p+ on {c.cp_others} other samples | copies of any image {c.n_copies}")  # fmt: skip
        return text + "\n" + str(self.verdict())


def _predict(classifier: ImageClassifier, images: torch.Tensor, batch_size: int, name: str, progress: bool) -> torch.Tensor:
    out = []
    for start in progress_bar(range(0, images.shape[0], batch_size), desc=name, enabled=progress, leave=False):
        batch = images[start : start + batch_size]
        pred = torch.as_tensor(classifier(batch))
        if pred.shape != (batch.shape[0],):
            raise ValueError(f"{name} returned shape {tuple(pred.shape)} for {batch.shape[0]} images; it must return ({batch.shape[0]},)")
        out.append(pred.detach().to("cpu").bool())
    return torch.cat(out)


def audit(
    images: torch.Tensor,
    c_p: ImageClassifier,
    c_id: ImageClassifier,
    x_p: torch.Tensor,
    n_dataset: int,
    batch_size: int = 256,
    progress: bool = False,
    *,
    train_images: torch.Tensor | None = None,
    x_p_index: int | None = None,
    saf_mask: torch.Tensor | None = None,
    saf_grey: float = 0.5,
    saf_accuracy: float | None = None,
    control: torch.Tensor | None = None,
    quality: SampleQuality | None = None,
) -> AuditResult:
    """Count ``|c_p+|``, ``|c_id+|``, ``|q|`` on generated images and test ``|q|`` against ``E|q| = n/N_D``.

    Args:
        images: ``(n, C, H, W)`` float in ``[0, 1]`` (use :func:`load_images` for other forms).
        c_p, c_id: any callables ``(B, C, H, W) -> bool (B,)``, e.g. trained
            :class:`safcore.adversary.classifiers.Classifier` objects; both see every image (and ``x_p``).
        x_p: ``(C, H, W)`` the fingerprinted training image (for MAE/MSE and the shape check).
        n_dataset: ``N_D``, the number of training images.
        batch_size: images per classifier call.
        train_images: ``D_p`` ``(N_D, C, H, W)`` with ``x_p`` at ``x_p_index``: adds the independent
            copy count (:class:`CopyCheck`). Without it the verdict warns that nothing checks the misses.
        x_p_index: where ``x_p`` is in ``train_images`` (required with it).
        saf_mask, saf_grey: the SAF's disc ``(H, W)`` and grey: the copy count then tells copies of ``x_p``
            with a visible SAF (which the adversary must catch) from copies without it.
        saf_accuracy: ``c_p``'s accuracy on held-out images, if measured (enters the verdict).
        control: real held-out images ``(m, C, H, W)`` the model never saw, de-duplicated against ``D_p``
            (:func:`safcore.measures.control.held_out`): the copy rule is calibrated on them (≤ 1 % pass) and every
            copy count is reported beside theirs. Without it the rule is Carlini's uncalibrated 0.5.
        quality: the sample-quality gate on these images (:func:`safcore.measures.quality.sample_quality`): when it
            fails, the verdict leads with it.
    Raises:
        ValueError: no images, images not ``(n, C, H, W)`` or not matching ``x_p``'s shape, values
            outside ``[0, 1]`` or NaN, ``n_dataset < 1``, a classifier returning the wrong shape, or a
            training set whose size is not ``N_D``.
    """
    if isinstance(n_dataset, bool) or not isinstance(n_dataset, (int, np.integer)) or n_dataset < 1:
        raise ValueError(f"n_dataset (N_D) = {n_dataset!r} must be an integer ≥ 1")
    if batch_size < 1:
        raise ValueError(f"batch_size = {batch_size!r} must be ≥ 1")
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor (n, C, H, W) in [0, 1]; got {type(images).__name__} — use load_images()")
    if not isinstance(x_p, torch.Tensor) or x_p.ndim != 3:
        raise ValueError(f"x_p must be a (C, H, W) tensor, got shape {tuple(getattr(x_p, 'shape', ()))}")
    if images.ndim != 4:
        raise ValueError(f"images must have shape (n, C, H, W), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("cannot audit an empty image set: n = 0 images")
    if tuple(images.shape[1:]) != tuple(x_p.shape):
        raise ValueError(
            f"images are {tuple(images.shape[1:])} (C, H, W) but x_p is {tuple(x_p.shape)}: "
            f"channel count and size must match"
        )
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype} — use load_images()")
    lo, hi = float(images.min()), float(images.max())  # NaN anywhere makes both NaN
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError("images contain NaN; allowed: finite values in [0, 1]")
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"images have values in [{lo:.3g}, {hi:.3g}]; allowed: [0, 1] (model-range [-1, 1] images: apply safcore.data.datasets.from_model_range first)")
    if train_images is not None:
        if train_images.ndim != 4 or train_images.shape[0] != n_dataset:
            raise ValueError(f"train_images has shape {tuple(train_images.shape)}; expected (N_D = {n_dataset}, C, H, W)")
        if x_p_index is None:
            raise ValueError("x_p_index is required with train_images: where is x_p in the training set?")
    n = int(images.shape[0])
    if quality is not None and quality.n != n:
        raise ValueError(f"quality judged {quality.n} samples but {n} images are audited; judge the audited images")
    cp = _predict(c_p, images, batch_size, "c_p", progress)
    cid = _predict(c_id, images, batch_size, "c_id", progress)
    q = cp & cid
    q_idx = torch.nonzero(q).flatten()
    if len(q_idx):
        diff = images[q_idx.to(images.device)].float() - x_p.to(images.device, torch.float32)[None]
        mae, mse = float(diff.abs().mean()), float((diff**2).mean())
    else:
        mae = mse = math.nan
    x_p_batch = x_p.to(images.device, images.dtype)[None]
    cp_on_x_p = bool(_predict(c_p, x_p_batch, 1, "c_p", False)[0])
    cid_on_x_p = bool(_predict(c_id, x_p_batch, 1, "c_id", False)[0])
    copies = None
    if train_images is not None:
        copies = copy_check(images, train_images, int(x_p_index), cp, cid, control=control, saf_mask=saf_mask,
                            saf_grey=saf_grey)
    n_q = int(q.sum())
    return AuditResult(
        n=n,
        n_dataset=int(n_dataset),
        expected_q=n / n_dataset,
        n_cp=int(cp.sum()),
        n_cid=int(cid.sum()),
        n_q=n_q,
        p_value=binomial_p_value(n_q, n, int(n_dataset)),
        q_indices=tuple(int(i) for i in q_idx),
        cp_indices=tuple(int(i) for i in torch.nonzero(cp).flatten()),
        cid_indices=tuple(int(i) for i in torch.nonzero(cid).flatten()),
        mae=mae,
        mse=mse,
        copies=copies,
        cp_on_x_p=cp_on_x_p,
        cid_on_x_p=cid_on_x_p,
        saf_accuracy=None if saf_accuracy is None else float(saf_accuracy),
        quality=quality,
    )
