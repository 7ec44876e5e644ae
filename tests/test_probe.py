"""Algorithm 1 (safcore.probe) on score models whose answer is known, and the explorer app.

The models are exact scores of point masses (``safcore.generators.known_answer.PointMixtureScore``): one point
at ``x_p`` (every reverse sample comes back as ``x_p``: q = 1), one point at another image ``y``
(q = 0) and a mixture of the two (q falls with t; its exact value is known by quadrature).
The searches' laws on simulated q(t) curves are tested in test_known_answer.py.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from conftest import Recording
from safcore.generators.known_answer import PointMixtureScore
from safcore.probe import (
    DEFAULT_GRID,
    ProbeConfig,
    chunk_sizes,
    diffuse,
    eq9_indicator,
    find_t_prime,
    marginal_std,
    q_curve,
    run_seed,
    topdown_search,
)
from safcore.generators.sde import SubVPSDE

GRID = tuple(round(0.05 * i, 2) for i in range(19, 0, -1))  # 0.95, 0.90, ..., 0.05
STEP = 0.05
CFG = ProbeConfig(M=16, grid=GRID, steps_full=100, seed=0)
U0_16 = 1 - 0.025 ** (1 / 16)  # Clopper–Pearson 95 % upper limit of 0 of 16


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the tensors here are tiny; torch's thread pool only adds contention on a shared machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def sde():
    return SubVPSDE()


@pytest.fixture(scope="module")
def classifiers(images):
    x_p, _, disk = images

    def c_p(x):  # the grey disk is there
        return (x[:, 0][:, disk] - 0.5).abs().mean(1) < 0.1

    def c_id(x):  # it is x_p
        return (x - x_p).pow(2).flatten(1).mean(1) < 0.05

    return c_p, c_id


def _probe(sde, images, classifiers, centers, log_w, **kw):
    x_p, y, _ = images
    c = {"xp": x_p, "y": y}
    score = PointMixtureScore(sde, torch.cat([c[k] for k in centers]), log_w)
    cfg = dataclasses.replace(CFG, **kw)
    return find_t_prime(score, sde, x_p, *classifiers, cfg, progress=False)


def _sigma(sde, t):
    return float(marginal_std(sde, [t])[0])


# ------------------------------------------------------------------------------------------------
# known answers
# ------------------------------------------------------------------------------------------------


def test_point_mass_at_xp_always_comes_back(sde, images, classifiers):
    res = _probe(sde, images, classifiers, ["xp"], None)
    assert res.t_prime == 0.95  # the top of the grid
    assert (res.k_at_t_prime, res.n_at_t_prime) == (16, 16) and res.t_prime_runs == (0.95,)
    assert res.t_prime_count == "16/16"
    np.testing.assert_array_equal(res.k, 16)
    np.testing.assert_array_equal(res.q, 1.0)
    # Clopper–Pearson for 16/16: [0.025^(1/16), 1]
    np.testing.assert_allclose(res.ci_low, 0.025 ** (1 / 16), rtol=1e-6)
    np.testing.assert_allclose(res.ci_high, 1.0)
    np.testing.assert_array_equal(res.ts, sorted(GRID))
    # Eq. 9 with upper limits: u = 1 on [0, 0.05] and on every interval up to t' = 0.95 -> σ(0.95)
    assert res.eq9_indicator == pytest.approx(_sigma(sde, 0.95), rel=1e-9)
    assert str(res).startswith("t' = 0.95 (16 of 16 positive at t'; exhaustive, M=16, 19 t, NFE=")
    assert str(res).endswith(f"Eq. 9 indicator = {res.eq9_indicator:.4g}")
    assert "probab" not in str(res) and "Darboux" not in str(res)
    # top-down: the first sample at the top of the grid is positive -> one trajectory of steps(0.95)
    td = _probe(sde, images, classifiers, ["xp"], None, search="topdown")
    assert td.t_prime == 0.95 and (td.k_at_t_prime, td.n_at_t_prime) == (1, 1)
    assert td.nfe == CFG.steps(0.95) == 95
    np.testing.assert_array_equal(td.ts, [0.95])
    assert td.eq9_indicator == pytest.approx(_sigma(sde, 0.95), rel=1e-9)  # nothing measured below: u = 1
    assert str(td).startswith("t' = 0.95 (1 of 1 positive at t'; topdown, M=16, 1 t, NFE=95)")


def test_point_mass_elsewhere_never_comes_back(sde, images, classifiers):
    res = _probe(sde, images, classifiers, ["y"], None)
    assert res.t_prime is None and res.t_prime_or_zero == 0.0
    assert res.t_prime_count == "-"
    assert res.k_at_t_prime is None and res.n_at_t_prime is None and res.t_prime_runs == (None,)
    np.testing.assert_array_equal(res.k, 0)
    assert res.k_p.sum() == 16 * 19  # the disk is grey in y as well: only c_id says no
    assert res.k_id.sum() == 0
    np.testing.assert_allclose(res.ci_high, U0_16, rtol=1e-6)
    # Eq. 9: only [0, t_min], where q is unknown (u = 1): σ(0.05), not 0
    assert res.eq9_indicator == pytest.approx(_sigma(sde, 0.05), rel=1e-9) and res.eq9_indicator > 0.02
    assert str(res).startswith("t' = none (no positive at any of the 19 grid t; exhaustive")
    # top-down: no positive anywhere -> every grid t with all M samples: the exhaustive cost, no saving
    td = _probe(sde, images, classifiers, ["y"], None, search="topdown")
    assert td.t_prime is None
    np.testing.assert_allclose(td.ts, sorted(GRID))
    np.testing.assert_array_equal(td.n, 16)
    assert td.nfe == td.nfe_exhaustive == CFG.nfe_exhaustive == 16 * sum(CFG.steps(t) for t in GRID)


def test_mixture_t_prime_strictly_inside_and_q_matches_exact(sde, images, classifiers):
    x_p, y, _ = images
    score = PointMixtureScore(sde, torch.cat([x_p, y]), (-100.0, 0.0))
    res = find_t_prime(score, sde, x_p, *classifiers, CFG, progress=False)
    assert 0.05 < res.t_prime < 0.95
    assert res.t_prime in (0.5, 0.55)  # exact q: 0.986 at 0.50, 0.024 at 0.55, 6e-11 at 0.60
    assert res.q[res.ts <= 0.45].min() == 1.0 and res.q[res.ts >= 0.6].max() == 0.0
    q_exact = np.array([score.q_exact(t) for t in res.ts])
    assert np.abs(res.q - q_exact).max() < 0.3
    assert q_exact[res.ts == 0.5][0] == pytest.approx(0.986, abs=1e-3)
    assert q_exact[res.ts == 0.6][0] < 1e-9
    assert res.k_at_t_prime == res.k[res.ts == res.t_prime][0] > 0 and res.n_at_t_prime == 16
    # Eq. 9 runs to the interval above t': between σ(t') and σ(t' + step)
    assert _sigma(sde, res.t_prime) <= res.eq9_indicator <= _sigma(sde, res.t_prime + STEP)
    # examples (Fig. 4): t' is among them, images in unit range, verdicts per image
    ex = {e.t: e for e in res.examples}
    assert res.t_prime in ex and len(ex) >= 5
    e = ex[res.t_prime]
    assert e.query.shape == e.samples.shape == (8, 1, 28, 28)
    assert 0.0 <= float(e.samples.min()) and float(e.samples.max()) <= 1.0
    assert e.c_p.dtype == torch.bool and e.positive.shape == (8,)


@pytest.mark.parametrize("centers,log_w", [(["xp"], None), (["y"], None), (["xp", "y"], (-100.0, 0.0))])
def test_topdown_agrees_with_exhaustive_and_costs_the_grid_above_t_prime(sde, images, classifiers, centers, log_w):
    for seed in (0, 1) if len(centers) == 2 else (0,):  # only the mixture's q_M is random
        ex = _probe(sde, images, classifiers, centers, log_w, seed=seed)
        td = _probe(sde, images, classifiers, centers, log_w, seed=seed, search="topdown")
        if ex.t_prime is None:
            assert td.t_prime is None
        else:
            assert abs(td.t_prime - ex.t_prime) <= STEP + 1e-9
            # the cost: all M samples at every grid t above t', and the n drawn at t'
            above = sum(16 * CFG.steps(t) for t in GRID if t > td.t_prime)
            assert td.nfe == above + td.n_at_t_prime * CFG.steps(td.t_prime)
            np.testing.assert_allclose(td.ts, [t for t in sorted(GRID) if t >= td.t_prime])
        assert td.nfe_exhaustive == ex.nfe_exhaustive == sum(16 * CFG.steps(t) for t in GRID)


def test_repeats_pool_runs_and_keep_each_t_prime(sde, images, classifiers):
    x_p, y, _ = images
    score = PointMixtureScore(sde, torch.cat([x_p, y]), (-100.0, 0.0))
    cfg = dataclasses.replace(CFG, search="topdown", repeats=4)
    res = find_t_prime(score, sde, x_p, *classifiers, cfg, progress=False)
    assert len(res.t_prime_runs) == 4
    assert res.t_prime == max(res.t_prime_runs)  # THE t': any run's positive counts (R·M samples per t)
    # run 0 is the single probe of the same seed
    single = find_t_prime(score, sde, x_p, *classifiers, dataclasses.replace(cfg, repeats=1), progress=False)
    assert res.t_prime_runs[0] == single.t_prime
    # pooled counts: at every grid t above t' all four runs drew M samples; none drew below the lowest run's t'
    np.testing.assert_array_equal(res.n[res.ts > res.t_prime], 4 * 16)
    assert res.ts.min() == min(res.t_prime_runs)
    assert res.n_at_t_prime == int(res.n[res.ts == res.t_prime][0]) and res.k_at_t_prime >= 1
    assert res.nfe_exhaustive == 4 * CFG.nfe_exhaustive
    lo, mid, hi = res.t_prime_spread
    assert lo == min(res.t_prime_runs) and hi == max(res.t_prime_runs) and lo <= mid <= hi
    assert f"; 4 runs: min {lo:.2f}, median {mid:.2f}, max {hi:.2f}; topdown" in str(res)
    # exhaustive repeats: n = R·M everywhere, the same t' rule
    rex = find_t_prime(score, sde, x_p, *classifiers, dataclasses.replace(cfg, search="exhaustive", repeats=2),
                       progress=False)  # fmt: skip
    np.testing.assert_array_equal(rex.n, 32)
    assert rex.t_prime == max(rex.t_prime_runs) == float(rex.ts[rex.k > 0].max())


def test_run_seeds_are_distinct_and_run_zero_is_the_seed():
    assert run_seed(7, 0) == 7
    seeds = {run_seed(s, r) for s in range(5) for r in range(1, 6)}
    assert len(seeds) == 25 and all(0 <= x < 2**63 for x in seeds)
    assert run_seed(0, 1) == run_seed(0, 1) != run_seed(1, 0)


def test_author_bug_single_positive_gives_its_own_t(sde, images, classifiers):
    """Exactly one positive on the whole grid (at t = 0.5): t' = 0.5, not 1."""
    x_p, y, _ = images
    c_p, c_id = classifiers
    calls = []

    def c_id_once(x):  # fires on the first sample of the 10th sampler call (t = 0.50)
        calls.append(1)
        out = torch.zeros(x.shape[0], dtype=torch.bool)
        out[0] = len(calls) == 10
        return out

    score = PointMixtureScore(sde, y, None)
    cfg = dataclasses.replace(CFG, batch_size=16)  # one t per call, high -> low
    res = find_t_prime(score, sde, x_p, c_p, c_id_once, cfg, progress=False)
    assert res.k.sum() == 1
    assert res.t_prime == 0.5
    assert (res.k_at_t_prime, res.n_at_t_prime) == (1, 16)


