"""What a sampling audit may conclude: the requirements on the adversary and the verdict, in words.

:func:`judge` turns an :class:`~safcore.audit.sample_audit.AuditResult` into the sentence a report may print
(paper §5.3, App. B, D): any copy of ``x_p`` found — by the adversary (``|q|``) or by the independent copy
count (:class:`~safcore.audit.copies.CopyCheck`), SAF visible or not — means the model hands ``x_p`` back, in at
least ``max(|q|, copies)`` of ``n`` samples, with its exact (Clopper–Pearson) interval
(:mod:`safcore.measures.bounds`); an adversary that misses copies, fires on most samples, does not see
``x_p``'s own fingerprint or detects the SAF poorly (:class:`AdversaryRequirements`) makes a claim of absence
*inconclusive*; samples unlike the data (:mod:`safcore.measures.quality`) lead the headline.

A class-conditional model's audit (``result.classes``, :mod:`safcore.audit.classes`) is judged within ``x_p``'s class
``c``: the rate and its interval are of the samples that are ``x_p`` among the ``n_c`` samples drawn for ``c``,
compared with ``1/N_c`` (``E|q| = n_c/N_c``), and the headline says so ("among the n_c samples of x_p's class c");
a copy of ``x_p`` drawn for another class is a finding too. With ``n_c = 0`` absence cannot be claimed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from safcore.audit.sample_audit import AuditResult

__all__ = ["VerdictKind", "AdversaryRequirements", "Verdict", "adversary_reasons", "judge"]

VerdictKind = Literal["inconclusive", "reproduces", "not_observed", "unlike_data"]


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


def adversary_reasons(result: AuditResult, req: AdversaryRequirements) -> list[str]:
    """Why the adversary of ``result`` is too weak to claim that ``x_p`` is absent (empty: it is not)."""
    c = result.copies
    reasons: list[str] = []
    if result.saf_accuracy is not None and result.saf_accuracy < req.min_saf_accuracy:
        reasons.append(
            f"c_p detects the SAF on held-out images with {result.saf_accuracy:.1%} accuracy "
            f"(required ≥ {req.min_saf_accuracy:.0%})"
        )
    if result.cp_on_x_p is False:
        reasons.append("c_p does not fire on x_p itself: it cannot see this fingerprint")
    if result.cid_on_x_p is False:
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

def judge(result: AuditResult, requirements: AdversaryRequirements = AdversaryRequirements()) -> Verdict:
    """What an audit may conclude (see :class:`Verdict`), judged by ``requirements``.

    A copy of ``x_p`` that was found — a q-positive or a nearest-neighbour copy, SAF visible or not —
    is a finding whatever the adversary's recall: the verdict is ``"reproduces"`` and its headline
    states ``k = max(|q|, x_p copies)`` of ``n`` with its exact interval. "Inconclusive" is only ever
    about absence: nothing was found, but the adversary is too weak to say so. "Not observed" needs
    no copy by either count and an adversary that meets ``requirements``. Before all of this, the
    sample-quality gate (:mod:`safcore.measures.quality`): when the samples are not like the data, the headline
    says so first; with no copy found the verdict is ``"unlike_data"``, with one it stays ``"reproduces"``.
    """
    req, c = requirements, result.copies
    unlike = result.quality is not None and not result.quality.passed
    lead = result.quality.describe() + " " if unlike else ""
    reasons = adversary_reasons(result, req)
    warnings: list[str] = []
    one = _pct(1 / result.n_dataset_tested)
    base, cls = result.rate_name, result.classes  # "1/N_D" (cls None) or "1/N_c" of x_p's class
    eq = "n/N_D" if cls is None else "n_c/N_c"
    if result.unlabelled_classes is not None:
        warnings.append(f"the model is class-conditional ({result.unlabelled_classes} classes) but the audited images "
                        "carry no class (samples given as files): |q| is tested over all classes against E|q| = n/N_D, "
                        "which holds when the samples were drawn in proportion to D_p's labels; let safcore sample "
                        "the model to test x_p's class against n_c/N_c")
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
            warnings.append(f"none of the {c.n} samples copies a training image: E|q| = {eq}, which assumes every "
                            f"sample is a copy, does not describe this model")
        elif c.copy_rate < 1.0:
            warnings.append(f"E|q| = {eq} assumes every sample is a copy; {c.copies_text()} copy a training image")
    k, k_other = result.n_handed_back, result.n_handed_back_other_classes
    if k > 0 or k_other > 0:
        low, high = result.handed_back_interval(req.confidence)
        found = [f"|q| = {result.n_q} by the adversary (SAF detected and x_p recognised)"]
        if cls is not None:
            found[-1] += f", {cls.n_q} of them in class {cls.label}"
        if c is not None:
            saf = ""
            if c.xp_copies_with_saf is not None:
                saf = f", {len(c.xp_copies_with_saf)} with its SAF visible, {c.n_xp_copies_without_saf} without"
            found.append(f"{c.n_xp_copies} nearest-neighbour copies of x_p{saf}")
            if cls is not None and cls.n_xp_copies is not None:
                found[-1] += f"; {cls.n_xp_copies} of them in class {cls.label}"
            if c.control and c.control["n"]:
                found[-1] += f" (held-out real images pass the copy rule for x_p in {c.control['xp_copies']} of {c.control['n']})"
        interval = f"{_pct(low)}–{_pct(high)} at {req.confidence:.0%}; {base} = {one}"
        if cls is None:
            headline = f"The model hands back x_p in at least {k} of {result.n} samples ({interval}): "
        elif k > 0:
            other = f", and in {k_other} of the {result.n - cls.n_class} samples drawn for other classes" if k_other else ""
            headline = f"The model hands back x_p in at least {k}{result.scope} ({interval}){other}: "
        else:
            headline = (f"The model hands back x_p in {k_other} of the {result.n - cls.n_class} samples drawn for other "
                        f"classes than x_p's class {cls.label} (none{result.scope}: {interval}): ")
        headline += "; ".join(found) + "."
        if c is not None and c.n_xp_copies_without_saf:
            headline += (f" {c.n_xp_copies_without_saf} reproduce x_p's anatomy WITHOUT its SAF: a breach of this "
                         f"patient's image that |q| cannot count.")  # fmt: skip
        warnings = [f"the adversary is weak, so x_p may come back more often than counted: {r}" for r in reasons] + warnings
        if unlike:
            headline = lead + "Even so: " + headline[0].lower() + headline[1:]
        return Verdict("reproduces", headline, (), tuple(warnings))
    if cls is not None and cls.n_class == 0:  # absence within x_p's class cannot be claimed from no sample of it
        reasons.append(f"none of the {result.n} samples was drawn for x_p's class {cls.label} (N_c = "
                       f"{cls.n_dataset_class} of N_D = {result.n_dataset}): draw more samples")
    u = result.q_upper(req.confidence)
    need = result.samples_to_bound(req.confidence)
    of_class = "" if cls is None else f" of class {cls.label}"
    if need is None:
        need_text = f"this is not below {base} = {one} at any sample size"
    elif need <= result.n_tested:
        need_text = f"that is below {base} = {one} ({need:,} samples{of_class} suffice)"
    else:
        need_text = f"bounding it below {base} = {one} needs ≥ {need:,} samples{of_class} without a copy"
    nn = "neither the adversary nor the nearest-neighbour count found a copy" if c is not None else "the adversary found no copy"
    if unlike:
        headline = (lead + f"No copy of x_p in {result.n} samples ({nn}) says nothing about x_p's privacy in a model "
                    f"that learns its data: train or load the model that would be published and audit that.")
        return Verdict("unlike_data", headline, tuple(reasons), tuple(warnings))
    if reasons:
        why = "the adversary is too weak to claim x_p is absent"
        if cls is not None and cls.n_class == 0:
            why = f"none was drawn for x_p's class {cls.label}: absence within it cannot be claimed"
        headline = f"INCONCLUSIVE: no copy of x_p in {result.n} samples ({nn}), but {why}."
        return Verdict("inconclusive", headline, tuple(reasons), tuple(warnings))
    where = "" if cls is None else f"{result.scope[1:]}, "
    expected = f"{result.expected_q:.3g}" if cls is None else f"n_c/N_c = {result.expected_q:.3g}"
    headline = (f"x_p was not generated in {result.n} samples ({nn}): {where}P(sample is x_p) ≤ {_pct(u)} at "
                f"{req.confidence:.0%} confidence (E|q| = {expected}, p = {result.p_value:.2g}); {need_text}.")  # fmt: skip
    return Verdict("not_observed", headline, (), tuple(warnings))
