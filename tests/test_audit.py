"""Audit counts on hand-built image sets, binomial p-values, image loading and error messages."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from safcore.audit.sample_audit import AuditResult, audit
from safcore.data.images import load_images
from safcore.measures.bounds import binomial_p_value
from safcore.data.fingerprint import SAFConfig, apply_saf, make_private_dataset, random_circle_masks


@pytest.fixture(scope="module")
def private():
    torch.manual_seed(0)
    images = torch.rand(16, 1, 28, 28)
    return make_private_dataset(images, seed=3, config=SAFConfig())


def has_saf(private):
    """A deterministic c_p: at least 70 % of a disc's area of pixels is exactly the SAF's grey
    (uniform random images have none)."""

    def c_p(images: torch.Tensor) -> torch.Tensor:
        grey = ((images - private.grey).abs().amax(dim=1) < 1e-6).flatten(1).sum(1)
        return grey >= 0.7 * math.pi * private.radius**2

    return c_p


def is_x_i_anatomy(private):
    """A deterministic c_id: equals x_p outside the SAF's disc."""
    outside = 1.0 - private.mask

    def c_id(images: torch.Tensor) -> torch.Tensor:
        diff = ((images - private.x_p[None]).abs() * outside).flatten(1).amax(1)
        return diff < 1e-4

    return c_id


def test_copies_of_x_p_are_all_q(private):
    images = private.x_p[None].repeat(10, 1, 1, 1)
    result = audit(images, has_saf(private), is_x_i_anatomy(private), private.x_p, n_dataset=private.n)
    assert (result.n, result.n_cp, result.n_cid, result.n_q) == (10, 10, 10, 10)
    assert result.q_indices == tuple(range(10))
    assert result.mae == 0.0 and result.mse == 0.0
    assert result.expected_q == pytest.approx(10 / 16)
    assert result.cp_false_positives == () and result.cid_false_positives == ()


def test_mixed_set_counts_and_false_positives(private):
    g = torch.Generator().manual_seed(1)
    others = private.others[:6]
    with_saf = apply_saf(others[:4], random_circle_masks(4, 28, private.radius, g), private.grey)
    images = torch.cat([
        private.x_p[None].repeat(3, 1, 1, 1),  # 0-2: q
        private.x_i[None].repeat(2, 1, 1, 1),  # 3-4: x_p without its SAF -> c_id+ only
        with_saf,  # 5-8: other images with an SAF -> c_p+ only
        others[4:],  # 9-10: nothing
    ])
    result = audit(images, has_saf(private), is_x_i_anatomy(private), private.x_p, n_dataset=private.n, batch_size=4)
    assert result.q_indices == (0, 1, 2)
    assert result.cp_indices == (0, 1, 2, 5, 6, 7, 8)
    assert result.cid_indices == (0, 1, 2, 3, 4)
    assert result.cp_false_positives == (5, 6, 7, 8)
    assert result.cid_false_positives == (3, 4)
    assert (result.n_cp, result.n_cid, result.n_q) == (7, 5, 3)
    assert result.p_value == pytest.approx(stats.binomtest(3, 11, 1 / 16, alternative="less").pvalue)


def test_no_x_p_gives_zero_q_and_nan_errors(private):
    result = audit(private.others, has_saf(private), is_x_i_anatomy(private), private.x_p, n_dataset=private.n)
    assert result.n_q == 0 and result.q_indices == ()
    assert math.isnan(result.mae) and math.isnan(result.mse)
    assert result.p_value == pytest.approx((1 - 1 / 16) ** 15)


def test_mae_mse_of_q_positives(private):
    shifted = (private.x_p + 0.01).clamp(0, 1)
    images = torch.stack([private.x_p, shifted])
    c_all = lambda x: torch.ones(x.shape[0], dtype=torch.bool)  # noqa: E731
    result = audit(images, c_all, c_all, private.x_p, n_dataset=4)
    diff = images - private.x_p[None]
    assert result.mae == pytest.approx(float(diff.abs().mean()), rel=1e-6)
    assert result.mse == pytest.approx(float((diff**2).mean()), rel=1e-6)
    assert result.n_q == 2 and result.expected_q == 0.5


