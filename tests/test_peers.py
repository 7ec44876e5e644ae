"""safcore.peers on models whose answers are known: membership inference, ROC numbers, extraction, Dar, Gu."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from safcore import peers
from safcore.known_answer import PointMassDenoiser, PointMixtureScore
from safcore.sde import VPSDE, GaussianDataScore, SubVPSDE

ATTACKS = (peers.loss_attack, peers.secmi_t_error, peers.pia_error)


pytestmark = pytest.mark.usefixtures("one_thread")


def _sets(n: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    members = torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64)
    nonmembers = torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64)
    others = torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64)
    return members, nonmembers, others


# ------------------------------------------------------------------ membership inference


@pytest.mark.parametrize("sde", [SubVPSDE(), VPSDE()], ids=["subvp", "vp"])
@pytest.mark.parametrize("attack", [peers.loss_attack, peers.pia_error], ids=["loss", "pia"])
def test_exact_memorizer_is_caught_with_auc_one(sde, attack):
    members, nonmembers, _ = _sets()
    memorizer = PointMixtureScore(sde, members)
    m, n = attack(memorizer, members), attack(memorizer, nonmembers)
    assert m.shape == (24,) and m.dtype == torch.float64
    assert float(m.max()) < float(n.min())  # every member's error below every non-member's
    summary = peers.roc_summary(m, n, n_bootstrap=200)
    assert summary.auc == 1.0 and summary.auc_interval == pytest.approx((1.0, 1.0), abs=1e-12)


def test_secmi_catches_the_exact_memorizer_under_vp():
    members, nonmembers, _ = _sets()
    memorizer = PointMixtureScore(VPSDE(), members)
    m, n = peers.secmi_t_error(memorizer, members), peers.secmi_t_error(memorizer, nonmembers)
    assert float(m.max()) < 1e-20  # DDIM inversion of a point mass is exact: forward-back returns x
    assert float(n.min()) > 1e-3
    assert peers.roc_auc(m, n) == 1.0


@pytest.mark.parametrize("sde", [SubVPSDE(), VPSDE()], ids=["subvp", "vp"])
def test_unseen_models_give_auc_near_one_half(sde):
    members, nonmembers, others = _sets()
    for model in (PointMixtureScore(sde, others), GaussianDataScore(sde, 0.0, 0.5)):
        for attack in ATTACKS:
            summary = peers.roc_summary(attack(model, members), attack(model, nonmembers), n_bootstrap=300, seed=1)
            lo, hi = summary.auc_interval
            assert lo <= 0.5 <= hi, (type(model).__name__, attack.__name__, summary)
            assert abs(summary.auc - 0.5) < 0.2


def test_ddim_step_is_exact_for_one_point_mass():
    """With one point c the exact ε̂ is constant along the probability-flow ODE: x_s = a_s c + σ_s ε."""
    sde = VPSDE()
    c = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    model = peers.as_eps_model(PointMixtureScore(sde, c))
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    t, s = 0.3, 0.05
    a_t, s_t = (float(v[0]) for v in model.coefficients(torch.tensor([t], dtype=torch.float64)))
    a_s, s_s = (float(v[0]) for v in model.coefficients(torch.tensor([s], dtype=torch.float64)))
    centre = c * 2 - 1
    eps = (x - a_t * centre) / s_t
    assert torch.allclose(peers.ddim_step(model, x, t, s), a_s * centre + s_s * eps, atol=1e-10)
    assert torch.allclose(peers.ddim_step(model, peers.ddim_step(model, x, t, s), s, t), x, atol=1e-10)


def test_attacks_use_the_same_seeded_draws():
    members, _, others = _sets(6)
    model = PointMixtureScore(SubVPSDE(), others)
    a = peers.loss_attack(model, members, seed=3)
    assert torch.equal(a, peers.loss_attack(model, members, seed=3))
    assert not torch.equal(a, peers.loss_attack(model, members, seed=4))
    # each image's statistic does not depend on its batch
    assert torch.allclose(peers.loss_attack(model, members[2:3], seed=3), a[2:3])
    assert torch.allclose(peers.pia_error(model, members, batch_size=2), peers.pia_error(model, members))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_diffusers_model_exact_denoiser(prediction_type):
    from diffusers import DDPMScheduler

    from safcore.schedulers import DiffusersModel

    g = torch.Generator().manual_seed(0)
    target, other = torch.rand(2, 1, 8, 8, generator=g)
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    model = DiffusersModel(PointMassDenoiser(target, scheduler), scheduler)
    images = torch.stack([target, other])
    for attack in (peers.loss_attack, peers.pia_error):
        err = attack(model, images)
        assert float(err[0]) < 1e-4 < float(err[1]), (attack.__name__, err)
    # the exact denoiser's DDIM inversion is exact: SecMI's error of the target is ~0
    err = peers.secmi_t_error(model, images)
    assert float(err[0]) < 1e-6


def test_as_eps_model_refuses_what_it_cannot_attack():
    with pytest.raises(ValueError, match="cannot attack a str; allowed"):
        peers.as_eps_model("model")
    members, _, _ = _sets(2)
    score = PointMixtureScore(VPSDE(), members)
    with pytest.raises(ValueError, match="t_sec=0.15 must be a multiple"):
        peers.secmi_t_error(score, members, t_sec=0.15, interval=0.1)
    with pytest.raises(ValueError, match=r"t=1.5; allowed: a time in \(0, 1\]"):
        peers.pia_error(score, members, t=1.5)
    with pytest.raises(ValueError, match=r"images must have shape \(N, C, H, W\)"):
        peers.loss_attack(score, members[0])


# ------------------------------------------------------------------ ROC numbers


def test_roc_known_values():
    assert peers.roc_auc([1, 2, 3], [4, 5, 6]) == 1.0
    assert peers.roc_auc([4, 5, 6], [1, 2, 3]) == 0.0
    assert peers.roc_auc([4, 5, 6], [1, 2, 3], member_if="higher") == 1.0
    assert peers.roc_auc([1, 1], [1, 1, 1]) == 0.5
    # one member below every non-member, one above: 1/2
    assert peers.roc_auc([0, 10], [5]) == 0.5


def test_tpr_at_fpr_known_values_and_unresolved_rates():
    members = [0.5] * 50 + [2.5] * 50
    nonmembers = [1.0, 2.0] + [3.0] * 98  # 100 non-members resolve 1 % but not 0.1 %
    assert peers.tpr_at_fpr(members, nonmembers, 0.01) == 0.5  # threshold 1.0: 1 false positive
    assert peers.tpr_at_fpr(members, nonmembers, 0.02) == 1.0  # threshold 2.5: 2 false positives
    assert peers.tpr_at_fpr(members, nonmembers, 0.001) is None
    assert peers.tpr_at_fpr(members, nonmembers[:99], 0.01) is None  # 99 < 1/0.01
    summary = peers.roc_summary(members, nonmembers, n_bootstrap=300)
    assert summary.tpr_at(0.01) == 0.5 and summary.tpr_at(0.001) is None
    assert summary.tpr_intervals[1] is None
    lo, hi = summary.tpr_intervals[0]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0
    assert "TPR@0.1%FPR —" in str(summary)
    with pytest.raises(ValueError, match="fpr=0.05 was not computed"):
        summary.tpr_at(0.05)


def test_roc_summary_is_seeded_and_json_ready():
    import json

    rng = np.random.default_rng(0)
    m, n = rng.normal(0.0, 1.0, 40), rng.normal(1.0, 1.0, 40)
    a = peers.roc_summary(m, n, n_bootstrap=200, seed=5)
    assert a == peers.roc_summary(m, n, n_bootstrap=200, seed=5)
    assert a.auc_interval != peers.roc_summary(m, n, n_bootstrap=200, seed=6).auc_interval
    lo, hi = a.auc_interval
    assert lo < a.auc < hi and a.auc > 0.6
    assert json.loads(json.dumps(a.to_dict()))["tprs"] == [None, None]  # 40 non-members resolve neither rate


def test_roc_refuses_bad_input():
    with pytest.raises(ValueError, match="member_if='low'; allowed: 'lower'"):
        peers.roc_auc([1], [2], member_if="low")
    with pytest.raises(ValueError, match="got 0 members and 1 non-members"):
        peers.roc_auc([], [2])
    with pytest.raises(ValueError, match="NaN or inf"):
        peers.roc_summary([math.nan], [1.0])
    with pytest.raises(ValueError, match=r"fpr=1.5; allowed: a rate in \(0, 1\)"):
        peers.tpr_at_fpr([1], [2], 1.5)


# ------------------------------------------------------------------ extraction, Dar, Gu


def test_distinct_extracted_counts_each_training_image_once():
    g = torch.Generator().manual_seed(1)
    train = torch.rand(6, 1, 8, 8, generator=g)
    unrelated = torch.rand(3, 1, 8, 8, generator=g)
    samples = torch.cat([train[[0]], train[[0]] + 1e-3, train[[2]], unrelated])
    assert peers.carlini_extracted(samples, train).tolist() == [0, 2]
    assert peers.distinct_extracted(samples, train) == 2
    assert peers.distinct_extracted(unrelated, train) == 0


def test_pearson_correlations_known_values():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    flat = torch.ones(1, 1, 2, 2)
    c = peers.pearson_correlations(x, torch.cat([2 * x + 1, -x, flat]))
    assert torch.allclose(c, torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64))


def test_dar_copies_known_answers():
    """Training and validation images share an anatomy (one pattern plus noise), so chance correlations are
    high; copies and near copies of training images exceed Dar's threshold, noise without the anatomy does not."""
    g = torch.Generator().manual_seed(2)
    anatomy = torch.rand(1, 1, 16, 16, generator=g)
    train = anatomy + 0.5 * torch.rand(10, 1, 16, 16, generator=g)
    validation = anatomy + 0.5 * torch.rand(10, 1, 16, 16, generator=g)
    unrelated = torch.rand(4, 1, 16, 16, generator=g)
    near = train[[3]] + 0.05 * torch.rand(1, 1, 16, 16, generator=g)
    samples = torch.cat([train[[1]], train[[4]], near, unrelated])
    nearest, corr = peers.dar_nearest(samples, train)
    assert nearest[:3].tolist() == [1, 4, 3]
    assert torch.allclose(corr[:2], torch.ones(2, dtype=torch.float64))
    threshold = peers.dar_threshold(train, validation)
    assert 0.5 < threshold < 0.99
    assert float(corr[3:].max()) < 0.5
    assert peers.dar_copies(samples, train, validation).tolist() == [True, True, True, False, False, False, False]
    # a validation set equal to the training set puts the threshold at 1: nothing exceeds it
    assert peers.dar_threshold(train, train) == pytest.approx(1.0)
    assert not peers.dar_copies(samples, train, train).any()


