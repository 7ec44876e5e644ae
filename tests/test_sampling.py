"""Samplers against the analytic score of Gaussian data, NFE counts, start from x_t (issue 3, items 5 and 9)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import Recording
from safcore.generators.score_model import ScoreModel, build_unet
from safcore.generators.sampling import SampleResult, sample
from safcore.generators.sde import VPSDE, GaussianDataScore, SubVPSDE

MU, S = 0.3, 0.2


@pytest.fixture
def one_thread():
    """Tiny networks run fastest on one thread (and OpenMP spinning on a loaded 2-core box costs 100×)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Counting:
    """Wraps a score function and counts its calls (one call = one network evaluation per trajectory)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


@pytest.mark.parametrize("method", ["euler_maruyama", "pc", "ode"])
@pytest.mark.parametrize("sde", [SubVPSDE(), VPSDE()], ids=["subvp", "vp"])
def test_samples_of_gaussian_data_have_its_moments(method, sde):
    score = Counting(GaussianDataScore(sde, MU, S))
    g = torch.Generator().manual_seed(0)
    res = sample(score, sde, shape=(128, 1, 8, 8), method=method, steps=100, generator=g, progress=False)
    assert isinstance(res, SampleResult)
    assert res.images.shape == (128, 1, 8, 8) and res.n_images == 128 and res.method == method
    assert abs(res.images.mean().item() - MU) < 0.01
    assert abs(res.images.std().item() - S) < 0.01
    # NFE: EM one evaluation per step, PC predictor + corrector, ODE the solver's nfev
    expected = {"euler_maruyama": 100, "pc": 200}.get(method, score.calls)
    assert res.nfe == score.calls == expected
    if method == "ode":
        assert 10 < res.nfe < 500 and 1 <= res.steps < res.nfe


@pytest.mark.parametrize("method", ["euler_maruyama", "pc"])
def test_tweedie_final_step_returns_a_memorised_point(method):
    """Data = one point (std 1e-4): the sub-VP plain last step amplifies the leftover noise
    (g²h/σ² > 2 near t = 0), Tweedie's E[x_0|x_t] lands on the point: what a memorising model does."""
    sde = SubVPSDE()
    gs = GaussianDataScore(sde, MU, 1e-4)
    kw = dict(shape=(64, 1, 8, 8), method=method, steps=50, progress=False)
    tw = sample(gs, sde, generator=torch.Generator().manual_seed(0), **kw)
    plain = sample(gs, sde, final_step="noise_free", generator=torch.Generator().manual_seed(0), **kw)
    assert (tw.images - MU).abs().max().item() < 1e-3
    assert plain.images.std().item() > 0.05
    assert tw.nfe == plain.nfe


def test_without_score_the_moments_are_wrong():
    """Guards the moment test above: a zero score leaves mostly prior noise."""
    sde = SubVPSDE()
    res = sample(lambda x, t: torch.zeros_like(x), sde, shape=(64, 1, 8, 8), steps=20,
                 generator=torch.Generator().manual_seed(0), progress=False)
    assert abs(res.images.std().item() - S) > 0.1


def test_per_sample_start_times_euler_maruyama():
    """x_t drawn from the exact marginal p_t at two different t in one batch ends at p_0 for both."""
    sde = SubVPSDE()
    gs = GaussianDataScore(sde, MU, S)
    g = torch.Generator().manual_seed(1)
    t = torch.cat([torch.full((96,), 0.1), torch.full((96,), 0.7)])
    m, v = gs.marginal(t)
    x_t = m.reshape(-1, 1, 1, 1) + v.sqrt().reshape(-1, 1, 1, 1) * torch.randn(192, 1, 8, 8, generator=g)
    res = sample(gs, sde, x_t=x_t, t_start=t, steps=50, generator=g, progress=False, batch_size=64)
    assert res.nfe == 50
    for part in (res.images[:96], res.images[96:]):
        assert abs(part.mean().item() - MU) < 0.015
        assert abs(part.std().item() - S) < 0.015


@pytest.mark.parametrize("batch_size", [None, 2])
def test_per_sample_start_times_ode_is_the_exact_transport(batch_size):
    """For Gaussian marginals the probability-flow map is affine: (x - m_t)/sqrt(v_t) is conserved."""
    sde = SubVPSDE()
    gs = GaussianDataScore(sde, MU, S)
    t = torch.tensor([0.05, 0.3, 0.6, 1.0])
    x_t = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    eps = 1e-3
    res = sample(gs, sde, x_t=x_t, t_start=t, method="ode", eps=eps, batch_size=batch_size, progress=False)
    m_t, v_t = gs.marginal(t)
    m_e, v_e = gs.marginal(torch.full((4,), eps))
    r = lambda v: v.reshape(-1, 1, 1, 1)  # noqa: E731
    expected = r(m_e) + (x_t - r(m_t)) * r((v_e / v_t).sqrt())
    assert torch.allclose(res.images, expected, atol=2e-4)




