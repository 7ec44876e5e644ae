import pytest
import torch

from safcore.data import fingerprint as fp


def test_default_radius_follows_author_rule():
    assert fp.default_radius(64) == pytest.approx(9.0)
    assert fp.default_radius(28) == pytest.approx(3.9375)


@pytest.mark.parametrize("center", [(3.9375, 3.9375), (23.0625, 23.0625), (3.9375, 23.0625), (14.0, 14.0)])
def test_mask_inside_at_the_borders(center):
    mask = fp.circle_mask(28, 3.9375, center)
    rows, cols = torch.nonzero(mask, as_tuple=True)
    assert mask.sum() > 0 and rows.min() >= 0 and cols.max() <= 27
    # the disc is whole: as many pixels as the same disc in the centre
    assert mask.sum() == fp.circle_mask(28, 3.9375, (14.0, 14.0)).sum()


def test_mask_touching_the_edge_covers_the_edge_pixel():
    mask = fp.circle_mask(28, 4.0, (4.0, 23.0))
    assert mask[4, 27] == 1 and mask[0, 23] == 1 and mask[4, 0] == 0


@pytest.mark.parametrize("center", [(3.0, 14.0), (14.0, 23.5), (-1.0, 5.0)])
def test_mask_leaving_the_image_is_refused(center):
    with pytest.raises(ValueError, match=r"leaves the 28×28 image.*\[3.9375, 23.0625\]"):
        fp.circle_mask(28, 3.9375, center)


@pytest.mark.parametrize("radius", [14.0, 40.0, 0.0, -2.0])
def test_radius_that_cannot_fit(radius):
    with pytest.raises(ValueError, match=r"radius"):
        fp.SAFConfig(radius=radius).resolved_radius(28)


@pytest.mark.parametrize("grey", [-0.1, 1.5])
def test_grey_outside_unit_interval(grey):
    with pytest.raises(ValueError, match=r"grey .* \[0, 1\]"):
        fp.SAFConfig(grey=grey)


def test_equation_10_exactly():
    torch.manual_seed(0)
    x = torch.rand(3, 28, 28)
    mask = fp.circle_mask(28, 4.0, (10.0, 12.0))
    out = fp.apply_saf(x, mask, grey=0.3)
    assert torch.equal(out, x * (1 - mask) + 0.3 * mask)
    assert torch.all(out[:, mask.bool()] == 0.3)
    assert torch.equal(out[:, ~mask.bool()], x[:, ~mask.bool()])


def test_random_circle_masks_same_shape_inside():
    g = torch.Generator().manual_seed(0)
    masks = fp.random_circle_masks(200, 28, 3.9375, g)
    assert masks.shape == (200, 1, 28, 28)
    areas = masks.sum(dim=(1, 2, 3))
    # a disc cut by the border would lose pixels: all keep the whole disc's area (up to sub-pixel placement)
    assert areas.min() >= 45 and areas.max() <= 53
    assert masks.amax(dim=0).sum() > 400  # spread over the image, not one place


def test_private_dataset_facts():
    torch.manual_seed(0)
    images = torch.rand(20, 1, 28, 28)
    private = fp.make_private_dataset(images, seed=7)
    assert private.n == 20 and private.images.shape == images.shape
    assert torch.equal(private.images[private.index], private.x_p)
    assert torch.equal(private.x_i, images[private.index])
    outside = ~private.mask.bool()
    assert torch.equal(private.x_p[:, outside], private.x_i[:, outside])
    assert not any(torch.equal(private.x_i, img) for img in private.images)
    assert private.others.shape == (19, 1, 28, 28)
    assert private.parameters()["seed"] == 7 and private.grey == 0.5


def test_same_seed_same_x_p_and_other_seed_differs():
    torch.manual_seed(0)
    images = torch.rand(50, 3, 28, 28)
    a, b, c = (fp.make_private_dataset(images, seed=s) for s in (1, 1, 2))
    assert a.index == b.index and a.center == b.center and torch.equal(a.x_p, b.x_p)
    assert (a.index, a.center) != (c.index, c.center)


def test_fixed_center_config():
    images = torch.zeros(4, 1, 28, 28)
    private = fp.make_private_dataset(images, seed=0, config=fp.SAFConfig(radius=3, grey=1.0, center=(5, 6)))
    assert private.center == (5.0, 6.0) and private.x_p[0, 5, 6] == 1.0 and private.x_p.sum() == private.mask.sum()
