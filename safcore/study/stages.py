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
import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file

from safcore.data import datasets as data_lib
from safcore.generators.loader import sampling_for
from safcore.generators.score_model import ScoreModel
from safcore.generators.loader import Sampling, as_generator, network, network_input_shape
from safcore.generators.train import TrainResult, train
from safcore.probe import ProbeConfig, ProbeResult, find_t_prime
from safcore.runtime import batching
from safcore.runtime.batching import BatchChoice, fitting_batch_size
from safcore.runtime.device import faster_network, resolve_device, training_attention_kernel
from safcore.runtime.parallel import derived_seed
from safcore.runtime.runs import RunStore, atomic_save_safetensors, atomic_write
from safcore.study import distributed
from safcore.study.profiles import Profile

if TYPE_CHECKING:
    from safcore.adversary.classifiers import Classifier
    from safcore.measures.canaries import CanaryRun
    from safcore.study.hub import Study

__all__ = ["without_device", "train_into_store", "stored_samples", "stored_probe", "stored_classifier", "canary_run"]


def without_device(config, channels: int | None = None) -> dict:
    """A configuration's fields for a run key, without its device. A training configuration's ``mean_head``
    enters only where it is on for ``channels`` (RGB by default), so grey models keep the keys they always had."""
    values = dataclasses.asdict(config)
    values.pop("device", None)
    if "mean_head" in values:
        values.pop("mean_head")
        if channels is not None and config.uses_mean_head(channels):
            values["mean_head"] = True
    return values


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
    extra = {"seconds_per_step": result.seconds_per_step, "processes": processes, **result.record,
             # a kernel, not a setting: the same attention, agreeing to bf16 rounding (kept out of the key)
             "attention_kernel": training_attention_kernel(resolve_device(train_config.device), train_config.bf16)}
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


def forward_choice(model, fixed: int | None, cap: int, *, method: str) -> BatchChoice | None:
    """The network micro-batch of a sampling or probe stage (:mod:`safcore.runtime.batching`): ``fixed`` (the
    profile's ``forward_batch``) as given; else on CUDA the most images that fit the free memory
    (:func:`~safcore.runtime.batching.fitting_batch_size`, one trial ``ε̂`` call), at most ``cap`` (the sampler
    chunk or the probe's ``batch_size``); else (the CPU, or a network input of unknown shape) ``None``: no
    micro-batching, as before. It changes no draw, so it is recorded in the manifest's ``extra``, not the key."""
    if fixed is not None:
        return BatchChoice(int(fixed), int(cap), "any", None, None, "fixed by Profile.forward_batch")
    gen = as_generator(model, method=method)
    shape = network_input_shape(gen)
    if gen.device.type != "cuda" or shape is None:
        return None

    def trial(n: int) -> None:
        gen.eps(torch.zeros((n, *shape), device=gen.device), torch.full((n,), 0.5, device=gen.device))

    return fitting_batch_size(trial, gen.device, int(cap))