def test_binomial_p_value_hand_computed_and_scipy():
    assert binomial_p_value(0, 150_000, 50_000) == pytest.approx((1 - 1 / 50_000) ** 150_000, rel=1e-9)
    assert binomial_p_value(0, 150_000, 50_000) == pytest.approx(math.exp(-3), rel=1e-4)
    for n_q, n, n_d in [(151, 150_000, 1000), (0, 150_000, 5000), (57, 50_000, 546), (2, 50_000, 4708), (1, 10, 1)]:
        expected = stats.binomtest(n_q, n, 1 / n_d, alternative="less").pvalue
        assert binomial_p_value(n_q, n, n_d) == pytest.approx(expected, rel=1e-12)
    # Tab. 1: |q| = 0 of 150 000 at N_D >= 5000 rejects H0 at 5 %, |q| = 151 at N_D = 1000 does not.
    assert binomial_p_value(0, 150_000, 5000) < 0.05
    assert binomial_p_value(151, 150_000, 1000) > 0.05


def test_result_prints_as_a_table_row(private):
    c_none = lambda x: torch.zeros(x.shape[0], dtype=torch.bool)  # noqa: E731
    result = audit(private.others, c_none, c_none, private.x_p, n_dataset=1000)
    text = str(result)
    for part in ("N_D", "E|q|", "|c_p+|", "|c_id+|", "|q|", "p "):
        assert part in text
    row = result.to_row()
    assert row["N_D"] == 1000 and row["|q|"] == 0 and row["n"] == 15
    assert row["E|q|"] == pytest.approx(0.015)
    assert isinstance(result, AuditResult) and not result.rejects_h0()


def test_bad_inputs_raise_clear_errors(private):
    c = lambda x: torch.zeros(x.shape[0], dtype=torch.bool)  # noqa: E731
    with pytest.raises(ValueError, match="empty"):
        audit(torch.empty(0, 1, 28, 28), c, c, private.x_p, n_dataset=16)
    with pytest.raises(ValueError, match="channel"):
        audit(torch.rand(4, 3, 28, 28), c, c, private.x_p, n_dataset=16)
    with pytest.raises(ValueError, match=r"\(n, C, H, W\)"):
        audit(torch.rand(4, 28, 28), c, c, private.x_p, n_dataset=16)
    with pytest.raises(ValueError, match="n_dataset"):
        audit(torch.rand(4, 1, 28, 28), c, c, private.x_p, n_dataset=0)
    with pytest.raises(ValueError, match="returned shape"):
        audit(torch.rand(4, 1, 28, 28), lambda x: torch.zeros(1, dtype=torch.bool), c, private.x_p, n_dataset=16)


