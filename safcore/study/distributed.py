"""Data parallel with accelerate (issue 12, item 3): DDP training, split audit sampling and a split t' probe.

Thin layers over the single-process code, whose results they reproduce: training is
:func:`safcore.generators.train.train` with a data-parallel :class:`~safcore.generators.train.Trainer`; sampling
draws chunks with :func:`safcore.generators.images_from_model.draw_unit_images`; the probe counts with
:mod:`safcore.probe`'s own functions. The collective primitives (ranks, seeds per rank, gather, broadcast, this
process's accelerator) are :mod:`safcore.runtime.parallel`'s. Under ``accelerate launch`` every process runs the same
code; as one plain process (no launcher) the same calls run with world size 1.

Derived seeds (:func:`safcore.runtime.parallel.derived_seed`: stream 0 is the seed itself, so world size 1
reproduces the single-process function) are used as

* training: rank ``r`` draws its share of the global batch from a CPU generator seeded with
  ``derived_seed(config.seed, r)``. The trajectory therefore depends on the world size (a checkpoint resumes only
  with the world size that wrote it); with world size 1 it is :func:`safcore.generators.train.train`'s trajectory
  bit for bit.
* audit sampling: the ``n`` samples are cut into fixed chunks of ``chunk_size`` (the last one shorter);
  chunk ``c`` is drawn with a generator seeded with ``derived_seed(seed, c)``; rank ``r`` draws the chunks
  ``c ≡ r (mod W)``. The images depend on ``(seed, chunk_size)``, never on the world size.
* the t' probe: the exhaustive search's sampler calls (groups of grid t formed by
  :func:`safcore.probe.q_curve`'s batching rule) are numbered ``j = 0, 1, …`` from the top of the grid;
  call ``j`` of run ``k`` uses ``derived_seed(run_seed(config.seed, k), j)``; rank ``r`` makes the calls
  ``j ≡ r (mod W)``. The top-down search's units (a grid t and one chunk of its M samples, in the search's
  order) are numbered ``u``; unit ``u`` of run ``k`` uses ``derived_seed(run_seed(config.seed, k), u)``;
  rank ``r`` draws unit ``round·W + r``. q_M(t) and t' depend on the config, never on the world size.

Under a launcher, :class:`safcore.study.hub.Study` (and with it ``safcore train``, ``audit``, ``probe``, ``demo``
and the notebooks' code) runs every stage this way (:func:`process_accelerator`, :func:`collective_stage`)::

    accelerate launch --multi_gpu --num_processes 2 -m safcore demo --profile smoke --n-dataset 8

trains the score model with DDP, draws the audit samples with :func:`sample_split` and the t' probe with
:func:`probe_split` (exhaustive) or :func:`topdown_split` (for profiles with ``split_seeds``), and lets the
main process write the report. Stages that do not split (``c_p``, ``c_id``, the FID extractor) are computed
by the first process that takes the run key's lock while the others wait and reuse them. On a machine without
CUDA the launched processes run DDP over gloo on the CPU. (accelerate 1.15's ``launch --cpu
--num_processes 2`` starts ONE process unless given an MPI hostfile; ``--multi_gpu --num_processes 2``
starts two through torchrun, and :func:`process_accelerator` builds ``Accelerator(cpu=True)`` when no GPU
is visible.)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from safcore.generators.checkpoints import resume_point
from safcore.generators.images_from_model import draw_unit_images
from safcore.generators.loader import as_generator
from safcore.generators.score_model import ScoreModel
from safcore.generators.train import TrainConfig, Trainer, TrainResult, train
from safcore.probe import (
    ProbeConfig,
    ProbeResult,
    QTally,
    as_single_image,
    call_groups,
    chunk_sizes,
    fill_q_curve,
    probe_result,
    run_seed,
    tally_draws,
)
from safcore.runtime.parallel import (  # noqa: F401  (the launcher's primitives, used as distributed.X by the study)
    COLLECTIVE_TIMEOUT_S,
    DDP_FORMAT,
    DataParallel,
    broadcast_from_main,
    derived_seed,
    is_main_process,
    launched,
    process_accelerator,
)
from safcore.runtime.progress import progress_bar

__all__ = [
    "DDP_FORMAT",
    "derived_seed",
    "train_distributed",
    "SplitSampling",
    "sample_chunks",
    "chunks_of_rank",
    "sample_split",
    "probe_jobs",
    "probe_job_tallies",
    "merge_probe",
    "probe_split",
    "topdown_units",
    "topdown_split",
    "COLLECTIVE_TIMEOUT_S",
    "launched",
    "process_accelerator",
    "is_main_process",
    "broadcast_from_main",
    "collective_stage",
]


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------


def train_distributed(
    images_unit: torch.Tensor,
    config: TrainConfig,
    work_dir: str | Path,
    *,
    accelerator=None,
    sde=None,
    progress: bool = True,
    stop_after: int | None = None,
) -> tuple[TrainResult, Trainer]:
    """:func:`safcore.generators.train.train` with a data-parallel :class:`~safcore.generators.train.Trainer` on
    every rank (call it on every rank); ``config.batch_size`` is the GLOBAL batch (a multiple of the world size).

    Before training, the main process alone looks at ``work_dir``'s checkpoints (unreadable ones are set
    aside with a warning: one process only, it renames files) and the ranks meet at a barrier. The progress
    bar shows on the main process only.

    Returns:
        ``(TrainResult, trainer)`` on every rank (the trainer's EMA is the same on all ranks;
        ``result.kept`` lists the files the main process wrote).

    Raises:
        ValueError: as :func:`safcore.generators.train.train`, plus a global batch that is not a multiple of the world
            size and a checkpoint written with another world size (or by single-process training).
    """
    group = DataParallel(accelerator)
    work_dir = Path(work_dir)
    if group.is_main and work_dir.is_dir():
        resume_point(work_dir)
    group.barrier()
    made: list[Trainer] = []

    def make(images, cfg, sde_):
        made.append(Trainer(images, cfg, sde_, parallel=group))
        return made[0]

    result = train(images_unit, config, work_dir, sde=sde, progress=progress and group.is_main, stop_after=stop_after,
                   make_trainer=make)
    return result, made[0]


# --------------------------------------------------------------------------------------------------
# audit sampling
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SplitSampling:
    """How :func:`sample_split` draws: the chunking and the sampler (the images depend on all of it and on
    the seed, never on the world size).

    Args:
        chunk_size: samples per chunk, ≥ 1 (one :func:`safcore.generators.sampling.sample` call each).
        method, steps, eps: the sampler (:func:`safcore.generators.sampling.sample`).
        autocast_bf16: evaluate the score under bf16 autocast.
    """

    chunk_size: int = 256
    method: str = "euler_maruyama"
    steps: int = 100
    eps: float = 1e-3
    autocast_bf16: bool = False

    def __post_init__(self) -> None:
        for name in ("chunk_size", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SplitSampling.{name} = {value!r}: must be an integer ≥ 1")


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n = {n!r}: the number of samples must be an integer ≥ 1")
    return int(n)


def chunks_of_rank(n: int, chunk_size: int, rank: int, world_size: int) -> list[int]:
    """The chunks ``c ≡ rank (mod world_size)`` of ``ceil(n / chunk_size)`` chunks, ascending."""
    n = _check_n(n)
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size = {world_size!r}: must be an integer ≥ 1")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank = {rank!r}: must be an integer in [0, world_size={world_size})")
    return list(range(rank, math.ceil(n / chunk_size), world_size))


def sample_chunks(
    model: ScoreModel,
    n: int,
    seed: int,
    chunks: Sequence[int],
    settings: SplitSampling = SplitSampling(),
    *,
    shape: tuple[int, int, int] | None = None,
    progress: bool = False,
) -> dict[int, torch.Tensor]:
    """Draw the given chunks of the ``n`` samples: ``{c: images (len_c, C, H, W) in [0, 1], float32, CPU}``.

    Chunk ``c`` holds samples ``[c·chunk_size, min(n, (c+1)·chunk_size))`` and is one
    :func:`safcore.generators.sampling.sample` call from the prior with a generator (on the model's device) seeded
    with ``derived_seed(seed, c)`` — or, for a :class:`safcore.generators.diffusers_model.DiffusersModel`, one call of its
    ``sample`` (its scheduler's ``settings.steps`` steps; ``method`` and ``eps`` do not apply). ``shape`` (``(C, H, W)``) is the model's.
    """
    n = _check_n(n)
    n_chunks = math.ceil(n / settings.chunk_size)
    bad = [c for c in chunks if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < n_chunks]
    if bad:
        raise ValueError(f"chunks {bad}: allowed chunk indices 0 … {n_chunks - 1} (n = {n}, chunk_size = {settings.chunk_size})")
    out: dict[int, torch.Tensor] = {}
    for c in progress_bar(list(chunks), enabled=progress, desc="sample chunks", unit="chunk"):
        size = min(n, (c + 1) * settings.chunk_size) - c * settings.chunk_size
        generator = torch.Generator(device=model.device).manual_seed(derived_seed(seed, int(c)))
        out[int(c)] = draw_unit_images(model, size, generator, method=settings.method, steps=settings.steps, eps=settings.eps,
                                       autocast_bf16=settings.autocast_bf16)
    return out


def sample_split(
    model: ScoreModel,
    n: int,
    seed: int,
    settings: SplitSampling = SplitSampling(),
    *,
    accelerator=None,
    shape: tuple[int, int, int] | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """``n`` samples ``(n, C, H, W)`` in [0, 1] (float32, CPU), drawn across the processes; call on every rank.

    Rank ``r`` of W draws the chunks ``c ≡ r (mod W)`` (:func:`sample_chunks`: chunk ``c`` seeded with
    ``derived_seed(seed, c)``); the chunks are gathered on every rank as one padded tensor per rank
    (``accelerator.gather``, so NCCL on GPUs) and put back in chunk order. The result is the same for any
    world size (and for ``accelerator=None``, one process). The progress bar shows on the main process.
    """
    n = _check_n(n)
    group = DataParallel(accelerator)
    rank, world = group.rank, group.world_size
    mine = chunks_of_rank(n, settings.chunk_size, rank, world)
    drawn = sample_chunks(model, n, seed, mine, settings, shape=shape, progress=progress and rank == 0)
    if world == 1:
        return torch.cat([drawn[c] for c in sorted(drawn)])
    if shape is None:
        shape = (model.channels, model.image_size, model.image_size)
    per_rank = math.ceil(math.ceil(n / settings.chunk_size) / world)  # chunk slots per rank (padded)
    cs = settings.chunk_size
    padded = torch.zeros((per_rank * cs, *shape), dtype=torch.float32)
    for slot, c in enumerate(mine):
        padded[slot * cs: slot * cs + drawn[c].shape[0]] = drawn[c]
    gathered = group.gather_tensor(padded)  # (W · per_rank · cs, C, H, W), rank order
    parts = []
    for c in range(math.ceil(n / cs)):
        size = min(n, (c + 1) * cs) - c * cs
        start = (c % world) * per_rank * cs + (c // world) * cs
        parts.append(gathered[start: start + size])
    return torch.cat(parts)


# --------------------------------------------------------------------------------------------------
# the t' probe
# --------------------------------------------------------------------------------------------------


def probe_jobs(config: ProbeConfig) -> list[tuple[float, ...]]:
    """The exhaustive search's sampler calls as groups of grid t (high → low): :func:`safcore.probe.call_groups`,
    the rule :func:`safcore.probe.q_curve` batches by. Each group, probed alone by ``q_curve``'s code, forms one
    call again."""
    return call_groups(config.grid, config.M, batch_size=config.batch_size, batch_waste=config.batch_waste,
                       steps_full=config.steps_full, eps=config.eps)


def _check_split_config(config: ProbeConfig) -> None:
    if config.search != "exhaustive":
        raise ValueError(f"ProbeConfig.search = {config.search!r}: the sampler calls of the exhaustive search; "
                         "allowed: 'exhaustive' (the top-down search is split by topdown_split)")


def probe_job_tallies(
    score_fn,
    sde,
    x_p: torch.Tensor,
    c_p,
    c_id,
    config: ProbeConfig,
    jobs: Sequence[tuple[int, int]],
    *,
    progress: bool = False,
) -> dict[tuple[int, int], QTally]:
    """Run the given ``(run, job)`` pairs: job ``j`` of :func:`probe_jobs` in run ``k`` with a generator seeded
    with ``derived_seed(run_seed(config.seed, k), j)``, counted by :func:`safcore.probe.q_curve`'s own code
    (diffuse, reverse, ``c_p`` AND ``c_id``). Returns ``{(run, job): tally}``."""
    _check_split_config(config)
    x_p = as_single_image(x_p)
    as_generator(score_fn, sde)  # sde=None only for a model whose scheduler defines the process
    groups = probe_jobs(config)
    out: dict[tuple[int, int], QTally] = {}
    for run, j in progress_bar(list(jobs), enabled=progress, desc="q_M(t) split", unit="call"):
        if not (0 <= run < config.repeats and 0 <= j < len(groups)):
            raise ValueError(f"probe job {(run, j)}: allowed runs 0 … {config.repeats - 1}, jobs 0 … {len(groups) - 1}")
        generator = torch.Generator(device=x_p.device).manual_seed(derived_seed(run_seed(config.seed, run), j))
        out[(run, j)] = fill_q_curve(
            QTally(config.n_examples), score_fn, sde, x_p, c_p, c_id, groups[j], config.M, method=config.method,
            steps_full=config.steps_full, eps=config.eps, batch_size=config.batch_size,
            batch_waste=config.batch_waste, generator=generator, progress=False,
        )
    return out


def merge_probe(score_fn, sde, config: ProbeConfig, tallies: dict[tuple[int, int], QTally]) -> ProbeResult:
    """The :class:`~safcore.probe.ProbeResult` of all ``(run, job)`` tallies, built as
    :func:`safcore.probe.find_t_prime` builds its exhaustive result: per run t' = the largest grid t with a
    positive; THE t' = the largest over runs; counts pooled; Eq. 9 indicator on the pooled counts."""
    _check_split_config(config)
    groups = probe_jobs(config)
    expected = {(run, j) for run in range(config.repeats) for j in range(len(groups))}
    if set(tallies) != expected:
        missing = sorted(expected - set(tallies))
        raise ValueError(f"merge_probe: tallies of {len(tallies)} (run, job) pairs, expected {len(expected)}; "
                         f"missing {missing[:5]}")
    runs = []
    primes: list[float | None] = []
    for run in range(config.repeats):
        tally = QTally.merge([tallies[(run, j)] for j in range(len(groups))])
        positive = [t for t in tally.k if tally.k[t] > 0]
        primes.append(max(positive) if positive else None)
        runs.append(tally)
    return probe_result(score_fn, sde, config, runs, primes, search="exhaustive")


def topdown_units(config: ProbeConfig) -> list[tuple[int, int]]:
    """The top-down search's units in its order: ``(grid index i, chunk size m)`` for every grid t from the top,
    its M samples in the chunks of :func:`safcore.probe.chunk_sizes` (1, 1, 2, 4, … up to M)."""
    sizes = chunk_sizes(config.M, config.first_chunk)
    return [(i, m) for i in range(len(config.grid)) for m in sizes]


def topdown_split(
    score_fn,
    sde,
    x_p: torch.Tensor,
    c_p,
    c_id,
    config: ProbeConfig,
    *,
    accelerator=None,
    progress: bool = True,
) -> ProbeResult:
    """Algorithm 1's top-down search shared by the processes; call on every rank, every rank gets the result.

    Unit ``u`` (:func:`topdown_units`: a grid t and one chunk of its M samples) of run ``k`` is drawn with a
    generator seeded ``derived_seed(run_seed(config.seed, k), u)``. The units are taken in rounds of W: rank
    ``r`` draws unit ``round·W + r``; after each round the first unit (in the search's order) with a positive
    ends the run at its t, and only the units up to it are counted. So t', the counts and q are the same for
    any world size (W − 1 units of a round may be drawn in vain), and t' has the law of the single-process
    top-down search (:func:`safcore.probe.topdown_search`: each unit is a fresh draw of its chunk, in its
    order) and hence of the exhaustive search."""
    x_p = as_single_image(x_p)
    as_generator(score_fn, sde)  # sde=None only for a model whose scheduler defines the process
    group = DataParallel(accelerator)
    rank, world = group.rank, group.world_size
    units = topdown_units(config)
    tallies: list[QTally] = []
    primes: list[float | None] = []
    bar = progress_bar(total=config.repeats * len(units), desc="top-down t' split", unit="chunk",
                       enabled=progress and rank == 0, leave=False)
    for run in range(config.repeats):
        base = run_seed(config.seed, run)
        counted: list[QTally] = []
        prime = None
        for start in range(0, len(units), world):
            mine = None
            u = start + rank
            if u < len(units):
                i, m = units[u]
                tally = QTally(config.n_examples)
                generator = torch.Generator(device=x_p.device).manual_seed(derived_seed(base, u))
                mine = (u, tally, tally_draws(tally, score_fn, sde, x_p, c_p, c_id, config, config.grid[i], m, generator))
            drawn = sorted((x for x in group.gather(mine) if x is not None), key=lambda x: x[0])
            bar.update(len(drawn))
            for u_done, tally, found in drawn:
                counted.append(tally)
                if found > 0:
                    prime = config.grid[units[u_done][0]]
                    break
            if prime is not None:
                break
        tallies.append(QTally.merge(counted))
        primes.append(prime)
    bar.close()
    return probe_result(score_fn, sde, config, tallies, primes, search="topdown")


def probe_split(
    score_fn,
    sde,
    x_p: torch.Tensor,
    c_p,
    c_id,
    config: ProbeConfig = ProbeConfig(),
    *,
    accelerator=None,
    progress: bool = True,
) -> ProbeResult:
    """Algorithm 1 split across processes; call on every rank, every rank gets the result. A top-down
    ``config.search`` goes to :func:`topdown_split`; the exhaustive search is split as follows.

    The sampler calls ``(run k, job j)`` (:func:`probe_jobs`, in run-major order, numbered ``i``) go to rank
    ``i mod W``; each has its own generator (:func:`probe_job_tallies`); the tallies (counts and the few
    example images) are gathered and merged in grid order (:func:`merge_probe`). q_M(t) and t' are the same
    for any world size. They are drawn with other random streams than :func:`safcore.probe.find_t_prime`'s
    (one generator per call instead of one per run), so they have its law, not its exact draws.
    """
    if config.search == "topdown":
        return topdown_split(score_fn, sde, x_p, c_p, c_id, config, accelerator=accelerator, progress=progress)
    _check_split_config(config)
    group = DataParallel(accelerator)
    rank, world = group.rank, group.world_size
    pairs = [(run, j) for run in range(config.repeats) for j in range(len(probe_jobs(config)))]
    mine = [pair for i, pair in enumerate(pairs) if i % world == rank]
    tallies = probe_job_tallies(score_fn, sde, x_p, c_p, c_id, config, mine, progress=progress and rank == 0)
    merged: dict[tuple[int, int], QTally] = {}
    for part in group.gather(tallies):
        merged.update(part)
    return merge_probe(score_fn, sde, config, merged)


# --------------------------------------------------------------------------------------------------
# a study under a launcher
# --------------------------------------------------------------------------------------------------


def collective_stage(store, kind: str, config: dict, compute, write, *, seed: int | None = None):
    """The run ``(kind, config)`` of ``store``; when it is missing every process computes it together.

    A plain process: :meth:`safcore.runtime.runs.RunStore.get_or_create` with ``make = write(tmp, compute())``.
    Under a launcher (call it on every rank at the same point): the main process looks the key up and tells
    the others; if it is missing, ``compute()`` runs on every rank (it may make collective calls, e.g.
    :func:`sample_split`) and returns the same value everywhere (or ``None`` off the main process); the
    main process alone writes it (``write(tmp, value)``, under the key's lock, reusing a run another job
    published meanwhile) and the ranks meet at a barrier. The manifest's ``extra`` records the number of
    processes. Returns the published :class:`~safcore.runtime.runs.Run`.
    """
    accelerator = process_accelerator()
    if accelerator is None or accelerator.num_processes == 1:
        return store.get_or_create(kind, config, lambda tmp: write(tmp, compute()), seed=seed, extra={"processes": 1})
    missing = broadcast_from_main(store.find(kind, config) is None if accelerator.is_main_process else None)
    if missing:
        value = compute()
        error = None
        if accelerator.is_main_process:
            try:
                store.get_or_create(kind, config, lambda tmp: write(tmp, value), seed=seed,
                                    extra={"processes": accelerator.num_processes})
            except Exception as caught:  # the others hear of it before it is raised
                error = caught
        failed = broadcast_from_main(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        if failed is not None:
            raise RuntimeError(f"the main process failed to write the {kind} run {store.path(kind, config)}: {failed}")
    run = store.find(kind, config)
    if run is None:  # pragma: no cover — published above or found by the main process
        raise RuntimeError(f"the {kind} run {store.path(kind, config)} is missing after the main process published it")
    return run
