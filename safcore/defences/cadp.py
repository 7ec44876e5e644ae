"""CADP: content-aware differential privacy with a conditional invertible network (Tölle et al. 2022).

An image ``x`` with label ``y`` is encoded by a label-conditioned INN, ``z = f(x | y)`` (a bijection
to a D-dimensional latent, D = C·S·S, trained so that ``z ~ N(0, I)``), the latent is clipped and
noised by a per-image mechanism (:mod:`safcore.defences.mechanisms`), and decoded with the same
label, ``x̃ = f⁻¹(z̃ | y)``. The network follows the public CADP code (Cardio-AI/CADP ``models.conv_model``,
built with FrEIA): i-RevNet downsampling, GLOW affine couplings with conv subnets and the label's
one-hot maps as condition at each resolution, random permutations, then fully connected couplings on
the flattened latent conditioned on the one-hot label.

What the guarantee covers (``ε < ∞``): each released image ``x̃`` is ε-DP (Laplace) or (ε, δ)-DP
(Gaussian) with respect to replacing its source image by any other image *of the same label*, i.e.
local DP of the image given its label: the label is released as it is, and the INN is a fixed public
function. That holds only because the INN never saw the private images: :func:`train_inn` is given
the dataset's train split **without** ``D_p``'s ``N_D`` images (so without ``x_p``, its clean original
``x_i`` or any other image of ``D_p``). Images of one patient released separately compose (k images:
kε). ``ε = ∞`` is the INN round trip alone, no clipping, no noise.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Literal

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import torch
import torch.nn as nn
from safetensors.torch import load_file

from safcore.defences.mechanisms import MECHANISMS, Mechanism, check_bound, check_delta, check_epsilon, perturb
from safcore.runtime.progress import progress_bar
from safcore.runtime.runs import atomic_save_safetensors, atomic_write

__all__ = ["INNConfig", "CADP", "ConditionalINN", "train_inn", "privatize", "Privatized"]


@dataclasses.dataclass(frozen=True)
class INNConfig:
    """The conditional INN and its maximum-likelihood training.

    Args:
        depths: coupling blocks per resolution level; each level starts with an i-RevNet downsampling
            (28 → 14 → 7 px for two levels; the side must stay even).
        width: channels of the conv subnets (CADP: 128).
        fc_blocks: fully connected couplings on the flattened latent (CADP's mnist config: 2).
        fc_width: hidden width of their subnets (CADP: 392).
        clamp: GLOW's soft clamp of the log-scales (CADP: 1.5–2).
        steps, batch_size, lr: Adam steps, images per step and learning rate (CADP: 5e-4).
        dequantize: uniform noise of this width added to training images (pixels are k/255).
        seed: initialisation, permutations, batches and dequantization noise.
    """

    depths: tuple[int, ...] = (2, 2)
    width: int = 32
    fc_blocks: int = 2
    fc_width: int = 256
    clamp: float = 1.5
    steps: int = 2000
    batch_size: int = 64
    lr: float = 5e-4
    dequantize: float = 1.0 / 256.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.depths or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in self.depths):
            raise ValueError(f"INNConfig.depths = {self.depths!r}; allowed: a non-empty tuple of integers ≥ 1")
        for name in ("width", "fc_width", "steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"INNConfig.{name} = {value!r}; allowed: an integer ≥ 1")
        if isinstance(self.fc_blocks, bool) or not isinstance(self.fc_blocks, int) or self.fc_blocks < 0:
            raise ValueError(f"INNConfig.fc_blocks = {self.fc_blocks!r}; allowed: an integer ≥ 0")
        for name in ("clamp", "lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"INNConfig.{name} = {getattr(self, name)!r}; allowed: a number > 0")
        if not 0 <= self.dequantize < 1:
            raise ValueError(f"INNConfig.dequantize = {self.dequantize!r}; allowed: [0, 1)")


@dataclasses.dataclass(frozen=True)
class CADP:
    """CADP as a defence of a study: every image of ``D_p`` (``x_p`` with its SAF included) is replaced
    by its privatized version before the score model is trained.

    Args:
        epsilon: privacy per released image, > 0; ``math.inf``: the INN round trip alone.
        mechanism: ``"laplace"`` (pure ε-DP, ℓ1 clipping, scale 2C/ε) or ``"gaussian"`` ((ε, δ)-DP, ℓ2
            clipping, analytic σ).
        delta: the Gaussian mechanism's δ per image, in (0, 1).
        clip: the clipping norm C of each latent; ``None``: the expected norm of a standard normal latent of
            dimension D (ℓ1: D·√(2/π); ℓ2: √D), which a trained INN's latents have, so that clipping
            changes a typical image little. The noise-to-signal ratio does not depend on C (both scale with it).
        seed: the noise.
        inn: the INN's settings; ``None``: the profile's (:attr:`safcore.study.profiles.Profile.inn`).
    """

    epsilon: float = math.inf
    mechanism: Mechanism = "laplace"
    delta: float = 1e-5
    clip: float | None = None
    seed: int = 0
    inn: INNConfig | None = None

    def __post_init__(self) -> None:
        check_epsilon(self.epsilon, "CADP.epsilon")
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"CADP.mechanism = {self.mechanism!r}; allowed: {', '.join(MECHANISMS)}")
        check_delta(self.delta, "CADP.delta")
        if self.clip is not None:
            check_bound(self.clip, "CADP.clip")
        if self.inn is not None and not isinstance(self.inn, INNConfig):
            raise ValueError(f"CADP.inn is a {type(self.inn).__name__}; allowed: an INNConfig or None")

    def bound(self, dim: int) -> float:
        """C for latents of dimension ``dim``: ``clip``, or the standard normal's expected norm."""
        if self.clip is not None:
            return float(self.clip)
        return dim * math.sqrt(2.0 / math.pi) if self.mechanism == "laplace" else math.sqrt(dim)

    def label(self) -> str:
        """``CADP ε=1 (laplace)``."""
        eps = "∞" if math.isinf(self.epsilon) else f"{self.epsilon:g}"
        return f"CADP ε={eps}" + ("" if math.isinf(self.epsilon) else f" ({self.mechanism})")

    def to_dict(self, inn: INNConfig | None = None) -> dict:
        """JSON-safe settings for run keys (``inn``: the resolved INN settings)."""
        inn = inn if inn is not None else self.inn
        return {"kind": "cadp", "epsilon": "inf" if math.isinf(self.epsilon) else float(self.epsilon),
                "mechanism": self.mechanism,
                "delta": float(self.delta) if self.mechanism == "gaussian" else None,
                "clip": self.clip, "seed": self.seed,
                "inn": dataclasses.asdict(inn) if inn is not None else None, "version": 1}


def _subnet_conv(width: int):
    def make(c_in: int, c_out: int) -> nn.Sequential:
        net = nn.Sequential(nn.Conv2d(c_in, width, 3, padding=1), nn.ReLU(),
                            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                            nn.Conv2d(width, c_out, 3, padding=1))
        nn.init.zeros_(net[-1].weight)  # each coupling starts as the identity (as CADP's subnets)
        nn.init.zeros_(net[-1].bias)
        return net
    return make


def _subnet_fc(width: int):
    def make(c_in: int, c_out: int) -> nn.Sequential:
        net = nn.Sequential(nn.Linear(c_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, c_out))
        nn.init.zeros_(net[-1].weight)
        nn.init.zeros_(net[-1].bias)
        return net
    return make


class ConditionalINN(nn.Module):
    """``z = f(x | y)``: a label-conditioned invertible network from images (B, C, S, S) in [0, 1] to
    latents (B, D), D = C·S·S; ``decode`` is its exact inverse.

    Args:
        channels, image_size: the images' C and S (S divisible by 2^len(depths)).
        n_classes: length of the condition vector (classes, or labels of a multi-label task).
        config: the architecture (:class:`INNConfig`).
    """

    def __init__(self, channels: int, image_size: int, n_classes: int, config: INNConfig = INNConfig()):
        super().__init__()
        levels = len(config.depths)
        if image_size % (2 ** levels):
            raise ValueError(f"a {image_size} px image cannot be downsampled {levels} times by 2; use fewer INNConfig.depths")
        self.channels, self.image_size, self.n_classes, self.config = channels, image_size, n_classes, config
        torch.manual_seed(config.seed)
        inn = Ff.SequenceINN(channels, image_size, image_size)
        size, seed = image_size, config.seed
        for level, depth in enumerate(config.depths):
            inn.append(Fm.IRevNetDownsampling)
            size //= 2
            for _ in range(depth):
                inn.append(Fm.GLOWCouplingBlock, cond=level, cond_shape=(n_classes, size, size),
                           subnet_constructor=_subnet_conv(config.width), clamp=config.clamp)
                seed += 1
                inn.append(Fm.PermuteRandom, seed=seed)
        inn.append(Fm.Flatten)
        for _ in range(config.fc_blocks):
            seed += 1
            inn.append(Fm.PermuteRandom, seed=seed)
            inn.append(Fm.GLOWCouplingBlock, cond=levels, cond_shape=(n_classes,),
                       subnet_constructor=_subnet_fc(config.fc_width), clamp=config.clamp)
        self.inn = inn
        self.sizes = [image_size // 2 ** (level + 1) for level in range(levels)]

    @property
    def dim(self) -> int:
        return self.channels * self.image_size * self.image_size

    def conditions(self, y: torch.Tensor) -> list[torch.Tensor]:
        """The condition of each level from one-hot / multi-hot labels ``y`` (B, n_classes)."""
        y = y.float()
        maps = [y[:, :, None, None].expand(-1, -1, s, s).contiguous() for s in self.sizes]
        return [*maps, y] if self.config.fc_blocks else maps

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z (B, D), log|det ∂z/∂x| (B,))`` for images ``x`` in [0, 1] (mapped to [-1, 1] first)."""
        z, log_det = self.inn(x * 2.0 - 1.0, c=self.conditions(y))
        return z.reshape(len(z), -1), log_det

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Images (B, C, S, S) in model units mapped back to [0, 1] (not clamped) from latents (B, D)."""
        shape = (len(z), self.dim) if self.config.fc_blocks else (len(z), self.channels * 4 ** len(self.sizes),
                                                                 self.sizes[-1], self.sizes[-1])
        x, _ = self.inn(z.reshape(shape), c=self.conditions(y), rev=True, jac=False)
        return (x.reshape(len(z), self.channels, self.image_size, self.image_size) + 1.0) / 2.0

    def nll(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood per dimension under ``z ~ N(0, I)`` (up to the constant ½ log 2π)."""
        z, log_det = self.encode(x, y)
        return ((0.5 * z.pow(2).sum(1) - log_det) / z.shape[1]).mean()

    # ------------------------------------------------------------------ storage (safetensors + JSON)
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"channels": self.channels, "image_size": self.image_size, "n_classes": self.n_classes,
                "config": dataclasses.asdict(self.config)}
        atomic_write(folder / "inn.json", json.dumps(meta, indent=2))
        atomic_save_safetensors({k: v.contiguous() for k, v in self.state_dict().items()}, folder / "inn.safetensors")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ConditionalINN:
        folder = Path(folder)
        meta = json.loads((folder / "inn.json").read_text())
        config = meta["config"]
        config = INNConfig(**{**config, "depths": tuple(config["depths"])})
        model = cls(meta["channels"], meta["image_size"], meta["n_classes"], config)
        model.load_state_dict(load_file(str(folder / "inn.safetensors")), strict=True)
        return model.eval()


def one_hot(labels, n_classes: int, task: Literal["multi-class", "multi-label"] = "multi-class") -> torch.Tensor:
    """MedMNIST labels ``(N, 1)`` class indices (or ``(N, L)`` 0/1 for multi-label) → ``(N, n_classes)`` float."""
    y = torch.as_tensor(labels).long()
    if task == "multi-label":
        return y.float()
    return torch.nn.functional.one_hot(y.reshape(-1), n_classes).float()


def train_inn(images: torch.Tensor, labels: torch.Tensor, config: INNConfig = INNConfig(), *,
              progress: bool = True, device: str | torch.device = "cpu") -> tuple[ConditionalINN, dict]:
    """Maximum-likelihood training of a :class:`ConditionalINN` on ``images`` (N, C, S, S) in [0, 1] with
    condition vectors ``labels`` (N, n_classes). Returns the model (eval mode) and a record (final NLL per
    dimension in nats, seconds). Batches are drawn on the CPU (one seeded generator) and moved to ``device``."""
    if images.ndim != 4 or len(images) != len(labels):
        raise ValueError(f"train_inn needs images (N, C, S, S) and N condition vectors; got {tuple(images.shape)} "
                         f"and {tuple(labels.shape)}")
    device = torch.device(device)
    model = ConditionalINN(int(images.shape[1]), int(images.shape[-1]), int(labels.shape[1]), config).to(device).train()
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=1e-8)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
    losses: list[float] = []
    start = time.perf_counter()
    bar = progress_bar(total=config.steps, enabled=progress, desc="CADP INN", unit="step")
    for step in range(config.steps):
        idx = torch.randint(0, len(images), (config.batch_size,), generator=generator)
        x = images[idx] + config.dequantize * torch.rand(images[idx].shape, generator=generator)
        loss = model.nll(x.clamp(0.0, 1.0).to(device), labels[idx].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        bar.update(1)
        if progress and step % 20 == 0:
            bar.set_postfix(nll=f"{losses[-1]:.3f}")
    bar.close()
    tail = losses[-min(50, len(losses)):]
    record = {"nll_per_dim_nats": sum(tail) / len(tail), "seconds": time.perf_counter() - start,
              "n_images": int(len(images))}
    return model.cpu().eval(), record


@dataclasses.dataclass(frozen=True)
class Privatized:
    """Images after :func:`privatize`: ``images`` (N, C, S, S) in [0, 1], which rows' latents were clipped,
    the clipping norm C and the noise scale (Laplace b or Gaussian σ per latent coordinate)."""

    images: torch.Tensor
    clipped: torch.Tensor
    bound: float
    scale: float


@torch.no_grad()
def privatize(inn: ConditionalINN, images: torch.Tensor, labels: torch.Tensor, defence: CADP, *,
              generator: torch.Generator | None = None, batch_size: int = 256) -> Privatized:
    """CADP for each image of ``images`` (N, C, S, S) in [0, 1] with condition vectors ``labels`` (N, K):
    encode, clip its own latent, add noise, decode with the same label, clamp to [0, 1]."""
    check_epsilon(defence.epsilon, "CADP.epsilon")
    generator = generator if generator is not None else torch.Generator().manual_seed(defence.seed)
    bound = defence.bound(inn.dim)
    outputs, clipped, scale = [], [], 0.0
    for i in range(0, len(images), batch_size):
        x, y = images[i:i + batch_size].float(), labels[i:i + batch_size]
        z, _ = inn.encode(x, y)
        noisy, was, scale = perturb(z.double(), epsilon=defence.epsilon, mechanism=defence.mechanism, bound=bound,
                                    delta=defence.delta, generator=generator)
        outputs.append(inn.decode(noisy.float(), y))
        clipped.append(was)
    decoded = torch.cat(outputs)
    # a latent far outside the training distribution can decode to inf/NaN through the inverse couplings
    decoded = torch.nan_to_num(decoded, nan=0.5, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)
    return Privatized(decoded.cpu(), torch.cat(clipped).cpu(), bound, scale)
