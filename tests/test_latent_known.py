"""Latent models under audit with known answers (issue 24 items 2, 3): an autoencoder that provably erases the SAF
leads the report's headline with "the audit cannot see the SAF", a lossless one does not; a plain MONAI latent
folder audits by CLI = Study; a MONAI class-conditional bundle loads; a latent AND class-conditional model audits
per class and is probed conditioned on ``x_p``'s label.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("monai")

from test_class_conditional import MONAI_NETWORK  # noqa: E402
from test_class_conditional import _train_monai as _train_monai_class  # noqa: E402
from test_cli import fingerprint  # noqa: E402,F401 — the module-scoped fingerprint folder of D_p (breastmnist, N_D = 8)
from test_latent import AE, UNET, T, _images, _same, monai_latent  # noqa: E402,F401

from safcore.__main__ import main  # noqa: E402
from safcore.audit.classes import class_sample_counts  # noqa: E402
from safcore.data.datasets import from_model_range, to_model_range  # noqa: E402
from safcore.data.fingerprint_io import read_fingerprint  # noqa: E402
from safcore.generators.diffusers_model import DiffusersModel  # noqa: E402
from safcore.generators.known_answer import (ClassPointMassDenoiser, DiscRestoringAutoencoder,  # noqa: E402
                                             PointMassDenoiser, SpaceToDepthAutoencoder)
from safcore.generators.latent_model import LatentModel, TensorAutoencoder  # noqa: E402
from safcore.generators.loader import load_model  # noqa: E402
from safcore.probe import ProbeConfig, find_t_prime  # noqa: E402
from safcore.runtime.runs import RunStore  # noqa: E402
from safcore.study import Study, conditional  # noqa: E402
from safcore.study.report import run_audit  # noqa: E402

ARGS = ["--profile", "smoke", "--device", "cpu", "--no-progress"]
SCALE = 0.5  # with the autoencoders' gain 2: z = x in model range, rearranged


@pytest.fixture(scope="module")
def base(fingerprint, data_root, tmp_path_factory):  # noqa: F811
    """The fingerprint folder's study (no model): x_p, its clean x_i and the disc, in a store the tests share."""
    return Study.from_fingerprint(fingerprint, profile="smoke", data_root=data_root, progress=False, device="cpu",
                                  store=RunStore(tmp_path_factory.mktemp("runs")))


def _exact_adversary(study: Study) -> None:
    """Give ``study`` an exact adversary whose answers are certain: ``c_p`` fires on an image holding a 4×4 block of
    the SAF's grey (±1/255; the disc of radius ≥ 2.5 px holds one wherever it lies, a real image almost never does),
    ``c_id`` on an image equal to ``x_p`` outside its disc (±1/255). The smoke profile's trained ``c_p`` is no such
    adversary on this folder: it fires on the clean ``x_i`` as on ``x_p``."""
    p, grey = study.private, study.private.grey
    outside = ~p.mask.bool()

    def c_p(images: torch.Tensor) -> torch.Tensor:
        flat = ((images - grey).abs() <= 1 / 255).float().amin(1, keepdim=True)  # (B, 1, H, W): grey in every channel
        return torch.nn.functional.avg_pool2d(flat, 4, stride=1).flatten(1).amax(1) >= 1.0

    def c_id(images: torch.Tensor) -> torch.Tensor:
        return (images - p.x_p[None].to(images))[..., outside].abs().flatten(1).amax(1) <= 1 / 255

    study.c_p, study.c_id = c_p, c_id  # the study's cached classifiers, replaced before any stage uses them


def _ddim():
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000)


def _latent_point_mass(ae: torch.nn.Module, x_p: torch.Tensor) -> LatentModel:
    """The exact point mass at ``scale · encode(x_p)`` in the latent space of ``ae``: every sample decodes to
    ``decode(encode(x_p))``."""
    z = SCALE * ae.encode(to_model_range(x_p).unsqueeze(0))[0]
    scheduler = _ddim()
    return LatentModel(TensorAutoencoder(ae), DiffusersModel(PointMassDenoiser((z + 1) / 2, scheduler), scheduler),
                       scale_factor=SCALE, source="exact")


