"""CADP on one ``D_p``, kept in the run store: the INN trained without ``D_p``, and ``D_p`` privatized with it.

CADP's guarantee holds only for an INN that never saw the private images (:mod:`safcore.defences.cadp`): the
INN is trained on the dataset's train split **without** the ``N_D`` images of ``D_p`` (so without ``x_p``,
its clean original ``x_i`` or any other image of ``D_p``), once per dataset, ``D_p`` and INN settings
(:func:`stored_inn`); every image of ``D_p`` (``x_p`` with its SAF included) is then privatized with its
label, ``x̃ = f⁻¹(clip(f(x | y)) + noise | y)``, once per ``D_p`` and defence (:func:`stored_privatized`).

Images are unit-range ``(N, C, S, S)``; labels are condition vectors ``(N, K)`` (:func:`safcore.defences.cadp.one_hot`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from safcore.data import datasets as data_lib
from safcore.defences.cadp import CADP, ConditionalINN, INNConfig, Privatized, one_hot, privatize, train_inn
from safcore.runtime.runs import RunStore, atomic_save_safetensors, atomic_write

__all__ = ["dp_labels", "stored_inn", "stored_privatized"]


def dp_labels(data: data_lib.MedMNISTData, n_dataset: int, seed: int) -> torch.Tensor:
    """Condition vectors ``(N_D, K)`` of ``D_p``'s images (one-hot class, or multi-hot labels): ``x_p`` has
    ``x_i``'s label. ``D_p`` is the seeded subset :func:`safcore.data.datasets.seeded_subset` draws."""
    _, chosen = data_lib.seeded_subset(data.split("train"), n_dataset, seed=seed)
    task, n = data_lib.label_task(data)
    return one_hot(data.labels("train")[chosen], n, task)


def stored_inn(store: RunStore, data: data_lib.MedMNISTData, inn_config: INNConfig, *, n_dataset: int, seed: int,
               channels: int, data_sha256: str, device: torch.device,
               progress: bool = True) -> tuple[ConditionalINN, dict]:
    """CADP's conditional INN, trained by maximum likelihood on the train split without ``D_p``'s images (the
    ``n_dataset`` drawn with ``seed``), kept in the run store under ``"cadp_inn"``.

    Returns:
        ``(ConditionalINN on device, record)``; ``record`` has the final NLL, the training time and ``n_images``.

    Raises:
        ValueError: ``D_p`` is the whole train split (no other image to train on).
    """
    task, n_classes = data_lib.label_task(data)
    config = {"dataset": data.name, "data_sha256": data_sha256, "channels": channels,
              "without_dp_of": {"n_dataset": n_dataset, "seed": seed}, "task": task,
              "inn": dataclasses.asdict(inn_config)}

    def make(tmp: Path) -> dict:
        _, chosen = data_lib.seeded_subset(data.split("train"), n_dataset, seed=seed)
        others = np.setdiff1d(np.arange(len(data.split("train"))), chosen)
        if len(others) == 0:
            raise ValueError(f"N_D = {n_dataset} is the whole train split of {data.name}: no other image "
                             "is left to train CADP's INN on")
        images = data_lib.to_unit_tensor(data.split("train"), channels=channels)[torch.as_tensor(others, dtype=torch.long)]
        labels = one_hot(data.labels("train")[others], n_classes, task)
        inn, record = train_inn(images, labels, inn_config, progress=progress, device=device)
        inn.save(tmp / "inn")
        atomic_write(tmp / "record.json", json.dumps(record, indent=2))
        return record

    run = store.get_or_create("cadp_inn", config, make, seed=inn_config.seed)
    return ConditionalINN.load(run.path / "inn").to(device), json.loads(run.file("record.json").read_text())


def stored_privatized(store: RunStore, config: dict, defence: CADP, *, inn: Callable[[], ConditionalINN],
                      images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> Privatized:
    """Every image of ``D_p`` privatized by ``defence`` (:func:`safcore.defences.cadp.privatize`, its noise drawn
    from ``defence.seed``), kept in the run store under ``("cadp_images", config)``.

    Args:
        config: what the privatized images depend on (``D_p`` and the defence's settings).
        inn: gives the INN (:func:`stored_inn`); called only when the images are not stored yet.
        images: ``D_p`` ``(N_D, C, S, S)`` in [0, 1]; labels: their condition vectors ``(N_D, K)``.

    Returns:
        :class:`~safcore.defences.cadp.Privatized`: images ``(N_D, C, S, S)`` in [0, 1], which latents were
        clipped, C and the noise scale.
    """
    def make(tmp: Path) -> dict:
        network = inn()  # before the mechanism's generator, as the noise was always drawn
        generator = torch.Generator().manual_seed(defence.seed)
        result = privatize(network, images.to(device), labels.to(device), defence, generator=generator)
        atomic_save_safetensors({"images": result.images.contiguous(), "clipped": result.clipped},
                                tmp / "privatized.safetensors")
        record = {"bound": result.bound, "scale": result.scale, "clipped": int(result.clipped.sum())}
        atomic_write(tmp / "privatized.json", json.dumps(record))
        return record

    run = store.get_or_create("cadp_images", config, make, seed=defence.seed)
    tensors = load_file(run.file("privatized.safetensors"))
    record = json.loads(run.file("privatized.json").read_text())
    return Privatized(tensors["images"], tensors["clipped"], record["bound"], record["scale"])
