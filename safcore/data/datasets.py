"""MedMNIST and MedMNIST-layout data: loading from a data root or medmnist's cache, downloads, subsets, scaling.

A dataset is named either by a 2D MedMNIST flag (``"breastmnist"``), or by the path of a user's own
``.npz`` in the MedMNIST layout (:data:`NPZ_LAYOUT`) — a hospital audits its own images, not MedMNIST.

Where a flag's release file is looked for (:func:`load_dataset`):

* a **given data root** — the ``root`` argument, else ``$SAFCORE_DATA_ROOT`` — is the only folder
  searched, and nothing is ever downloaded into it;
* with **no root given**, medmnist's own cache ``~/.medmnist`` is searched and, when the file is not
  there (or its MD5 differs from medmnist's ``INFO``), the medmnist package downloads it there with
  its own code (``MedMNIST.download``: torchvision's ``download_url``, with a progress bar and the MD5
  check) — unless offline: ``offline=True`` or ``$SAFCORE_OFFLINE=1`` (the test command sets it).

A missing file then gives one error naming the flag, the folders searched and both remedies.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from safcore.runtime.checks import check_seed

DATA_ROOT_ENV = "SAFCORE_DATA_ROOT"
OFFLINE_ENV = "SAFCORE_OFFLINE"
SPLITS: tuple[str, ...] = ("train", "val", "test")
Split = Literal["train", "val", "test"]
NPZ_LAYOUT = (
    "train_images, val_images, test_images: uint8 arrays (N, H, W) (grey) or (N, H, W, 3) (RGB) with "
    "H == W = 28, 64 or 128; "
    "train_labels, val_labels, test_labels: integer arrays (N, L)"
)
#: Image sizes (px, square) that safcore audits end to end: the MedMNIST+ sizes its U-Net presets are built
#: for (:data:`safcore.generators.score_model.UNET_LEVELS`: 28 → 7, 64 → 8 and 128 → 8 px in 3, 4 and 5 levels). MedMNIST+
#: also ships 224 px, which no preset covers yet.
IMAGE_SIZES: tuple[int, ...] = (28, 64, 128)
_OFFLINE_ON = ("1", "true", "yes", "on")
_OFFLINE_OFF = ("", "0", "false", "no", "off")


def medmnist_2d_flags() -> list[str]:
    """All 2D MedMNIST flags known to the installed medmnist package (from its ``INFO``)."""
    from medmnist import INFO

    return sorted(flag for flag in INFO if not flag.endswith("3d"))


def medmnist_sizes() -> tuple[int, ...]:
    """Image sizes MedMNIST publishes (28 is the MNIST-like default)."""
    from medmnist.dataset import MedMNIST2D

    return tuple(MedMNIST2D.available_sizes)


def medmnist_cache_root() -> Path:
    """medmnist's own download folder, ``~/.medmnist`` (``medmnist.info.get_default_root``).

    Evaluated at each call (medmnist fixes its ``DEFAULT_ROOT`` when imported), so ``$HOME`` set later counts.
    """
    return Path(os.path.expanduser("~")) / ".medmnist"


def given_data_root(root: str | os.PathLike | None = None) -> Path | None:
    """The data root the user gave: ``root`` if not ``None``, else ``$SAFCORE_DATA_ROOT`` if set, else ``None``."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(DATA_ROOT_ENV):
        return Path(os.environ[DATA_ROOT_ENV]).expanduser()
    return None


def default_data_root() -> Path:
    """``$SAFCORE_DATA_ROOT`` if set, else medmnist's cache (:func:`medmnist_cache_root`)."""
    return given_data_root() or medmnist_cache_root()


