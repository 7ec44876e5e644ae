"""The command line a hospital team uses: fingerprint D_p, train a DDPM with diffusers alone, audit it.

The audits use the default run store (``runs/``), so the adversary trained here at the smoke profile is
reused by the demo test and the notebooks, as it would be on a user's machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from safcore.__main__ import main
from safcore.data.fingerprint_io import read_fingerprint


def _train_ddpm(fp: Path, out: Path, steps: int = 30, channels: int = 1, size: int = 28, save: str = "pipeline") -> None:
    """What a user does without safcore: a UNet2DModel and a DDPMScheduler, a plain loop, save_pretrained."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    with np.load(fp / "dp.npz") as archive:
        images = torch.from_numpy(archive["train_images"]).float()[:, None] / 127.5 - 1.0
    images = images.repeat(1, channels, 1, 1)
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=(16, 32),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=8)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    if size != images.shape[-1]:
        images = torch.nn.functional.interpolate(images, size=(size, size))
    for _ in range(steps):
        noise = torch.randn_like(images)
        timesteps = torch.randint(0, 1000, (images.shape[0],))
        loss = torch.nn.functional.mse_loss(unet(scheduler.add_noise(images, noise, timesteps), timesteps).sample, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if save == "pipeline":
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(out)
    elif save == "bare":
        unet.save_pretrained(out)
        scheduler.save_pretrained(out)
    else:  # pickled weights, as older diffusers / torch.save users have them
        unet.save_pretrained(out, safe_serialization=False)
        scheduler.save_pretrained(out)


@pytest.fixture(scope="module")
def fingerprint(tmp_path_factory, data_root) -> Path:
    out = tmp_path_factory.mktemp("cli") / "fp"
    assert main(["fingerprint", "--dataset", "breastmnist", "--n-dataset", "8", "--seed", "0", "--out", str(out),
                 "--data-root", str(data_root)]) == 0
    return out


@pytest.fixture(scope="module")
def pipeline(fingerprint) -> Path:
    out = fingerprint.parent / "ddpm_pipeline"
    _train_ddpm(fingerprint, out)
    return out


def test_fingerprint_folder_reads_back(fingerprint, data_root):
    from safcore.data.datasets import load_dataset, seeded_subset

    meta = json.loads((fingerprint / "fingerprint.json").read_text())
    fp = read_fingerprint(fingerprint)
    assert meta["n_dataset"] == 8 and meta["seed"] == 0 and meta["channels"] == 1 and meta["image_size"] == 28
    assert meta["dataset"] == "breastmnist" and len(meta["source_sha256"]) == 64 and meta["safcore_version"]
    with np.load(fingerprint / "dp.npz") as archive:
        train = archive["train_images"]
        assert train.dtype == np.uint8 and train.shape == (8, 28, 28) and archive["train_labels"].shape == (8, 1)
        assert archive["test_images"].shape[0] == 156  # the source's test split, for the trainer's own checks
    pngs = sorted((fingerprint / "images").iterdir())
    assert [p.name for p in pngs] == [f"dp_{i:05d}.png" for i in range(8)]
    assert np.array_equal(np.stack([np.asarray(Image.open(p)) for p in pngs]), train)  # the same N_D images
    x_p = train[fp.index]
    assert np.array_equal(np.asarray(Image.open(fingerprint / "x_p.png")), x_p)
    mask = fp.mask.bool().numpy()
    assert mask.sum() > 30 and np.all(x_p[mask] == 128)  # the SAF (grey 0.5) at the recorded place
    source = load_dataset("breastmnist", root=data_root).split("train")
    clean, chosen = seeded_subset(source, 8, seed=0)
    x_i = clean[fp.index]
    assert not (x_i[mask] == 128).all() and not any(np.array_equal(x_i, image) for image in train)  # x_i is gone
    others = np.delete(np.arange(8), fp.index)
    assert np.array_equal(train[others], clean[others])
    # a second export into the same folder is refused, nothing is changed
    assert main(["fingerprint", "--n-dataset", "8", "--out", str(fingerprint), "--data-root", str(data_root)]) == 2


def test_audit_of_a_ddpm_pipeline_trained_with_diffusers_alone(pipeline, fingerprint, data_root, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["audit", "--model", str(pipeline), "--fingerprint", str(fingerprint), "--profile", "smoke", "--probe",
                 "--spread", "1", "--device", "cpu", "--data-root", str(data_root), "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"]["kind"] in ("inconclusive", "reproduces", "not_observed", "unlike_data")
    assert summary["audit"]["n"] == 32 and summary["audit"]["N_D"] == 8 and summary["probed"]
    assert "DDPMScheduler" in summary["model"] and "epsilon" in summary["model"]
    assert len(summary["t_prime_runs"]) == 1 and summary["nfe"] > 0
    for name in ("report.md", "report.md.json", "q_curve.png", "q_positives.png", "samples.png", "copies_per_image.png"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "Model under audit: DiffusersModel(" in report and summary["verdict"]["headline"] in report
    manifest = json.loads((out / "report.md.json").read_text())
    assert manifest["config"]["study"]["external_model"]["scheduler"] == "DDPMScheduler"
    assert manifest["config"]["fingerprint"] == str(fingerprint)


def test_audit_of_a_bare_unet_and_of_images_made_elsewhere(fingerprint, data_root, tmp_path, capsys):
    bare = tmp_path / "bare"
    _train_ddpm(fingerprint, bare, steps=2, save="bare")
    out = tmp_path / "bare_report"
    assert main(["audit", "--model", str(bare), "--fingerprint", str(fingerprint), "--profile", "smoke", "--n", "8",
                 "--scheduler", "ddim", "--steps", "10", "--data-root", str(data_root), "--out", str(out),
                 "--no-progress"]) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["audit"]["n"] == 8 and not summary["probed"] and "DDIMScheduler" in summary["model"]
    # a user's DDPM trained for 2 steps outputs noise: the report says so first, whatever the counts
    assert summary["verdict"]["kind"] == "unlike_data" and not summary["quality"]["passed"]
    assert summary["verdict"]["headline"].startswith("The model under audit does not generate images like its training data")
    assert "## Are the samples like the data?" in (out / "report.md").read_text()
    # samples generated elsewhere: 5 copies of x_p and 3 other training images, as a PNG folder
    fp = read_fingerprint(fingerprint)
    with np.load(fingerprint / "dp.npz") as archive:
        train = archive["train_images"]
    folder = tmp_path / "generated"
    folder.mkdir()
    others = [i for i in range(8) if i != fp.index][:3]
    for j, i in enumerate([fp.index] * 5 + others):
        Image.fromarray(train[i]).save(folder / f"{j:03d}.png")
    out = tmp_path / "png_report"
    assert main(["audit", "--samples", str(folder), "--fingerprint", str(fingerprint), "--profile", "smoke",
                 "--data-root", str(data_root), "--out", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["audit"]["n"] == 8 and summary["copy_check"]["x_p_copies"] == 5 and summary["copies"] == 8
    assert "images generated elsewhere" in summary["model"]
    assert summary["quality"]["passed"] and summary["verdict"]["kind"] == "reproduces"  # real images pass the gate


@pytest.mark.parametrize("case, expected", [
    ("pickled", "only pickled weights (diffusion_pytorch_model.bin)"),
    ("channels", "the model under audit has 3 input channel(s); the data it is audited on has 1"),
    ("size", "the model under audit makes 32×32 px images; D_p's are 28×28"),
    ("no_fingerprint", "is not a fingerprint folder: it has no fingerprint.json"),
    ("no_model", "give --model (a model to sample) or --samples"),
    ("bad_n", "--n = 0; allowed: an integer ≥ 1"),
    ("nan_samples", "contain NaN or infinite values; allowed: finite values in [0, 1]"),
    ("byte_floats", "allowed: [0, 1]"),
])
def test_bad_input_is_one_line_and_exit_code_2(case, expected, fingerprint, data_root, tmp_path, capsys):
    model = tmp_path / "model"
    fp_arg = str(fingerprint)
    args = ["--model", str(model)]
    if case == "pickled":
        _train_ddpm(fingerprint, model, steps=0, save="pickled")
    elif case == "channels":
        _train_ddpm(fingerprint, model, steps=0, channels=3)
    elif case == "size":
        _train_ddpm(fingerprint, model, steps=0, size=32)
    elif case == "no_fingerprint":
        _train_ddpm(fingerprint, model, steps=0)
        fp_arg = str(tmp_path)
    elif case == "no_model":
        args = []
    elif case in ("nan_samples", "byte_floats"):
        images = np.full((4, 28, 28), np.nan if case == "nan_samples" else 200.0, dtype=np.float32)
        np.save(tmp_path / "samples.npy", images)
        args = ["--samples", str(tmp_path / "samples.npy")]
    else:
        _train_ddpm(fingerprint, model, steps=0)
        args += ["--n", "0"]
    out = tmp_path / "out"
    code = main(["audit", *args, "--fingerprint", fp_arg, "--profile", "smoke", "--data-root", str(data_root),
                 "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("safcore audit: error: ") and expected in err, err
    assert not out.exists()  # nothing written


def test_help_version_and_usage_errors(capsys):
    for command in ([], ["fingerprint"], ["train"], ["audit"], ["probe"], ["demo"]):
        with pytest.raises(SystemExit) as info:
            main([*command, "--help"])
        assert info.value.code == 0
        text = capsys.readouterr().out
        assert "``" not in text and ":func:" not in text and "usage: safcore" in text
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("safcore 0.")
    with pytest.raises(SystemExit) as info:
        main(["audit", "--profile", "huge", "--fingerprint", "x"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "invalid choice: 'huge'" in err


def test_train_then_probe_safcore_s_own_model(fingerprint, data_root, tmp_path, capsys):
    """safcore train writes a model folder that audit/probe read back as a sub-VP score model."""
    from safcore.generators.score_model import ScoreModel
    from safcore.generators.loader import load_model

    model = tmp_path / "own"
    assert main(["train", "--fingerprint", str(fingerprint), "--out", str(model), "--profile", "smoke",
                 "--data-root", str(data_root), "--no-progress"]) == 0, capsys.readouterr().err
    assert isinstance(load_model(model), ScoreModel) and (model / "safcore_sde.json").is_file()
    out = tmp_path / "probe"
    assert main(["probe", "--model", str(model), "--fingerprint", str(fingerprint), "--profile", "smoke", "--M", "2",
                 "--search", "topdown", "--data-root", str(data_root), "--out", str(out), "--no-progress"]) == 0
    record = json.loads((out / "probe.json").read_text())
    assert record["config"]["M"] == 2 and record["config"]["search"] == "topdown" and record["nfe"] > 0
    assert (out / "q_curve.png").is_file() and (out / "probe.json.json").is_file()
    assert "t' = " in capsys.readouterr().out or record["t_prime"] is None
    # a sub-VP model has no scheduler to swap
    assert main(["probe", "--model", str(model), "--fingerprint", str(fingerprint), "--scheduler", "ddim",
                 "--profile", "smoke", "--data-root", str(data_root), "--no-progress"]) == 2
    assert "applies to a diffusers model" in capsys.readouterr().err


def test_demo_offline_without_data_stops_in_one_line(tmp_path, monkeypatch, capsys):
    """A fresh machine with no ../shared and --offline: the flag, the folder searched and both remedies."""
    monkeypatch.delenv("SAFCORE_DATA_ROOT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # medmnist's cache ~/.medmnist is empty here
    monkeypatch.setenv("SAFCORE_RUNS_DIR", str(tmp_path / "runs"))
    code = main(["demo", "--offline", "--profile", "smoke", "--out", str(tmp_path / "report"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "'breastmnist'" in err and str(tmp_path / ".medmnist") in err
    assert "--data-root" in err and "without --offline" in err
    assert not (tmp_path / "report").exists() and not any((tmp_path / "runs").rglob("*"))  # nothing written