@pytest.mark.parametrize("erases", [True, False])
def test_an_autoencoder_that_erases_the_saf_leads_the_headline(erases, base, fingerprint, data_root, tmp_path):  # noqa: F811
    p = base.private
    inside = p.mask.bool().expand_as(p.x_p)
    assert torch.equal(p.x_p[~inside], p.x_i[~inside]) and float((p.x_p - p.x_i).abs()[inside].mean()) > 0
    ae = DiscRestoringAutoencoder(p.x_i, p.mask) if erases else SpaceToDepthAutoencoder()
    study = Study.from_fingerprint(fingerprint, model=_latent_point_mass(ae, p.x_p), profile="smoke",
                                   data_root=data_root, progress=False, device="cpu", store=base.store, sample_steps=10)
    _exact_adversary(study)
    # the adversary's answers this case rests on: c_p fires on x_p, not on its clean original x_i; c_id on both
    assert study.c_p(torch.stack([p.x_p, p.x_i])).tolist() == [True, False]
    assert study.c_id(torch.stack([p.x_p, p.x_i])).tolist() == [True, True]
    assert study.classifier_accuracies() == {"saf_accuracy": 1.0, "id_accuracy": 1.0}
    report = run_audit(study, tmp_path / "report", n=4, probe=False, spread_runs=0, progress=False)
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    check = report.autoencoder
    samples = study.samples(4)
    headline = summary["verdict"]["headline"]
    if erases:  # decode(encode(x_p)) = x_i exactly: no sample can carry the SAF
        assert (samples - p.x_i[None]).abs().max() < 1e-5
        assert not check.c_p and not check.saf_survives and check.saf_kept == pytest.approx(0.0, abs=1e-5)
        assert check.disc_mae == pytest.approx(float((p.x_p - p.x_i).abs()[inside].mean()), abs=1e-5)
        assert headline.startswith("The audit cannot see the SAF: the autoencoder erases it (decode(encode(x_p)): c_p "
                                   "does NOT fire"), headline
        assert summary["verdict"]["kind"] != "not_observed" and summary["audit"]["|q|"] == 0
        assert "**no: the audit cannot see the SAF, the autoencoder erases it**" in (tmp_path / "report" /
                                                                                     "report.md").read_text()
    else:  # lossless: decode(encode(x_p)) = x_p, every sample is x_p with its SAF
        assert (samples - p.x_p[None]).abs().max() < 1e-5
        assert check.c_p and check.saf_survives and check.saf_kept == pytest.approx(1.0, abs=1e-5) and check.mae < 1e-5
        assert "cannot see the SAF" not in headline and summary["verdict"]["kind"] == "reproduces"
        assert summary["x_p_handed_back"] == 4
    assert summary["autoencoder"] == json.loads(json.dumps(check.to_dict()))


def _save_plain_latent(ae, unet, scale: float, out, network: dict) -> None:
    """A plain MONAI latent folder as generators/monai_bundle.py documents it: config.json (network, scheduler,
    image_size, autoencoder, scale_factor), model.safetensors, autoencoder.safetensors."""
    from safetensors.torch import save_file

    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({
        "network": network, "scheduler": {"_target_": "DDPMScheduler", "num_train_timesteps": T}, "image_size": 28,
        "autoencoder": {"_target_": "AutoencoderKL", **AE}, "scale_factor": scale}))
    save_file(unet.state_dict(), out / "model.safetensors")
    save_file(ae.state_dict(), out / "autoencoder.safetensors")


def test_plain_monai_latent_folder_audits_by_cli_as_by_study(monai_latent, fingerprint, data_root, tmp_path,  # noqa: F811
                                                             capsys):
    ae, unet, scale = monai_latent
    folder = tmp_path / "plain"
    _save_plain_latent(ae, unet, scale, folder, UNET)
    model = load_model(folder)
    assert isinstance(model, LatentModel) and model.scale_factor == scale and model.image_size == 28
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    assert torch.equal(model.encode(x), ae.encode(x)[0] * scale)
    out = tmp_path / "report"
    assert main(["audit", "--model", str(folder), "--fingerprint", str(fingerprint), "--n", "6", "--data-root",
                 str(data_root), "--out", str(out), *ARGS]) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["t_prime_space"] == "latent" and "LatentModel(" in summary["model"]
    study = Study.from_fingerprint(fingerprint, model=folder, profile="smoke", data_root=data_root, progress=False,
                                   device="cpu")
    row = json.loads(json.dumps(study.audit(6).to_row()))
    assert all(_same(summary["audit"][k], v) for k, v in row.items()), (summary["audit"], row)


def test_a_monai_class_conditional_bundle_loads_as_its_plain_folder(fingerprint, tmp_path):  # noqa: F811
    plain = _train_monai_class(fingerprint, tmp_path / "plain", steps=2)
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "configs" / "inference.json").write_text(json.dumps({
        "imports": ["$import torch"], "image_size": 28, "num_classes": 2,
        "network_def": {"_target_": "monai.networks.nets.DiffusionModelUNet",
                        **{**MONAI_NETWORK, "num_class_embeds": "@num_classes"}},
        "noise_scheduler": {"_target_": "monai.networks.schedulers.DDIMScheduler", "num_train_timesteps": 1000}}))
    from safetensors.torch import load_file

    torch.save(load_file(plain / "model.safetensors"), bundle / "models" / "model.pt")
    ours, theirs = load_model(bundle), load_model(plain)
    assert ours.num_classes == theirs.num_classes == 2 and ours.scheduler_name == "monai.DDIMScheduler"
    for label in (0, 1):
        a, b = (m.conditioned(label).sample(2, steps=5, generator=torch.Generator().manual_seed(3),
                                            progress=False).images for m in (ours, theirs))
        assert torch.equal(a, b)
    zero, one = (ours.conditioned(c).sample(1, steps=5, generator=torch.Generator().manual_seed(3),
                                            progress=False).images for c in (0, 1))
    assert not torch.equal(zero, one)  # the label reaches the network


