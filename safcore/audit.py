"""The sampling audit: how often does a model hand back ``x_p``? (paper §5.3, Tab. 1 and 2, App. B, D).

Given ``n`` generated images, count ``|c_p+|`` (carry the SAF), ``|c_id+|`` (identified as ``x_p``) and
``|q| = |c_p+ ∩ c_id+|``; compare ``|q|`` with its expectation ``E|q| = n / N_D`` under the null
hypothesis that ``x_p`` is generated as often as any training image, with a one-sided binomial test
(H0: p = 1/N_D, H1: p < 1/N_D); and measure how close the q-positives are to ``x_p`` (MAE, MSE). The
result keeps every index so galleries can show the q-positives and each classifier's false positives
(Fig. 8).

Images come from anywhere: :func:`load_images` reads arrays, ``.npy``/``.npz`` files and folders of
PNGs; :func:`sample_images_from_unet` draws them from any diffusers ``UNet2DModel``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import stats

from safcore.data import match_channels
from safcore.progress import progress_bar

if TYPE_CHECKING:
    from diffusers import UNet2DModel

    from safcore.models import ScoreModel
    from safcore.sampling import Method
    from safcore.sde import SDE

ImageClassifier = Callable[[torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class AuditResult:
    """Counts of one audit, as a row of the paper's Tab. 1 / Tab. 2.

    Attributes:
        n: number of audited (generated) images.
        n_dataset: ``N_D``, the size of the training set ``D_p``.
        expected_q: ``E|q| = n / N_D``, what an unbiased model that reproduces its training images
            uniformly would give.
        n_cp, n_cid, n_q: ``|c_p+|``, ``|c_id+|`` and ``|q| = |c_p+ ∩ c_id+|``.
        p_value: one-sided binomial test of H0 ``p = 1/N_D`` against H1 ``p < 1/N_D`` with ``n_q``
            successes in ``n`` trials (``scipy.stats.binomtest(..., alternative="less")``).
        q_indices, cp_indices, cid_indices: positions (in the audited set) of the q-positives, the
            ``c_p`` positives and the ``c_id`` positives, ascending.
        mae, mse: mean absolute / squared error of the q-positives to ``x_p`` over all their pixels
            (NaN when ``n_q = 0``).
    """

    n: int
    n_dataset: int
    expected_q: float
    n_cp: int
    n_cid: int
    n_q: int
    p_value: float
    q_indices: tuple[int, ...]
    cp_indices: tuple[int, ...]
    cid_indices: tuple[int, ...]
    mae: float
    mse: float

    @property
    def cp_false_positives(self) -> tuple[int, ...]:
        """Images ``c_p`` flags that are not q-positives (``c_p+`` but ``c_id−``)."""
        q = set(self.q_indices)
        return tuple(i for i in self.cp_indices if i not in q)

    @property
    def cid_false_positives(self) -> tuple[int, ...]:
        """Images ``c_id`` flags that are not q-positives (``c_id+`` but ``c_p−``)."""
        q = set(self.q_indices)
        return tuple(i for i in self.cid_indices if i not in q)

    def rejects_h0(self, alpha: float = 0.05) -> bool:
        """Whether the test rejects H0 at level ``alpha``: ``x_p`` is generated less often than 1/N_D."""
        return self.p_value < alpha

    def to_row(self) -> dict:
        """The scalar columns as a dict (``pd.DataFrame([r.to_row() for r in results])``)."""
        return {
            "N_D": self.n_dataset,
            "n": self.n,
            "E|q|": self.expected_q,
            "|c_p+|": self.n_cp,
            "|c_id+|": self.n_cid,
            "|q|": self.n_q,
            "p": self.p_value,
            "MAE": self.mae,
            "MSE": self.mse,
        }

    def __str__(self) -> str:
        return (
            f"N_D {self.n_dataset:>6} | n {self.n:>7} | E|q| {self.expected_q:>9.2f} | |c_p+| {self.n_cp:>6} | "
            f"|c_id+| {self.n_cid:>6} | |q| {self.n_q:>6} | p {self.p_value:.3g} | "
            f"MAE {self.mae:.3g} | MSE {self.mse:.3g}"
        )


def binomial_p_value(n_q: int, n: int, n_dataset: int) -> float:
    """One-sided binomial test of H0 ``p = 1/N_D`` vs H1 ``p < 1/N_D`` given ``n_q`` of ``n`` (paper §5.3).

    Equals ``P(X ≤ n_q)`` for ``X ~ Binomial(n, 1/N_D)``; e.g. ``n_q = 0`` gives ``(1 − 1/N_D)^n``.
    """
    if n_dataset < 1:
        raise ValueError(f"n_dataset (N_D) = {n_dataset!r} must be ≥ 1")
    if n < 1 or not 0 <= n_q <= n:
        raise ValueError(f"need n ≥ 1 and 0 ≤ n_q ≤ n, got n = {n!r}, n_q = {n_q!r}")
    return float(stats.binomtest(int(n_q), int(n), 1.0 / n_dataset, alternative="less").pvalue)


def _predict(classifier: ImageClassifier, images: torch.Tensor, batch_size: int, name: str, progress: bool) -> torch.Tensor:
    out = []
    for start in progress_bar(range(0, images.shape[0], batch_size), desc=name, enabled=progress, leave=False):
        batch = images[start : start + batch_size]
        pred = torch.as_tensor(classifier(batch))
        if pred.shape != (batch.shape[0],):
            raise ValueError(f"{name} returned shape {tuple(pred.shape)} for {batch.shape[0]} images; it must return ({batch.shape[0]},)")
        out.append(pred.detach().to("cpu").bool())
    return torch.cat(out)


def audit(
    images: torch.Tensor,
    c_p: ImageClassifier,
    c_id: ImageClassifier,
    x_p: torch.Tensor,
    n_dataset: int,
    batch_size: int = 256,
    progress: bool = False,
) -> AuditResult:
    """Count ``|c_p+|``, ``|c_id+|``, ``|q|`` on generated images and test ``|q|`` against ``E|q| = n/N_D``.

    Args:
        images: ``(n, C, H, W)`` float in ``[0, 1]`` (use :func:`load_images` for other forms).
        c_p, c_id: any callables ``(B, C, H, W) -> bool (B,)``, e.g. trained
            :class:`safcore.classifiers.Classifier` objects; both see every image.
        x_p: ``(C, H, W)`` the fingerprinted training image (for MAE/MSE and the shape check).
        n_dataset: ``N_D``, the number of training images.
        batch_size: images per classifier call.
    Raises:
        ValueError: no images, images not ``(n, C, H, W)`` or not matching ``x_p``'s shape,
            ``n_dataset < 1``, or a classifier returning the wrong shape.
    """
    if isinstance(n_dataset, bool) or not isinstance(n_dataset, (int, np.integer)) or n_dataset < 1:
        raise ValueError(f"n_dataset (N_D) = {n_dataset!r} must be an integer ≥ 1")
    if batch_size < 1:
        raise ValueError(f"batch_size = {batch_size!r} must be ≥ 1")
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor (n, C, H, W) in [0, 1]; got {type(images).__name__} — use load_images()")
    if not isinstance(x_p, torch.Tensor) or x_p.ndim != 3:
        raise ValueError(f"x_p must be a (C, H, W) tensor, got shape {tuple(getattr(x_p, 'shape', ()))}")
    if images.ndim != 4:
        raise ValueError(f"images must have shape (n, C, H, W), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("cannot audit an empty image set: n = 0 images")
    if tuple(images.shape[1:]) != tuple(x_p.shape):
        raise ValueError(
            f"images are {tuple(images.shape[1:])} (C, H, W) but x_p is {tuple(x_p.shape)}: "
            f"channel count and size must match"
        )
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype} — use load_images()")
    n = int(images.shape[0])
    cp = _predict(c_p, images, batch_size, "c_p", progress)
    cid = _predict(c_id, images, batch_size, "c_id", progress)
    q = cp & cid
    q_idx = torch.nonzero(q).flatten()
    if len(q_idx):
        diff = images[q_idx.to(images.device)].float() - x_p.to(images.device, torch.float32)[None]
        mae, mse = float(diff.abs().mean()), float((diff**2).mean())
    else:
        mae = mse = math.nan
    n_q = int(q.sum())
    return AuditResult(
        n=n,
        n_dataset=int(n_dataset),
        expected_q=n / n_dataset,
        n_cp=int(cp.sum()),
        n_cid=int(cid.sum()),
        n_q=n_q,
        p_value=binomial_p_value(n_q, n, int(n_dataset)),
        q_indices=tuple(int(i) for i in q_idx),
        cp_indices=tuple(int(i) for i in torch.nonzero(cp).flatten()),
        cid_indices=tuple(int(i) for i in torch.nonzero(cid).flatten()),
        mae=mae,
        mse=mse,
    )


# --------------------------------------------------------------------------------------------
# Where the images come from

IMAGE_SUFFIXES = (".png",)


def _to_unit(array: torch.Tensor | np.ndarray, what: str) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array)) if isinstance(array, np.ndarray) else array.detach().cpu()
    if tensor.dtype == torch.uint8:
        return tensor.float() / 255.0
    if tensor.dtype == torch.bool or not (tensor.is_floating_point()):
        raise ValueError(f"{what} have dtype {tensor.dtype}; allowed: uint8 (0..255) or float in [0, 1]")
    tensor = tensor.float()
    if tensor.numel() and (float(tensor.min()) < 0.0 or float(tensor.max()) > 1.0):
        raise ValueError(
            f"{what} are float with values in [{float(tensor.min()):.3g}, {float(tensor.max()):.3g}]; "
            f"allowed: [0, 1] (model-range [-1, 1] images: apply safcore.data.from_model_range first)"
        )
    return tensor


def _to_nchw(tensor: torch.Tensor, what: str) -> torch.Tensor:
    if tensor.ndim == 3:
        return tensor[:, None]
    if tensor.ndim == 4:
        if tensor.shape[1] in (1, 3):
            return tensor
        if tensor.shape[-1] in (1, 3):
            return tensor.permute(0, 3, 1, 2)
        raise ValueError(f"{what} of shape {tuple(tensor.shape)}: neither (N, C, H, W) nor (N, H, W, C) with C in (1, 3)")
    raise ValueError(f"{what} of shape {tuple(tensor.shape)}: allowed (N, H, W), (N, H, W, C) or (N, C, H, W)")


def _read_png_folder(folder: Path) -> np.ndarray:
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"folder {str(folder)!r} holds no {'/'.join(IMAGE_SUFFIXES)} images")
    images = []
    for file in files:
        with Image.open(file) as image:
            if image.mode not in ("L", "RGB"):
                raise ValueError(f"{str(file)!r} has PIL mode {image.mode!r}; allowed: 'L' (grey) or 'RGB' (8 bit)")
            images.append(np.asarray(image))
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ValueError(f"the images in {str(folder)!r} differ in shape: {sorted(shapes)}")
    return np.stack(images)  # (N, H, W) or (N, H, W, 3) uint8


def load_images(source: torch.Tensor | np.ndarray | str | os.PathLike, channels: int | None = None, key: str | None = None) -> torch.Tensor:
    """Images to audit, as float32 ``(N, C, H, W)`` in ``[0, 1]``.

    Args:
        source: a tensor or array — uint8 in ``0..255`` or float in ``[0, 1]``, shaped ``(N, H, W)``,
            ``(N, H, W, C)`` or ``(N, C, H, W)`` with ``C`` in 1 or 3 — or the path of a ``.npy`` /
            ``.npz`` file holding such an array, or of a folder of ``.png`` files (read in name order).
        channels: ``3`` repeats grey images three times (the paper's convention); ``None`` keeps them.
        key: which array of an ``.npz`` to read; default its only array, or ``"images"``.
    Raises:
        ValueError: unreadable source, bad dtype/range/shape, no images, or impossible ``channels``.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        what = f"images in {str(path)!r}"
        if path.is_dir():
            raw: torch.Tensor | np.ndarray = _read_png_folder(path)
        elif path.suffix == ".npy" and path.is_file():
            raw = np.load(path, allow_pickle=False)
        elif path.suffix == ".npz" and path.is_file():
            with np.load(path, allow_pickle=False) as archive:
                names = list(archive.files)
                if key is None:
                    key = names[0] if len(names) == 1 else ("images" if "images" in names else None)
                if key is None or key not in names:
                    raise ValueError(f"{str(path)!r} holds arrays {names}; pass key= to choose one")
                raw = archive[key]
        else:
            raise ValueError(f"cannot read images from {str(path)!r}: allowed a folder of PNGs, a .npy or a .npz file")
    elif isinstance(source, (torch.Tensor, np.ndarray)):
        raw, what = source, "images"
    else:
        raise ValueError(f"cannot read images from a {type(source).__name__}; allowed: Tensor, ndarray, folder, .npy, .npz")
    tensor = _to_nchw(_to_unit(raw, what), what)
    if tensor.shape[0] == 0:
        raise ValueError(f"{what}: the set is empty (0 images)")
    return match_channels(tensor, channels)


def sample_images_from_unet(
    unet_or_path: UNet2DModel | ScoreModel | str | os.PathLike,
    n: int,
    *,
    sde: SDE | None = None,
    method: Method = "euler_maruyama",
    steps: int = 1000,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """``n`` images from a diffusers ``UNet2DModel`` (or a folder it was saved to), unit range.

    The U-Net is read as an ε-predictor of the given SDE (default sub-VP) through
    :class:`safcore.models.ScoreModel` and sampled from the prior with
    :func:`safcore.sampling.sample` (``method``, ``steps``).

    Returns:
        float32 ``(n, C, H, W)`` in ``[0, 1]`` on the CPU.
    """
    from diffusers import UNet2DModel

    from safcore.data import from_model_range
    from safcore.models import ScoreModel
    from safcore.sampling import sample

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n = {n!r} images: must be an integer ≥ 1")
    if isinstance(unet_or_path, ScoreModel):
        model = unet_or_path if sde is None else ScoreModel(unet_or_path.unet, sde)
    elif isinstance(unet_or_path, UNet2DModel):
        model = ScoreModel(unet_or_path, sde)
    elif isinstance(unet_or_path, (str, os.PathLike)):
        model = ScoreModel.from_pretrained(unet_or_path, sde)
    else:
        raise ValueError(f"expected a UNet2DModel, a ScoreModel or a saved model's folder, got {type(unet_or_path).__name__}")
    if device is not None:
        model = model.to(device)
    model.eval()
    size = int(model.unet.config.sample_size if isinstance(model.unet.config.sample_size, int) else model.unet.config.sample_size[0])
    generator = torch.Generator(model.device).manual_seed(seed)
    result = sample(
        model, model.sde, shape=(n, model.channels, size, size), method=method, steps=steps,
        generator=generator, batch_size=batch_size, progress=progress,
    )
    return from_model_range(result.images).float().cpu()