T0 = [0.9, 0.9, 0.55, 0.3, 0.3, 0.3]
STEPS = [30, 30, 20, 10, 10, 10]  # VP PC needs β(t)·h < 1


@pytest.mark.parametrize("final_step", ["tweedie", "noise_free"])
@pytest.mark.parametrize("method", ["euler_maruyama", "pc"])
@pytest.mark.parametrize("sde", [SubVPSDE(), VPSDE()], ids=["subvp", "vp"])
def test_per_sample_steps_run_each_trajectory_on_its_own_grid(sde, method, final_step):
    """Per-sample step counts in one call: trajectory i is evaluated exactly on linspace(t_i, eps, steps_i + 1)
    (but its end), bitwise at the t of a run with steps_i steps alone; a trajectory that waits for the
    longer ones is not evaluated, corrected or noised meanwhile, so it costs its own steps_i (· 2 for PC)."""
    eps = 1e-3
    gs = GaussianDataScore(sde, MU, S)
    x_t = torch.randn(len(T0), 1, 4, 4, generator=torch.Generator().manual_seed(0))
    kw = dict(method=method, final_step=final_step, eps=eps, progress=False)
    per_step = 1 if method == "euler_maruyama" else 2
    rec = Recording(gs)
    res = sample(rec, sde, x_t=x_t, t_start=torch.tensor(T0), steps=torch.tensor(STEPS),
                 generator=torch.Generator().manual_seed(1), **kw)  # fmt: skip
    assert rec.calls == max(STEPS) * per_step  # one batch: max(steps) iterations
    assert res.nfe_per_sample.tolist() == [per_step * s for s in STEPS]
    assert res.nfe == per_step * max(STEPS) and res.steps == max(STEPS) and len(rec.ts) == per_step * sum(STEPS)
    assert bool(torch.isfinite(res.images).all())
    expected = sorted(v for t, s in zip(T0, STEPS) for v in np.linspace(t, eps, s + 1)[:-1] for _ in range(per_step))
    np.testing.assert_allclose(sorted(rec.ts), expected, rtol=0, atol=1e-6)
    alone = Recording(gs)
    for i, (t, s) in enumerate(zip(T0, STEPS)):
        sample(alone, sde, x_t=x_t[i : i + 1], t_start=t, steps=s, generator=torch.Generator().manual_seed(1), **kw)
    assert sorted(rec.ts) == sorted(alone.ts)  # bitwise the single runs' time grids


def test_per_sample_steps_end_with_the_last_step_of_their_own_grid():
    """Deterministic: a score whose Tweedie denoiser returns the constant image c(t) = 20 t - 1 whatever x_t
    stamps every sample with its last grid time eps + (t_i - eps)/steps_i (the noise drops out). The
    per-sample call gives the images of separate single-grid runs; an equal step count is the old path."""
    sde, eps = SubVPSDE(), 1e-3

    def stamp(x, t):
        a, s = sde.marginal_prob(torch.ones_like(t), t)
        r = lambda v: v.reshape(-1, 1, 1, 1)  # noqa: E731
        return (r(a) * r(20 * t - 1) - x) / r(s**2)

    x_t = torch.randn(len(T0), 1, 4, 4, generator=torch.Generator().manual_seed(0))
    for method in ("euler_maruyama", "pc"):
        kw = dict(method=method, eps=eps, progress=False)
        res = sample(stamp, sde, x_t=x_t, t_start=torch.tensor(T0), steps=STEPS,
                     generator=torch.Generator().manual_seed(1), **kw)  # fmt: skip
        alone = torch.cat([sample(stamp, sde, x_t=x_t[i : i + 1], t_start=t, steps=s, **kw).images
                           for i, (t, s) in enumerate(zip(T0, STEPS))])  # fmt: skip
        torch.testing.assert_close(res.images, alone, atol=1e-5, rtol=0)
        last = torch.tensor([20 * (eps + (t - eps) / s) - 1 for t, s in zip(T0, STEPS)]).reshape(-1, 1, 1, 1)
        torch.testing.assert_close(res.images, last.expand_as(res.images), atol=1e-4, rtol=0)
    # all equal per-sample counts: the same draws and images as one int count
    gs = GaussianDataScore(sde, MU, S)
    a = sample(gs, sde, x_t=x_t, t_start=torch.tensor(T0), steps=7, generator=torch.Generator().manual_seed(3),
               progress=False)  # fmt: skip
    b = sample(gs, sde, x_t=x_t, t_start=torch.tensor(T0), steps=torch.full((len(T0),), 7),
               generator=torch.Generator().manual_seed(3), progress=False)  # fmt: skip
    assert torch.equal(a.images, b.images) and a.nfe == b.nfe == 7
    assert a.nfe_per_sample.tolist() == b.nfe_per_sample.tolist() == [7] * len(T0)


