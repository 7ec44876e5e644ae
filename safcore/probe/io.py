"""A :class:`~safcore.probe.results.ProbeResult` as files: ``probe.json`` (counts, t', config) and
``examples.safetensors`` (the example images), so that ``Study.probe`` is computed once per key and
read back by notebooks, sweeps and the command line (nothing pickled)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from safcore.probe.config import ProbeConfig
from safcore.probe.results import ProbeExample, ProbeResult, QCurve
from safcore.runtime.runs import atomic_save_safetensors, atomic_write

__all__ = ["save_probe", "load_probe", "FORMAT"]

FORMAT = "safcore-probe/1"
_ARRAYS = ("ts", "n", "k", "k_p", "k_id", "q", "ci_low", "ci_high")


def save_probe(result: ProbeResult, folder: str | Path) -> Path:
    """Write ``result`` into ``folder`` (atomically, file by file); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "format": FORMAT,
        **{name: np.asarray(getattr(result, name)).tolist() for name in _ARRAYS},
        **{name: getattr(result, name) for name in ("M", "t_prime", "k_at_t_prime", "n_at_t_prime", "eq9_indicator",
                                                     "nfe", "nfe_exhaustive", "search")},
        "t_prime_runs": list(result.t_prime_runs), "grid": list(result.grid),
        "examples": [example.t for example in result.examples],
        "config": dataclasses.asdict(result.config),
    }
    atomic_write(folder / "probe.json", json.dumps(record, indent=2, default=float))
    tensors = {}
    for i, example in enumerate(result.examples):
        for name in ("query", "samples", "c_p", "c_id"):
            tensors[f"{i}.{name}"] = getattr(example, name).detach().cpu().contiguous()
    atomic_save_safetensors(tensors or {"none": torch.zeros(0)}, folder / "examples.safetensors")
    return folder


def load_probe(folder: str | Path) -> ProbeResult:
    """The :class:`ProbeResult` :func:`save_probe` wrote (arrays as the dtypes the probe makes: counts int64,
    rates float64; its curve's ``nfe_per_t`` is ``None``, as ``probe.json`` keeps only the total ``nfe``)."""
    folder = Path(folder)
    record = json.loads((folder / "probe.json").read_text())
    if record.get("format") != FORMAT:
        raise ValueError(f"{folder / 'probe.json'}: not a saved probe (format {record.get('format')!r})")
    tensors = load_file(str(folder / "examples.safetensors"))
    examples = tuple(ProbeExample(t, *(tensors[f"{i}.{name}"] for name in ("query", "samples", "c_p", "c_id")))
                     for i, t in enumerate(record["examples"]))
    config = dict(record["config"])
    config["grid"] = tuple(config["grid"])
    ints = ("n", "k", "k_p", "k_id")
    arrays = {name: np.asarray(record[name], dtype=np.int64 if name in ints else np.float64) for name in _ARRAYS}
    curve = QCurve(**arrays, nfe_per_t=None, nfe=record["nfe"], examples=examples)  # probe.json keeps the total nfe
    return ProbeResult(curve, M=record["M"], t_prime=record["t_prime"], k_at_t_prime=record["k_at_t_prime"],
                       n_at_t_prime=record["n_at_t_prime"], t_prime_runs=tuple(record["t_prime_runs"]),
                       eq9_indicator=record["eq9_indicator"], nfe_exhaustive=record["nfe_exhaustive"],
                       search=record["search"], grid=tuple(record["grid"]), config=ProbeConfig(**config))
