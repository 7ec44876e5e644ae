"""Defences (issue 13): CADP's per-image mechanism and INN, DP-SGD with Opacus, and the study option."""

from __future__ import annotations

import functools
import math
import warnings

import pytest
import torch
from scipy.stats import norm

from safcore.defences import CADP, DPSGD, INNConfig
from safcore.defences.cadp import ConditionalINN, one_hot, privatize, train_inn
from safcore.defences.dpsgd import DPTrainer, dp_train_config
from safcore.defences.mechanisms import (classical_gaussian_sigma, clip_per_image, gaussian_sigma, laplace_scale,
                                         perturb)
from safcore.generators.score_model import ScoreModel, build_unet
from safcore.runtime.runs import config_key
from safcore.generators.sde import SubVPSDE
from safcore.generators.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_INN = INNConfig(depths=(1, 1), width=8, fc_blocks=1, fc_width=32, steps=30, batch_size=16)


def _images(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand((n, 1, 28, 28), generator=g)
    labels = one_hot(torch.arange(n).remainder(2)[:, None], 2)
    return images, labels


@pytest.fixture(scope="module")
def inn() -> ConditionalINN:
    images, labels = _images(32)
    model, record = train_inn(images, labels, TINY_INN, progress=False)
    assert math.isfinite(record["nll_per_dim_nats"]) and record["n_images"] == 32
    return model


# ---------------------------------------------------------------- the mechanisms
def test_clipping_is_per_image_not_per_batch():
    z = torch.randn(4, 50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    big = z.clone()
    big[3] *= 1e4  # one image far outside: CADP's batch-wide matrix norm would shrink every row
    for norm_ord, bound in ((1, 20.0), (2, 5.0)):
        clipped, was = clip_per_image(z, bound, norm_ord)
        clipped_big, was_big = clip_per_image(big, bound, norm_ord)
        assert torch.equal(clipped[:3], clipped_big[:3]) and torch.equal(was[:3], was_big[:3])
        assert torch.linalg.vector_norm(clipped, ord=norm_ord, dim=1).max() <= bound * (1 + 1e-12)
        inside = torch.linalg.vector_norm(z, ord=norm_ord, dim=1) <= bound
        assert torch.equal(clipped[inside], z[inside]) and torch.equal(was, ~inside)
        assert float(torch.linalg.vector_norm(clipped_big[3], ord=norm_ord)) == pytest.approx(bound)
    for mechanism in ("laplace", "gaussian"):
        out, _, _ = perturb(z, epsilon=1.0, mechanism=mechanism, bound=5.0, delta=1e-5,
                            generator=torch.Generator().manual_seed(1))
        out_big, _, _ = perturb(big, epsilon=1.0, mechanism=mechanism, bound=5.0, delta=1e-5,
                                generator=torch.Generator().manual_seed(1))
        assert torch.equal(out[:3], out_big[:3])


def test_one_large_image_does_not_change_the_others_privatized_outputs(inn):
    images, labels = _images(5)
    changed = images.clone()
    changed[4] = 1.0  # an all-white image: its latent is far from the others'
    for defence in (CADP(epsilon=1.0), CADP(epsilon=1.0, mechanism="gaussian"), CADP(epsilon=5.0, clip=3.0)):
        a = privatize(inn, images, labels, defence, generator=torch.Generator().manual_seed(3))
        b = privatize(inn, changed, labels, defence, generator=torch.Generator().manual_seed(3))
        assert torch.equal(a.images[:4], b.images[:4])
        assert not torch.equal(a.images[4], b.images[4])


def test_laplace_noise_has_scale_2c_over_epsilon():
    epsilon, bound = 2.0, 10.0
    b = laplace_scale(epsilon, bound)
    assert b == 2 * bound / epsilon
    z = torch.zeros(400, 500, dtype=torch.float64)  # inside the ball: the output is the noise
    out, was, scale = perturb(z, epsilon=epsilon, mechanism="laplace", bound=bound, generator=torch.Generator().manual_seed(0))
    assert scale == b and not was.any()
    # Laplace(b): E|X| = b, Var X = 2 b²; 200 000 draws → relative errors ~0.3 %
    assert float(out.abs().mean()) == pytest.approx(b, rel=0.01)
    assert float(out.std()) == pytest.approx(math.sqrt(2) * b, rel=0.01)
    assert abs(float(out.mean())) < 0.02 * b


def _delta_of_gdp(mu: float, epsilon: float) -> float:
    """δ(ε) of μ-GDP (Dong, Roth & Su 2019, Corollary 2.13) — the Gaussian mechanism with μ = Δ/σ."""
    return norm.cdf(-epsilon / mu + mu / 2) - math.exp(epsilon) * norm.cdf(-epsilon / mu - mu / 2)


@pytest.mark.parametrize("epsilon,delta", [(0.1, 1e-5), (1.0, 1e-5), (10.0, 1e-6), (1.0, 0.01)])
def test_gaussian_sigma_is_the_smallest_that_meets_delta(epsilon, delta):
    bound = 3.0
    sigma = gaussian_sigma(epsilon, delta, bound)
    sensitivity = 2 * bound
    assert _delta_of_gdp(sensitivity / sigma, epsilon) == pytest.approx(delta, rel=1e-6)
    assert _delta_of_gdp(sensitivity / (0.99 * sigma), epsilon) > delta  # smaller σ breaks δ
    if epsilon < 1:  # the analytic calibration never needs more noise than the classical one
        assert sigma < classical_gaussian_sigma(epsilon, delta, bound)
    z = torch.zeros(400, 500, dtype=torch.float64)
    out, _, scale = perturb(z, epsilon=epsilon, mechanism="gaussian", bound=bound, delta=delta,
                            generator=torch.Generator().manual_seed(0))
    assert scale == sigma and float(out.std()) == pytest.approx(sigma, rel=0.01)


def test_epsilon_inf_is_the_inn_round_trip(inn):
    images, labels = _images(6)
    result = privatize(inn, images, labels, CADP(epsilon=math.inf))
    z, _ = inn.encode(images, labels)
    round_trip = inn.decode(z, labels).clamp(0, 1)
    assert result.scale == 0.0 and not result.clipped.any()
    torch.testing.assert_close(result.images, round_trip, rtol=0, atol=1e-6)
    torch.testing.assert_close(result.images, images, rtol=0, atol=1e-4)  # the INN is invertible
    # the label conditions the decoding: the same latent with the other label is another image
    other = one_hot(1 - labels.argmax(1, keepdim=True), 2)
    assert (inn.decode(z, other) - round_trip).abs().max() > 1e-3


def test_small_epsilon_destroys_the_image_and_clips(inn):
    images, labels = _images(6)
    noisy = privatize(inn, images, labels, CADP(epsilon=0.1), generator=torch.Generator().manual_seed(0))
    assert noisy.images.shape == images.shape and 0 <= noisy.images.min() and noisy.images.max() <= 1
    assert (noisy.images - images).abs().mean() > 0.2


@pytest.mark.parametrize("make,match", [
    (lambda: CADP(epsilon=0), "CADP.epsilon = 0"),
    (lambda: CADP(epsilon=-1.0), "CADP.epsilon = -1.0"),
    (lambda: CADP(epsilon=float("nan")), "CADP.epsilon = nan"),
    (lambda: CADP(epsilon="1"), "CADP.epsilon = '1'"),
    (lambda: CADP(epsilon=1.0, mechanism="gaussian", delta=0.0), r"CADP.delta = 0.0; allowed: a number in \(0, 1\)"),
    (lambda: CADP(epsilon=1.0, delta=1.0), "CADP.delta = 1.0"),
    (lambda: CADP(epsilon=1.0, delta=float("nan")), "CADP.delta = nan"),
    (lambda: CADP(epsilon=1.0, clip=0.0), "CADP.clip = 0.0; allowed: a finite number > 0"),
    (lambda: CADP(epsilon=1.0, clip=-2.0), "CADP.clip = -2.0"),
    (lambda: CADP(epsilon=1.0, mechanism="exponential"), "CADP.mechanism = 'exponential'"),
    (lambda: DPSGD(epsilon=0.0), "DPSGD.epsilon = 0.0"),
    (lambda: DPSGD(epsilon=float("nan")), "DPSGD.epsilon = nan"),
    (lambda: DPSGD(epsilon=1.0, delta=1.5), "DPSGD.delta = 1.5"),
    (lambda: DPSGD(epsilon=1.0, delta=0), "DPSGD.delta = 0"),
    (lambda: DPSGD(epsilon=1.0, max_grad_norm=0.0), "DPSGD.max_grad_norm = 0.0"),
    (lambda: DPSGD(epsilon=1.0, accountant="gdp"), "DPSGD.accountant = 'gdp'"),
    (lambda: gaussian_sigma(1.0, 1e-5, -1.0), "clip = -1.0"),
])
def test_bad_settings_raise_one_clear_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ---------------------------------------------------------------- DP-SGD
@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_every_unet_parameter_gets_a_per_sample_gradient(preset):
    from safcore.defences.dpsgd import PerSampleGradients

    torch.manual_seed(0)
    model = ScoreModel(build_unet(preset, channels=1, image_size=28), SubVPSDE())
    PerSampleGradients(model, batch_first=True, loss_reduction="mean", strict=True)
    x, t = torch.randn(3, 1, 28, 28), torch.rand(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.eps(x, t).pow(2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad_sample is not None, name
        # per-sample gradients of a mean loss: their average is the batch gradient
        torch.testing.assert_close(p.grad_sample.mean(0), p.grad, rtol=1e-3, atol=1e-6, msg=name)
    # and each is the gradient of that image alone
    first = ScoreModel(build_unet(preset, channels=1, image_size=28), SubVPSDE())
    first.load_state_dict(model.state_dict())
    first.eps(x[:1], t[:1]).pow(2).mean().backward()
    for (name, p), q in zip(model.named_parameters(), first.parameters()):
        torch.testing.assert_close(p.grad_sample[0], q.grad, rtol=1e-3, atol=1e-6, msg=name)


def test_opacus_own_conv_sampler_loses_non_contiguous_inputs():
    """Why PerSampleGradients exists: with a channels-last input Opacus' Conv2d sampler is wrong. If this
    test fails, Opacus fixed it and the subclass can go."""
    from opacus import GradSampleModule

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    GradSampleModule(conv)
    x = torch.randn(2, 4, 7, 7).contiguous(memory_format=torch.channels_last)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        conv(x).pow(2).mean().backward()
    assert not torch.allclose(conv.weight.grad_sample.mean(0), conv.weight.grad, atol=1e-6)


def _dp_config(steps: int = 40, batch: int = 4) -> TrainConfig:
    return TrainConfig(preset="tiny", steps=steps, batch_size=batch, lr=1e-3, warmup_steps=5, checkpoint_every=10,
                       keep_steps=(min(20, steps),), bf16=True)


@pytest.mark.parametrize("epsilon", [1.0, 8.0])
def test_accountant_reports_the_target_epsilon_after_training(tmp_path, epsilon):
    images, _ = _images(8)
    dp = DPSGD(epsilon=epsilon)
    config = dp_train_config(_dp_config(), dp, n_dataset=8)
    assert config.batch_size == 4 and not config.bf16 and config.grad_clip == 0
    result = train(images, config, tmp_path, progress=False, make_trainer=functools.partial(DPTrainer, dp=dp))
    record = result.record
    assert record["epsilon"] == pytest.approx(epsilon, rel=0.05) and record["epsilon"] <= epsilon
    assert record["delta"] == 1 / 64 and record["sample_rate"] == 0.5 and record["steps"] == 40
    assert record["noise_multiplier"] > 0


def test_dp_training_resumes_bit_identically_with_its_accountant(tmp_path):
    images, _ = _images(8)
    dp = DPSGD(epsilon=2.0)
    config = dp_train_config(_dp_config(steps=30), dp, n_dataset=8)
    make = functools.partial(DPTrainer, dp=dp)
    whole = train(images, config, tmp_path / "a", progress=False, make_trainer=make)
    train(images, config, tmp_path / "b", progress=False, make_trainer=make, stop_after=15)
    resumed = train(images, config, tmp_path / "b", progress=False, make_trainer=make)
    assert resumed.resumed_from == 10
    for p, q in zip(whole.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    assert resumed.record == whole.record
    # a checkpoint of other DP settings, or of plain training, is refused
    other = DPSGD(epsilon=5.0)
    with pytest.raises(ValueError, match="other DP-SGD settings"):
        train(images, dp_train_config(_dp_config(steps=40), other, 8), tmp_path / "b", progress=False,
              make_trainer=functools.partial(DPTrainer, dp=other))


def test_dp_without_noise_clips_only_and_refuses_bad_settings(tmp_path):
    images, _ = _images(8)
    dp = DPSGD(epsilon=math.inf)
    result = train(images, dp_train_config(_dp_config(steps=10), dp, 8), tmp_path, progress=False,
                   make_trainer=functools.partial(DPTrainer, dp=dp))
    assert result.record["epsilon"] == "inf" and result.record["noise_multiplier"] == 0.0
    with pytest.raises(ValueError, match="exceeds N_D = 8"):
        dp_train_config(_dp_config(), DPSGD(epsilon=1.0, batch_size=9), 8)
    with pytest.raises(ValueError, match="dp_train_config"):
        DPTrainer(images, _dp_config(), dp=dp)  # bf16 / global clipping are not DP-SGD's settings


# ---------------------------------------------------------------- the study option
def test_every_defence_setting_has_its_own_run_key(data_root, run_store):
    from safcore.study import Study

    defences = [None, CADP(), CADP(epsilon=10.0), CADP(epsilon=1.0), CADP(epsilon=0.1), CADP(epsilon=1.0, mechanism="gaussian"),
                CADP(epsilon=1.0, mechanism="gaussian", delta=1e-3), CADP(epsilon=1.0, clip=5.0), CADP(epsilon=1.0, seed=1),
                CADP(epsilon=1.0, inn=TINY_INN), DPSGD(), DPSGD(epsilon=10.0), DPSGD(epsilon=1.0),
                DPSGD(epsilon=1.0, delta=1e-3), DPSGD(epsilon=1.0, max_grad_norm=0.5), DPSGD(epsilon=1.0, accountant="prv")]
    studies = [Study("breastmnist", 8, profile="smoke", data_root=data_root, store=run_store, defence=d) for d in defences]
    keys = [config_key(s.model_config()) for s in studies]
    assert len(set(keys)) == len(keys)
    plain = studies[0].model_config()
    assert "defence" not in plain  # an undefended study keeps the key it always had
    # the samples and probe of a defended model are other runs; the attacker's classifiers are shared
    assert config_key(studies[3].classifier_config("c_id")) == config_key(studies[0].classifier_config("c_id"))
    assert studies[11].train_config.batch_size == 8 and studies[11].train_config.bf16 is False
    with pytest.raises(ValueError, match="defence = 'cadp'; allowed: None"):
        Study("breastmnist", 8, profile="smoke", data_root=data_root, store=run_store, defence="cadp")


def test_cadp_study_trains_on_privatized_images_and_keeps_the_attackers(data_root, run_store):
    from safcore.study import Study

    study = Study("breastmnist", 8, profile="smoke", data_root=data_root, store=run_store, progress=False,
                  defence=CADP(epsilon=math.inf))
    inn, record = study.cadp_inn()
    assert record["n_images"] == 546 - 8  # the INN never saw D_p (x_p, x_i or any other image of it)
    private = study.privatized()
    torch.testing.assert_close(private.images, study.private.images, rtol=0, atol=2e-4)  # ε = ∞: round trip
    assert torch.equal(study.training_images(), private.images)
    noisy = Study("breastmnist", 8, profile="smoke", data_root=data_root, store=run_store, progress=False,
                  defence=CADP(epsilon=1.0))
    assert noisy.cadp_inn()[1] == record  # one INN for every ε
    x_p = noisy.private.index
    assert (noisy.privatized().images[x_p] - noisy.private.x_p).abs().mean() > 0.1  # the SAF's image is changed
    with pytest.raises(ValueError, match="canary audit of a defended setting"):
        noisy.canary_audit()
    with pytest.raises(ValueError, match="privatized\\(\\) belongs to a study with defence=CADP"):
        Study("breastmnist", 8, profile="smoke", data_root=data_root, store=run_store).privatized()


# ------------------------------------------------------------------ utility's reference classifier


def test_the_utility_reference_is_trained_once_per_dp_and_shared_by_every_defence(data_root, run_store, monkeypatch):
    """The classifier trained on the real D_p depends on D_p alone: stored once, read back with the weights it was
    trained with, and reused (not retrained) by a study of the same D_p under a defence."""
    import safcore.measures.utility as utility_lib
    from safcore.data import datasets as data_lib
    from safcore.study import Study

    plain = Study("breastmnist", 8, profile="smoke", data_root=data_root, store=run_store, progress=False, device="cpu")
    stored = plain.utility_reference()
    task, n_outputs = data_lib.label_task(plain.data)
    _, chosen = data_lib.seeded_subset(plain.data.split("train"), 8, seed=0)
    fresh = utility_lib.train_label_classifier(plain.private.images, plain.data.labels("train")[chosen], task=task,
                                               n_outputs=n_outputs)
    for (name, a), (_, b) in zip(stored.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    test = plain.images("test")
    assert utility_lib.score(stored, test, plain.data.labels("test"), task=task) == utility_lib.score(
        fresh, test, plain.data.labels("test"), task=task)

    def no_training(*args, **kwargs):
        raise AssertionError("the reference classifier was trained again")

    monkeypatch.setattr(utility_lib, "train_label_classifier", no_training)
    defended = Study("breastmnist", 8, profile="smoke", data_root=data_root, store=run_store, progress=False,
                     device="cpu", defence=CADP(epsilon=1.0))
    again = defended.utility_reference()
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), stored.state_dict().values(), strict=True))
    other = Study("breastmnist", 8, profile="smoke", seed=1, data_root=data_root, store=run_store, progress=False)
    with pytest.raises(AssertionError, match="trained again"):  # another D_p has its own reference
        other.utility_reference()
