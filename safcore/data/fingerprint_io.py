"""A fingerprint folder: ``D_p`` written for a trainer that is not safcore, and read back by the audit.

A hospital team trains with its own code. ``safcore fingerprint`` (:func:`export_fingerprint`) draws
``D_p`` (``N_D`` images of a dataset, one of them ``x_p`` with its SAF, its clean original ``x_i``
left out; paper §3.3) and writes it three ways a trainer reads::

    DIR/
      fingerprint.json   what D_p is: source data and its sha256, N_D, seed, x_p's index, the SAF's
                         centre, radius and grey, channels, image size, safcore version, file hashes
      dp.npz             MedMNIST layout: train_images = D_p (uint8), train_labels; val/test = the source's
      images/            D_p as PNGs, dp_00000.png … (diffusers' train_unconditional.py and the
                         `datasets` "imagefolder" loader read a flat folder of images)
      x_p.png            the fingerprinted image, to look at (not inside images/)

The audit (:func:`read_fingerprint`, :meth:`safcore.study.hub.Study.from_fingerprint`) reads only this
folder, and the source dataset it names to train ``c_p`` on the dataset's real images.

The folder is written under a temporary name and renamed into place: a crash leaves no half folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

import safcore
from safcore.data import datasets as data_lib
from safcore.data.fingerprint import PrivateDataset, SAFConfig, circle_mask, make_private_dataset
from safcore.runtime.checks import check_seed, expect_format, plain_name
from safcore.runtime.runs import writing, atomic_write, check_output_folder, file_sha256, output_folder

__all__ = ["FINGERPRINT_JSON", "Fingerprint", "export_fingerprint", "read_fingerprint", "private_dataset"]

FINGERPRINT_JSON = "fingerprint.json"
NPZ_NAME = "dp.npz"
PNG_DIR = "images"
XP_NAME = "x_p.png"
FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """A fingerprint folder as read back: what ``D_p`` is, and ``D_p`` itself.

    Attributes:
        folder: the folder.
        dataset: the source — a MedMNIST flag or the absolute path of an ``.npz``.
        dataset_name: the flag or the npz's stem.
        source_sha256: sha256 of the source file (the audit checks it before training ``c_p`` on it).
        n_dataset, seed, index: ``N_D``, the seed that drew the subset / ``x_i`` / the SAF's place, ``x_p``'s index.
        center, radius, grey: the SAF (Eq. 10).
        channels, image_size: of ``D_p``'s images.
        images: ``(N_D, C, H, W)`` float32 in [0, 1] — exactly the uint8 images a trainer reads, / 255.
        labels: ``(N_D, L)`` the source's labels of ``D_p``.
        meta: the whole ``fingerprint.json``.
    """

    folder: Path
    dataset: str
    dataset_name: str
    source_sha256: str
    n_dataset: int
    seed: int
    index: int
    center: tuple[float, float]
    radius: float
    grey: float
    channels: int
    image_size: int
    images: torch.Tensor
    labels: np.ndarray
    meta: dict

    @property
    def x_p(self) -> torch.Tensor:
        """``(C, H, W)`` the fingerprinted image as the trainer saw it."""
        return self.images[self.index]

    @property
    def mask(self) -> torch.Tensor:
        """``L_p``: ``(H, W)`` the SAF's disc."""
        return circle_mask(self.image_size, self.radius, self.center)

    @property
    def saf(self) -> SAFConfig:
        """The SAF's look and place as a :class:`SAFConfig` (regenerates the same ``D_p`` from the source)."""
        return SAFConfig(radius=self.radius, grey=self.grey, center=self.center)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(N, C, H, W)`` unit range → MedMNIST's ``(N, H, W)`` (grey) or ``(N, H, W, 3)`` uint8."""
    array = (images.clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
    return array[:, 0] if array.shape[1] == 1 else np.ascontiguousarray(array.transpose(0, 2, 3, 1))


def images_sha256(images: np.ndarray) -> str:
    """sha256 of uint8 images and their shape: names ``D_p`` by content (an npz's bytes carry zip timestamps)."""
    digest = hashlib.sha256(repr(tuple(images.shape)).encode())
    digest.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array, mode="L" if array.ndim == 2 else "RGB").save(path)


