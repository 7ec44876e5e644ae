"""A class-conditional model under a :class:`~safcore.study.hub.Study`: its per-class samples, audit and probe.

A model whose :attr:`~safcore.generators.base.Generator.num_classes` is not ``None`` (diffusers
``UNet2DModel(num_class_embeds=K)``, MONAI ``DiffusionModelUNet(num_class_embeds=K)``) is audited per class
(:mod:`safcore.audit.classes`): ``n_c`` samples conditioned on each class ``c`` of ``D_p``'s labels (the fingerprint
folder's ``train_labels``, else the dataset's labels of ``D_p``), ``|q|`` of ``x_p``'s class against
``E|q| = n_c / N_c``, and Algorithm 1 runs the model conditioned on ``x_p``'s label. An unconditional model gets
``None`` / ``{}`` from every function here: its keys, draws and numbers stay what they were.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from safcore.audit.classes import class_labels, class_sample_counts
from safcore.generators.loader import as_generator

if TYPE_CHECKING:
    from safcore.study.hub import Study

__all__ = ["num_classes", "dp_labels", "x_p_label", "class_plan", "audit_labels", "probe_key"]


def num_classes(study: Study) -> int | None:
    """``K`` of the study's model under audit; ``None``: unconditional (or safcore's own model)."""
    return None if study.model is None else as_generator(study.model).num_classes


def dp_labels(study: Study) -> np.ndarray:
    """``(N_D,)`` class labels of ``D_p``: the fingerprint folder's ``train_labels`` (what the trainer read), else
    the dataset's labels of the images the study drew; checked against the model's ``K`` classes.

    Raises:
        ValueError: multi-label data, or a label the model has no class for."""
    labels = study.fingerprint.labels if study.fingerprint is not None else study._dp_labels()[0]
    labels = class_labels(labels, "D_p's labels (train_labels)")
    k = num_classes(study)
    if k is not None and int(labels.max()) >= k:
        raise ValueError(f"D_p holds class {int(labels.max())} but the model has num_class_embeds = {k}; allowed: "
                         f"labels 0 … {k - 1} (the model must be trained on these labels)")
    return labels


def x_p_label(study: Study) -> int | None:
    """``x_p``'s class (its label in ``D_p``) for a class-conditional model; ``None`` for an unconditional one."""
    return None if num_classes(study) is None else int(dp_labels(study)[study.private.index])


def class_plan(study: Study, n: int) -> tuple[tuple[int, int], ...] | None:
    """``((c, n_c), …)`` of ``n`` samples in proportion to ``D_p``'s labels (:func:`class_sample_counts`) for a
    class-conditional model; ``None`` for an unconditional one."""
    if num_classes(study) is None:
        return None
    classes, _, counts = class_sample_counts(dp_labels(study), n)
    return tuple(zip(classes, counts))


def audit_labels(study: Study, n: int, *, given: bool = False) -> dict:
    """What :func:`safcore.audit.sample_audit.audit` takes for the study's own ``n`` samples of a class-conditional
    model (``sample_labels`` in the blocks :func:`class_plan` drew, ``dataset_labels``, ``x_p_label``); ``{}``
    for an unconditional model. ``given``: the images were given (files), not drawn by the study; they carry no
    class, so a class-conditional model's are audited over all classes against ``n/N_D`` and the verdict says so
    (``{"unlabelled_classes": K}``)."""
    if given:
        k = num_classes(study)
        return {} if k is None else {"unlabelled_classes": k}
    plan = class_plan(study, n)
    if plan is None:
        return {}
    drawn = torch.cat([torch.full((k,), c, dtype=torch.long) for c, k in plan])
    return {"sample_labels": drawn, "dataset_labels": dp_labels(study), "x_p_label": x_p_label(study)}


def probe_key(study: Study, key: dict, step: int | None) -> tuple[dict, Callable[[], object]]:
    """``(key, load_model)`` of Algorithm 1 on the study's model at ``step``: a class-conditional model is probed
    conditioned on ``x_p``'s label, which its key records (``"class_label"``); an unconditional model's key and
    model are the study's as they were."""
    label = x_p_label(study)
    if label is None:
        return key, lambda: study.model_at(step)
    return {**key, "class_label": label}, lambda: as_generator(study.model_at(step)).conditioned(label)
