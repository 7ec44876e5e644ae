"""Fast solvers of scheduler-driven models: MONAI models under diffusers' DPM-Solver++ / UniPC on MONAI's noise
schedule (``MonaiModel.with_scheduler("dpm" | "unipc")``), and the command line's ``--scheduler dpm --steps N``:
the report names the solver and its NFE, its numbers are the Python API's, what it refuses is one line and exit
code 2 with nothing written.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

pytest.importorskip("monai")

from monai.networks.schedulers import DDIMScheduler, DDPMScheduler  # noqa: E402
from test_cli import _train_ddpm, fingerprint  # noqa: E402,F401 — D_p's fingerprint folder, a user's DDPM
from test_monai import _same, _save_plain, _train_monai  # noqa: E402

from safcore.__main__ import main  # noqa: E402
from safcore.generators.known_answer import MonaiPointMassDenoiser  # noqa: E402
from safcore.generators.loader import load_model, sampling_for  # noqa: E402
from safcore.generators.monai_model import MonaiModel, solver_scheduler  # noqa: E402

# ------------------------------------------------------------------------------------------------
# MONAI models under diffusers' multistep solvers
# ------------------------------------------------------------------------------------------------


def _point_mass(cls=DDPMScheduler, **kwargs) -> tuple[MonaiModel, torch.Tensor]:
    target = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0))
    scheduler = cls(num_train_timesteps=100, **kwargs)
    return MonaiModel(MonaiPointMassDenoiser(target, scheduler), scheduler, image_size=8), 2 * target - 1


@pytest.mark.parametrize("choice", ["dpm", "unipc"])
@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_monai_solver_view_lands_on_the_point_mass_from_every_t(choice, prediction):
    """MONAI's exact denoiser of one point through DPM-Solver++ / UniPC: every run lands on it, from t = 1 (NFE = the
    full grid's 10 steps) and from t < 1 (the tail of that grid, NFE = its length), sampling too."""
    base, x0 = _point_mass(prediction_type=prediction)
    model = base.with_scheduler(choice)
    assert not model.full_schedule_only and base.full_schedule_only and model.unet is base.unet
    assert torch.equal(model._alphas_cumprod, base.scheduler.alphas_cumprod)  # MONAI's ᾱ, T and prediction type
    assert torch.allclose(model.solver.alphas_cumprod, base.scheduler.alphas_cumprod, atol=1e-7)
    assert model.solver.config.prediction_type == prediction and model.solver.config.num_train_timesteps == 100
    t_vec = torch.tensor([1.0, 0.55, 0.55, 0.2])
    x_t = model.diffuse(torch.zeros(4, 1, 8, 8), t_vec, 10, torch.Generator().manual_seed(0))
    out, nfe = model.reverse(x_t, t_vec, 10)
    full = model.timesteps_from(1.0, 10)
    assert full.numel() == 10 and int(full[0]) == 99
    assert nfe.tolist() == [int((full <= model.timestep(float(t))).sum()) for t in t_vec] == [10, 5, 5, 1]
    assert (out - x0).abs().max() < 1e-4
    drawn = model.sample(3, steps=10, generator=torch.Generator().manual_seed(0), progress=False)
    assert drawn.nfe == 10 and (drawn.images - x0).abs().max() < 1e-4


