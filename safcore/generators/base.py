"""The one contract every model under audit meets: a :class:`Generator`.

The audit, the probe (Algorithm 1), the membership-inference attacks and the defences need the same few
things from any diffusion model, whatever library trained it. Every such model has a Gaussian forward
kernel (Song et al. 2020, Eq. 29 for sub-VP; Ho et al. 2020, Eq. 4 for DDPM)

    x_t = a_t x_0 + σ_t ε,    ε ~ N(0, I),    t ∈ [0, 1],

and a network that predicts the noise, ``ε̂(x_t, t)``. A :class:`Generator` exposes exactly that:

- what it is: ``channels``, ``image_size`` (px), ``device``, ``dtype`` of its network (``None``: any) and
  ``t_min``, the smallest time it was trained at;
- its kernel: :meth:`~Generator.coefficients` ``(a_t, σ_t)`` and :meth:`~Generator.marginal_std` ``σ_t``;
- its noise prediction :meth:`~Generator.eps`;
- its processes: :meth:`~Generator.diffuse` (``x_0 → x_t``), :meth:`~Generator.reverse` (``x_t → x_0``, from
  per-sample start times, the tail of a full run of ``steps`` steps) and :meth:`~Generator.sample` (from the
  prior, all ``steps`` steps);
- :meth:`~Generator.identity`: what the run store keys its samples and probes by;
- where its diffusion runs: :attr:`~Generator.space` (``"pixel"``, or ``"latent"`` for a latent diffusion model,
  :class:`~safcore.generators.latent_model.LatentModel`), :meth:`~Generator.encode` (images → that space) and
  :meth:`~Generator.decode` (back). ``coefficients``, ``eps``, ``diffuse`` and ``reverse`` work in that space (the
  "model space"); ``sample`` returns decoded images; ``channels`` and ``image_size`` are the images'.
- its classes: :attr:`~Generator.num_classes` (``K`` of a class-conditional network, ``None``: unconditional) and
  :meth:`~Generator.conditioned` (the same model with its class fixed: every ``eps``/``reverse``/``sample`` call
  passes that label for each row).

Two implementations: :class:`SDEGenerator` (any score function of an :class:`~safcore.generators.sde.SDE`:
safcore's own :class:`~safcore.generators.score_model.ScoreModel`, the exact
:class:`~safcore.generators.known_answer.PointMixtureScore`, …) and
:class:`~safcore.generators.diffusers_model.DiffusersModel` (a diffusers U-Net driven by its own scheduler).
:func:`safcore.generators.loader.as_generator` is the one place that asks which kind a model is.

Shapes: images ``(B, C, H, W)`` in the model range ``[-1, 1]``; times ``(B,)`` in ``[0, 1]``; a pixel model's
model space is its images (``encode``, ``decode``: the identity).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from safcore.generators.sde import SDE

__all__ = ["Generator", "SDEGenerator", "Draws", "steps_for", "check_label", "SDE_T_MIN"]

#: Smallest time a safcore score model is trained at (score_sde's training ε; TrainConfig.eps).
SDE_T_MIN = 1e-5


class Draws(Protocol):
    """What :meth:`Generator.sample` returns: ``images`` ``(n, C, H, W)`` model range and ``nfe`` per image."""

    images: torch.Tensor
    nfe: int


@runtime_checkable
class Generator(Protocol):
    """What the audit, the probe, the attacks and the defences need from any model (module docstring)."""

    t_min: float

    @property
    def channels(self) -> int: ...

    @property
    def image_size(self) -> int: ...

    @property
    def device(self) -> torch.device | None: ...

    @property
    def dtype(self) -> torch.dtype | None: ...

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a_t, σ_t)``, each ``(B,)``, of the forward kernel at ``t`` ``(B,)``."""
        ...

    def marginal_std(self, ts: Sequence[float] | np.ndarray) -> np.ndarray:
        """``σ_t`` for each ``t``, float64 ``(T,)``."""
        ...

    def time_for_ratio(self, ratio: float) -> float:
        """The model's own time ``t`` whose noise-to-signal ratio ``σ_t / a_t`` is ``ratio`` (> 0)."""
        ...

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network's noise prediction ``ε̂(x, t)``, shape of ``x``."""
        ...

    def diffuse(self, x0: torch.Tensor, t_vec: torch.Tensor, steps: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """``x_t ~ q(x_t | x_0)`` for each row's ``t``; ``steps`` of a full reverse run (a scheduler's grid)."""
        ...

    def reverse(self, x_t: torch.Tensor, t_vec: torch.Tensor, steps: int, generator: torch.Generator | None = None,
                *, autocast_bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Reverse each row from its ``t`` to 0 with the step size of a full run of ``steps`` steps.

        Returns ``(images (B, C, H, W) model range, nfe (B,) int64)``."""
        ...

    def sample(self, n: int, *, steps: int, generator: torch.Generator | None = None, batch_size: int | None = None,
               autocast_bf16: bool = False, progress: bool = True) -> Draws:
        """``n`` images from the prior through all ``steps`` steps."""
        ...

    def identity(self) -> dict:
        """What the run store keys this model's samples and probes by (hashes of weights and settings)."""
        ...

    @property
    def space(self) -> str:
        """Where the diffusion runs: ``"pixel"`` (on the images) or ``"latent"`` (on an autoencoder's latents)."""
        ...

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` model range → the space the diffusion runs in (pixel: the images themselves)."""
        ...

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Back from that space to images ``(B, C, H, W)`` model range (pixel: ``z`` itself)."""
        ...

    @property
    def num_classes(self) -> int | None:
        """``K`` of a class-conditional network (labels ``0 … K − 1``); ``None``: unconditional."""
        ...

    def conditioned(self, label: int | None) -> Generator:
        """The same model with its class fixed to ``label`` (:func:`check_label`); ``None``: unconditioned."""
        ...


def check_label(label: int | None, num_classes: int | None) -> int | None:
    """``label`` checked for a model of ``num_classes`` classes: an integer in ``[0, K)``, or ``None`` for an
    unconditional model (``num_classes`` ``None``), which takes no label.

    Raises:
        ValueError: one line naming the label and what is allowed."""
    if label is None:
        return None
    if num_classes is None:
        raise ValueError(f"class label {label!r} given to an unconditional model; allowed: None (it has no classes)")
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= int(label) < num_classes:
        raise ValueError(f"class label {label!r}; allowed: an integer in [0, {num_classes}) (the model's "
                         f"num_class_embeds = {num_classes})")
    return int(label)


def steps_for(t: float, steps_full: int, eps: float) -> int:
    """Steps of a reverse run from ``t`` on the grid of a full run of ``steps_full`` steps down to ``eps``:
    ``ceil((t − eps) / (1 − eps) · steps_full)``, at least 1 (Algorithm 1 keeps the step size of a full run)."""
    # round first so that e.g. 0.3 · 100 = 30.000000000000004 does not become 31 steps
    return max(1, math.ceil(round((t - eps) / (1.0 - eps) * steps_full, 9)))


def _time_vector(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


class SDEGenerator:
    """A score function of a forward SDE as a :class:`Generator`.

    Args:
        score: ``s(x (B, C, H, W) model range, t (B,))`` → ``(B, C, H, W)``, ``≈ ∇_x log p_t(x)``.
        sde: its forward SDE; the kernel is ``sde.marginal_prob`` (score_sde's ``marginal_prob``).
        eps_fn: the network's own ``ε̂(x, t)`` where it has one (safcore's ``ScoreModel.eps``); else
            ``ε̂ = −σ_t · s(x, t)`` (score_sde's ``get_score_fn`` read backwards), computed in the dtype of the
            images it is given (float64 keeps the exact scores of point masses exact).
        method: the reverse sampler of :func:`safcore.generators.sampling.sample` (``"euler_maruyama"``,
            ``"pc"``, ``"ode"``, ``"dpm2m"``, ``"dpm2m_sde"``).
        eps: end of the reverse time grid (score_sde: 1e-3).
        channels, image_size, device, dtype: what the score model is (``None`` where a function has no such
            property, e.g. an analytic score).
        identity: the run-store identity (a callable, evaluated on demand: it may hash weights).
    """

    def __init__(self, score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], sde: SDE, *,
                 eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 method: str = "euler_maruyama", eps: float = 1e-3, channels: int | None = None,
                 image_size: int | None = None, device: torch.device | None = None, dtype: torch.dtype | None = None,
                 identity: Callable[[], dict] | None = None, t_min: float = SDE_T_MIN) -> None:
        if sde is None or not callable(score):
            raise ValueError(f"{type(score).__name__} is not a score function with an sde; pass the score model's SDE")
        self.score, self.sde, self._eps_fn = score, sde, eps_fn
        self.method, self.eps_end, self.t_min = method, float(eps), float(t_min)
        self._channels, self._image_size, self._device, self._dtype = channels, image_size, device, dtype
        self._identity = identity

    def __repr__(self) -> str:
        return f"SDEGenerator({type(self.score).__name__}, {type(self.sde).__name__}, {self.method})"

    @property
    def channels(self) -> int | None:
        return self._channels

    @property
    def image_size(self) -> int | None:
        return self._image_size

    @property
    def device(self) -> torch.device | None:
        return self._device

    @property
    def dtype(self) -> torch.dtype | None:
        return self._dtype

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a_t, σ_t)`` of ``sde.marginal_prob`` (mean ``a_t x_0``, std ``σ_t``), each ``(B,)``."""
        return self.sde.marginal_prob(torch.ones_like(t), t)

    def marginal_std(self, ts: Sequence[float] | np.ndarray) -> np.ndarray:
        """``σ_t`` of ``p(x_t | x_0)`` for each t (sub-VP: ``1 − e^{2 lmc(t)}``), float64 ``(T,)``."""
        t = torch.as_tensor(np.asarray(ts, dtype=np.float64), dtype=torch.float64).reshape(-1)
        _, std = self.sde.marginal_prob(torch.zeros(t.shape[0], 1, 1, 1, dtype=torch.float64), t)
        return std.reshape(-1).cpu().numpy().astype(np.float64)

    def time_for_ratio(self, ratio: float) -> float:
        """The root of ``log(σ_t/a_t) = log(ratio)`` on ``[t_min, T]`` (``scipy.optimize.brentq``; ``σ/a`` rises
        monotonically in t for sub-VP and VP).

        A ratio below that of ``t_min`` is clipped to ``t_min``, one above that of ``T = 1`` to ``T``, each with
        a ``UserWarning``: the sub-VP SDE's ``σ_t ≈ β_min t`` falls to 0 faster than the VP's ``sqrt(β_min t)``, so
        a very small ratio may lie below what its trained times reach."""
        from scipy.optimize import brentq

        target = math.log(ratio)

        def log_ratio(t: float) -> float:
            a, s = self.coefficients(torch.tensor([t], dtype=torch.float64))
            return math.log(float(s[0])) - math.log(float(a[0]))

        lo, hi = self.t_min, float(self.sde.T)
        f_lo, f_hi = log_ratio(lo) - target, log_ratio(hi) - target
        if f_lo >= 0.0:
            if f_lo > 0.0:
                warnings.warn(f"σ/a = {ratio:.3g} lies below the model's at t_min = {lo:g} "
                              f"({math.exp(f_lo + target):.3g}); clipped to t_min", stacklevel=3)
            return lo
        if f_hi <= 0.0:
            if f_hi < 0.0:
                warnings.warn(f"σ/a = {ratio:.3g} lies above the model's at t = {hi:g} "
                              f"({math.exp(f_hi + target):.3g}); clipped to t = {hi:g}", stacklevel=3)
            return hi
        return float(brentq(lambda t: log_ratio(t) - target, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps))

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = _time_vector(t, x)
        if self._eps_fn is not None:
            return self._eps_fn(x, t)
        _, sigma = self.coefficients(t)
        return -sigma.reshape(-1, *([1] * (x.ndim - 1))) * self.score(x, t)

    def diffuse(self, x0: torch.Tensor, t_vec: torch.Tensor, steps: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """``x_t = a_t x_0 + σ_t z`` (the SDE's perturbation kernel, Song Eq. 29 for sub-VP); ``steps`` unused."""
        mean, std = self.sde.marginal_prob(x0, t_vec)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return mean + std.reshape(x0.shape[0], 1, 1, 1) * noise

    def reverse(self, x_t: torch.Tensor, t_vec: torch.Tensor, steps: int, generator: torch.Generator | None = None,
                *, autocast_bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row from its ``t`` down to ``eps`` on its own grid of :func:`steps_for` steps (the step size of a
        full run of ``steps``; a λ-grid solver: :func:`safcore.generators.solvers.logsnr_steps`), with
        :func:`safcore.generators.sampling.sample`."""
        from safcore.generators.sampling import reverse_steps, sample

        per_row = torch.tensor([reverse_steps(self.sde, self.method, float(t), steps, self.eps_end)
                                for t in t_vec.tolist()], dtype=torch.int64)
        res = sample(self.score, self.sde, x_t=x_t, t_start=t_vec, method=self.method, steps=per_row, eps=self.eps_end,
                     generator=generator, autocast_bf16=autocast_bf16, progress=False)
        return res.images, res.nfe_per_sample.to(torch.int64)

    def sample(self, n: int, *, steps: int, generator: torch.Generator | None = None, batch_size: int | None = None,
               autocast_bf16: bool = False, progress: bool = True):
        """``n`` images from the prior ``N(0, I)`` at ``t = 1`` (:func:`safcore.generators.sampling.sample`)."""
        from safcore.generators.sampling import sample

        if self.channels is None or self.image_size is None:
            raise ValueError(f"{type(self.score).__name__} has no channels / image_size; sample it with "
                             "safcore.generators.sampling.sample(score, sde, shape=...)")
        return sample(self.score, self.sde, shape=(n, self.channels, self.image_size, self.image_size),
                      method=self.method, steps=steps, eps=self.eps_end, generator=generator, batch_size=batch_size,
                      autocast_bf16=autocast_bf16, progress=progress)

    space = "pixel"

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The images themselves: an SDE model diffuses pixels."""
        return images

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z

    @property
    def num_classes(self) -> None:
        """An SDE score function is unconditional."""
        return None

    def conditioned(self, label: int | None) -> SDEGenerator:
        """``self`` for ``None``; a label is refused (:func:`check_label`)."""
        check_label(label, None)
        return self

    def identity(self) -> dict:
        if self._identity is None:
            raise ValueError(f"{type(self.score).__name__} has no run-store identity (an analytic score is not stored)")
        return self._identity()