def test_topdown_search_on_a_step_curve_visits_exactly_the_grid_down_to_t_prime():
    """q > 0 exactly for grid index >= c: the search returns c and draws all M above it, 1 sample at c."""
    n = len(DEFAULT_GRID)
    for c in range(n + 1):
        drawn = []

        def draw(i, m):
            drawn.append((i, m))
            return m if i >= c else 0

        assert topdown_search(n, 16, draw) == (c if c < n else None)
        per_t = {}
        for i, m in drawn:
            per_t[i] = per_t.get(i, 0) + m
        assert per_t == {i: (1 if i == c else 16) for i in range(min(c + 1, n))}
    assert topdown_search(3, 4, lambda i, m: 0, first_chunk=4) is None


def test_chunk_sizes():
    assert chunk_sizes(16) == [1, 1, 2, 4, 8]
    assert chunk_sizes(16, 4) == [4, 4, 8]
    assert chunk_sizes(5, 2) == [2, 2, 1]
    assert chunk_sizes(1) == [1]


# ------------------------------------------------------------------------------------------------
# NFE accounting
# ------------------------------------------------------------------------------------------------


class _Counting:
    """Wraps a score function and counts image-network evaluations (images per call, summed)."""

    def __init__(self, fn):
        self.fn, self.n, self.calls = fn, 0, 0

    def __call__(self, x, t):
        self.n += x.shape[0]
        self.calls += 1
        return self.fn(x, t)


