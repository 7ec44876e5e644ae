"""Sample quality of generated images: FID with Inception or a domain feature extractor.

Images are unit-range float tensors of shape ``(B, C, S, S)`` (``C`` = 1 or 3, ``S`` = 28, 64 or 128 px),
as everywhere at safcore's module boundaries.

**FID** (Heusel et al. 2017; Tab. 2 of the paper reports ``FID_train`` and ``FID_test``) is computed by
torchmetrics' :class:`~torchmetrics.image.fid.FrechetInceptionDistance`,
``‖μ_r − μ_f‖² + Tr(Σ_r + Σ_f − 2 (Σ_r Σ_f)^{1/2})``, over the features of one of two extractors:

- ``"inception"`` — torch-fidelity's InceptionV3 (the standard FID network, 2048-d pool features,
  images resized to 299 px). Its weights are **never downloaded**: they are used only when the file
  is on disk, at ``$SAFCORE_INCEPTION_WEIGHTS`` or in torch hub's cache
  (``<torch.hub.get_dir()>/checkpoints/weights-inception-2015-12-05-6726825d.pth``). Otherwise
  :class:`InceptionUnavailableError` says how to provide them.
- ``"domain"`` — :class:`DomainFeatureExtractor`: a small ResNet (torchvision ``BasicBlock``s, widths
  16/32/64 at 28/14/7 px; 64 and 128 px images enter through a strided stem, 2 and 4, so its stages
  see 32/16/8 px at every size), trained by safcore on the dataset's own MedMNIST
  label task (``INFO[flag]["task"]``; train split, history on val), whose penultimate 64-d features
  (global average pool) replace Inception's. It is trained once per
  dataset and configuration and cached as safetensors in a folder the caller chooses. Its FID values
  are comparable with each other (same dataset, same extractor), **not** with Inception FIDs
  published elsewhere: as a baseline, train vs test split of the real data gives 0.17 on
  BreastMNIST and 0.66 on PneumoniaMNIST, train vs test with Gaussian noise (σ = 0.1) 101 and 78
  (default :class:`DomainExtractorConfig`, seed 0; measured on the whole splits, before the equal-size
  draw below became the default). Training takes ~35–40 s on two CPU cores.
- ``"auto"`` — Inception when its weights are available, else the domain extractor.

:class:`FIDResult` records which extractor was used, so a table can say so. **A domain-extractor FID
in safcore's Tab. 2 is not comparable with the Inception FIDs in the paper's Tab. 2**: it is a
distance between other features (64-d, trained by safcore on the dataset's labels) and has its own
scale, so only its order across models and splits of one dataset means something.

**Equal sizes.** FID is biased upwards by small samples, and by an amount that depends on the number
of images on each side, so two FIDs are comparable only when they are computed from the same numbers
of images. :func:`fid` therefore by default (``equal_sizes=True``) draws the larger side down to the
size of the smaller one (or both sides down to ``n_per_side``) with :func:`subsample`: a seeded draw
without replacement, never an up-sampling. ``FID_train`` and ``FID_test`` are computed with the same
``n`` on both sides for this reason (see :meth:`safcore.study.hub.Study.fid`); :class:`FIDResult` records
the sizes used, the sizes drawn from and the seed.

Memorization (nearest neighbours, Carlini copies, MAE/MSE) lives in :mod:`safcore.measures.memorization`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock
from safetensors.torch import load_file
from torch import nn
from torchvision.models.resnet import BasicBlock

from safcore.data.datasets import label_task
from safcore.runtime.device import bf16_autocast
from safcore.runtime.progress import progress_bar

if TYPE_CHECKING:
    from safcore.data.datasets import MedMNISTData

log = logging.getLogger(__name__)

ExtractorChoice = Literal["auto", "inception", "domain"]
LabelTask = Literal["multi-class", "multi-label"]

INCEPTION_WEIGHTS_ENV = "SAFCORE_INCEPTION_WEIGHTS"
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)


# --------------------------------------------------------------------------------------------------
# Feature extractors
# --------------------------------------------------------------------------------------------------


class FeatureExtractor(nn.Module):
    """An FID feature network: unit-range images ``(B, C, H, W)`` → features ``(B, num_features)``.

    It never leaves evaluation mode and has no trainable parameters, so torchmetrics can call it
    inside :class:`~torchmetrics.image.fid.FrechetInceptionDistance` (``normalize=True``: the float
    images are handed to it unchanged). ``name`` is what :class:`FIDResult` reports.
    """

    name: str
    num_features: int

    def train(self, mode: bool = True) -> FeatureExtractor:  # noqa: D102 - always eval
        return super().train(False)


class InceptionUnavailableError(RuntimeError):
    """Inception FID was asked for but torch-fidelity or its InceptionV3 weights are not on this machine."""


def inception_weights_path() -> Path | None:
    """The local torch-fidelity InceptionV3 weights file, or ``None`` if there is none.

    Looks at ``$SAFCORE_INCEPTION_WEIGHTS`` first, then at the file name torch hub would have cached
    it under (``<torch.hub.get_dir()>/checkpoints/``). Never downloads.

    Raises:
        InceptionUnavailableError: ``$SAFCORE_INCEPTION_WEIGHTS`` is set but names no file.
    """
    env = os.environ.get(INCEPTION_WEIGHTS_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise InceptionUnavailableError(
                f"${INCEPTION_WEIGHTS_ENV}={env!r} does not name a file; point it at torch-fidelity's "
                f"{INCEPTION_WEIGHTS_FILE} (from {INCEPTION_WEIGHTS_URL}) or unset it"
            )
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    return cached if cached.is_file() else None


def inception_available() -> bool:
    """Whether :class:`InceptionFeatureExtractor` can be built here (torch-fidelity and weights present)."""
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        return False
    try:
        return inception_weights_path() is not None
    except InceptionUnavailableError:
        return False


def _inception_help() -> str:
    return (
        f"Download {INCEPTION_WEIGHTS_URL} on a machine with internet access, copy it here and set "
        f"${INCEPTION_WEIGHTS_ENV}=/path/to/{INCEPTION_WEIGHTS_FILE} (or place it in "
        f"{Path(torch.hub.get_dir()) / 'checkpoints'}). safcore never downloads it. "
        f"Alternatively use extractor='domain' (or 'auto')."
    )


class InceptionFeatureExtractor(FeatureExtractor):
    """torch-fidelity's FID InceptionV3 (through torchmetrics) on unit-range images.

    Grey images are repeated to three channels and quantised to uint8 exactly as torchmetrics does
    with ``normalize=True`` (``(x * 255).byte()``); the network resizes to 299×299 itself and
    returns the 2048-d pool features.

    Args:
        weights_path: the local weights file; default :func:`inception_weights_path`.

    Raises:
        InceptionUnavailableError: torch-fidelity is not installed, or no weights file is on disk.
    """

    name = "inception-v3"
    num_features = 2048

    def __init__(self, weights_path: str | os.PathLike | None = None):
        super().__init__()
        path = Path(weights_path).expanduser() if weights_path is not None else inception_weights_path()
        if path is None or not path.is_file():
            where = path if path is not None else (
                f"${INCEPTION_WEIGHTS_ENV} is unset and "
                f"{Path(torch.hub.get_dir()) / 'checkpoints' / INCEPTION_WEIGHTS_FILE} does not exist"
            )
            raise InceptionUnavailableError(f"no local Inception weights ({where}). " + _inception_help())
        # torch-fidelity reads the file with weights_only=False; refuse anything but plain tensors first.
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any failure means the file is unusable
            raise InceptionUnavailableError(
                f"{path} is not a plain PyTorch state dict of tensors ({error}). " + _inception_help()
            ) from error
        try:
            import torch_fidelity  # noqa: F401
        except ImportError as error:
            raise InceptionUnavailableError(
                f"Inception FID needs the torch-fidelity package (`pip install safcore[inception]`) to read {path}. " + _inception_help()
            ) from error
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.net = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=[str(self.num_features)], feature_extractor_weights_path=str(path)
        )
        self.weights_path = path
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, 1|3, H, W) in [0, 1] → (B, 2048)."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.net((x.clamp(0.0, 1.0) * 255).byte())


#: Stride of the domain extractor's stem per image size: the blocks see 28 px, or 32 px of a 64 / 128 px image.
DOMAIN_STEM_STRIDE: dict[int, int] = {28: 1, 64: 2, 128: 4}


def _stem(in_channels: int, width: int, image_size: int) -> nn.Conv2d:
    """The stem convolution: 3×3 at stride 1 for 28 px; for 64 / 128 px a ``2s × 2s`` kernel at stride
    ``s`` = 2 / 4 (padding ``s / 2``), which reads every pixel and brings the image to 32 px."""
    if image_size not in DOMAIN_STEM_STRIDE:
        sizes = ", ".join(map(str, DOMAIN_STEM_STRIDE))
        raise ValueError(f"image_size={image_size!r}: the domain extractor is built for {sizes} px images")
    stride = DOMAIN_STEM_STRIDE[image_size]
    if stride == 1:
        return nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
    return nn.Conv2d(in_channels, width, kernel_size=2 * stride, stride=stride, padding=stride // 2, bias=False)


def _small_resnet(in_channels: int, widths: tuple[int, ...], image_size: int = 28) -> nn.Sequential:
    """A ResNet built from torchvision's ``BasicBlock``: stem (:func:`_stem`), one block per width.

    The first block keeps the stem's resolution (28 px, or 32 px for 64 and 128 px images), each later
    one halves it (28 → 14 → 7 for three widths); global average pooling gives ``widths[-1]``
    features. Widths (16, 32, 64) cost ~10 M MACs per image at every size — a ResNet18 with a
    stride-1 stem costs ~50× that at 28 px, too slow to train on two shared CPU cores.
    """
    layers: list[nn.Module] = [
        _stem(in_channels, widths[0], image_size),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(inplace=True),
    ]
    channels = widths[0]
    for i, width in enumerate(widths):
        stride = 1 if i == 0 else 2
        downsample = None
        if stride != 1 or channels != width:
            downsample = nn.Sequential(
                nn.Conv2d(channels, width, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(width)
            )
        layers.append(BasicBlock(channels, width, stride=stride, downsample=downsample))
        channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


class DomainClassifier(nn.Module):
    """A small ResNet (torchvision ``BasicBlock``s) + linear head on a dataset's label task.

    ``forward(x)``: unit-range ``(B, C, S, S)`` with ``S = image_size`` (28, 64 or 128) → logits
    ``(B, n_outputs)``; ``features(x)`` → ``(B, widths[-1])``, the body that becomes the FID extractor.
    """

    def __init__(self, in_channels: int, n_outputs: int, widths: tuple[int, ...] = (16, 32, 64), image_size: int = 28):
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels={in_channels!r}: allowed are 1 (grey) and 3 (colour)")
        if n_outputs < 1:
            raise ValueError(f"n_outputs={n_outputs!r} must be at least 1")
        if not widths or any(int(w) < 1 for w in widths):
            raise ValueError(f"widths={widths!r} must be a non-empty tuple of positive channel counts")
        self.in_channels = in_channels
        self.n_outputs = n_outputs
        self.widths = tuple(int(w) for w in widths)
        self.image_size = int(image_size)
        self.body = _small_resnet(in_channels, self.widths, self.image_size)
        self.head = nn.Linear(self.widths[-1], n_outputs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) unit range → penultimate features (B, widths[-1])."""
        if x.ndim == 4 and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"images of {x.shape[-2]}×{x.shape[-1]} px cannot feed a domain extractor built for "
                             f"{self.image_size}×{self.image_size} px (the dataset's size)")
        return self.body(_match_channels(x, self.in_channels) * 2.0 - 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey repeated to 3 channels (as the paper feeds grey data) or back: mean of 3 → 1."""
    if x.ndim != 4:
        raise ValueError(f"images must have shape (B, C, H, W); got {tuple(x.shape)}")
    have = x.shape[1]
    if have == channels:
        return x
    if have == 3 and channels == 1:
        return x.mean(dim=1, keepdim=True)
    if have == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    raise ValueError(f"images with {have} channels cannot feed an extractor built for {channels}; allowed: 1 or 3")


class DomainFeatureExtractor(FeatureExtractor):
    """Penultimate features of a :class:`DomainClassifier` trained on a MedMNIST label task.

    ``forward(x)``: unit-range ``(B, C, S, S)`` (C = 1 or 3; grey and its 3-channel repeat give the
    same features; S the size it was trained at) → ``(B, num_features)`` with ``num_features = classifier.widths[-1]``.

    Attributes:
        dataset_name: the dataset it was trained on (part of ``name``).
        history: one dict per epoch with ``epoch``, ``train_loss``, ``train_acc``, ``val_loss``,
            ``val_acc`` (as :class:`safcore.adversary.classifiers.Classifier` keeps it; see
            :func:`safcore.study.plotting.training_curves`).
        train_seconds: wall time of its training (when it was trained, not when loaded from cache).
        val_accuracy: last validation accuracy (``nan`` without a validation split).
    """

    def __init__(
        self,
        classifier: DomainClassifier,
        *,
        dataset_name: str,
        history: list[dict[str, float]] | None = None,
        train_seconds: float = float("nan"),
    ):
        super().__init__()
        self.classifier = classifier
        self.dataset_name = dataset_name
        self.name = f"domain-resnet{2 * len(classifier.widths) + 2}[{dataset_name}]"
        self.num_features = classifier.widths[-1]
        self.history = [dict(row) for row in (history or [])]
        self.train_seconds = float(train_seconds)
        self.requires_grad_(False)
        self.eval()

    @property
    def val_accuracy(self) -> float:
        return float(self.history[-1]["val_acc"]) if self.history else float("nan")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) unit range → (B, num_features)."""
        return self.classifier.features(x)


@dataclasses.dataclass(frozen=True)
class DomainExtractorConfig:
    """How the domain extractor is trained (AdamW + cosine schedule, cross-entropy or BCE).

    Attributes:
        widths: channels of the ResNet's stages (the last is the feature dimension).
        epochs: passes over the train split (the last one is cut short by ``max_steps``).
        max_steps: cap on optimiser steps, which bounds CPU time on large datasets.
        batch_size: images per step.
        lr: peak AdamW learning rate (cosine decay to 0 over the run).
        weight_decay: AdamW weight decay.
        shift: random translation of each training image by up to ``shift`` px (0 = off).
        max_train: use at most this many train images (a seeded subset; 0 = all).
        seed: seeds the initialisation, the batch order and the shifts.
        bf16: bfloat16 autocast for the training steps (≈2× faster on CPUs with avx512_bf16; the
            extractor itself runs in float32).
        num_threads: torch intra-op threads while training (restored afterwards; 0 = leave as is).
            One thread is the default because on a small machine shared by other jobs two spinning
            OpenMP threads were measured ~10× slower than one (20 vs 234 img/s).
    """

    widths: tuple[int, ...] = (16, 32, 64)
    epochs: int = 30
    max_steps: int = 300
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 5e-4
    shift: int = 2
    max_train: int = 0
    seed: int = 0
    bf16: bool = True
    num_threads: int = 1

    def __post_init__(self) -> None:
        for name in ("epochs", "max_steps", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DomainExtractorConfig.{name}={value!r} must be a positive integer")
        if not self.lr > 0:
            raise ValueError(f"DomainExtractorConfig.lr={self.lr!r} must be > 0")
        if self.weight_decay < 0:
            raise ValueError(f"DomainExtractorConfig.weight_decay={self.weight_decay!r} must be >= 0")
        if not self.widths or any(not isinstance(w, int) or w < 1 for w in self.widths):
            raise ValueError(f"DomainExtractorConfig.widths={self.widths!r} must be a non-empty tuple of positive ints")
        if not 0 <= self.shift <= 8:
            raise ValueError(f"DomainExtractorConfig.shift={self.shift!r} must be between 0 and 8 px")
        if not isinstance(self.num_threads, int) or self.num_threads < 0:
            raise ValueError(f"DomainExtractorConfig.num_threads={self.num_threads!r} must be >= 0 (0 = leave as is)")
        if self.max_train < 0:
            raise ValueError(f"DomainExtractorConfig.max_train={self.max_train!r} must be >= 0 (0 = all)")


def _random_shift(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image of ``x`` (B, C, H, W) by its own offset in [-shift, shift]² (edge-replicated)."""
    if shift == 0:
        return x
    b, c, h, w = x.shape
    padded = F.pad(x, (shift, shift, shift, shift), mode="replicate")
    oy = torch.randint(0, 2 * shift + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * shift + 1, (b,), generator=generator)
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
    return padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def _prepare_labels(labels: np.ndarray | torch.Tensor, task: LabelTask, n_outputs: int) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(labels)).long()
    if y.ndim == 1:
        y = y[:, None]
    if task == "multi-class":
        if y.shape[1] != 1:
            raise ValueError(f"multi-class labels must have shape (N,) or (N, 1); got {tuple(y.shape)}")
        y = y[:, 0]
        if y.min() < 0 or y.max() >= n_outputs:
            raise ValueError(f"labels range {int(y.min())}..{int(y.max())} does not fit {n_outputs} classes")
        return y
    if y.shape[1] != n_outputs:
        raise ValueError(f"multi-label labels have {y.shape[1]} columns; expected {n_outputs}")
    return y.float()


def _loss_and_correct(logits: torch.Tensor, y: torch.Tensor, task: LabelTask) -> tuple[torch.Tensor, float]:
    if task == "multi-class":
        return F.cross_entropy(logits, y), float((logits.argmax(1) == y).float().sum())
    return (
        F.binary_cross_entropy_with_logits(logits, y),
        float(((logits > 0).float() == y).float().mean(1).sum()),
    )


@torch.inference_mode()
def _evaluate(model: DomainClassifier, x: torch.Tensor, y: torch.Tensor, task: LabelTask, batch_size: int) -> tuple[float, float]:
    model.eval()
    loss_sum, correct = 0.0, 0.0
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size])
        loss, right = _loss_and_correct(logits, y[i : i + batch_size], task)
        loss_sum += float(loss) * len(logits)
        correct += right
    return loss_sum / len(x), correct / len(x)


@contextlib.contextmanager
def _intra_op_threads(n: int) -> Iterator[None]:
    """Use ``n`` torch intra-op threads inside the block (0 = unchanged), restoring the old count."""
    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_domain_extractor(
    train_images: torch.Tensor,
    train_labels: np.ndarray | torch.Tensor,
    *,
    task: LabelTask,
    n_outputs: int,
    val_images: torch.Tensor | None = None,
    val_labels: np.ndarray | torch.Tensor | None = None,
    config: DomainExtractorConfig = DomainExtractorConfig(),
    dataset_name: str = "custom",
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> DomainFeatureExtractor:
    """Train a :class:`DomainClassifier` on a label task and return its feature extractor.

    Args:
        train_images: (N, C, S, S) unit range, C = 1 or 3, S = 28, 64 or 128 px (sets the stem).
        train_labels: (N,) or (N, 1) class indices for ``"multi-class"`` (binary, ordinal and
            multi-class MedMNIST tasks); (N, L) 0/1 for ``"multi-label"``.
        task: the loss: cross-entropy (``"multi-class"``) or per-label BCE (``"multi-label"``).
        n_outputs: number of classes (multi-class) or labels (multi-label).
        val_images, val_labels: optional validation split for the history.
        config: optimisation settings.
        dataset_name: recorded in the extractor's ``name``.
        device: where to train.
        progress: show a tqdm bar over the steps.

    Returns:
        The extractor (eval mode), with ``history`` and ``train_seconds``.
    """
    if task not in ("multi-class", "multi-label"):
        raise ValueError(f"task={task!r}; allowed: 'multi-class', 'multi-label'")
    if train_images.ndim != 4 or train_images.shape[1] not in (1, 3):
        raise ValueError(f"train_images must have shape (N, 1|3, H, W); got {tuple(train_images.shape)}")
    if len(train_images) != len(train_labels):
        raise ValueError(f"{len(train_images)} train images but {len(train_labels)} labels")
    with _intra_op_threads(config.num_threads):
        start = time.perf_counter()
        device = torch.device(device)
        generator = torch.Generator().manual_seed(config.seed)
        x_train = train_images.float()
        y_train = _prepare_labels(train_labels, task, n_outputs)
        if config.max_train and len(x_train) > config.max_train:
            keep = torch.randperm(len(x_train), generator=generator)[: config.max_train].sort().values
            x_train, y_train = x_train[keep], y_train[keep]
        has_val = val_images is not None and val_labels is not None and len(val_images) > 0
        if has_val:
            x_val = val_images.float().to(device)
            y_val = _prepare_labels(val_labels, task, n_outputs).to(device)

        torch.manual_seed(config.seed)
        model = DomainClassifier(x_train.shape[1], n_outputs, config.widths, image_size=int(x_train.shape[-1])).to(device)
        steps_per_epoch = math.ceil(len(x_train) / config.batch_size)
        total_steps = min(config.epochs * steps_per_epoch, config.max_steps)
        optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimiser, max_lr=config.lr, total_steps=total_steps, pct_start=0.15, anneal_strategy="cos"
        )
        history: list[dict[str, float]] = []
        bar = progress_bar(total=total_steps, desc=f"domain extractor [{dataset_name}]", enabled=progress)
        step = 0
        epoch = 0
        while step < total_steps:
            epoch += 1
            model.train()
            order = torch.randperm(len(x_train), generator=generator)
            loss_sum, correct, seen = 0.0, 0.0, 0
            for i in range(0, len(order), config.batch_size):
                if step >= total_steps:
                    break
                idx = order[i : i + config.batch_size]
                xb = _random_shift(x_train[idx], config.shift, generator).to(device)
                yb = y_train[idx].to(device)
                with bf16_autocast(device, config.bf16):
                    logits = model(xb).float()
                loss, right = _loss_and_correct(logits, yb, task)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                step += 1
                loss_sum += loss.item() * len(idx)
                correct += right
                seen += len(idx)
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if has_val:
                val_loss, val_acc = _evaluate(model, x_val, y_val, task, 4 * config.batch_size)
            else:
                val_loss, val_acc = float("nan"), float("nan")
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": loss_sum / seen,
                    "train_acc": correct / seen,
                    "val_loss": val_loss,
                    "val_acc": val_acc,
                }
            )
        bar.close()
        model.eval()
        return DomainFeatureExtractor(
            model.cpu(), dataset_name=dataset_name, history=history, train_seconds=time.perf_counter() - start
        )


_label_task = label_task  # moved to safcore.data.datasets (the defences' utility needs it too)


def _data_digest(data: MedMNISTData) -> str:
    digest = hashlib.sha256()
    for split in ("train", "val"):
        digest.update(np.ascontiguousarray(data.split(split)).tobytes())
        digest.update(np.ascontiguousarray(data.labels(split)).tobytes())
    return digest.hexdigest()[:16]


def domain_extractor(
    dataset: str | os.PathLike | MedMNISTData,
    cache_dir: str | os.PathLike,
    *,
    config: DomainExtractorConfig = DomainExtractorConfig(),
    root: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> DomainFeatureExtractor:
    """The domain FID extractor for ``dataset``: loaded from ``cache_dir`` or trained and cached there.

    The cache file is ``domain_extractor-<name>-<key>.safetensors``, where ``key`` hashes the
    configuration and the train/val images and labels (a changed file retrains); its metadata holds
    the configuration, the label task, the history and the training time. Written atomically, under a file
    lock beside it: of several processes that need it at once, one trains it and the others load it.

    Args:
        dataset: a MedMNIST flag or MedMNIST-layout ``.npz`` path (see :func:`safcore.data.datasets.load_dataset`)
            or already loaded :class:`~safcore.data.datasets.MedMNISTData`.
        cache_dir: folder for the weights (e.g. a :class:`~safcore.runtime.runs.RunStore` folder).
        config: training settings (part of the cache key).
        root: data root for a flag.
        device: where to train and run it.
        progress: progress bar while training.
    """
    from safcore.data.datasets import MedMNISTData, load_dataset, to_unit_tensor
    from safcore.runtime.runs import atomic_save_safetensors, config_key

    data = dataset if isinstance(dataset, MedMNISTData) else load_dataset(dataset, root=root)
    task, n_outputs = _label_task(data)
    key = config_key({"config": config, "data": _data_digest(data), "task": task, "n_outputs": n_outputs})
    path = Path(cache_dir).expanduser() / f"domain_extractor-{data.name}-{key}.safetensors"
    # one process trains it while the others (sweep jobs, the ranks of an accelerate launch) wait and load it
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        in_channels = data.n_channels
        if path.is_file():
            state = load_file(path)
            from safetensors import safe_open

            with safe_open(path, framework="pt") as handle:
                meta = handle.metadata() or {}
            classifier = DomainClassifier(int(meta.get("in_channels", in_channels)), n_outputs, config.widths,
                                          image_size=int(meta.get("image_size", data.image_size)))
            classifier.load_state_dict(state)
            log.info("loaded the domain FID extractor from %s", path)
            return DomainFeatureExtractor(
                classifier.eval(),
                dataset_name=data.name,
                history=json.loads(meta.get("history", "[]")),
                train_seconds=float(meta.get("train_seconds", "nan")),
            ).to(device)
        extractor = train_domain_extractor(
            to_unit_tensor(data.split("train")),
            data.labels("train"),
            task=task,
            n_outputs=n_outputs,
            val_images=to_unit_tensor(data.split("val")),
            val_labels=data.labels("val"),
            config=config,
            dataset_name=data.name,
            device=device,
            progress=progress,
        )
        metadata = {
            "config": json.dumps(dataclasses.asdict(config), sort_keys=True),
            "dataset": data.name,
            "source": str(data.source),
            "task": task,
            "n_outputs": str(n_outputs),
            "in_channels": str(in_channels),
            "image_size": str(data.image_size),
            "history": json.dumps(extractor.history),
            "train_seconds": repr(extractor.train_seconds),
        }
        atomic_save_safetensors(extractor.classifier.state_dict(), path, metadata=metadata)
        log.info("trained the domain FID extractor in %.1f s and cached it at %s", extractor.train_seconds, path)
        return extractor.to(device)


# --------------------------------------------------------------------------------------------------
# FID
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FIDResult:
    """A Fréchet distance and how it was measured.

    Attributes:
        value: the FID (lower is closer).
        extractor_name: ``"inception-v3"`` or ``"domain-resnet8[<dataset>]"`` (or a custom name).
        n_real, n_fake: images on each side that the FID was computed from (after any draw).
        note: why ``"auto"`` chose the extractor it did (empty otherwise).
        n_real_given, n_fake_given: images handed in on each side, before the draw (``None``: not
            recorded, i.e. the same as ``n_real`` / ``n_fake``).
        seed: the seed of the draw (:func:`subsample`) when a side was drawn down, ``None`` when
            every image given was used.
    """

    value: float
    extractor_name: str
    n_real: int
    n_fake: int
    note: str = ""
    n_real_given: int | None = None
    n_fake_given: int | None = None
    seed: int | None = None

    def __str__(self) -> str:
        def side(n: int, given: int | None, what: str) -> str:
            return f"{n} {what}" if given is None or given == n else f"{n} of {given} {what}"

        drawn = "" if self.seed is None else f", drawn with seed {self.seed}"
        return (
            f"FID {self.value:.2f} ({self.extractor_name}; {side(self.n_real, self.n_real_given, 'real')} vs "
            f"{side(self.n_fake, self.n_fake_given, 'generated')}{drawn})"
        )


FIDSide = Literal["real", "fake"]
_SIDE_STREAM = {"real": 0, "fake": 1}


def subsample(images: torch.Tensor, n: int, *, seed: int = 0, side: FIDSide = "real") -> torch.Tensor:
    """``n`` of ``images`` drawn without replacement, reproducibly; never more than are given.

    The draw is the first ``n`` entries of a permutation from ``numpy.random.default_rng((seed, s))``
    with ``s`` = 0 for ``side="real"`` and 1 for ``"fake"`` (two independent streams, so the
    generated subset does not depend on the size of the real set it is compared with), kept in the
    images' original order. With ``n == len(images)`` the images are returned unchanged.

    Args:
        images: (N, ...) any tensor indexed along its first axis.
        n: how many to keep, ``2 <= n <= N``.
        seed: seeds the draw (same seed, size and side → same subset).
        side: which stream to draw from.

    Raises:
        ValueError: ``n`` outside ``[2, N]`` (a set is never up-sampled), or an unknown ``side``.
    """
    if side not in _SIDE_STREAM:
        raise ValueError(f"side={side!r}; allowed: 'real', 'fake'")
    total = len(images)
    if not isinstance(n, int) or isinstance(n, bool) or not 2 <= n <= total:
        raise ValueError(
            f"n={n!r} must be an integer in [2, {total}]: FID needs 2 images per side and a set of {total} "
            f"is never up-sampled"
        )
    if n == total:
        return images
    order = np.random.default_rng((int(seed), _SIDE_STREAM[side])).permutation(total)[:n]
    keep = torch.from_numpy(np.sort(order))
    return images[keep.to(images.device)]


def resolve_extractor(
    extractor: FeatureExtractor | ExtractorChoice,
    *,
    dataset: str | os.PathLike | MedMNISTData | None = None,
    cache_dir: str | os.PathLike | None = None,
    domain_config: DomainExtractorConfig = DomainExtractorConfig(),
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[FeatureExtractor, str]:
    """Turn an extractor choice into a network; returns ``(extractor, note)``.

    ``"domain"`` (and ``"auto"`` without Inception weights) needs ``dataset`` and ``cache_dir``.

    Raises:
        InceptionUnavailableError: ``"inception"`` without torch-fidelity or local weights.
        ValueError: an unknown choice, or ``"domain"`` without ``dataset``/``cache_dir``.
    """
    if isinstance(extractor, FeatureExtractor):
        return extractor, ""
    if extractor not in ("auto", "inception", "domain"):
        raise ValueError(f"extractor={extractor!r}; allowed: a FeatureExtractor or 'auto', 'inception', 'domain'")
    note = ""
    if extractor == "inception" or (extractor == "auto" and inception_available()):
        return InceptionFeatureExtractor().to(device), ""
    if extractor == "auto":
        note = "Inception weights not available locally; used the domain feature extractor"
        log.info(note)
    if dataset is None or cache_dir is None:
        raise ValueError(
            f"extractor={extractor!r} needs the domain extractor, which needs dataset= (a flag, npz path or "
            f"MedMNISTData) and cache_dir= (a folder); got dataset={dataset!r}, cache_dir={cache_dir!r}"
        )
    return (
        domain_extractor(dataset, cache_dir, config=domain_config, device=device, progress=progress),
        note,
    )


def fid(
    real_unit: torch.Tensor,
    fake_unit: torch.Tensor,
    extractor: FeatureExtractor | ExtractorChoice = "auto",
    *,
    dataset: str | os.PathLike | MedMNISTData | None = None,
    cache_dir: str | os.PathLike | None = None,
    domain_config: DomainExtractorConfig = DomainExtractorConfig(),
    equal_sizes: bool = True,
    n_per_side: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    num_threads: int = 1,
    progress: bool = False,
) -> FIDResult:
    """Fréchet distance between the feature distributions of two image sets (torchmetrics FID).

    By default both sides have the same number of images (FID's small-sample bias depends on both
    sizes, see the module docstring): the larger side is drawn down to the size of the smaller with
    :func:`subsample` (seeded, without replacement; the smaller side is used whole, never
    up-sampled). :class:`FIDResult` records the sizes used and given and the seed of the draw.

    Args:
        real_unit: (N_r, C, S, S) in [0, 1], the reference (e.g. the train or test split); S = 28, 64
            or 128 px with the domain extractor (Inception resizes any size to 299 px).
        fake_unit: (N_f, C, S, S) in [0, 1], the generated samples, the same size.
        extractor: a :class:`FeatureExtractor`, or ``"inception"``, ``"domain"``, ``"auto"``
            (see the module docstring).
        equal_sizes: draw the larger side down to ``min(N_r, N_f)`` images (``False``: use every
            image on both sides, as given).
        n_per_side: draw both sides down to this many images instead (``2 <= n_per_side <=
            min(N_r, N_f)``); this is how FIDs against different references are made comparable
            (:meth:`safcore.study.hub.Study.fid`). Overrides ``equal_sizes``.
        seed: seeds the draw (see :func:`subsample`).
        dataset, cache_dir: what the domain extractor is trained on and where it is cached.
        domain_config: its training settings.
        batch_size: images per forward pass.
        device: where features are computed.
        num_threads: torch intra-op threads while computing (restored afterwards; 0 = leave as is);
            one by default for the reason given in :class:`DomainExtractorConfig`.
        progress: progress bar over the batches (and the extractor's training).

    Raises:
        ValueError: shapes that are not (N, C, H, W) with C in {1, 3}, fewer than 2 images on a side,
            ``n_per_side`` outside ``[2, min(N_r, N_f)]``.
        InceptionUnavailableError: ``extractor="inception"`` without local weights.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    for label, images in (("real_unit", real_unit), ("fake_unit", fake_unit)):
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"{label} must have shape (N, 1|3, H, W); got {tuple(images.shape)}")
        if len(images) < 2:
            raise ValueError(f"{label} has {len(images)} image(s); FID needs at least 2 on each side")
    if tuple(real_unit.shape[-2:]) != tuple(fake_unit.shape[-2:]):
        raise ValueError(f"real_unit are {tuple(real_unit.shape[-2:])} px, fake_unit {tuple(fake_unit.shape[-2:])} px; "
                         "FID compares images of one size")
    n_real_given, n_fake_given = len(real_unit), len(fake_unit)
    if n_per_side is not None:
        smaller = min(n_real_given, n_fake_given)
        if not isinstance(n_per_side, int) or isinstance(n_per_side, bool) or not 2 <= n_per_side <= smaller:
            raise ValueError(
                f"n_per_side={n_per_side!r} must be an integer in [2, {smaller}] "
                f"({n_real_given} real and {n_fake_given} generated images given; none is up-sampled)"
            )
        target: int | None = n_per_side
    else:
        target = min(n_real_given, n_fake_given) if equal_sizes else None
    drawn = target is not None and (n_real_given != target or n_fake_given != target)
    if target is not None:
        real_unit = subsample(real_unit, target, seed=seed, side="real")
        fake_unit = subsample(fake_unit, target, seed=seed, side="fake")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be >= 1")
    if num_threads < 0:
        raise ValueError(f"num_threads={num_threads!r} must be >= 0 (0 = leave torch's setting)")
    network, note = resolve_extractor(
        extractor, dataset=dataset, cache_dir=cache_dir, domain_config=domain_config, device=device, progress=progress
    )
    metric = FrechetInceptionDistance(feature=network, normalize=True, reset_real_features=True).to(device)
    batches = [(real_unit, True), (fake_unit, False)]
    total = sum(math.ceil(len(x) / batch_size) for x, _ in batches)
    with (
        _intra_op_threads(num_threads),
        torch.inference_mode(),
        progress_bar(total=total, desc=f"FID [{network.name}]", enabled=progress) as bar,
    ):
        for images, is_real in batches:
            for i in range(0, len(images), batch_size):
                metric.update(images[i : i + batch_size].float().to(device), real=is_real)
                bar.update(1)
        value = float(metric.compute())
    return FIDResult(
        value=max(value, 0.0) if value > -1e-6 else value,
        extractor_name=network.name,
        n_real=len(real_unit),
        n_fake=len(fake_unit),
        note=note,
        n_real_given=n_real_given,
        n_fake_given=n_fake_given,
        seed=int(seed) if drawn else None,
    )