def test_monai_views_differ_in_run_keys_and_keep_monai_s_own_paths():
    base, _ = _point_mass()
    views = {c: base.with_scheduler(c) for c in ("model", "ddim", "dpm", "unipc")}
    names = {c: v.scheduler_name for c, v in views.items()}
    assert names == {"model": "monai.DDPMScheduler", "ddim": "monai.DDIMScheduler",
                     "dpm": "diffusers.DPMSolverMultistepScheduler[monai.DDPMScheduler]",
                     "unipc": "diffusers.UniPCMultistepScheduler[monai.DDPMScheduler]"}
    keys = [json.dumps(v.identity(), sort_keys=True) for v in views.values()]
    assert len(set(keys)) == 4 and views["model"].identity() == base.identity()  # unchanged, keyed as before
    assert "solver_sha256" not in base.identity() and "solver_sha256" not in views["ddim"].identity()
    assert views["dpm"].with_scheduler("model").scheduler_name == names["dpm"]  # "model" keeps the view
    assert views["dpm"].with_scheduler("ddpm").identity() == base.identity()  # back to MONAI's own DDPM
    assert sampling_for(views["dpm"], method="euler_maruyama", steps=20).steps == 20  # not all T: its own grid
    assert sampling_for(base, method="euler_maruyama", steps=20).steps == 100
    # MONAI clips x̂_0 to [-1, 1] by default: the solvers threshold it exactly so; no clipping when MONAI does not
    assert base.with_scheduler("dpm").solver.config.thresholding
    assert not _point_mass(clip_sample=False)[0].with_scheduler("unipc").solver.config.thresholding
    with pytest.raises(ValueError, match=r"clip_sample_values = \(-2.0, 2.0\) with --scheduler dpm; allowed: \(-1, 1\)"):
        solver_scheduler(DDPMScheduler(num_train_timesteps=10, clip_sample_min=-2.0, clip_sample_max=2.0), "dpm")
    with pytest.raises(ValueError, match="scheduler choice 'heun'; allowed: 'model', 'ddpm', 'ddim', 'dpm', 'dpm_sde', 'unipc'"):
        base.with_scheduler("heun")


def test_monai_solver_view_steps_diffusers_solver_on_monai_s_network_calls():
    """A trained-shape MONAI U-Net under the dpm view: our run is diffusers' own loop (fresh scheduler,
    ``step(unet(x, timesteps=k), k, x)``) from the same prior, and the DDIM view of a DDIM model is untouched."""
    from monai.networks.nets import DiffusionModelUNet
    from test_monai import NETWORK

    torch.manual_seed(0)
    unet = DiffusionModelUNet(**NETWORK).eval()
    model = MonaiModel(unet, DDIMScheduler(num_train_timesteps=100), image_size=8).with_scheduler("unipc")
    ours = model.sample(2, steps=8, generator=torch.Generator().manual_seed(3), progress=False).images
    scheduler = type(model.solver).from_config(model.solver.config)
    scheduler.set_timesteps(8)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for k in scheduler.timesteps:
            x = scheduler.step(unet(x, timesteps=torch.tensor([float(k)])), k, x).prev_sample
    assert torch.allclose(ours, x, atol=1e-5)


def test_latent_model_of_a_monai_network_under_dpm_hands_back_its_image():
    """LatentModel.with_scheduler delegates to its MONAI inner network: the latent point mass decodes to the image."""
    from safcore.generators.known_answer import SpaceToDepthAutoencoder
    from safcore.generators.latent_model import LatentModel, TensorAutoencoder

    image = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(1))
    ae, scale = SpaceToDepthAutoencoder(), 0.5
    z = scale * ae.encode((2 * image - 1).unsqueeze(0))[0]
    scheduler = DDPMScheduler(num_train_timesteps=100)
    inner = MonaiModel(MonaiPointMassDenoiser((z + 1) / 2, scheduler), scheduler, image_size=4)
    model = LatentModel(TensorAutoencoder(ae), inner, scale_factor=scale).with_scheduler("dpm")
    assert model.scheduler_name == "diffusers.DPMSolverMultistepScheduler[monai.DDPMScheduler]"
    t_vec = torch.tensor([1.0, 0.3])
    x0 = model.encode(torch.zeros(2, 1, 8, 8))
    out, nfe = model.reverse(model.diffuse(x0, t_vec, 10, torch.Generator().manual_seed(0)), t_vec, 10)
    full = model.diffusion.timesteps_from(1.0, 10)  # 99, 89, …, 20, 10: k(0.3) = 29 keeps 20 and 10
    assert nfe.tolist() == [10, 2] == [int((full <= model.diffusion.timestep(t)).sum()) for t in (1.0, 0.3)]
    assert (model.decode(out) - (2 * image - 1)).abs().max() < 1e-4


