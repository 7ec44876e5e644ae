"""Algorithm 1 (safcore.probe) on score models whose answer is known, and the explorer app.

The models are exact scores of point masses (``PointMixtureScore``): one point at ``x_p`` (every
reverse sample comes back as ``x_p``: q = 1), one point at another image ``y`` (q = 0) and a
mixture of the two (q falls with t; its exact value is known by quadrature).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from safcore.probe import (
    DEFAULT_GRID,
    PointMixtureScore,
    ProbeConfig,
    adaptive_search,
    chunk_sizes,
    darboux_upper_sum,
    diffuse,
    find_t_prime,
    marginal_std,
    q_curve,
)
from safcore.sde import SubVPSDE

GRID = tuple(round(0.05 * i, 2) for i in range(19, 0, -1))  # 0.95, 0.90, ..., 0.05
STEP = 0.05
CFG = ProbeConfig(M=16, grid=GRID, steps_full=100, seed=0)


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
def images():
    """x_p: a binary pattern with a grey SAF disk; y = 1 - x_p (the disk stays grey)."""
    g = torch.Generator().manual_seed(0)
    x_p = (torch.rand(1, 1, 28, 28, generator=g) > 0.5).float()
    yy, xx = torch.meshgrid(torch.arange(28), torch.arange(28), indexing="ij")
    disk = ((yy - 9) ** 2 + (xx - 18) ** 2) <= 16
    x_p[0, 0][disk] = 0.5
    return x_p, 1.0 - x_p, disk


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


# ------------------------------------------------------------------------------------------------
# known answers
# ------------------------------------------------------------------------------------------------


def test_point_mass_at_xp_always_comes_back(sde, images, classifiers):
    res = _probe(sde, images, classifiers, ["xp"], None)
    assert res.t_prime == 0.95  # the top of the grid
    np.testing.assert_array_equal(res.k, 16)
    np.testing.assert_array_equal(res.q, 1.0)
    # Clopper–Pearson for 16/16: [0.025^(1/16), 1]
    np.testing.assert_allclose(res.ci_low, 0.025 ** (1 / 16), rtol=1e-6)
    np.testing.assert_allclose(res.ci_high, 1.0)
    np.testing.assert_array_equal(res.ts, sorted(GRID))
    # Darboux bound of q = 1 over the whole grid: sigma(0.95) - sigma(0.05)
    s = marginal_std(sde, [0.05, 0.95])
    assert res.darboux_bound == pytest.approx(s[1] - s[0], rel=1e-9)
    # adaptive: the first sample at the top of the grid is positive -> one trajectory of steps(0.95)
    ra = _probe(sde, images, classifiers, ["xp"], None, search="adaptive")
    assert ra.t_prime == 0.95
    assert ra.nfe == CFG.steps(0.95) == 95
    assert str(res).startswith("t' = 0.95 (exhaustive, M=16, 19 t, NFE=")
    assert "Darboux bound = " in str(res)


def test_point_mass_elsewhere_never_comes_back(sde, images, classifiers):
    res = _probe(sde, images, classifiers, ["y"], None)
    assert res.t_prime is None and res.t_prime_or_zero == 0.0
    np.testing.assert_array_equal(res.k, 0)
    assert res.darboux_bound == 0.0
    assert res.k_p.sum() == 16 * 19  # the disk is grey in y as well: only c_id says no
    assert res.k_id.sum() == 0
    np.testing.assert_allclose(res.ci_high, 1 - 0.025 ** (1 / 16), rtol=1e-6)
    assert "t' = none" in str(res)
    # adaptive: coarse pass 0.95, 0.75, 0.55, 0.35, 0.15 and the bottom 0.05, all M samples each
    ra = _probe(sde, images, classifiers, ["y"], None, search="adaptive")
    assert ra.t_prime is None
    np.testing.assert_allclose(ra.ts, [0.05, 0.15, 0.35, 0.55, 0.75, 0.95])
    assert ra.nfe == 16 * (5 + 15 + 35 + 55 + 75 + 95)
    assert ra.nfe < res.nfe


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
    # the bound over the measured curve: between the q = 1 part and q = 1 up to the point above t'
    s = dict(zip(res.ts, marginal_std(sde, res.ts)))
    assert s[0.45] - s[0.05] <= res.darboux_bound <= s[round(res.t_prime + STEP, 2)] - s[0.05]
    # examples (Fig. 4): t' is among them, images in unit range, verdicts per image
    ex = {e.t: e for e in res.examples}
    assert res.t_prime in ex and len(ex) >= 5
    e = ex[res.t_prime]
    assert e.query.shape == e.samples.shape == (8, 1, 28, 28)
    assert 0.0 <= float(e.samples.min()) and float(e.samples.max()) <= 1.0
    assert e.c_p.dtype == torch.bool and e.positive.shape == (8,)


@pytest.mark.parametrize("centers,log_w", [(["xp"], None), (["y"], None), (["xp", "y"], (-100.0, 0.0))])
def test_adaptive_agrees_with_exhaustive_with_fewer_nfe(sde, images, classifiers, centers, log_w):
    for seed in (0, 1) if len(centers) == 2 else (0,):  # only the mixture's q_M is random
        ex = _probe(sde, images, classifiers, centers, log_w, seed=seed)
        ad = _probe(sde, images, classifiers, centers, log_w, seed=seed, search="adaptive")
        if ex.t_prime is None:
            assert ad.t_prime is None
        else:
            assert abs(ad.t_prime - ex.t_prime) <= STEP + 1e-9
        assert ad.nfe < 0.5 * ex.nfe_exhaustive
        assert ad.nfe_exhaustive == ex.nfe_exhaustive == sum(16 * CFG.steps(t) for t in GRID)


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


@pytest.mark.parametrize("coarse_step", [0.05, 0.2, 0.33, 1.0])
def test_adaptive_search_is_exact_on_a_step_curve(coarse_step):
    """q > 0 exactly for t <= grid[c]: the search returns c for every c, visiting few points."""
    n = len(DEFAULT_GRID)
    for c in range(n + 1):
        visited = []

        def positive_at(i):
            visited.append(i)
            return i >= c

        got = adaptive_search(DEFAULT_GRID, positive_at, coarse_step)
        assert got == (c if c < n else None)
        assert len(set(visited)) == len(visited) <= 25


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
        self.fn, self.n = fn, 0

    def __call__(self, x, t):
        self.n += x.shape[0]
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
    """t = 0.9, 0.85, 0.5 with M = 4, batch 8: steps 90, 85, 50; 0.9 and 0.85 share a call (85·1.1 >= 90)
    so both take 90 steps; 0.5 would waste 80 % and gets its own call: NFE = 8·90 + 4·50 = 920."""
    x_p, y, _ = images
    score = _Counting(PointMixtureScore(sde, y, None))
    cur = q_curve(
        score, sde, x_p, *classifiers, (0.9, 0.85, 0.5), M=4, steps_full=100, batch_size=8,
        generator=torch.Generator().manual_seed(0), progress=False,
    )  # fmt: skip
    assert cur.nfe == score.n == 920
    np.testing.assert_array_equal(cur.nfe_per_t, [200, 360, 360])  # ascending t
    np.testing.assert_allclose(cur.ts, [0.5, 0.85, 0.9])


# ------------------------------------------------------------------------------------------------
# building blocks
# ------------------------------------------------------------------------------------------------


def test_darboux_sum_on_a_hand_made_curve():
    ts = [0.1, 0.2, 0.3, 0.4]
    q = [1.0, 0.5, 0.25, 0.0]
    sigma = [0.1, 0.3, 0.6, 1.0]
    # 0.2·max(1, .5) + 0.3·max(.5, .25) + 0.4·max(.25, 0) = 0.2 + 0.15 + 0.1
    assert darboux_upper_sum(ts, q, sigma) == pytest.approx(0.45)
    assert darboux_upper_sum(ts[::-1], q[::-1], sigma[::-1]) == pytest.approx(0.45)
    # a non-monotone curve: the sup of each interval is its larger endpoint
    assert darboux_upper_sum(ts, [0.0, 1.0, 0.0, 0.5], sigma) == pytest.approx(0.2 + 0.3 + 0.2)
    assert darboux_upper_sum([0.3], [1.0], [0.6]) == 0.0
    assert darboux_upper_sum(ts, q, lambda t: 2 * np.asarray(t)) == pytest.approx(0.2 + 0.1 + 0.05)
    with pytest.raises(ValueError, match="same length"):
        darboux_upper_sum(ts, q[:3], sigma)
    with pytest.raises(ValueError, match=r"q must lie in \[0, 1\]"):
        darboux_upper_sum(ts, [1.5, 0, 0, 0], sigma)


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
    assert cfg.M == 16 and cfg.grid == DEFAULT_GRID and cfg.search == "exhaustive"
    assert cfg.steps(0.99) == 990 and cfg.steps(0.5) == 500 and cfg.steps(0.01) == 10
    assert ProbeConfig(grid=[0.2, 0.7, 0.5]).grid == (0.7, 0.5, 0.2)  # stored high -> low
    assert ProbeConfig(grid=(0.9, 0.5)).grid_step == pytest.approx(0.4)


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
        ({"coarse_step": 0.0}, "coarse_step"),
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

    from safcore.explorer import explore

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
