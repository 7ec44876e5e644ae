"""The adversary: ``c_p`` (does an image carry the SAF?) and ``c_id`` (is it ``x_p``?), paper §3.3, §5.2, App. A.

Both are randomly initialised torchvision ResNets (``resnet18`` for quick profiles, ``resnet50`` as in
the paper) with one logit trained with ``BCEWithLogits``. Training follows appendix A:

* ``c_p`` sees real images (``D_p`` without ``x_p`` for training, held-out images for validation); each
  gets an SAF (Eq. 10, the SAF's disc at a random place inside the image) with probability 0.5 in
  training and 0.1 in validation. Label = "has an SAF".
* ``c_id`` is one-against-all: the positive is ``x_p``, the negatives are the other training images;
  ``x_p`` is drawn with probability 0.1 in training and 0.5 in validation. Its training images get
  random circular masking with discs of the SAF's shape (filled with the SAF's grey, see
  :class:`ClassifierConfig`), AugMix, and Gaussian noise against diffusion artefacts.

Both use AugMix (torchvision, per image), early stopping on the validation loss with the best
weights kept (BatchNorm statistics are recomputed before every validation: with few images the
running averages lag and eval-mode predictions break), and a decision threshold chosen on the
validation data (maximal balanced accuracy). A trained :class:`Classifier`
is a callable ``(B, C, H, W)`` unit-range images → bool ``(B,)``: the audit/probe boundary. What each
classifier is trained on (SAF batches, the ``c_id`` stream and its augmentations) is built in
:mod:`safcore.adversary.augment`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import torch
import torchvision
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from safcore.runtime.checks import check_seed
from safcore.runtime.device import batches_ahead, resolve_device
from safcore.data.datasets import to_model_range
from safcore.data.fingerprint import PrivateDataset, SAFConfig
from safcore.runtime.progress import progress_bar
from safcore.runtime.runs import atomic_save_safetensors, atomic_write
from safcore.adversary.augment import (  # noqa: F401  (re-exported: see __all__)
    AugmentedExamples,
    augmented_examples,
    augmix_images,
    id_augment,
    id_samples,
    saf_batch,
)

__all__ = [
    "ClassifierConfig", "Classifier", "ImageClassifier", "build_resnet", "choose_threshold", "recalibrate_batchnorm",
    "train_saf_classifier", "train_id_classifier", "saf_accuracy", "id_accuracy",
    # what each classifier sees (safcore.adversary.augment), re-exported
    "augmix_images", "saf_batch", "id_augment", "id_samples", "AugmentedExamples", "augmented_examples",
]

Arch = Literal["resnet18", "resnet50"]
Kind = Literal["saf", "id"]
ARCHS: tuple[str, ...] = ("resnet18", "resnet50")
KINDS: tuple[str, ...] = ("saf", "id")
WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "classifier.json"
FORMAT_VERSION = 1
BN_RECALIBRATION_BATCHES = 8

ImageClassifier = Callable[[torch.Tensor], torch.Tensor]
"""Any callable ``(B, C, H, W)`` unit-range float images → bool ``(B,)`` (the audit/probe boundary)."""


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """How ``c_p`` and ``c_id`` are built and trained (paper §5.2 and appendix A).

    Args:
        arch: ``"resnet18"`` (smoke/CPU profiles) or ``"resnet50"`` (the paper).
        stem_stride: stride of the 3×3 stem convolution. ``1`` keeps the full 28×28 resolution in the
            first stage (the usual CIFAR-style adaptation); ``2`` halves it, about 4× cheaper on a CPU.
        norm: ``"batch"`` (torchvision's BatchNorm) or ``"group"`` (GroupNorm with 32 groups, no
            running statistics: train and eval behave alike, which helps with a handful of images).
        epochs: maximum number of epochs.
        patience: stop after this many epochs without a lower validation loss (paper: 20).
        min_delta: a validation loss counts as lower only when it drops by more than this (so a
            ``c_id`` whose loss is already ~0 stops instead of chasing 1e-6 improvements).
        epoch_size: training samples per epoch; ``None`` → one pass over the training images
            (``c_p``) or over the one-against-all stream (``c_id``). With a small ``N_D`` a larger
            value gives each epoch enough optimiser steps (images are reused with new augmentations).
        batch_size: training batch size (prediction uses its own batching).
        lr, weight_decay: AdamW settings.
        augmix: apply torchvision AugMix to every training image (paper §5.2).
        augmix_severity: AugMix's ``severity`` (1–10, torchvision default 3).
        noise_std: ``c_id`` only: each training image gets Gaussian noise of a std drawn uniformly
            from ``[0, noise_std]`` (robustness to diffusion artefacts, paper §5.2); 0 turns it off.
        saf_noise_std: the same noise for ``c_p``'s training images (not in the paper, hence 0 by
            default); makes ``c_p`` accept slightly noisy SAFs as generated images have them.
        mask_probability: ``c_id`` only: probability that a training image gets one disc of the SAF's
            shape at a random place, filled with the SAF's grey (paper §5.2, "random masking with
            the same circular patches"). The grey fill is our choice: it makes a grey disc useless as
            evidence for identity, so ``c_id`` must recognise ``x_p``'s anatomy and leaves detecting
            the SAF to ``c_p`` (so ``x_p`` without its SAF is still ``c_id``-positive, and another
            image with an SAF is not).
        saf_p_train, saf_p_val: probability that a ``c_p`` training / validation image carries an
            SAF (appendix A: 0.5 / 0.1). Validation uses exactly ``round(p · n)`` (at least one).
        id_p_train, id_p_val: probability that a ``c_id`` training / validation sample is ``x_p``
            (appendix A: 0.1 / 0.5).
        seed: seeds the initial weights, the SAF/mask places, labels, AugMix and noise.
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device``
            (recorded by its name).
    """

    arch: Arch = "resnet18"
    stem_stride: Literal[1, 2] = 1
    norm: Literal["batch", "group"] = "batch"
    epochs: int = 100
    patience: int = 20
    min_delta: float = 1e-4
    epoch_size: int | None = None
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    augmix: bool = True
    augmix_severity: int = 3
    noise_std: float = 0.05
    saf_noise_std: float = 0.0
    mask_probability: float = 0.5
    saf_p_train: float = 0.5
    saf_p_val: float = 0.1
    id_p_train: float = 0.1
    id_p_val: float = 0.5
    seed: int = 0
    device: str | torch.device = "auto"

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch {self.arch!r} is not supported; allowed: {ARCHS}")
        if self.norm not in ("batch", "group"):
            raise ValueError(f"norm {self.norm!r} is not supported; allowed: 'batch', 'group'")
        if self.stem_stride not in (1, 2):
            raise ValueError(f"stem_stride {self.stem_stride!r} is not allowed; allowed: 1 or 2")
        check_seed(self.seed, "seed (ClassifierConfig)")
        for name in ("epochs", "patience", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} = {value!r} must be an integer ≥ 1")
        if not self.min_delta >= 0:
            raise ValueError(f"min_delta = {self.min_delta!r} must be ≥ 0")
        if self.epoch_size is not None and (not isinstance(self.epoch_size, int) or self.epoch_size < 1):
            raise ValueError(f"epoch_size = {self.epoch_size!r} must be None or an integer ≥ 1")
        if not 1 <= self.augmix_severity <= 10:
            raise ValueError(f"augmix_severity = {self.augmix_severity!r} must lie in [1, 10]")
        if not self.lr > 0:
            raise ValueError(f"lr = {self.lr!r} must be > 0")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay = {self.weight_decay!r} must be ≥ 0")
        for name in ("noise_std", "saf_noise_std"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} = {getattr(self, name)!r} must be ≥ 0")
        for name in ("mask_probability", "saf_p_train", "saf_p_val"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} = {value!r} must lie in [0, 1]")
        for name in ("id_p_train", "id_p_val"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} = {value!r} must lie in (0, 1): c_id needs positives and negatives")
        resolve_device(self.device)


def build_resnet(
    arch: Arch, in_channels: int, stem_stride: Literal[1, 2] = 1, norm: Literal["batch", "group"] = "batch"
) -> nn.Module:
    """A randomly initialised torchvision ResNet with one output logit, adapted to small images.

    ``torchvision.models.resnet18/50(weights=None, num_classes=1)`` (nothing is downloaded) with its
    7×7 stride-2 stem convolution replaced by a 3×3 convolution of stride ``stem_stride`` taking
    ``in_channels`` channels (1 grey, 3 RGB), and its max-pool removed: at stride 1 the four stages
    see 28, 14, 7 and 4 px of a 28 px image instead of 7, 4, 2 and 1 px. The global average pool
    takes any size, so the same network serves 64 and 128 px images (stages at 64/32/16/8 and
    128/64/32/16 px at stride 1), at 5× and 21× the 28 px cost. ``norm="group"`` swaps every
    BatchNorm for a 32-group GroupNorm. Input: ``(B, in_channels, H, W)`` in model range; output
    ``(B, 1)`` logits.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch {arch!r} is not supported; allowed: {ARCHS}")
    if in_channels < 1:
        raise ValueError(f"in_channels = {in_channels!r} must be ≥ 1")
    kwargs = {} if norm == "batch" else {"norm_layer": lambda channels: nn.GroupNorm(32, channels)}
    net = getattr(torchvision.models, arch)(weights=None, num_classes=1, **kwargs)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=stem_stride, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    return net