def test_load_images_forms(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    expected = torch.from_numpy(raw).float()[:, None] / 255
    assert torch.equal(load_images(raw), expected)
    assert torch.equal(load_images(raw[..., None]), expected)  # (N, H, W, 1)
    assert torch.equal(load_images(torch.from_numpy(raw)[:, None]), expected)  # (N, C, H, W) uint8
    assert torch.equal(load_images(expected), expected)  # float already in range
    assert load_images(raw, channels=3).shape == (5, 3, 28, 28)
    colour = rng.integers(0, 256, size=(2, 28, 28, 3), dtype=np.uint8)
    assert torch.equal(load_images(colour), torch.from_numpy(colour).permute(0, 3, 1, 2).float() / 255)

    np.save(tmp_path / "a.npy", raw)
    np.savez(tmp_path / "b.npz", images=raw, labels=np.zeros(5))
    assert torch.equal(load_images(tmp_path / "a.npy"), expected)
    assert torch.equal(load_images(tmp_path / "b.npz"), expected)
    with pytest.raises(ValueError, match="key="):
        np.savez(tmp_path / "c.npz", x=raw, y=raw)
        load_images(tmp_path / "c.npz")

    from PIL import Image

    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(raw):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    assert torch.equal(load_images(folder), expected)
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    for i, image in enumerate(colour):
        Image.fromarray(image).save(rgb / f"{i}.png")
    assert torch.equal(load_images(rgb), load_images(colour))


def test_load_images_errors(tmp_path):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_images(torch.rand(3, 1, 28, 28) * 2 - 1)
    with pytest.raises(ValueError, match="empty"):
        load_images(np.zeros((0, 28, 28), dtype=np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        load_images(np.zeros((2, 28, 28), dtype=np.int64))
    with pytest.raises(ValueError, match="shape"):
        load_images(np.zeros((2, 5, 28, 28), dtype=np.uint8))
    with pytest.raises(ValueError, match="no .png"):
        load_images(tmp_path)
    with pytest.raises(ValueError, match="cannot read"):
        load_images(tmp_path / "missing.txt")


def test_sample_images_from_a_diffusers_unet(tmp_path):
    from safcore.generators.images_from_model import sample_images_from_unet
    from safcore.generators.score_model import ScoreModel, build_unet

    torch.manual_seed(0)
    unet = build_unet("tiny", channels=1)
    images = sample_images_from_unet(unet, 3, steps=2, batch_size=2, seed=0, progress=False)
    assert images.shape == (3, 1, 28, 28) and images.dtype == torch.float32
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    ScoreModel(unet).save_pretrained(tmp_path / "unet")
    again = sample_images_from_unet(tmp_path / "unet", 3, steps=2, batch_size=2, seed=0, progress=False)
    assert torch.allclose(images, again, atol=1e-5)  # same weights, same seed
    with pytest.raises(ValueError, match="n = 0"):
        sample_images_from_unet(unet, 0)


# ------------------------------------------------------------------ the independent copy count and the verdict


def planted(private):
    """16 generated images with a known answer: 5 copies of x_p with its SAF (0-4), 3 of x_p without it
    (x_i, 5-7), 2 copies each of two other training images (8-11; 11 with an SAF painted on), 4 fresh images."""
    g = torch.Generator().manual_seed(7)
    a, b = [j for j in range(private.n) if j != private.index][:2]
    other = private.images[[a, a, b, b]].clone()
    other[3:] = apply_saf(other[3:], random_circle_masks(1, 28, private.radius, g), private.grey)
    return torch.cat([
        private.x_p[None].repeat(5, 1, 1, 1),
        private.x_i[None].repeat(3, 1, 1, 1),
        other,
        torch.rand(4, 1, 28, 28, generator=g),
    ]), (a, b)  # fmt: skip


def test_copy_check_counts_planted_copies_and_the_adversary_recall_exactly(private):
    images, (a, b) = planted(private)
    result = audit(images, has_saf(private), is_x_i_anatomy(private), private.x_p, private.n,
                   train_images=private.images, x_p_index=private.index)  # fmt: skip
    c = result.copies
    assert c.xp_copy_indices == tuple(range(8))  # with and without the SAF: the NN count sees all 8
    assert c.copy_indices == tuple(range(12)) and c.n_copies == 12 and c.copy_rate == 12 / 16
    assert c.nearest[:12] == (private.index,) * 8 + (a, a, b, b)
    assert (c.cp_hits, c.cid_hits, c.q_hits) == (5, 8, 5)
    assert result.missed_copies == (5, 6, 7)  # the three copies of x_p's anatomy without the SAF
    assert (c.cp_recall, c.cid_recall, c.q_recall) == (5 / 8, 1.0, 5 / 8)
    assert (c.cp_others, c.cid_others, c.n_others) == (1, 0, 8)  # the SAF painted on image b
    assert c.cp_rate_others == 1 / 8 and c.q_not_copies == ()
    assert c.per_image[private.index] == 8 and c.per_image[a] == 2 and c.per_image[b] == 2 and sum(c.per_image) == 12
    assert c.evenness_method == "monte-carlo"  # 12 copies on 16 images: expected 0.75 each, too few for χ²
    assert 0.0 < c.evenness_p < 0.01  # x_p in 8 of 12: far from uniform
    assert result.cp_on_x_p and result.cid_on_x_p
    # the adversary caught 5 of 8 copies: x_p IS handed back (8 found), and the weak adversary only means
    # it may come back more often than counted
    verdict = result.verdict()
    assert verdict.kind == "reproduces" and verdict.reasons == ()
    assert "at least 8 of 16 samples" in verdict.headline, verdict
    assert any("may come back more often" in w and "caught 5 of the 8" in w for w in verdict.warnings), verdict
    row = result.to_row()
    assert row["x_p copies (NN)"] == 8 and row["caught"] == 5 and row["verdict"] == "reproduces"
    assert row["x_p handed back"] == 8
    # told where the disc is, the count separates copies with the SAF (c_p must catch them: it did, 5 of 5)
    # from copies of x_p's anatomy without it: breaches |q| cannot count, said in the headline
    told = audit(images, has_saf(private), is_x_i_anatomy(private), private.x_p, private.n, train_images=private.images,
                 x_p_index=private.index, saf_mask=private.mask, saf_grey=private.grey)
    c = told.copies
    assert c.xp_copies_with_saf == tuple(range(5)) and c.n_xp_copies_without_saf == 3
    assert c.q_hits_with_saf == 5 and c.q_recall_with_saf == 1.0 and c.q_recall == 5 / 8
    verdict = told.verdict()
    assert verdict.kind == "reproduces" and verdict.reasons == ()
    assert "3 reproduce x_p's anatomy WITHOUT its SAF" in verdict.headline, verdict
    assert told.to_row()["with SAF"] == 5


def test_verdict_follows_the_adversary_and_the_counts(private):
    c_p, c_id = has_saf(private), is_x_i_anatomy(private)
    kwargs = dict(train_images=private.images, x_p_index=private.index)
    copies = private.x_p[None].repeat(4, 1, 1, 1)
    others = private.others[:12]
    good = audit(torch.cat([copies, others]), c_p, c_id, private.x_p, private.n, **kwargs, saf_accuracy=0.99)
    assert good.verdict().kind == "reproduces" and good.verdict().reasons == ()
    assert "at least 4 of 16 samples" in good.verdict().headline
    # a weak adversary does not hide copies that were found ...
    weak = audit(torch.cat([copies, others]), c_p, c_id, private.x_p, private.n, **kwargs, saf_accuracy=0.715)
    assert weak.verdict().kind == "reproduces" and any("71.5%" in w for w in weak.verdict().warnings)
    # ... but it cannot claim absence
    weak_none = audit(others, c_p, c_id, private.x_p, private.n, **kwargs, saf_accuracy=0.715)
    assert weak_none.verdict().kind == "inconclusive" and "71.5%" in weak_none.verdict().reasons[0]
    # a c_p that fires on everything (the Gaussian-blur model): inconclusive, not "fewer than E|q|"
    c_all = lambda x: torch.ones(x.shape[0], dtype=torch.bool)  # noqa: E731
    c_never = lambda x: torch.zeros(x.shape[0], dtype=torch.bool)  # noqa: E731
    loud = audit(others, c_all, c_never, private.x_p, private.n, **kwargs)
    assert loud.verdict().kind == "inconclusive" and any("c_p fires on 12 of the 12" in r for r in loud.verdict().reasons)
    # a c_p that cannot see x_p's own SAF
    blind = audit(others, c_never, c_id, private.x_p, private.n, **kwargs)
    assert blind.cp_on_x_p is False and blind.verdict().kind == "inconclusive"
    # nothing generated is x_p and the adversary is sound: the bound is what the report states
    none = audit(others, c_p, c_id, private.x_p, private.n, **kwargs, saf_accuracy=0.99)
    verdict = none.verdict()
    assert verdict.kind == "not_observed" and f"{100 * none.q_upper():.2g} %" in verdict.headline
    # without the training set the verdict says that nothing checks the misses
    bare = audit(others, c_p, c_id, private.x_p, private.n)
    assert bare.copies is None and any("no independent copy count" in w for w in bare.verdict().warnings)
    with pytest.raises(ValueError, match="x_p_index"):
        audit(others, c_p, c_id, private.x_p, private.n, train_images=private.images)
    with pytest.raises(ValueError, match="N_D = 16"):
        audit(others, c_p, c_id, private.x_p, private.n, train_images=private.images[:3], x_p_index=0)


def test_copies_of_x_p_without_its_saf_are_never_not_observed(private):
    """The issue's false "safe": 20 of 245 samples are exact copies of x_p WITHOUT the SAF (x_p's clean
    original), c_p and c_id both fire on x_p itself, |q| = 0. Today's code read "not observed … ≤ 1.5 %"."""
    g = torch.Generator().manual_seed(11)
    fresh = torch.rand(225, 1, 28, 28, generator=g)
    images = torch.cat([private.x_i[None].repeat(20, 1, 1, 1), fresh])
    result = audit(images, has_saf(private), is_x_i_anatomy(private), private.x_p, private.n,
                   train_images=private.images, x_p_index=private.index, saf_mask=private.mask, saf_grey=private.grey,
                   saf_accuracy=0.99)
    assert result.n_q == 0 and result.copies.n_xp_copies == 20 and result.copies.n_xp_copies_without_saf == 20
    verdict = result.verdict()
    assert verdict.kind == "reproduces", verdict
    low, high = result.handed_back_interval()
    assert low < 20 / 245 < high and high > 1 / 16  # the true rate 8.2 %, not "≤ 1.5 %"
    assert "at least 20 of 245 samples" in verdict.headline and "WITHOUT its SAF" in verdict.headline
    assert f"{100 * high:.0f} %" in verdict.headline  # bound and count from the same 20
    assert result.samples_to_bound() is None  # 20/245 is above 1/N_D: no sample size bounds it below


def test_found_copies_with_a_weak_adversary_read_as_handed_back(private):
    """|q| = 9 of 256 with the adversary catching 9 of 14 SAF copies (recall 64 % < 90 %): today's code read
    "inconclusive"; the model demonstrably hands x_p back in at least 14 (and |q| = 9) of 256 samples."""
    g = torch.Generator().manual_seed(12)
    copies = private.x_p[None].repeat(14, 1, 1, 1)
    fresh = torch.rand(242, 1, 28, 28, generator=g)
    images = torch.cat([copies, fresh])
    caught = torch.zeros(256, dtype=torch.bool)
    caught[:9] = True
    c_p = lambda x: torch.ones(x.shape[0], dtype=torch.bool) if x.shape[0] == 1 else caught[: x.shape[0]].clone()  # noqa: E731
    result = audit(images, c_p, is_x_i_anatomy(private), private.x_p, private.n, batch_size=256,
                   train_images=private.images, x_p_index=private.index, saf_mask=private.mask, saf_grey=private.grey,
                   saf_accuracy=0.99)
    assert result.n_q == 9 and result.copies.n_xp_copies == 14 and result.copies.q_recall_with_saf == 9 / 14
    verdict = result.verdict()
    assert verdict.kind == "reproduces" and "at least 14 of 256 samples" in verdict.headline, verdict
    assert "|q| = 9" in verdict.headline
    assert any("caught 9 of the 14" in w for w in verdict.warnings)


def test_evenness_test_is_exact_in_law_where_expected_counts_are_small():
    from safcore.audit.copies import evenness_test

    # under the uniform null the Monte-Carlo p-value is (about) uniform: P(p ≤ 0.05) ≈ 0.05
    rng = np.random.default_rng(0)
    ps = [evenness_test(rng.multinomial(40, np.full(64, 1 / 64)), draws=999, seed=i)[0] for i in range(200)]
    assert 0.01 <= np.mean(np.asarray(ps) <= 0.05) <= 0.10
    p, method = evenness_test([40] + [0] * 63)
    assert method == "monte-carlo" and p < 1e-3
    p, method = evenness_test([10, 10, 10, 10])
    assert method == "chi2" and p == pytest.approx(1.0)
    assert math.isnan(evenness_test([1, 0, 0])[0])


def test_audit_refuses_images_outside_the_unit_range_or_nan(private):
    c = lambda x: torch.zeros(x.shape[0], dtype=torch.bool)  # noqa: E731
    with pytest.raises(ValueError, match=r"allowed: \[0, 1\]"):
        audit(torch.rand(4, 1, 28, 28) * 2 - 1, c, c, private.x_p, n_dataset=16)
    bad = torch.rand(4, 1, 28, 28)
    bad[1, 0, 3, 3] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        audit(bad, c, c, private.x_p, n_dataset=16)