def test_exhaustive_nfe_is_sum_of_m_times_steps(sde, images, classifiers):
    x_p, y, _ = images
    score = _Counting(PointMixtureScore(sde, torch.cat([x_p, y]), (-100.0, 0.0)))
    cfg = dataclasses.replace(CFG, batch_waste=0.0)
    res = find_t_prime(score, sde, x_p, *classifiers, cfg, progress=False)
    expected = sum(16 * math.ceil(round((t - 1e-3) / (1 - 1e-3) * 100, 9)) for t in GRID)
    assert res.nfe == res.nfe_exhaustive == expected == score.n
    np.testing.assert_array_equal(res.n, 16)


def test_nfe_with_batching_across_t(sde, images, classifiers):
    """t = 0.9, 0.85, 0.5 with M = 4, batch 8: steps 90, 85, 50; 0.9 and 0.85 share a call (85·1.1 >= 90),
    0.5 would wait 80 % of its steps and gets its own call. In the shared call each t keeps its own
    steps (0.85 waits 5 iterations, not evaluated): NFE = 4·90 + 4·85 + 4·50 = 900, in 90 + 50 network
    calls. (Before per-sample step counts 0.85 ran 90 steps too: NFE 920.)"""
    x_p, y, _ = images
    score = _Counting(PointMixtureScore(sde, y, None))
    cur = q_curve(
        score, sde, x_p, *classifiers, (0.9, 0.85, 0.5), M=4, steps_full=100, batch_size=8,
        generator=torch.Generator().manual_seed(0), progress=False,
    )  # fmt: skip
    assert cur.nfe == score.n == 900
    assert score.calls == 90 + 50  # two sampler calls: the batching across t is kept
    np.testing.assert_array_equal(cur.nfe_per_t, [200, 340, 360])  # ascending t
    np.testing.assert_allclose(cur.ts, [0.5, 0.85, 0.9])




