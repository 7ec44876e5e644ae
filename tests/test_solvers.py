"""DPM-Solver++ (2M) and its SDE variant (safcore.generators.solvers) against known answers (issue 25).

Exact scores: one point mass (every run lands on it), Gaussian data (the probability-flow ODE's solution is known,
so the error's order in the step count shows), two point masses (the probe's q(t) has a known value by quadrature,
:meth:`PointMixtureScore.q_exact`).
"""

from __future__ import annotations

import dataclasses
import math
import sys

import numpy as np
import pytest
import torch

from safcore.generators.base import SDEGenerator, steps_for
from safcore.generators.known_answer import PointMixtureScore
from safcore.generators.sampling import LOGSNR_METHODS, METHODS, reverse_steps, sample
from safcore.generators.sde import VPSDE, GaussianDataScore, SubVPSDE
from safcore.generators.solvers import SOLVERS, log_snr, logsnr_grid, logsnr_steps
from safcore.probe import ProbeConfig, find_t_prime

SDES = [SubVPSDE(), VPSDE()]
GRID = tuple(round(0.05 * i, 2) for i in range(19, 0, -1))  # 0.95 … 0.05, as tests/test_probe.py


pytestmark = pytest.mark.usefixtures("one_thread")


class Counting:
    def __init__(self, fn):
        self.fn, self.calls, self.rows = fn, 0, 0

    def __call__(self, x, t):
        self.calls += 1
        self.rows += x.shape[0]
        return self.fn(x, t)


def _f64(score):
    return lambda x, t: score(x.double(), t.double()).float()


def test_solvers_are_sampler_methods():
    assert set(SOLVERS) <= set(METHODS)
    with pytest.raises(ValueError, match="unknown sampler method 'dpm3'.*'dpm2m'"):
        sample(lambda x, t: x, SubVPSDE(), shape=(1, 1, 2, 2), method="dpm3", progress=False)
    with pytest.raises(ValueError, match="method='dpm3'.*'dpm2m_sde'"):
        ProbeConfig(method="dpm3")


@pytest.mark.parametrize("method", SOLVERS)
@pytest.mark.parametrize("sde", SDES, ids=["subvp", "vp"])
def test_a_single_point_mass_is_reached_exactly(method, sde):
    """x̂_0 of one point mass is the point at every t, so every step of DPM-Solver++ keeps x on the kernel's mean
    line and the last step returns the point (float32 rounding only), from the prior or any t, any step count."""
    torch.manual_seed(0)
    c = torch.rand(1, 1, 6, 6)
    score = Counting(_f64(PointMixtureScore(sde, c.double())))
    g = torch.Generator().manual_seed(0)
    res = sample(score, sde, shape=(4, 1, 6, 6), method=method, steps=7, generator=g, progress=False)
    assert (res.images - (2 * c - 1)).abs().max() < 1e-5
    assert res.nfe == score.calls == 7 and res.nfe_per_sample.tolist() == [7] * 4 and res.steps == 7
    x_t = torch.randn(3, 1, 6, 6, generator=g)
    res = sample(score, sde, x_t=x_t, t_start=torch.tensor([0.9, 0.4, 0.05]), method=method,
                 steps=torch.tensor([9, 4, 1]), generator=g, progress=False)
    assert (res.images - (2 * c - 1)).abs().max() < 1e-5
    assert res.nfe_per_sample.tolist() == [9, 4, 1] and res.nfe == 9


@pytest.mark.parametrize("sde", SDES, ids=["subvp", "vp"])
def test_dpm2m_is_second_order_on_gaussian_data(sde):
    """Exact score of N(0.3, 0.5² I) data: the error against a 1000-step solution falls ≈ 4× per doubling of
    the steps (measured 3.4–4.1); a first-order solver (DDIM, D_i = x̂_0(t_{i−1})) falls 2× (measured 1.96–2.06)."""
    score = GaussianDataScore(sde, 0.3, 0.5)
    z = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0))

    def run(n):
        return sample(_f64(score), sde, x_t=z, t_start=1.0, method="dpm2m", steps=n, progress=False).images.double()

    ref = run(1000)
    err = [float((run(n) - ref).abs().max()) for n in (20, 40, 80)]
    ratios = [err[0] / err[1], err[1] / err[2]]
    assert min(ratios) > 3.0, (err, ratios)


