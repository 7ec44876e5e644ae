"""Audit counts on hand-built image sets, binomial p-values, image loading and error messages."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from safcore.audit import AuditResult, audit, binomial_p_value, load_images
from safcore.fingerprint import SAFConfig, apply_saf, make_private_dataset, random_circle_masks


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
    from safcore.audit import sample_images_from_unet
    from safcore.models import ScoreModel, build_unet

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
