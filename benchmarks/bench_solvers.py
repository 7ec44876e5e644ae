"""Fast solvers beside the reference sampler: the same audit answer for a tenth of the network evaluations? (issue 25)

For each model and each sampler setting (the reference — the profile's Euler–Maruyama — and DPM-Solver++ (2M),
ODE and SDE, at a few step counts; a diffusers model: its scheduler and ``dpm`` / ``unipc``) it measures, side by
side in one run: NFE per sample, images/s, the copy rate of training images and of x_p (the audit's calibrated
copy rule beside its held-out control, :mod:`safcore.audit.copies`), ``|q|``, FID against the reference sampler's
samples (:mod:`safcore.measures.fid`) and t' with ``k/M`` (the exhaustive probe), rates with exact Clopper–Pearson
95 % intervals (:func:`safcore.measures.bounds.proportion_interval`).

Equivalence with the reference, per row: a two-sided Fisher exact test (``scipy.stats.fisher_exact``) for the
copy rate and for ``|q|``; for t', with ``--repeats R ≥ 3`` independent probe runs per setting, a two-sided
Mann–Whitney U test of the R runs' t' against the reference's (``scipy.stats.mannwhitneyu``, exact permutation
null; no t' counts as 0) and, on the R·M samples pooled per t, a Fisher exact test of ``q_M(t)`` at every grid t
with Holm's correction (the curve t' is read from); indistinguishable: every p ≥ 0.05. With fewer runs t' must lie
within one grid step of the reference's with overlapping Clopper–Pearson intervals of ``k/M`` at t' (one run's t'
is the largest of ~20 rare events: for a model that copies x_p at rate ρ from pure noise, each high t has a
positive with probability 1 − (1 − ρ)^M, so single runs scatter over the upper grid). The script prints the
fastest (fewest NFE) setting that is indistinguishable on every count.

    .venv/bin/python benchmarks/bench_solvers.py --out benchmarks/results/bench_solvers_cpu   # the cpu-profile models
    .venv/bin/python benchmarks/bench_solvers.py --quick --out /tmp/q                         # known-answer smoke test
    .venv/bin/python benchmarks/bench_solvers.py --models sde --n-dataset 16 --n-samples 16 --step-counts 10  # small

``--quick`` uses an exact point-mixture score (no run store, no training): copy = nearest-centre RMS < 0.1,
``|q|`` = copies of x_p, no FID.

The diffusers DDPM group (``--models ddpm``) audits the DDPM a user trains as notebook 08 does at the cpu profile
(breastmnist, ``N_D = 16``, ``UNet2DModel`` of widths 32/64/64, 2000 AdamW steps): the notebook's pipeline in the run
store (``runs/notebook08/cpu_breastmnist_ND16/ddpm_pipeline``) when it is there and was trained on this study's
``D_p``, else one trained here the same way and kept in the run store (kind ``bench_ddpm``, keyed by its recipe), so
a second run reuses it. Reference: its own DDPM scheduler at 1000 steps; fast: ``ddim``, ``dpm`` and ``unipc`` views
(:meth:`~safcore.generators.diffusers_model.DiffusersModel.with_scheduler`) at the step counts, samples and probe.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from safcore.generators.solvers import SOLVERS
from safcore.measures.bounds import proportion_interval

STEP_COUNTS = (10, 20, 50)
#: The reference sampler of the SDE models: the cpu profile's sampler before the fast default (Euler–Maruyama, 200).
REFERENCE = ("euler_maruyama", 200)
#: notebook 08's cpu-profile DDPM recipe (what a user trains without safcore), the run-store key of one trained here.
DDPM_RECIPE = {"dataset": "breastmnist", "seed": 0, "train_steps": 2000, "widths": [32, 64, 64], "batch": 32,
               "lr": 2e-4, "scheduler": "DDPMScheduler linear epsilon T=1000", "notebook": "08_audit_your_model"}


@dataclasses.dataclass(frozen=True)
class Row:
    """One model × sampler setting."""

    model: str
    sampler: str
    steps: int
    nfe: int
    images_per_s: float
    n: int
    copies: int
    xp_copies: int
    n_q: int
    fid: float | None
    t_prime: float | None
    k_at_t_prime: int | None
    M: int
    probe_nfe: int
    control: tuple[int, int] | None = None  # held-out real images passing the same copy rule: (k, n); None: quick
    t_prime_runs: tuple[float | None, ...] = ()  # each probe run's t' (R runs; () : not recorded)
    curve: tuple[tuple[float, int, int], ...] = ()  # (t, k, n) per grid t, pooled over the runs, ascending t

    def t_prime_text(self) -> str:
        """``t' (k/n at t')`` of the pooled runs, and the runs' range when there are several."""
        if self.t_prime is None:
            head = "none"
        else:
            n_at = next((n for t, _, n in self.curve if abs(t - self.t_prime) < 1e-9), self.M)
            head = f"{self.t_prime:g} ({self.k_at_t_prime}/{n_at})"
        if len(self.t_prime_runs) > 1:
            runs = [0.0 if t is None else t for t in self.t_prime_runs]
            head += f" [{min(runs):g}–{max(runs):g}]"
        return head

    def rate(self, k: int) -> str:
        lo, hi = proportion_interval(k, self.n)
        return f"{k}/{self.n} [{lo:.3f}, {hi:.3f}]"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A row against the reference: Fisher p of copy rate and |q|, whether t' agrees, and the overall call."""

    p_copies: float
    p_q: float
    t_prime_agrees: bool
    indistinguishable: bool
    p_t_prime: float | None = None  # Mann–Whitney U on the runs' t' (None: fewer than MIN_RUNS runs)
    p_curve: float | None = None  # Holm-adjusted smallest per-t Fisher p of q_M(t) (None: no curve)


