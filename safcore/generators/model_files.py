"""A user's model folder read as data, never as code: its JSON configs and its weights.

Every refusal is one :class:`ModelLoadError` naming the file and what is allowed. Weights come from safetensors
or from a ``.pt`` state dict read with ``torch.load(..., weights_only=True)`` (no pickled code runs); anything
that is not a flat dict of tensors is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from safcore.runtime.checks import check_safetensors, regular_file

__all__ = ["ModelLoadError", "read_json", "read_state_dict"]

_MAX_JSON_BYTES = 10_000_000  # a model's config files are a few kB; a link to a device or a huge file is refused


class ModelLoadError(ValueError):
    """A model folder or id that safcore cannot audit; the message says why and what is allowed."""


def read_json(path: Path) -> dict:
    """The JSON object in ``path`` (a regular file of at most 10 MB)."""
    try:
        regular_file(path, "model file")
        if path.stat().st_size > _MAX_JSON_BYTES:
            raise ModelLoadError(f"{str(path)!r} holds {path.stat().st_size:,} bytes; a model's JSON config is a few kB")
        value = json.loads(path.read_text())
    except (ValueError, OSError) as error:
        if isinstance(error, ModelLoadError):
            raise
        error = error.msg if isinstance(error, json.JSONDecodeError) else error
        raise ModelLoadError(f"{str(path)!r} is not a readable JSON file ({error})") from None
    if not isinstance(value, dict):
        raise ModelLoadError(f"{str(path)!r} holds {type(value).__name__}, expected a JSON object")
    return value


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a ``.safetensors`` file or a ``.pt`` state dict.

    A ``.pt`` file is read only with ``torch.load(path, weights_only=True, map_location="cpu")``: a pickled
    module, optimizer or any object beyond tensors and containers is refused, never unpickled."""
    try:
        if path.suffix == ".safetensors":
            check_safetensors(path, "weights file")
        else:
            regular_file(path, "weights file")
    except (ValueError, OSError) as error:
        raise ModelLoadError(str(error)) from None
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # noqa: BLE001 — weights_only refusals are UnpicklingError, RuntimeError …: one line
        raise ModelLoadError(f"{str(path)!r} is not a state dict of tensors (torch.load(weights_only=True) refused it: "
                             f"{type(error).__name__}, it holds pickled objects); save the weights with "
                             "torch.save(network.state_dict(), path) or as safetensors") from None
    if not (isinstance(state, dict) and state and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                      for k, v in state.items())):
        raise ModelLoadError(f"{str(path)!r} holds a {type(state).__name__}, not a flat dict of tensors; save it "
                             "with torch.save(network.state_dict(), path)")
    return state
