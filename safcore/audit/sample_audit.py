"""The sampling audit: how often does a model hand back ``x_p``? (paper §5.3, Tab. 1 and 2, App. B, D).

Given ``n`` generated images, count ``|c_p+|`` (carry the SAF), ``|c_id+|`` (identified as ``x_p``) and
``|q| = |c_p+ ∩ c_id+|``; compare ``|q|`` with its expectation ``E|q| = n / N_D`` under the null
hypothesis that ``x_p`` is generated as often as any training image, with a one-sided binomial test
(H0: p = 1/N_D, H1: p < 1/N_D); and measure how close the q-positives are to ``x_p`` (MAE, MSE). A class-conditional
model's samples, drawn per class, are tested within ``x_p``'s class: ``E|q| = n_c / N_c`` (:mod:`safcore.audit.classes`), and
the count handed back, its interval and bounds are of those ``n_c`` samples against ``1/N_c`` (:attr:`AuditResult.n_tested`). The
result keeps every index so galleries can show the q-positives and each classifier's false positives
(Fig. 8).

``|q|`` counts only the copies that both classifiers catch. Given the training set ``D_p``, the audit
also counts copies of ``x_p`` independently of the adversary (:mod:`safcore.audit.copies`: each sample's nearest
training image in pixel space and the Carlini et al. 2023 ratio, its threshold calibrated on real
held-out images so that at most 1 % of them pass, :mod:`safcore.measures.control`), reports the same counts on
those held-out images beside the samples', measures the adversary's recall on the copies and its
firing rate on everything else, and how evenly the model copies its training images.
:meth:`AuditResult.verdict` (:mod:`safcore.audit.verdict`) turns this into the sentence a report may print: any copy of ``x_p`` found
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

import numpy as np
import torch

from safcore.audit.classes import ClassCounts, class_labels
from safcore.audit.copies import CopyCheck, copy_check
from safcore.audit.verdict import AdversaryRequirements, Verdict, judge
from safcore.measures.bounds import binomial_p_value, proportion_interval, samples_to_bound, upper_bound
from safcore.measures.quality import SampleQuality
from safcore.runtime.progress import progress_bar

__all__ = ["AuditResult", "audit"]

ImageClassifier = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------
# The audit


@dataclasses.dataclass(frozen=True)
class AuditResult:
    """Counts of one audit, as a row of the paper's Tab. 1 / Tab. 2, with the checks beside them.

    Attributes:
        n: number of audited (generated) images.
        n_dataset: ``N_D``, the size of the training set ``D_p``.
        expected_q: ``E|q| = n / N_D``, what an unbiased model that reproduces its training images
            uniformly would give (a class-conditional model: ``n_c / N_c`` of ``x_p``'s class, :attr:`classes`).
        n_cp, n_cid, n_q: ``|c_p+|``, ``|c_id+|`` and ``|q| = |c_p+ ∩ c_id+|``.
        p_value: one-sided binomial test of H0 ``p = 1/N_D`` against H1 ``p < 1/N_D`` with ``n_q``
            successes in ``n`` trials (``scipy.stats.binomtest(..., alternative="less")``); a class-conditional
            model: H0 ``p = 1/N_c`` with the ``|q|`` of x_p's class in its ``n_c`` trials.
        q_indices, cp_indices, cid_indices: positions (in the audited set) of the q-positives, the
            ``c_p`` positives and the ``c_id`` positives, ascending.
        mae, mse: mean absolute / squared error of the q-positives to ``x_p`` over all their pixels
            (NaN when ``n_q = 0``).
        copies: the independent copy count (:class:`CopyCheck`), when the training set was given.
        cp_on_x_p, cid_on_x_p: whether each classifier fires on ``x_p`` itself.
        saf_accuracy: ``c_p``'s accuracy on held-out images, when the caller measured it.
        quality: the sample-quality gate (:class:`safcore.measures.quality.SampleQuality`), when held-out images and
            a feature extractor were given; a failed gate leads the verdict.
        classes: a class-conditional model's per-class counts and ``x_p``'s class (:class:`ClassCounts`);
            ``None``: an unconditional model, or images that carry no class.
        unlabelled_classes: ``K`` when the images come from a class-conditional model with ``K`` classes but carry no
            class (samples given as files): they are tested over all classes against ``n/N_D``, and the verdict
            says so; ``None`` otherwise.
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
    classes: ClassCounts | None = None
    unlabelled_classes: int | None = None

    @property
    def class_label(self) -> int | None:
        """``x_p``'s class of a class-conditional audit (``None``: unconditional)."""
        return None if self.classes is None else self.classes.label

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
    @property
    def n_tested(self) -> int:
        """The samples the test and the bounds are over: ``n``, or a class-conditional model's ``n_c`` of ``x_p``'s
        class (Binomial(n_c, 1/N_c), :mod:`safcore.audit.classes`)."""
        return self.n if self.classes is None else self.classes.n_class

    @property
    def n_dataset_tested(self) -> int:
        """The training images the rate is compared with: ``N_D``, or ``N_c`` of ``x_p``'s class."""
        return self.n_dataset if self.classes is None else self.classes.n_dataset_class

    @property
    def rate_name(self) -> str:
        """``"1/N_D"``, or ``"1/N_c"`` for a class-conditional model: the rate every bound is compared with."""
        return "1/N_D" if self.classes is None else "1/N_c"

    @property
    def scope(self) -> str:
        """Where the bounds count: ``""`` (all ``n`` samples), or ``" among the n_c samples of x_p's class c"``."""
        k = self.classes
        return "" if k is None else f" among the {k.n_class} samples of x_p's class {k.label}"

    def q_upper(self, confidence: float = 0.95) -> float:
        """Exact (Clopper–Pearson) upper bound on P(sample is ``x_p`` with its SAF) from ``|q|`` (a class-conditional
        model: the ``|q|`` of ``x_p``'s class among its ``n_c`` samples; 1 when ``n_c = 0``)."""
        if self.classes is None:
            return upper_bound(self.n_q, self.n, confidence)
        return upper_bound(self.classes.n_q, self.n_tested, confidence) if self.n_tested else 1.0

    def copies_upper(self, confidence: float = 0.95) -> float | None:
        """The same bound from the nearest-neighbour count of ``x_p`` copies over all ``n`` samples (None without it)."""
        return None if self.copies is None else upper_bound(self.copies.n_xp_copies, self.n, confidence)

    def samples_to_bound(self, confidence: float = 0.95) -> int | None:
        """Samples needed to bound P(``x_p``) below ``1/N_D`` at the rate seen here (None: never —
        the observed rate is at or above ``1/N_D``). Uses the larger of ``|q|`` and the NN copy count.
        A class-conditional model: samples of ``x_p``'s class, below ``1/N_c``, at the rate among its ``n_c``."""
        k, n, n_dataset = self.n_handed_back, self.n_tested, self.n_dataset_tested
        if n_dataset <= 1:
            return None
        return samples_to_bound(k, max(n, 1), 1.0 / n_dataset, confidence)  # n_c = 0 means k = 0: n does not enter

    @property
    def n_handed_back(self) -> int:
        """Samples that are ``x_p``, as far as this audit can tell: the larger of ``|q|`` (the adversary's
        count, SAF visible) and the nearest-neighbour copies of ``x_p`` (SAF visible or not). A class-conditional
        model: the same among the ``n_c`` samples of ``x_p``'s class (:attr:`n_handed_back_other_classes`: the rest)."""
        k = self.classes
        if k is None:
            return self.n_q if self.copies is None else max(self.n_q, self.copies.n_xp_copies)
        return k.n_q if k.n_xp_copies is None else max(k.n_q, k.n_xp_copies)

    @property
    def n_handed_back_other_classes(self) -> int:
        """A class-conditional model's samples drawn for another class than ``x_p``'s that are ``x_p`` (as
        :attr:`n_handed_back` counts); 0 for an unconditional model."""
        k = self.classes
        if k is None:
            return 0
        return max(self.n_q - k.n_q, 0 if self.copies is None else self.copies.n_xp_copies - (k.n_xp_copies or 0))

    def handed_back_interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """Exact (Clopper–Pearson) interval of P(sample is ``x_p``) from :attr:`n_handed_back` of :attr:`n_tested`
        samples (``(0, 1)`` when ``x_p``'s class got no sample)."""
        return proportion_interval(self.n_handed_back, self.n_tested, confidence) if self.n_tested else (0.0, 1.0)

    # ---------------------------------------------------------------- the verdict
    def verdict(self, requirements: AdversaryRequirements = AdversaryRequirements()) -> Verdict:
        """What this audit may conclude, judged by ``requirements`` (:func:`safcore.audit.verdict.judge`)."""
        return judge(self, requirements)

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
        if self.classes is not None:
            k = self.classes
            row |= {"class": k.label, "n_class": k.n_class, "N_class": k.n_dataset_class, "|q| in class": k.n_q,
                    "x_p handed back, other classes": self.n_handed_back_other_classes}
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
        if self.classes is not None:
            text += f"\n{self.classes}"
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
    sample_labels=None,
    dataset_labels=None,
    x_p_label: int | None = None,
    unlabelled_classes: int | None = None,
) -> AuditResult:
    """Count ``|c_p+|``, ``|c_id+|``, ``|q|`` on generated images and test ``|q|`` against ``E|q| = n/N_D``.

    Args:
        images: ``(n, C, H, W)`` float in ``[0, 1]`` (use :func:`safcore.data.images.load_images` for other forms).
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
        sample_labels, dataset_labels, x_p_label: a class-conditional model's audit (all three or none): the class
            each image was drawn for ``(n,)``, ``D_p``'s labels ``(N_D,)`` and ``x_p``'s class; ``|q|`` of x_p's class
            is then tested against ``E|q| = n_c / N_c`` (:mod:`safcore.audit.classes`).
        unlabelled_classes: ``K`` when the images come from a class-conditional model of ``K`` classes but carry no
            class (e.g. samples given as files): tested against ``n/N_D`` over all classes, the verdict says so.
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
    if unlabelled_classes is not None and (isinstance(unlabelled_classes, bool) or sample_labels is not None
                                           or not isinstance(unlabelled_classes, (int, np.integer)) or unlabelled_classes < 1):
        raise ValueError(f"unlabelled_classes = {unlabelled_classes!r}; allowed: None, or the model's number of classes "
                         "(an integer ≥ 1) for images that carry no class (then no sample_labels)")
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
    classes = _class_counts(q, sample_labels, dataset_labels, x_p_label, n, int(n_dataset), copies)
    if classes is None:
        expected, p_value = n / n_dataset, binomial_p_value(n_q, n, int(n_dataset))
    else:  # Binomial(n_c, 1/N_c) within x_p's class; no sample of it: nothing to test (p = 1)
        expected = classes.expected_q
        p_value = (binomial_p_value(classes.n_q, classes.n_class, classes.n_dataset_class) if classes.n_class else 1.0)
    return AuditResult(
        n=n,
        n_dataset=int(n_dataset),
        expected_q=expected,
        n_cp=int(cp.sum()),
        n_cid=int(cid.sum()),
        n_q=n_q,
        p_value=p_value,
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
        classes=classes,
        unlabelled_classes=None if unlabelled_classes is None else int(unlabelled_classes),
    )


def _class_counts(q: torch.Tensor, sample_labels, dataset_labels, x_p_label, n: int, n_dataset: int,
                  copies: CopyCheck | None) -> ClassCounts | None:
    """:class:`ClassCounts` of a class-conditional audit (``None`` when none of the three is given)."""
    given = [v is not None for v in (sample_labels, dataset_labels, x_p_label)]
    if not any(given):
        return None
    if not all(given):
        raise ValueError("sample_labels, dataset_labels and x_p_label go together (a class-conditional audit); "
                         "give all three or none")
    drawn = class_labels(torch.as_tensor(sample_labels).cpu().numpy(), "sample_labels")
    labels = class_labels(dataset_labels, "dataset_labels")
    if drawn.shape != (n,) or labels.shape != (n_dataset,):
        raise ValueError(f"sample_labels has {drawn.size} entries for {n} images, dataset_labels {labels.size} for "
                         f"N_D = {n_dataset}; allowed: one label per image")
    classes, sizes = np.unique(labels, return_counts=True)
    stray = sorted(set(drawn.tolist()) - set(classes.tolist()))
    if stray or x_p_label not in set(classes.tolist()):
        raise ValueError(f"sample classes {stray or ''} / x_p's class {x_p_label!r}: allowed: D_p's classes "
                         f"{classes.tolist()}")
    in_class = torch.as_tensor(drawn == int(x_p_label))
    xp_copies = None if copies is None else sum(bool(in_class[i]) for i in copies.xp_copy_indices)
    return ClassCounts(label=int(x_p_label), classes=tuple(int(c) for c in classes),
                       n_dataset=tuple(int(s) for s in sizes),
                       n_samples=tuple(int((drawn == c).sum()) for c in classes), n_q=int((q & in_class).sum()),
                       n_xp_copies=xp_copies)
