"""SAF canaries as a privacy audit in one training run (Steinke, Nasr & Jagielski 2023, NeurIPS).

A SAF is a canary: paint m SAFs (:mod:`safcore.data.fingerprint`, paper Eq. 10) on m different images of the
dataset, include each painted image with probability ½ (independently, from the seed), train once, score
each canary from the model (its t', or how often sampling hands it back), guess "in" for the ``k_+``
highest scores and "out" for the ``k_-`` lowest, and turn the number of correct guesses into a lower
bound on the ε of any (ε, δ)-DP guarantee the training could have (their Theorem 5.2, computed as their
Appendix D code does).

* :func:`design_canaries` → :class:`CanaryDesign` (frozen, JSON round trip for the manifest): which
  images, where each SAF sits, which canaries are in;
* :func:`guess` and :func:`count_correct`: the guesses and ``(r, v)``;
* :func:`p_value` and :func:`epsilon_lower_bound`: the theorem and the bound; :func:`audit` chains them
  into a :class:`CanaryAudit`;
* :func:`audit_samples`: the whole audit of one trained model from its samples → :class:`CanaryRun`.

Neighbouring datasets are add/remove ones, as in the paper: an excluded canary is absent from the
training set, and so is its clean original (keeping the clean image when the canary is out would make
each canary a replacement, two add/remove steps, and the bound one on 2ε).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.stats import binom

from safcore.data.fingerprint import (
    apply_saf,
    check_radius,
    circle_mask,
    default_radius,
    random_centers,
)

__all__ = [
    "CanaryDesign",
    "design_canaries",
    "guess",
    "count_correct",
    "p_value",
    "epsilon_lower_bound",
    "CanaryAudit",
    "audit",
    "CanaryRun",
    "audit_samples",
]


@dataclass(frozen=True)
class CanaryDesign:
    """The m-canary design: which images carry a SAF, where, and which canaries are in the training set.

    Attributes:
        n_dataset: size of the clean dataset the canaries are drawn from.
        image_size: side of its square images (px).
        indices: the m dataset positions painted (distinct), in canary order.
        centers: ``(row, col)`` of each canary's SAF disc.
        included: whether each canary is in the training set (Bernoulli(½) each).
        radius, grey: the SAF disc (paper Eq. 10).
        seed: the seed everything above was drawn from.
    """

    n_dataset: int
    image_size: int
    indices: tuple[int, ...]
    centers: tuple[tuple[float, float], ...]
    included: tuple[bool, ...]
    radius: float
    grey: float
    seed: int

    def __post_init__(self) -> None:
        m = len(self.indices)
        if m < 1 or len(self.centers) != m or len(self.included) != m:
            raise ValueError(
                f"a design needs m >= 1 canaries with one centre and one inclusion flag each; got "
                f"{m} indices, {len(self.centers)} centres, {len(self.included)} flags"
            )
        if len(set(self.indices)) != m or not all(0 <= i < self.n_dataset for i in self.indices):
            raise ValueError(f"canary indices must be distinct positions in [0, {self.n_dataset}); got {list(self.indices)}")
        check_radius(self.radius, self.image_size)
        if not 0.0 <= self.grey <= 1.0:
            raise ValueError(f"SAF grey {self.grey!r} is outside the allowed range [0, 1]")

    @property
    def m(self) -> int:
        """Number of canaries."""
        return len(self.indices)

    @property
    def inclusion(self) -> np.ndarray:
        """The inclusion mask as ``+1`` (in) / ``−1`` (out), (m,) int8: the paper's ``S``."""
        return np.where(np.asarray(self.included, dtype=bool), 1, -1).astype(np.int8)

    def masks(self) -> torch.Tensor:
        """Each canary's SAF mask ``L``, float (m, H, W)."""
        return torch.stack([circle_mask(self.image_size, self.radius, c) for c in self.centers])

    def _check_images(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[0] != self.n_dataset or tuple(images.shape[-2:]) != (self.image_size,) * 2:
            raise ValueError(
                f"images must be the design's dataset, ({self.n_dataset}, C, {self.image_size}, {self.image_size}); "
                f"got {tuple(images.shape)}"
            )

    def canaries(self, images: torch.Tensor) -> torch.Tensor:
        """The m painted canaries ``x_i · (1 − L_i) + grey · L_i`` (paper Eq. 10), (m, C, H, W).

        Args:
            images: the clean dataset, (n_dataset, C, H, W) unit range.
        """
        self._check_images(images)
        picked = images[list(self.indices)]
        return apply_saf(picked, self.masks()[:, None].to(picked.dtype), self.grey)

    def training_set(self, images: torch.Tensor) -> torch.Tensor:
        """The images to train on: every non-canary image, then the included canaries (painted).

        (n_dataset − m + #included, C, H, W); excluded canaries and all clean originals of the canaries
        are left out (add/remove neighbours).
        """
        self._check_images(images)
        keep = torch.ones(self.n_dataset, dtype=torch.bool)
        keep[list(self.indices)] = False
        inside = torch.as_tensor(self.included, dtype=torch.bool)
        return torch.cat([images[keep], self.canaries(images)[inside]])

    def to_dict(self) -> dict:
        """Plain values for a manifest (:meth:`from_dict` reads them back)."""
        d = asdict(self)
        d["indices"] = list(self.indices)
        d["centers"] = [list(c) for c in self.centers]
        d["included"] = list(self.included)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CanaryDesign:
        """The design a manifest holds (:meth:`to_dict`)."""
        return cls(
            n_dataset=int(d["n_dataset"]), image_size=int(d["image_size"]), indices=tuple(int(i) for i in d["indices"]),
            centers=tuple((float(r), float(c)) for r, c in d["centers"]), included=tuple(bool(b) for b in d["included"]),
            radius=float(d["radius"]), grey=float(d["grey"]), seed=int(d["seed"]),
        )


def design_canaries(
    n_dataset: int, m: int, image_size: int, *, seed: int, radius: float | None = None, grey: float = 0.5
) -> CanaryDesign:
    """Draw the m-canary design from ``seed`` (Steinke et al. 2023, §3: each canary in with probability ½).

    From one ``torch.Generator`` seeded with ``seed``: m distinct dataset positions (``randperm``), a SAF
    centre for each (:func:`safcore.data.fingerprint.random_centers`, the disc inside the image), then the
    inclusion flags (``rand(m) < ½``).

    Args:
        n_dataset: size of the clean dataset; m ≤ n_dataset.
        m: number of canaries.
        image_size: side of the square images (px).
        radius: SAF radius; ``None`` → :func:`safcore.data.fingerprint.default_radius`.
        grey: the SAF's constant grey.
    """
    for name, value in (("n_dataset", n_dataset), ("m", m), ("image_size", image_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}={value!r}; allowed: a positive integer")
    if m > n_dataset:
        raise ValueError(f"m={m} canaries cannot be drawn from {n_dataset} images; allowed: 1 <= m <= n_dataset")
    radius = default_radius(int(image_size)) if radius is None else float(radius)
    generator = torch.Generator().manual_seed(int(seed))
    indices = torch.randperm(int(n_dataset), generator=generator)[: int(m)]
    centers = random_centers(int(m), int(image_size), radius, generator)
    included = torch.rand(int(m), generator=generator) < 0.5
    return CanaryDesign(
        n_dataset=int(n_dataset), image_size=int(image_size), indices=tuple(int(i) for i in indices),
        centers=tuple((float(r), float(c)) for r, c in centers), included=tuple(bool(b) for b in included),
        radius=radius, grey=float(grey), seed=int(seed),
    )


def guess(scores: Sequence[float] | np.ndarray, k_plus: int, k_minus: int) -> np.ndarray:
    """The auditor's guesses (Steinke et al. 2023, §3): ``+1`` ("in") for the ``k_plus`` highest scores,
    ``−1`` ("out") for the ``k_minus`` lowest, ``0`` (abstain) for the rest, (m,) int8.

    Ties are broken by canary order (a stable sort), so the guesses depend on the scores only.

    Args:
        scores: one score per canary, higher → more likely trained on (e.g. t', or how often sampling
            returns the canary).
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite numbers (found NaN or inf); score an unseen canary e.g. 0")
    for name, k in (("k_plus", k_plus), ("k_minus", k_minus)):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"{name}={k!r}; allowed: a non-negative integer")
    if k_plus + k_minus > s.size:
        raise ValueError(f"k_plus + k_minus = {k_plus + k_minus} guesses exceed the {s.size} canaries")
    order = np.argsort(s, kind="stable")  # ascending
    out = np.zeros(s.size, dtype=np.int8)
    if k_minus:
        out[order[:k_minus]] = -1
    if k_plus:
        out[order[s.size - k_plus :]] = 1
    return out


def count_correct(guesses: Sequence[int] | np.ndarray, included: Sequence[bool] | np.ndarray) -> tuple[int, int]:
    """``(r, v)``: how many guesses were made (non-zero) and how many of them match the inclusion mask."""
    g = np.asarray(guesses).reshape(-1)
    truth = np.where(np.asarray(included, dtype=bool).reshape(-1), 1, -1)
    if g.shape != truth.shape:
        raise ValueError(f"{g.size} guesses for {truth.size} canaries")
    if not np.all(np.isin(g, (-1, 0, 1))):
        raise ValueError("guesses must be -1 (out), 0 (abstain) or +1 (in)")
    made = g != 0
    return int(made.sum()), int((g[made] == truth[made]).sum())


def _check_counts(m: int, r: int, v: int) -> None:
    if not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in (m, r, v)) or not 0 <= v <= r <= m:
        raise ValueError(f"need integers 0 <= v <= r <= m; got m={m!r}, r={r!r}, v={v!r}")


def p_value(m: int, r: int, v: int, epsilon: float, delta: float = 1e-5) -> float:
    """Probability of ≥ v correct guesses out of r if the training were (ε, δ)-DP (Steinke et al. 2023).

    Theorem 5.2: with ``f(u) = P[Binomial(r, q) ≥ u]``, ``q = e^ε / (1 + e^ε)`` (Theorem 3.1 for pure DP),
    ``P[W ≥ v] ≤ f(v) + 2 m δ · max_{1≤i≤v} (f(v − i) − f(v)) / i``, capped at 1 — their Appendix D
    ``p_value_DP_audit`` (the running sum there is ``f(v − i) − f(v) = P[v − i ≤ Binomial < v]``).
    """
    _check_counts(m, r, v)
    if not epsilon >= 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and 0 <= delta <= 1; got epsilon={epsilon!r}, delta={delta!r}")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    alpha = 0.0
    if v >= 1 and delta > 0:
        i = np.arange(1, v + 1)
        window = np.cumsum(binom.pmf(v - i, r, q))  # P[v - i <= Binomial < v], i = 1 … v
        alpha = float(np.max(window / i))
    return min(tail + alpha * delta * 2 * m, 1.0)


def epsilon_lower_bound(
    m: int, r: int, v: int, *, delta: float = 1e-5, confidence: float = 0.95, iterations: int = 60
) -> float:
    """The largest ε that the audit rejects at ``confidence``: ``p_value(ε) < 1 − confidence``.

    Steinke et al. 2023, Appendix D ``get_eps_audit``: grow ``ε_max`` by 1 until the p-value reaches
    ``1 − confidence``, then bisect (here ``iterations`` times). With ``confidence = β`` the training is not
    (ε, δ)-DP for any ε below the result, with probability ≥ β over the inclusion draw. 0 when even ε = 0
    is not rejected (e.g. guesses no better than coin flips); never negative.
    """
    _check_counts(m, r, v)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r}; allowed: a level in (0, 1)")
    if not 0 <= delta <= 1:
        raise ValueError(f"delta={delta!r}; allowed: [0, 1]")
    level = 1.0 - confidence
    if p_value(m, r, v, 0.0, delta) >= level:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) < level:
        lo, hi = hi, hi + 1.0
    for _ in range(int(iterations)):
        mid = 0.5 * (lo + hi)
        if p_value(m, r, v, mid, delta) < level:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class CanaryAudit:
    """One audit: ``r`` guesses, ``v`` correct, and the ε lower bound at ``(delta, confidence)``."""

    m: int
    k_plus: int
    k_minus: int
    r: int
    v: int
    epsilon: float
    delta: float
    confidence: float

    def __str__(self) -> str:
        return (f"ε ≥ {self.epsilon:.3f} at δ = {self.delta:g}, {self.confidence:.0%} confidence "
                f"({self.v}/{self.r} guesses right, m = {self.m})")


def audit(
    design: CanaryDesign,
    scores: Sequence[float] | np.ndarray,
    k_plus: int,
    k_minus: int,
    *,
    delta: float = 1e-5,
    confidence: float = 0.95,
) -> CanaryAudit:
    """Guess from one score per canary (:func:`guess`), count against the design's inclusion mask, and bound ε.

    ``k_plus`` and ``k_minus`` must be fixed before the scores are seen (choosing them by the outcome
    voids the confidence level).
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size != design.m:
        raise ValueError(f"{s.size} scores for a design of m = {design.m} canaries")
    r, v = count_correct(guess(s, k_plus, k_minus), design.included)
    eps = epsilon_lower_bound(design.m, r, v, delta=delta, confidence=confidence)
    return CanaryAudit(m=design.m, k_plus=int(k_plus), k_minus=int(k_minus), r=r, v=v, epsilon=eps,
                       delta=float(delta), confidence=float(confidence))


@dataclass(frozen=True)
class CanaryRun:
    """A canary audit of one trained model: the :class:`CanaryAudit`, its :class:`CanaryDesign` and each
    canary's score (float64 ``(m,)``). Unpacks as ``(audit, design, scores)``."""

    audit: CanaryAudit
    design: CanaryDesign
    scores: np.ndarray

    def __iter__(self):
        return iter((self.audit, self.design, self.scores))

    def __getitem__(self, index: int):
        return tuple(self)[index]


def audit_samples(design: CanaryDesign, images: torch.Tensor, samples: torch.Tensor, *,
                  delta: float = 1e-5) -> CanaryRun:
    """Score each canary by how close the closest sample comes to it, ``s_i = −min_j ‖c_i − x_j‖₂``, and
    audit with ``k_+ = k_- = ⌊m / 2⌋`` (every canary guessed, one abstaining when m is odd; fixed before the
    scores are seen, so a copy machine gets them all right).

    Args:
        design: the canaries the model was trained with.
        images: the clean ``N_D`` images the canaries were painted on, ``(N_D, C, H, W)`` in [0, 1].
        samples: the model's samples ``(n, C, H, W)`` in [0, 1].
    """
    painted = design.canaries(images)
    distance = torch.cdist(painted.flatten(1), samples.flatten(1)).min(dim=1).values
    scores = (-distance).numpy().astype(np.float64)
    k = design.m // 2
    return CanaryRun(audit(design, scores, k, k, delta=delta), design, scores)
