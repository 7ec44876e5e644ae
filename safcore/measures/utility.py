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
multi-label task, the mean per-label accuracy. :func:`stored_reference` and :func:`stored_utility` keep the
reference classifier and the scores in the run store.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score

from safcore.measures.extractor_training import DomainExtractorConfig, train_domain_extractor
from safcore.measures.features import DomainClassifier
from safcore.runtime.runs import RunStore, atomic_save_safetensors, atomic_write

__all__ = ["UTILITY_CLASSIFIER", "train_label_classifier", "predict_labels", "score", "stored_reference",
           "stored_utility"]

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


def stored_reference(store: RunStore, data_config: dict, images: torch.Tensor, labels, *, task: Task, n_outputs: int,
                     device: torch.device) -> torch.nn.Module:
    """The classifier trained on the real ``D_p`` ``images`` ``(N_D, C, S, S)`` with their ``labels`` ("train on
    real"), kept in the run store under ``data_config`` (what ``D_p`` depends on): the reference every defence's
    utility is compared with, and the labeller of a model's samples. In eval mode on ``device``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    config = {**data_config, "task": task, "n_outputs": n_outputs,
              "classifier": dataclasses.asdict(UTILITY_CLASSIFIER), "version": 1}

    def make(tmp: Path) -> None:
        classifier = train_label_classifier(images, labels, task=task, n_outputs=n_outputs, device=device)
        metadata = {"in_channels": str(images.shape[1]), "image_size": str(images.shape[-1])}
        atomic_save_safetensors({k: v.contiguous() for k, v in classifier.state_dict().items()},
                                tmp / "classifier.safetensors", metadata)

    run = store.get_or_create("utility_reference", config, make, seed=UTILITY_CLASSIFIER.seed)
    with safe_open(str(run.file("classifier.safetensors")), framework="pt") as handle:
        meta = handle.metadata() or {}
    classifier = DomainClassifier(int(meta["in_channels"]), n_outputs, UTILITY_CLASSIFIER.widths,
                                  image_size=int(meta["image_size"]))
    classifier.load_state_dict(load_file(run.file("classifier.safetensors")))
    return classifier.to(device).eval()


def stored_utility(store: RunStore, model_config: dict, samples: torch.Tensor, *,
                   reference: Callable[[], torch.nn.Module], labels, test: torch.Tensor, test_labels, task: Task,
                   n_outputs: int, device: torch.device,
                   privatized: Callable[[], torch.Tensor] | None = None, seed: int = 0) -> dict[str, float]:
    """Balanced test accuracy (:func:`score`) of classifiers trained on the real ``D_p`` (``"real"``, the
    ``reference``), on the model's ``samples`` labelled by the reference (``"samples"``) and, when given, on
    the ``privatized`` ``D_p`` with its ``labels`` (``"privatized"``); ``"chance"`` is ``1/K`` (NaN for a
    multi-label task). Kept in the run store under the model's ``model_config`` and ``len(samples)``.

    Args:
        samples: ``(n, C, S, S)`` in [0, 1]; test, test_labels: the real test split and its labels.
        reference, privatized: called only when the scores are not stored yet.
    """
    config = {"model": model_config, "n": int(samples.shape[0]),
              "classifier": dataclasses.asdict(UTILITY_CLASSIFIER), "version": 1}

    def make(tmp: Path) -> dict:
        def fit(images, y):
            return train_label_classifier(images, y, task=task, n_outputs=n_outputs, device=device)

        real = reference().cpu()
        result = {"real": score(real, test, test_labels, task=task)}
        pseudo = predict_labels(real, samples, task=task)
        result["samples"] = score(fit(samples, pseudo), test, test_labels, task=task)
        if privatized is not None:
            result["privatized"] = score(fit(privatized(), labels), test, test_labels, task=task)
        result["chance"] = 1.0 / n_outputs if task == "multi-class" else float("nan")
        atomic_write(tmp / "utility.json", json.dumps(result, indent=2))
        return result

    run = store.get_or_create("utility", config, make, seed=seed)
    return json.loads(run.file("utility.json").read_text())