class _LastTimeStamp:
    """A score whose Tweedie denoiser ignores its input: ``s(x, t) = (a_t c(t) - x) / σ_t²`` with ``c(t)`` the
    constant image ``20 t - 1`` (model range), so ``E[x_0 | x_t] = c(t)`` for every ``x_t``. Its reverse
    sample (final_step="tweedie") is ``c(t_last)`` whatever the noise: deterministic, and stamped with the
    trajectory's last grid time ``t_last = eps + (t - eps) / steps``, i.e. with its step count."""

    def __init__(self, sde):
        self.sde = sde

    def __call__(self, x, t):
        a, s = self.sde.marginal_prob(torch.ones_like(t), t)
        r = lambda v: v.reshape(-1, 1, 1, 1)  # noqa: E731
        return (r(a) * r(20 * t - 1) - x) / r(s**2)


GROUPED = (0.9, 0.85, 0.8, 0.5, 0.46)  # steps_full 40: 36, 34, 32, 20, 19 steps
GROUPED_KW = dict(M=3, steps_full=40, eps=1e-3)


def test_grouped_exhaustive_call_runs_every_t_on_its_own_single_t_grid(sde):
    """batch_size 9 puts up to 3 t into one sampler call: (0.9, 0.85), (0.8,), (0.5, 0.46). Every trajectory
    must still be evaluated at exactly linspace(t, eps, steps(t) + 1)[:-1], the grid of a single-t run
    (probe_at, the top-down search) — bitwise the t of a t-by-t run (batch_size = M) — and cost steps(t)."""
    x_p = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(0))
    yes = lambda x: torch.ones(x.shape[0], dtype=torch.bool)  # noqa: E731
    recs = {}
    for name, batch in (("grouped", 9), ("alone", 3)):
        recs[name] = Recording(_LastTimeStamp(sde))
        cur = q_curve(recs[name], sde, x_p, yes, yes, GROUPED, batch_size=batch, progress=False,
                      generator=torch.Generator().manual_seed(1), **GROUPED_KW)  # fmt: skip
        assert cur.nfe == len(recs[name].ts) == 3 * (36 + 34 + 32 + 20 + 19)
    assert recs["grouped"].calls == 36 + 32 + 20  # one sampler call per group, steps(max t) network calls each
    assert recs["alone"].calls == 36 + 34 + 32 + 20 + 19
    assert sorted(recs["grouped"].ts) == sorted(recs["alone"].ts)
    cfg = ProbeConfig(grid=GROUPED, **GROUPED_KW)
    expected = sorted(v for t in GROUPED for v in np.linspace(t, 1e-3, cfg.steps(t) + 1)[:-1] for _ in range(3))
    np.testing.assert_allclose(sorted(recs["grouped"].ts), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["euler_maruyama", "pc"])