#: Runs per setting from which t' is compared by its runs' distribution (Mann–Whitney U) instead of one run's value.
MIN_RUNS = 3


def holm_min(p_values: list[float]) -> float:
    """The smallest Holm-adjusted p value of a family of ``m`` tests (Holm 1979), ``min(1, m · min p)``: Holm's
    procedure rejects some hypothesis of the family at level α iff this is below α."""
    return 1.0 if not p_values else min(1.0, len(p_values) * min(p_values))


def curve_p(row: Row, ref: Row) -> float | None:
    """Holm-adjusted smallest two-sided Fisher p of ``q_M(t)`` over the grid t both curves hold (None: no curve)."""
    theirs = {round(t, 6): (k, n) for t, k, n in ref.curve}
    ps = [float(stats.fisher_exact([[k, n - k], [theirs[round(t, 6)][0], theirs[round(t, 6)][1] - theirs[round(t, 6)][0]]])[1])
          for t, k, n in row.curve if round(t, 6) in theirs]
    return holm_min(ps) if ps else None


def t_prime_p(row: Row, ref: Row) -> float:
    """Two-sided Mann–Whitney U p of the runs' t' (no t' counts as 0), with its exact permutation null."""
    a = [0.0 if t is None else t for t in row.t_prime_runs]
    b = [0.0 if t is None else t for t in ref.t_prime_runs]
    if len(set(a + b)) == 1:  # every run gave the same t': nothing to tell apart
        return 1.0
    return float(stats.mannwhitneyu(a, b, alternative="two-sided",
                                    method=stats.PermutationMethod(n_resamples=100_000, random_state=0)).pvalue)


