"""A MONAI diffusion model under audit: trained with MONAI alone, saved as a plain folder and as a MONAI bundle,
audited with ``safcore audit --model`` and ``Study(model=folder)``; what safcore refuses to read.

MONAI is the test extra's (``safcore[monai]``); without it this module is skipped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("monai")

from monai.inferers import DiffusionInferer  # noqa: E402
from monai.networks.nets import DiffusionModelUNet  # noqa: E402
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from conftest import assert_model_refused  # noqa: E402
from test_cli import fingerprint  # noqa: E402,F401 — the module-scoped fingerprint folder of D_p

from safcore.__main__ import main  # noqa: E402
from safcore.generators.loader import load_model, max_inference_steps, network, sampling_for  # noqa: E402
from safcore.generators.monai_model import MonaiModel  # noqa: E402

NETWORK = dict(spatial_dims=2, in_channels=1, out_channels=1, channels=[8, 16], attention_levels=[False, False],
               num_res_blocks=1, num_head_channels=8, norm_num_groups=8)


def _train_monai(fp: Path, steps: int) -> DiffusionModelUNet:
    """What a hospital team does without safcore: MONAI's U-Net, DDPM scheduler and DiffusionInferer, a plain loop."""
    with np.load(fp / "dp.npz") as archive:
        images = torch.from_numpy(archive["train_images"]).float()[:, None] / 127.5 - 1.0
    torch.manual_seed(0)
    unet = DiffusionModelUNet(**NETWORK)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    inferer = DiffusionInferer(scheduler)
    optimizer = torch.optim.Adam(unet.parameters(), lr=1e-3)
    for _ in range(steps):
        noise = torch.randn_like(images)
        timesteps = torch.randint(0, 1000, (images.shape[0],)).long()
        loss = torch.nn.functional.mse_loss(inferer(images, unet, noise, timesteps), noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return unet.eval()


def _save_plain(unet, out: Path, scheduler: dict | None = None) -> Path:
    out.mkdir(parents=True)
    config = {"network": NETWORK, "scheduler": scheduler or {"_target_": "DDPMScheduler", "num_train_timesteps": 1000},
              "image_size": 28}
    (out / "config.json").write_text(json.dumps(config))
    save_file(unet.state_dict(), out / "model.safetensors")
    return out


def _save_bundle(unet, out: Path, **changes) -> Path:
    """A MONAI bundle's layout: configs/inference.json (with the expressions bundles hold elsewhere) + models/."""
    (out / "configs").mkdir(parents=True)
    (out / "models").mkdir()
    config = {
        "imports": ["$import torch"],
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "channels": 1,
        "image_size": 28,
        "network_def": {"_target_": "monai.networks.nets.DiffusionModelUNet", **NETWORK, "in_channels": "@channels",
                        "out_channels": "@channels"},
        "network": "$@network_def.to(@device)",
        "noise_scheduler": {"_target_": "monai.networks.schedulers.DDPMScheduler", "num_train_timesteps": 1000},
        "inferer": {"_target_": "DiffusionInferer", "scheduler": "@noise_scheduler"},
    }
    for key, value in changes.items():
        entry, _, arg = key.partition("__")
        if arg:
            config[entry][arg] = value
        else:
            config[entry] = value
    (out / "configs" / "inference.json").write_text(json.dumps(config))
    torch.save(unet.state_dict(), out / "models" / "model.pt")
    return out


@pytest.fixture(scope="module")
def monai_unet(fingerprint) -> DiffusionModelUNet:  # noqa: F811
    return _train_monai(fingerprint, steps=5)


def test_sampling_is_the_diffusion_inferer_step_for_step():
    torch.manual_seed(0)
    unet = DiffusionModelUNet(**{**NETWORK, "channels": (8, 16)}).eval()
    for cls in (DDPMScheduler, DDIMScheduler):
        ours = MonaiModel(unet, cls(num_train_timesteps=100), image_size=8).sample(
            3, steps=20, generator=torch.Generator().manual_seed(5), progress=False)
        scheduler = cls(num_train_timesteps=100)
        scheduler.set_timesteps(20)
        torch.manual_seed(5)  # the inferer draws from the global generator: the same stream
        theirs = DiffusionInferer(scheduler).sample(torch.randn(3, 1, 8, 8), unet, scheduler, verbose=False)
        assert ours.nfe == 20 and torch.equal(ours.images, theirs)


def test_plain_folder_and_bundle_load_as_the_model_trained(monai_unet, fingerprint, tmp_path):  # noqa: F811
    reference = MonaiModel(monai_unet, DDPMScheduler(num_train_timesteps=1000), image_size=28)
    for folder in (_save_plain(monai_unet, tmp_path / "plain"), _save_bundle(monai_unet, tmp_path / "bundle")):
        model = load_model(folder)
        assert isinstance(model, MonaiModel) and model.channels == 1 and model.image_size == 28
        assert model.identity() == reference.identity() and model.prediction_type == "epsilon"
        assert torch.equal(network(model).conv_in.conv.weight, monai_unet.conv_in.conv.weight)
        assert max_inference_steps(model) == 1000
        assert sampling_for(model, method="euler_maruyama", steps=50).method == "monai.DDPMScheduler"
        ddim = model.with_scheduler("ddim")
        assert ddim.scheduler_name == "monai.DDIMScheduler" and ddim.unet is model.unet
        assert torch.equal(ddim.scheduler.alphas_cumprod, model.scheduler.alphas_cumprod)
        assert "MonaiModel(" in repr(model) and "monai.DDPMScheduler" in repr(model)


def _audit(folder: Path, fingerprint: Path, data_root, out: Path, capsys) -> dict:  # noqa: F811
    code = main(["audit", "--model", str(folder), "--fingerprint", str(fingerprint), "--profile", "smoke", "--n", "8",
                 "--device", "cpu", "--data-root", str(data_root), "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    return json.loads((out / "summary.json").read_text())


def _same(a, b) -> bool:
    return (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)) or a == b


def test_audit_of_a_monai_model_is_the_study_s(monai_unet, fingerprint, data_root, tmp_path, capsys):  # noqa: F811
    from safcore.study import Study

    plain = _save_plain(monai_unet, tmp_path / "plain")
    summary = _audit(plain, fingerprint, data_root, tmp_path / "report", capsys)
    assert summary["audit"]["n"] == 8 and summary["audit"]["N_D"] == 8 and "monai.DDPMScheduler" in summary["model"]
    manifest = json.loads((tmp_path / "report" / "report.md.json").read_text())
    assert manifest["config"]["study"]["external_model"]["scheduler"] == "monai.DDPMScheduler"
    assert "Model under audit: MonaiModel(" in (tmp_path / "report" / "report.md").read_text()
    study = Study.from_fingerprint(fingerprint, model=plain, profile="smoke", data_root=data_root, progress=False,
                                   device="cpu")  # MONAI's DDPM reaches x_0 only on its full grid: all T steps
    row = json.loads(json.dumps(study.audit(8).to_row()))
    assert all(_same(summary["audit"][k], v) for k, v in row.items()), (summary["audit"], row)
    # the same weights as a MONAI bundle: the same model, the same audit
    bundle = _save_bundle(monai_unet, tmp_path / "bundle")
    again = _audit(bundle, fingerprint, data_root, tmp_path / "bundle_report", capsys)
    assert all(_same(again["audit"][k], v) for k, v in row.items())


@pytest.mark.parametrize("case, expected", [
    ("expression", "configs/inference.json: network_def.num_res_blocks = '$1 + 0' is an expression; safcore reads "
                   "configs as data"),
    ("pickled", "is not a state dict of tensors (torch.load(weights_only=True) refused it"),
    ("target", "noise_scheduler: _target_ 'monai.networks.schedulers.PNDMScheduler' is not allowed; allowed: "
               "monai.networks.schedulers.DDPMScheduler"),
    ("not_a_dict", "holds a list, not a flat dict of tensors"),
    ("no_size", "has no image_size"),
])
def test_what_safcore_refuses_to_read_is_one_line_and_exit_code_2(case, expected, fingerprint, data_root, tmp_path,  # noqa: F811
                                                                   capsys):
    torch.manual_seed(0)
    unet = DiffusionModelUNet(**NETWORK)
    model = tmp_path / "model"
    if case == "expression":
        _save_bundle(unet, model, network_def__num_res_blocks="$1 + 0")
    elif case == "target":
        _save_bundle(unet, model, noise_scheduler={
            "_target_": "monai.networks.schedulers.PNDMScheduler", "num_train_timesteps": 1000})
    elif case in ("pickled", "not_a_dict"):
        _save_bundle(unet, model)
        torch.save(unet if case == "pickled" else [torch.zeros(1)], model / "models" / "model.pt")
    else:
        _save_plain(unet, model)
        config = json.loads((model / "config.json").read_text())
        del config["image_size"]
        (model / "config.json").write_text(json.dumps(config))
    assert_model_refused(model, expected, fingerprint, data_root, tmp_path / "out", capsys)


def test_probe_of_a_monai_model_is_the_study_s(monai_unet, fingerprint, data_root, tmp_path, capsys):  # noqa: F811
    """``safcore probe`` on a MONAI model: Algorithm 1 through MONAI's own scheduler (diffuse with ``add_noise``,
    reverse the tail of the full schedule) in its DDIM view, the same t' and counts as the Study's probe, and the
    DDPM model itself on its full grid."""
    from safcore.study import Study

    plain = _save_plain(monai_unet, tmp_path / "plain")
    out = tmp_path / "probe"
    assert main(["probe", "--model", str(plain), "--fingerprint", str(fingerprint), "--profile", "smoke", "--M", "2",
                 "--steps", "10", "--scheduler", "ddim", "--device", "cpu", "--data-root", str(data_root), "--out",
                 str(out), "--no-progress"]) == 0, capsys.readouterr().err
    record = json.loads((out / "probe.json").read_text())
    study = Study.from_fingerprint(fingerprint, model=load_model(plain).with_scheduler("ddim"), profile="smoke",
                                   data_root=data_root, progress=False, sample_steps=10, device="cpu")
    result = study.probe(study.probe_config(M=2))
    assert record["config"]["M"] == 2 and record["config"]["steps_full"] == 10 and record["nfe"] > 0
    assert record["t_prime"] == result.t_prime and record["k"] == np.asarray(result.k).tolist()
    assert record["n"] == [2] * len(record["ts"])
    # the DDPM model itself (another model: another run) is probed on its full grid of T steps
    ddpm = tmp_path / "probe_ddpm"
    assert main(["probe", "--model", str(plain), "--fingerprint", str(fingerprint), "--profile", "smoke", "--M", "2",
                 "--device", "cpu", "--data-root", str(data_root), "--out", str(ddpm), "--no-progress"]) == 0, \
        capsys.readouterr().err
    full = json.loads((ddpm / "probe.json").read_text())
    assert full["n"] == [2] * len(record["ts"]) and full["config"]["steps_full"] == 1000
    # fewer steps of MONAI's DDPM never reach x_0: refused in one line, exit code 2
    assert main(["probe", "--model", str(plain), "--fingerprint", str(fingerprint), "--profile", "smoke", "--steps", "10",
                 "--device", "cpu", "--data-root", str(data_root), "--out", str(tmp_path / "coarse"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "never reaches x_0" in err and not (tmp_path / "coarse").exists()
