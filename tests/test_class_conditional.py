"""Class-conditional models under audit (issue 24 item 3): diffusers ``UNet2DModel(num_class_embeds=K)`` and MONAI
``DiffusionModelUNet(num_class_embeds=K)``, trained with their libraries alone, saved as they save them, audited by
``safcore audit --model`` and by ``Study``; known answers from an exact class-conditional point-mass denoiser.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import fingerprint  # noqa: F401 — the module-scoped fingerprint folder of D_p (breastmnist, N_D = 8)

from safcore.__main__ import main
from safcore.audit.classes import SCHEME, ClassCounts, class_sample_counts
from safcore.audit.sample_audit import audit
from safcore.data.datasets import to_model_range
from safcore.data.fingerprint_io import read_fingerprint
from safcore.generators.base import SDEGenerator
from safcore.generators.diffusers_model import DiffusersModel
from safcore.generators.known_answer import ClassPointMassDenoiser, PointMixtureScore
from safcore.generators.loader import load_model
from safcore.generators.model_files import ModelLoadError
from safcore.generators.sde import SubVPSDE
from safcore.probe import ProbeConfig, find_t_prime
from safcore.runtime.runs import RunStore
from safcore.study import Study, conditional

ARGS = ["--profile", "smoke", "--device", "cpu", "--no-progress"]


def _labels(fp: Path) -> np.ndarray:
    with np.load(fp / "dp.npz") as archive:
        return archive["train_labels"][:, 0].astype(np.int64)


def _images(fp: Path) -> torch.Tensor:
    with np.load(fp / "dp.npz") as archive:
        return torch.from_numpy(archive["train_images"]).float()[:, None] / 127.5 - 1.0


def _train_diffusers(fp: Path, out: Path, *, steps: int = 5, **unet_changes) -> Path:
    """What a hospital team does without safcore: a class-conditional UNet2DModel called with class_labels, a
    DDPMScheduler, a plain loop, DDPMPipeline.save_pretrained."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    images, labels = _images(fp), torch.from_numpy(_labels(fp))
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=8, **{"num_class_embeds": 2, **unet_changes})
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    for _ in range(steps):
        noise = torch.randn_like(images)
        timesteps = torch.randint(0, 1000, (images.shape[0],))
        noisy = scheduler.add_noise(images, noise, timesteps)
        loss = torch.nn.functional.mse_loss(unet(noisy, timesteps, class_labels=labels).sample, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    DDPMPipeline(unet=unet.eval(), scheduler=scheduler).save_pretrained(out)
    return out


MONAI_NETWORK = dict(spatial_dims=2, in_channels=1, out_channels=1, channels=[8, 16], attention_levels=[False, False],
                     num_res_blocks=1, num_head_channels=8, norm_num_groups=8, num_class_embeds=2)


def _train_monai(fp: Path, out: Path, *, steps: int = 5) -> Path:
    """MONAI alone: DiffusionModelUNet(num_class_embeds=2) called with class_labels, its DDIM scheduler, saved as a
    plain folder (config.json + model.safetensors)."""
    from monai.networks.nets import DiffusionModelUNet
    from monai.networks.schedulers import DDIMScheduler
    from safetensors.torch import save_file

    images, labels = _images(fp), torch.from_numpy(_labels(fp))
    torch.manual_seed(0)
    unet = DiffusionModelUNet(**MONAI_NETWORK)
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.Adam(unet.parameters(), lr=1e-3)
    for _ in range(steps):
        noise = torch.randn_like(images)
        timesteps = torch.randint(0, 1000, (images.shape[0],)).long()
        noisy = scheduler.add_noise(original_samples=images, noise=noise, timesteps=timesteps)
        loss = torch.nn.functional.mse_loss(unet(x=noisy, timesteps=timesteps, class_labels=labels), noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({"network": MONAI_NETWORK, "image_size": 28, "scheduler": {
        "_target_": "DDIMScheduler", "num_train_timesteps": 1000}}))
    save_file(unet.eval().state_dict(), out / "model.safetensors")
    return out


def _same(a, b) -> bool:
    return (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)) or a == b


