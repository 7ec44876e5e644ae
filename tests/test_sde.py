"""SDE formulas against closed forms (issue 3, item 9)."""

from __future__ import annotations

import math

import pytest
import torch

from safcore.generators.sde import SDE, VPSDE, GaussianDataScore, SubVPSDE, get_sde

B0, B1 = 0.1, 20.0


def test_subvp_limits_match_closed_form():
    sde = SubVPSDE()
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    mean, std = sde.marginal_prob(x, torch.full((3,), 1e-7))
    assert torch.allclose(mean, x, atol=1e-6)
    assert float(std.max()) < 1e-6 and float(std.min()) >= 0.0
    mean1, std1 = sde.marginal_prob(x, torch.ones(3))
    # lmc(1) = -(β1 - β0)/4 - β0/2 = -(β0 + β1)/4; sub-VP std = 1 - e^{2 lmc}, no square root
    assert torch.allclose(std1, torch.full((3,), 1.0 - math.exp(-(B0 + B1) / 2)), atol=1e-7)
    assert torch.allclose(mean1, math.exp(-(B0 + B1) / 4) * x, atol=1e-7)
    assert abs(float(std1[0]) - 0.9999568) < 1e-6


def test_vp_std_has_square_root_and_bounds_subvp():
    sub, vp = SubVPSDE(), VPSDE()
    t = torch.linspace(1e-4, 1.0, 50)
    _, s_sub = sub.marginal_prob(torch.zeros(50), t)
    _, s_vp = vp.marginal_prob(torch.zeros(50), t)
    assert torch.allclose(s_vp[-1], torch.tensor(math.sqrt(1.0 - math.exp(-(B0 + B1) / 2))))
    assert torch.allclose(s_sub, s_vp**2, atol=1e-6)  # (1 - e^{2lmc}) = (sqrt(1 - e^{2lmc}))²
    assert bool((s_sub <= s_vp + 1e-7).all())  # "sub"-VP: variance below the VP one


@pytest.mark.parametrize("sde", [SubVPSDE(), VPSDE()], ids=["subvp", "vp"])
def test_marginals_solve_the_moment_odes(sde: SDE):
    """A linear SDE's moments obey dm/dt = -½β m and dVar/dt = -β Var + g²: sde() agrees with marginal_prob()."""
    t = torch.tensor([0.05, 0.2, 0.5, 0.9], dtype=torch.float64)
    h = 1e-6
    one = torch.ones_like(t)
    m_p, s_p = sde.marginal_prob(one, t + h)
    m_m, s_m = sde.marginal_prob(one, t - h)
    m, _ = sde.marginal_prob(one, t)
    drift, g = sde.sde(one, t)
    beta = B0 + t * (B1 - B0)
    assert torch.allclose((m_p - m_m) / (2 * h), -0.5 * beta * m, rtol=1e-5)
    assert torch.allclose(drift, -0.5 * beta * one)
    _, s = sde.marginal_prob(one, t)
    assert torch.allclose((s_p**2 - s_m**2) / (2 * h), -beta * s**2 + g**2, rtol=1e-4)


def test_prior_logp_is_standard_normal_and_sampling_is_seeded():
    sde = SubVPSDE()
    z = sde.prior_sampling((4, 3, 5, 5), generator=torch.Generator().manual_seed(1))
    assert z.shape == (4, 3, 5, 5)
    z2 = sde.prior_sampling((4, 3, 5, 5), generator=torch.Generator().manual_seed(1))
    assert torch.equal(z, z2)
    ref = torch.distributions.Normal(0.0, 1.0).log_prob(z).flatten(1).sum(1)
    assert torch.allclose(sde.prior_logp(z), ref, rtol=1e-6)


def test_reverse_sde_and_probability_flow_drifts():
    sde = SubVPSDE()
    x = torch.randn(2, 1, 3, 3)
    t = torch.tensor([0.3, 0.8])
    score = lambda x, t: torch.full_like(x, 2.0)  # noqa: E731
    f, g = sde.sde(x, t)
    d_rev, g_rev = sde.reverse(score).sde(x, t)  # Eq. 3
    d_ode, g_ode = sde.reverse(score, probability_flow=True).sde(x, t)  # Eq. 5
    g2 = (g**2).reshape(2, 1, 1, 1)
    assert torch.allclose(d_rev, f - g2 * 2.0)
    assert torch.allclose(d_ode, f - 0.5 * g2 * 2.0)
    assert torch.equal(g_rev, g) and torch.equal(g_ode, torch.zeros(2))


def test_discretize_with_per_sample_dt():
    sde, vp = SubVPSDE(), VPSDE()
    x = torch.randn(2, 1, 3, 3)
    t, dt = torch.tensor([0.3, 0.8]), torch.tensor([0.01, 0.002])
    f, G = sde.discretize(x, t, dt)
    drift, g = sde.sde(x, t)
    assert torch.allclose(f, drift * dt.reshape(2, 1, 1, 1)) and torch.allclose(G, g * dt.sqrt())
    f, G = vp.discretize(x, t, dt)  # DDPM: x_{i+1} = sqrt(1-β_i) x_i + sqrt(β_i) z
    beta_i = vp.beta(t) * dt
    assert torch.allclose(f + x, torch.sqrt(1 - beta_i).reshape(2, 1, 1, 1) * x)
    assert torch.allclose(G, beta_i.sqrt())
    rf, rG = sde.reverse(lambda x, t: -x).discretize(x, t, dt)
    f, G = sde.discretize(x, t, dt)
    assert torch.allclose(rf, f + (G**2).reshape(2, 1, 1, 1) * x) and torch.equal(rG, G)


@pytest.mark.parametrize("sde", [SubVPSDE(), VPSDE()], ids=["subvp", "vp"])
def test_gaussian_data_score_is_the_gradient_of_its_log_density(sde: SDE):
    gs = GaussianDataScore(sde, mean=0.2, std=0.3)
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.01, 0.4, 1.0], dtype=torch.float64)
    (grad,) = torch.autograd.grad(gs.log_prob(x, t).sum(), x)
    assert torch.allclose(gs(x, t), grad)
    ref = torch.distributions.Normal(0.2, 0.3).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(gs.log_prob(x), ref)


def test_bad_parameters_raise():
    assert isinstance(get_sde("subvp"), SubVPSDE) and isinstance(get_sde("vp"), VPSDE)
    with pytest.raises(ValueError, match="unknown SDE 've'.*'subvp'"):
        get_sde("ve")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beta_min"):
        SubVPSDE(beta_min=20.0, beta_max=0.1)
    with pytest.raises(ValueError, match="std > 0"):
        GaussianDataScore(SubVPSDE(), 0.0, 0.0)