def _train_latent_class(fp, ae, scale: float, steps: int = 2):
    """MONAI alone: a class-conditional DiffusionModelUNet on the autoencoder's scaled latents, called with
    class_labels (LatentDiffusionInferer has no class-label argument, so the latents are made as it makes them)."""
    from monai.networks.nets import DiffusionModelUNet
    from monai.networks.schedulers import DDPMScheduler

    images = _images(fp)
    with np.load(fp / "dp.npz") as archive:
        labels = torch.from_numpy(archive["train_labels"][:, 0].astype(np.int64))
    torch.manual_seed(0)
    network = {**UNET, "num_class_embeds": 2}
    unet = DiffusionModelUNet(**network)
    scheduler = DDPMScheduler(num_train_timesteps=T)
    opt = torch.optim.Adam(unet.parameters(), lr=1e-3)
    with torch.no_grad():
        latents = ae.encode_stage_2_inputs(images) * scale
    for _ in range(steps):
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, T, (latents.shape[0],)).long()
        noisy = scheduler.add_noise(original_samples=latents, noise=noise, timesteps=timesteps)
        loss = torch.nn.functional.mse_loss(unet(x=noisy, timesteps=timesteps, class_labels=labels), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return unet.eval(), network


def test_latent_class_conditional_model_audits_per_class_and_probes_x_p_s_label(monai_latent, fingerprint,  # noqa: F811
                                                                                data_root, tmp_path, capsys):
    ae, _, scale = monai_latent
    unet, network = _train_latent_class(fingerprint, ae, scale)
    folder = tmp_path / "latent_class"
    _save_plain_latent(ae, unet, scale, folder, network)
    model = load_model(folder)
    assert isinstance(model, LatentModel) and model.num_classes == 2 and model.label is None
    one = model.conditioned(1)
    assert isinstance(one, LatentModel) and one.label == one.diffusion.label == 1 and one.autoencoder is model.autoencoder
    assert one.identity() == {**model.identity(), "class_label": 1} and model.conditioned(None) is model
    with pytest.raises(ValueError, match="no class is fixed"):
        model.sample(1, steps=T, progress=False)
    out = tmp_path / "report"
    assert main(["audit", "--model", str(folder), "--fingerprint", str(fingerprint), "--n", "8", "--data-root",
                 str(data_root), "--out", str(out), *ARGS]) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    labels = read_fingerprint(fingerprint).labels
    classes, sizes, counts = class_sample_counts(labels, 8)
    assert summary["classes"]["per_class"] == {str(c): {"N_c": N, "n_c": k} for c, N, k in zip(classes, sizes, counts)}
    assert summary["t_prime_space"] == "latent" and summary["classes"]["label"] == 1
    study = Study.from_fingerprint(fingerprint, model=folder, profile="smoke", data_root=data_root, progress=False,
                                   device="cpu")
    row = json.loads(json.dumps(study.audit(8).to_row()))
    assert all(_same(summary["audit"][k], v) for k, v in row.items()), (summary["audit"], row)
    key, load = conditional.probe_key(study, {"model": "m"}, None)
    assert key["class_label"] == 1 and isinstance(load(), LatentModel) and load().label == 1
    probed = study.probe(study.probe_config(M=2))  # Algorithm 1 in latent space, conditioned on class 1
    assert len(probed.k) == len(probed.ts) and max(probed.n) == 2


def test_exact_latent_class_point_mass_hands_back_x_p_only_within_its_class(fingerprint):  # noqa: F811
    """The known answer through the latent and the class paths together: the class point mass of D_p's latents under
    a lossless autoencoder samples only training images of the class it is conditioned on, and Algorithm 1
    conditioned on x_p's label hands x_p back (q = 1 at the lowest t), conditioned on the other label never."""
    fp = read_fingerprint(fingerprint)
    ae, scheduler = SpaceToDepthAutoencoder(), _ddim()
    z = SCALE * ae.encode(to_model_range(fp.images))
    model = LatentModel(TensorAutoencoder(ae), DiffusersModel(ClassPointMassDenoiser((z + 1) / 2, fp.labels, scheduler),
                                                              scheduler), scale_factor=SCALE)
    labels = fp.labels[:, 0]
    for c in (0, 1):
        drawn = from_model_range(model.conditioned(c).sample(4, steps=10, generator=torch.Generator().manual_seed(c),
                                                             progress=False).images)
        distance = (drawn[:, None] - fp.images[None]).flatten(2).abs().amax(-1)
        assert float(distance.min(1).values.max()) < 1e-4 and set(labels[distance.argmin(1).numpy()]) == {c}

    def is_x_p(images):
        return (images - fp.x_p[None]).flatten(1).abs().amax(1) < 1e-3

    config = ProbeConfig(M=4, grid=(0.9, 0.5, 0.1, 0.02), steps_full=20, search="exhaustive")
    label = int(labels[fp.index])
    found = find_t_prime(model.conditioned(label), None, fp.x_p, is_x_p, is_x_p, config, progress=False)
    assert found.t_prime is not None and found.k[int(np.argmin(found.ts))] == 4
    other = find_t_prime(model.conditioned(1 - label), None, fp.x_p, is_x_p, is_x_p, config, progress=False)
    assert other.t_prime is None and sum(other.k) == 0
