"""The two stages that write what a model makes into the run store: its training, and its samples.

Each runs on one process or on every process of an ``accelerate launch`` and leaves one run behind, made
by one writer under the key's lock:

- :func:`train_into_store`: a score model trained on ``images`` (:func:`safcore.generators.train.train`, or
  DDP training with :func:`safcore.study.distributed.train_distributed`), its kept EMA weights and losses;
- :func:`stored_samples`: ``n`` samples of a model (:meth:`safcore.generators.base.Generator.sample`, or
  :func:`safcore.study.distributed.sample_split` with split seeds);
- :func:`stored_probe`: Algorithm 1's ``q_M(t)`` and ``t'`` (:func:`safcore.probe.find_t_prime`, or
  :func:`safcore.study.distributed.probe_split` with split seeds).

The keys are the caller's (:class:`safcore.study.hub.Study` builds them); split seeding adds what it is to
the key, nothing else here changes one.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from safcore.data import datasets as data_lib
from safcore.generators.loader import Sampling, as_generator
from safcore.generators.train import TrainResult, train
from safcore.probe import ProbeConfig, ProbeResult, find_t_prime
from safcore.runtime.runs import RunStore, atomic_save_safetensors, atomic_write
from safcore.study import distributed
from safcore.study.profiles import Profile

__all__ = ["train_into_store", "stored_samples", "stored_probe"]


def train_into_store(store: RunStore, config: dict, images: torch.Tensor, train_config, *, make_trainer=None,
                     progress: bool = True) -> TrainResult | None:
    """Train a score model with ``train_config`` (its device set) on ``images`` ``(N, C, S, S)`` in [0, 1] into
    the run ``("score_model", config)`` unless it exists; ``None`` when it did.

    One process trains a key at a time (others wait for its lock, then reuse its run); the holder alone uses
    the key's resume folder, so a crashed training resumes and two never mix checkpoints. ``train_config.device``
    is the study's ``torch.device`` (``cuda:N`` included); ``make_trainer``: see
    :func:`safcore.generators.train.train`."""
    if distributed.process_accelerator() is not None:
        return _train_on_ranks(store, config, images, train_config, make_trainer, progress)
    if store.find("score_model", config) is not None:
        return None
    with store.lock("score_model", config):
        if store.find("score_model", config) is not None:
            return None
        work_dir = store.scratch_dir("score_model", config)
        result = train(images, train_config, work_dir, progress=progress, make_trainer=make_trainer)
        _publish(store, config, train_config, result, processes=1)
    return result


def _publish(store: RunStore, config: dict, train_config, result: TrainResult, *, processes: int) -> None:
    """Write a finished training into the run ``("score_model", config)`` (the caller holds its lock)."""
    extra = {"seconds_per_step": result.seconds_per_step, "processes": processes, **result.record}
    with store.create("score_model", config, seed=train_config.seed, extra=extra) as tmp:
        result.model.save_pretrained(tmp / "model")
        (tmp / "kept").mkdir()
        for path in result.kept.values():
            shutil.copy2(path, tmp / "kept" / path.name)
        atomic_write(tmp / "losses.json", json.dumps(list(result.losses)))
        if result.record:
            atomic_write(tmp / "training_record.json", json.dumps(result.record, indent=2))


def _train_on_ranks(store: RunStore, config: dict, images: torch.Tensor, train_config, make_trainer,
                    progress: bool) -> TrainResult | None:
    """:func:`train_into_store` under ``accelerate launch`` (every rank calls it): DDP training
    (:func:`safcore.study.distributed.train_distributed`) in the key's resume folder.

    The main process takes the key's lock (a training by another job is waited for and reused), tells the
    others whether to train and where; every rank trains its share of each global batch; the main process
    writes checkpoints, the kept EMA weights and the run (its manifest records the number of processes:
    each rank's data stream depends on it, so another number of processes trains another, equally valid
    model, and resumes only with the same one)."""
    if make_trainer is not None:
        raise ValueError("DP-SGD training under accelerate launch is not built (Opacus needs its DPDDP wrapper "
                         "and a per-rank accountant); run a DP-SGD study as one process")
    accelerator = distributed.process_accelerator()
    with contextlib.ExitStack() as held:
        work_dir = None
        if accelerator.is_main_process:
            held.enter_context(store.lock("score_model", config))
            if store.find("score_model", config) is None:
                work_dir = str(store.scratch_dir("score_model", config))
        work_dir = distributed.broadcast_from_main(work_dir)
        if work_dir is None:  # published (by this group earlier, or by another job)
            return None
        result, _ = distributed.train_distributed(images, train_config, work_dir, accelerator=accelerator,
                                                  progress=progress)
        if accelerator.is_main_process:
            _publish(store, config, train_config, result, processes=accelerator.num_processes)
    accelerator.wait_for_everyone()
    return result


def stored_samples(store: RunStore, config: dict, load_model: Callable[[], object], n: int, how: Sampling, seed: int,
                   *, profile: Profile, shape: tuple[int, int, int], progress: bool = True) -> torch.Tensor:
    """``n`` samples ``(n, C, H, W)`` in [0, 1] of ``load_model()``, drawn once and kept in the run store under
    ``("samples", config)``.

    With the profile's ``split_seeds`` they are drawn in chunks of ``sample_batch``, chunk ``c`` seeded
    ``derived_seed(seed, c)`` (:func:`safcore.study.distributed.sample_split`; the key records it): the same
    images for one process or several under ``accelerate launch``, which share the chunks. Otherwise one
    generator (seeded ``seed``, on the model's device) runs through all batches of
    :meth:`~safcore.generators.base.Generator.sample` (under a launcher the main process draws them alone).

    Args:
        load_model: gives the model (called on every rank: it may train the score model with DDP first).
        how: the sampler, its steps and bf16 (:func:`safcore.generators.loader.sampling_for`).
        shape: ``(C, H, W)`` of one sample.
    """
    split = profile.split_seeds
    if split:
        config = {**config, "seeding": "chunk c: derived_seed(seed, c)", "chunk_size": profile.sample_batch}

    def compute() -> torch.Tensor | None:
        model = load_model()
        if split:
            settings = distributed.SplitSampling(chunk_size=profile.sample_batch, method=profile.sampler,
                                                 steps=how.steps, autocast_bf16=how.autocast_bf16)
            return distributed.sample_split(model, n, seed, settings, accelerator=distributed.process_accelerator(),
                                            shape=shape, progress=progress)
        if not distributed.is_main_process():
            return None
        generator_model = as_generator(model, method=profile.sampler)
        generator = torch.Generator(device=generator_model.device).manual_seed(seed)
        result = generator_model.sample(n, steps=how.steps, generator=generator, batch_size=profile.sample_batch,
                                        autocast_bf16=how.autocast_bf16, progress=progress)
        return data_lib.from_model_range(result.images.float().cpu()).clamp(0.0, 1.0)

    def write(tmp: Path, images: torch.Tensor) -> None:
        atomic_save_safetensors({"images": images.contiguous()}, tmp / "samples.safetensors")

    run = distributed.collective_stage(store, "samples", config, compute, write, seed=seed)
    return load_file(run.file("samples.safetensors"))["images"]


def stored_probe(store: RunStore, key: dict, config: ProbeConfig, load_model: Callable[[], object],
                 x_p: Callable[[], torch.Tensor], classifiers: Callable[[], tuple], *, split: bool,
                 progress: bool = True) -> ProbeResult:
    """Algorithm 1 for ``x_p()`` ``(C, S, S)`` in [0, 1] under ``load_model()`` with ``classifiers() = (c_p, c_id)``,
    computed once (seeded by ``config.seed``) and kept in the run store under ``("probe", key)``.

    With ``split`` the exhaustive search uses one generator per sampler call and the top-down search one per
    unit (a t and a chunk of its M samples) (:func:`safcore.study.distributed.probe_split`; the key records
    it): either is shared by the processes of an ``accelerate launch`` and gives the same result for any
    number of them. Without it the search runs on the main process while the others wait. The callables are
    called on every rank (the model may be trained with DDP first)."""
    from safcore.probe.io import load_probe, save_probe

    if split:  # one generator per sampler call / search unit: the same q_M(t) and t' for 1 or N processes
        key = {**key, "seeding": ("call j of run k: derived_seed(run_seed(seed, k), j)" if config.search == "exhaustive"
                                  else "unit u of run k: derived_seed(run_seed(seed, k), u)")}

    def compute() -> ProbeResult | None:
        model = load_model()
        image = x_p().to(model.device)
        c_p, c_id = classifiers()
        if split:
            return distributed.probe_split(model, model.sde, image, c_p, c_id, config,
                                           accelerator=distributed.process_accelerator(), progress=progress)
        if not distributed.is_main_process():
            return None
        return find_t_prime(model, model.sde, image, c_p, c_id, config, progress=progress)

    def write(tmp: Path, result: ProbeResult) -> dict:
        save_probe(result, tmp / "probe")
        return {"t_prime": result.t_prime, "nfe": result.nfe}

    run = distributed.collective_stage(store, "probe", key, compute, write, seed=config.seed)
    return load_probe(run.path / "probe")