def stored_samples(store: RunStore, config: dict, load_model: Callable[[], object], n: int, how: Sampling, seed: int,
                   *, profile: Profile, shape: tuple[int, int, int], progress: bool = True,
                   per_class: tuple[tuple[int, int], ...] | None = None) -> torch.Tensor:
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
        per_class: a class-conditional model's ``((label, n_c), …)`` in ascending label order
            (:func:`safcore.audit.classes.class_sample_counts`): class ``c``'s ``n_c`` samples are drawn by
            ``model.conditioned(c)`` as above with the seed ``derived_seed(seed, c + 1)``, one block per class in
            label order (the key records both); ``None``: an unconditional model (its key and draws unchanged).
    """
    split = profile.split_seeds
    if split:
        config = {**config, "seeding": "chunk c: derived_seed(seed, c)", "chunk_size": profile.sample_batch}
    if per_class is not None:
        if sum(k for _, k in per_class) != n:
            raise ValueError(f"per_class {per_class} holds {sum(k for _, k in per_class)} samples; n = {n}")
        config = {**config, "classes": [[int(c), int(k)] for c, k in per_class],
                  "class_seeding": "class c: its n_c samples with seed derived_seed(seed, c + 1)"}

    chosen: list[BatchChoice | None] = []  # the network micro-batch, chosen on the first draw

    def draw(model, count: int, seed: int) -> torch.Tensor | None:
        if not chosen:
            chosen.append(forward_choice(model, profile.forward_batch, profile.sample_batch, method=profile.sampler))
        with batching.forward_batch(chosen[0].batch_size if chosen[0] is not None else None):
            return draw_batched(model, count, seed)

    def draw_batched(model, count: int, seed: int) -> torch.Tensor | None:
        if split:
            settings = distributed.SplitSampling(chunk_size=profile.sample_batch, method=profile.sampler,
                                                 steps=how.steps, autocast_bf16=how.autocast_bf16)
            return distributed.sample_split(model, count, seed, settings, accelerator=distributed.process_accelerator(),
                                            shape=shape, progress=progress)
        if not distributed.is_main_process():
            return None
        generator_model = as_generator(model, method=profile.sampler)
        generator = torch.Generator(device=generator_model.device).manual_seed(seed)
        result = generator_model.sample(count, steps=how.steps, generator=generator, batch_size=profile.sample_batch,
                                        autocast_bf16=how.autocast_bf16, progress=progress)
        return data_lib.from_model_range(result.images.float().cpu()).clamp(0.0, 1.0)

    def compute() -> torch.Tensor | None:
        model = load_model()
        with faster_network(network(model), channels_last=profile.channels_last, compile=profile.compile):
            if per_class is None:
                return draw(model, n, seed)
            conditional = as_generator(model, method=profile.sampler)
            parts = [draw(conditional.conditioned(c), k, derived_seed(seed, c + 1)) for c, k in per_class if k]
        return None if parts[0] is None else torch.cat(parts)

    def write(tmp: Path, images: torch.Tensor) -> dict | None:
        atomic_save_safetensors({"images": images.contiguous()}, tmp / "samples.safetensors")
        return chosen[0].record() if chosen and chosen[0] is not None else None

    run = distributed.collective_stage(store, "samples", config, compute, write, seed=seed)
    return load_file(run.file("samples.safetensors"))["images"]


def stored_probe(store: RunStore, key: dict, config: ProbeConfig, load_model: Callable[[], object],
                 x_p: Callable[[], torch.Tensor], classifiers: Callable[[], tuple], *, split: bool,
                 forward_batch: int | None = None, progress: bool = True) -> ProbeResult:
    """Algorithm 1 for ``x_p()`` ``(C, S, S)`` in [0, 1] under ``load_model()`` with ``classifiers() = (c_p, c_id)``,
    computed once (seeded by ``config.seed``) and kept in the run store under ``("probe", key)``.

    With ``split`` the exhaustive search uses one generator per sampler call and the top-down search one per
    unit (a t and a chunk of its M samples) (:func:`safcore.study.distributed.probe_split`; the key records
    it): either is shared by the processes of an ``accelerate launch`` and gives the same result for any
    number of them. Without it the search runs on the main process while the others wait. The callables are
    called on every rank (the model may be trained with DDP first). ``forward_batch``: the network micro-batch
    (:func:`forward_choice`; ``None``: chosen for a CUDA device's memory, none on the CPU)."""
    from safcore.probe.io import load_probe, save_probe

    if split:  # one generator per sampler call / search unit: the same q_M(t) and t' for 1 or N processes
        key = {**key, "seeding": ("call j of run k: derived_seed(run_seed(seed, k), j)" if config.search == "exhaustive"
                                  else "unit u of run k: derived_seed(run_seed(seed, k), u)")}

    chosen: list[BatchChoice | None] = []

    def compute() -> ProbeResult | None:
        model = load_model()
        chosen.append(forward_choice(model, forward_batch, config.batch_size, method=config.method))
        with batching.forward_batch(chosen[0].batch_size if chosen[0] is not None else None):
            return search(model)

    def search(model) -> ProbeResult | None:
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
        extra = chosen[0].record() if chosen and chosen[0] is not None else {}
        return {"t_prime": result.t_prime, "nfe": result.nfe, **extra}

    run = distributed.collective_stage(store, "probe", key, compute, write, seed=config.seed)
    return load_probe(run.path / "probe")


def stored_classifier(store: RunStore, kind: str, config: dict, make: Callable[[], Classifier], *, seed: int,
                      device: torch.device) -> Classifier:
    """The classifier ``kind`` (``"c_p"`` / ``"c_id"``) kept in the run store under ``(kind, config)``, trained by
    ``make()`` once (under the key's lock), loaded on ``device``."""
    from safcore.adversary.classifiers import Classifier

    def write(tmp: Path) -> None:
        make().save(tmp / "classifier")

    run = store.get_or_create(kind, config, write, seed=seed)
    return Classifier.load(run.path / "classifier", device=device)


def canary_run(study: Study, m: int | None = None, *, n_samples: int | None = None, delta: float = 1e-5) -> CanaryRun:
    """SAF canaries for ``study``'s setting (:meth:`safcore.study.hub.Study.canary_audit`): ``m`` canaries (default
    ``N_D // 2``) designed from the seed, ONE score model trained on the non-canary images plus the included
    canaries, ``n_samples`` of its samples scored (:func:`safcore.measures.canaries.audit_samples`)."""
    from safcore.measures import canaries as canary_lib

    if study.model is not None:
        raise ValueError("a canary audit trains its own model; it does not apply to a model trained elsewhere")
    if study.defence is not None:
        raise ValueError("a canary audit of a defended setting is not built; use Study(..., defence=None)")
    profile = study.profile
    m = max(2, study.n_dataset // 2) if m is None else int(m)
    clean, _ = data_lib.seeded_subset(study.data.split("train"), study.n_dataset, seed=study.seed)
    images = data_lib.to_unit_tensor(clean, channels=profile.channels)
    design = canary_lib.design_canaries(study.n_dataset, m, int(images.shape[-1]), seed=study.seed,
                                        radius=study.saf.radius, grey=study.saf.grey)
    config = {**{k: v for k, v in study.data_config.items() if k != "saf"}, "canaries": design.to_dict(),
              "train": without_device(profile.train, study.channels)}
    study._train_on(design.training_set(images), config)
    n = profile.n_samples if n_samples is None else int(n_samples)
    how = sampling_for(None, method=profile.sampler, steps=profile.sample_steps,
                       bf16=profile.train.bf16)  # the score model trained here
    sample_config = {"model": config, "step": profile.train.steps, "method": how.method, "steps": how.steps, "n": n,
                     "seed": 0}
    drawn = study._stored_samples(
        sample_config,
        lambda: ScoreModel.from_pretrained(study.store.find("score_model", config).path / "model").to(study.device).eval(),
        n, how, 0)
    return canary_lib.audit_samples(design, images, drawn, delta=delta)
