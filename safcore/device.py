"""Which torch device a command or study runs on."""

from __future__ import annotations

import re

import torch

_CUDA = re.compile(r"^cuda(:\d+)?$")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or ``None``) → ``cuda`` when a GPU is visible, else ``cpu``; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` as given.

    Raises:
        ValueError: an unknown name, or a CUDA device this machine does not have (names what it has).
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
