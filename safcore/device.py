"""Which torch device a command or study runs on."""

from __future__ import annotations

import os
import re

import torch

_CUDA = re.compile(r"^cuda(:\d+)?$")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or ``None``) → ``cuda`` when a GPU is visible, else ``cpu``; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` as given.

    Under a launcher (``accelerate launch``, ``torchrun``: ``WORLD_SIZE`` > 1 and ``LOCAL_RANK`` set) ``"auto"``
    and ``"cuda"`` mean this process's own GPU, ``cuda:LOCAL_RANK`` (modulo the GPUs visible), so that N
    processes on one machine use N GPUs; ``"cuda:N"`` stays the device named.

    Raises:
        ValueError: an unknown name, or a CUDA device this machine does not have (names what it has).
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and _launched_local_rank() is not None and torch.cuda.is_available():
        return torch.device(f"cuda:{_launched_local_rank() % torch.cuda.device_count()}")
    if device == "cpu":
        return torch.device("cpu")
    if isinstance(device, str) and _CUDA.match(device):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= count:
            raise ValueError(f"device {device!r} is not available: this machine has {count} CUDA device(s); "
                             "allowed: auto, cpu" + (f", cuda, cuda:0 … cuda:{count - 1}" if count else ""))
        return torch.device(device)
    raise ValueError(f"device {device!r}; allowed: auto, cpu, cuda, cuda:N")


def _launched_local_rank() -> int | None:
    """This process's ``LOCAL_RANK`` when a launcher started several processes, else ``None``."""
    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ:
            return int(os.environ["LOCAL_RANK"])
    except ValueError:
        return None
    return None
