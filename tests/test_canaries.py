"""safcore.measures.canaries: the m-canary design, the guesses, and Steinke et al.'s one-run ε lower bound."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import binom

from safcore.measures import canaries
from safcore.measures import membership
from safcore.generators.known_answer import PointMixtureScore
from safcore.generators.sde import VPSDE


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ design


def test_design_is_seeded_distinct_inside_and_half_included():
    d = canaries.design_canaries(5000, 1000, 28, seed=7)
    assert d == canaries.design_canaries(5000, 1000, 28, seed=7)
    assert d.included != canaries.design_canaries(5000, 1000, 28, seed=8).included
    assert d.m == 1000 and len(set(d.indices)) == 1000
    low, high = d.radius, 28 - 1 - d.radius
    assert all(low <= r <= high and low <= c <= high for r, c in d.centers)
    assert 450 <= sum(d.included) <= 550  # Binomial(1000, ½): ±3.2 sd
    assert set(d.inclusion.tolist()) == {-1, 1}


def test_design_round_trips_through_json():
    d = canaries.design_canaries(40, 12, 8, seed=3)
    text = json.dumps(d.to_dict())
    assert canaries.CanaryDesign.from_dict(json.loads(text)) == d


def test_canaries_are_painted_and_training_set_is_add_remove():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(20, 1, 8, 8, generator=g)
    d = canaries.design_canaries(20, 6, 8, seed=1)
    painted = d.canaries(images)
    masks = d.masks()
    for j, i in enumerate(d.indices):
        inside = masks[j].bool()
        assert inside.any()
        assert torch.all(painted[j, 0][inside] == d.grey)
        assert torch.equal(painted[j, 0][~inside], images[i, 0][~inside])
    train = d.training_set(images)
    n_in = sum(d.included)
    assert len(train) == 20 - 6 + n_in
    flat = train.flatten(1)

    def present(x):
        return bool((flat == x.flatten()).all(1).any())

    for j, i in enumerate(d.indices):
        assert present(painted[j]) == d.included[j]
        assert not present(images[i])  # the clean original is never trained on
    others = [i for i in range(20) if i not in d.indices]
    assert all(present(images[i]) for i in others)


def test_design_refuses_bad_values():
    with pytest.raises(ValueError, match="m=30 canaries cannot be drawn from 20 images"):
        canaries.design_canaries(20, 30, 8, seed=0)
    with pytest.raises(ValueError, match="m=0; allowed: a positive integer"):
        canaries.design_canaries(20, 0, 8, seed=0)
    d = canaries.design_canaries(20, 3, 8, seed=0)
    with pytest.raises(ValueError, match=r"images must be the design's dataset, \(20, C, 8, 8\)"):
        d.canaries(torch.rand(19, 1, 8, 8))


# ------------------------------------------------------------------ guesses


def test_guess_and_count_known_values():
    scores = [0.9, 0.1, 0.5, 0.7, 0.3, 0.5]
    g = canaries.guess(scores, k_plus=2, k_minus=2)
    assert g.tolist() == [1, -1, 0, 1, -1, 0]
    assert canaries.guess(scores, 0, 0).tolist() == [0] * 6
    assert canaries.guess([1.0, 1.0, 1.0], 1, 1).tolist() == [-1, 0, 1]  # ties: canary order
    assert canaries.count_correct(g, [True, False, True, False, True, False]) == (4, 2)
    with pytest.raises(ValueError, match="k_plus \\+ k_minus = 7 guesses exceed the 6 canaries"):
        canaries.guess(scores, 4, 3)
    with pytest.raises(ValueError, match="found NaN or inf"):
        canaries.guess([math.nan], 1, 0)


# ------------------------------------------------------------------ the bound


def _reference_p_value(m, r, v, eps, delta):
    """Steinke et al. 2023, Appendix D ``p_value_DP_audit``, as a plain loop (independent of the vectorised one)."""
    q = 1 / (1 + math.exp(-eps))
    beta = binom.sf(v - 1, r, q)
    alpha, total = 0.0, 0.0
    for i in range(1, v + 1):
        total += binom.pmf(v - i, r, q)
        if total > i * alpha:
            alpha = total / i
    return min(beta + alpha * delta * 2 * m, 1)


@pytest.mark.parametrize("m,r,v,eps,delta", [(1000, 1000, 1000, 5.0, 1e-5), (1000, 200, 150, 1.0, 1e-5),
                                             (10**5, 500, 400, 2.0, 1e-6), (50, 20, 12, 0.3, 0.0)])
def test_p_value_is_the_theorem(m, r, v, eps, delta):
    assert canaries.p_value(m, r, v, eps, delta) == pytest.approx(_reference_p_value(m, r, v, eps, delta), rel=1e-9)


@pytest.mark.parametrize("r", [10, 100, 1000])
def test_perfect_guesses_pure_dp_closed_form(r):
    """Theorem 3.1 with v = r and δ = 0: q^r = 1 − β, so ε = log(q / (1 − q)) with q = 0.05^{1/r}."""
    q = 0.05 ** (1.0 / r)
    expected = math.log(q / (1.0 - q))
    assert canaries.epsilon_lower_bound(r, r, r, delta=0.0) == pytest.approx(expected, abs=1e-9)


def test_worked_numbers():
    # m = 1000 canaries, every one guessed right: ε ≥ 5.81 for pure DP, a little less at δ = 1e-5
    assert canaries.epsilon_lower_bound(1000, 1000, 1000, delta=0.0) == pytest.approx(5.8091, abs=1e-4)
    assert canaries.epsilon_lower_bound(1000, 1000, 1000) == pytest.approx(5.7823, abs=1e-4)
    # the δ term grows with m: 1000 correct guesses among 10⁶ canaries certify far less
    assert canaries.epsilon_lower_bound(10**6, 1000, 1000) == pytest.approx(0.5694, abs=1e-4)
    # one correct guess proves nothing at 95 %
    assert canaries.epsilon_lower_bound(1, 1, 1) == 0.0
    assert canaries.epsilon_lower_bound(10, 10, 10, delta=0.0) == pytest.approx(1.0519, abs=1e-4)


def test_random_guesses_give_epsilon_near_zero_never_negative():
    rng = np.random.default_rng(0)
    bounds = []
    for _ in range(20):
        included = rng.random(1000) < 0.5
        g = canaries.guess(rng.random(1000), 250, 250)
        r, v = canaries.count_correct(g, included)
        bounds.append(canaries.epsilon_lower_bound(1000, r, v))
    assert min(bounds) >= 0.0
    assert max(bounds) < 0.2 and np.mean(bounds) < 0.05
    assert canaries.epsilon_lower_bound(1000, 500, 250) == 0.0  # exactly chance
    assert canaries.epsilon_lower_bound(1000, 500, 0) == 0.0  # all wrong


def test_bound_is_monotone():
    by_v = [canaries.epsilon_lower_bound(1000, 200, v) for v in range(100, 201, 5)]
    assert all(a <= b for a, b in itertools.pairwise(by_v)) and by_v[0] == 0.0 and by_v[-1] > 2.5
    by_delta = [canaries.epsilon_lower_bound(1000, 200, 180, delta=d) for d in (0.0, 1e-6, 1e-5, 1e-4, 1e-3)]
    assert all(a >= b for a, b in itertools.pairwise(by_delta)) and by_delta[0] > by_delta[-1]
    by_m = [canaries.epsilon_lower_bound(m, 200, 180) for m in (200, 10**4, 10**6)]
    assert all(a >= b for a, b in itertools.pairwise(by_m))
    by_conf = [canaries.epsilon_lower_bound(1000, 200, 180, confidence=c) for c in (0.5, 0.9, 0.95, 0.99)]
    assert all(a >= b for a, b in itertools.pairwise(by_conf))
    # at the bound the p-value sits at 1 − β
    eps = canaries.epsilon_lower_bound(1000, 200, 180)
    assert canaries.p_value(1000, 200, 180, eps) == pytest.approx(0.05, abs=1e-6)


def test_bound_refuses_bad_counts():
    with pytest.raises(ValueError, match="need integers 0 <= v <= r <= m; got m=10, r=5, v=6"):
        canaries.epsilon_lower_bound(10, 5, 6)
    with pytest.raises(ValueError, match=r"confidence=1.0; allowed: a level in \(0, 1\)"):
        canaries.epsilon_lower_bound(10, 5, 5, confidence=1.0)


# ------------------------------------------------------------------ end to end on known models


def test_exact_memorizer_gets_every_canary_right():
    """A model that is the exact score of its training set: every included canary has a lower loss than
    every excluded one, so the guesses are all right and ε > 0; a model of other images gives ε = 0."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(24, 1, 8, 8, generator=g, dtype=torch.float64)
    design = canaries.design_canaries(24, 16, 8, seed=2)
    assert 4 <= sum(design.included) <= 12  # the seed leaves at least 4 in and 4 out
    painted = design.canaries(images)
    memorizer = PointMixtureScore(VPSDE(), design.training_set(images))
    scores = -membership.loss_attack(memorizer, painted).numpy()  # higher = more likely trained on
    result = canaries.audit(design, scores, k_plus=4, k_minus=4)
    assert (result.r, result.v) == (8, 8)
    assert result.epsilon == pytest.approx(canaries.epsilon_lower_bound(16, 8, 8))
    assert result.epsilon > 0.5
    assert "8/8 guesses right" in str(result)

    stranger = PointMixtureScore(VPSDE(), torch.rand(24, 1, 8, 8, generator=g, dtype=torch.float64))
    blind = canaries.audit(design, -membership.loss_attack(stranger, painted).numpy(), k_plus=4, k_minus=4)
    assert blind.epsilon == 0.0
    with pytest.raises(ValueError, match="3 scores for a design of m = 16 canaries"):
        canaries.audit(design, [1.0, 2.0, 3.0], 1, 1)
