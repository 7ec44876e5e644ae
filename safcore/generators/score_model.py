"""The score network: a diffusers ``UNet2DModel`` for 28, 64 or 128 px images wrapped as ``s_θ(x, t) = -ε̂(x, 999 t) / σ_t``.

The U-Net predicts the noise ε̂ that was added (continuous denoising score matching, Song et al.
2020, Eq. 7 with the ε-parameterisation of score_sde's ``get_score_fn``): for a perturbation
``x_t = mean_t + σ_t z`` the score is ``∇log p_0t(x_t | x_0) = -z / σ_t``, hence ``score = -ε̂ / σ_t``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import UNet2DModel

from safcore.runtime.checks import check_safetensors
from safcore.data.datasets import check_image_size
from safcore.runtime.runs import atomic_write, writing
from safcore.generators.sde import SDE, SubVPSDE, VPSDE, get_sde

__all__ = ["UNetPreset", "UNET_PRESETS", "UNET_LEVELS", "build_unet", "ScoreModel", "MeanPrior", "TIME_LABEL_SCALE",
           "SDE_CONFIG_NAME"]

#: The network sees the time label ``999 · t`` (score_sde's continuous sub-VP/VP convention).
TIME_LABEL_SCALE = 999.0
#: File written next to diffusers' ``config.json`` by :meth:`ScoreModel.save_pretrained`.
SDE_CONFIG_NAME = "safcore_sde.json"


#: Resolution levels of the U-Net for each supported image size (:data:`safcore.data.datasets.IMAGE_SIZES`). Every
#: level but the last halves the resolution, and diffusers' ``UNet2DModel`` needs each halving to be exact
#: (7 → 4 → 8 breaks the skip connections), so the deepest level is 7 px at 28 px and 8 px at 64 and 128 px:
#: 28 → 14 → 7, 64 → 32 → 16 → 8, 128 → 64 → 32 → 16 → 8.
UNET_LEVELS: dict[int, int] = {28: 3, 64: 4, 128: 5}
_BASE_LEVELS = UNET_LEVELS[28]


@dataclass(frozen=True)
class UNetPreset:
    """Size of a U-Net, given by its three 28 px levels (28 → 14 → 7).

    ``attention`` marks, per resolution level (28, 14, 7), whether its blocks use self-attention;
    ``norm_num_groups`` must divide every entry of ``block_out_channels``. Larger images get more
    levels (:data:`UNET_LEVELS`, :meth:`levels`): the added levels sit on top, at the new full
    resolutions, with the first level's width and no attention, so the three deepest levels — widths,
    attention and all — are the 28 px ones (DDPM++ likewise keeps its widths and widens no
    high-resolution level; attention stays at the coarse levels, where it is affordable).
    """

    block_out_channels: tuple[int, int, int]
    layers_per_block: int
    attention: tuple[bool, bool, bool]
    norm_num_groups: int
    attention_head_dim: int = 8
    mid_attention: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if len(self.block_out_channels) != _BASE_LEVELS or len(self.attention) != _BASE_LEVELS:
            raise ValueError(
                "a U-Net preset names the three resolution levels of its 28 px network (28→14→7; 64 and 128 px "
                "add levels on top, see UNET_LEVELS); "
                f"got block_out_channels={self.block_out_channels!r}, attention={self.attention!r}"
            )
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(
                f"norm_num_groups={self.norm_num_groups} must divide every block width, not {bad}"
            )
        if self.layers_per_block < 1:
            raise ValueError(f"layers_per_block must be >= 1, got {self.layers_per_block}")

    def levels(self, image_size: int = 28) -> tuple[tuple[int, ...], tuple[bool, ...]]:
        """``(block_out_channels, attention)`` of the U-Net for ``image_size`` px, one entry per level.

        28 px: the preset's own three levels. 64 px: one level of width ``block_out_channels[0]`` without
        attention in front (64 → 32 → 16 → 8); 128 px: two (128 → 64 → 32 → 16 → 8).

        Raises:
            ValueError: a size other than 28, 64 or 128 px (the allowed sizes are named).
        """
        check_image_size(image_size, "U-Net images")
        extra = UNET_LEVELS[int(image_size)] - _BASE_LEVELS
        widths = (self.block_out_channels[0],) * extra + tuple(self.block_out_channels)
        attention = (False,) * extra + tuple(self.attention)
        return widths, attention


UNET_PRESETS: dict[str, UNetPreset] = {
    # ~71 k parameters: unit tests (a forward pass on 4 images takes milliseconds).
    "tiny": UNetPreset((8, 16, 16), 1, (False, False, True), norm_num_groups=4),
    # ~1.1 M parameters: the CPU profile that memorizes a few dozen images (issue 3, item 7).
    "small": UNetPreset((32, 64, 64), 1, (False, False, True), norm_num_groups=16),
    # ~27 M parameters: paper scale for a GPU (Song et al.'s DDPM++-like widths, attention at 14 and 7).
    "paper": UNetPreset((128, 256, 256), 2, (False, True, True), norm_num_groups=32),
}


def _preset(name: str) -> UNetPreset:
    if name not in UNET_PRESETS:
        raise ValueError(f"unknown U-Net preset {name!r}; allowed: {', '.join(map(repr, UNET_PRESETS))}")
    return UNET_PRESETS[name]


def unet_image_size(unet) -> int:
    """The side (px) of the square images a diffusers U-Net was built for: its ``config.sample_size``
    (an int, or ``(H, W)``)."""
    size = unet.config.sample_size
    return int(size if isinstance(size, int) else size[0])


def build_unet(preset: str | UNetPreset, channels: int, image_size: int = 28) -> UNet2DModel:
    """A fresh ``UNet2DModel`` of the named size for ``image_size`` px images with ``channels`` channels.

    ``channels``: 1 (grey) or 3 (RGB), input and output alike. ``image_size``: 28, 64 or 128 px
    (:data:`UNET_LEVELS`); it sets ``sample_size`` and the number of levels (:meth:`UNetPreset.levels`);
    at 28 px the network is the preset's three-level one, unchanged. Uses
    ``time_embedding_type="positional"`` (labels ``999·t``; the ``"fourier"`` variant divides its
    output by the timestep, the VE convention, wrong for sub-VP).

    Raises:
        ValueError: an unknown preset, channels other than 1 or 3, or an unsupported image size (the
            allowed values are named).
    """
    p = preset if isinstance(preset, UNetPreset) else _preset(preset)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    widths, attention = p.levels(image_size)
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    return UNet2DModel(
        sample_size=int(image_size),
        in_channels=channels,
        out_channels=channels,
        time_embedding_type="positional",
        block_out_channels=widths,
        layers_per_block=p.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=p.norm_num_groups,
        attention_head_dim=p.attention_head_dim,
        add_attention=p.mid_attention,
        dropout=p.dropout,
    )


def _sde_to_config(sde: SDE, mean_prior: MeanPrior | None = None) -> dict:
    if isinstance(sde, SubVPSDE):
        name = "subvp"
    elif isinstance(sde, VPSDE):
        name = "vp"
    else:
        raise ValueError(f"cannot save SDE {sde!r}: only SubVPSDE and VPSDE are serialisable")
    config = {"name": name, "beta_min": sde.beta_0, "beta_max": sde.beta_1}
    if mean_prior is not None:
        config["mean_prior"] = mean_prior.to_dict()
    return config


@dataclass(frozen=True)
class MeanPrior:
    """A Gaussian prior on an image's per-channel mean (its "DC"), for the closed-form DC part of ε̂.

    A U-Net whose every block ends in GroupNorm barely passes the per-channel spatial mean of its input to
    its output: at ``t = 1`` the cpu profile's grey BreastMNIST model returns 46 % of the input noise's
    channel mean, its RGB RetinaMNIST model 10–20 % (``benchmarks/bench_rgb.py``). The reverse SDE's drift
    ``+½β(t) x`` then amplifies the unremoved part of the mean by up to ``e^{½∫β} ≈ 150`` under sub-VP: whole
    samples end black or white. With a prior ``m_c ~ N(μ_c, v_c)`` on the clean channel means (from the
    training images), the channel mean ``d_c`` of ``x_t = α_t x_0 + σ_t z`` over ``P = H·W`` pixels is
    ``α_t m_c + σ_t z̄_c`` with ``z̄_c ~ N(0, 1/P)``, and the posterior mean of the noise's channel mean is

        E[z̄_c | d_c] = (σ_t / P) / (α_t² v_c + σ_t² / P) · (d_c − α_t μ_c),

    exact at high noise (``α_t → 0``: it returns ``d_c / σ_t``) and shrinking to 0 where the image's own mean
    dominates. :class:`ScoreModel` adds it to the U-Net's output, which then learns only the remainder.

    Attributes:
        mean, var: per channel, in the model range [-1, 1] (``var`` floored at 1e-4).
    """

    mean: tuple[float, ...]
    var: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.var) or len(self.mean) not in (1, 3):
            raise ValueError(f"MeanPrior needs one mean and one variance per channel (1 or 3); got {self.mean!r}, {self.var!r}")
        if any(not (v > 0 and math.isfinite(v)) for v in self.var) or any(not math.isfinite(m) for m in self.mean):
            raise ValueError(f"MeanPrior: means must be finite and variances > 0; got {self.mean!r}, {self.var!r}")

    @classmethod
    def from_images(cls, images: torch.Tensor) -> MeanPrior:
        """From training images ``(N, C, H, W)`` in the model range: mean and variance of their channel means."""
        m = images.detach().double().mean((2, 3))
        var = m.var(0, unbiased=False) if len(m) > 1 else torch.zeros(m.shape[1], dtype=torch.float64)
        return cls(tuple(float(v) for v in m.mean(0)), tuple(max(float(v), 1e-4) for v in var))

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "var": list(self.var)}


class UNetBacked:
    """What a model built on a diffusers U-Net (its ``unet``) is: channels, image size and device."""

    unet: UNet2DModel

    @property
    def channels(self) -> int:
        """Image channels the U-Net takes and returns (1 grey, 3 RGB)."""
        return int(self.unet.config.in_channels)

    @property
    def image_size(self) -> int:
        """The U-Net's ``sample_size``: the side of the square images it was built for (px)."""
        return unet_image_size(self.unet)

    @property
    def device(self) -> torch.device:
        """Where the U-Net's parameters are."""
        return next(self.unet.parameters()).device


