"""Membership inference, ROC numbers, extraction, Dar and Gu (the peers of safcore.measures.peers) on known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from safcore.generators.base import SDEGenerator
from safcore.generators.loader import as_generator
from safcore.measures import membership, memorization, roc
from safcore.generators.known_answer import PointMassDenoiser, PointMixtureScore
from safcore.generators.sde import VPSDE, GaussianDataScore, SubVPSDE

ATTACKS = (membership.loss_attack, membership.secmi_t_error, membership.pia_error)


pytestmark = pytest.mark.usefixtures("one_thread")


def _sets(n: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    members = torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64)
    nonmembers = torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64)
    others = torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64)
    return members, nonmembers, others


# ------------------------------------------------------------------ membership inference


@pytest.mark.parametrize("sde", [SubVPSDE(), VPSDE()], ids=["subvp", "vp"])
@pytest.mark.parametrize("attack", [membership.loss_attack, membership.pia_error], ids=["loss", "pia"])
def test_exact_memorizer_is_caught_with_auc_one(sde, attack):
    members, nonmembers, _ = _sets()
    memorizer = PointMixtureScore(sde, members)
    m, n = attack(memorizer, members), attack(memorizer, nonmembers)
    assert m.shape == (24,) and m.dtype == torch.float64
    assert float(m.max()) < float(n.min())  # every member's error below every non-member's
    summary = roc.roc_summary(m, n)
    lo, hi = summary.auc_interval
    assert summary.auc == 1.0 and hi == 1.0 and 0.9 < lo < 0.95  # perfect separation of 24 vs 24 is not proof of AUC 1


def test_secmi_catches_the_exact_memorizer_under_vp():
    members, nonmembers, _ = _sets()
    memorizer = PointMixtureScore(VPSDE(), members)
    m, n = membership.secmi_t_error(memorizer, members), membership.secmi_t_error(memorizer, nonmembers)
    assert float(m.max()) < 1e-20  # DDIM inversion of a point mass is exact: forward-back returns x
    assert float(n.min()) > 1e-3
    assert roc.roc_auc(m, n) == 1.0


@pytest.mark.parametrize("sde", [SubVPSDE(), VPSDE()], ids=["subvp", "vp"])
def test_unseen_models_give_auc_near_one_half(sde):
    members, nonmembers, others = _sets()
    for model in (PointMixtureScore(sde, others), GaussianDataScore(sde, 0.0, 0.5)):
        for attack in ATTACKS:
            summary = roc.roc_summary(attack(model, members), attack(model, nonmembers))
            lo, hi = summary.auc_interval
            assert lo <= 0.5 <= hi, (type(model).__name__, attack.__name__, summary)
            assert abs(summary.auc - 0.5) < 0.2


# ------------------------------------------------------------------ the reference's noise levels


def _reference_ratio(steps):
    """σ/a of the published DDPM (linear β 1e-4 … 0.02, T = 1000, ᾱ_k = Π_{i ≤ k} (1 − β_i)), transcribed anew."""
    alphas_cumprod = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
    return [math.sqrt((1.0 - alphas_cumprod[k]) / alphas_cumprod[k]) for k in steps]


def _coefficients(sde, t: float) -> tuple[float, float]:
    a, s = sde.marginal_prob(torch.ones(1, dtype=torch.float64), torch.tensor([t], dtype=torch.float64))
    return float(a[0]), float(s[0])


def _sde_ratio(sde, t: float) -> float:
    a, s = _coefficients(sde, t)
    return s / a


def _time_by_bisection(sde, ratio: float) -> float:
    lo, hi = 1e-5, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _sde_ratio(sde, mid) < ratio else (lo, mid)
    return 0.5 * (lo + hi)


def _exact_eps(kind, sde, param, x, t):
    """ε̂ = (x − a E[x_0 | x_t]) / σ of the exact models, transcribed anew: point masses ``param`` (unit
    range) or Gaussian data N(param, 0.5²) (model range)."""
    a, s = _coefficients(sde, t)
    if kind == "points":
        c = (param * 2 - 1).flatten(1)  # (K, D)
        d2 = torch.cdist(x.flatten(1), a * c).pow(2)  # (B, K)
        r = torch.softmax(-d2 / (2 * s * s), dim=1)
        return ((x.flatten(1) - a * r @ c) / s).reshape(x.shape)
    return s * (x - a * param) / (a * a * 0.25 + s * s)


def _secmi_by_hand(kind, sde, param, images):
    """SecMI_stat as PIA's SecMIAttacker writes it (y = x/a, p = σ/a, y' = y + ε̂ (p' − p)) at the
    reference's steps 0, 10, …, 100 put on the SDE's clock by bisection on σ/a."""
    ts = [_time_by_bisection(sde, r) for r in _reference_ratio(range(0, 101, 10))]
    coef = [_coefficients(sde, t) for t in ts]

    def step(x, i, j):
        (a_i, s_i), (a_j, s_j) = coef[i], coef[j]
        y = x / a_i + _exact_eps(kind, sde, param, x, ts[i]) * (s_j / a_j - s_i / a_i)
        return y * a_j

    x = images * 2 - 1
    for i in range(9):  # steps 0 → 10 → … → 90
        x = step(x, i, i + 1)
    back = step(step(x, 9, 10), 10, 9)  # 90 → 100 → 90
    return (x - back).flatten(1).pow(2).sum(1)


@pytest.mark.parametrize("case", ["memorizer-subvp", "memorizer-vp", "gaussian-vp"])
def test_secmi_is_the_reference_formula_at_the_reference_noise_levels(case):
    members, nonmembers, _ = _sets(6)
    images = torch.cat([members, nonmembers])
    if case == "gaussian-vp":
        sde, kind, param = VPSDE(), "gaussian", 0.1
        model = GaussianDataScore(sde, param, 0.5)
    else:
        sde, kind, param = (SubVPSDE() if case.endswith("subvp") else VPSDE()), "points", members
        model = PointMixtureScore(sde, members)
    got, want = membership.secmi_t_error(model, images), _secmi_by_hand(kind, sde, param, images)
    assert float(want[6:].max()) > 1e-5  # the non-members' t-errors are not all trivially 0
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-15), (got, want)


def test_pia_is_the_reference_formula_at_steps_0_and_200():
    members, nonmembers, _ = _sets(4)
    images, sde = torch.cat([members, nonmembers]), SubVPSDE()
    t0, t = (_time_by_bisection(sde, r) for r in _reference_ratio((0, 200)))
    x0 = images * 2 - 1
    a, s = _coefficients(sde, t)
    eps0 = _exact_eps("points", sde, members, x0, t0)
    want = (_exact_eps("points", sde, members, a * x0 + s * eps0, t) - eps0).abs().pow(4).flatten(1).sum(1)
    got = membership.pia_error(PointMixtureScore(sde, members), images)
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-15)


@pytest.mark.parametrize("sde", [SubVPSDE(), VPSDE()], ids=["subvp", "vp"])
def test_reference_times_match_the_reference_noise_to_signal_ratio(sde):
    model = PointMixtureScore(sde, _sets(2)[0])
    steps = (*membership.SECMI_STEPS, 200)
    times = membership.reference_times(model, steps)
    assert list(times) == sorted(times) and all(0.0 < t <= 1.0 for t in times)
    for t, want in zip(times, _reference_ratio(steps)):
        assert _sde_ratio(sde, t) == pytest.approx(want, rel=1e-6)
    if isinstance(sde, SubVPSDE):  # sub-VP: step 0 is not t = 1e-3 (σ/a = 1.1e-4 there, against 0.01)
        assert 0.02 < times[0] < 0.03 and 0.17 < times[10] < 0.19
    # a ratio below what the smallest trained time gives is clipped to it, with a warning
    with pytest.warns(UserWarning, match="clipped to t_min"):
        assert membership.time_for_ratio(model, 1e-9) == membership.SDE_T_MIN


def test_diffusers_reference_schedule_gets_the_reference_steps():
    from diffusers import DDPMScheduler, UNet2DModel

    from safcore.generators.diffusers_model import DiffusersModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=4).eval()
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    model = DiffusersModel(unet, scheduler)
    secmi_times = membership.reference_times(model, membership.SECMI_STEPS)
    assert [model.timestep(t) for t in secmi_times] == list(range(0, 101, 10))
    assert [model.timestep(t) for t in membership.reference_times(model, membership.PIA_STEPS)] == [0, 200]
    # and the U-Net is run at exactly those timesteps
    seen: list[int] = []
    hook = unet.register_forward_pre_hook(lambda module, args: seen.append(int(torch.as_tensor(args[1]).reshape(-1)[0])))
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    secmi = membership.secmi_t_error(model, images)
    assert seen == [*range(0, 91, 10), 100]  # inversion 0 … 80 → 90, forward at 90, back from 100
    seen.clear()
    membership.pia_error(model, images)
    assert seen == [0, 200]
    hook.remove()
    assert torch.equal(secmi, membership.secmi_t_error(model, images, times=secmi_times))


def test_ddim_step_is_exact_for_one_point_mass():
    """With one point c the exact ε̂ is constant along the probability-flow ODE: x_s = a_s c + σ_s ε."""
    sde = VPSDE()
    c = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    model = as_generator(PointMixtureScore(sde, c))
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    t, s = 0.3, 0.05
    a_t, s_t = (float(v[0]) for v in model.coefficients(torch.tensor([t], dtype=torch.float64)))
    a_s, s_s = (float(v[0]) for v in model.coefficients(torch.tensor([s], dtype=torch.float64)))
    centre = c * 2 - 1
    eps = (x - a_t * centre) / s_t
    assert torch.allclose(membership.ddim_step(model, x, t, s), a_s * centre + s_s * eps, atol=1e-10)
    assert torch.allclose(membership.ddim_step(model, membership.ddim_step(model, x, t, s), s, t), x, atol=1e-10)


def test_attacks_use_the_same_seeded_draws():
    members, _, others = _sets(6)
    model = PointMixtureScore(SubVPSDE(), others)
    a = membership.loss_attack(model, members, seed=3)
    assert torch.equal(a, membership.loss_attack(model, members, seed=3))
    assert not torch.equal(a, membership.loss_attack(model, members, seed=4))
    # each image's statistic does not depend on its batch
    assert torch.allclose(membership.loss_attack(model, members[2:3], seed=3), a[2:3])
    assert torch.allclose(membership.pia_error(model, members, batch_size=2), membership.pia_error(model, members))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_diffusers_model_exact_denoiser(prediction_type):
    from diffusers import DDPMScheduler

    from safcore.generators.diffusers_model import DiffusersModel

    g = torch.Generator().manual_seed(0)
    target, other = torch.rand(2, 1, 8, 8, generator=g)
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    model = DiffusersModel(PointMassDenoiser(target, scheduler), scheduler)
    images = torch.stack([target, other])
    for attack in (membership.loss_attack, membership.pia_error):
        err = attack(model, images)
        assert float(err[0]) < 1e-4 < float(err[1]), (attack.__name__, err)
    # the exact denoiser's DDIM inversion is exact: SecMI's error of the target is ~0
    err = membership.secmi_t_error(model, images)
    assert float(err[0]) < 1e-6


def test_attacks_refuse_what_they_cannot_attack():
    with pytest.raises(ValueError, match="cannot attack a str; allowed"):
        membership.loss_attack("model", torch.zeros(1, 1, 8, 8))
    members, _, _ = _sets(2)
    score = PointMixtureScore(VPSDE(), members)
    with pytest.raises(ValueError, match="t_sec=150 must be a multiple"):
        membership.secmi_t_error(score, members, t_sec=150, interval=100)
    with pytest.raises(ValueError, match=r"t_sec=0.1; allowed: a reference DDPM step, an integer in \[0, 999\]"):
        membership.secmi_t_error(score, members, t_sec=0.1, interval=0.01)  # steps, no longer times
    with pytest.raises(ValueError, match=r"times=\(0.1, 0.05, 0.2\); allowed: at least 3 strictly increasing"):
        membership.secmi_t_error(score, members, times=(0.1, 0.05, 0.2))
    with pytest.raises(ValueError, match=r"times=\(0.1, 1.5\); allowed: 2 strictly increasing times in \(0, 1\]"):
        membership.pia_error(score, members, times=(0.1, 1.5))
    with pytest.raises(ValueError, match=r"step=1000; allowed: a reference DDPM step"):
        membership.pia_error(score, members, step=1000)
    with pytest.raises(ValueError, match="ratio=-1.0; allowed: a finite noise-to-signal ratio"):
        membership.time_for_ratio(score, -1.0)
    with pytest.raises(ValueError, match=r"images must have shape \(N, C, H, W\)"):
        membership.loss_attack(score, members[0])


# ------------------------------------------------------------------ ROC numbers


def test_roc_known_values():
    assert roc.roc_auc([1, 2, 3], [4, 5, 6]) == 1.0
    assert roc.roc_auc([4, 5, 6], [1, 2, 3]) == 0.0
    assert roc.roc_auc([4, 5, 6], [1, 2, 3], member_if="higher") == 1.0
    assert roc.roc_auc([1, 1], [1, 1, 1]) == 0.5
    # one member below every non-member, one above: 1/2
    assert roc.roc_auc([0, 10], [5]) == 0.5


def test_tpr_at_fpr_known_values_and_unresolved_rates():
    members = [0.5] * 50 + [2.5] * 50
    nonmembers = [1.0, 2.0] + [3.0] * 98  # 100 non-members resolve 1 % but not 0.1 %
    assert roc.tpr_at_fpr(members, nonmembers, 0.01) == 0.5  # threshold 1.0: 1 false positive
    assert roc.tpr_at_fpr(members, nonmembers, 0.02) == 1.0  # threshold 2.5: 2 false positives
    assert roc.tpr_at_fpr(members, nonmembers, 0.001) is None
    assert roc.tpr_at_fpr(members, nonmembers[:99], 0.01) is None  # 99 < 1/0.01
    summary = roc.roc_summary(members, nonmembers)
    assert summary.tpr_at(0.01) == 0.5 and summary.tpr_at(0.001) is None
    assert summary.tpr_intervals[1] is None
    lo, hi = summary.tpr_intervals[0]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0
    assert "TPR@0.1%FPR not resolvable with 100 non-members" in str(summary)
    with pytest.raises(ValueError, match="fpr=0.05 was not computed"):
        summary.tpr_at(0.05)


def test_roc_summary_is_deterministic_and_json_ready():
    import json

    rng = np.random.default_rng(0)
    m, n = rng.normal(0.0, 1.0, 40), rng.normal(1.0, 1.0, 40)
    a = roc.roc_summary(m, n)
    assert a == roc.roc_summary(m, n)  # no resampling: the same numbers every time
    lo, hi = a.auc_interval
    assert lo < a.auc < hi and a.auc > 0.6
    plain = json.loads(json.dumps(a.to_dict()))
    assert plain["tprs"] == [None, None]  # 40 non-members resolve neither rate
    assert "n_bootstrap" not in plain and "seed" not in plain


def test_auc_interval_is_newcombe_and_not_degenerate_at_small_n():
    from scipy.stats import norm

    m, n = np.arange(16.0), np.arange(16.0) + 100.0  # 16 vs 16, perfectly separated
    summary = roc.roc_summary(m, n)
    lo, hi = summary.auc_interval
    assert summary.auc == 1.0 and 0.85 < lo < 0.9 and hi == 1.0  # contains 1, reaches well below it
    # Newcombe 2006, Method 5: the ends solve (θ̂ − θ)² = z² V(θ), V Hanley–McNeil's with m − 1, n − 1 → N/2 − 1
    z = norm.ppf(0.975)

    def v(theta, m=16, n=16):
        half = (m + n) / 2 - 1
        return theta * (1 - theta) * (1 + half * ((1 - theta) / (2 - theta) + theta / (1 + theta))) / (m * n)

    assert (1.0 - lo) ** 2 == pytest.approx(z * z * v(lo), rel=1e-9)
    lo, hi = roc.auc_interval(0.7, 20, 30)
    for end in (lo, hi):
        assert (0.7 - end) ** 2 == pytest.approx(z * z * v(end, 20, 30), rel=1e-9)
    assert lo < 0.7 < hi
    # reversed direction: reported as it is (AUC 0), never flipped
    reversed_summary = roc.roc_summary(n, m)
    assert reversed_summary.auc == 0.0 and reversed_summary.auc_interval[0] == 0.0 < reversed_summary.auc_interval[1]


def test_auc_interval_covers_the_true_auc():
    from scipy.stats import norm

    shift = math.sqrt(2.0) * norm.ppf(0.8)  # members N(0, 1), non-members N(shift, 1): AUC = Φ(shift/√2) = 0.8
    rng = np.random.default_rng(123)
    covered = 0
    for _ in range(400):
        m, n = rng.normal(0.0, 1.0, 30), rng.normal(shift, 1.0, 30)
        lo, hi = roc.auc_interval(roc.roc_auc(m, n), 30, 30)
        covered += lo <= 0.8 <= hi
    assert 0.90 <= covered / 400 <= 0.99, covered


def test_tpr_interval_is_clopper_pearson_and_unresolved_rates_say_so():
    from scipy.stats import beta

    members = [0.5] * 50 + [2.5] * 50
    nonmembers = [1.0, 2.0] + [3.0] * 98
    summary = roc.roc_summary(members, nonmembers, confidence=0.9)
    lo, hi = summary.tpr_intervals[0]
    # exact (Clopper–Pearson) interval of 50 hits of 100 members, from the beta quantiles
    assert lo == pytest.approx(beta.ppf(0.05, 50, 51), rel=1e-9) and hi == pytest.approx(beta.ppf(0.95, 51, 50), rel=1e-9)
    assert roc.tpr_interval(0, 16) == pytest.approx((0.0, beta.ppf(0.975, 1, 16)), rel=1e-9)
    # 16 non-members cannot resolve a 1 % FPR: no number, and the text says why
    small = roc.roc_summary(np.arange(16.0), np.arange(16.0) + 0.5)
    assert small.tprs == (None, None) and small.tpr_intervals == (None, None)
    assert "TPR@1%FPR not resolvable with 16 non-members" in str(small)


def test_roc_refuses_bad_input():
    with pytest.raises(ValueError, match="member_if='low'; allowed: 'lower'"):
        roc.roc_auc([1], [2], member_if="low")
    with pytest.raises(ValueError, match="got 0 members and 1 non-members"):
        roc.roc_auc([], [2])
    with pytest.raises(ValueError, match="NaN or inf"):
        roc.roc_summary([math.nan], [1.0])
    with pytest.raises(ValueError, match=r"fpr=1.5; allowed: a rate in \(0, 1\)"):
        roc.tpr_at_fpr([1], [2], 1.5)


# ------------------------------------------------------------------ extraction, Dar, Gu


def test_distinct_extracted_counts_each_training_image_once():
    g = torch.Generator().manual_seed(1)
    train = torch.rand(6, 1, 8, 8, generator=g)
    unrelated = torch.rand(3, 1, 8, 8, generator=g)
    samples = torch.cat([train[[0]], train[[0]] + 1e-3, train[[2]], unrelated])
    assert memorization.carlini_extracted(samples, train).tolist() == [0, 2]
    assert memorization.distinct_extracted(samples, train) == 2
    assert memorization.distinct_extracted(unrelated, train) == 0


def test_pearson_correlations_known_values():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    flat = torch.ones(1, 1, 2, 2)
    c = memorization.pearson_correlations(x, torch.cat([2 * x + 1, -x, flat]))
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
    nearest, corr = memorization.dar_nearest(samples, train)
    assert nearest[:3].tolist() == [1, 4, 3]
    assert torch.allclose(corr[:2], torch.ones(2, dtype=torch.float64))
    threshold = memorization.dar_threshold(train, validation)
    assert 0.5 < threshold < 0.99
    assert float(corr[3:].max()) < 0.5
    assert memorization.dar_copies(samples, train, validation).tolist() == [True, True, True, False, False, False, False]
    # a validation set equal to the training set puts the threshold at 1: nothing exceeds it
    assert memorization.dar_threshold(train, train) == pytest.approx(1.0)
    assert not memorization.dar_copies(samples, train, train).any()


def test_gu_ratio_known_answers():
    def img(a, b):
        return torch.tensor([a, b], dtype=torch.float64).reshape(1, 1, 1, 2)

    train = torch.cat([img(0, 0), img(1, 0), img(0, 1)])
    samples = torch.cat([img(0, 0), img(0.1, 0), img(0.3, 0), img(0.5, 0)])
    ratio = memorization.gu_ratio(samples, train)
    assert torch.allclose(ratio, torch.tensor([0.0, 1 / 9, 3 / 7, 1.0], dtype=torch.float64))
    assert memorization.gu_memorized(samples, train).tolist() == [True, True, False, False]
    assert memorization.gu_memorization_ratio(samples, train) == 0.5
    with pytest.raises(ValueError, match="needs at least 2 training images; got 1"):
        memorization.gu_ratio(samples, train[:1])


def test_attacks_run_on_a_score_model():
    from safcore.generators.score_model import ScoreModel, build_unet

    torch.manual_seed(0)
    model = ScoreModel(build_unet("tiny", 1, 28)).eval()
    images = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    adapter = as_generator(model)
    assert isinstance(adapter, SDEGenerator)
    x, t = images * 2 - 1, torch.full((3,), 0.2)
    with torch.inference_mode():
        assert torch.equal(adapter.eps(x, t), model.eps(x, t))
    for err in (membership.loss_attack(model, images, n_draws=2), membership.pia_error(model, images),
                membership.secmi_t_error(model, images, t_sec=30, interval=10)):
        assert err.shape == (3,) and err.dtype == torch.float64
        assert torch.isfinite(err).all() and (err > 0).all()
