"""How many images the network sees per call: the largest micro-batch that fits the device's free memory.

A sampler chunk (``Profile.sample_batch``, ``ProbeConfig.batch_size``) is the unit of random draws: its prior,
its step noise and (with split seeds) its generator are drawn for the whole chunk, so changing the chunk changes
the images (``tests/test_batching.py`` shows it). The network evaluation inside one step is different: every
row of ``ε̂(x, t)`` depends only on its own row (eval mode; GroupNorm is per image), so evaluating a chunk in
micro-batches of ``b`` rows and concatenating draws nothing and returns the same rows. This module chooses ``b``
for a CUDA device (:func:`fitting_batch_size`) and holds it while a block runs (:func:`forward_batch`);
:func:`in_micro_batches` is what the sampler's score call and a scheduler-driven model's network call go
through. Outside a :func:`forward_batch` block nothing is split, as before.

On a GPU the rows of a micro-batched call may differ from those of one whole call in the last bits (cuDNN may
pick another algorithm for another batch size); the draws, and so the law of every sample, stay the same.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Callable, Iterator

import torch

_LIMIT: contextvars.ContextVar[int | None] = contextvars.ContextVar("safcore_forward_batch", default=None)


@dataclasses.dataclass(frozen=True)
class BatchChoice:
    """The network micro-batch chosen for a device.

    Attributes:
        batch_size: images per network call (≥ 1, ≤ ``cap``).
        cap: the setting it is capped by (the sampler chunk / the probe's ``batch_size``).
        device: the device, e.g. ``"cuda:0"``.
        free_bytes: free device memory before the choice (``torch.cuda.mem_get_info``); ``None`` on the CPU.
        per_image_bytes: the measured peak allocation of one image's forward pass; ``None`` on the CPU.
        reason: how it was chosen, one line.
    """

    batch_size: int
    cap: int
    device: str
    free_bytes: int | None
    per_image_bytes: int | None
    reason: str

    def record(self) -> dict:
        """What a run's manifest ``extra`` records (not its key: micro-batching changes no draw)."""
        return {"forward_batch": self.batch_size, "forward_batch_cap": self.cap, "forward_batch_device": self.device,
                "forward_batch_free_bytes": self.free_bytes, "forward_batch_per_image_bytes": self.per_image_bytes,
                "forward_batch_reason": self.reason}


def _check_positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} = {value!r}; allowed: an integer ≥ 1")
    return value


def fitting_batch_size(forward: Callable[[int], object], device: str | torch.device, cap: int, *,
                       safety: float = 0.7, trial: int = 4) -> BatchChoice:
    """The most images per network call that fit ``device``'s free memory, at most ``cap``.

    On the CPU: ``cap`` unchanged. On CUDA: ``forward(trial)`` runs the network once on ``trial`` images (the
    caller builds them on ``device``; under ``torch.inference_mode``), its activation footprint per image is
    ``p = (max_memory_allocated − memory_allocated before) / trial`` bytes, and the choice is
    ``min(cap, max(1, ⌊safety · free / p⌋))`` with ``free`` from ``torch.cuda.mem_get_info`` after the trial.
    ``safety`` < 1 leaves room for the sampler's state (a few tensors of the chunk's size), the allocator's
    fragmentation and other processes.

    Args:
        forward: runs the network on ``n`` images of the shape it sees (e.g. ``gen.eps(zeros(n, C, H, W), t)``).
        device: where it runs.
        cap: the setting it may not exceed (≥ 1).
        safety: share of the free memory used, in (0, 1].
        trial: images of the trial forward pass (≥ 1; at most ``cap`` are used).

    Raises:
        ValueError: ``cap``, ``trial`` not integers ≥ 1, or ``safety`` outside (0, 1].
    """
    _check_positive("cap", cap)
    _check_positive("trial", trial)
    if not 0.0 < float(safety) <= 1.0:
        raise ValueError(f"safety = {safety!r}; allowed: a number in (0, 1]")
    device = torch.device(device)
    if device.type != "cuda":
        return BatchChoice(cap, cap, str(device), None, None, f"{device.type}: the setting as given")
    n = min(trial, cap)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    with torch.inference_mode():
        forward(n)
    torch.cuda.synchronize(device)
    per_image = max(1, math.ceil((torch.cuda.max_memory_allocated(device) - before) / n))
    free, _total = torch.cuda.mem_get_info(device)
    fit = int(float(safety) * free) // per_image
    chosen = max(1, min(cap, fit))
    why = (f"{safety:g} of {free / 2**30:.2f} GiB free / {per_image / 2**20:.2f} MiB per image = {fit}"
           f"{', capped at ' + str(cap) if fit > cap else ''}")
    return BatchChoice(chosen, cap, str(device), int(free), int(per_image), why)


@contextlib.contextmanager
def forward_batch(limit: int | None) -> Iterator[None]:
    """Inside the block the network sees at most ``limit`` images per call (:func:`in_micro_batches`);
    ``None``: no limit (the default outside any block)."""
    if limit is not None:
        _check_positive("forward batch", limit)
    token = _LIMIT.set(limit)
    try:
        yield
    finally:
        _LIMIT.reset(token)


def current_forward_batch() -> int | None:
    """The limit of the innermost :func:`forward_batch` block, ``None`` outside one."""
    return _LIMIT.get()


def in_micro_batches(call: Callable[[slice], torch.Tensor], n: int) -> torch.Tensor:
    """``call(slice(None))`` for ``n`` rows, or, inside a :func:`forward_batch` block whose limit ``b`` < ``n``,
    ``cat([call(slice(i, i + b)) for i in range(0, n, b)])`` along dim 0 (``call`` slices its own batched inputs)."""
    limit = _LIMIT.get()
    if limit is None or n <= limit:
        return call(slice(None))
    return torch.cat([call(slice(i, min(i + limit, n))) for i in range(0, n, limit)])
