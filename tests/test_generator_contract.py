"""The contract every generator meets (safcore.generators.base.Generator), run on every kind safcore audits.

In the spirit of diffusers' ``SchedulerCommonTest``: one suite, each implementation a fixture. Known answers
come from exact point-mass models (every reverse run ends at the one training image; ε̂ is the exact noise);
the trained-network kinds (safcore's ScoreModel, a diffusers UNet2DModel, a MONAI DiffusionModelUNet) check shapes,
nfe and identity.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from safcore.data.datasets import to_model_range
from safcore.generators.base import Generator, SDEGenerator, steps_for
from safcore.generators.diffusers_model import DiffusersModel
from safcore.generators.known_answer import (ClassPointMassDenoiser, MonaiPointMassDenoiser, PointMassDenoiser,
                                             PointMixtureScore)
from safcore.generators.loader import as_generator
from safcore.generators.score_model import ScoreModel, build_unet
from safcore.generators.sde import SubVPSDE, VPSDE

SIZE = 8


def _target() -> torch.Tensor:
    return torch.rand(1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def _exact_sde(sde) -> Generator:
    target = _target()
    return SDEGenerator(PointMixtureScore(sde, target.unsqueeze(0)), sde, channels=1, image_size=SIZE,
                        device=torch.device("cpu"))


def _exact_diffusers(kind: str, prediction_type: str = "epsilon") -> Generator:
    from diffusers import DDIMScheduler, DDPMScheduler

    scheduler = (DDPMScheduler if kind == "ddpm" else DDIMScheduler)(num_train_timesteps=1000,
                                                                     prediction_type=prediction_type)
    return DiffusersModel(PointMassDenoiser(_target(), scheduler), scheduler)


def _exact_monai(kind: str, prediction_type: str = "epsilon") -> Generator:
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    from safcore.generators.monai_model import MonaiModel

    scheduler = (DDPMScheduler if kind == "ddpm" else DDIMScheduler)(num_train_timesteps=1000,
                                                                     prediction_type=prediction_type)
    return MonaiModel(MonaiPointMassDenoiser(_target(), scheduler), scheduler, image_size=SIZE)


def _exact_latent(library: str) -> Generator:
    """A point mass in the latent space of a lossless linear autoencoder: reverse → decode is the training image."""
    from safcore.generators.known_answer import SpaceToDepthAutoencoder
    from safcore.generators.latent_model import LatentModel, TensorAutoencoder

    ae, scale = SpaceToDepthAutoencoder(), 0.5
    z = scale * ae.encode(to_model_range(_target()).unsqueeze(0))[0]  # (4, SIZE/2, SIZE/2) model space
    target = (z + 1.0) / 2.0  # the denoisers take their point in unit range
    if library == "diffusers":
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler(num_train_timesteps=1000)
        inner = DiffusersModel(PointMassDenoiser(target, scheduler), scheduler)
    else:
        from monai.networks.schedulers import DDPMScheduler

        from safcore.generators.monai_model import MonaiModel

        scheduler = DDPMScheduler(num_train_timesteps=1000)
        inner = MonaiModel(MonaiPointMassDenoiser(target, scheduler), scheduler, image_size=SIZE // 2)
    return LatentModel(TensorAutoencoder(ae), inner, scale_factor=scale)


def _exact_class_conditional() -> Generator:
    """A class-conditional exact denoiser of two labelled images, conditioned on the class of ``_target()`` alone."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    images = torch.stack([_target(), 1.0 - _target()])
    return DiffusersModel(ClassPointMassDenoiser(images, [0, 1], scheduler), scheduler).conditioned(0)


