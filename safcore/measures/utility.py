"""Utility of released data: how well a classifier trained on it does on the real test split.

A defence that stops the SAF from coming back is only worth using if the released model (or images)
still teaches what the data is for. We measure it the way the synthetic-data literature does
(train on synthetic, test on real): a small ResNet (:class:`safcore.measures.features.DomainClassifier`, the
FID extractor's network and training) is trained on

* the real ``D_p`` with MedMNIST's labels (the reference),
* CADP's privatized images with their (released) labels, or
* the model's samples, labelled by the reference classifier (an unconditional model's samples carry no
  label; this is the pseudo-labelling of e.g. Ghalebikesabi et al. 2023's downstream evaluation),

and scored on the dataset's real test split by **balanced accuracy** (mean per-class recall; chance
is 1/K however unbalanced the split — BreastMNIST's test split is 73 % one class) or, for a
multi-label task, the mean per-label accuracy.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score

from safcore.measures.extractor_training import DomainExtractorConfig, train_domain_extractor

__all__ = ["UTILITY_CLASSIFIER", "train_label_classifier", "predict_labels", "score"]

#: The utility classifier's settings: the FID extractor's, with more epochs for a few dozen images.
UTILITY_CLASSIFIER = DomainExtractorConfig(epochs=100, max_steps=400, batch_size=64, lr=2e-3, shift=2, seed=0,
                                           bf16=False, num_threads=0)

Task = Literal["multi-class", "multi-label"]


def train_label_classifier(images: torch.Tensor, labels, *, task: Task, n_outputs: int,
                           config: DomainExtractorConfig = UTILITY_CLASSIFIER, progress: bool = False,
                           device: str | torch.device = "cpu") -> torch.nn.Module:
    """A :class:`~safcore.measures.features.DomainClassifier` trained on ``images`` (N, C, S, S) in [0, 1] with ``labels``
    ((N, 1) class indices or (N, L) 0/1), trained on ``device``; returned in eval mode on the CPU."""
    extractor = train_domain_extractor(images, labels, task=task, n_outputs=n_outputs, config=config,
                                       dataset_name="utility", progress=progress, device=device)
    return extractor.classifier.eval()


@torch.inference_mode()
def predict_labels(classifier: torch.nn.Module, images: torch.Tensor, *, task: Task, batch_size: int = 512) -> np.ndarray:
    """Labels in MedMNIST's layout: ``(N, 1)`` class indices, or ``(N, L)`` 0/1 for a multi-label task."""
    logits = torch.cat([classifier(images[i:i + batch_size].float()) for i in range(0, len(images), batch_size)])
    if task == "multi-label":
        return (logits > 0).long().numpy()
    return logits.argmax(1, keepdim=True).numpy()


def score(classifier: torch.nn.Module, images: torch.Tensor, labels, *, task: Task) -> float:
    """Balanced accuracy (multi-class) or mean per-label accuracy (multi-label) of ``classifier`` on ``images``."""
    predicted = predict_labels(classifier, images, task=task)
    truth = np.asarray(labels)
    if task == "multi-label":
        return float((predicted == truth).mean())
    return float(balanced_accuracy_score(truth.reshape(-1), predicted.reshape(-1)))


def with_seed(config: DomainExtractorConfig, seed: int) -> DomainExtractorConfig:
    return dataclasses.replace(config, seed=seed)
