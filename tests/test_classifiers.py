"""c_p / c_id: configuration, what each sees, thresholds, save/load, and learning a tiny real problem."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from safcore.adversary.classifiers import (
    Classifier,
    ClassifierConfig,
    augmented_examples,
    augmix_images,
    build_resnet,
    choose_threshold,
    id_accuracy,
    id_augment,
    id_samples,
    saf_accuracy,
    saf_batch,
    train_id_classifier,
    train_saf_classifier,
)
from safcore.data.fingerprint import SAFConfig, make_private_dataset


@pytest.fixture(scope="module")
def private():
    torch.manual_seed(0)
    return make_private_dataset(torch.rand(12, 1, 28, 28), seed=1)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="arch"):
        ClassifierConfig(arch="vgg16")
    with pytest.raises(ValueError, match="epochs"):
        ClassifierConfig(epochs=0)
    with pytest.raises(ValueError, match="saf_p_train"):
        ClassifierConfig(saf_p_train=1.5)
    with pytest.raises(ValueError, match="id_p_val"):
        ClassifierConfig(id_p_val=1.0)
    with pytest.raises(ValueError, match="device"):
        ClassifierConfig(device="abacus")
    with pytest.raises(ValueError, match="norm"):
        ClassifierConfig(norm="layer")
    with pytest.raises(ValueError, match="saf_noise_std"):
        ClassifierConfig(saf_noise_std=-0.1)
    assert dataclasses.replace(ClassifierConfig(), arch="resnet50").arch == "resnet50"


@pytest.mark.parametrize("arch,channels,stride", [("resnet18", 1, 1), ("resnet18", 3, 2), ("resnet50", 3, 1)])
def test_resnet_is_adapted_to_28px(arch, channels, stride):
    torch.manual_seed(0)
    net = build_resnet(arch, channels, stride).eval()
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (stride, stride)
    assert net.conv1.in_channels == channels and isinstance(net.maxpool, torch.nn.Identity)
    with torch.inference_mode():
        assert net(torch.rand(2, channels, 28, 28)).shape == (2, 1)


def test_saf_batch_paints_exactly_the_labelled_images(private):
    g = torch.Generator().manual_seed(0)
    images = private.others
    out, labels = saf_batch(images, 0.5, private.radius, private.grey, g, exact=True)
    assert labels.sum() == round(0.5 * images.shape[0])
    changed = (out != images).flatten(1).any(1)
    assert torch.equal(changed, labels.bool())
    grey_pixels = ((out - private.grey).abs() < 1e-7).flatten(1).sum(1)
    assert (grey_pixels[labels.bool()] >= math.floor(0.7 * math.pi * private.radius**2)).all()
    # validation keeps at least one SAF even at a small probability
    _, labels = saf_batch(images[:4], 0.1, private.radius, private.grey, g, exact=True)
    assert labels.sum() == 1


def test_id_stream_has_x_p_at_the_asked_rate(private):
    g = torch.Generator().manual_seed(0)
    images, labels = id_samples(private, private.others, 0.5, g, exact=True)
    assert labels.sum() == private.others.shape[0] == (labels == 0).sum()
    assert all(torch.equal(im, private.x_p) for im in images[labels.bool()])
    images, labels = id_samples(private, private.others, 0.1, g, min_slots=2000)
    assert images.shape[0] == 2000 and 0.07 < float(labels.mean()) < 0.13
    for image in images[~labels.bool()][:20]:
        assert any(torch.equal(image, other) for other in private.others)


def test_augmentations_keep_shape_and_range(private):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    images = private.others
    mixed = augmix_images(images)
    assert mixed.shape == images.shape and mixed.dtype == torch.float32
    assert 0 <= float(mixed.min()) and float(mixed.max()) <= 1
    out = id_augment(images, private.radius, private.grey, g, mask_probability=1.0, noise_std=0.0, augmix=False)
    grey_pixels = ((out - private.grey).abs() < 1e-7).flatten(1).sum(1)
    assert (grey_pixels >= math.floor(0.7 * math.pi * private.radius**2)).all()  # every image got a disc
    noisy = id_augment(images, private.radius, private.grey, g, mask_probability=0.0, noise_std=0.1, augmix=False)
    assert 0 <= float(noisy.min()) and float(noisy.max()) <= 1 and not torch.equal(noisy, images)
    ex = augmented_examples(private, ClassifierConfig(), n=20)  # more than D_p's 12 images
    assert ex.saf_images.shape == ex.id_images.shape == (20, 1, 28, 28)
    assert ex.saf_labels.dtype == ex.id_labels.dtype == torch.bool


def test_choose_threshold():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.35, 0.9])
    labels = torch.tensor([0, 0, 1, 1, 1])
    threshold = choose_threshold(probs, labels)
    assert 0.2 < threshold < 0.3
    assert choose_threshold(probs, torch.ones(5)) == 0.5  # one class only
    assert choose_threshold(torch.tensor([0.2, 0.8]), torch.tensor([0, 1])) == 0.5  # 0.5 already perfect


def test_save_load_round_trip_gives_identical_predictions(tmp_path, private):
    torch.manual_seed(0)
    config = ClassifierConfig(stem_stride=2, device="cpu")
    model = build_resnet("resnet18", 1, 2)
    with torch.no_grad():  # non-default BatchNorm statistics must survive the round trip too
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    history = [{"epoch": 1, "train_loss": 0.5, "train_acc": 0.8, "val_loss": 0.6, "val_acc": 0.7}]
    clf = Classifier(model, config, kind="id", in_channels=1, image_size=28, threshold=0.42, history=history, best_epoch=1)
    clf.save(tmp_path / "c_id")
    loaded = Classifier.load(tmp_path / "c_id")
    images = private.images
    assert torch.equal(clf.probability(images), loaded.probability(images))
    assert torch.equal(clf(images), loaded(images))
    assert (loaded.threshold, loaded.kind, loaded.history, loaded.config) == (0.42, "id", history, config)
    with pytest.raises(ValueError, match="not a saved classifier"):
        Classifier.load(tmp_path / "nothing")


def test_classifier_rejects_wrong_inputs(private):
    clf = Classifier(build_resnet("resnet18", 1, 2), ClassifierConfig(device="cpu"), kind="saf", in_channels=1, image_size=28)
    with pytest.raises(ValueError, match="channels"):
        clf(torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match="empty"):
        clf(torch.rand(0, 1, 28, 28))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        clf(torch.rand(1, 28, 28))
    out = clf(private.images)
    assert out.dtype == torch.bool and out.shape == (private.n,)
    assert 0.0 <= id_accuracy(clf, private) <= 1.0
    assert 0.0 <= saf_accuracy(clf, private.images, SAFConfig()) <= 1.0


# --------------------------------------------------------------------------------------------
# Learning a tiny real problem: 64 BreastMNIST images, a white disc as the SAF (clearly visible, so
# a resnet18 learns it in a few dozen steps), smoke-scale training.


@pytest.fixture(scope="module")
def trained(data_root):
    from safcore.data.datasets import load_dataset, to_unit_tensor

    data = load_dataset("breastmnist", root=data_root)
    saf = SAFConfig(grey=1.0)
    private = make_private_dataset(to_unit_tensor(data.split("train")[:64]), seed=0, config=saf)
    val = to_unit_tensor(data.split("val")[:32])
    test = to_unit_tensor(data.split("test")[:48])
    config = ClassifierConfig(
        arch="resnet18", stem_stride=2, epochs=2, patience=2, epoch_size=64, batch_size=32, augmix=False, device="cpu"
    )
    c_p = train_saf_classifier(private.others, val, saf, config, progress=False)
    c_id = train_id_classifier(private, config, progress=False, val_images=val[:16])
    return private, saf, test, c_p, c_id


def test_c_p_detects_the_saf_on_held_out_images(trained):
    private, saf, test, c_p, _ = trained
    assert saf_accuracy(c_p, test, saf, seed=0) >= 0.75  # chance: 0.5
    assert len(c_p.history) >= 1 and 1 <= c_p.best_epoch <= len(c_p.history)
    best = c_p.history[c_p.best_epoch - 1]["val_loss"]
    assert best <= min(h["val_loss"] for h in c_p.history) + c_p.config.min_delta
    assert bool(c_p(private.x_p[None])[0])


def test_c_id_picks_out_x_p(trained):
    private, _, test, _, c_id = trained
    assert id_accuracy(c_id, private) == 1.0  # x_p positive, the 63 other training images negative
    assert int(c_id(test).sum()) == 0


def test_audit_with_the_trained_adversary(trained):
    from safcore.audit.sample_audit import audit
    from safcore.data.fingerprint import apply_saf, random_circle_masks

    private, saf, test, c_p, c_id = trained
    g = torch.Generator().manual_seed(7)
    others = private.others[:8]
    painted = apply_saf(others, random_circle_masks(8, 28, private.radius, g), saf.grey)
    images = torch.cat([private.x_p[None].repeat(4, 1, 1, 1), private.x_i[None].repeat(2, 1, 1, 1), painted])
    result = audit(images, c_p, c_id, private.x_p, n_dataset=private.n)
    assert result.q_indices == (0, 1, 2, 3)  # copies of x_p
    assert set(result.cid_indices) <= {0, 1, 2, 3, 4, 5}  # x_p without its SAF may be c_id+, never q
    assert set(result.cp_false_positives) == set(range(6, 14))  # other images with an SAF: c_p+ only
    assert result.mae == 0.0
    assert audit(test, c_p, c_id, private.x_p, n_dataset=private.n).n_q == 0