def offline_from_env() -> bool:
    """Whether ``$SAFCORE_OFFLINE`` forbids downloads (1/true/yes/on; unset, empty or 0/false/no/off allow them).

    Raises:
        ValueError: any other value (the allowed ones are named).
    """
    value = os.environ.get(OFFLINE_ENV, "").strip().lower()
    if value in _OFFLINE_ON:
        return True
    if value in _OFFLINE_OFF:
        return False
    raise ValueError(
        f"{OFFLINE_ENV}={os.environ[OFFLINE_ENV]!r} is not understood; use one of {', '.join(_OFFLINE_ON)} to forbid "
        f"downloads or one of {', '.join(v for v in _OFFLINE_OFF if v)} (or leave it unset) to allow them"
    )


def flag_file_name(flag: str, size: int = 28) -> str:
    """The release file of ``flag`` at ``size`` px, as medmnist names it: ``breastmnist.npz``, ``breastmnist_64.npz``."""
    return f"{flag}{'' if size == 28 else f'_{size}'}.npz"


def flags_with_train_size(n: int) -> list[tuple[str, int]]:
    """2D MedMNIST flags whose train split holds at least ``n`` images, as ``(flag, size)``, smallest first.

    The sizes are medmnist's ``INFO[flag]["n_samples"]["train"]`` (the same at 28, 64, 128 and 224 px).
    """
    from medmnist import INFO

    sizes = [(flag, int(INFO[flag]["n_samples"]["train"])) for flag in medmnist_2d_flags()]
    return sorted(((flag, size) for flag, size in sizes if size >= n), key=lambda item: (item[1], item[0]))


def train_size(dataset: str | os.PathLike | MedMNISTData) -> int:
    """Images in the train split of ``dataset``: a flag's from medmnist's ``INFO`` (nothing is read or
    downloaded), an ``.npz`` path's from the file (validated by :func:`load_npz`), or a loaded dataset's."""
    if isinstance(dataset, MedMNISTData):
        return len(dataset.split("train"))
    if _looks_like_path(dataset):
        return len(load_npz(dataset).split("train"))
    from medmnist import INFO

    flag = _check_flag(dataset)
    return int(INFO[flag]["n_samples"]["train"])


def check_n_dataset(dataset: str | os.PathLike | MedMNISTData, n: int, *, name: str = "N_D") -> int:
    """Check that a training set of ``n`` images can be drawn from the train split of ``dataset``.

    This is the check behind :func:`seeded_subset`, made before anything is loaded, trained or downloaded
    (a flag's size comes from medmnist's ``INFO``), with the flags that would fit.

    Args:
        dataset: a 2D MedMNIST flag, an ``.npz`` path or a loaded :class:`MedMNISTData`.
        n: the training-set size ``N_D``.
        name: what ``n`` is called in the message (a notebook's parameter name).

    Returns:
        the train split's size.

    Raises:
        ValueError: one line naming ``n``, the train split's size and the MedMNIST flags whose train split fits.
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{name} = {n!r} is not a training-set size: it must be an integer >= 1")
    total = train_size(dataset)
    if n <= total:
        return total
    label = dataset.name if isinstance(dataset, MedMNISTData) else (
        os.fspath(dataset) if _looks_like_path(dataset) else str(dataset).lower()
    )
    fitting = flags_with_train_size(int(n))
    if fitting:
        fits = "MedMNIST flags whose train split fits: " + ", ".join(f"{flag} ({size})" for flag, size in fitting)
    else:
        largest = max(flags_with_train_size(1), key=lambda item: item[1])
        fits = f"no MedMNIST 2D flag fits (the largest train split is {largest[0]}'s, {largest[1]} images)"
    raise ValueError(f"{name} = {int(n)} exceeds the {total} training images of {label}; {fits}")


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


def label_task(data: MedMNISTData) -> tuple[Literal["multi-class", "multi-label"], int]:
    """MedMNIST's ``INFO[flag]["task"]`` mapped to a loss (binary, ordinal and multi-class tasks → ``"multi-class"``),
    with the number of classes / labels; a user's own file: ``(N, L > 1)`` labels are multi-label."""
    labels = data.labels("train")
    if data.info is not None:
        n_labels = len(data.info["label"])
        if data.info["task"].startswith("multi-label"):
            return "multi-label", n_labels
        return "multi-class", n_labels
    if labels.shape[1] > 1:
        return "multi-label", int(labels.shape[1])
    every = np.concatenate([data.labels(s).reshape(-1) for s in SPLITS])
    return "multi-class", int(every.max()) + 1


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")