@pytest.mark.parametrize("sde", SDES, ids=["subvp", "vp"])
def test_dpm2m_sde_samples_have_the_moments_of_gaussian_data(sde):
    score = GaussianDataScore(sde, 0.3, 0.2)
    g = torch.Generator().manual_seed(0)
    res = sample(_f64(score), sde, shape=(256, 1, 8, 8), method="dpm2m_sde", steps=20, generator=g, progress=False)
    assert abs(res.images.mean().item() - 0.3) < 0.01
    assert abs(res.images.std().item() - 0.2) < 0.01
    # deterministic ODE variant: same moments, and a second run gives the same images
    a = sample(_f64(score), sde, x_t=res.images * 0 + 1, t_start=1.0, method="dpm2m", steps=20, progress=False)
    b = sample(_f64(score), sde, x_t=res.images * 0 + 1, t_start=1.0, method="dpm2m", steps=20, progress=False)
    assert torch.equal(a.images, b.images)


def test_logsnr_grid_and_steps():
    sde = SubVPSDE()
    eps = 1e-3
    assert logsnr_steps(sde, 1.0, 10, eps) == 10 and logsnr_steps(sde, 1.0, 200, eps) == 200
    # sub-VP: λ = lmc − log(1 − e^{2 lmc}), lmc(t) = −¼ t² (β1 − β0) − ½ t β0 (Song Eq. 29), by hand
    def lam_by_hand(t):
        lmc = -0.25 * t * t * 19.9 - 0.05 * t
        return lmc - math.log(-math.expm1(2 * lmc))

    lam = log_snr(sde, torch.tensor([0.5, eps, 1.0], dtype=torch.float64)).tolist()
    assert lam == pytest.approx([lam_by_hand(0.5), lam_by_hand(eps), lam_by_hand(1.0)], rel=1e-12)
    frac = (lam[1] - lam[0]) / (lam[1] - lam[2])
    assert frac == pytest.approx(0.7285, abs=1e-4)  # a run from 0.5 covers 73 % of the full run's λ range
    assert logsnr_steps(sde, 0.5, 10, eps) == math.ceil(10 * frac) == 8 and steps_for(0.5, 10, eps) == 5
    assert reverse_steps(sde, "dpm2m", 0.5, 10, eps) == 8 and reverse_steps(sde, "euler_maruyama", 0.5, 10, eps) == 5
    grid = logsnr_grid(sde, torch.tensor([1.0, 0.5]), torch.tensor([10, 8]), eps)
    assert grid.shape == (2, 11) and grid[0, 0] == 1.0 and grid[1, 2] == 0.5 and (grid[:, -1] == eps).all()
    assert (grid[1, :2] == 0.5).all()  # padded in front
    steps_lam = log_snr(sde, grid[0]).diff()
    np.testing.assert_allclose(steps_lam.numpy(), (lam[1] - lam[2]) / 10, rtol=1e-9)  # uniform in λ


