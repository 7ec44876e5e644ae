"""A diffusers model under audit through its own scheduler: sampling, Algorithm 1, loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

from safcore.data.fingerprint import apply_saf, circle_mask
from safcore.generators.known_answer import PointMassDenoiser
from safcore.probe import ProbeConfig, find_t_prime
from safcore.generators.diffusers_model import DiffusersModel, ModelLoadError
from safcore.generators.loader import load_model


def tiny_unet(channels: int = 1, size: int = 8) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=4)


def _images():
    g = torch.Generator().manual_seed(0)
    x_i = 0.2 + 0.6 * torch.rand(1, 12, 12, generator=g)
    mask = circle_mask(12, 2.5, (5.0, 6.0))
    x_p = apply_saf(x_i, mask, 0.5)
    other = 0.2 + 0.6 * torch.rand(1, 12, 12, generator=g)
    return x_p, x_i, other, mask


def _classifiers(x_p, mask):
    def c_p(x):  # the disc is grey 0.5 (within 0.05) everywhere inside the mask
        inside = x[:, :, mask.bool()]
        return (inside - 0.5).abs().amax(dim=(1, 2)) < 0.05

    def c_id(x):  # close to x_p outside the disc
        outside = ~mask.bool()
        return (x[:, :, outside] - x_p[:, outside]).abs().amax(dim=(1, 2)) < 0.05

    return c_p, c_id


SCHEDULERS = [
    pytest.param(DDPMScheduler, dict(beta_schedule="linear", prediction_type="epsilon"), id="ddpm-linear-epsilon"),
    pytest.param(DDPMScheduler, dict(beta_schedule="scaled_linear", prediction_type="sample"), id="ddpm-scaled-sample"),
    pytest.param(DDPMScheduler, dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"), id="ddpm-cosine-v"),
    pytest.param(DDIMScheduler, dict(beta_schedule="linear", prediction_type="epsilon"), id="ddim-linear-epsilon"),
    pytest.param(DDIMScheduler, dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"), id="ddim-cosine-v"),
]


@pytest.mark.parametrize("cls, kwargs", SCHEDULERS)
def test_a_model_that_always_lands_on_x_p_gives_q_1_at_every_t(cls, kwargs):
    x_p, x_i, other, mask = _images()
    c_p, c_id = _classifiers(x_p, mask)
    assert bool(c_p(x_p[None])) and bool(c_id(x_p[None])) and not bool(c_p(x_i[None]))
    scheduler = cls(num_train_timesteps=1000, **kwargs)
    grid = (1.0, 0.9, 0.5, 0.2, 0.05, 0.01)
    config = ProbeConfig(M=4, grid=grid, steps_full=50, seed=0)
    model = DiffusersModel(PointMassDenoiser(x_p, scheduler), scheduler)
    result = find_t_prime(model, None, x_p, c_p, c_id, config, progress=False)
    assert result.t_prime == 1.0 and list(result.q) == [1.0] * len(grid)
    # the scheduler steps a trajectory from t takes: the tail of the 50-step schedule below k(t) = ceil(1000 t) − 1
    assert result.nfe == 4 * sum(int((model._fresh(50).timesteps <= model.timestep(t)).sum()) for t in grid)
    # a model of another image never hands x_p back
    never = DiffusersModel(PointMassDenoiser(other, scheduler), scheduler)
    assert find_t_prime(never, None, x_p, c_p, c_id, config, progress=False).t_prime is None
    # nor does one of x_p's clean original (c_p sees no SAF), under the top-down search too
    clean = DiffusersModel(PointMassDenoiser(x_i, scheduler), scheduler)
    top = find_t_prime(clean, None, x_p, c_p, c_id, ProbeConfig(M=4, grid=grid, steps_full=50, search="topdown"),
                       progress=False)
    assert top.t_prime is None and top.k_p.sum() == 0 and top.k_id.sum() == top.n.sum()


def test_sampling_is_the_ddpm_pipeline_step_for_step():
    unet = tiny_unet()
    scheduler = DDPMScheduler(num_train_timesteps=100)
    ours = DiffusersModel(unet, scheduler).sample(3, steps=20, generator=torch.Generator().manual_seed(5), progress=False)
    theirs = DDPMPipeline(unet=unet, scheduler=scheduler)(batch_size=3, generator=torch.Generator().manual_seed(5),
                                                          num_inference_steps=20, output_type="pt").images
    ours_unit = (ours.images / 2 + 0.5).clamp(0, 1)
    theirs = torch.as_tensor(np.asarray(theirs))
    if theirs.shape[-1] == 1:  # numpy-style (N, H, W, C)
        theirs = theirs.permute(0, 3, 1, 2)
    assert ours.nfe == 20 and torch.allclose(ours_unit, theirs, atol=1e-6)


def test_timesteps_follow_the_scheduler():
    model = DiffusersModel(tiny_unet(), DDPMScheduler(num_train_timesteps=1000))
    assert model.timestep(1.0) == 999 and model.timestep(0.5) == 499 and model.timestep(0.001) == 0
    tail = model.timesteps_from(0.5, 50)  # leading spacing: 980, 960, …, 0
    assert tail[0].item() == 480 and tail[-1].item() == 0 and tail.numel() == 25
    std = model.marginal_std([0.1, 0.5, 1.0])
    alphas = model.scheduler.alphas_cumprod
    assert np.allclose(std, [float((1 - alphas[k]).sqrt()) for k in (99, 499, 999)]) and np.all(np.diff(std) > 0)
    with pytest.raises(ValueError, match=r"steps = 2000 inference steps; allowed: an integer in \[1, 1000\]"):
        model.timesteps_from(0.5, 2000)
    with pytest.raises(ValueError, match=r"t = 0.0; allowed: \(0, 1\]"):
        model.timestep(0.0)
    ddim = model.with_scheduler("ddim")
    assert type(ddim.scheduler).__name__ == "DDIMScheduler" and ddim.unet is model.unet


def test_probe_needs_an_sde_for_a_score_model():
    x_p, _, _, mask = _images()
    c_p, c_id = _classifiers(x_p, mask)
    with pytest.raises(ValueError, match="sde=None is allowed only for a safcore.generators.diffusers_model.DiffusersModel"):
        find_t_prime(lambda x, t: -x, None, x_p, c_p, c_id, ProbeConfig(M=1, grid=(0.5,)), progress=False)


# ---------------------------------------------------------------------------------------------- loading


def test_load_model_reads_a_pipeline_a_bare_unet_and_a_safcore_model(tmp_path):
    from safcore.generators.score_model import ScoreModel

    unet = tiny_unet()
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=100, prediction_type="v_prediction")).save_pretrained(
        tmp_path / "pipe")
    model = load_model(tmp_path / "pipe")
    assert isinstance(model, DiffusersModel) and model.prediction_type == "v_prediction"
    assert model.num_train_timesteps == 100 and model.channels == 1 and model.image_size == 8
    assert model.identity() == DiffusersModel(unet, model.scheduler).identity()
    unet.save_pretrained(tmp_path / "bare")
    DDIMScheduler(num_train_timesteps=100).save_pretrained(tmp_path / "bare")
    bare = load_model(tmp_path / "bare")
    assert type(bare.scheduler).__name__ == "DDIMScheduler"
    assert torch.equal(bare.unet.conv_in.weight, unet.conv_in.weight)
    ScoreModel(unet).save_pretrained(tmp_path / "own")
    assert isinstance(load_model(tmp_path / "own"), ScoreModel)


def test_load_model_refuses_what_it_cannot_audit_safely(tmp_path):
    unet = tiny_unet()
    unet.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    DDPMScheduler().save_pretrained(tmp_path / "pickled")
    with pytest.raises(ModelLoadError, match=r"only pickled weights \(diffusion_pytorch_model.bin\)"):
        load_model(tmp_path / "pickled")
    unet.save_pretrained(tmp_path / "no_scheduler")
    with pytest.raises(ModelLoadError, match="no scheduler_config.json"):
        load_model(tmp_path / "no_scheduler")
    unet.save_pretrained(tmp_path / "euler")
    (tmp_path / "euler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "EulerDiscreteScheduler"}))
    with pytest.raises(ModelLoadError, match="allowed: DDPMScheduler, DDIMScheduler"):
        load_model(tmp_path / "euler")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="neither model_index.json"):
        load_model(tmp_path / "empty")
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "missing")
    index = {"_class_name": "DDPMPipeline", "unet": ["my_module", "MyUNet"], "scheduler": ["diffusers", "DDPMScheduler"]}
    (tmp_path / "custom").mkdir()
    (tmp_path / "custom" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=r"unet = \['my_module', 'MyUNet'\]"):
        load_model(tmp_path / "custom")


def test_a_hub_id_that_cannot_be_reached_is_one_line(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'\nsecond line")

    monkeypatch.setattr(UNet2DModel, "from_pretrained", refuse)
    with pytest.raises(ModelLoadError) as info:
        load_model("someone/ddpm-breast")
    assert "\n" not in str(info.value) and "someone/ddpm-breast" in str(info.value)