def _looks_like_path(dataset: str | os.PathLike) -> bool:
    text = os.fspath(dataset)
    return isinstance(dataset, os.PathLike) or text.lower().endswith(".npz") or os.sep in text


def _check_flag(dataset: str) -> str:
    flag = str(dataset).lower()
    flags = medmnist_2d_flags()
    if flag not in flags:
        raise ValueError(f"unknown MedMNIST 2D flag {dataset!r}; the 2D flags are: {', '.join(flags)} (or give an .npz path)")
    return flag


def load_dataset(
    dataset: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    size: int = 28,
    offline: bool | None = None,
) -> MedMNISTData:
    """Load a 2D MedMNIST flag (from a data root or medmnist's cache, downloaded if need be), or an ``.npz`` by path.

    Where a flag is looked for and when it is downloaded: see the module docstring.

    Args:
        dataset: a 2D flag such as ``"breastmnist"``, or the path of an ``.npz`` file in the MedMNIST layout.
        root: folder holding the flags' release files; ``None`` → ``$SAFCORE_DATA_ROOT``, else medmnist's cache.
        size: image size of the release file (MedMNIST publishes 28, 64, 128 and 224).
        offline: forbid downloads; ``None`` → ``$SAFCORE_OFFLINE`` (:func:`offline_from_env`).

    Raises:
        ValueError: unknown flag (the 2D flags are listed), a size MedMNIST does not publish, a file that
            is not a readable npz, an npz with missing keys or wrongly shaped arrays.
        FileNotFoundError: the flag's file is neither in the folder searched nor downloadable (a root was
            given, or offline): names the flag, the folders searched and both remedies; or the given
            ``.npz`` path does not exist.
        RuntimeError: the download failed or its MD5 differs from medmnist's (the bad file is removed).
    """
    if _looks_like_path(dataset):
        return load_npz(dataset)
    flag = _check_flag(dataset)
    sizes = medmnist_sizes()
    if size not in sizes:
        raise ValueError(f"MedMNIST has no size {size!r} px; it publishes {', '.join(map(str, sizes))}")
    if offline is None:
        offline = offline_from_env()

    from medmnist import INFO

    info = INFO[flag]
    expected_md5 = info.get("MD5" if size == 28 else f"MD5_{size}")
    file_name = flag_file_name(flag, size)
    given = given_data_root(root)
    folder = given if given is not None else medmnist_cache_root()
    file = folder / file_name
    actual_md5 = _md5(file) if file.is_file() else None
    if given is not None or offline:
        if actual_md5 is None:
            raise FileNotFoundError(_missing_message(flag, size, folder, root_source=_root_source(root, given)))
    elif actual_md5 != expected_md5:  # not in the cache, or not the release (e.g. a download cut short)
        file = _download(flag, size, folder)
        actual_md5 = expected_md5  # medmnist's download checked it
    data = _read_npz(file, name=flag, info=dict(info))
    if expected_md5 and actual_md5 != expected_md5:
        warnings.warn(
            f"{file} differs from the official MedMNIST release (MD5 {expected_md5}); using it anyway",
            stacklevel=2,
        )
    for split in SPLITS:
        if len(data.images_by_split[split]) != info["n_samples"][split]:
            warnings.warn(
                f"{file}: {split} has {len(data.images_by_split[split])} images, INFO says {info['n_samples'][split]}",
                stacklevel=2,
            )
    return data


def _root_source(root: str | os.PathLike | None, given: Path | None) -> str | None:
    if given is None:
        return None
    return "root=" if root is not None else f"${DATA_ROOT_ENV}"