def test_per_sample_steps_keep_the_marginals():
    """x_t from the exact p_t at t = 0.1 (10 steps) and t = 0.7 (70 steps) in one call (batches of 64 that
    mix both) end at p_0, and each costs its own steps."""
    sde = SubVPSDE()
    gs = GaussianDataScore(sde, MU, S)
    g = torch.Generator().manual_seed(1)
    t = torch.cat([torch.full((96,), 0.1), torch.full((96,), 0.7)])
    steps = torch.cat([torch.full((96,), 10), torch.full((96,), 70)])
    m, v = gs.marginal(t)
    x_t = m.reshape(-1, 1, 1, 1) + v.sqrt().reshape(-1, 1, 1, 1) * torch.randn(192, 1, 8, 8, generator=g)
    perm = torch.randperm(192, generator=g)  # interleave the two start times
    res = sample(gs, sde, x_t=x_t[perm], t_start=t[perm], steps=steps[perm], generator=g, progress=False, batch_size=64)
    assert res.nfe == 70 and torch.equal(res.nfe_per_sample, steps[perm])
    images = torch.empty_like(res.images)
    images[perm] = res.images
    for part in (images[:96], images[96:]):
        assert abs(part.mean().item() - MU) < 0.015
        assert abs(part.std().item() - S) < 0.015


def test_score_model_sampling_shapes_batches_and_seeds(one_thread):
    torch.manual_seed(0)
    model = ScoreModel(build_unet("tiny", 1)).eval()
    sde = model.sde
    kw = dict(shape=(3, 1, 12, 12), steps=3, progress=False)  # the U-Net is size-agnostic; small = fast
    a = sample(model, sde, generator=torch.Generator().manual_seed(0), batch_size=2, **kw)
    b = sample(model, sde, generator=torch.Generator().manual_seed(0), batch_size=2, **kw)
    assert a.images.shape == (3, 1, 12, 12) and a.nfe == 3 and a.steps == 3
    assert torch.equal(a.images, b.images) and bool(torch.isfinite(a.images).all())
    assert not a.images.is_inference()
    pc = sample(model, sde, method="pc", generator=torch.Generator().manual_seed(0), **kw)
    assert pc.nfe == 6 and bool(torch.isfinite(pc.images).all())
    bf = sample(model, sde, autocast_bf16=True, generator=torch.Generator().manual_seed(0), batch_size=2, **kw)
    assert bf.images.dtype == torch.float32
    rel = (bf.images - a.images).abs().mean() / a.images.abs().mean()
    assert rel.item() < 0.02  # the same trajectory up to bf16 rounding


def test_bad_parameters_raise():
    sde = SubVPSDE()
    gs = GaussianDataScore(sde, MU, S)
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="unknown sampler method 'ddim'.*'euler_maruyama'"):
        sample(gs, sde, shape=(2, 1, 4, 4), method="ddim")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        sample(gs, sde, shape=(2, 1, 4, 4), steps=0)
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 2.5"):
        sample(gs, sde, shape=(2, 1, 4, 4), steps=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"steps must be an integer or a tensor of shape \(2,\)"):
        sample(gs, sde, x_t=x, t_start=0.5, steps=torch.tensor([3, 3, 3]))
    with pytest.raises(ValueError, match="steps must be integers >= 1"):
        sample(gs, sde, x_t=x, t_start=0.5, steps=[3, 0])
    with pytest.raises(ValueError, match="per-sample steps must be integers"):
        sample(gs, sde, x_t=x, t_start=0.5, steps=torch.tensor([3.0, 2.0]))
    with pytest.raises(ValueError, match=r"t_start must lie in \[0, 1\]"):
        sample(gs, sde, x_t=x, t_start=1.5)
    with pytest.raises(ValueError, match=r"t_start must lie in \[0, 1\]"):
        sample(gs, sde, x_t=x, t_start=torch.tensor([0.5, -0.1]))
    with pytest.raises(ValueError, match="t_start must be > eps"):
        sample(gs, sde, x_t=x, t_start=1e-3)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        sample(gs, sde, x_t=x, t_start=torch.tensor([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="exactly one of shape"):
        sample(gs, sde)
    with pytest.raises(ValueError, match="exactly one of shape"):
        sample(gs, sde, shape=(2, 1, 4, 4), x_t=x)
    with pytest.raises(ValueError, match="starts at t = T"):
        sample(gs, sde, shape=(2, 1, 4, 4), t_start=0.5)
    with pytest.raises(ValueError, match="batch_size"):
        sample(gs, sde, shape=(2, 1, 4, 4), batch_size=0)
    with pytest.raises(ValueError, match="unknown final_step 'none'"):
        sample(gs, sde, shape=(2, 1, 4, 4), final_step="none")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="snr"):
        sample(gs, sde, shape=(2, 1, 4, 4), method="pc", snr=0.0)
