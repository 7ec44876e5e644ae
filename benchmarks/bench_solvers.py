"""Fast solvers beside the reference sampler: the same audit answer for a tenth of the network evaluations? (issue 25)

For each model and each sampler setting (the reference — the profile's Euler–Maruyama — and DPM-Solver++ (2M),
ODE and SDE, at a few step counts; a diffusers model: its scheduler and ``dpm`` / ``unipc``) it measures, side by
side in one run: NFE per sample, images/s, the copy rate of training images and of x_p (the audit's calibrated
copy rule beside its held-out control, :mod:`safcore.audit.copies`), ``|q|``, FID against the reference sampler's
samples (:mod:`safcore.measures.fid`) and t' with ``k/M`` (the exhaustive probe), rates with exact Clopper–Pearson
95 % intervals (:func:`safcore.measures.bounds.proportion_interval`).

Equivalence with the reference, per row: a two-sided Fisher exact test (``scipy.stats.fisher_exact``) for the
copy rate and for ``|q|`` (indistinguishable: p ≥ 0.05 in both), and t' within one grid step of the reference's
with overlapping Clopper–Pearson intervals of ``k/M`` at t'. The script prints the fastest (fewest NFE) setting
that is indistinguishable on every count.

    .venv/bin/python benchmarks/bench_solvers.py --out benchmarks/results/bench_solvers_cpu   # the cpu-profile models
    .venv/bin/python benchmarks/bench_solvers.py --quick --out /tmp/q                         # known-answer smoke test

``--quick`` uses an exact point-mixture score (no run store, no training): copy = nearest-centre RMS < 0.1,
``|q|`` = copies of x_p, no FID.
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

from safcore.measures.bounds import proportion_interval

STEP_COUNTS = (10, 20, 50)


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


def compare(row: Row, ref: Row, grid_step: float) -> Verdict:
    """Two-sided Fisher exact tests (copy rate, |q|) and t' within one grid step with overlapping k/M intervals."""
    p_c = float(stats.fisher_exact([[row.copies, row.n - row.copies], [ref.copies, ref.n - ref.copies]])[1])
    p_q = float(stats.fisher_exact([[row.n_q, row.n - row.n_q], [ref.n_q, ref.n - ref.n_q]])[1])
    if row.t_prime is None or ref.t_prime is None:
        agrees = row.t_prime is None and ref.t_prime is None
    else:
        near = abs(row.t_prime - ref.t_prime) <= grid_step + 1e-9
        a, b = proportion_interval(row.k_at_t_prime, row.M), proportion_interval(ref.k_at_t_prime, ref.M)
        agrees = near and a[0] <= b[1] and b[0] <= a[1]
    return Verdict(p_c, p_q, agrees, p_c >= 0.05 and p_q >= 0.05 and agrees)


