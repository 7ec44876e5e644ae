"""safcore.generators.train: DSM loss falls, resume is bit-identical, checkpoints are pickle-free safetensors."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from safcore.generators.score_model import ScoreModel
from safcore.generators.checkpoints import kept_path, latest_checkpoint, load_kept
from safcore.generators.train import TrainConfig, Trainer, train

from conftest import half_images


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads; on a shared 2-core machine they lose ~30× to spinning."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(**changes) -> TrainConfig:
    base = TrainConfig(preset="tiny", steps=10, batch_size=4, lr=2e-3, warmup_steps=2, checkpoint_every=3,
                       keep_steps=(5, 10), ema_decay=0.9, seed=0, device="cpu")
    return dataclasses.replace(base, **changes)


def _params(model: ScoreModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_loss_finite_and_falling(tmp_path):
    images = half_images()
    config = _config(steps=40, batch_size=8, checkpoint_every=40, keep_steps=())
    # A fixed evaluation batch: the same (x0, t, z) before and after training.
    probe = Trainer(images, config)
    g = torch.Generator().manual_seed(123)
    x0 = probe.data[torch.arange(16) % 4]
    t = torch.rand(16, generator=g) * 0.98 + 0.01
    z = torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        before = probe.loss(x0, t, z).item()
    result = train(images, config, tmp_path, progress=False)
    assert len(result.losses) == 40 and all(math.isfinite(v) for v in result.losses)
    assert abs(result.losses[0] - 1.0) < 0.5  # an untrained ε-network has loss ≈ E‖z‖²/D = 1
    probe.model.load_state_dict(result.model.state_dict())  # EMA weights (decay 0.9)
    with torch.no_grad():
        after = probe.loss(x0, t, z).item()
    assert after < 0.7 * before, (before, after)
    assert sum(result.losses[-10:]) / 10 < sum(result.losses[:10]) / 10
    assert result.steps_done == 40 and result.resumed_from == 0 and result.seconds_per_step > 0


PINNED_FIRST_LOSS = 1.27334  # seed 0, tiny preset, fp32 on CPU (torch 2.14.1, diffusers 0.42.1)


def test_bf16_autocast_trains_and_differs_from_fp32(tmp_path):
    config = _config(steps=3, keep_steps=(), checkpoint_every=3)
    fp32 = train(half_images(), config, tmp_path / "fp32", progress=False)
    bf16 = train(half_images(), dataclasses.replace(config, bf16=True), tmp_path / "bf16", progress=False)
    assert all(math.isfinite(v) for v in bf16.losses)
    assert abs(bf16.losses[0] - fp32.losses[0]) < 0.05 and bf16.losses[0] != fp32.losses[0]
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())


def test_first_loss_is_pinned(tmp_path):
    """Seed 0 fixes the initial weights and the first (idx, t, z) draw: the first loss is a known number."""
    result = train(half_images(), _config(steps=1, keep_steps=(), checkpoint_every=1), tmp_path, progress=False)
    assert abs(result.losses[0] - PINNED_FIRST_LOSS) < 1e-4, result.losses[0]


def test_resume_after_crash_is_bit_identical(tmp_path):
    images, config = half_images(), _config()
    full = train(images, config, tmp_path / "full", progress=False)
    crashed = train(images, config, tmp_path / "resumed", progress=False, stop_after=7)
    assert crashed.steps_done == 7
    assert latest_checkpoint(tmp_path / "resumed").name == "checkpoint_step000006.safetensors"
    resumed = train(images, config, tmp_path / "resumed", progress=False)
    assert resumed.resumed_from == 6 and resumed.steps_done == 10
    a, b = _params(full.model), _params(resumed.model)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert full.losses == resumed.losses
    # the raw (non-EMA) weights and Adam moments in the final checkpoints agree too
    ca = load_file(latest_checkpoint(tmp_path / "full"))
    cb = load_file(latest_checkpoint(tmp_path / "resumed"))
    assert ca.keys() == cb.keys()
    for key in ca:
        if key != "rng.torch":  # the global RNG is not used by training; only restored
            assert torch.equal(ca[key], cb[key]), key


def test_finished_run_is_reused_without_training(tmp_path):
    images, config = half_images(), _config(steps=3, keep_steps=())
    first = train(images, config, tmp_path, progress=False)
    again = train(images, config, tmp_path, progress=False)
    assert again.resumed_from == 3 and again.steps_done == 3 and math.isnan(again.seconds_per_step)
    for name, value in _params(first.model).items():
        assert torch.equal(value, _params(again.model)[name])


def test_checkpoints_are_pickle_free_safetensors(tmp_path):
    train(half_images(), _config(), tmp_path, progress=False)
    files = sorted(p.name for p in tmp_path.iterdir())
    # the final checkpoint and the previous one (kept as the fallback, tests/test_checkpoints.py)
    assert files == ["checkpoint_step000009.safetensors", "checkpoint_step000010.safetensors",
                     "ema_step000005.safetensors", "ema_step000010.safetensors"]
    path = latest_checkpoint(tmp_path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        keys = set(handle.keys())
    assert metadata["format"] == "safcore-train-checkpoint/1" and metadata["step"] == "10"
    assert metadata["sde"] == "SubVPSDE(beta_min=0.1, beta_max=20.0)" and metadata["device_type"] == "cpu"
    assert len(metadata["tensors_sha256"]) == 64
    assert json.loads(metadata["config"])["preset"] == "tiny"
    groups = json.loads(metadata["param_groups"])
    assert groups[0]["lr"] == pytest.approx(2e-3) and groups[0]["betas"] == [0.9, 0.999]
    assert {"rng.generator", "rng.torch", "losses"} <= keys
    assert any(k.startswith("model.unet.") for k in keys) and any(k.startswith("ema.unet.") for k in keys)
    assert any(k.endswith(".exp_avg_sq") for k in keys) and any(k.startswith("optim.0.step") for k in keys)
    raw = path.read_bytes()
    assert b"\x80\x04" not in raw[:8 + int.from_bytes(raw[:8], "little")]  # header is JSON, no pickle opcode


def test_kept_steps_load_as_score_models(tmp_path):
    result = train(half_images(), _config(), tmp_path, progress=False)
    assert sorted(result.kept) == [5, 10]
    assert all(p.is_file() for p in result.kept.values())
    final = load_kept(tmp_path, 10)
    assert isinstance(final, ScoreModel) and not final.training
    for name, value in _params(result.model).items():
        assert torch.equal(value, _params(final)[name]), name
    early = load_kept(kept_path(tmp_path, 5), 5)
    assert not torch.equal(next(early.parameters()), next(final.parameters()))
    x = torch.zeros(2, 1, 28, 28)
    assert early(x, torch.full((2,), 0.5)).shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="kept steps: \\[5, 10\\]"):
        load_kept(tmp_path, 7)
    with pytest.raises(ValueError, match="not the requested step 10"):
        load_kept(kept_path(tmp_path, 5), 10)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"steps": 0}, "steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": -1.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"grad_clip": -0.5}, "grad_clip"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"eps": 0.0}, "eps"),
        ({"eps": 1.5}, "eps"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"checkpoint_every": 0}, "checkpoint_every"),
        ({"keep_steps": (0,)}, "keep_steps"),
        ({"keep_steps": (11,)}, "keep_steps"),
        ({"keep_steps": [5]}, "keep_steps"),
        ({"keep_steps": (5, 5)}, "duplicates"),
        ({"device": "tpu"}, "device"),
        ({"bf16": 1}, "bf16"),
        ({"steps": 2.5}, "steps"),
    ],
)
def test_bad_config_raises(changes, message):
    with pytest.raises(ValueError, match=message):
        _config(**changes)


def test_bad_inputs_raise(tmp_path):
    with pytest.raises(ValueError, match="unknown U-Net preset; allowed: 'tiny', 'small', 'paper'"):
        Trainer(half_images(), _config(preset="huge"))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Trainer(half_images() * 2 - 1, _config())
    with pytest.raises(ValueError, match="shape"):
        Trainer(torch.rand(1, 28, 28), _config())
    with pytest.raises(ValueError, match="stop_after"):
        train(half_images(), _config(), tmp_path, progress=False, stop_after=11)


def test_resume_refuses_another_configuration_or_data(tmp_path):
    images, config = half_images(), _config(steps=3, keep_steps=(), checkpoint_every=1)
    train(images, config, tmp_path, progress=False)
    with pytest.raises(ValueError, match="lr: saved 0.002 vs now 0.001"):
        train(images, dataclasses.replace(config, lr=1e-3, steps=4), tmp_path, progress=False)
    with pytest.raises(ValueError, match="other training images"):
        train(images.flip(-1), dataclasses.replace(config, steps=4), tmp_path, progress=False)
    with pytest.raises(ValueError, match="beyond steps=2"):
        train(images, dataclasses.replace(config, steps=2), tmp_path, progress=False)
    longer = train(images, dataclasses.replace(config, steps=4), tmp_path, progress=False)  # training on is allowed
    assert longer.resumed_from == 3 and longer.steps_done == 4


def test_rgb_models_get_the_mean_head_grey_and_dp_models_do_not(tmp_path, data_root):
    """RGB data trains ε̂ = U-Net + the channel-mean posterior (issue 21); grey keeps the plain U-Net (and the run
    keys it always had); DP-SGD never gets it (its prior is a statistic of D_p outside the accountant)."""
    from safcore.defences import DPSGD
    from safcore.study import Study

    config = TrainConfig(preset="tiny", steps=2, batch_size=4, checkpoint_every=2, keep_steps=(2,), device="cpu")
    rgb = torch.rand(4, 3, 28, 28)
    result = train(rgb, config, tmp_path / "rgb", progress=False)
    assert result.model.mean_prior is not None and load_kept(tmp_path / "rgb", 2).mean_prior == result.model.mean_prior
    expected = (rgb * 2 - 1).mean((2, 3)).mean(0)
    assert torch.allclose(torch.tensor(result.model.mean_prior.mean, dtype=torch.float64), expected.double(), atol=1e-6)
    assert train(rgb.mean(1, keepdim=True), config, tmp_path / "grey", progress=False).model.mean_prior is None
    off = dataclasses.replace(config, mean_head=False)
    assert train(rgb, off, tmp_path / "off", progress=False).model.mean_prior is None
    assert "mean_head" not in config.to_dict() and off.to_dict()["mean_head"] is False
    retina = Study("retinamnist", 8, profile="smoke", data_root=data_root, progress=False)
    breast = Study("breastmnist", 8, profile="smoke", data_root=data_root, progress=False)
    assert retina.model_config()["train"]["mean_head"] is True and "mean_head" not in breast.model_config()["train"]
    private = Study("retinamnist", 8, profile="smoke", data_root=data_root, progress=False, defence=DPSGD(epsilon=1.0))
    assert private.train_config.mean_head is False and "mean_head" not in private.model_config()["train"]


def test_cpu_bf16_training_runs_attention_through_the_math_kernel(tmp_path, monkeypatch):
    """Under bf16 autocast on a CPU a training step's attention runs PyTorch's math kernel (the flash kernel's
    backward is the slow part there: benchmarks/bench_training.py); fp32 keeps PyTorch's own dispatch. Both give the
    same first loss as the default kernel to bf16 rounding."""
    import safcore.generators.train as train_module
    from safcore.runtime.device import bf16_supported, training_attention_kernel

    if not bf16_supported("cpu"):
        pytest.skip("this CPU has no native bf16")
    assert training_attention_kernel("cpu", True) == "math"
    assert training_attention_kernel("cpu", False) == "default"
    assert training_attention_kernel(torch.device("cuda"), True) == "default"  # a GPU keeps flash attention

    seen: list[bool] = []
    original = train_module.Trainer.eps_hat

    def spy(self, xt, t):  # is the fused flash kernel allowed while the network runs?
        seen.append(torch.backends.cuda.flash_sdp_enabled())
        return original(self, xt, t)

    monkeypatch.setattr(train_module.Trainer, "eps_hat", spy)
    config = _config(steps=1, keep_steps=(), checkpoint_every=1, bf16=True)
    math_kernel = train(half_images(), config, tmp_path / "math", progress=False)
    fp32 = train(half_images(), dataclasses.replace(config, bf16=False), tmp_path / "fp32", progress=False)
    assert seen == [False, True]
    monkeypatch.setattr(train_module, "training_attention", lambda device, bf16: contextlib.nullcontext())
    default = train(half_images(), config, tmp_path / "default", progress=False)
    assert seen == [False, True, True]
    assert abs(math_kernel.losses[0] - default.losses[0]) < 0.02 and abs(math_kernel.losses[0] - fp32.losses[0]) < 0.05
