"""FID (domain extractor, Inception availability) and memorization metrics on hand-built sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from safcore import metrics
from safcore.metrics import DomainExtractorConfig, FIDResult, InceptionUnavailableError

TINY = DomainExtractorConfig(widths=(4, 8), epochs=2, batch_size=16, max_steps=8, seed=0)


def _blobs(n: int, seed: int, channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with one bright Gaussian blob; label 0 = blob on the left half, 1 = right half."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    rows = torch.randint(6, 22, (n,), generator=g).float()
    cols = torch.where(labels == 0, torch.randint(4, 12, (n,), generator=g), torch.randint(16, 24, (n,), generator=g)).float()
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    blob = torch.exp(-((yy - rows[:, None, None]) ** 2 + (xx - cols[:, None, None]) ** 2) / 18.0)
    images = (0.1 + 0.8 * blob)[:, None].repeat(1, channels, 1, 1)
    return images.clamp(0, 1), labels


@pytest.fixture(scope="module")
def tiny_extractor() -> metrics.DomainFeatureExtractor:
    images, labels = _blobs(48, seed=0)
    val_images, val_labels = _blobs(16, seed=1)
    return metrics.train_domain_extractor(
        images, labels, task="multi-class", n_outputs=2, val_images=val_images, val_labels=val_labels,
        config=TINY, dataset_name="blobs",
    )


@pytest.fixture()
def no_inception(monkeypatch, tmp_path):
    """No $SAFCORE_INCEPTION_WEIGHTS and an empty torch hub cache."""
    monkeypatch.delenv(metrics.INCEPTION_WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))


def _npz_dataset(path, seed: int = 0):
    """A tiny dataset in the MedMNIST npz layout (uint8 images, (N, 1) labels)."""
    arrays = {}
    for split, n in (("train", 48), ("val", 16), ("test", 16)):
        images, labels = _blobs(n, seed=seed + len(arrays))
        arrays[f"{split}_images"] = (images[:, 0] * 255).round().to(torch.uint8).numpy()
        arrays[f"{split}_labels"] = labels.numpy()[:, None].astype(np.int64)
    np.savez(path, **arrays)
    return path


# ------------------------------------------------------------------------------------------- FID


def test_domain_extractor_shapes_history_and_channels(tiny_extractor):
    assert tiny_extractor.num_features == 8
    assert tiny_extractor.name == "domain-resnet6[blobs]"
    assert [row["epoch"] for row in tiny_extractor.history] == [1, 2]
    assert {"train_loss", "train_acc", "val_loss", "val_acc"} <= set(tiny_extractor.history[0])
    images, _ = _blobs(5, seed=3)
    grey = tiny_extractor(images)
    assert grey.shape == (5, 8)
    # the paper feeds grey data as 3 repeated channels: same features either way
    assert torch.allclose(tiny_extractor(images.repeat(1, 3, 1, 1)), grey, atol=1e-6)
    tiny_extractor.train()
    assert not tiny_extractor.training  # never leaves eval mode inside torchmetrics


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise(tiny_extractor):
    real, _ = _blobs(64, seed=5)
    same = metrics.fid(real, real, tiny_extractor)
    assert isinstance(same, FIDResult)
    assert same.extractor_name == "domain-resnet6[blobs]" and (same.n_real, same.n_fake) == (64, 64)
    assert abs(same.value) < 1e-3
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(real.shape, generator=g)
    values = [metrics.fid(real, (real + s * noise).clamp(0, 1), tiny_extractor).value for s in (0.02, 0.1, 0.3)]
    assert same.value < values[0] < values[1] < values[2]
    assert values[2] > 100 * max(abs(same.value), 1e-4)
    shifted = metrics.fid(real, (real + 0.3).clamp(0, 1), tiny_extractor).value
    assert shifted > values[0]


def test_fid_rejects_bad_input(tiny_extractor):
    real, _ = _blobs(4, seed=0)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.fid(real, real[:1], tiny_extractor)
    with pytest.raises(ValueError, match=r"\(N, 1\|3, H, W\)"):
        metrics.fid(real[:, 0], real, tiny_extractor)
    with pytest.raises(ValueError, match="allowed"):
        metrics.fid(real, real, "vgg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dataset="):
        metrics.fid(real, real, "domain")


def test_inception_without_local_weights_raises_a_clear_error(no_inception, monkeypatch, tmp_path):
    real, _ = _blobs(4, seed=0)
    assert not metrics.inception_available()
    with pytest.raises(InceptionUnavailableError, match=metrics.INCEPTION_WEIGHTS_ENV) as error:
        metrics.fid(real, real, "inception")
    assert "never downloads" in str(error.value) or "torch-fidelity" in str(error.value)
    monkeypatch.setenv(metrics.INCEPTION_WEIGHTS_ENV, str(tmp_path / "missing.pth"))
    with pytest.raises(InceptionUnavailableError, match="missing.pth"):
        metrics.fid(real, real, "inception")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a state dict")
    monkeypatch.setenv(metrics.INCEPTION_WEIGHTS_ENV, str(garbage))
    with pytest.raises(InceptionUnavailableError):
        metrics.InceptionFeatureExtractor()


def test_auto_falls_back_to_the_cached_domain_extractor_and_says_so(no_inception, tmp_path):
    data = _npz_dataset(tmp_path / "blobs.npz")
    cache = tmp_path / "cache"
    real, _ = _blobs(32, seed=7)
    first = metrics.fid(real, real.flip(-1), "auto", dataset=data, cache_dir=cache, domain_config=TINY)
    assert first.extractor_name == "domain-resnet6[blobs]"
    assert "Inception" in first.note and "domain" in first.note
    assert first.value > 0
    files = list(cache.glob("domain_extractor-blobs-*.safetensors"))
    assert len(files) == 1
    # the second call loads the cached weights (same numbers, the original training time kept)
    loaded = metrics.domain_extractor(data, cache, config=TINY)
    again = metrics.fid(real, real.flip(-1), loaded)
    assert again.value == pytest.approx(first.value, rel=1e-5)
    assert loaded.train_seconds == loaded.train_seconds  # not NaN: read from the cache metadata
    assert len(loaded.history) == 2
    explicit = metrics.fid(real, real.flip(-1), "domain", dataset=data, cache_dir=cache, domain_config=TINY)
    assert explicit.note == "" and explicit.value == pytest.approx(first.value, rel=1e-5)


def test_domain_config_validation():
    with pytest.raises(ValueError, match="epochs"):
        DomainExtractorConfig(epochs=0)
    with pytest.raises(ValueError, match="widths"):
        DomainExtractorConfig(widths=())
    with pytest.raises(ValueError, match="shift"):
        DomainExtractorConfig(shift=-1)


def test_inception_extractor_runs_with_local_weights(monkeypatch, tmp_path):
    """With torch-fidelity installed and a weights file on disk (random weights here), "auto" uses Inception."""
    fidelity = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    cls = fidelity.FeatureExtractorInceptionV3
    with monkeypatch.context() as patch:  # build an untrained network without any download
        patch.setattr(fidelity, "load_state_dict_from_url", lambda *a, **k: {})
        patch.setattr(cls, "load_state_dict", lambda self, state, *a, **k: None)
        torch.manual_seed(0)
        random_net = cls("inception-v3-compat", ["2048"])
    weights = tmp_path / metrics.INCEPTION_WEIGHTS_FILE
    torch.save(random_net.state_dict(), weights)
    monkeypatch.setenv(metrics.INCEPTION_WEIGHTS_ENV, str(weights))
    assert metrics.inception_available()
    network, note = metrics.resolve_extractor("auto")
    assert isinstance(network, metrics.InceptionFeatureExtractor) and note == ""
    assert network.name == "inception-v3"
    real, _ = _blobs(2, seed=0)
    with torch.inference_mode():
        features = network(real)
        assert features.shape == (2, 2048)
        assert torch.allclose(network(real.repeat(1, 3, 1, 1)), features)
