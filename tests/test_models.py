"""Score model on a diffusers UNet2DModel: presets, score = -ε̂/σ_t, save/load (issue 3, items 2 and 9)."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DModel

from safcore.data.datasets import IMAGE_SIZES
from safcore.generators.score_model import TIME_LABEL_SCALE, UNET_LEVELS, UNET_PRESETS, ScoreModel, UNetPreset, build_unet
from safcore.generators.sde import VPSDE, SubVPSDE


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks run fastest on one thread (and OpenMP spinning on a loaded 2-core box costs 100×)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def tiny() -> ScoreModel:
    torch.manual_seed(0)
    return ScoreModel(build_unet("tiny", channels=1)).eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 1, 28, 28, generator=g), torch.tensor([0.1, 0.9])


def test_presets_have_the_documented_sizes():
    assert set(UNET_PRESETS) >= {"tiny", "small", "paper"}
    assert 50_000 <= _n_params(build_unet("tiny", 1)) <= 150_000
    small = build_unet("small", 1)
    assert 1_000_000 <= _n_params(small) <= 1_200_000
    assert small.config.time_embedding_type == "positional"
    assert len(small.config.down_block_types) == 3  # 28 → 14 → 7


def test_pinned_output_after_manual_seed(tiny: ScoreModel):
    x, t = _inputs()
    with torch.no_grad():
        eps, score = tiny.eps(x, t), tiny(x, t)
    assert abs(eps.sum().item() - 551.4454) < 1e-2
    assert abs(score.sum().item() - (-2879.047)) < 5e-2


def test_score_is_minus_eps_over_std_with_label_999t(tiny: ScoreModel):
    x, t = _inputs()
    with torch.no_grad():
        raw = tiny.unet(x, t * TIME_LABEL_SCALE).sample
        score = tiny(x, t)
    std = 1.0 - torch.exp(2 * (-0.25 * t**2 * 19.9 - 0.05 * t))  # sub-VP std, no square root
    assert torch.allclose(score, -raw / std.reshape(2, 1, 1, 1), rtol=1e-5, atol=1e-4)
    assert torch.allclose(tiny.eps(x, t), raw)


def test_rgb_and_scalar_time():
    torch.manual_seed(0)
    m = ScoreModel(build_unet("tiny", channels=3))
    with torch.no_grad():
        out = m(torch.randn(2, 3, 28, 28), torch.tensor(0.5))
    assert out.shape == (2, 3, 28, 28) and bool(torch.isfinite(out).all())


def test_save_and_load_round_trip(tiny: ScoreModel, tmp_path):
    x, t = _inputs()
    tiny.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "diffusion_pytorch_model.safetensors").is_file()
    back = ScoreModel.from_pretrained(tmp_path / "m").eval()
    assert isinstance(back.sde, SubVPSDE)
    with torch.no_grad():
        assert torch.equal(back(x, t), tiny(x, t))
    vp = ScoreModel(tiny.unet, VPSDE(beta_min=0.2, beta_max=10.0))
    vp.save_pretrained(tmp_path / "vp")
    back_vp = ScoreModel.from_pretrained(tmp_path / "vp")
    assert isinstance(back_vp.sde, VPSDE) and back_vp.sde.beta_1 == 10.0


def test_any_diffusers_unet_loads(tmp_path):
    torch.manual_seed(1)
    unet = UNet2DModel(
        sample_size=28, in_channels=1, out_channels=1, block_out_channels=(8, 8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3, norm_num_groups=4,
    )
    unet.save_pretrained(tmp_path / "plain")  # written by diffusers itself, no safcore file
    model = ScoreModel.from_pretrained(tmp_path / "plain", sde=VPSDE())
    assert isinstance(model.sde, VPSDE)
    x, t = _inputs()
    with torch.no_grad():
        assert torch.equal(model.eps(x, t), unet(x, t * 999).sample)


def test_bad_parameters_raise(tmp_path):
    with pytest.raises(ValueError, match="unknown U-Net preset 'huge'.*'tiny'.*'small'.*'paper'"):
        build_unet("huge", 1)
    with pytest.raises(ValueError, match="channels"):
        build_unet("tiny", 2)
    for size in (30, 32, 224):
        with pytest.raises(ValueError, match=rf"{size}×{size} px; safcore supports 28, 64, 128 px"):
            build_unet("tiny", 1, image_size=size)
    with pytest.raises(ValueError, match="three resolution levels"):
        UNetPreset((8, 16, 16, 16), 1, (False, False, False), 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="norm_num_groups"):
        UNetPreset((8, 16, 24), 1, (False, False, False), 16)
    with pytest.raises(ValueError, match="config.json"):
        ScoreModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("size, levels", [(28, 3), (64, 4), (128, 5)])
def test_each_size_gets_levels_down_to_7_or_8_px(size, levels):
    assert tuple(UNET_LEVELS) == IMAGE_SIZES  # the data checks and the presets name the same sizes
    torch.manual_seed(0)
    unet = build_unet("tiny", 3, image_size=size)
    assert unet.config.sample_size == size and unet.config.in_channels == unet.config.out_channels == 3
    assert len(unet.config.down_block_types) == levels
    widths, attention = UNET_PRESETS["tiny"].levels(size)
    assert tuple(unet.config.block_out_channels) == widths == (8,) * (levels - 3) + (8, 16, 16)
    assert attention == (False,) * (levels - 1) + (True,)  # attention stays at the deepest level (7 or 8 px)
    assert size // 2 ** (levels - 1) in (7, 8)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        out = ScoreModel(unet)(x, torch.tensor([0.2, 0.8]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_28px_presets_are_unchanged_by_the_larger_sizes():
    """The 28 px network is the preset's own: same blocks and parameter count as before 64/128 px existed,
    so stored models and the pinned numbers above stay valid."""
    for name, preset in UNET_PRESETS.items():
        unet = build_unet(name, 1)
        assert tuple(unet.config.block_out_channels) == preset.block_out_channels
        assert unet.config.sample_size == 28 and len(unet.config.down_block_types) == 3
    assert _n_params(build_unet("tiny", 1)) == 71_033


# ------------------------------------------------------------------------------------------ the mean head (issue 21)


def test_mean_head_is_the_gaussian_posterior_mean_of_the_noise_channel_mean():
    """Known answer by simulation: channel means m ~ N(μ, v), x_t = α m + σ z; regressing the noise's channel
    mean z̄ on d = mean(x_t) gives the slope and intercept of E[z̄ | d], which mean_eps must reproduce."""
    from safcore.generators.score_model import MeanPrior
    from safcore.generators.sde import SubVPSDE

    torch.manual_seed(0)
    prior = MeanPrior(mean=(-0.2, -0.5, -0.7), var=(0.07, 0.03, 0.03))
    model = ScoreModel(build_unet("tiny", 3), SubVPSDE(), prior)
    n, pixels = 20_000, 28 * 28
    for t in (0.2, 0.5, 1.0):
        alpha, sigma = SubVPSDE().marginal_prob(torch.ones(1), torch.tensor([t]))
        m = torch.tensor(prior.mean) + torch.randn(n, 3) * torch.tensor(prior.var).sqrt()
        zbar = torch.randn(n, 3) / pixels**0.5
        d = alpha * m + sigma * zbar
        x = d[:, :, None, None].expand(n, 3, 28, 28)  # only the channel mean enters mean_eps
        got = model.mean_eps(x, torch.full((n,), t))[:, :, 0, 0]
        for c in range(3):
            slope = torch.cov(torch.stack([d[:, c], zbar[:, c]]))[0, 1] / d[:, c].var()
            fitted = zbar[:, c].mean() + slope * (d[:, c] - d[:, c].mean())
            assert torch.allclose(got[:, c], fitted, atol=0.05 / pixels**0.5), (t, c)
    # at t = 1 the image has all but vanished: the noise's channel mean is the input's
    z = torch.randn(64, 3, 28, 28)
    assert (model.mean_eps(z, torch.ones(64))[:, :, 0, 0] - z.mean((2, 3))).abs().max() < 5e-3


def test_mean_head_survives_save_and_load_and_stays_out_of_the_weights(tmp_path):
    from safetensors.torch import load_file

    from safcore.generators.score_model import MeanPrior

    torch.manual_seed(0)
    prior = MeanPrior.from_images(torch.rand(8, 3, 28, 28) * 2 - 1)
    model = ScoreModel(build_unet("tiny", 3), mean_prior=prior)
    model.save_pretrained(tmp_path / "m")
    loaded = ScoreModel.from_pretrained(tmp_path / "m")
    assert loaded.mean_prior == prior
    x, t = torch.randn(2, 3, 28, 28), torch.tensor([0.3, 0.9])
    with torch.no_grad():
        assert torch.equal(model.eps(x, t), loaded.eps(x, t))
        assert not torch.equal(model.eps(x, t), model.unet(x, t * 999).sample)
    assert set(load_file(tmp_path / "m" / "diffusion_pytorch_model.safetensors")) == set(model.unet.state_dict())
    with pytest.raises(ValueError, match="variances > 0"):
        MeanPrior((0.0,), (0.0,))