def _timed(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


# --------------------------------------------------------------------------------------------------------------
# --quick: an exact point-mixture score (known answer, seconds)
# --------------------------------------------------------------------------------------------------------------


def quick_rows(n: int, settings: list[tuple[str, int]]) -> tuple[list[Row], float]:
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
        cfg = ProbeConfig(M=8, grid=grid, steps_full=steps, method=method, seed=0)
        pr = find_t_prime(score, sde, x_p, is_xp, is_xp, cfg, progress=False)
        rows.append(Row("point mixture (exact score)", method, steps, steps, n / secs, n, copies, xp, xp, None,
                        pr.t_prime, pr.k_at_t_prime, cfg.M, pr.nfe))
    return rows, 0.1


# --------------------------------------------------------------------------------------------------------------
# the cpu-profile study models (the run store)
# --------------------------------------------------------------------------------------------------------------


def study_rows(n_dataset: int, n: int | None, settings: list[tuple[str, int]]) -> tuple[list[Row], float]:
    from safcore.measures.fid import fid
    from safcore.study.hub import Study
    from safcore.study.profiles import CPU

    rows, ref_images = [], None
    for method, steps in settings:
        study = Study("breastmnist", n_dataset, profile=CPU.with_sampler(method, steps), progress=False)
        n_s = n or study.profile.n_samples
        images, secs = _timed(lambda: study.samples(n_s))
        result = study.audit(n_s)
        ref_images = images if ref_images is None else ref_images
        f = None if images is ref_images else float(fid(ref_images, images, "auto", dataset=study.data).fid)
        pr = study.probe()
        rows.append(Row(f"cpu breastmnist N_D={n_dataset}", method, steps, steps * (2 if method == "pc" else 1),
                        n_s / secs, n_s, result.copies.n_copies, result.copies.n_xp_copies, result.n_q, f,
                        pr.t_prime, pr.k_at_t_prime, study.profile.probe.M, pr.nfe))
    return rows, study.profile.probe.grid_step


def report(rows: list[Row], grid_step: float) -> tuple[str, dict]:
    """The side-by-side table (text) and its JSON, with the fastest indistinguishable setting per model."""
    lines, out = [], {"rows": [], "fastest": {}}
    for model in dict.fromkeys(r.model for r in rows):
        group = [r for r in rows if r.model == model]
        ref = group[0]
        lines += [f"## {model} (reference: {ref.sampler}, {ref.steps} steps)", "",
                  f"{'sampler':<16}{'steps':>6}{'NFE':>6}{'img/s':>9}  {'copies':<24}{'x_p copies':<24}"
                  f"{'|q|':<24}{'FID':>8}  {'t′ (k/M)':<14}{'probe NFE':>10}  {'p copies':>8}{'p |q|':>7}  same?"]
        best = None
        for r in group:
            v = compare(r, ref, grid_step)
            tp = "none" if r.t_prime is None else f"{r.t_prime:g} ({r.k_at_t_prime}/{r.M})"
            fid_s = "-" if r.fid is None else f"{r.fid:.2f}"
            lines.append(f"{r.sampler:<16}{r.steps:>6}{r.nfe:>6}{r.images_per_s:>9.1f}  {r.rate(r.copies):<24}"
                         f"{r.rate(r.xp_copies):<24}{r.rate(r.n_q):<24}{fid_s:>8}  {tp:<14}{r.probe_nfe:>10}  "
                         f"{v.p_copies:>8.3f}{v.p_q:>7.3f}  {'yes' if v.indistinguishable else 'NO'}")
            out["rows"].append({**dataclasses.asdict(r), **dataclasses.asdict(v)})
            if r is not ref and v.indistinguishable and (best is None or r.nfe < best.nfe):
                best = r
        pick = f"{best.sampler}, {best.steps} steps (NFE {best.nfe} vs {ref.nfe})" if best else "none (keep the reference)"
        lines += ["", f"fastest indistinguishable setting: {pick}", ""]
        out["fastest"][model] = None if best is None else {"sampler": best.sampler, "steps": best.steps}
    lines.append("tests: two-sided Fisher exact (copy rate, |q|; p ≥ 0.05), t′ within one grid step with overlapping "
                 "Clopper–Pearson intervals of k/M")
    return "\n".join(lines), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="exact point-mixture score, tiny sizes (a smoke test)")
    ap.add_argument("--n-samples", type=int, default=None, help="samples per setting (default: the profile's; quick 64)")
    ap.add_argument("--n-dataset", type=int, nargs="+", default=[16, 64], help="N_D of the cpu-profile models")
    ap.add_argument("--out", type=Path, default=None, help="write OUT.txt and OUT.json (atomically)")
    args = ap.parse_args(argv)
    if args.n_samples is not None and args.n_samples < 1:
        raise SystemExit("--n-samples must be ≥ 1")
    fast = [(m, s) for m in ("dpm2m", "dpm2m_sde") for s in STEP_COUNTS]
    if args.quick:
        rows, step = quick_rows(args.n_samples or 64, [("euler_maruyama", 200), *[(m, s) for m, s in fast if s <= 20]])
    else:
        from safcore.study.profiles import CPU

        rows, step = [], 0.05
        for n_d in args.n_dataset:
            got, step = study_rows(n_d, args.n_samples, [(CPU.sampler, CPU.sample_steps), *fast])
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
