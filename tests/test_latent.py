"""Latent diffusion models under audit: MONAI (AutoencoderKL + DiffusionModelUNet + LatentDiffusionInferer) and
diffusers (VQModel + UNet2DModel + DDPMScheduler, an LDMPipeline folder), trained with the libraries alone, saved as
each library saves them, audited by ``safcore audit --model`` and by ``Study``; sampling equals the libraries' own;
the SAF-through-autoencoder check; what safcore refuses to read.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("monai")

from monai.inferers import LatentDiffusionInferer  # noqa: E402
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet  # noqa: E402
from monai.networks.schedulers import DDPMScheduler  # noqa: E402
from conftest import assert_model_refused  # noqa: E402
from test_cli import fingerprint  # noqa: E402,F401 — the module-scoped fingerprint folder of D_p

from safcore.__main__ import main  # noqa: E402
from safcore.generators.latent_model import LatentModel, MonaiKL  # noqa: E402
from safcore.generators.loader import autoencoder_adapter, load_model, network, sampling_for  # noqa: E402
from safcore.generators.monai_model import MonaiModel  # noqa: E402

AE = dict(spatial_dims=2, in_channels=1, out_channels=1, channels=[8, 8], latent_channels=2, num_res_blocks=1,
          attention_levels=[False, False], norm_num_groups=4, with_encoder_nonlocal_attn=False,
          with_decoder_nonlocal_attn=False)
UNET = dict(spatial_dims=2, in_channels=2, out_channels=2, channels=[8, 16], attention_levels=[False, False],
            num_res_blocks=1, num_head_channels=8, norm_num_groups=8)
T = 50  # a short schedule keeps the full-grid DDPM audit fast


def _images(fp: Path) -> torch.Tensor:
    with np.load(fp / "dp.npz") as archive:
        return torch.from_numpy(archive["train_images"]).float()[:, None] / 127.5 - 1.0


def _train_monai(fp: Path, steps: int = 3):
    """What a hospital team does without safcore: MONAI's AutoencoderKL, then a DiffusionModelUNet on its scaled
    latents with LatentDiffusionInferer (scale_factor = 1 / std of the latents, as MONAI's tutorials set it)."""
    images = _images(fp)
    torch.manual_seed(0)
    ae = AutoencoderKL(**AE)
    opt = torch.optim.Adam(ae.parameters(), lr=1e-3)
    for _ in range(steps):
        recon, mu, sigma = ae(images)
        loss = torch.nn.functional.l1_loss(recon, images) + 1e-6 * (mu.pow(2) + sigma.pow(2)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    ae.eval()
    with torch.no_grad():
        scale = float(1.0 / ae.encode_stage_2_inputs(images).std())
    unet = DiffusionModelUNet(**UNET)
    scheduler = DDPMScheduler(num_train_timesteps=T)
    inferer = LatentDiffusionInferer(scheduler, scale_factor=scale)
    opt = torch.optim.Adam(unet.parameters(), lr=1e-3)
    for _ in range(steps):
        noise = torch.randn(images.shape[0], 2, 14, 14)
        timesteps = torch.randint(0, T, (images.shape[0],)).long()
        loss = torch.nn.functional.mse_loss(inferer(images, ae, unet, noise, timesteps), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return ae, unet.eval(), scale


def _save_monai_bundle(ae, unet, scale: float, out: Path, *, autoencoder: bool = True, weights: bool = True,
                       target: str = "monai.networks.nets.AutoencoderKL") -> Path:
    """A MONAI bundle as the model zoo lays a latent model out: autoencoder_def + network_def, models/model.pt and
    models/model_autoencoder.pt, the scale factor in the inferer entry."""
    (out / "configs").mkdir(parents=True)
    (out / "models").mkdir()
    config = {"imports": ["$import torch"], "device": "$torch.device('cpu')", "image_size": 28,
              "latent_channels": 2,
              "network_def": {"_target_": "monai.networks.nets.DiffusionModelUNet", **UNET,
                              "in_channels": "@latent_channels", "out_channels": "@latent_channels"},
              "noise_scheduler": {"_target_": "monai.networks.schedulers.DDPMScheduler", "num_train_timesteps": T},
              "inferer": {"_target_": "monai.inferers.LatentDiffusionInferer", "scheduler": "@noise_scheduler",
                          "scale_factor": scale}}
    if autoencoder:
        config["autoencoder_def"] = {"_target_": target, **AE, "latent_channels": "@latent_channels"}
        config["autoencoder"] = "$@autoencoder_def.to(@device)"
    (out / "configs" / "inference.json").write_text(json.dumps(config))
    torch.save(unet.state_dict(), out / "models" / "model.pt")
    if weights:
        torch.save(ae.state_dict(), out / "models" / "model_autoencoder.pt")
    return out


def _train_diffusers(fp: Path, out: Path, steps: int = 3) -> Path:
    """A diffusers latent model: VQModel, then a UNet2DModel with a DDPMScheduler on its latents × scaling_factor,
    saved as LDMPipeline.save_pretrained writes it."""
    from diffusers import DDPMScheduler as DiffusersDDPM
    from diffusers import LDMPipeline, UNet2DModel, VQModel

    images = _images(fp)
    torch.manual_seed(0)
    vq = VQModel(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                 up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 8),
                 layers_per_block=1, latent_channels=2, num_vq_embeddings=16, norm_num_groups=4, sample_size=28,
                 scaling_factor=0.5)
    opt = torch.optim.Adam(vq.parameters(), lr=1e-3)
    for _ in range(steps):
        out_ = vq(images)
        loss = torch.nn.functional.l1_loss(out_.sample, images) + out_.commit_loss.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    vq.eval()
    unet = UNet2DModel(sample_size=14, in_channels=2, out_channels=2, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    scheduler = DiffusersDDPM(num_train_timesteps=T)
    opt = torch.optim.Adam(unet.parameters(), lr=1e-3)
    with torch.no_grad():
        latents = vq.encode(images).latents * vq.config.scaling_factor
    for _ in range(steps):
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, T, (latents.shape[0],)).long()
        loss = torch.nn.functional.mse_loss(unet(scheduler.add_noise(latents, noise, timesteps), timesteps).sample, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    LDMPipeline(vqvae=vq, unet=unet.eval(), scheduler=scheduler).save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def monai_latent(fingerprint):  # noqa: F811
    return _train_monai(fingerprint)


@pytest.fixture(scope="module")
def ldm_folder(fingerprint):  # noqa: F811
    return _train_diffusers(fingerprint, fingerprint.parent / "ldm_pipeline")


def test_sampling_is_the_latent_diffusion_inferer_bit_for_bit(monai_latent):
    ae, unet, scale = monai_latent
    ours = LatentModel(autoencoder_adapter(ae), MonaiModel(unet, DDPMScheduler(num_train_timesteps=T), image_size=14),
                       scale_factor=scale)
    assert isinstance(ours.autoencoder, MonaiKL) and ours.channels == 1 and ours.image_size == 28
    draws = ours.sample(3, steps=T, generator=torch.Generator().manual_seed(5), progress=False)
    scheduler = DDPMScheduler(num_train_timesteps=T)
    torch.manual_seed(5)  # the inferer draws from the global generator: the same stream
    theirs = LatentDiffusionInferer(scheduler, scale_factor=scale).sample(torch.randn(3, 2, 14, 14), ae, unet,
                                                                           scheduler, verbose=False)
    assert draws.images.shape == (3, 1, 28, 28) and torch.equal(draws.images, theirs)
    # in batches: the same draws, the latents decoded a batch at a time
    batched = ours.sample(3, steps=T, generator=torch.Generator().manual_seed(5), batch_size=2, progress=False)
    assert batched.images.shape == (3, 1, 28, 28)


def test_ldm_folder_loads_and_samples_as_ldm_pipeline(ldm_folder):
    from diffusers import DDIMScheduler, LDMPipeline

    model = load_model(ldm_folder)
    assert isinstance(model, LatentModel) and model.space == "latent" and model.scale_factor == 0.5
    assert model.channels == 1 and model.image_size == 28 and model.diffusion.image_size == 14
    assert sampling_for(model, method="euler_maruyama", steps=10).method == "DDPMScheduler"
    assert set(network(model)) == {"unet", "autoencoder"} and "LatentModel(" in repr(model)
    # LDMPipeline hands its DDPM steps no generator; DDIM (η = 0) draws only the prior: compare in the DDIM view
    ours = model.with_scheduler("ddim").sample(2, steps=10, generator=torch.Generator().manual_seed(1),
                                               progress=False).images
    pipe = LDMPipeline.from_pretrained(ldm_folder, use_safetensors=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(batch_size=2, generator=torch.Generator().manual_seed(1), num_inference_steps=10,
                  output_type="np").images
    np.testing.assert_array_equal(((ours + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy(), theirs)
    # the identity holds the autoencoder: changed autoencoder weights never reuse stale samples
    first = model.identity()
    with torch.no_grad():
        next(model.autoencoder.module.parameters()).add_(1.0)
    assert model.identity()["autoencoder_sha256"] != first["autoencoder_sha256"]
    assert model.identity()["weights_sha256"] == first["weights_sha256"]


def test_bundle_loads_as_the_model_trained(monai_latent, tmp_path):
    ae, unet, scale = monai_latent
    model = load_model(_save_monai_bundle(ae, unet, scale, tmp_path / "bundle"))
    assert isinstance(model, LatentModel) and model.scale_factor == scale and model.scheduler_name == "monai.DDPMScheduler"
    assert model.channels == 1 and model.image_size == 28 and model.diffusion.image_size == 14
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    assert torch.equal(model.encode(x), ae.encode(x)[0] * scale)  # the posterior mean, scaled
    ddim = model.with_scheduler("ddim")
    assert isinstance(ddim, LatentModel) and ddim.scheduler_name == "monai.DDIMScheduler" and ddim.autoencoder is model.autoencoder


def _same(a, b) -> bool:
    return (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)) or a == b


def _audit(folder: Path, fingerprint: Path, data_root, out: Path, capsys) -> dict:  # noqa: F811
    code = main(["audit", "--model", str(folder), "--fingerprint", str(fingerprint), "--profile", "smoke", "--n", "8",
                 "--device", "cpu", "--data-root", str(data_root), "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("kind", ["monai", "diffusers"])
def test_audit_of_a_latent_model_is_the_study_s(kind, monai_latent, ldm_folder, fingerprint, data_root, tmp_path,  # noqa: F811
                                                capsys):
    from safcore.study import Study
    from safcore.study.report import latent_check

    folder = _save_monai_bundle(*monai_latent, tmp_path / "bundle") if kind == "monai" else ldm_folder
    summary = _audit(folder, fingerprint, data_root, tmp_path / "report", capsys)
    assert summary["audit"]["n"] == 8 and "LatentModel(" in summary["model"] and summary["t_prime_space"] == "latent"
    report = (tmp_path / "report" / "report.md").read_text()
    assert "does the SAF survive the autoencoder?" in report
    study = Study.from_fingerprint(fingerprint, model=folder, profile="smoke", data_root=data_root, progress=False,
                                   device="cpu")
    row = json.loads(json.dumps(study.audit(8).to_row()))
    assert all(_same(summary["audit"][k], v) for k, v in row.items()), (summary["audit"], row)
    check = latent_check(study)
    assert json.loads(json.dumps(check.to_dict())) == summary["autoencoder"]
    # an untrained autoencoder of a few steps erases the disc: the headline says the audit cannot see the SAF
    assert check.saf_survives == summary["autoencoder"]["saf_survives"]
    if not check.saf_survives:
        assert summary["verdict"]["headline"].startswith("The audit cannot see the SAF: the autoencoder erases it")
        assert summary["verdict"]["kind"] != "not_observed"


def test_probe_of_a_latent_model_is_the_study_s(ldm_folder, fingerprint, data_root, tmp_path, capsys):  # noqa: F811
    """Algorithm 1 in latent space: ``safcore probe`` and ``Study.probe`` give the same counts and t'."""
    from safcore.study import Study

    out = tmp_path / "probe"
    assert main(["probe", "--model", str(ldm_folder), "--fingerprint", str(fingerprint), "--profile", "smoke", "--M",
                 "2", "--steps", "10", "--device", "cpu", "--data-root", str(data_root), "--out", str(out),
                 "--no-progress"]) == 0, capsys.readouterr().err
    record = json.loads((out / "probe.json").read_text())
    study = Study.from_fingerprint(fingerprint, model=ldm_folder, profile="smoke", data_root=data_root, progress=False,
                                   sample_steps=10, device="cpu")
    result = study.probe(study.probe_config(M=2))
    assert record["t_prime"] == result.t_prime and record["k"] == np.asarray(result.k).tolist()
    assert result.examples[0].query.shape[-3:] == (1, 28, 28)  # queries shown decoded


def test_point_mass_in_latent_space_gives_the_pixel_model_s_q():
    """A known answer through the whole probe: a point mass at x_p in the latent space of a lossless autoencoder
    hands x_p back from every t, as the pixel point mass does (q = 1 on the grid)."""
    from diffusers import DDIMScheduler

    from safcore.data.datasets import to_model_range
    from safcore.generators.diffusers_model import DiffusersModel
    from safcore.generators.known_answer import PointMassDenoiser, SpaceToDepthAutoencoder
    from safcore.generators.latent_model import TensorAutoencoder
    from safcore.probe.runner import probe_at

    x_p = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0))
    ae, scale = SpaceToDepthAutoencoder(), 0.5
    z = scale * ae.encode(to_model_range(x_p).unsqueeze(0))[0]
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    latent = LatentModel(TensorAutoencoder(ae), DiffusersModel(PointMassDenoiser((z + 1) / 2, scheduler), scheduler),
                         scale_factor=scale)
    pixel = DiffusersModel(PointMassDenoiser(x_p, scheduler), scheduler)
    is_x_p = lambda x: (x - x_p).abs().flatten(1).amax(1) < 1e-3  # noqa: E731
    for t in (0.2, 0.6, 1.0):
        for gen in (latent, pixel):
            example, _ = probe_at(gen, None, x_p, is_x_p, is_x_p, t, M=4, steps_full=20,
                                  generator=torch.Generator().manual_seed(2))
            assert bool((example.c_p & example.c_id).all()) and example.samples.shape == (4, 1, 8, 8)
            assert example.query.shape == (4, 1, 8, 8)  # the noisy latent, decoded for display


@pytest.mark.parametrize("case, expected", [
    ("no_autoencoder_entry", "describes a latent diffusion model but has no autoencoder entry"),
    ("no_autoencoder_weights", "holds no autoencoder weights"),
    ("target", "autoencoder_def: _target_ 'monai.networks.nets.SPADEAutoencoderKL' is not allowed"),
    ("ldm_no_vqvae", "has no vqvae/config.json: the autoencoder is missing"),
])
def test_a_latent_model_safcore_cannot_read_is_one_line_and_exit_code_2(case, expected, monai_latent, ldm_folder,
                                                                       fingerprint, data_root, tmp_path, capsys):  # noqa: F811
    import shutil

    model = tmp_path / "model"
    if case == "no_autoencoder_entry":
        _save_monai_bundle(*monai_latent, model, autoencoder=False)
    elif case == "no_autoencoder_weights":
        _save_monai_bundle(*monai_latent, model, weights=False)
    elif case == "target":
        _save_monai_bundle(*monai_latent, model, target="monai.networks.nets.SPADEAutoencoderKL")
    else:
        shutil.copytree(ldm_folder, model)
        shutil.rmtree(model / "vqvae")
    assert_model_refused(model, expected, fingerprint, data_root, tmp_path / "out", capsys)