# ---------------------------------------------------------------------------------------- the per-class scheme
def test_class_sample_counts_follow_the_largest_remainder_rule():
    # shares 2, 1.33, 0.67 → floors 2, 1, 0; the one left goes to the largest remainder (class 2)
    assert class_sample_counts([0, 0, 0, 1, 1, 2], 4) == ((0, 1, 2), (3, 2, 1), (2, 1, 1))
    # N_c = 2, 6 of N_D = 8, n = 7: shares 1.75, 5.25 → 1, 5, the one left to class 0
    assert class_sample_counts(np.array([[0], [1], [1], [1], [1], [0], [1], [1]]), 7) == ((0, 1), (2, 6), (2, 5))
    assert class_sample_counts([0, 1], 1) == ((0, 1), (1, 1), (1, 0))  # a tie: the smaller label
    assert class_sample_counts([3, 5, 5], 300) == ((3, 5), (1, 2), (100, 200))  # exact shares, labels kept
    with pytest.raises(ValueError, match=r"allowed: \(N,\) or \(N, 1\)"):
        class_sample_counts(np.zeros((4, 3), dtype=int), 4)  # multi-label: not one class per image


# ---------------------------------------------------------------------------------------- the protocol
def test_conditioned_generators_and_refusals():
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    images, labels = torch.rand(5, 1, 8, 8), [0, 1, 1, 0, 1]
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    model = DiffusersModel(ClassPointMassDenoiser(images, labels, scheduler), scheduler)
    assert model.num_classes == 2 and model.label is None and model.conditioned(None) is model
    one = model.conditioned(1)
    assert one.label == 1 and one.unet is model.unet and one.conditioned(1) is one and model.label is None
    assert one.identity() == {**model.identity(), "class_label": 1}
    assert one.with_scheduler("ddim").label == 1
    for bad in (2, -1, 1.0, True, "0"):
        with pytest.raises(ValueError, match=r"allowed: an integer in \[0, 2\)") as info:
            model.conditioned(bad)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"no class is fixed; allowed: model.conditioned\(label\)"):
        model.sample(2, steps=5, progress=False)
    sde = SDEGenerator(PointMixtureScore(SubVPSDE(), images[:1]), SubVPSDE())
    assert sde.num_classes is None and sde.conditioned(None) is sde
    with pytest.raises(ValueError, match="given to an unconditional model; allowed: None"):
        sde.conditioned(0)


@pytest.mark.parametrize("kind", ["ddpm", "ddim", "monai_ddpm"])
def test_conditioned_on_c_only_class_c_training_images_come_back(kind):
    """The known answer: the exact class-conditional point-mass denoiser, conditioned on c, samples only class-c
    training images (every scheduler path)."""
    torch.manual_seed(0)
    images, labels = torch.rand(6, 1, 8, 8), np.array([0, 1, 1, 0, 1, 2])
    if kind == "monai_ddpm":
        from monai.networks.schedulers import DDPMScheduler

        from safcore.generators.known_answer import MonaiClassPointMassDenoiser
        from safcore.generators.monai_model import MonaiModel

        scheduler = DDPMScheduler(num_train_timesteps=1000)
        model, steps = MonaiModel(MonaiClassPointMassDenoiser(images, labels, scheduler), scheduler, image_size=8), 1000
    else:
        from diffusers import DDIMScheduler, DDPMScheduler

        scheduler = (DDPMScheduler if kind == "ddpm" else DDIMScheduler)(num_train_timesteps=1000)
        model, steps = DiffusersModel(ClassPointMassDenoiser(images, labels, scheduler), scheduler), 20
    assert model.num_classes == 3
    for c in range(3):
        drawn = model.conditioned(c).sample(6, steps=steps, generator=torch.Generator().manual_seed(c), progress=False)
        distance = (drawn.images[:, None] - to_model_range(images)[None]).flatten(2).abs().amax(-1)  # (6, N)
        nearest = distance.argmin(1)
        assert float(distance.min(1).values.max()) < 1e-3  # each sample IS a training image
        assert set(labels[nearest.numpy()].tolist()) == {c}  # … of class c only