def export_fingerprint(
    dataset: str | os.PathLike,
    n_dataset: int,
    out: str | os.PathLike,
    *,
    seed: int = 0,
    saf: SAFConfig = SAFConfig(),
    data_root: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Fingerprint:
    """Draw ``D_p`` from ``dataset`` and write the fingerprint folder ``out`` (see the module docstring).

    ``D_p`` is the one :class:`safcore.study.hub.Study` draws for the same dataset, ``N_D`` and seed
    (:func:`safcore.data.datasets.seeded_subset`, :func:`safcore.data.fingerprint.make_private_dataset`), with the
    dataset's own channels, stored as uint8 like the source (the SAF's grey 0.5 becomes 128/255).

    Raises:
        ValueError: ``N_D`` does not fit the train split, a bad SAF, a negative seed, or ``out`` is a link, a file
            or a non-empty folder (``overwrite=True`` replaces a folder that holds a fingerprint, report or model,
            nothing else; :func:`safcore.runtime.runs.check_output_folder`) — all checked before any work.
    """
    check_seed(seed)
    out = check_output_folder(out, overwrite=overwrite, option="output folder")
    source = data_lib.load_dataset(dataset, root=data_root)
    data_lib.check_n_dataset(source, n_dataset)
    clean, chosen = data_lib.seeded_subset(source.split("train"), n_dataset, seed=seed)
    private = make_private_dataset(data_lib.to_unit_tensor(clean), seed=seed, config=saf)
    images = _to_uint8(private.images)
    labels = source.labels("train")[chosen]
    is_path = data_lib._looks_like_path(dataset)
    meta = {
        "format": FORMAT,
        "safcore_version": safcore.__version__,
        "dataset": str(Path(dataset).expanduser().resolve()) if is_path else str(source.name),
        "dataset_name": source.name,
        "source_sha256": file_sha256(source.source),
        "n_dataset": int(n_dataset),
        "seed": int(seed),
        "x_p_index": int(private.index),
        "saf": {"center": [float(c) for c in private.center], "radius": float(private.radius), "grey": float(private.grey)},
        "channels": int(private.images.shape[1]),
        "image_size": int(private.images.shape[-1]),
        "files": {"npz": NPZ_NAME, "png_dir": PNG_DIR, "png_names": "dp_{index:05d}.png", "x_p": XP_NAME},
        "note": "Train on dp.npz's train split or on images/ — both are D_p. x_p's clean original is not in them.",
    }
    with output_folder(out, overwrite=overwrite, option="output folder") as tmp:  # renamed into place when whole
        arrays = {"train_images": images, "train_labels": labels}
        for split in ("val", "test"):
            arrays[f"{split}_images"] = source.split(split)
            arrays[f"{split}_labels"] = source.labels(split)
        with writing(tmp / NPZ_NAME):
            np.savez_compressed(tmp / NPZ_NAME, **arrays)
        (tmp / PNG_DIR).mkdir()
        for i, image in enumerate(images):
            _save_png(image, tmp / PNG_DIR / f"dp_{i:05d}.png")
        _save_png(images[private.index], tmp / XP_NAME)
        meta["npz_sha256"] = file_sha256(tmp / NPZ_NAME)
        meta["dp_sha256"] = images_sha256(images)
        atomic_write(tmp / FINGERPRINT_JSON, json.dumps(meta, indent=2))
    return read_fingerprint(out)


def read_fingerprint(folder: str | os.PathLike) -> Fingerprint:
    """Read a fingerprint folder written by :func:`export_fingerprint`, checking that it is whole.

    Raises:
        ValueError: no ``fingerprint.json``, a field of it of the wrong type or out of range (named, with what
            is allowed), a file name that is not a plain name inside the folder, a missing, linked-out, changed
            (sha256) or unreadable ``dp.npz``, or records that do not fit the images (one line each, naming the
            folder or file).
    """
    folder = Path(folder).expanduser()
    file = folder / FINGERPRINT_JSON
    if not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is not a fingerprint folder: " + ("it does not exist" if not folder.exists()
                         else "it is a file") + " (make one with: safcore fingerprint --dataset FLAG --n-dataset N --out DIR)")
    if not file.is_file():
        raise ValueError(f"{str(folder)!r} is not a fingerprint folder: it has no {FINGERPRINT_JSON} "
                         "(make one with: safcore fingerprint --dataset FLAG --n-dataset N --out DIR)")
    meta = _read_record(file)
    npz = folder / meta["files"]["npz"]
    n, index, channels, size = (meta[k] for k in ("n_dataset", "x_p_index", "channels", "image_size"))
    saf = meta["saf"]
    if not npz.is_file():
        raise ValueError(f"fingerprint folder {str(folder)!r} has no {npz.name}")
    if not npz.resolve().is_relative_to(folder.resolve()):
        raise ValueError(f"{str(npz)!r} is a link to {str(npz.resolve())!r}, outside the fingerprint folder; a "
                         "fingerprint folder's files lie inside it: write the folder again with safcore fingerprint")
    expect_format(npz, "npz", "fingerprint file", "the dp.npz that safcore fingerprint wrote (a zip of arrays)")
    if file_sha256(npz) != meta.get("npz_sha256"):
        raise ValueError(f"{str(npz)!r} changed since it was written (sha256 differs from {FINGERPRINT_JSON}); "
                         "write the folder again with safcore fingerprint")
    try:
        with np.load(npz, allow_pickle=False) as archive:
            images = data_lib.to_unit_tensor(archive["train_images"])
            labels = archive["train_labels"]
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{str(npz)!r} cannot be read as D_p ({type(error).__name__}: {error}); write the folder "
                         "again with safcore fingerprint") from None
    if tuple(images.shape) != (n, channels, size, size) or not 0 <= index < n:
        raise ValueError(f"{str(folder)!r}: D_p has shape {tuple(images.shape)} but {FINGERPRINT_JSON} records "
                         f"N_D = {n}, {channels} channel(s), {size} px, x_p index {index}")
    return Fingerprint(
        folder=folder, dataset=meta["dataset"], dataset_name=meta["dataset_name"],
        source_sha256=meta["source_sha256"], n_dataset=n, seed=meta["seed"], index=index,
        center=(float(saf["center"][0]), float(saf["center"][1])), radius=float(saf["radius"]), grey=float(saf["grey"]),
        channels=channels, image_size=size, images=images, labels=labels, meta=meta,
    )