def test_grouped_exhaustive_q_curve_equals_the_t_by_t_curve(sde, method):
    """A deterministic model (_LastTimeStamp): every reverse sample is the constant image 20·t_last - 1 with
    t_last = eps + (t - eps)/steps(t) of its own single-t grid. The grouped curve (3 t per call) equals the
    t-by-t curve (one t per call) image for image, count for count; c_id fires on the single-t stamp only."""
    x_p = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(0))
    cfg = ProbeConfig(grid=GROUPED, **GROUPED_KW)
    stamps = {t: 20 * (t - (t - 1e-3) / cfg.steps(t) * (cfg.steps(t) - 1)) - 1 for t in GROUPED}  # model range
    c_p = lambda x: torch.ones(x.shape[0], dtype=torch.bool)  # noqa: E731

    def c_id(x):  # the unit-range stamp of SOME single-t grid of the probed t
        v = x.flatten(1).mean(1)
        return torch.stack([(v - (s + 1) / 2).abs() < 1e-4 for s in stamps.values()]).any(0)

    curves = {}
    for name, batch in (("grouped", 9), ("alone", 3)):
        curves[name] = q_curve(
            _LastTimeStamp(sde), sde, x_p, c_p, c_id, GROUPED, method=method, batch_size=batch, n_examples=3,
            example_ts=GROUPED, generator=torch.Generator().manual_seed(2), progress=False, **GROUPED_KW,
        )  # fmt: skip
    a, b = curves["grouped"], curves["alone"]
    for name in ("ts", "n", "k", "k_p", "k_id", "q", "nfe_per_t"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(a.k, 3)  # every sample carries its own grid's stamp
    per_step = 1 if method == "euler_maruyama" else 2
    np.testing.assert_array_equal(a.nfe_per_t, [3 * per_step * cfg.steps(t) for t in a.ts])
    for ea, eb in zip(a.examples, b.examples):
        assert ea.t == eb.t
        torch.testing.assert_close(ea.samples, eb.samples, atol=1e-5, rtol=0)
        torch.testing.assert_close(ea.samples, torch.full_like(ea.samples, (stamps[ea.t] + 1) / 2), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------
# building blocks
# ------------------------------------------------------------------------------------------------


def test_eq9_indicator_by_hand_on_a_tiny_grid():
    ts = [0.1, 0.2, 0.3, 0.4]
    sigma = [0.1, 0.3, 0.6, 1.0]
    u_1of2 = 0.975 ** (1 / 2)  # Clopper–Pearson 95 % upper limit of k = n - 1: 0.975^(1/n)
    # t' = 0.2 (1 of 2): [0, .1] u = 1 (below the grid), [.1, .2] max(1, u(1/2)), [.2, .3] max(u(1/2), u(0/16));
    # [.3, .4] lies above the interval over t' and is not summed (the paper's Σ_{i=0}^{t'})
    k, n = [2, 1, 0, 0], [2, 2, 16, 16]
    expected = 0.1 * 1 + 0.2 * 1 + 0.3 * u_1of2
    assert expected == pytest.approx(0.596227, abs=1e-6)
    assert eq9_indicator(ts, k, n, sigma) == pytest.approx(expected, rel=1e-9)
    assert eq9_indicator(ts[::-1], k[::-1], n[::-1], sigma[::-1]) == pytest.approx(expected, rel=1e-9)
    # the point estimates without [0, t_min] (the former Darboux sum) would give 0.2·1 + 0.3·0.5 + 0.4·0 = 0.35
    # a grid t not evaluated counts as q <= 1
    assert eq9_indicator(ts, k, [2, 2, 0, 16], sigma) == pytest.approx(0.1 + 0.2 + 0.3, rel=1e-9)
    # top-down style: nothing measured below t' = 0.3 (1 of 1), 0 of 16 above
    assert eq9_indicator(ts, [0, 0, 1, 0], [0, 0, 1, 16], sigma) == pytest.approx(1.0, rel=1e-9)
    # t' at the top of the grid (1 of 1): every interval up to σ(0.4), 0 of 16 between
    assert eq9_indicator(ts, [1, 0, 0, 1], [1, 16, 16, 1], sigma) == pytest.approx(0.1 + 0.2 + 0.3 * U0_16 + 0.4)
    # no t': [0, t_min] alone, where q is unknown
    assert eq9_indicator(ts, [0, 0, 0, 0], [16] * 4, sigma) == pytest.approx(0.1, rel=1e-9)
    assert eq9_indicator([0.3], [0], [16], [0.6]) == pytest.approx(0.6, rel=1e-9)
    assert eq9_indicator(ts, k, n, lambda t: 2 * np.asarray(t)) == pytest.approx(0.2 + 0.2 + 0.2 * u_1of2)
    with pytest.raises(ValueError, match="same length"):
        eq9_indicator(ts, k[:3], n, sigma)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        eq9_indicator(ts, [3, 0, 0, 0], [2, 2, 2, 2], sigma)
    with pytest.raises(ValueError, match="distinct"):
        eq9_indicator([0.1, 0.1], [0, 0], [1, 1], [0.1, 0.1])


def test_diffuse_matches_the_sde_marginal(sde, images):
    x_p = images[0]
    x = diffuse(x_p, 0.3, sde, 2000, torch.Generator().manual_seed(0))
    assert x.shape == (2000, 1, 28, 28)
    mean, std = sde.marginal_prob(2 * x_p - 1, torch.tensor([0.3]))
    torch.testing.assert_close(x.mean(0, keepdim=True), mean, atol=5 * float(std) / math.sqrt(2000), rtol=0)
    assert float((x - mean).std()) == pytest.approx(float(std), rel=0.01)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        diffuse(x_p, torch.tensor([0.5, 1.5]), sde, 2)


def test_default_grid_and_steps():
    assert len(DEFAULT_GRID) == 99 and DEFAULT_GRID[0] == 0.99 and DEFAULT_GRID[-1] == 0.01
    cfg = ProbeConfig()
    assert cfg.M == 16 and cfg.grid == DEFAULT_GRID and cfg.search == "exhaustive" and cfg.repeats == 1
    assert cfg.steps(0.99) == 990 and cfg.steps(0.5) == 500 and cfg.steps(0.01) == 10
    assert ProbeConfig(grid=[0.2, 0.7, 0.5]).grid == (0.7, 0.5, 0.2)  # stored high -> low
    assert ProbeConfig(grid=(0.9, 0.5)).grid_step == pytest.approx(0.4)
    assert ProbeConfig(M=2, grid=(0.9, 0.5), steps_full=10).nfe_exhaustive == 2 * (9 + 5)


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"M": 0}, "M=0"),
        ({"M": 2.5}, "M=2.5"),
        ({"grid": ()}, "grid is empty"),
        ({"grid": (0.5, 1.2)}, r"t=1.2 .*outside \[0, 1\]"),
        ({"grid": (-0.1,)}, r"t=-0.1 .*outside \[0, 1\]"),
        ({"grid": (0.0005,)}, "eps"),
        ({"grid": (0.5, 0.5)}, "repeated"),
        ({"search": "binary"}, "search='binary'"),
        ({"method": "ddim"}, "method='ddim'"),
        ({"steps_full": 0}, "steps_full"),
        ({"search": "adaptive"}, "'adaptive' .* was removed"),
        ({"repeats": 0}, "repeats=0"),
        ({"first_chunk": 17}, "first_chunk"),
    ],
)
def test_config_rejects_bad_values(kw, msg):
    with pytest.raises(ValueError, match=msg):
        ProbeConfig(**kw)