# ---------------------------------------------------------------------------------------- the study's audit and probe
@pytest.fixture(scope="module")
def exact_study(fingerprint, data_root, tmp_path_factory):  # noqa: F811
    """A Study of the fingerprint folder whose model is the exact class-conditional point mass of D_p (its labels)."""
    from diffusers import DDPMScheduler

    fp = read_fingerprint(fingerprint)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    model = DiffusersModel(ClassPointMassDenoiser(fp.images, fp.labels, scheduler), scheduler, source="exact")
    return Study.from_fingerprint(fingerprint, model=model, profile="smoke", data_root=data_root, progress=False,
                                  store=RunStore(tmp_path_factory.mktemp("runs")), sample_steps=20, device="cpu")


def test_audit_of_the_exact_model_samples_per_class_and_tests_x_p_s_class(exact_study):
    study = exact_study
    fp = study.fingerprint
    labels = fp.labels[:, 0]
    label = int(labels[fp.index])
    assert conditional.x_p_label(study) == label and conditional.num_classes(study) == 2
    n = 13
    classes, sizes, counts = class_sample_counts(labels, n)
    assert conditional.class_plan(study, n) == tuple(zip(classes, counts))
    samples = study.samples(n)
    drawn = conditional.audit_labels(study, n)["sample_labels"]
    distance = (samples[:, None] - fp.images[None]).flatten(2).abs().amax(-1)
    nearest = distance.argmin(1)
    assert float(distance.min(1).values.max()) < 1e-3  # every sample is a training image …
    assert torch.equal(torch.as_tensor(labels)[nearest], drawn)  # … of the class it was drawn for

    def is_x_p(images):  # an oracle adversary: exactly x_p
        return (images - fp.x_p[None]).flatten(1).abs().amax(1) < 1e-3

    result = audit(samples, is_x_p, is_x_p, fp.x_p, fp.n_dataset, **conditional.audit_labels(study, n))
    k = result.classes
    assert isinstance(k, ClassCounts) and result.class_label == label and k.scheme == SCHEME
    assert (k.classes, k.n_dataset, k.n_samples) == (classes, sizes, counts)
    n_c, N_c = counts[classes.index(label)], sizes[classes.index(label)]
    assert k.n_class == n_c and k.n_dataset_class == N_c and result.expected_q == n_c / N_c
    in_class = int((nearest[drawn == label] == fp.index).sum())
    assert k.n_q == in_class == result.n_q  # x_p comes back only among the samples of its class
    from safcore.measures.bounds import binomial_p_value

    assert result.p_value == binomial_p_value(in_class, n_c, N_c)
    row = result.to_row()
    assert (row["class"], row["n_class"], row["N_class"], row["|q| in class"]) == (label, n_c, N_c, in_class)
    assert f"x_p's class {label}" in str(result)
    unconditional = audit(samples, is_x_p, is_x_p, fp.x_p, fp.n_dataset)
    assert unconditional.classes is None and unconditional.expected_q == n / fp.n_dataset and "class" not in \
        unconditional.to_row()


def test_probe_conditioned_on_x_p_s_label_finds_x_p(exact_study):
    """Algorithm 1's known answer: conditioned on x_p's label the exact model hands x_p back from low t; conditioned
    on the other label never. The study's probe key names the label."""
    study = exact_study
    fp = study.fingerprint
    label = conditional.x_p_label(study)
    model = study.model.with_scheduler("ddim")

    def is_x_p(images):
        return (images - fp.x_p[None]).flatten(1).abs().amax(1) < 1e-3

    config = ProbeConfig(M=4, grid=(0.9, 0.5, 0.1, 0.02), steps_full=20, search="exhaustive")
    found = find_t_prime(model.conditioned(label), None, fp.x_p, is_x_p, is_x_p, config, progress=False)
    assert found.t_prime is not None and found.k[int(np.argmin(found.ts))] == 4  # q = 1 at the lowest t
    other = find_t_prime(model.conditioned(1 - label), None, fp.x_p, is_x_p, is_x_p, config, progress=False)
    assert other.t_prime is None and sum(other.k) == 0
    key, load = conditional.probe_key(study, {"model": "m"}, None)
    assert key == {"model": "m", "class_label": label} and load().label == label