EXACT = {
    "subvp_point_mass": lambda: _exact_sde(SubVPSDE()),
    "ddpm_class_point_mass": _exact_class_conditional,
    "vp_point_mass": lambda: _exact_sde(VPSDE()),
    "ddpm_point_mass": lambda: _exact_diffusers("ddpm"),
    "ddim_point_mass_v": lambda: _exact_diffusers("ddim", "v_prediction"),
    "ddim_latent_point_mass": lambda: _exact_latent("diffusers"),
}
HAS_MONAI = importlib.util.find_spec("monai") is not None  # the test extra installs it (safcore[monai])
if HAS_MONAI:
    EXACT.update({"monai_ddpm_point_mass": lambda: _exact_monai("ddpm"),
                  "monai_ddim_point_mass_v": lambda: _exact_monai("ddim", "v_prediction"),
                  "monai_ddpm_point_mass_x0": lambda: _exact_monai("ddpm", "sample"),
                  "monai_ddpm_latent_point_mass": lambda: _exact_latent("monai")})


def _tiny_score_model() -> Generator:
    torch.manual_seed(0)
    return as_generator(ScoreModel(build_unet("tiny", channels=1)).eval())


def _tiny_diffusers() -> Generator:
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=SIZE, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4).eval()
    return DiffusersModel(unet, DDPMScheduler(num_train_timesteps=1000))


def _tiny_monai() -> Generator:
    from monai.networks.nets import DiffusionModelUNet
    from monai.networks.schedulers import DDPMScheduler

    from safcore.generators.monai_model import MonaiModel

    torch.manual_seed(0)
    unet = DiffusionModelUNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(8, 16),
                              attention_levels=(False, False), num_res_blocks=1, num_head_channels=8,
                              norm_num_groups=8).eval()
    return MonaiModel(unet, DDPMScheduler(num_train_timesteps=1000), image_size=SIZE)


NETWORKS = {"safcore_score_model": _tiny_score_model, "diffusers_unet": _tiny_diffusers,
            **({"monai_unet": _tiny_monai} if HAS_MONAI else {})}
ALL = {**EXACT, **NETWORKS}


@pytest.fixture(params=sorted(ALL))
def any_generator(request) -> Generator:
    return ALL[request.param]()


@pytest.fixture(params=sorted(EXACT))
def exact(request) -> Generator:
    return EXACT[request.param]()


def test_every_kind_is_a_generator(any_generator):
    assert isinstance(any_generator, Generator)
    assert any_generator.channels == 1
    assert any_generator.image_size in (SIZE, 28)
    assert any_generator.device is None or any_generator.device == torch.device("cpu")
    assert 0.0 < any_generator.t_min <= 0.01