def _missing_message(flag: str, size: int, folder: Path, *, root_source: str | None) -> str:
    """One line: the flag, the folder searched, why nothing was downloaded, and both remedies."""
    file_name = flag_file_name(flag, size)
    cache = medmnist_cache_root()
    exists = "" if folder.is_dir() else "; that folder does not exist"
    if root_source is not None:
        where = f"the data root {folder} (given by {root_source}{exists})"
        why = "a given data root is never downloaded into"
    else:
        where = f"medmnist's cache {folder}" + (" (that folder does not exist)" if exists else "")
        why = f"offline (offline=True, --offline or {OFFLINE_ENV}=1) forbids the download"
    return (
        f"MedMNIST flag {flag!r} ({size} px): {file_name} not found in the folders searched: {where}; {why}. "
        f"Either put {file_name} into {folder} (or point {DATA_ROOT_ENV} / --data-root at a folder that holds it), "
        f"or run online — without --offline / {OFFLINE_ENV}=1 and without a data root — so medmnist downloads it "
        f"into {cache}"
    )


def _download(flag: str, size: int, cache: Path) -> Path:
    """Download ``flag`` at ``size`` px into ``cache`` with medmnist's own code (progress bar, MD5 check).

    Raises:
        RuntimeError: the download failed (the cause is named), or the file's MD5 differs from medmnist's
            ``INFO`` (the file is removed, so a retry downloads it again).
    """
    import medmnist
    from medmnist import INFO

    info = INFO[flag]
    suffix = "" if size == 28 else f"_{size}"
    url, md5 = info[f"url{suffix}"], info[f"MD5{suffix}"]
    file = cache / flag_file_name(flag, size)
    cache.mkdir(parents=True, exist_ok=True)
    print(f"safcore: downloading {file.name} ({flag}, {size} px) from {url} into {cache}", file=sys.stderr)
    try:
        getattr(medmnist, info["python_class"])(split="train", root=str(cache), size=size, download=True)
    except RuntimeError as error:  # medmnist turns every failure (even Ctrl-C) into one RuntimeError
        cause = _root_cause(error)
        if isinstance(cause, KeyboardInterrupt):
            raise cause from None
        if file.is_file() and _md5(file) != md5:
            got = _md5(file)
            file.unlink()
            raise RuntimeError(
                f"downloaded {file.name} for {flag!r} from {url} has MD5 {got}, not medmnist's {md5}: the download is "
                f"corrupt or the file changed; removed it from {cache}. Retry, or put a verified {file.name} into a "
                f"folder and point {DATA_ROOT_ENV} / --data-root at it"
            ) from error
        raise RuntimeError(
            f"downloading {file.name} for {flag!r} from {url} into {cache} failed ({type(cause).__name__}: {cause}). "
            f"Check the connection and retry, or put {file.name} (MD5 {md5}) into a folder and point "
            f"{DATA_ROOT_ENV} / --data-root at it"
        ) from error
    return file


def _root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return error


def check_image_size(size: int, what: str = "the images") -> int:
    """Check that square images of ``size`` px are of a size safcore supports (:data:`IMAGE_SIZES`).

    Returns:
        ``size``.

    Raises:
        ValueError: one line naming ``what``, its size and the allowed sizes.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or int(size) not in IMAGE_SIZES:
        allowed = ", ".join(map(str, IMAGE_SIZES))
        raise ValueError(
            f"{what} are {size}×{size} px; safcore supports {allowed} px (the MedMNIST+ sizes its U-Net presets "
            f"are built for): resize them to one of {allowed} px"
        )
    return int(size)


def check_unit_images(images: torch.Tensor, what: str = "images") -> None:
    """Check that ``images`` are a float tensor ``(N, C, H, W)`` of finite values in ``[0, 1]``.

    The audit's input contract (:func:`safcore.audit.sample_audit.audit`), checked where it is cheap to check
    first — before classifiers are trained or anything is written.

    Raises:
        ValueError: not a 4-D float tensor, NaN / infinite values, or values outside ``[0, 1]`` (e.g.
            0..255 floats); the message names the bad values and what is allowed.
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor (N, C, H, W) in [0, 1]; got {type(images).__name__} "
                         "(safcore.data.images.load_images reads files and arrays)")
    if images.ndim != 4:
        raise ValueError(f"{what} must have shape (N, C, H, W); got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{what} must be float in [0, 1]; got dtype {images.dtype} "
                         "(uint8 0..255 images: safcore.data.images.load_images scales them)")
    if images.numel() == 0:
        return
    finite = torch.isfinite(images)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(f"{what} contain {bad} NaN or infinite value(s); allowed: finite values in [0, 1]")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 1.0:
        hint = " (0..255 values: divide by 255)" if hi > 1.0 else " (model-range [-1, 1]: apply from_model_range)"
        raise ValueError(f"{what} have values in [{lo:.4g}, {hi:.4g}]; allowed: [0, 1]{hint}")