def compare(row: Row, ref: Row, grid_step: float) -> Verdict:
    """Two-sided Fisher exact tests (copy rate, |q|); t' by Mann–Whitney U on the runs and the q_M(t) curve by
    Holm-corrected Fisher tests when both rows have ``MIN_RUNS`` runs, else t' within one grid step with overlapping
    k/M intervals."""
    p_c = float(stats.fisher_exact([[row.copies, row.n - row.copies], [ref.copies, ref.n - ref.copies]])[1])
    p_q = float(stats.fisher_exact([[row.n_q, row.n - row.n_q], [ref.n_q, ref.n - ref.n_q]])[1])
    p_t = p_curve = None
    if min(len(row.t_prime_runs), len(ref.t_prime_runs)) >= MIN_RUNS:
        p_t, p_curve = t_prime_p(row, ref), curve_p(row, ref)
        agrees = p_t >= 0.05 and (p_curve is None or p_curve >= 0.05)
    elif row.t_prime is None or ref.t_prime is None:
        agrees = row.t_prime is None and ref.t_prime is None
    else:
        near = abs(row.t_prime - ref.t_prime) <= grid_step + 1e-9
        a, b = proportion_interval(row.k_at_t_prime, row.M), proportion_interval(ref.k_at_t_prime, ref.M)
        agrees = near and a[0] <= b[1] and b[0] <= a[1]
    return Verdict(p_c, p_q, agrees, p_c >= 0.05 and p_q >= 0.05 and agrees, p_t, p_curve)


def _curve(pr) -> tuple[tuple[float, int, int], ...]:
    """A probe result's pooled ``(t, k, n)`` per evaluated t, ascending."""
    return tuple((round(float(t), 6), int(k), int(n)) for t, k, n in zip(pr.ts, pr.k, pr.n))