# ---------------------------------------------------------------------------------------- trained models, CLI = API
def _cli_audit(folder: Path, fp: Path, data_root, out: Path, capsys) -> dict:
    code = main(["audit", "--model", str(folder), "--fingerprint", str(fp), "--n", "8", "--data-root", str(data_root),
                 "--out", str(out), *ARGS])
    assert code == 0, capsys.readouterr().err
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("library", ["diffusers", "monai"])
def test_audit_of_a_trained_class_conditional_model_is_the_study_s(library, fingerprint, data_root, tmp_path,  # noqa: F811
                                                                   capsys):
    if library == "monai":
        pytest.importorskip("monai")
        folder = _train_monai(fingerprint, tmp_path / "monai")
    else:
        folder = _train_diffusers(fingerprint, tmp_path / "pipeline")
    model = load_model(folder)
    assert model.num_classes == 2 and "2 classes" in repr(model)
    summary = _cli_audit(folder, fingerprint, data_root, tmp_path / "report", capsys)
    labels = _labels(fingerprint)
    label = int(labels[read_fingerprint(fingerprint).index])
    classes, sizes, counts = class_sample_counts(labels, 8)
    record = summary["classes"]
    assert record["label"] == label and record["scheme"] == SCHEME
    assert record["per_class"] == {str(c): {"N_c": N, "n_c": k} for c, N, k in zip(classes, sizes, counts)}
    assert summary["audit"]["E|q|"] == record["n_class"] / record["N_class"]
    report = (tmp_path / "report" / "report.md").read_text()
    assert f"x_p's class is {label}" in report and "E|q| = n_c/N_c" in report
    study = Study.from_fingerprint(fingerprint, model=folder, profile="smoke", data_root=data_root, progress=False,
                                   device="cpu")
    row = json.loads(json.dumps(study.audit(8).to_row()))
    assert all(_same(summary["audit"][k], v) for k, v in row.items()), (summary["audit"], row)
    manifest = json.loads((tmp_path / "report" / "report.md.json").read_text())
    assert manifest["config"]["study"]["external_model"] == study.model_config()["external_model"]


# ---------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("case, expected", [
    ("timestep", "class_embed_type = 'timestep' is not a class-label embedding; allowed: null"),
    ("cross_attention", "with_conditioning = True: conditioning by cross-attention is not a class label"),
    ("too_few_classes", "D_p holds class 1 but the model has num_class_embeds = 1; allowed: labels 0 … 0"),
])
def test_refusals_are_one_line_exit_2_and_write_nothing(case, expected, fingerprint, data_root, tmp_path,  # noqa: F811
                                                        capsys):
    folder = tmp_path / "model"
    if case == "timestep":
        _train_diffusers(fingerprint, folder, steps=0, class_embed_type="timestep", num_class_embeds=None)
        with pytest.raises(ModelLoadError, match="class_embed_type") as info:
            load_model(folder)
        assert expected in str(info.value) and "config.json" in str(info.value)
    elif case == "cross_attention":
        pytest.importorskip("monai")
        folder.mkdir()
        network = {**MONAI_NETWORK, "num_class_embeds": None, "with_conditioning": True, "cross_attention_dim": 8}
        (folder / "config.json").write_text(json.dumps({"network": network, "image_size": 28,
                                                        "scheduler": {"_target_": "DDPMScheduler"}}))
        (folder / "model.safetensors").write_bytes(b"")
    else:
        _train_diffusers(fingerprint, folder, steps=0, num_class_embeds=1)
    out = tmp_path / "out"
    code = main(["audit", "--model", str(folder), "--fingerprint", str(fingerprint), "--n", "4", "--data-root",
                 str(data_root), "--out", str(out), *ARGS])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("safcore audit: error: ") and expected in err, err
    assert not out.exists()
