"""The audit of a class-conditional model: how many samples of each class, and ``E|q|`` for ``x_p``'s class.

A class-conditional model (diffusers ``UNet2DModel(num_class_embeds=K)``, MONAI
``DiffusionModelUNet(num_class_embeds=K)``) is sampled per class, in proportion to ``D_p``'s labels: class ``c``,
carried by ``N_c`` of the ``N_D`` training images, gets ``n_c`` of the ``n`` samples by the largest-remainder
rule (:func:`class_sample_counts`)

    n_c = ⌊n · N_c / N_D⌋,  then the ``n − Σ_c n_c`` samples left go one each to the classes with the largest
    remainders ``n · N_c / N_D − n_c`` (ties: the larger ``N_c``, then the smaller label),

so ``Σ_c n_c = n`` and ``|n_c − n N_c / N_D| < 1``. Under the paper's H0 (§5.3) — every sample of class ``c``
reproduces one of the ``N_c`` training images of that class, each equally often — the count of ``x_p`` among the
``n_c`` samples of ``x_p``'s class is ``Binomial(n_c, 1/N_c)``: ``E|q| = n_c / N_c``, tested one-sided as the
unconditional ``n / N_D`` (:func:`safcore.measures.bounds.binomial_p_value`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["SCHEME", "ClassCounts", "class_labels", "class_sample_counts"]

SCHEME = ("n_c = floor(n N_c / N_D); the samples left go one each to the classes with the largest remainders "
          "(ties: the larger N_c, then the smaller label)")


def class_labels(labels, what: str = "D_p's labels") -> np.ndarray:
    """``(N,)`` int64 class labels of MedMNIST-layout labels ``(N,)`` or ``(N, 1)`` (one class per image).

    Raises:
        ValueError: multi-label ``(N, L > 1)`` labels, or labels that are not integers ≥ 0."""
    array = np.asarray(labels)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{what} have shape {tuple(np.shape(labels))}; allowed: (N,) or (N, 1), one class per image "
                         "(a class-conditional model is sampled per class)")
    if not np.issubdtype(array.dtype, np.integer) or int(array.min()) < 0:
        raise ValueError(f"{what} are {array.dtype} in [{array.min()}, {array.max()}]; allowed: integers ≥ 0")
    return array.astype(np.int64)


def class_sample_counts(labels, n: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """``(classes, N_c, n_c)``: ``D_p``'s classes ascending, the training images of each, and the samples each
    gets of ``n`` (:data:`SCHEME`, module docstring).

    Args:
        labels: ``(N_D,)`` or ``(N_D, 1)`` class labels of ``D_p``.
        n: samples in all (an integer ≥ 1)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n = {n!r} samples; allowed: an integer ≥ 1")
    classes, sizes = np.unique(class_labels(labels), return_counts=True)
    share = int(n) * sizes / sizes.sum()
    counts = np.floor(share).astype(np.int64)
    order = sorted(range(len(classes)), key=lambda i: (-(share[i] - counts[i]), -sizes[i], classes[i]))
    for i in order[: int(n) - int(counts.sum())]:
        counts[i] += 1
    return tuple(int(c) for c in classes), tuple(int(s) for s in sizes), tuple(int(c) for c in counts)


@dataclasses.dataclass(frozen=True)
class ClassCounts:
    """How a class-conditional model was sampled, and what ``x_p``'s class expects.

    Attributes:
        label: ``x_p``'s class (its label in the fingerprint folder).
        classes: ``D_p``'s classes, ascending.
        n_dataset: ``N_c``, training images of each class.
        n_samples: ``n_c``, samples drawn conditioned on each class (:func:`class_sample_counts`).
        n_q: q-positives among the ``n_c`` samples of ``x_p``'s class.
        scheme: how ``n_c`` was chosen (:data:`SCHEME`).
        n_xp_copies: nearest-neighbour copies of ``x_p`` among the ``n_c`` samples of ``x_p``'s class (``None``:
            no copy count, the training set was not given).
    """

    label: int
    classes: tuple[int, ...]
    n_dataset: tuple[int, ...]
    n_samples: tuple[int, ...]
    n_q: int
    scheme: str = SCHEME
    n_xp_copies: int | None = None

    def __post_init__(self) -> None:
        if not len(self.classes) == len(self.n_dataset) == len(self.n_samples) or self.label not in self.classes:
            raise ValueError(f"class {self.label!r} of classes {self.classes}, N_c {self.n_dataset}, n_c "
                             f"{self.n_samples}: one count per class, x_p's class among them")
        if not 0 <= self.n_q <= self.n_class:
            raise ValueError(f"|q| in class {self.label} = {self.n_q}; allowed: 0 … n_c = {self.n_class}")
        if self.n_xp_copies is not None and not 0 <= self.n_xp_copies <= self.n_class:
            raise ValueError(f"x_p copies in class {self.label} = {self.n_xp_copies}; allowed: 0 … n_c = {self.n_class}")

    @property
    def n_class(self) -> int:
        """``n_c`` of ``x_p``'s class."""
        return self.n_samples[self.classes.index(self.label)]

    @property
    def n_dataset_class(self) -> int:
        """``N_c`` of ``x_p``'s class."""
        return self.n_dataset[self.classes.index(self.label)]

    @property
    def expected_q(self) -> float:
        """``E|q| = n_c / N_c`` for ``x_p``'s class."""
        return self.n_class / self.n_dataset_class

    def to_dict(self) -> dict:
        """Plain JSON: x_p's class, its counts, and ``{class: {"N_c", "n_c"}}``."""
        return {"label": self.label, "n_class": self.n_class, "N_class": self.n_dataset_class, "|q| in class": self.n_q,
                "E|q|": self.expected_q, "scheme": self.scheme, "x_p copies in class": self.n_xp_copies,
                "per_class": {str(c): {"N_c": N, "n_c": k} for c, N, k in zip(self.classes, self.n_dataset,
                                                                              self.n_samples)}}

    def __str__(self) -> str:
        per = ", ".join(f"{c}: {k}/{N}" for c, N, k in zip(self.classes, self.n_dataset, self.n_samples))
        return (f"class-conditional: x_p's class {self.label}, n_c {self.n_class} of N_c {self.n_dataset_class} "
                f"(E|q| = {self.expected_q:.3g}, |q| in class {self.n_q}); samples/training images per class {per}")