# ------------------------------------------------------------------------------------------------
# the command line: --scheduler dpm --steps N, the report's sampler lines, refusals
# ------------------------------------------------------------------------------------------------


def _audit(model, fingerprint, data_root, out, *extra) -> list[str]:  # noqa: F811
    return ["audit", "--model", str(model), "--fingerprint", str(fingerprint), "--profile", "smoke", "--n", "8",
            "--device", "cpu", "--data-root", str(data_root), "--out", str(out), "--no-progress", *extra]


def test_cli_dpm_on_a_diffusers_model_is_the_python_api_s(fingerprint, data_root, tmp_path, capsys):  # noqa: F811
    from safcore.study import Study

    pipe = tmp_path / "pipe"
    _train_ddpm(fingerprint, pipe, steps=2)
    out = tmp_path / "report"
    code = main(_audit(pipe, fingerprint, data_root, out, "--scheduler", "dpm", "--steps", "10", "--probe",
                       "--spread", "0"))
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sampler"] == {"method": "DPMSolverMultistepScheduler", "steps": 10, "nfe_per_sample": 10,
                                  "probe_method": "DPMSolverMultistepScheduler", "probe_steps_full": 10,
                                  "probe_nfe_per_full_run": 10}
    report = (out / "report.md").read_text()
    assert "Sampler of the audit's samples: DPMSolverMultistepScheduler, 10 steps, NFE 10 per sample." in report
    assert ("t' probe (Algorithm 1): DPMSolverMultistepScheduler, 10 steps per full run (NFE 10 per run from t = 1"
            in report and f"NFE {summary['nfe']:,} in all." in report)
    model = load_model(pipe).with_scheduler("dpm")
    study = Study.from_fingerprint(fingerprint, model=model, profile="smoke", data_root=data_root, progress=False,
                                   device="cpu", sample_steps=10)
    row = json.loads(json.dumps(study.audit(8).to_row()))
    assert all(_same(summary["audit"][k], v) for k, v in row.items()), (summary["audit"], row)
    probe = study.probe()
    assert summary["t_prime"] == probe.t_prime and summary["nfe"] == probe.nfe
    assert probe.config.steps_full == 10  # the probe ran the solver's 10-step grid, not the profile's 50


@pytest.mark.parametrize("extra, expected", [
    (("--scheduler", "heun"), "argument --scheduler: invalid choice: 'heun'"),
    (("--sampler", "dpm2m"), "--sampler / --sample-steps apply to a safcore SDE model"),
])
def test_cli_refuses_a_bad_solver_in_one_line(extra, expected, fingerprint, data_root, tmp_path, capsys):  # noqa: F811
    pipe = tmp_path / "pipe"
    _train_ddpm(fingerprint, pipe, steps=1)
    out = tmp_path / "out"
    try:
        code = main(_audit(pipe, fingerprint, data_root, out, *extra))
    except SystemExit as usage:  # argparse's usage error: one line, exit code 2
        code = usage.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert not out.exists()


def test_cli_dpm_on_a_monai_folder_is_the_python_api_s(fingerprint, data_root, tmp_path, capsys):  # noqa: F811
    from safcore.study import Study

    plain = _save_plain(_train_monai(fingerprint, steps=2), tmp_path / "plain")
    out = tmp_path / "report"
    assert main(_audit(plain, fingerprint, data_root, out, "--scheduler", "dpm", "--steps", "10")) == 0, \
        capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    name = "diffusers.DPMSolverMultistepScheduler[monai.DDPMScheduler]"
    assert summary["sampler"]["method"] == name and summary["sampler"]["nfe_per_sample"] == 10
    assert name in summary["model"] and f"Sampler of the audit's samples: {name}, 10 steps, NFE 10" in \
        (out / "report.md").read_text()
    study = Study.from_fingerprint(fingerprint, model=load_model(plain).with_scheduler("dpm"), profile="smoke",
                                   data_root=data_root, progress=False, device="cpu", sample_steps=10)
    row = json.loads(json.dumps(study.audit(8).to_row()))
    assert all(_same(summary["audit"][k], v) for k, v in row.items()), (summary["audit"], row)