class ScoreModel(UNetBacked, torch.nn.Module):
    """Score function ``s_θ(x, t) ≈ ∇_x log p_t(x)`` built on an ε-predicting ``UNet2DModel``.

    Args:
        unet: any ``diffusers.UNet2DModel`` (input and output channels equal).
        sde: the forward SDE whose marginal std ``σ_t`` turns ε̂ into a score (default sub-VP).
        mean_prior: when given, ε̂ = U-Net output + the closed-form posterior mean of the noise's per-channel
            mean (:class:`MeanPrior`); ``None``: the U-Net's output alone.
    """

    def __init__(self, unet: UNet2DModel, sde: SDE | None = None, mean_prior: MeanPrior | None = None) -> None:
        super().__init__()
        if unet.config.in_channels != unet.config.out_channels:
            raise ValueError(
                f"the U-Net must map C channels to C channels, got in={unet.config.in_channels}, "
                f"out={unet.config.out_channels}"
            )
        self.unet = unet
        self.sde = sde if sde is not None else SubVPSDE()
        if mean_prior is not None and len(mean_prior.mean) != unet.config.in_channels:
            raise ValueError(f"mean_prior has {len(mean_prior.mean)} channel(s), the U-Net {unet.config.in_channels}")
        self.mean_prior = mean_prior
        if mean_prior is not None:  # not in state_dict: the weights files stay the U-Net's alone
            self.register_buffer("_prior_mean", torch.tensor(mean_prior.mean).reshape(1, -1, 1, 1), persistent=False)
            self.register_buffer("_prior_var", torch.tensor(mean_prior.var).reshape(1, -1, 1, 1), persistent=False)


    def eps(self, x: torch.Tensor, t: torch.Tensor, *, unet: torch.nn.Module | None = None) -> torch.Tensor:
        """Network output ε̂ for ``x`` (B, C, H, W, model range) at times ``t`` (B,) → (B, C, H, W).

        ``unet``: a wrapper of this model's U-Net to run it through (data-parallel training's
        ``DistributedDataParallel``, whose backward all-reduces the gradients); default the U-Net itself."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        out = (self.unet if unet is None else unet)(x, t * TIME_LABEL_SCALE).sample
        if self.mean_prior is None:
            return out
        return out + self.mean_eps(x, t).to(out.dtype)

    def mean_eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The closed-form part of ε̂ (:class:`MeanPrior`): ``E[z̄_c | d_c]`` broadcast over the pixels, ``(B, C, 1, 1)``."""
        t = t.float()
        ones = torch.ones_like(t)
        alpha, sigma = self.sde.marginal_prob(ones, t)
        alpha, sigma = alpha.reshape(-1, 1, 1, 1), sigma.reshape(-1, 1, 1, 1)
        pixels = x.shape[-1] * x.shape[-2]
        d = x.float().mean((2, 3), keepdim=True)
        gain = (sigma / pixels) / (alpha**2 * self._prior_var + sigma**2 / pixels)
        return gain * (d - alpha * self._prior_mean)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Score ``-ε̂(x, t) / σ_t`` (score_sde ``get_score_fn`` for continuous sub-VP/VP), shape of ``x``."""
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        eps = self.eps(x, t)
        _, std = self.sde.marginal_prob(torch.zeros_like(t), t)
        return -eps / std.to(eps.dtype).reshape(-1, *([1] * (x.ndim - 1)))

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write the U-Net with diffusers' ``save_pretrained`` (safetensors + ``config.json``) and
        the SDE to ``safcore_sde.json``. Each file is moved into place atomically (a whole folder at once:
        :func:`safcore.runtime.runs.output_folder`, as ``safcore train`` does). A full disk is an ``OSError`` naming
        ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path, prefix=".save-") as tmp, writing(path):
            self.unet.save_pretrained(tmp, safe_serialization=True)
            for item in Path(tmp).iterdir():
                os.replace(item, path / item.name)
        atomic_write(path / SDE_CONFIG_NAME, json.dumps(_sde_to_config(self.sde, self.mean_prior), indent=2))
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, sde: SDE | None = None) -> ScoreModel:
        """Load any ``UNet2DModel`` saved by diffusers' ``save_pretrained`` at ``path``.

        The SDE is, in order: ``sde`` if given, the saved ``safcore_sde.json``, else sub-VP.
        """
        path = Path(path)
        if not (path / "config.json").is_file():
            raise ValueError(f"{str(path)!r} holds no diffusers config.json: not a saved UNet2DModel")
        weights = path / "diffusion_pytorch_model.safetensors"
        if weights.exists() or weights.is_symlink():  # truncated, another kind of file, a link to a device: one line
            check_safetensors(weights, "weights file", "save the model again")
        unet = UNet2DModel.from_pretrained(path, use_safetensors=True, low_cpu_mem_usage=False)
        mean_prior = None
        if (path / SDE_CONFIG_NAME).is_file():
            cfg = json.loads((path / SDE_CONFIG_NAME).read_text())
            if sde is None:
                sde = get_sde(cfg["name"], beta_min=cfg["beta_min"], beta_max=cfg["beta_max"])
            if "mean_prior" in cfg:
                mean_prior = MeanPrior(tuple(cfg["mean_prior"]["mean"]), tuple(cfg["mean_prior"]["var"]))
        return cls(unet, sde, mean_prior)