def load_npz(path: str | os.PathLike) -> MedMNISTData:
    """Load a user's own ``.npz`` in the MedMNIST layout (:data:`NPZ_LAYOUT`), validated.

    Grey ``(N, H, W)`` and colour ``(N, H, W, 3)`` images are kept as they are; their size must be one
    of :data:`IMAGE_SIZES` (28, 64 or 128 px).

    Raises:
        FileNotFoundError: ``path`` does not exist (or is a folder); the path is named.
        ValueError: not a readable npz archive, missing keys (named, with the layout), wrong shapes or
            dtypes, or an image size safcore does not support (named, with the allowed sizes).
    """
    file = Path(path).expanduser()
    if not file.exists():
        raise FileNotFoundError(f"dataset file {file} does not exist (expected an .npz in the MedMNIST layout)")
    if not file.is_file():
        raise FileNotFoundError(f"dataset file {file} is a folder, not an .npz file in the MedMNIST layout")
    data = _read_npz(file, name=file.stem, info=None)
    check_image_size(data.image_size, f"{file}: the images")
    return data


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def _read_npz(file: Path, *, name: str, info: dict | None) -> MedMNISTData:
    """Read and validate the six MedMNIST arrays of ``file``; every failure is one ValueError naming ``file``."""
    not_npz = f"{file} is not a readable .npz archive"
    expected = f"expected numpy's .npz (a zip of arrays, np.savez) in the MedMNIST layout: {NPZ_LAYOUT}"
    with open(file, "rb") as handle:
        head = handle.read(6)
    if head.startswith(b"\x93NUMPY"):
        raise ValueError(f"{not_npz}: it holds a single .npy array; {expected}")
    if not head.startswith(_ZIP_MAGIC):
        kind = "it is empty" if not head else f"it does not start like a zip archive (first bytes {head!r})"
        raise ValueError(f"{not_npz}: {kind}; {expected}")
    try:
        npz = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{not_npz} ({type(error).__name__}: {error}); {expected}") from None
    with npz:
        keys = set(npz.files)
        needed = {f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels")}
        missing = sorted(needed - keys)
        if missing:
            raise ValueError(f"{file} lacks the MedMNIST keys {missing}; it has {sorted(keys)}. Expected layout: {NPZ_LAYOUT}")
        arrays: dict[str, np.ndarray] = {}
        for key in sorted(needed):
            try:
                arrays[key] = np.asarray(npz[key])
            except ValueError as error:  # object arrays: numpy refuses them without allow_pickle
                raise ValueError(
                    f"{file}: {key} holds Python objects, not numbers ({type(error).__name__}); {expected}"
                ) from None
            except (OSError, EOFError, zipfile.BadZipFile) as error:
                raise ValueError(f"{not_npz}: {key} cannot be read ({type(error).__name__}: {error})") from None
    data = MedMNISTData(
        name=name,
        source=file,
        images_by_split={s: arrays[f"{s}_images"] for s in SPLITS},
        labels_by_split={s: arrays[f"{s}_labels"] for s in SPLITS},
        info=info,
    )
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
        ValueError: ``n`` < 1 or larger than the number of images, or ``seed`` not an integer ≥ 0.
    """
    check_seed(seed)
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