@pytest.mark.parametrize("method, steps, nfe, probe_nfe", [("ode", 50, "adaptive", "adaptive"), ("pc", 30, 60, 60),
                                                          ("dpm2m", 20, 20, 20)])
def test_report_names_an_sde_model_s_sampler_and_its_nfe(method, steps, nfe, probe_nfe, data_root):
    """The report's sampler entry for safcore's own SDE model (no stage runs): the ODE's NFE is said to be adaptive,
    never null; PC counts its corrector step; the probe runs the profile's method and steps."""
    from safcore.probe import ProbeResult
    from safcore.study import Study
    from safcore.study.profiles import SMOKE
    from safcore.study.report import _sampler, _sampler_lines

    study = Study("breastmnist", 8, profile=SMOKE.with_sampler(method, steps), data_root=data_root, progress=False)
    got = _sampler(study)
    assert got == {"method": method, "steps": steps, "nfe_per_sample": nfe, "probe_method": method,
                   "probe_steps_full": steps, "probe_nfe_per_full_run": probe_nfe}
    probe = type("Probed", (), {"nfe": 1234})()  # only its total NFE is read
    lines = _sampler_lines(got, probe)
    assert lines[0] == f"Sampler of the audit's samples: {method}, {steps} steps, NFE {nfe} per sample."
    assert lines[1].startswith(f"t' probe (Algorithm 1): {method}, {steps} steps per full run (NFE {probe_nfe} per run")
    assert lines[1].endswith("NFE 1,234 in all.") and _sampler_lines(None, None) == []
    assert isinstance(ProbeResult.nfe, property)  # what the report reads of a real result


def _bench(name: str):
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bench_scale_projects_the_fast_solver_beside_today_s():
    """The paper profile's NFE: EM 1000 steps per sample and M · Σ_t steps_for(t) per exhaustive probe, beside
    DPM-Solver++ at 20 steps (its probe: the λ tails); the same seconds per evaluation, so time scales with NFE."""
    from safcore.generators.base import steps_for
    from safcore.generators.sde import SubVPSDE
    from safcore.generators.solvers import logsnr_steps
    from safcore.study.profiles import get_profile

    bench = _bench("bench_scale")
    probe = get_profile("paper").probe
    probe = dataclasses.replace(probe, method="euler_maruyama", steps_full=1000)  # the reference it is projected beside
    ref, fast = bench.solver_setting("euler_maruyama", 1000), bench.solver_setting("dpm2m", 20)
    assert ref.sample_nfe == 1000 and ref.probe_nfe == probe.nfe_exhaustive == probe.M * sum(
        steps_for(t, 1000, probe.eps) for t in probe.grid)
    assert fast.sample_nfe == 20 and fast.probe_nfe == probe.M * sum(logsnr_steps(SubVPSDE(), t, 20, probe.eps)
                                                                     for t in probe.grid)
    assert fast.probe_nfe <= 0.1 * ref.probe_nfe
    lines = bench.solver_lines(0.5, 16, "dpm2m", 20)
    assert lines[-1].startswith(f"  ratio today / fast: audit 50.0x, exhaustive probe {ref.probe_nfe / fast.probe_nfe:.1f}x")
    assert "euler_maruyama 1000 steps" in lines[2] and "dpm2m 20 steps" in lines[3]


def test_bench_solvers_stops_before_a_stage_would_train(tmp_path, data_root, monkeypatch):
    from safcore.runtime.runs import RunStore
    from safcore.study import Study

    monkeypatch.delenv("SAFCORE_BENCH_TRAIN", raising=False)
    bench = _bench("bench_solvers")
    study = Study("breastmnist", 16, profile="cpu", data_root=data_root, store=RunStore(tmp_path), progress=False)
    with pytest.raises(SystemExit, match="score_model, c_p, c_id not in the run store"):
        bench._check_trained(study)