def _check_images(images: torch.Tensor, what: str, channels: int | None = None, size: int | None = None) -> None:
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor of shape (B, C, H, W), got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"{what} must have shape (B, C, H, W), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{what} is empty (shape {tuple(images.shape)}); at least one image is needed")
    if channels is not None and images.shape[1] != channels:
        raise ValueError(f"{what} have {images.shape[1]} channels, the classifier expects {channels}")
    if size is not None and tuple(images.shape[-2:]) != (size, size):
        raise ValueError(f"{what} are {images.shape[-2]}×{images.shape[-1]} px; the classifier was trained on "
                         f"{size}×{size} px images")
    if not images.is_floating_point():
        raise ValueError(f"{what} must be float images in [0, 1], got dtype {images.dtype}")


class Classifier:
    """A trained ``c_p`` or ``c_id``: unit-range images ``(B, C, H, W)`` → bool ``(B,)``.

    Attributes:
        model: the ResNet (:func:`build_resnet`), in eval mode on ``device``.
        config: the :class:`ClassifierConfig` it was trained with.
        kind: ``"saf"`` (``c_p``) or ``"id"`` (``c_id``).
        in_channels, image_size: the input shape it accepts.
        threshold: decision threshold on the sigmoid probability, chosen on validation data.
        history: one dict per epoch with ``epoch``, ``train_loss``, ``train_acc``, ``val_loss``,
            ``val_acc`` (accuracies at probability 0.5), for training curves (``pd.DataFrame(history)``).
        best_epoch: the epoch whose weights were kept (lowest validation loss), 1-based.
    """

    def __init__(
        self,
        model: nn.Module,
        config: ClassifierConfig,
        *,
        kind: Kind,
        in_channels: int,
        image_size: int,
        threshold: float = 0.5,
        history: list[dict] | None = None,
        best_epoch: int = 0,
        device: str | torch.device | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"classifier kind {kind!r} is not known; allowed: {KINDS}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold {threshold!r} must lie in [0, 1]")
        self.device = resolve_device(config.device) if device is None else torch.device(device)
        self.model = model.to(self.device).eval()
        self.config = config
        self.kind = kind
        self.in_channels = int(in_channels)
        self.image_size = int(image_size)
        self.threshold = float(threshold)
        self.history = list(history or [])
        self.best_epoch = int(best_epoch)

    def __repr__(self) -> str:
        name = "c_p" if self.kind == "saf" else "c_id"
        return (
            f"Classifier({name}, {self.config.arch}, in_channels={self.in_channels}, "
            f"threshold={self.threshold:.3f}, best_epoch={self.best_epoch})"
        )

    def logits(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Logits ``(B,)`` (float32, on the images' device) for unit-range images ``(B, C, H, W)``."""
        _check_images(images, "images", self.in_channels, self.image_size)
        self.model.eval()
        out = []
        with torch.inference_mode():
            for start in range(0, images.shape[0], batch_size):
                batch = images[start : start + batch_size].to(self.device, torch.float32)
                out.append(self.model(to_model_range(batch)).squeeze(1).float().to(images.device))
        return torch.cat(out)

    def probability(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Sigmoid probability ``(B,)`` that each image is positive (has the SAF / is ``x_p``)."""
        return torch.sigmoid(self.logits(images, batch_size))

    def __call__(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Decisions ``probability > threshold``: bool ``(B,)``."""
        return self.probability(images, batch_size) > self.threshold

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``weights.safetensors`` and ``classifier.json`` (config, threshold, history) atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_save_safetensors(self.model.state_dict(), directory / WEIGHTS_FILE, metadata={"kind": self.kind})
        record = {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "config": {**dataclasses.asdict(self.config), "device": str(self.config.device)},
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "threshold": self.threshold,
            "best_epoch": self.best_epoch,
            "history": self.history,
        }
        atomic_write(directory / CONFIG_FILE, json.dumps(record, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | torch.device | None = None) -> Classifier:
        """Read a classifier written by :meth:`save` (``device`` overrides the config's)."""
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        if not config_path.is_file() or not weights_path.is_file():
            raise ValueError(f"{str(directory)!r} is not a saved classifier: it needs {CONFIG_FILE} and {WEIGHTS_FILE}")
        record = json.loads(config_path.read_text())
        if record.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{config_path} has format_version {record.get('format_version')!r}; this safcore reads {FORMAT_VERSION}")
        config = ClassifierConfig(**record["config"])
        model = build_resnet(config.arch, record["in_channels"], config.stem_stride, config.norm)
        model.load_state_dict(load_file(weights_path), strict=True)
        return cls(
            model,
            config,
            kind=record["kind"],
            in_channels=record["in_channels"],
            image_size=record["image_size"],
            threshold=record["threshold"],
            history=record["history"],
            best_epoch=record["best_epoch"],
            device=device,
        )


# --------------------------------------------------------------------------------------------
# Training


def choose_threshold(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    """The threshold on ``probabilities`` ``(N,)`` that maximises balanced accuracy on ``labels``.

    Candidates are 0.5 and the midpoints between consecutive distinct probabilities; ties go to the
    candidate closest to 0.5. Degenerate cases (one class only, or no candidate better than 0.5)
    return 0.5, the plain sigmoid decision.
    """
    labels = labels.bool()
    if labels.all() or not labels.any():
        return 0.5
    values = torch.unique(probabilities.double())
    candidates = torch.cat([torch.tensor([0.5], dtype=torch.float64), (values[1:] + values[:-1]) / 2])
    pred = probabilities.double()[None, :] > candidates[:, None]
    tpr = (pred & labels[None]).sum(1).double() / labels.sum()
    tnr = (~pred & ~labels[None]).sum(1).double() / (~labels).sum()
    balanced = (tpr + tnr) / 2
    best = balanced.max()
    tied = candidates[balanced >= best - 1e-12]
    return float(tied[(tied - 0.5).abs().argmin()])


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Recompute every BatchNorm's running mean/variance as the plain average over ``batches``
    (model-range inputs) with the current weights ("precise BN").

    The usual running averages (momentum 0.1) lag behind weights that change quickly, which on small
    data sets makes eval-mode predictions useless (e.g. ``c_id`` scoring ``x_p`` 0.27 in eval mode and
    0.92 in train mode); recalibrated statistics fix that. No-op for a model without BatchNorm.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or not batches:
        return
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for batch in batches:
        model(batch)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)


def _fit(
    model: nn.Module,
    train_batches: Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]],
    val_images: torch.Tensor,
    val_labels: torch.Tensor,
    config: ClassifierConfig,
    device: torch.device,
    desc: str,
    progress: bool,
) -> tuple[list[dict], int, float]:
    """AdamW on BCE-with-logits with early stopping on the validation loss; loads the best weights
    into ``model`` and returns ``(history, best_epoch, threshold)``.

    Before each validation the BatchNorm statistics are recomputed on the epoch's last
    ``BN_RECALIBRATION_BATCHES`` training batches (:func:`recalibrate_batchnorm`).
    """
    model.to(device)
    # fused: one kernel for all parameters, ~2.5x faster than the default per-tensor loop on a CPU
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
    history: list[dict] = []
    best_loss, best_epoch, best_state = math.inf, 0, copy.deepcopy(model.state_dict())
    best_probs = None
    bar = progress_bar(range(1, config.epochs + 1), desc=desc, enabled=progress, leave=False)
    for epoch in bar:
        model.train()
        total, correct, count = 0.0, 0, 0
        recent: list[torch.Tensor] = []
        # the next batches are painted / augmented on the CPU while the device trains (on CUDA; pinned memory)
        for images, labels in batches_ahead(train_batches(epoch), device):
            inputs = to_model_range(images)
            logits = model(inputs).squeeze(1)
            loss = F.binary_cross_entropy_with_logits(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * labels.shape[0]
            correct += int(((logits.detach() > 0).float() == labels).sum())
            count += labels.shape[0]
            recent = (recent + [inputs])[-BN_RECALIBRATION_BATCHES:]
        recalibrate_batchnorm(model, recent)
        model.eval()
        logits = []
        with torch.inference_mode():
            for start in range(0, val_images.shape[0], 256):
                batch = val_images[start : start + 256].to(device)
                logits.append(model(to_model_range(batch)).squeeze(1).float().cpu())
        logits = torch.cat(logits)
        val_loss = float(F.binary_cross_entropy_with_logits(logits, val_labels))
        val_acc = float(((logits > 0).float() == val_labels).float().mean())
        history.append(
            {"epoch": epoch, "train_loss": total / max(count, 1), "train_acc": correct / max(count, 1),
             "val_loss": val_loss, "val_acc": val_acc}
        )
        bar.set_postfix(train_loss=f"{total / max(count, 1):.3f}", val_loss=f"{val_loss:.3f}", val_acc=f"{val_acc:.3f}")
        if val_loss < best_loss - config.min_delta:
            best_loss, best_epoch, best_probs = val_loss, epoch, torch.sigmoid(logits)
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= config.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    threshold = choose_threshold(best_probs, val_labels) if best_probs is not None else 0.5
    return history, best_epoch, threshold


def _batches(images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, images.shape[0], batch_size):
        yield images[start : start + batch_size]


def train_saf_classifier(
    train_images: torch.Tensor,
    val_images: torch.Tensor,
    saf: SAFConfig = SAFConfig(),
    config: ClassifierConfig = ClassifierConfig(),
    progress: bool = True,
) -> Classifier:
    """Train ``c_p``: "does this image carry the SAF?" (paper §3.3, appendix A).

    Args:
        train_images: ``(N, C, H, W)`` unit range, real images without any SAF — ``D_p`` minus ``x_p``.
        val_images: ``(M, C, H, W)`` held-out real images (e.g. MedMNIST's validation split).
        saf: the fingerprint's shape and grey (``radius=None`` → the default for the image size).
        config: training settings; SAFs go on ``saf_p_train`` of the training images (redrawn each
            epoch, random places) and on exactly ``saf_p_val`` of the validation images (fixed).
    Returns:
        the :class:`Classifier` with the best-validation-loss weights and a threshold maximising
        balanced accuracy on the validation set.
    """
    _check_images(train_images, "train_images")
    _check_images(val_images, "val_images", train_images.shape[1])
    if train_images.shape[-2:] != val_images.shape[-2:]:
        raise ValueError(f"train images are {tuple(train_images.shape[-2:])} px, val images {tuple(val_images.shape[-2:])} px")
    size = int(train_images.shape[-1])
    radius = saf.resolved_radius(size)
    device = resolve_device(config.device)
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_resnet(config.arch, train_images.shape[1], config.stem_stride, config.norm)
        val_x, val_y = saf_batch(val_images.float().cpu(), config.saf_p_val, radius, saf.grey, generator, exact=True)
        train_cpu = train_images.float().cpu()

        def train_batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            n = train_cpu.shape[0]
            passes = math.ceil((config.epoch_size or n) / n)
            order = torch.cat([torch.randperm(n, generator=generator) for _ in range(passes)])[: config.epoch_size or n]
            for batch in _batches(train_cpu[order], config.batch_size):
                yield saf_batch(
                    batch, config.saf_p_train, radius, saf.grey, generator,
                    augmix=config.augmix, severity=config.augmix_severity, noise_std=config.saf_noise_std,
                )

        history, best_epoch, threshold = _fit(model, train_batches, val_x, val_y, config, device, "c_p", progress)
    return Classifier(
        model, config, kind="saf", in_channels=train_images.shape[1], image_size=size,
        threshold=threshold, history=history, best_epoch=best_epoch, device=device,
    )


def train_id_classifier(
    private: PrivateDataset,
    config: ClassifierConfig = ClassifierConfig(),
    progress: bool = True,
    *,
    val_images: torch.Tensor | None = None,
) -> Classifier:
    """Train ``c_id``: "is this ``x_p``?", one against all on ``D_p`` (paper §3.3, appendix A).

    Training slots are ``x_p`` with probability ``id_p_train`` and otherwise the other images of
    ``D_p``; every training image is augmented by :func:`id_augment` (grey discs of the SAF's shape,
    AugMix, Gaussian noise). Validation: ``x_p`` with probability ``id_p_val`` against the negatives
    — ``val_images`` if given (held-out images), else the other images of ``D_p`` — augmented once
    with a fixed seed.

    Args:
        private: ``D_p`` with ``x_p`` (:func:`safcore.data.fingerprint.make_private_dataset`).
        val_images: optional ``(M, C, H, W)`` held-out negatives for validation.
    """
    _check_images(private.images, "private.images")
    others = private.others.float().cpu()
    if others.shape[0] == 0:
        raise ValueError("D_p holds only x_p: c_id needs other training images as negatives")
    if val_images is not None:
        _check_images(val_images, "val_images", others.shape[1])
    size = int(others.shape[-1])
    device = resolve_device(config.device)
    generator = torch.Generator().manual_seed(config.seed)

    def augment(images: torch.Tensor) -> torch.Tensor:
        return id_augment(
            images, private.radius, private.grey, generator, mask_probability=config.mask_probability,
            noise_std=config.noise_std, augmix=config.augmix, severity=config.augmix_severity,
        )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_resnet(config.arch, others.shape[1], config.stem_stride, config.norm)
        negatives = others if val_images is None else val_images.float().cpu()
        val_x, val_y = id_samples(private, negatives, config.id_p_val, generator, exact=True)
        val_x = augment(val_x)

        def train_batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            images, labels = id_samples(private, others, config.id_p_train, generator, min_slots=config.epoch_size)
            for start in range(0, images.shape[0], config.batch_size):
                yield augment(images[start : start + config.batch_size]), labels[start : start + config.batch_size]

        history, best_epoch, threshold = _fit(model, train_batches, val_x, val_y, config, device, "c_id", progress)
    return Classifier(
        model, config, kind="id", in_channels=others.shape[1], image_size=size,
        threshold=threshold, history=history, best_epoch=best_epoch, device=device,
    )


# --------------------------------------------------------------------------------------------
# Tab. 2's accuracies


def saf_accuracy(c_p: ImageClassifier, test_images: torch.Tensor, saf: SAFConfig = SAFConfig(), seed: int = 0) -> float:
    """Tab. 2's "SAF (%)" as a fraction: ``c_p``'s accuracy on ``test_images`` ``(N, C, H, W)`` with
    SAFs painted at random places on exactly half of them (``seed`` picks which and where)."""
    _check_images(test_images, "test_images")
    radius = saf.resolved_radius(int(test_images.shape[-1]))
    generator = torch.Generator().manual_seed(seed)
    images, labels = saf_batch(test_images.float(), 0.5, radius, saf.grey, generator, exact=True)
    return float((c_p(images).cpu() == labels.bool()).float().mean())


def id_accuracy(c_id: ImageClassifier, private: PrivateDataset) -> float:
    """Tab. 2's "ID (%)" as a fraction: ``c_id``'s accuracy on its own training set ``D_p``
    (``x_p`` labelled positive, the other ``N_D − 1`` images negative)."""
    labels = torch.zeros(private.n, dtype=torch.bool)
    labels[private.index] = True
    return float((c_id(private.images.float()).cpu() == labels).float().mean())
