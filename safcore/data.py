"""MedMNIST and MedMNIST-layout data: loading offline from a data root, subsets, scaling.

A dataset is named either by a 2D MedMNIST flag (``"breastmnist"``), read through the ``medmnist``
package from a data root, or by the path of a user's own ``.npz`` in the MedMNIST layout
(``train_images``/``val_images``/``test_images`` of shape ``(N, H, W)`` or ``(N, H, W, 3)``, uint8,
and ``*_labels`` of shape ``(N, L)``) — a hospital audits its own images, not MedMNIST.

The data root is, in order: the ``root`` argument, ``$SAFCORE_DATA_ROOT``, medmnist's default
(``~/.medmnist``). Nothing is downloaded unless ``download=True``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch

DATA_ROOT_ENV = "SAFCORE_DATA_ROOT"
SPLITS: tuple[str, ...] = ("train", "val", "test")
Split = Literal["train", "val", "test"]


def medmnist_2d_flags() -> list[str]:
    """All 2D MedMNIST flags known to the installed medmnist package (from its ``INFO``)."""
    from medmnist import INFO

    return sorted(flag for flag in INFO if not flag.endswith("3d"))


def medmnist_sizes() -> tuple[int, ...]:
    """Image sizes MedMNIST publishes (28 is the MNIST-like default)."""
    from medmnist.dataset import MedMNIST2D

    return tuple(MedMNIST2D.available_sizes)


def default_data_root() -> Path:
    """``$SAFCORE_DATA_ROOT`` if set, else medmnist's own default root."""
    if os.environ.get(DATA_ROOT_ENV):
        return Path(os.environ[DATA_ROOT_ENV]).expanduser()
    from medmnist.info import DEFAULT_ROOT

    return Path(DEFAULT_ROOT)


@dataclasses.dataclass(frozen=True)
class MedMNISTData:
    """Images and labels of one dataset, all three splits, as the release files hold them.

    Attributes:
        name: the flag, or the npz file's stem for a user's own data.
        source: the npz file the arrays came from.
        images_by_split: split -> uint8 array ``(N, H, W)`` (grey) or ``(N, H, W, 3)`` (colour).
        labels_by_split: split -> integer array of shape ``(N, L)``.
        info: medmnist's ``INFO`` entry for a flag, ``None`` for a user's own file.
    """

    name: str
    source: Path
    images_by_split: dict[str, np.ndarray]
    labels_by_split: dict[str, np.ndarray]
    info: dict | None = None

    @property
    def n_channels(self) -> int:
        return 1 if self.images_by_split["train"].ndim == 3 else int(self.images_by_split["train"].shape[-1])

    @property
    def image_size(self) -> int:
        return int(self.images_by_split["train"].shape[1])

    def split(self, split: Split = "train") -> np.ndarray:
        """The uint8 images of ``split``."""
        _check_split(split)
        return self.images_by_split[split]

    def labels(self, split: Split = "train") -> np.ndarray:
        """The labels of ``split``, shape ``(N, L)``."""
        _check_split(split)
        return self.labels_by_split[split]

    def __repr__(self) -> str:
        sizes = " / ".join(str(len(self.images_by_split[s])) for s in SPLITS)
        return f"MedMNISTData({self.name!r}, {sizes} images, {self.n_channels} channel(s), {self.image_size} px)"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")


def _looks_like_path(dataset: str | os.PathLike) -> bool:
    text = os.fspath(dataset)
    return isinstance(dataset, os.PathLike) or text.endswith(".npz") or os.sep in text


def load_dataset(
    dataset: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    size: int = 28,
    download: bool = False,
) -> MedMNISTData:
    """Load a 2D MedMNIST flag from the data root, or a MedMNIST-layout ``.npz`` by path.

    Args:
        dataset: a 2D flag such as ``"breastmnist"``, or the path of an ``.npz`` file.
        root: folder holding the flags' release files (see the module docstring for the fallback).
        size: image size of the release file (MedMNIST publishes 28, 64, 128 and 224).
        download: let medmnist download a missing flag (never done otherwise).

    Raises:
        ValueError: unknown flag (the 2D flags are listed), a size MedMNIST does not publish,
            an npz with missing keys or wrongly shaped arrays.
        FileNotFoundError: the flag's file is missing from the root (and ``download`` is off), or
            the given npz path does not exist.
    """
    if _looks_like_path(dataset):
        return load_npz(dataset)
    flag = str(dataset).lower()
    flags = medmnist_2d_flags()
    if flag not in flags:
        raise ValueError(f"unknown MedMNIST 2D flag {dataset!r}; the 2D flags are: {', '.join(flags)} (or give an .npz path)")
    sizes = medmnist_sizes()
    if size not in sizes:
        raise ValueError(f"MedMNIST has no size {size!r} px; it publishes {', '.join(map(str, sizes))}")

    import medmnist
    from medmnist import INFO

    root_path = Path(root).expanduser() if root is not None else default_data_root()
    file_name = f"{flag}{'' if size == 28 else f'_{size}'}.npz"
    file = root_path / file_name
    if not file.is_file():
        if not download:
            raise FileNotFoundError(
                f"{file_name} not found in the data root {root_path}. Point the root at a folder that holds it "
                f"(argument root=... or ${DATA_ROOT_ENV}), or allow download=True on a machine with internet access."
            )
        root_path.mkdir(parents=True, exist_ok=True)
    info = INFO[flag]
    dataset_class = getattr(medmnist, info["python_class"])
    images: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    for split in SPLITS:
        split_data = dataset_class(split=split, root=str(root_path), size=size, download=download and split == "train")
        images[split] = np.asarray(split_data.imgs)
        labels[split] = np.asarray(split_data.labels)
    expected_md5 = info.get("MD5" if size == 28 else f"MD5_{size}")
    if expected_md5 and _md5(file) != expected_md5:
        warnings.warn(
            f"{file} differs from the official MedMNIST release (MD5 {expected_md5}); using it anyway",
            stacklevel=2,
        )
    data = MedMNISTData(name=flag, source=file, images_by_split=images, labels_by_split=labels, info=dict(info))
    _validate(data, file)
    for split in SPLITS:
        if len(images[split]) != info["n_samples"][split]:
            warnings.warn(
                f"{file}: {split} has {len(images[split])} images, INFO says {info['n_samples'][split]}", stacklevel=2
            )
    return data