def _read_record(file: Path) -> dict:
    """``fingerprint.json``, every field checked: one ``ValueError`` naming the file, the field, its value and
    what is allowed (never Python's "invalid literal for int()")."""
    try:
        meta = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{str(file)!r} is not a readable fingerprint record: not JSON ({error}); write the folder "
                         "again with safcore fingerprint") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{str(file)!r} holds a JSON {type(meta).__name__}, not a fingerprint record (an object)")

    def field(key: str, check, allowed: str, where: dict = meta, prefix: str = ""):
        if key not in where:
            raise ValueError(f"{str(file)!r} lacks {prefix}{key!r}; write the folder again with safcore fingerprint")
        value = where[key]
        if not check(value):
            raise ValueError(f"{str(file)!r}: {prefix}{key!r} = {value!r}; allowed: {allowed}")
        return value

    def integer(low: int, high: float = float("inf")):
        return lambda v: not isinstance(v, bool) and isinstance(v, int) and low <= v <= high

    def number(v) -> bool:
        return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)

    def text(v) -> bool:
        return isinstance(v, str) and bool(v)

    n = field("n_dataset", integer(1), "an integer ≥ 1")
    field("x_p_index", integer(0, n - 1), f"an integer in [0, {n - 1}] (N_D = {n})")
    field("seed", integer(0), "an integer ≥ 0")
    field("channels", lambda v: v in (1, 3) and not isinstance(v, bool), "1 (grey) or 3 (RGB)")
    field("image_size", lambda v: v in data_lib.IMAGE_SIZES and not isinstance(v, bool),
          ", ".join(map(str, data_lib.IMAGE_SIZES)) + " (px)")
    for key in ("dataset", "dataset_name", "source_sha256"):
        field(key, text, "a non-empty string")
    saf = field("saf", lambda v: isinstance(v, dict), "an object with center, radius and grey")
    field("center", lambda v: isinstance(v, list) and len(v) == 2 and all(map(number, v)), "[row, col], two numbers",
          saf, "saf.")
    field("radius", lambda v: number(v) and v > 0, "a number > 0 (px)", saf, "saf.")
    field("grey", lambda v: number(v) and 0 <= v <= 1, "a number in [0, 1]", saf, "saf.")
    files = field("files", lambda v: isinstance(v, dict), "an object naming the folder's files")
    plain_name(field("npz", text, "a file name", files, "files."), "files.npz", file)
    return meta


def private_dataset(fingerprint: Fingerprint, x_i: torch.Tensor) -> PrivateDataset:
    """The :class:`PrivateDataset` of a fingerprint folder (images exactly as the trainer read them).

    Args:
        x_i: ``(C, H, W)`` ``x_p``'s clean original, from the source (not kept in the folder).
    """
    return PrivateDataset(
        images=fingerprint.images, index=fingerprint.index, x_p=fingerprint.x_p, x_i=x_i, mask=fingerprint.mask,
        center=fingerprint.center, radius=fingerprint.radius, grey=fingerprint.grey, seed=fingerprint.seed,
    )


def regenerated_private_dataset(fingerprint: Fingerprint, regenerated: PrivateDataset, source: str | Path) -> PrivateDataset:
    """The folder's :class:`PrivateDataset` after checking that ``source`` (by sha256) and the folder's records
    regenerate it: ``regenerated`` is ``D_p`` made again from ``source`` with the folder's seed and SAF.

    Raises:
        ValueError: another source, or a folder whose ``D_p`` is not the one its records regenerate.
    """
    fp = fingerprint
    if file_sha256(source) != fp.source_sha256:
        raise ValueError(f"the source {str(source)!r} differs from the one fingerprint folder "
                         f"{str(fp.folder)!r} was made from (sha256); give the original data")
    images = (regenerated.images * 255).round()
    if regenerated.index != fp.index or not torch.equal(images, (fp.images * 255).round()):
        raise ValueError(f"fingerprint folder {str(fp.folder)!r}: its D_p is not the one its records regenerate "
                         "from the source; write it again with safcore fingerprint")
    return private_dataset(fp, regenerated.x_i)