def test_per_row_steps_batch_equals_separate_runs():
    """A batch of rows with different t and steps is the same as each row run alone (deterministic solver), and
    rows that have not joined cost no evaluations."""
    sde = SubVPSDE()
    score = Counting(_f64(GaussianDataScore(sde, 0.1, 0.4)))
    x_t = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    ts, st = torch.tensor([0.9, 0.5, 0.2]), torch.tensor([12, 6, 3])
    res = sample(score, sde, x_t=x_t, t_start=ts, method="dpm2m", steps=st, progress=False)
    assert score.rows == 12 + 6 + 3
    for i in range(3):
        one = sample(score, sde, x_t=x_t[i:i + 1], t_start=float(ts[i]), method="dpm2m", steps=int(st[i]), progress=False)
        torch.testing.assert_close(res.images[i:i + 1], one.images, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", SOLVERS)
def test_sde_generator_reverse_takes_the_tail_of_its_grid(method):
    """A λ-grid solver's run from t takes the λ tail of a full run (40, 30, 16 steps); a t-grid solver's
    Euler–Maruyama's ceil((t − eps)/(1 − eps) · 40) (40, 20, 2)."""
    sde = SubVPSDE()
    score = Counting(_f64(GaussianDataScore(sde, 0.0, 0.5)))
    gen = SDEGenerator(score, sde, method=method)
    t_vec = torch.tensor([1.0, 0.5, 0.05])
    _, nfe = gen.reverse(torch.zeros(3, 1, 2, 2), t_vec, 40, torch.Generator().manual_seed(0))
    if method in LOGSNR_METHODS:
        assert nfe.tolist() == [logsnr_steps(sde, t, 40, 1e-3) for t in t_vec.tolist()] == [40, 30, 16]
    else:
        assert nfe.tolist() == [steps_for(t, 40, 1e-3) for t in t_vec.tolist()] == [40, 20, 2]
    assert score.rows == sum(nfe.tolist())


@pytest.mark.parametrize("method", SOLVERS)
def test_probe_q_curve_with_the_fast_solver_equals_the_exact_one(method, images):
    """Two point masses (x_p nearly weightless): exact q is 1 up to 0.45, 0.986 at 0.50, 0.024 at 0.55, 6e-11 at
    0.60; the probe with DPM-Solver++ at 20 steps per full run finds the same t' and q as the exhaustive EM probe
    of tests/test_probe.py (within its tolerance)."""
    x_p, y, disk = images
    sde = SubVPSDE()

    def c_p(x):
        return (x[:, 0][:, disk] - 0.5).abs().mean(1) < 0.1

    def c_id(x):
        return (x - x_p).pow(2).flatten(1).mean(1) < 0.05

    score = Counting(PointMixtureScore(sde, torch.cat([x_p, y]), (-100.0, 0.0)))
    cfg = ProbeConfig(M=16, grid=GRID, steps_full=20, seed=0, method=method)
    res = find_t_prime(score, sde, x_p, c_p, c_id, cfg, progress=False)
    q_exact = np.array([score.fn.q_exact(t) for t in res.ts])
    assert np.abs(res.q - q_exact).max() < 0.3
    assert res.t_prime in (0.5, 0.55)
    assert res.q[res.ts <= 0.45].min() == 1.0 and res.q[res.ts >= 0.6].max() == 0.0
    # NFE: M reverse runs from each grid t, each of logsnr_steps(t) (λ grid) or steps_for(t) (t grid) evaluations
    tail = logsnr_steps if method in LOGSNR_METHODS else (lambda _sde, t, n, eps: steps_for(t, n, eps))
    assert res.nfe == score.rows == 16 * sum(tail(sde, t, 20, cfg.eps) for t in GRID)
    ref = dataclasses.replace(cfg, method="euler_maruyama", steps_full=200)
    assert res.nfe <= (0.15 if method in LOGSNR_METHODS else 0.1) * ref.nfe_exhaustive


# ------------------------------------------------------------------------------------------------
# diffusers models: their own multistep schedulers (--scheduler dpm | unipc)
# ------------------------------------------------------------------------------------------------


def _tiny_unet():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=4)


def test_dpm_view_samples_as_the_pipeline_loop_step_for_step():
    from diffusers import DDPMPipeline, DDPMScheduler

    from safcore.generators.diffusers_model import DiffusersModel

    unet = _tiny_unet()
    model = DiffusersModel(unet, DDPMScheduler(num_train_timesteps=100)).with_scheduler("dpm")
    assert model.scheduler_name == "DPMSolverMultistepScheduler" and not model.full_schedule_only
    assert model.scheduler.config.algorithm_type == "dpmsolver++" and model.scheduler.config.solver_order == 2
    ours = model.sample(3, steps=10, generator=torch.Generator().manual_seed(5), progress=False)
    theirs = DDPMPipeline(unet=unet, scheduler=model.scheduler)(
        batch_size=3, generator=torch.Generator().manual_seed(5), num_inference_steps=10, output_type="pt").images
    theirs = torch.as_tensor(np.asarray(theirs))
    if theirs.shape[-1] == 1:
        theirs = theirs.permute(0, 3, 1, 2)
    assert ours.nfe == 10 and torch.allclose((ours.images / 2 + 0.5).clamp(0, 1), theirs, atol=1e-6)
    # a reverse run from t = 1 is the same run from the same x_T
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    out, nfe = model.reverse(x_T, torch.ones(2), 10)
    scheduler = type(model.scheduler).from_config(model.scheduler.config)
    scheduler.set_timesteps(10)
    x = x_T.clone()
    with torch.no_grad():
        for k in scheduler.timesteps:
            x = scheduler.step(unet(x, k).sample, k, x).prev_sample
    assert nfe.tolist() == [10, 10] and torch.allclose(out, x, atol=1e-6)


@pytest.mark.parametrize("choice", ["dpm", "unipc"])
def test_multistep_views_start_on_the_tail_and_land_on_a_point_mass(choice):
    """The exact denoiser of one point: every reverse run of DPM-Solver++ / UniPC from any t lands on it, with NFE =
    the tail's length; a run from t < 1 takes the full grid's timesteps ≤ k(t) and starts there first-order (a
    fresh multistep state, begin index set as diffusers' img2img pipelines set it)."""
    from diffusers import DDPMScheduler

    from safcore.generators.diffusers_model import DiffusersModel
    from safcore.generators.known_answer import PointMassDenoiser

    target = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0))
    ddpm = DDPMScheduler(num_train_timesteps=100)
    model = DiffusersModel(PointMassDenoiser(target, ddpm), ddpm).with_scheduler(choice)
    assert not model.full_schedule_only
    t_vec = torch.tensor([1.0, 0.55, 0.55, 0.2])
    x_t = model.diffuse(torch.zeros(4, 1, 8, 8), t_vec, 10, torch.Generator().manual_seed(0))
    out, nfe = model.reverse(x_t, t_vec, 10)
    full = model.timesteps_from(1.0, 10)
    assert nfe.tolist() == [int((full <= model.timestep(float(t))).sum()) for t in t_vec] == [10, 5, 5, 1]
    assert (out - (2 * target - 1)).abs().max() < 1e-4


