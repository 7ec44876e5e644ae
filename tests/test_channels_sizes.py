"""Colour and the image sizes users have (issue 11, part 2).

An RGB npz (the shared grey BreastMNIST through matplotlib's ``viridis``) and a 64 px npz (BreastMNIST
upsampled bilinearly) each run the smoke demo end to end, with models, SAF and figures in colour / at that
size; 128 px builds, trains a step and classifies; the run-store keys of 28 px grey studies are those
stored models were saved under; 30 and 32 px, NaN and 0..255 images and a text file named .npz are refused
in one line before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image
from safetensors.torch import load_file

from safcore.data import datasets as data_lib
from safcore.__main__ import main
from safcore.adversary.classifiers import Classifier, ClassifierConfig, build_resnet
from safcore.data.fingerprint import default_radius
from safcore.measures.extractor_training import DomainExtractorConfig, domain_extractor
from safcore.measures.fid import fid
from safcore.generators.score_model import build_unet
from safcore.runtime.paths import RUNS_ENV
from safcore.study.profiles import PAPER, PROFILES, SMOKE
from safcore.runtime.runs import RunStore, config_key
from safcore.study import Study
from safcore.generators.train import TrainConfig, Trainer, train

TINY_FID = DomainExtractorConfig(widths=(4, 8), epochs=1, batch_size=16, max_steps=4, seed=0)


@pytest.fixture(autouse=True)
def two_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


def _breast(data_root: Path) -> dict[str, np.ndarray]:
    with np.load(data_root / "breastmnist.npz") as archive:
        return {key: archive[key] for key in archive.files}


def _viridis(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Grey uint8 (N, 28, 28) → RGB uint8 (N, 28, 28, 3) through viridis (a fixed, invertible colour map)."""
    cmap = colormaps["viridis"]
    return {key: (cmap(a / 255.0)[..., :3] * 255).round().astype(np.uint8) if key.endswith("_images") else a
            for key, a in arrays.items()}


