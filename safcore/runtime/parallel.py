"""Collective primitives for data parallelism (``accelerate``): ranks, the world size, seeds per rank, broadcast and
gather, and this process's accelerator under a launcher. Every layer may use them; as one plain process (no
launcher) they describe a world of size 1.

Derived seeds (one rule everywhere, :func:`derived_seed`)::

    derived_seed(seed, i) = seed                                                   for i = 0
                          = SeedSequence([seed, i]).generate_state(1, uint64)[0] >> 1   for i ≥ 1

(the rule of :func:`safcore.probe.run_seed`): stream 0 is the seed itself — so world size 1 reproduces the
single-process computation — and the others are independent streams that do not collide with those of
``seed + 1``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import torch

__all__ = [
    "DDP_FORMAT",
    "COLLECTIVE_TIMEOUT_S",
    "derived_seed",
    "rank_seeds",
    "gather",
    "DataParallel",
    "launched",
    "process_accelerator",
    "is_main_process",
    "broadcast_from_main",
]

#: The format of the ``distributed`` record in a data-parallel training checkpoint and in its kept weights.
DDP_FORMAT = "safcore-ddp/1"

#: How long a process waits in a collective call (a rank waits there while the main process waits for a run
#: key's lock held by another job, e.g. one training the same model): a day, not torch's 30 minutes.
COLLECTIVE_TIMEOUT_S = 24 * 3600

_ACCELERATOR: list = []


def derived_seed(seed: int, index: int) -> int:
    """The seed of stream ``index`` derived from ``seed`` (module docstring): ``seed`` for index 0, else
    ``SeedSequence([seed, index]).generate_state(1, uint64)[0] >> 1``.

    Raises:
        ValueError: ``seed`` or ``index`` is not an integer ≥ 0.
    """
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"stream index {index!r}: must be an integer ≥ 0")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed {seed!r}: must be an integer ≥ 0")
    if index == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0] >> 1)


def rank_seeds(seed: int, world_size: int) -> list[int]:
    """``[derived_seed(seed, r) for r in range(world_size)]``: the seed of every rank's random stream."""
    return [derived_seed(seed, r) for r in range(world_size)]


def gather(accelerator, obj) -> list:
    """``[obj of rank 0, obj of rank 1, …]`` on every rank (pickled; for small objects); ``[obj]`` for a world of
    one (``accelerator`` ``None`` or of one process). A collective call: every rank must make it."""
    if accelerator is None or accelerator.num_processes == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """This process's place in a data-parallel group: an ``accelerate.Accelerator`` (or anything with its
    ``process_index``, ``num_processes``, ``device``, ``prepare_model``, ``gather``, ``wait_for_everyone``), or
    ``None`` for a group of one process (rank 0 of world size 1)."""

    accelerator: Any = None

    @property
    def rank(self) -> int:
        return 0 if self.accelerator is None else int(self.accelerator.process_index)

    @property
    def world_size(self) -> int:
        return 1 if self.accelerator is None else int(self.accelerator.num_processes)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, obj) -> list:
        """:func:`gather` over this group (a collective call)."""
        return gather(self.accelerator, obj)

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` wrapped for data-parallel training (``DistributedDataParallel`` when the world size is above
        1: its backward all-reduces, i.e. averages, the gradients); the module itself for a group of one."""
        return module if self.accelerator is None else self.accelerator.prepare_model(module)

    def gather_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` (the same shape on all ranks; sent from the group's device, NCCL on GPUs),
        concatenated along dimension 0 in rank order, on the CPU. A collective call."""
        if self.world_size == 1:
            return tensor
        return self.accelerator.gather(tensor.to(self.accelerator.device)).cpu()

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()


def launched() -> bool:
    """Whether this process is one of several started by a launcher (``accelerate launch``, ``torchrun``):
    the launcher's ``WORLD_SIZE`` is above 1."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def process_accelerator():
    """This process's :class:`accelerate.Accelerator` under a launcher (made once; DDP over NCCL on GPUs, over
    gloo on the CPU when no GPU is visible; collective timeout :data:`COLLECTIVE_TIMEOUT_S`); ``None`` for a
    plain single process, which then runs every stage as it always did."""
    if not launched():
        return None
    if not _ACCELERATOR:
        from datetime import timedelta

        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        handler = InitProcessGroupKwargs(timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
        _ACCELERATOR.append(Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[handler]))
    return _ACCELERATOR[0]


def is_main_process() -> bool:
    """True for a plain process and for the launcher's global rank 0 (the one that writes reports)."""
    return not launched() or int(os.environ.get("RANK", "0")) == 0


def broadcast_from_main(value):
    """``value`` of the main process, on every rank (a collective call; a plain process gets its own)."""
    accelerator = process_accelerator()
    if accelerator is None or accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value if accelerator.is_main_process else None]
    broadcast_object_list(box, from_process=0)
    return box[0]
