"""Algorithm 1's inner loops (paper Sec. 3.4): diffuse ``x_p`` to ``t``, reverse ``M`` times, classify, count.

For each noise level ``t`` the SAF image ``x_p`` is diffused to ``x_{t,p} ~ p(x_t | x_p)`` (the forward
kernel, paper Eq. 7), the learned reverse process is run from there ``M`` times, and each reverse sample
``x'_{t,p}`` is shown to the adversary's two classifiers. A sample is *positive* when ``c_p`` (the SAF is there)
AND ``c_id`` (it is ``x_p``) both fire, and ``q_M(t) = (# positives) / M``.

Any model runs through the one :class:`~safcore.generators.base.Generator` contract
(:func:`safcore.generators.loader.as_generator`, once per public call): a score function with its SDE, safcore's
:class:`~safcore.generators.score_model.ScoreModel`, or a :class:`~safcore.generators.diffusers_model.DiffusersModel`
(``sde=None``: its scheduler defines both processes). :func:`probe_at` is one t, :func:`q_curve` a grid of t
(batched into few sampler calls), :class:`QTally` the per-t counts the searches of :mod:`safcore.probe.search`
and :mod:`safcore.study.distributed` fill (:func:`fill_q_curve`, :func:`tally_draws`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from safcore.data.datasets import from_model_range, to_model_range
from safcore.generators.base import Generator
from safcore.generators.loader import as_generator
from safcore.generators.sde import SDE
from safcore.measures.bounds import proportion_interval
from safcore.probe.config import (
    Classifier,
    ProbeConfig,
    SamplerMethod,
    ScoreFn,
    as_single_image,
    check_grid,
    steps_for,
)
from safcore.probe.results import ProbeExample, QCurve
from safcore.runtime.progress import progress_bar

__all__ = ["probe_at", "QTally", "call_groups", "q_curve", "fill_q_curve", "tally_draws"]


def _classify(clf: Classifier, x_unit: torch.Tensor, name: str) -> torch.Tensor:
    out = torch.as_tensor(clf(x_unit))
    if out.shape != (x_unit.shape[0],):
        raise ValueError(
            f"classifier {name} must return a bool tensor of shape ({x_unit.shape[0]},), "
            f"got shape {tuple(out.shape)}"
        )
    return out.detach().to("cpu").bool()


@dataclass
class _Batch:
    query: torch.Tensor  # model range, (B, C, H, W), on the sampling device
    samples: torch.Tensor  # unit range, clipped, CPU
    c_p: torch.Tensor  # bool (B,), CPU
    c_id: torch.Tensor
    nfe: torch.Tensor  # int64 (B,): network evaluations of each trajectory


def _run_batch(
    gen: Generator,
    x_p: torch.Tensor,
    c_p: Classifier,
    c_id: Classifier,
    ts: Sequence[float],
    *,
    steps_full: int,
    generator: torch.Generator | None,
) -> _Batch:
    """Diffuse ``x_p`` (C, H, W) to the per-row times ``ts`` (B floats), reverse, classify.

    ``gen.diffuse`` draws ``x_{t,p} ~ p(x_t | x_p)`` from the model's forward kernel (an SDE's, Song Eq. 29; a
    diffusers scheduler's ``add_noise``) at the float32 times the sampler starts from; ``gen.reverse`` runs each
    row from its t with the step size of a full run of ``steps_full`` steps (an SDE: ``steps_for(t)`` steps on
    ``linspace(t, eps, steps(t) + 1)``; a scheduler: the tail of its ``steps_full`` inference steps). ``nfe`` of
    the batch is what the network evaluated for each trajectory.

    All of it runs in the model's space (:attr:`~safcore.generators.base.Generator.space`): a latent model's
    ``x_p`` is encoded first (``z_p = encode(x_p)``), its latent diffused to t and reversed, and the reverse
    samples and queries decoded to images before the classifiers see them, so t is a time of the latent
    diffusion (a pixel model's ``encode`` / ``decode`` are the identity).
    """
    t_vec = torch.tensor(list(ts), dtype=torch.float64, device=x_p.device)  # exact t: each row's steps(t)
    z_p = gen.encode(to_model_range(as_single_image(x_p)).unsqueeze(0))
    x0 = z_p.expand(t_vec.shape[0], -1, -1, -1)
    query = gen.diffuse(x0, t_vec.to(torch.float32).to(x0.dtype), steps_full, generator)
    images, nfe = gen.reverse(query, t_vec, steps_full, generator)
    images, query = gen.decode(images), gen.decode(query)
    x_unit = from_model_range(images.detach()).clamp(0.0, 1.0)
    vp = _classify(c_p, x_unit, "c_p")
    vid = _classify(c_id, x_unit, "c_id")
    return _Batch(query.detach(), x_unit.to("cpu"), vp, vid, nfe)


def probe_at(
    score_fn: ScoreFn,
    sde: SDE | None,
    x_p: torch.Tensor,
    c_p: Classifier,
    c_id: Classifier,
    t: float,
    M: int = 8,
    *,
    method: SamplerMethod = "euler_maruyama",
    steps_full: int = 1000,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
) -> tuple[ProbeExample, int]:
    """One step of Algorithm 1 at a single t: M queries ``x_{t,p}``, their reverse samples, verdicts.

    Args: as in :func:`q_curve`; ``t`` in (eps, 1].

    Returns:
        (:class:`ProbeExample` with all M images, NFE spent = ``M · steps(t)`` for Euler–Maruyama).
    """
    if isinstance(M, bool) or not isinstance(M, (int, np.integer)) or M < 1:
        raise ValueError(f"M={M!r}: the number of reverse samples must be an int >= 1")
    (t,) = check_grid((t,), eps)
    x_p = as_single_image(x_p)
    gen = as_generator(score_fn, sde, method=method, eps=eps)
    b = _run_batch(gen, x_p, c_p, c_id, [t] * M, steps_full=steps_full, generator=generator)
    ex = ProbeExample(
        t=t,
        query=from_model_range(b.query).clamp(0.0, 1.0).to("cpu"),
        samples=b.samples,
        c_p=b.c_p,
        c_id=b.c_id,
    )
    return ex, int(b.nfe.sum())


class QTally:
    """Per-t counters and kept images of the q_M(t) search, filled batch by batch (public for
    :mod:`safcore.study.distributed`, whose split probe merges the tallies of several processes)."""

    def __init__(self, n_keep: int) -> None:
        self.n: dict[float, int] = {}
        self.k: dict[float, int] = {}
        self.k_p: dict[float, int] = {}
        self.k_id: dict[float, int] = {}
        self.nfe: dict[float, int] = {}
        self.images: dict[float, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
        self.n_keep = n_keep

    def add(self, t: float, b: _Batch, rows: slice | torch.Tensor) -> None:
        vp, vid = b.c_p[rows], b.c_id[rows]
        m = int(vp.shape[0])
        self.n[t] = self.n.get(t, 0) + m
        self.k[t] = self.k.get(t, 0) + int((vp & vid).sum())
        self.k_p[t] = self.k_p.get(t, 0) + int(vp.sum())
        self.k_id[t] = self.k_id.get(t, 0) + int(vid.sum())
        self.nfe[t] = self.nfe.get(t, 0) + int(b.nfe[rows].sum())
        kept = self.images.setdefault(t, [])
        have = sum(x[0].shape[0] for x in kept)
        take = max(0, min(m, self.n_keep - have))
        if take:
            q = from_model_range(b.query[rows][:take]).clamp(0.0, 1.0).to("cpu")
            kept.append((q, b.samples[rows][:take], vp[:take], vid[:take]))

    @classmethod
    def merge(cls, tallies: Sequence[QTally]) -> QTally:
        """One tally with the counts of ``tallies`` summed and their images concatenated (up to ``n_keep``)."""
        out = cls(tallies[0].n_keep)
        for tally in tallies:
            for name in ("n", "k", "k_p", "k_id", "nfe"):
                into, add = getattr(out, name), getattr(tally, name)
                for t, v in add.items():
                    into[t] = into.get(t, 0) + v
            for t, parts in tally.images.items():
                kept = out.images.setdefault(t, [])
                for part in parts:
                    have = sum(x[0].shape[0] for x in kept)
                    take = max(0, min(part[0].shape[0], out.n_keep - have))
                    if take:
                        kept.append(tuple(x[:take] for x in part))
        return out

    def curve(self, example_ts: Sequence[float]) -> QCurve:
        ts = np.array(sorted(self.n), dtype=np.float64)
        n = np.array([self.n[t] for t in ts], dtype=np.int64)
        k = np.array([self.k[t] for t in ts], dtype=np.int64)
        ci = [proportion_interval(ki, ni) for ki, ni in zip(k, n)]
        examples = []
        for t in sorted(set(example_ts)):
            parts = self.images.get(t, [])
            if not parts:
                continue
            examples.append(
                ProbeExample(
                    t=float(t),
                    query=torch.cat([p[0] for p in parts]),
                    samples=torch.cat([p[1] for p in parts]),
                    c_p=torch.cat([p[2] for p in parts]),
                    c_id=torch.cat([p[3] for p in parts]),
                )
            )
        nfe_per_t = np.array([self.nfe[t] for t in ts], dtype=np.int64)
        return QCurve(
            ts=ts,
            n=n,
            k=k,
            k_p=np.array([self.k_p[t] for t in ts], dtype=np.int64),
            k_id=np.array([self.k_id[t] for t in ts], dtype=np.int64),
            q=k / n,
            ci_low=np.array([c[0] for c in ci]),
            ci_high=np.array([c[1] for c in ci]),
            nfe_per_t=nfe_per_t,
            nfe=int(nfe_per_t.sum()),
            examples=tuple(examples),
        )



def call_groups(grid: Sequence[float], M: int, *, batch_size: int, batch_waste: float, steps_full: int,
                eps: float) -> list[tuple[float, ...]]:
    """The exhaustive search's sampler calls as groups of grid t (high → low): up to ``max(1, batch_size // M)`` t
    per call, a t joining only if it waits at most ``batch_waste`` of its steps (a waiting trajectory costs no
    network evaluation); with ``M > batch_size`` each t is its own group (its M samples are then split over
    calls). One rule for :func:`fill_q_curve` and the data-parallel probe (:mod:`safcore.study.distributed`)."""
    if M > batch_size:
        return [(t,) for t in grid]
    per_call = max(1, batch_size // M)
    groups: list[tuple[float, ...]] = []
    group: list[float] = []
    for t in grid:  # high -> low; start a new call when full or when t would wait too many iterations
        s_max = steps_for(group[0], steps_full, eps) if group else 0
        if group and (len(group) == per_call or s_max > (1.0 + batch_waste) * steps_for(t, steps_full, eps)):
            groups.append(tuple(group))
            group = []
        group.append(t)
    groups.append(tuple(group))
    return groups


def q_curve(
    score_fn: ScoreFn,
    sde: SDE | None,
    x_p: torch.Tensor,
    c_p: Classifier,
    c_id: Classifier,
    ts: Sequence[float] | np.ndarray,
    M: int = 16,
    *,
    method: SamplerMethod = "euler_maruyama",
    steps_full: int = 1000,
    eps: float = 1e-3,
    batch_size: int = 256,
    batch_waste: float = 0.1,
    generator: torch.Generator | None = None,
    n_examples: int = 8,
    example_ts: Sequence[float] | None = None,
    progress: bool = True,
) -> QCurve:
    """``q_M(t)`` at every t of ``ts`` (Algorithm 1's inner loops), with Clopper–Pearson intervals.

    For each t: ``M`` queries ``x_{t,p} ~ p(x_t | x_p)`` (the model's forward kernel), one reverse trajectory
    from each (t → eps), and the count ``k`` of samples where ``c_p`` AND ``c_id`` fire;
    ``q_M(t) = k / M`` with the exact (Clopper–Pearson) 95 % interval of
    ``scipy.stats.binomtest(k, M).proportion_ci(method="exact")``.

    Batching: t values are taken high → low, up to ``max(1, batch_size // M)`` of them (with their M
    samples) per sampler call, using the sampler's per-sample start times AND step counts; when
    ``M > batch_size`` one t is split over several calls. Every trajectory runs on exactly the grid
    of a single-t run (:func:`probe_at`, the top-down search): ``steps(t)`` steps on
    ``linspace(t, eps, steps(t) + 1)``. A call of several t runs ``steps(max t)`` iterations; the
    trajectories of a lower t join late (their grids padded at the front) and are not evaluated
    before, so batching changes neither the law of q_M(t) nor the NFE: exactly
    ``Σ_t M · steps(t)`` (Euler–Maruyama; PC costs ``1 + corrector steps`` evaluations per step; the
    ODE's count is the solver's ``nfev`` per trajectory). A t joins a call only if it waits at most
    ``batch_waste`` of its steps (``steps(max t) <= (1 + batch_waste) · steps(t)``): waiting costs no
    network evaluations, but the call's early iterations run on a partly filled batch (wall time
    where a network call costs about the same whatever its batch, as on a GPU). ``steps_full`` must be
    large enough for the smallest t:
    a reverse process of very few steps cannot carry a query far from ``x_p``, so too coarse a
    sampler reports positives at low t that the model would not produce.

    Args:
        score_fn: ``(x (B,C,H,W) model range, t (B,)) -> score``; any model the sampler accepts, or any
            model :func:`safcore.generators.loader.as_generator` takes (a
            :class:`~safcore.generators.diffusers_model.DiffusersModel`, a ready
            :class:`~safcore.generators.base.Generator`).
        sde: the forward SDE the score model was trained for (``None`` for a diffusers model, whose
            scheduler defines both processes, or a score model that carries its own).
        x_p: the SAF image, unit range, (C, H, W) or (1, C, H, W).
        c_p, c_id: classifiers ``(B,C,H,W) unit range -> bool (B,)``; they see the reverse samples
            mapped to unit range and clipped to [0, 1].
        ts: the t values, each in (eps, 1].
        M: samples per t (>= 1).
        method, steps_full, eps: reverse sampler settings (see :class:`~safcore.probe.config.ProbeConfig`).
        batch_size: most trajectories per sampler call.
        batch_waste: largest fraction of its steps a t may wait (padded, not evaluated) in a call with
            higher t (see Batching).
        generator: draws the queries and the sampler noise (None: torch's global RNG).
        n_examples: images kept per example t.
        example_ts: the t values whose images are kept (default: none).
        progress: show a tqdm bar over sampler calls.

    Returns:
        :class:`QCurve` (ascending t); ``nfe`` counts image-network evaluations summed over all
        trajectories (a trajectory of ``s`` steps costs ``s``, whatever else shares its call).
    """
    grid = check_grid(ts, eps)
    keep = set(float(t) for t in (example_ts or ()))
    tally = fill_q_curve(
        QTally(n_examples), score_fn, sde, x_p, c_p, c_id, grid, M, method=method, steps_full=steps_full, eps=eps,
        batch_size=batch_size, batch_waste=batch_waste, generator=generator, progress=progress,
    )  # fmt: skip
    return tally.curve([t for t in grid if t in keep])


def fill_q_curve(
    tally: QTally,
    score_fn: ScoreFn,
    sde: SDE | None,
    x_p: torch.Tensor,
    c_p: Classifier,
    c_id: Classifier,
    ts: Sequence[float] | np.ndarray,
    M: int,
    *,
    method: SamplerMethod,
    steps_full: int,
    eps: float,
    batch_size: int,
    batch_waste: float,
    generator: torch.Generator | None,
    progress: bool,
) -> QTally:
    """:func:`q_curve`'s sampling, counted into ``tally`` (which is returned). ``score_fn`` may also be a
    :class:`~safcore.generators.base.Generator` (then ``sde`` is ``None`` and its own sampler settings apply)."""
    if isinstance(M, bool) or not isinstance(M, (int, np.integer)) or M < 1:
        raise ValueError(f"M={M!r}: the number of reverse samples per t must be an int >= 1")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: must be an int >= 1")
    if not batch_waste >= 0:
        raise ValueError(f"batch_waste={batch_waste!r}: must be >= 0")
    grid = check_grid(ts, eps)
    x_p = as_single_image(x_p)
    gen = as_generator(score_fn, sde, method=method, eps=eps)

    # jobs: (list of t, samples per t) per sampler call
    if M <= batch_size:
        jobs = [(group, M) for group in call_groups(grid, M, batch_size=batch_size, batch_waste=batch_waste,
                                                     steps_full=steps_full, eps=eps)]
    else:
        jobs = [((t,), min(batch_size, M - j)) for t in grid for j in range(0, M, batch_size)]

    for group, m in progress_bar(jobs, desc="q_M(t)", enabled=progress, leave=False):
        # each t with its own steps(t), exactly as probe_at / the top-down search run it alone
        b = _run_batch(gen, x_p, c_p, c_id, [t for t in group for _ in range(m)], steps_full=steps_full,
                       generator=generator)
        for j, t in enumerate(group):
            tally.add(t, b, slice(j * m, (j + 1) * m))
    return tally


def tally_draws(
    tally: QTally,
    score_fn: ScoreFn,
    sde: SDE | None,
    x_p: torch.Tensor,
    c_p: Classifier,
    c_id: Classifier,
    cfg: ProbeConfig,
    t: float,
    m: int,
    generator: torch.Generator,
) -> int:
    """Diffuse ``x_p`` to ``t`` and reverse it ``m`` times (in batches of at most ``cfg.batch_size``, drawn from
    ``generator`` in turn), classify, count into ``tally``; returns the positives (``c_p`` AND ``c_id``) among them.
    One chunk of the top-down search. ``score_fn`` may also be a :class:`~safcore.generators.base.Generator`
    (then ``sde`` is ``None``)."""
    gen = as_generator(score_fn, sde, method=cfg.method, eps=cfg.eps)
    before = tally.k.get(t, 0)
    for j in range(0, m, cfg.batch_size):  # respect batch_size inside a chunk
        mm = min(cfg.batch_size, m - j)
        b = _run_batch(gen, x_p, c_p, c_id, [t] * mm, steps_full=cfg.steps_full, generator=generator)
        tally.add(t, b, slice(0, mm))
    return tally.k[t] - before