def test_gu_ratio_known_answers():
    def img(a, b):
        return torch.tensor([a, b], dtype=torch.float64).reshape(1, 1, 1, 2)

    train = torch.cat([img(0, 0), img(1, 0), img(0, 1)])
    samples = torch.cat([img(0, 0), img(0.1, 0), img(0.3, 0), img(0.5, 0)])
    ratio = peers.gu_ratio(samples, train)
    assert torch.allclose(ratio, torch.tensor([0.0, 1 / 9, 3 / 7, 1.0], dtype=torch.float64))
    assert peers.gu_memorized(samples, train).tolist() == [True, True, False, False]
    assert peers.gu_memorization_ratio(samples, train) == 0.5
    with pytest.raises(ValueError, match="needs at least 2 training images; got 1"):
        peers.gu_ratio(samples, train[:1])


def test_attacks_run_on_a_score_model():
    from safcore.models import ScoreModel, build_unet

    torch.manual_seed(0)
    model = ScoreModel(build_unet("tiny", 1, 28)).eval()
    images = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    adapter = peers.as_eps_model(model)
    assert isinstance(adapter, peers.SDEEps)
    x, t = images * 2 - 1, torch.full((3,), 0.2)
    with torch.inference_mode():
        assert torch.equal(adapter.eps(x, t), model.eps(x, t))
    for err in (peers.loss_attack(model, images, n_draws=2), peers.pia_error(model, images),
                peers.secmi_t_error(model, images, t_sec=0.03, interval=0.01)):
        assert err.shape == (3,) and err.dtype == torch.float64
        assert torch.isfinite(err).all() and (err > 0).all()
