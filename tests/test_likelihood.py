"""Bits/dim through the probability-flow ODE against the closed form for Gaussian data (issue 3, items 6 and 9)."""

from __future__ import annotations

import math

import pytest
import torch

from safcore.generators.likelihood import NLLComparison, bits_per_dim, nll_comparison, ode_log_likelihood
from safcore.generators.score_model import ScoreModel, build_unet
from safcore.generators.sde import VPSDE, GaussianDataScore, SubVPSDE

MU, S = 0.1, 0.3  # model range


def _gaussian_unit_images(n: int, side: int = 8, seed: int = 0) -> torch.Tensor:
    y = MU + S * torch.randn(n, 1, side, side, generator=torch.Generator().manual_seed(seed))
    return ((y + 1) / 2).clamp(0, 1)


def _closed_form_bpd(gs: GaussianDataScore, x_unit: torch.Tensor, offset: float) -> torch.Tensor:
    d = x_unit[0].numel()
    return -gs.log_prob(2 * x_unit - 1) / (d * math.log(2)) + offset


@pytest.mark.parametrize("sde", [SubVPSDE(), VPSDE()], ids=["subvp", "vp"])
def test_continuous_bpd_matches_closed_form(sde):
    """Without dequantisation: -log2 N(2x-1; μ, s²)/D - 1 (the -1 is the [0,1]→[-1,1] Jacobian)."""
    gs = GaussianDataScore(sde, MU, S)
    x = _gaussian_unit_images(6)
    bpd = bits_per_dim(gs, sde, x, dequantize=False, generator=torch.Generator().manual_seed(0))
    assert bpd.shape == (6,)
    assert torch.allclose(bpd, _closed_form_bpd(gs, x, offset=-1.0), atol=2e-3)
    assert float(bpd.mean()) < 0  # a continuous density: negative bits/dim are possible


def test_log_likelihood_and_latent_of_gaussian_data():
    sde = SubVPSDE()
    gs = GaussianDataScore(sde, MU, S)
    y = 2 * _gaussian_unit_images(4) - 1
    res = ode_log_likelihood(gs, sde, y, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(res.logp, gs.log_prob(y), atol=0.05)  # nats summed over 64 dims
    m1, v1 = gs.marginal(torch.ones(4))  # the flow maps y to the standardised value at t = 1
    expected_z = m1.reshape(-1, 1, 1, 1) + (y - MU) / S * v1.sqrt().reshape(-1, 1, 1, 1)
    assert torch.allclose(res.z, expected_z, atol=1e-3)
    assert res.nfe > 10


def test_dequantised_bpd_is_discrete_bits_per_dim():
    """8-bit images, dequantised: ≈ closed form + log2(256) - 1 = +7 (bins of 1/256 much narrower than s)."""
    sde = SubVPSDE()
    gs = GaussianDataScore(sde, MU, S)
    x = torch.round(_gaussian_unit_images(8) * 255) / 255
    bpd = bits_per_dim(gs, sde, x, dequantize=True, generator=torch.Generator().manual_seed(0))
    ref = _closed_form_bpd(gs, x, offset=7.0)
    assert abs(float((bpd - ref).mean())) < 0.02
    assert bool((bpd > 6.0).all())


def test_gaussian_hutchinson_is_unbiased_on_average():
    sde = SubVPSDE()
    gs = GaussianDataScore(sde, MU, S)
    x = _gaussian_unit_images(64, side=12)
    bpd = bits_per_dim(gs, sde, x, dequantize=False, hutchinson="gaussian",
                       generator=torch.Generator().manual_seed(0))
    ref = _closed_form_bpd(gs, x, offset=-1.0)
    # per image the error has std ≈ sqrt(2/D)·|∫div|/(D ln2) ≈ 0.2 bits/dim; over 64 images ≈ 0.025
    assert abs(float((bpd - ref).mean())) < 0.08
    assert float((bpd - ref).abs().max()) > 1e-3  # a Gaussian probe is noisy, unlike Rademacher here


def test_works_inside_inference_mode():
    sde = SubVPSDE()
    gs = GaussianDataScore(sde, MU, S)
    with torch.inference_mode():
        x = _gaussian_unit_images(2)
        bpd = bits_per_dim(gs, sde, x, dequantize=False, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(bpd, _closed_form_bpd(gs, x, offset=-1.0), atol=2e-3)


def test_nll_comparison_singles_out_the_most_likely_image():
    sde = SubVPSDE()
    gs = GaussianDataScore(sde, MU, S)
    x_p = torch.full((1, 8, 8), (MU + 1) / 2)  # the mode of the data density
    others = _gaussian_unit_images(5, seed=3)
    cmp = nll_comparison(gs, sde, x_p, others, dequantize=False, generator=torch.Generator().manual_seed(0))
    assert isinstance(cmp, NLLComparison)
    assert cmp.rank == 0 and cmp.z_score < -1.0 and cmp.bpd_others.shape == (5,)
    assert "bits/dim x_p" in str(cmp)


def test_score_model_bpd_is_finite():
    torch.manual_seed(0)
    model = ScoreModel(build_unet("tiny", 1)).eval()
    x = _gaussian_unit_images(2, side=8)
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: one thread is fastest
    try:
        bpd = bits_per_dim(model, model.sde, x, rtol=1e-2, atol=1e-2, generator=torch.Generator().manual_seed(0))
    finally:
        torch.set_num_threads(n)
    assert bpd.shape == (2,) and bool(torch.isfinite(bpd).all())


def test_bad_parameters_raise():
    sde = SubVPSDE()
    gs = GaussianDataScore(sde, MU, S)
    x = _gaussian_unit_images(2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bits_per_dim(gs, sde, 2 * x - 1)
    with pytest.raises(ValueError, match="unknown hutchinson 'sobol'"):
        bits_per_dim(gs, sde, x, hutchinson="sobol")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        bits_per_dim(gs, sde, x[0])
    with pytest.raises(ValueError, match="x_p must be one image"):
        nll_comparison(gs, sde, x, x)
