"""DP-SGD for the score model (Abadi et al. 2016) with Opacus: per-sample clipping, Gaussian noise, accountant.

Each step draws a Poisson batch (every training image independently with rate q = B / N, B the expected
batch size), computes every image's own gradient of its denoising loss (Opacus' ``GradSampleModule``
hooks on the diffusers U-Net's Conv2d, Linear and GroupNorm layers — attention is built from Linear, the
time embedding's projection has no parameters, so every parameter gets a per-sample gradient; checked at
the first step; :class:`PerSampleGradients` fixes Opacus' Conv2d sampler for non-contiguous inputs), clips each to ℓ2 norm ≤ ``max_grad_norm``, sums them, adds N(0, σ²·max_grad_norm²)
and divides by B (Opacus' ``DPOptimizer`` around the Adam of plain training). The noise multiplier σ is
chosen before training so that the accountant (RDP, Mironov 2017; or PRV, Gopi et al. 2021) reports the
target ε at δ after the profile's steps (``opacus.accountants.utils.get_noise_multiplier``); the EMA of the
weights and the samples are post-processing and keep the guarantee.

What the guarantee covers: (ε, δ)-DP of the released weights (and everything drawn from them) with
respect to adding or removing one training image of ``D_p`` — ``x_p`` included. Settings this needed:
fp32 (no bf16 autocast: per-sample gradients and their norms are kept in fp32), no global gradient-norm
clipping (per-sample clipping replaces it), and one diffusion time and noise draw per image and step
(the plain loss; DPDM's noise multiplicity is not used). ``ε = ∞`` clips per-sample gradients and adds no
noise: the cost of clipping alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from typing import Literal

import torch
from opacus import GradSampleModule
from torch import nn
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.optimizers import DPOptimizer

from safcore.defences.mechanisms import check_bound, check_delta, check_epsilon
from safcore.generators.train import TrainConfig, Trainer

__all__ = ["DPSGD", "DPTrainer", "dp_train_config", "PerSampleGradients"]

Accountant = Literal["rdp", "prv"]


def _contiguous_conv_sampler(sampler):
    def compute(layer, activations, backprops):
        return sampler(layer, [a.contiguous() for a in activations], backprops)
    return compute


class PerSampleGradients(GradSampleModule):
    """Opacus' ``GradSampleModule`` with one fix: its Conv2d sampler unfolds the layer's input with
    ``as_strided`` strides that assume a contiguous tensor; the diffusers U-Net feeds some convolutions
    (after attention and GroupNorm at 7 × 7) non-contiguous inputs, and there the per-sample gradients
    came out as exact zeros while the batch gradient was not (Opacus 1.6, torch 2.14;
    tests/test_defences.py checks every parameter). The input is made contiguous first."""

    GRAD_SAMPLERS = {**GradSampleModule.GRAD_SAMPLERS,
                     nn.Conv2d: _contiguous_conv_sampler(GradSampleModule.GRAD_SAMPLERS[nn.Conv2d])}


@dataclasses.dataclass(frozen=True)
class DPSGD:
    """DP-SGD as a defence of a study: the score model is trained with Opacus for a target ε.

    Args:
        epsilon: the target ε after the profile's training steps, > 0; ``math.inf``: per-sample clipping
            without noise.
        delta: δ in (0, 1); ``None``: 1 / N_D².
        max_grad_norm: the per-sample clipping norm C.
        batch_size: the expected (Poisson) batch size B; ``None``: the profile's, at most N_D (q ≤ 1).
        accountant: ``"rdp"`` or ``"prv"``.
        seed: the noise's generator.
    """

    epsilon: float = math.inf
    delta: float | None = None
    max_grad_norm: float = 1.0
    batch_size: int | None = None
    accountant: Accountant = "rdp"
    seed: int = 0

    def __post_init__(self) -> None:
        check_epsilon(self.epsilon, "DPSGD.epsilon")
        if self.delta is not None:
            check_delta(self.delta, "DPSGD.delta")
        check_bound(self.max_grad_norm, "DPSGD.max_grad_norm")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                            or self.batch_size < 1):
            raise ValueError(f"DPSGD.batch_size = {self.batch_size!r}; allowed: None or an integer ≥ 1")
        if self.accountant not in ("rdp", "prv"):
            raise ValueError(f"DPSGD.accountant = {self.accountant!r}; allowed: 'rdp', 'prv'")

    def resolved_delta(self, n_dataset: int) -> float:
        return float(self.delta) if self.delta is not None else 1.0 / float(n_dataset) ** 2

    def label(self) -> str:
        return "DP-SGD ε=" + ("∞" if math.isinf(self.epsilon) else f"{self.epsilon:g}")

    def to_dict(self, n_dataset: int | None = None) -> dict:
        """JSON-safe settings for run keys (δ resolved for ``n_dataset``)."""
        delta = self.resolved_delta(n_dataset) if n_dataset is not None else self.delta
        return {"kind": "dpsgd", "epsilon": "inf" if math.isinf(self.epsilon) else float(self.epsilon),
                "delta": delta, "max_grad_norm": float(self.max_grad_norm), "batch_size": self.batch_size,
                "accountant": self.accountant, "seed": self.seed, "version": 1}


def dp_train_config(train: TrainConfig, dp: DPSGD, n_dataset: int) -> TrainConfig:
    """The training settings DP-SGD runs with: expected batch B = ``dp.batch_size`` or min(profile's, N_D),
    fp32, no global gradient clipping."""
    batch = dp.batch_size if dp.batch_size is not None else min(train.batch_size, n_dataset)
    if batch > n_dataset:
        raise ValueError(f"DPSGD.batch_size = {batch} exceeds N_D = {n_dataset}: the sampling rate B / N_D must be ≤ 1")
    return dataclasses.replace(train, batch_size=batch, grad_clip=0.0, bf16=False)


class DPTrainer(Trainer):
    """:class:`safcore.generators.train.Trainer` with DP-SGD steps (module docstring); build it through
    ``functools.partial(DPTrainer, dp=...)`` as :func:`safcore.generators.train.train`'s ``make_trainer``.

    ``config.batch_size`` is the expected batch size B (use :func:`dp_train_config`). Checkpoints add the
    noise generator's state and the accountant's history, so a resumed run is bit-identical on CPU and
    reports the same ε.
    """

    def __init__(self, images_unit: torch.Tensor, config: TrainConfig, sde=None, *, dp: DPSGD):
        if config.bf16 or config.grad_clip:
            raise ValueError("DP-SGD trains in fp32 without global gradient clipping; build its TrainConfig with "
                             "safcore.defences.dpsgd.dp_train_config")
        super().__init__(images_unit, config, sde)
        self.dp = dp
        n = int(self.data.shape[0])
        if config.batch_size > n:
            raise ValueError(f"expected batch size {config.batch_size} exceeds the {n} training images")
        self.sample_rate = config.batch_size / n
        self.delta = dp.resolved_delta(n)
        self.noise_multiplier = 0.0 if math.isinf(dp.epsilon) else float(get_noise_multiplier(
            target_epsilon=dp.epsilon, target_delta=self.delta, sample_rate=self.sample_rate, steps=config.steps,
            accountant=dp.accountant, epsilon_tolerance=0.01))
        self.grad_sample_module = PerSampleGradients(self.model, batch_first=True, loss_reduction="mean", strict=True)
        self.noise_generator = torch.Generator(device=self.device).manual_seed(dp.seed)
        self.dp_optimizer = DPOptimizer(self.optimizer, noise_multiplier=self.noise_multiplier,
                                        max_grad_norm=dp.max_grad_norm, expected_batch_size=config.batch_size,
                                        loss_reduction="mean", generator=self.noise_generator)
        self.accountant = RDPAccountant() if dp.accountant == "rdp" else PRVAccountant()
        self._checked = False

    def draw_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A Poisson batch: every image independently with probability q; times and noise for each."""
        g, n = self.generator, self.data.shape[0]
        idx = torch.nonzero(torch.rand(n, generator=g) < self.sample_rate).reshape(-1)
        t = torch.rand(len(idx), generator=g) * (1.0 - self.config.eps) + self.config.eps
        z = torch.randn((len(idx), *self.data.shape[1:]), generator=g)
        return self.data[idx.to(self.device)], t.to(self.device), z.to(self.device)

    def step(self) -> float:
        """One DP-SGD step: Poisson batch, per-sample gradients, clipping, noise, Adam, accountant, EMA."""
        self.step_count += 1
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step_count)
        x0, t, z = self.draw_batch()
        self.dp_optimizer.zero_grad(set_to_none=True)
        if len(x0):
            loss = self.loss(x0, t, z)
            with warnings.catch_warnings():  # Opacus' hooks on the first layer, whose input needs no gradient
                warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
                loss.backward()
            value = float(loss.detach())
            if not self._checked:
                missing = [name for name, p in zip(self.param_names, self.params) if getattr(p, "grad_sample", None) is None]
                if missing:
                    raise RuntimeError(f"DP-SGD: {len(missing)} parameter(s) received no per-sample gradient, e.g. "
                                       f"{missing[:3]}; their layers are not supported by Opacus' hooks")
                self._checked = True
        else:  # an empty Poisson batch still takes a noisy step (the accountant counts it)
            for p in self.params:
                p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
            value = float("nan")
        self.dp_optimizer.step()
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        self.ema.step(self.params)
        self.losses.append(value)
        return value

    def epsilon(self) -> float:
        """ε spent so far at δ (∞ without noise, 0 before the first step)."""
        if not self.accountant.history:
            return 0.0
        if self.noise_multiplier == 0.0:
            return math.inf
        return float(self.accountant.get_epsilon(delta=self.delta))

    def record(self) -> dict:
        eps = self.epsilon()
        return {"epsilon": "inf" if math.isinf(eps) else eps, "target_epsilon": self.dp.to_dict()["epsilon"],
                "delta": self.delta, "noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate,
                "expected_batch_size": self.config.batch_size, "max_grad_norm": self.dp.max_grad_norm,
                "accountant": self.dp.accountant, "steps": self.step_count}

    # ----------------------------------------------------------------- checkpoint state
    def _dp_settings(self) -> dict:
        return {"noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate,
                "max_grad_norm": self.dp.max_grad_norm, "accountant": self.dp.accountant, "delta": self.delta,
                "seed": self.dp.seed}

    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        tensors, metadata = super().state_tensors()
        tensors["rng.noise"] = self.noise_generator.get_state()
        metadata["dp"] = json.dumps(self._dp_settings(), sort_keys=True)
        metadata["accountant_history"] = json.dumps([list(h) for h in self.accountant.history])
        return tensors, metadata

    def load_state(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str], *, source: str = "checkpoint") -> None:
        if "dp" not in metadata:
            raise ValueError(f"{source} was written by plain (non-DP) training; use a fresh work_dir")
        saved, mine = json.loads(metadata["dp"]), json.loads(json.dumps(self._dp_settings(), sort_keys=True))
        if saved != mine:
            differ = ", ".join(f"{k}: saved {saved.get(k)!r} vs now {mine[k]!r}" for k in mine if saved.get(k) != mine[k])
            raise ValueError(f"{source} was written with other DP-SGD settings ({differ}); use a fresh work_dir")
        super().load_state(tensors, metadata, source=source)
        self.noise_generator.set_state(tensors["rng.noise"])
        self.accountant.history = [tuple(h) for h in json.loads(metadata["accountant_history"])]