def test_q_curve_rejects_bad_values(sde, images, classifiers):
    x_p, y, _ = images
    score = PointMixtureScore(sde, y, None)
    with pytest.raises(ValueError, match="M=0"):
        q_curve(score, sde, x_p, *classifiers, (0.5,), M=0, progress=False)
    with pytest.raises(ValueError, match="empty"):
        q_curve(score, sde, x_p, *classifiers, [], M=4, progress=False)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        q_curve(score, sde, x_p, *classifiers, (0.5, 2.0), M=4, progress=False)
    with pytest.raises(ValueError, match="shape"):
        q_curve(score, sde, x_p, lambda x: torch.ones(1, dtype=torch.bool), classifiers[1], (0.5,), M=4,
                steps_full=10, progress=False)  # fmt: skip


# ------------------------------------------------------------------------------------------------
# explorer
# ------------------------------------------------------------------------------------------------


def test_explorer_builds_headless_and_slider_updates_verdict(sde, images, classifiers):
    pytest.importorskip("ipywidgets")
    import ipywidgets as widgets

    from safcore.probe.explorer import explore

    x_p, y, _ = images
    score = PointMixtureScore(sde, torch.cat([x_p, y]), (-100.0, 0.0))
    app = explore(score, sde, x_p, *classifiers, M=4, t=0.2, steps_full=50)
    assert isinstance(app.widget, widgets.VBox)
    slider, verdict, output = app.widget.children
    assert isinstance(slider, widgets.FloatSlider) and slider is app.slider
    assert isinstance(verdict, widgets.HTML) and isinstance(output, widgets.Output)
    assert "t = 0.20: 4/4 positive" in verdict.value  # q(0.2) = 1 for this mixture
    assert app.example.samples.shape == (4, 1, 28, 28) and app.figure is not None
    slider.value = 0.9  # q(0.9) ~ 0: the reverse samples become y
    assert "t = 0.90: 0/4 positive" in verdict.value
    assert "c_p 4/4" in verdict.value and "c_id 0/4" in verdict.value
    assert app.example.t == 0.9


def test_a_saved_probe_reads_back_whole(sde, images, classifiers, tmp_path):
    """probe_io: what Study.probe keeps in the run store is the result, arrays, t' and examples."""
    from safcore.probe.io import load_probe, save_probe

    for kw in ({}, {"search": "topdown", "repeats": 2}):
        result = _probe(sde, images, classifiers, ["xp", "y"], torch.log(torch.tensor([0.5, 0.5])), **kw)
        back = load_probe(save_probe(result, tmp_path / result.search))
        for name in ("ts", "n", "k", "k_p", "k_id", "q", "ci_low", "ci_high"):
            np.testing.assert_array_equal(getattr(back, name), getattr(result, name), err_msg=name)
        assert (back.t_prime, back.k_at_t_prime, back.n_at_t_prime, back.t_prime_runs) == \
               (result.t_prime, result.k_at_t_prime, result.n_at_t_prime, result.t_prime_runs)
        assert back.eq9_indicator == result.eq9_indicator and back.config == result.config and back.grid == result.grid
        assert len(back.examples) == len(result.examples) > 0
        for a, b in zip(back.examples, result.examples):
            assert a.t == b.t and torch.equal(a.samples, b.samples) and torch.equal(a.positive, b.positive)
        assert str(back) == str(result)