def _resized(arrays: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Grey uint8 (N, 28, 28) → (N, size, size), bilinear (torch)."""
    out = {}
    for key, a in arrays.items():
        if key.endswith("_images"):
            t = torch.from_numpy(a).float()[:, None]
            t = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
            a = t.round().clamp(0, 255).to(torch.uint8)[:, 0].numpy()
        out[key] = a
    return out


@pytest.fixture(scope="module")
def rgb_npz(tmp_path_factory, data_root) -> Path:
    path = tmp_path_factory.mktemp("rgb") / "own_rgb.npz"
    np.savez(path, **_viridis(_breast(data_root)))
    return path


@pytest.fixture(scope="module")
def npz_64(tmp_path_factory, data_root) -> Path:
    path = tmp_path_factory.mktemp("px64") / "own_64.npz"
    np.savez(path, **_resized(_breast(data_root), 64))
    return path


#: The smoke profile cut further for demos trained from scratch: the real one took 15 min for an RGB npz on
#: this 2-core machine (score model 114 s, c_p 108 s, c_id 480 s, probes 141 s, with other jobs running),
#: and bf16 autocast on a CPU without bf16 units cost 2.6 s per step of the tiny U-Net. Every stage still
#: runs, through the same command line, on the data's channels and size.
QUICK_SMOKE = dataclasses.replace(
    SMOKE,
    train=dataclasses.replace(SMOKE.train, steps=40, checkpoint_every=20, keep_steps=(20, 40), bf16=False),
    sample_steps=10,
    n_samples=16,
    classifier=dataclasses.replace(SMOKE.classifier, epochs=2, patience=2, epoch_size=64),
    probe=dataclasses.replace(SMOKE.probe, M=2, grid=(0.5, 0.2), steps_full=10),
)


def _demo(npz: Path, tmp_path: Path, monkeypatch, capsys) -> tuple[Path, Path]:
    runs, out = tmp_path / "runs", tmp_path / "report"
    monkeypatch.setenv(RUNS_ENV, str(runs))
    monkeypatch.setitem(PROFILES, "smoke", QUICK_SMOKE)
    code = main(["demo", "--dataset", str(npz), "--profile", "smoke", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    return runs, out


def _only_run(runs: Path, kind: str) -> Path:
    found = [p for p in (runs / kind).iterdir() if p.is_dir() and not p.name.endswith(".partial")]
    assert len(found) == 1, found
    return found[0]


def _colour_fraction(png: Path) -> float:
    """Share of a PNG's pixels whose R, G and B differ (grey pixels have R = G = B)."""
    image = np.asarray(Image.open(png).convert("RGB")).astype(int)
    spread = image.max(axis=-1) - image.min(axis=-1)
    return float((spread > 12).mean())


# ------------------------------------------------------------------------------------------ colour


def test_rgb_npz_runs_the_smoke_demo_in_colour(rgb_npz, tmp_path, monkeypatch, capsys):
    runs, out = _demo(rgb_npz, tmp_path, monkeypatch, capsys)
    unet = json.loads((_only_run(runs, "score_model") / "model" / "config.json").read_text())
    assert unet["in_channels"] == unet["out_channels"] == 3 and unet["sample_size"] == 28
    for kind in ("c_p", "c_id"):
        record = json.loads((_only_run(runs, kind) / "classifier" / "classifier.json").read_text())
        assert record["in_channels"] == 3 and record["image_size"] == 28
    samples = load_file(_only_run(runs, "samples") / "samples.safetensors")["images"]
    assert samples.shape == (16, 3, 28, 28)

    study = Study(rgb_npz, profile="smoke", store=RunStore(runs), progress=False)
    assert study.channels == 3 and study.data_config["channels"] == 3
    private = study.private
    inside = private.mask.bool()
    assert private.x_p.shape == (3, 28, 28)
    assert torch.all(private.x_p[:, inside] == private.grey)  # the SAF's grey in every channel
    outside = private.x_p[:, ~inside]
    assert (outside[0] - outside[2]).abs().max() > 0.3  # the image around it is in colour (viridis)

    report = json.loads((out / "summary.json").read_text())
    assert report["audit"]["n"] == 16 and report["probed"]
    # The figures show the images in colour: many pixels are not grey. The same figure of the grey
    # BreastMNIST demo is grey but for its frames and labels (measured 0.002 - 0.03).
    for name in ("samples.png", "q_positives.png"):
        assert _colour_fraction(out / name) > 0.15, name


def test_profiles_follow_the_data_or_repeat_grey(rgb_npz, data_root, run_store):
    assert SMOKE.channels is None and PAPER.channels == 3
    grey = Study("breastmnist", 8, profile="smoke", data_root=data_root, store=run_store, progress=False)
    assert grey.channels == 1 and grey.images("val").shape[1] == 1
    paper = Study("breastmnist", 8, profile="paper", data_root=data_root, store=run_store, progress=False)
    assert paper.channels == 3 and torch.equal(paper.images("val")[:, 0], paper.images("val")[:, 2])
    assert config_key(paper.data_config) != config_key(grey.data_config)  # grey repeated is another run
    rgb_paper = Study(rgb_npz, 8, profile="paper", store=run_store, progress=False)
    assert rgb_paper.images("val").shape[1] == 3
    forced_grey = Study(rgb_npz, 8, profile=dataclasses.replace(SMOKE, channels=1), store=run_store, progress=False)
    with pytest.raises(ValueError, match="cannot turn 3-channel images into channels=1"):
        forced_grey.private  # noqa: B018
    with pytest.raises(ValueError, match=r"Profile.channels = 2: allowed None \(follow the data\), 1 or 3"):
        dataclasses.replace(SMOKE, channels=2)


def test_28px_grey_run_keys_are_the_stored_ones(data_root, run_store):
    """The keys the 28 px grey models in runs/ were stored under (computed with the code before channels
    followed the data): following the data resolves to 1 channel, so nothing is trained again."""
    expected = {
        "smoke": ("7585bab1f1a8caa1", "e6fa1ebe80727375", "2bd93eabd9f436dd"),
        "cpu": ("5c7b60bc4b463ccd", "33c4470a5ba60481", "4d8083d69ab6001a"),
        # the paper profile feeds grey as 3 channels, which get the mean head (issue 21): its score-model key is new
        "paper": ("9cd2a002d8324a7b", "cb6fd2d3320dda31", "6d4fbeff66a326df"),
    }
    for profile, keys in expected.items():
        study = Study("breastmnist", 16, profile=profile, data_root=data_root, store=run_store, progress=False)
        got = (config_key(study.model_config()), config_key(study.classifier_config("c_p")),
               config_key(study.classifier_config("c_id")))
        assert got == keys, profile


# ------------------------------------------------------------------------------------------ sizes


def test_64px_npz_runs_the_smoke_demo_at_64px(npz_64, tmp_path, monkeypatch, capsys):
    runs, out = _demo(npz_64, tmp_path, monkeypatch, capsys)
    unet = json.loads((_only_run(runs, "score_model") / "model" / "config.json").read_text())
    assert unet["sample_size"] == 64 and unet["in_channels"] == 1
    assert unet["down_block_types"] == ["DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D"]  # 64→32→16→8
    for kind in ("c_p", "c_id"):
        record = json.loads((_only_run(runs, kind) / "classifier" / "classifier.json").read_text())
        assert record["image_size"] == 64 and record["in_channels"] == 1
    samples = load_file(_only_run(runs, "samples") / "samples.safetensors")["images"]
    assert samples.shape == (16, 1, 64, 64)

    study = Study(npz_64, profile="smoke", store=RunStore(runs), progress=False)
    private = study.private
    assert private.radius == default_radius(64) == 9.0  # the paper's rule, 9 · 2^(log2(64) − 6)
    assert private.x_p.shape == (1, 64, 64) and private.mask.shape == (64, 64)
    assert abs(float(private.mask.sum()) - np.pi * 81) < 12  # a disc of radius 9 px
    assert study.score_model.image_size == 64
    width, height = Image.open(out / "samples.png").size
    assert width > 0 and height > 0 and (out / "report.md").is_file()


@pytest.mark.parametrize("which", ["rgb", "64"])
def test_fid_domain_extractor_at_the_data_size_and_channels(which, rgb_npz, npz_64, tmp_path):
    data = data_lib.load_npz(rgb_npz if which == "rgb" else npz_64)
    real = data_lib.to_unit_tensor(data.split("test")[:24])
    fake = data_lib.to_unit_tensor(data.split("val")[:24])
    first = fid(real, fake, "domain", dataset=data, cache_dir=tmp_path, domain_config=TINY_FID)
    again = fid(real, fake, "domain", dataset=data, cache_dir=tmp_path, domain_config=TINY_FID)  # from the cache
    assert np.isfinite(first.value) and first.value == again.value and first.n_real == 24
    extractor = domain_extractor(data, tmp_path, config=TINY_FID)
    assert extractor.classifier.image_size == data.image_size and extractor.classifier.in_channels == data.n_channels
    with pytest.raises(ValueError, match="one size"):
        fid(real, torch.nn.functional.interpolate(fake, scale_factor=2), "domain", dataset=data, cache_dir=tmp_path,
            domain_config=TINY_FID)


def test_128px_builds_trains_a_step_and_classifies(tmp_path):
    images = torch.rand(4, 3, 128, 128)
    config = TrainConfig(preset="tiny", steps=1, batch_size=2, warmup_steps=0, checkpoint_every=1, device="cpu")
    trainer = Trainer(images, config)
    assert trainer.model.image_size == 128 and len(trainer.model.unet.config.down_block_types) == 5  # 128→…→8
    loss = trainer.step()
    assert np.isfinite(loss) and 0.2 < loss < 5
    result = train(images, config, tmp_path / "work", progress=False)
    assert result.model.unet.config.sample_size == 128
    clf = Classifier(build_resnet("resnet18", 3, 2), ClassifierConfig(device="cpu"), kind="saf", in_channels=3,
                     image_size=128)
    decisions = clf(images)
    assert decisions.shape == (4,) and decisions.dtype == torch.bool
    with pytest.raises(ValueError, match="64×64 px; the classifier was trained on 128×128 px"):
        clf(images[..., :64, :64])
    assert default_radius(128) == 18.0


def test_trainer_refuses_other_sizes_before_writing(tmp_path):
    config = TrainConfig(preset="tiny", steps=1, batch_size=2, device="cpu")
    for size in (30, 32):
        with pytest.raises(ValueError, match=rf"{size}×{size} px; safcore supports 28, 64, 128 px"):
            train(torch.rand(2, 1, size, size), config, tmp_path / f"work{size}", progress=False)
        assert not (tmp_path / f"work{size}").exists()


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("case", ["30px", "32px", "text"])
def test_bad_npz_is_one_line_before_anything_is_written(case, data_root, tmp_path, monkeypatch, capsys):
    npz = tmp_path / f"own_{case}.npz"
    if case == "text":
        npz.write_text("patient_id,label\n1,0\n")
        expected = "is not a readable .npz archive"
    else:
        size = int(case[:2])
        np.savez(npz, **_resized(_breast(data_root), size))
        expected = f"the images are {size}×{size} px; safcore supports 28, 64, 128 px"
    runs, out = tmp_path / "runs", tmp_path / "report"
    monkeypatch.setenv(RUNS_ENV, str(runs))
    code = main(["demo", "--dataset", str(npz), "--profile", "smoke", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("safcore demo: error: ") and expected in err, err
    assert "pickle" not in err
    assert not runs.exists() and not out.exists()  # no run store, no .partial folder, no report


@pytest.mark.parametrize("case, expected", [
    ("nan", "contain 1568 NaN or infinite value(s); allowed: finite values in [0, 1]"),
    ("0..255", r"have values in [0, 255]; allowed: [0, 1] (0..255 values: divide by 255)"),
])
def test_audit_refuses_nan_and_0_255_before_training(case, expected, data_root, run_store):
    study = Study("breastmnist", 8, profile="smoke", data_root=data_root, store=run_store, progress=False)
    images = study.images("test")[:2].clone()
    images = torch.full_like(images, float("nan")) if case == "nan" else images * 0 + 255.0 * (images > 0.5)
    if case == "0..255":
        images[0, 0, 0, 0], images[1, 0, 0, 0] = 0.0, 255.0
    with pytest.raises(ValueError) as info:
        study.audit(images=images)
    assert expected in str(info.value)
    assert not any((run_store.root / kind).exists() for kind in ("c_p", "c_id", "score_model", "samples"))
