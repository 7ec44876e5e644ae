"""What a run or an output file records beside its content: the canonical JSON of its configuration (and the run
key made from it), the git revision, the creation time and the compute environment."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from safcore.runtime import paths
from safcore.runtime.atomic import atomic_write

__all__ = ["MANIFEST", "compute_environment", "git_revision", "jsonable", "config_key", "file_sha256", "write_manifest"]

MANIFEST = "manifest.json"


def compute_environment() -> dict[str, Any]:
    """What a manifest records beside the seed for reproducing a run: the torch build, the CPU threads
    and the CUDA device. The same seed reproduces a run bit for bit only with the same three: another
    thread count sums floats in another order (bf16 most visibly), and training amplifies the difference.
    """
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def git_revision() -> str:
    """The checkout's ``git describe --always --dirty`` revision, or ``"unknown"`` outside git."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=paths.repo_root(),
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise TypeError(f"run configuration value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def config_key(config: Mapping[str, Any] | Any) -> str:
    """A 16-hex-digit key: SHA-256 of the canonical JSON of ``config`` (a mapping or dataclass)."""
    canonical = json.dumps(jsonable(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(path: str | os.PathLike, *, config: Any, seed: int | None = None, extra: Mapping | None = None) -> Path:
    """Write a ``<path>.json`` manifest beside an output file (figures, reports)."""
    path = Path(path)
    manifest = {
        "file": path.name,
        "config": jsonable(config),
        "seed": seed,
        "revision": git_revision(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **compute_environment(),
        "extra": jsonable(dict(extra or {})),
    }
    return atomic_write(path.with_suffix(path.suffix + ".json"), json.dumps(manifest, indent=2, sort_keys=True))