def test_bench_solvers_quick_runs_and_writes_its_table(tmp_path):
    """benchmarks/bench_solvers.py --quick on the exact point-mixture score: every row, the equivalence tests and
    the fastest indistinguishable setting, as text and JSON."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_solvers.py"
    spec = importlib.util.spec_from_file_location("bench_solvers", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_solvers"] = bench  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    assert bench.main(["--quick", "--n-samples", "32", "--out", str(tmp_path / "b")]) == 0
    data = json.loads((tmp_path / "b.json").read_text())
    rows = data["rows"]
    assert [(r["sampler"], r["steps"]) for r in rows] == [("euler_maruyama", 200)] + [
        (m, s) for m in SOLVERS for s in (10, 20)]
    assert [r["nfe"] for r in rows] == [200] + [10, 20] * len(SOLVERS)
    assert all(r["copies"] == r["n"] == 32 for r in rows)  # every sample of point masses is a copy of one
    assert rows[0]["indistinguishable"] and rows[0]["p_copies"] == 1.0
    assert "fastest indistinguishable setting" in (tmp_path / "b.txt").read_text()
    # a row that differs is called so: |q| 0 of 32 against 16 of 32
    ref = bench.Row("m", "ref", 1, 1, 1.0, 32, 32, 16, 16, None, 0.5, 4, 8, 1)
    other = dataclasses.replace(ref, n_q=0, xp_copies=0, t_prime=0.2, k_at_t_prime=1)
    v = bench.compare(other, ref, 0.1)
    assert v.p_q < 1e-5 and not v.t_prime_agrees and not v.indistinguishable
    # with >= MIN_RUNS runs t' is judged by the runs' distribution and the pooled q(t) curve, not one run's value
    curve = ((0.2, 24, 48), (0.5, 12, 48), (0.9, 3, 48))
    ref6 = dataclasses.replace(ref, t_prime_runs=(0.9, 0.5, 0.9, 0.5, 0.9, 0.5), curve=curve)
    same = dataclasses.replace(ref6, t_prime=0.2, t_prime_runs=(0.5, 0.9, 0.5, 0.9, 0.5, 0.9))
    v = bench.compare(same, ref6, 0.1)  # one grid step would call 0.2 vs 0.5 different; the runs agree
    assert v.t_prime_agrees and v.p_t_prime == 1.0 and v.p_curve == 1.0 and v.indistinguishable
    lower = dataclasses.replace(ref6, t_prime_runs=(0.2,) * 6, curve=((0.2, 24, 48), (0.5, 0, 48), (0.9, 0, 48)))
    v = bench.compare(lower, ref6, 0.1)
    assert v.p_t_prime < 0.01 and v.p_curve < 0.05 and not v.indistinguishable
    assert bench.holm_min([0.02, 0.5, 0.9]) == pytest.approx(0.06) and bench.holm_min([]) == 1.0
    assert "[0.5–0.9]" in ref6.t_prime_text()
    assert bench.main(["--quick", "--n-samples", "16", "--repeats", "3", "--step-counts", "10", "--solvers",
                       "dpm2m_sde_t", "--out", str(tmp_path / "r")]) == 0
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert all(len(r["t_prime_runs"]) == 3 and r["p_t_prime"] is not None for r in rows)


def test_bench_solvers_refuses_a_view_it_cannot_build(capsys):
    """--ddpm-views takes a --scheduler choice, and ddim:ETA with ETA in [0, 1]; anything else stops with exit code 2
    before a model is loaded, naming the value and what is allowed."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_solvers.py"
    spec = importlib.util.spec_from_file_location("bench_solvers", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_solvers"] = bench
    spec.loader.exec_module(bench)
    for view in ("dpm:1", "ddim:x", "ddim:2", "heun"):
        with pytest.raises(SystemExit) as info:
            bench.main(["--quick", "--ddpm-views", view])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert f"--ddpm-views {view!r}: allowed: model, ddpm, ddim, dpm, dpm_sde, unipc, and ddim:ETA" in err