def test_kernel_coefficients(any_generator):
    """``σ_t`` rises from ≈ 0 to ≈ 1 and ``a_t`` falls from ≈ 1; ``marginal_std`` is the kernel's σ."""
    ts = torch.tensor([any_generator.t_min, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    a, s = any_generator.coefficients(ts)
    assert a.shape == s.shape == (5,)
    assert float(a[0]) > 0.99 and float(s[0]) < 0.05
    assert bool((torch.diff(s) > 0).all()) and bool((torch.diff(a) < 0).all())
    assert float(s[-1]) > 0.95
    np.testing.assert_allclose(any_generator.marginal_std(ts.numpy()), s.numpy(), rtol=1e-6, atol=1e-9)


def test_diffuse_draws_from_the_kernel(any_generator):
    """``x_t = a_t x_0 + σ_t z``: the mean and std of many draws of one pixel at a known t."""
    n, t = 4000, 0.5
    x0 = torch.full((n, 1, SIZE, SIZE), 0.4)
    t_vec = torch.full((n,), t)
    x_t = any_generator.diffuse(x0, t_vec, 100, torch.Generator().manual_seed(1))
    a, s = (float(v[0]) for v in any_generator.coefficients(t_vec[:1].double()))
    assert x_t.shape == x0.shape
    assert abs(float(x_t.mean()) - a * 0.4) < 0.01
    assert abs(float(x_t.std()) - s) < 0.01


def test_exact_eps_is_the_noise(exact):
    """For data that is one image, ε̂(x_t, t) = (x_t − a_t x_0) / σ_t exactly."""
    x0 = exact.encode(to_model_range(_target()).unsqueeze(0)).expand(3, -1, -1, -1).double()  # its model space
    t = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a, s = (c.reshape(-1, 1, 1, 1) for c in exact.coefficients(t))
    x_t = a * x0 + s * z
    assert torch.allclose(exact.eps(x_t.to(exact.dtype or x_t.dtype), t).double(), z, atol=1e-3)


def test_exact_reverse_returns_the_training_image(exact):
    """Algorithm 1's known answer: from every t the reverse run of a one-image model ends at that image."""
    target = to_model_range(_target())
    t_vec = torch.tensor([0.1, 0.1, 0.6, 1.0])
    x0 = target.unsqueeze(0).expand(4, -1, -1, -1)
    gen = torch.Generator().manual_seed(3)
    z0 = exact.encode(x0)  # a latent model diffuses and reverses its latents; a pixel model's encode is the identity
    latents, nfe = exact.reverse(exact.diffuse(z0, t_vec, 20, gen), t_vec, 20, gen)
    images = exact.decode(latents)
    assert (exact.space == "pixel") == (z0.shape == x0.shape) and latents.shape == z0.shape
    assert images.shape == x0.shape and nfe.dtype == torch.int64 and nfe.shape == (4,)
    assert float((images - x0).abs().max()) < 2e-3
    # a run from t keeps the step size of a full run: fewer evaluations from lower t, the full count from t = 1
    assert int(nfe[0]) == int(nfe[1]) < int(nfe[2]) < int(nfe[3]) == 20


def test_exact_sample_is_the_training_image(exact):
    draws = exact.sample(3, steps=20, generator=torch.Generator().manual_seed(4), progress=False)
    assert draws.images.shape == (3, 1, SIZE, SIZE)
    assert int(draws.nfe) == 20
    assert float((draws.images - to_model_range(_target())).abs().max()) < 2e-3


def test_sde_reverse_takes_steps_for_each_start():
    gen = _exact_sde(SubVPSDE())
    t_vec = torch.tensor([0.05, 0.3, 0.75, 1.0])
    _, nfe = gen.reverse(torch.randn(4, 1, SIZE, SIZE), t_vec, 40)
    assert nfe.tolist() == [steps_for(t, 40, 1e-3) for t in t_vec.tolist()] == [2, 12, 30, 40]
    assert steps_for(0.3, 100, 0.0) == 30  # not 31 from 0.3 · 100 = 30.000000000000004


def test_network_sample_and_identity(request):
    for make in NETWORKS.values():
        model = make()
        draws = model.sample(2, steps=3, generator=torch.Generator().manual_seed(5), progress=False)
        assert draws.images.shape == (2, 1, model.image_size, model.image_size)
        assert torch.isfinite(draws.images).all()
        first = model.identity()
        assert first == model.identity() and len(first["weights_sha256"]) == 16
        changed = make()
        net = changed.score.unet if isinstance(changed, SDEGenerator) else changed.unet
        with torch.no_grad():
            next(net.parameters()).add_(1.0)
        assert changed.identity()["weights_sha256"] != first["weights_sha256"]


def test_as_generator_is_the_one_dispatch():
    score = PointMixtureScore(SubVPSDE(), _target().unsqueeze(0))
    gen = as_generator(score)
    assert isinstance(gen, SDEGenerator) and gen.sde is score.sde
    assert as_generator(gen) is gen
    diffusers = _exact_diffusers("ddpm")
    assert as_generator(diffusers) is diffusers
    if HAS_MONAI:
        monai = _exact_monai("ddim")
        assert as_generator(monai) is monai
    model = ScoreModel(build_unet("tiny", channels=1))
    vp = VPSDE()
    assert as_generator(model).sde is model.sde and as_generator(model, vp).sde is vp
    with pytest.raises(ValueError, match="sde=None is allowed only for a safcore.generators.diffusers_model"):
        as_generator(lambda x, t: x)
    with pytest.raises(ValueError, match="has no run-store identity"):
        gen.identity()
    assert math.isclose(gen.t_min, 1e-5)
