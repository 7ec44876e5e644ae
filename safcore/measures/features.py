"""The feature networks FID compares image sets in: Inception and the domain extractor.

Images are unit-range float tensors of shape ``(B, C, S, S)`` (``C`` = 1 or 3, ``S`` = 28, 64 or 128 px),
as everywhere at safcore's module boundaries. A :class:`FeatureExtractor` maps them to ``(B, num_features)``;
:func:`safcore.measures.fid.fid` takes the Fréchet distance between two sets of such features.

- :class:`InceptionFeatureExtractor` — torch-fidelity's InceptionV3 (the standard FID network, 2048-d pool
  features, images resized to 299 px). Its weights are **never downloaded**: they are used only when the file
  is on disk, at ``$SAFCORE_INCEPTION_WEIGHTS`` or in torch hub's cache
  (``<torch.hub.get_dir()>/checkpoints/weights-inception-2015-12-05-6726825d.pth``). Otherwise
  :class:`InceptionUnavailableError` says how to provide them.
- :class:`DomainFeatureExtractor` — the penultimate 64-d features (global average pool) of a
  :class:`DomainClassifier`: a small ResNet (torchvision ``BasicBlock``s, widths 16/32/64 at 28/14/7 px;
  64 and 128 px images enter through a strided stem, 2 and 4, so its stages see 32/16/8 px at every size),
  trained by safcore on the dataset's own MedMNIST label task (:mod:`safcore.measures.extractor_training`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

__all__ = [
    "INCEPTION_WEIGHTS_ENV",
    "INCEPTION_WEIGHTS_FILE",
    "INCEPTION_WEIGHTS_URL",
    "DOMAIN_STEM_STRIDE",
    "FeatureExtractor",
    "InceptionUnavailableError",
    "inception_weights_path",
    "inception_available",
    "InceptionFeatureExtractor",
    "DomainClassifier",
    "DomainFeatureExtractor",
]

INCEPTION_WEIGHTS_ENV = "SAFCORE_INCEPTION_WEIGHTS"
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)


class FeatureExtractor(nn.Module):
    """An FID feature network: unit-range images ``(B, C, H, W)`` → features ``(B, num_features)``.

    It never leaves evaluation mode and has no trainable parameters, so torchmetrics can call it
    inside :class:`~torchmetrics.image.fid.FrechetInceptionDistance` (``normalize=True``: the float
    images are handed to it unchanged). ``name`` is what :class:`safcore.measures.fid.FIDResult` reports.
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