def load_npz(path: str | os.PathLike) -> MedMNISTData:
    """Load a user's own ``.npz`` in the MedMNIST layout (validated)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"dataset file {file} does not exist (expected an .npz in the MedMNIST layout)")
    with np.load(file, allow_pickle=False) as npz:
        keys = set(npz.files)
        needed = {f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels")}
        missing = sorted(needed - keys)
        if missing:
            raise ValueError(f"{file} lacks the MedMNIST keys {missing}; it has {sorted(keys)}")
        images = {s: np.asarray(npz[f"{s}_images"]) for s in SPLITS}
        labels = {s: np.asarray(npz[f"{s}_labels"]) for s in SPLITS}
    data = MedMNISTData(name=file.stem, source=file, images_by_split=images, labels_by_split=labels, info=None)
    _validate(data, file)
    return data


def _validate(data: MedMNISTData, file: Path) -> None:
    reference = None
    for split in SPLITS:
        imgs, labs = data.images_by_split[split], data.labels_by_split[split]
        if imgs.dtype != np.uint8:
            raise ValueError(f"{file}: {split}_images has dtype {imgs.dtype}; MedMNIST layout is uint8")
        grey = imgs.ndim == 3 and imgs.shape[1] == imgs.shape[2]
        colour = imgs.ndim == 4 and imgs.shape[1] == imgs.shape[2] and imgs.shape[3] == 3
        if not (grey or colour):
            raise ValueError(
                f"{file}: {split}_images has shape {imgs.shape}; expected (N, H, W) or (N, H, W, 3) with H == W"
            )
        if reference is None:
            reference = imgs.shape[1:]
        elif imgs.shape[1:] != reference:
            raise ValueError(f"{file}: {split}_images has shape {imgs.shape}, other splits have (N, *{reference})")
        if labs.ndim != 2 or len(labs) != len(imgs):
            raise ValueError(f"{file}: {split}_labels has shape {labs.shape}; expected ({len(imgs)}, L)")
    if len(data.images_by_split["train"]) == 0:
        raise ValueError(f"{file}: train_images is empty")


def _md5(file: Path) -> str:
    digest = hashlib.md5()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def seeded_subset(images: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images drawn without replacement with ``seed``; returns ``(images[idx], idx)``, idx sorted.

    Raises:
        ValueError: ``n`` < 1 or larger than the number of images.
    """
    total = len(images)
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1 or n > total:
        raise ValueError(f"N_D = {n!r} is not possible: it must be an integer between 1 and {total} (the split's size)")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(total, size=int(n), replace=False))
    return images[idx], idx


def to_unit_tensor(images: np.ndarray, channels: int | None = None) -> torch.Tensor:
    """uint8 ``(N, H, W)`` or ``(N, H, W, 3)`` → float32 ``(N, C, H, W)`` in ``[0, 1]``.

    ``channels=3`` repeats a grey channel three times, as the paper does; ``None`` keeps the data's.
    """
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise ValueError(f"images of shape {np.shape(images)} are neither (N, H, W) nor (N, H, W, C)")
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float() / 255.0
    return match_channels(tensor, channels)


def match_channels(images: torch.Tensor, channels: int | None) -> torch.Tensor:
    """``(N, C, H, W)`` → ``channels`` channels: ``None`` or ``C`` keeps them, 3 repeats a grey channel."""
    have = images.shape[1]
    if channels is None or channels == have:
        return images.contiguous()
    if have == 1 and channels == 3:
        return images.repeat(1, 3, 1, 1)
    raise ValueError(f"cannot turn {have}-channel images into channels={channels!r}; allowed: None, {have}, or 3 from grey")


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """``[0, 1]`` → the score model's ``[-1, 1]``."""
    return x * 2.0 - 1.0


def from_model_range(x: torch.Tensor) -> torch.Tensor:
    """The score model's ``[-1, 1]`` → ``[0, 1]`` (clamped)."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)