def _timed(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


# --------------------------------------------------------------------------------------------------------------
# --quick: an exact point-mixture score (known answer, seconds)
# --------------------------------------------------------------------------------------------------------------


def quick_rows(n: int, settings: list[tuple[str, int]], repeats: int = 1) -> tuple[list[Row], float]:
    from safcore.generators.known_answer import PointMixtureScore
    from safcore.generators.sampling import sample
    from safcore.generators.sde import SubVPSDE
    from safcore.probe import ProbeConfig, find_t_prime

    sde = SubVPSDE()
    g = torch.Generator().manual_seed(0)
    x_p = torch.rand(1, 1, 8, 8, generator=g)
    y = 1.0 - x_p
    score = PointMixtureScore(sde, torch.cat([x_p, y]), (-1.0, 0.0))
    centres = torch.cat([x_p, y])
    grid = tuple(round(0.1 * i, 1) for i in range(9, 0, -1))

    def is_xp(x):  # x unit range
        return (x - x_p).pow(2).flatten(1).mean(1).sqrt() < 0.1

    rows = []
    for method, steps in settings:
        res, secs = _timed(lambda: sample(score, sde, shape=(n, 1, 8, 8), method=method, steps=steps,
                                          generator=torch.Generator().manual_seed(1), progress=False).images)
        unit = (res / 2 + 0.5)
        d = torch.cdist(unit.flatten(1), centres.flatten(1)) / math.sqrt(64)
        copies = int((d.min(1).values < 0.1).sum())
        xp = int(is_xp(unit).sum())
        cfg = ProbeConfig(M=8, grid=grid, steps_full=steps, method=method, seed=0, repeats=repeats)
        pr = find_t_prime(score, sde, x_p, is_xp, is_xp, cfg, progress=False)
        rows.append(Row("point mixture (exact score)", method, steps, steps, n / secs, n, copies, xp, xp, None,
                        pr.t_prime, pr.k_at_t_prime, cfg.M, pr.nfe // repeats, None, pr.t_prime_runs, _curve(pr)))
    return rows, 0.1


# --------------------------------------------------------------------------------------------------------------
# the cpu-profile study models (the run store)
# --------------------------------------------------------------------------------------------------------------


def study_rows(n_dataset: int, n: int | None, settings: list[tuple[str, int]], repeats: int = 1,
               timing_batch: int | None = None) -> tuple[list[Row], float]:
    from safcore.study.hub import Study
    from safcore.study.profiles import CPU

    rows: list[Row] = []
    for method, steps in settings:
        study = Study("breastmnist", n_dataset, profile=CPU.with_sampler(method, steps), progress=False)
        rows.append(_measure(study, n, f"cpu breastmnist N_D={n_dataset}", method, steps,
                             steps * (2 if method == "pc" else 1), rows[0] if rows else None, repeats, timing_batch))
    return rows, CPU.probe.grid_step


def _measure(study, n: int | None, model: str, sampler: str, steps: int, nfe: int, ref: Row | None,
             repeats: int = 1, timing_batch: int | None = None) -> Row:
    """One row: ``study``'s samples (timed on ``timing_batch`` fresh images, default the profile's sample batch),
    its audit, FID against the reference's samples, its exhaustive probe (``repeats`` runs, pooled)."""
    from safcore.measures.fid import fid

    _check_trained(study)
    n_s = n or study.profile.n_samples
    images = study.samples(n_s)  # kept in the run store: a second run reads them back
    result = study.audit(n_s)
    images_per_s = _images_per_second(study, min(n_s, timing_batch or study.profile.sample_batch))
    if ref is None:
        _REFERENCE[model] = images
    f = None if ref is None else float(fid(_REFERENCE[model], images, "auto", dataset=study.data,  # as Study.fid
                                           cache_dir=study.store.root / "fid_extractors", device=study.device).value)
    pr = study.probe(study.probe_config(repeats=repeats))
    return Row(model, sampler, steps, nfe, images_per_s, n_s, result.copies.n_copies, result.copies.n_xp_copies,
               result.n_q, f, pr.t_prime, pr.k_at_t_prime, study.profile.probe.M, pr.nfe // repeats,
               (int(result.copies.control["copies"]), int(result.copies.control["n"])), pr.t_prime_runs, _curve(pr))


def _images_per_second(study, n: int) -> float:
    """Images/s of one fresh batch of ``n`` samples drawn as the study draws them (its sampler, steps, bf16), outside
    the run store: the stored samples may have been read back, not drawn."""
    from safcore.generators.loader import as_generator

    how = study._sampling(study.profile.sample_steps)  # noqa: SLF001 — the study's own sampling rule
    model = as_generator(study.score_model, method=study.profile.sampler)
    generator = torch.Generator(device=model.device).manual_seed(0)
    _, secs = _timed(lambda: model.sample(n, steps=how.steps, generator=generator, batch_size=n,
                                          autocast_bf16=how.autocast_bf16, progress=False))
    return n / secs


_REFERENCE: dict[str, torch.Tensor] = {}  # the reference sampler's samples of each model (FID's reference side)


def _check_trained(study) -> None:
    """Stop before a stage trains: the benchmark compares samplers of trained models (``SAFCORE_BENCH_TRAIN=1``
    allows the study to train its score model and classifiers first)."""
    import os

    if os.environ.get("SAFCORE_BENCH_TRAIN") == "1":
        return
    missing = [kind for kind, config in (("score_model", study.model_config() if study.model is None else None),
                                         ("c_p", study.classifier_config("c_p")), ("c_id", study.classifier_config("c_id")))
               if config is not None and study.store.find(kind, config) is None]
    if missing:
        raise SystemExit(f"{study!r}: {', '.join(missing)} not in the run store {study.store.root}; train them first "
                         "(or set SAFCORE_BENCH_TRAIN=1)")


def _train_ddpm(dp_npz: Path, out: Path) -> None:
    """notebook 08's training at the cpu profile (a plain diffusers loop, seeded), saved as a DDPM pipeline."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    r = DDPM_RECIPE
    with np.load(dp_npz) as archive:
        x0 = torch.from_numpy(archive["train_images"]).float()[:, None] / 127.5 - 1.0  # (N, 1, 28, 28)
    torch.manual_seed(r["seed"])
    w = tuple(r["widths"])
    unet = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=w, layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=w[0] // 2)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=r["lr"])
    for _ in range(r["train_steps"]):
        batch = x0[torch.randint(0, len(x0), (r["batch"],))]
        noise = torch.randn_like(batch)
        k = torch.randint(0, 1000, (len(batch),))
        loss = torch.nn.functional.mse_loss(unet(scheduler.add_noise(batch, noise, k), k).sample, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    DDPMPipeline(unet=unet.eval(), scheduler=scheduler).save_pretrained(out)


def ddpm_pipeline(n_dataset: int) -> tuple[Path, str]:
    """The cpu-profile DDPM pipeline folder of notebook 08 for ``N_D = n_dataset`` and where it came from: the
    notebook's own in the run store if it was trained on this D_p, else one trained here once (run store kind
    ``bench_ddpm``; a second run reuses it)."""
    from safcore.data.fingerprint_io import export_fingerprint, read_fingerprint
    from safcore.runtime.runs import RunStore

    store = RunStore()
    key = {**DDPM_RECIPE, "n_dataset": n_dataset}
    run = store.find("bench_ddpm", key)
    if run is not None:
        return run.path / "ddpm_pipeline", f"trained by bench_solvers ({run.path.name})"
    work = store.root / "notebook08" / f"cpu_breastmnist_ND{n_dataset}"
    if (work / "ddpm_pipeline" / "model_index.json").is_file() and (work / "fingerprint" / "fingerprint.json").is_file():
        import tempfile

        theirs = read_fingerprint(work / "fingerprint")
        with tempfile.TemporaryDirectory() as tmp:  # the D_p a fresh export draws, beside the notebook's
            ours = export_fingerprint("breastmnist", n_dataset, Path(tmp) / "fp", seed=DDPM_RECIPE["seed"])
        if ours.meta["dp_sha256"] == theirs.meta.get("dp_sha256"):
            return work / "ddpm_pipeline", "notebook 08's, from the run store"

    def make(tmp: Path) -> dict:
        fp = export_fingerprint("breastmnist", n_dataset, tmp / "fingerprint", seed=DDPM_RECIPE["seed"])
        began = time.perf_counter()
        _train_ddpm(fp.folder / "dp.npz", tmp / "ddpm_pipeline")
        return {"train_seconds": time.perf_counter() - began}

    run = store.get_or_create("bench_ddpm", key, make, seed=DDPM_RECIPE["seed"])
    return run.path / "ddpm_pipeline", f"trained by bench_solvers ({run.path.name})"


#: The DDPM group's fast views (``--ddpm-views``): a ``--scheduler`` choice, optionally ``:eta`` for DDIM's η.
DDPM_VIEWS = ("ddpm", "ddim", "ddim:1", "dpm", "dpm_sde", "unipc")


def ddpm_rows(n_dataset: int, n: int | None, step_counts: tuple[int, ...],
              reference_steps: int | None = None, views: tuple[str, ...] = DDPM_VIEWS, repeats: int = 1,
              timing_batch: int | None = None) -> tuple[list[Row], float]:
    """The DDPM group: its own DDPM scheduler at ``reference_steps`` (default all its T = 1000 steps) as the
    reference, then each view (``ddpm``: its own scheduler on a coarser grid; ``ddim`` (η = 0, or ``ddim:1``, η = 1:
    DDPM's posterior noise); ``dpm`` / ``dpm_sde`` / ``unipc``) at each step count, each audited and probed by a
    cpu-profile :class:`~safcore.study.hub.Study` with ``model=`` that view and ``sample_steps=`` its steps (samples
    and the probe's full runs)."""
    from safcore.generators.loader import load_model
    from safcore.study.hub import Study
    from safcore.study.profiles import CPU

    folder, origin = ddpm_pipeline(n_dataset)
    base = load_model(folder)
    rows: list[Row] = []
    settings = [("model", reference_steps or base.num_train_timesteps), *[(v, k) for v in views for k in step_counts]]
    for view, steps in settings:
        choice, _, eta = view.partition(":")
        model = base.with_scheduler(choice, eta=float(eta) if eta else None)
        study = Study("breastmnist", n_dataset, profile=CPU, model=model, sample_steps=steps, progress=False)
        label = model.scheduler_name if choice == "model" else f"{choice}{f' η={eta}' if eta else ''} ({model.scheduler_name})"
        rows.append(_measure(study, n, f"diffusers DDPM breastmnist N_D={n_dataset} ({origin})", label,
                             steps, steps, rows[0] if rows else None, repeats, timing_batch))
    return rows, CPU.probe.grid_step


def report(rows: list[Row], grid_step: float) -> tuple[str, dict]:
    """The side-by-side table (text) and its JSON, with the fastest indistinguishable setting per model."""
    lines, out = [], {"rows": [], "fastest": {}}
    for model in dict.fromkeys(r.model for r in rows):
        group = [r for r in rows if r.model == model]
        ref = group[0]
        w = max(16, *(len(r.sampler) + 2 for r in group))  # a scheduler's class name is longer than a method's
        control = ("" if ref.control is None else f"; control: {ref.control[0]} of {ref.control[1]} held-out real "
                   "images pass the same copy rule")
        lines += [f"## {model} (reference: {ref.sampler}, {ref.steps} steps{control})", "",
                  f"{'sampler':<{w}}{'steps':>6}{'NFE':>6}{'img/s':>9}  {'copies':<26}{'x_p copies':<26}"
                  f"{'|q|':<26}{'FID':>8}  {'t′ (k/n) [runs]':<24}{'probe NFE':>10}  {'p copies':>8}{'p |q|':>7}"
                  f"{'p t′':>7}{'p q(t)':>7}  same?"]
        best = None
        for r in group:
            v = compare(r, ref, grid_step)
            fid_s = "-" if r.fid is None else f"{r.fid:.2f}"
            p_t = "-" if v.p_t_prime is None else f"{v.p_t_prime:.3f}"
            p_curve = "-" if v.p_curve is None else f"{v.p_curve:.3f}"
            lines.append(f"{r.sampler:<{w}}{r.steps:>6}{r.nfe:>6}{r.images_per_s:>9.1f}  {r.rate(r.copies):<26}"
                         f"{r.rate(r.xp_copies):<26}{r.rate(r.n_q):<26}{fid_s:>8}  {r.t_prime_text():<24}"
                         f"{r.probe_nfe:>10}  {v.p_copies:>8.3f}{v.p_q:>7.3f}{p_t:>7}{p_curve:>7}  "
                         f"{'yes' if v.indistinguishable else 'NO'}")
            out["rows"].append({**dataclasses.asdict(r), **dataclasses.asdict(v)})
            if r is not ref and v.indistinguishable and (best is None or r.nfe < best.nfe):
                best = r
        pick = f"{best.sampler}, {best.steps} steps (NFE {best.nfe} vs {ref.nfe})" if best else "none (keep the reference)"
        lines += ["", f"fastest indistinguishable setting: {pick}", ""]
        out["fastest"][model] = None if best is None else {"sampler": best.sampler, "steps": best.steps}
    runs = min((len(r.t_prime_runs) for r in rows), default=0)
    if runs >= MIN_RUNS:
        lines.append(f"t′: {runs} independent probe runs per setting, M = {rows[0].M} each; t′ (k/n) is the pooled "
                     f"curve's (n = {runs}·M per t), [min–max] the runs' t′; probe NFE is one run's")
        lines.append("tests (indistinguishable: every p ≥ 0.05): two-sided Fisher exact on the copy rate and |q|; "
                     "p t′: two-sided Mann–Whitney U of the runs' t′ (permutation null; no t′ = 0); p q(t): Fisher "
                     "exact of q_M(t) at each grid t on the pooled counts, Holm-corrected over the grid")
    else:
        lines.append("tests: two-sided Fisher exact (copy rate, |q|; p ≥ 0.05), t′ within one grid step with "
                     "overlapping Clopper–Pearson intervals of k/M")
    return "\n".join(lines), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="exact point-mixture score, tiny sizes (a smoke test)")
    ap.add_argument("--n-samples", type=int, default=None, help="samples per setting (default: the profile's; quick 64)")
    ap.add_argument("--n-dataset", type=int, nargs="+", default=[16, 64], help="N_D of the cpu-profile models")
    ap.add_argument("--models", nargs="+", choices=("sde", "ddpm"), default=["sde", "ddpm"],
                    help="row groups: sde (safcore's cpu-profile score models, one per --n-dataset), ddpm (notebook "
                         "08's diffusers DDPM at --ddpm-n-dataset)")
    ap.add_argument("--ddpm-n-dataset", type=int, default=16, help="N_D of the diffusers DDPM (default 16)")
    ap.add_argument("--ddpm-reference-steps", type=int, default=None,
                    help="the DDPM's own scheduler's steps for the reference row (default: all its T = 1000)")
    ap.add_argument("--step-counts", type=int, nargs="+", default=list(STEP_COUNTS),
                    help=f"steps of each fast solver (default {' '.join(map(str, STEP_COUNTS))})")
    ap.add_argument("--solvers", nargs="+", choices=SOLVERS, default=list(SOLVERS),
                    help="the SDE models' fast solvers (default: all of safcore.generators.solvers.SOLVERS)")
    ap.add_argument("--ddpm-views", nargs="+", default=list(DDPM_VIEWS),
                    help=f"the DDPM's fast views, a --scheduler choice or ddim:ETA (default {' '.join(DDPM_VIEWS)})")
    ap.add_argument("--ddpm-step-counts", type=int, nargs="+", default=None,
                    help="steps of the DDPM's fast views (default: --step-counts)")
    ap.add_argument("--repeats", type=int, default=1,
                    help=f"independent probe runs per setting (≥ {MIN_RUNS}: t′ compared by the runs' distribution "
                         "and the pooled q(t) curve; default 1)")
    ap.add_argument("--timing-batch", type=int, default=None,
                    help="fresh images drawn to time img/s (default: the profile's sample batch)")
    ap.add_argument("--out", type=Path, default=None, help="write OUT.txt and OUT.json (atomically)")
    args = ap.parse_args(argv)
    if args.repeats < 1 or (args.timing_batch is not None and args.timing_batch < 1):
        ap.error("--repeats and --timing-batch must be ≥ 1")
    from safcore.generators.diffusers_model import SCHEDULER_CHOICES

    for view in args.ddpm_views:
        choice, _, eta = view.partition(":")
        try:
            eta_ok = not eta or (choice == "ddim" and 0.0 <= float(eta) <= 1.0)
        except ValueError:
            eta_ok = False
        if choice not in SCHEDULER_CHOICES or not eta_ok:
            ap.error(f"--ddpm-views {view!r}: allowed: {', '.join(SCHEDULER_CHOICES)}, and ddim:ETA with ETA in [0, 1]")
    if args.n_samples is not None and args.n_samples < 1:
        ap.error("--n-samples must be ≥ 1")
    if min(args.step_counts) < 1:
        ap.error("--step-counts must be ≥ 1")
    counts = tuple(args.step_counts)
    fast = [(m, s) for m in args.solvers for s in counts]
    if args.quick:
        rows, step = quick_rows(args.n_samples or 64, [("euler_maruyama", 200), *[(m, s) for m, s in fast if s <= 20]],
                                args.repeats)
    else:
        from safcore.study.profiles import CPU

        rows, step = [], CPU.probe.grid_step
        for n_d in args.n_dataset if "sde" in args.models else ():
            got, step = study_rows(n_d, args.n_samples, [REFERENCE, *fast], args.repeats, args.timing_batch)
            rows += got
        if "ddpm" in args.models:
            got, step = ddpm_rows(args.ddpm_n_dataset, args.n_samples, tuple(args.ddpm_step_counts or counts),
                                  args.ddpm_reference_steps, tuple(args.ddpm_views), args.repeats, args.timing_batch)
            rows += got
    text, data = report(rows, step)
    print(text)
    if args.out is not None:
        from safcore.runtime.atomic import atomic_write

        atomic_write(args.out.with_suffix(".txt"), text + "\n")
        atomic_write(args.out.with_suffix(".json"), json.dumps(data, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
