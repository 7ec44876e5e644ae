"""FID (domain extractor, Inception availability) and memorization metrics on hand-built sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from safcore.measures import extractor_training, features, fid
from safcore.measures.extractor_training import DomainExtractorConfig
from safcore.measures.features import InceptionUnavailableError
from safcore.measures.fid import FIDResult

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
def tiny_extractor() -> features.DomainFeatureExtractor:
    images, labels = _blobs(48, seed=0)
    val_images, val_labels = _blobs(16, seed=1)
    return extractor_training.train_domain_extractor(
        images, labels, task="multi-class", n_outputs=2, val_images=val_images, val_labels=val_labels,
        config=TINY, dataset_name="blobs",
    )


@pytest.fixture()
def no_inception(monkeypatch, tmp_path):
    """No $SAFCORE_INCEPTION_WEIGHTS and an empty torch hub cache."""
    monkeypatch.delenv(features.INCEPTION_WEIGHTS_ENV, raising=False)
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
    same = fid.fid(real, real, tiny_extractor)
    assert isinstance(same, FIDResult)
    assert same.extractor_name == "domain-resnet6[blobs]" and (same.n_real, same.n_fake) == (64, 64)
    assert abs(same.value) < 1e-3
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(real.shape, generator=g)
    values = [fid.fid(real, (real + s * noise).clamp(0, 1), tiny_extractor).value for s in (0.02, 0.1, 0.3)]
    assert same.value < values[0] < values[1] < values[2]
    assert values[2] > 100 * max(abs(same.value), 1e-4)
    shifted = fid.fid(real, (real + 0.3).clamp(0, 1), tiny_extractor).value
    assert shifted > values[0]


class _PoolFeatures(features.FeatureExtractor):
    """A fixed, untrained extractor: 4×4 average pool of the grey image (16 features), for FID arithmetic."""

    name = "pool4"
    num_features = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x.mean(dim=1, keepdim=True), 4).flatten(1) * 10


def test_subsample_is_seeded_without_replacement_and_never_up_samples():
    images = torch.arange(50.0)[:, None, None, None].expand(-1, 1, 28, 28)
    first = fid.subsample(images, 20, seed=3)
    ids = first[:, 0, 0, 0].long()
    assert first.shape == (20, 1, 28, 28)
    assert len(set(ids.tolist())) == 20 and bool((ids[1:] > ids[:-1]).all())  # distinct, original order
    assert torch.equal(fid.subsample(images, 20, seed=3), first)  # reproducible
    assert not torch.equal(fid.subsample(images, 20, seed=4), first)  # another seed, another draw
    assert not torch.equal(fid.subsample(images, 20, seed=3, side="fake"), first)  # its own stream
    assert fid.subsample(images, 50, seed=3) is images  # the whole set: used as given
    with pytest.raises(ValueError, match=r"never up-sampled"):
        fid.subsample(images, 51)
    with pytest.raises(ValueError, match=r"\[2, 50\]"):
        fid.subsample(images, 1)
    with pytest.raises(ValueError, match="allowed"):
        fid.subsample(images, 10, side="test")  # type: ignore[arg-type]


def test_fid_draws_the_larger_side_down_to_the_smaller_one():
    pool = _PoolFeatures()
    real, _ = _blobs(64, seed=5)
    fake = real[:40]  # a subset of the same set: the real side is drawn down, the fake one kept whole
    result = fid.fid(real, fake, pool, seed=2)
    assert (result.n_real, result.n_fake) == (40, 40)
    assert (result.n_real_given, result.n_fake_given, result.seed) == (64, 40, 2)
    assert str(result).endswith("(pool4; 40 of 64 real vs 40 generated, drawn with seed 2)")
    by_hand = fid.fid(fid.subsample(real, 40, seed=2), fake, pool, equal_sizes=False)
    assert by_hand.seed is None and (by_hand.n_real, by_hand.n_fake) == (40, 40)
    assert result.value == pytest.approx(by_hand.value, rel=1e-6)
    assert fid.fid(real, fake, pool, seed=2).value == result.value  # reproducible
    assert fid.fid(real, fake, pool, seed=3).value != result.value  # another draw
    # the other way round: the generated side is drawn down
    swapped = fid.fid(fake, real, pool, seed=2)
    assert (swapped.n_real, swapped.n_fake, swapped.n_real_given, swapped.n_fake_given) == (40, 40, 40, 64)
    # equal sizes given: nothing is drawn, a set against itself is 0
    same = fid.fid(real, real, pool)
    assert same.seed is None and abs(same.value) < 1e-3
    assert str(same) == f"FID {same.value:.2f} (pool4; 64 real vs 64 generated)"
    # the old behaviour on request
    unequal = fid.fid(real, fake, pool, equal_sizes=False)
    assert (unequal.n_real, unequal.n_fake, unequal.seed) == (64, 40, None)


def test_fid_n_per_side_and_its_limits():
    pool = _PoolFeatures()
    big, _ = _blobs(120, seed=10)
    small, _ = _blobs(30, seed=11)
    fake, _ = _blobs(64, seed=12)
    a = fid.fid(big, fake, pool, n_per_side=30)
    b = fid.fid(small, fake, pool, n_per_side=30)
    assert (a.n_real, a.n_fake, b.n_real, b.n_fake) == (30, 30, 30, 30)
    assert (a.n_real_given, b.n_real_given, a.n_fake_given) == (120, 30, 64)
    # both compare with the same 30 generated images (the fake draw does not depend on the real side)
    fake_30 = fid.subsample(fake, 30, seed=0, side="fake")
    assert b.value == pytest.approx(fid.fid(small, fake_30, pool, equal_sizes=False).value, rel=1e-6)
    assert a.value == pytest.approx(
        fid.fid(fid.subsample(big, 30, seed=0), fake_30, pool, equal_sizes=False).value, rel=1e-6
    )
    for bad in (31, 1, 2.5):
        with pytest.raises(ValueError, match=r"n_per_side=.*\[2, 30\]"):
            fid.fid(small, fake, pool, n_per_side=bad)  # type: ignore[arg-type]


def test_study_fid_uses_the_same_n_for_train_and_test(monkeypatch, tmp_path):
    """Study.fid on a stand-in study: FID_train against D_p (the images trained on, not the whole train split),
    n = min(n_fid, N_D, |test|) real and generated images for both."""
    from types import SimpleNamespace

    from safcore.study import Study

    splits = {"train": _blobs(100, seed=20)[0], "val": _blobs(12, seed=21)[0], "test": _blobs(30, seed=22)[0]}
    generated = _blobs(64, seed=23)[0]
    asked = []

    def samples(n):
        asked.append(n)
        return generated[:n]

    d_p = _blobs(40, seed=24)[0]

    def study(n_fid, n_dataset=40):
        return SimpleNamespace(
            profile=SimpleNamespace(n_fid=n_fid), n_dataset=n_dataset, private=SimpleNamespace(images=d_p[:n_dataset]),
            data=SimpleNamespace(split=lambda s: np.zeros((len(splits[s]), 28, 28), np.uint8)),
            images=lambda s: splits[s], samples=samples, store=SimpleNamespace(root=tmp_path), progress=False,
            device=torch.device("cpu"),
        )

    pool = _PoolFeatures()
    train, test = (Study.fid(study(64), split, extractor=pool) for split in ("train", "test"))  # type: ignore[arg-type]
    assert asked == [64, 64]
    assert (train.n_real, train.n_fake, test.n_real, test.n_fake) == (30, 30, 30, 30)  # the test split's size
    assert (train.n_real_given, test.n_real_given, train.n_fake_given) == (40, 30, 64)  # D_p, not the 100 of the split
    fake_30 = fid.subsample(generated, 30, seed=0, side="fake")
    expected = fid.fid(fid.subsample(d_p, 30, seed=0), fake_30, pool, equal_sizes=False)
    assert train.value == pytest.approx(expected.value, rel=1e-6)
    small = Study.fid(study(20), "train", extractor=pool, seed=1)  # type: ignore[arg-type]
    assert (small.n_real, small.n_fake, small.seed) == (20, 20, 1)  # n_fid smaller than both splits
    val = Study.fid(study(64), "val", extractor=pool)  # type: ignore[arg-type]
    assert (val.n_real, val.n_fake) == (12, 12)
    tiny = [Study.fid(study(64, n_dataset=16), split, extractor=pool) for split in ("train", "test")]  # type: ignore[arg-type]
    assert [(f.n_real, f.n_fake) for f in tiny] == [(16, 16), (16, 16)]  # N_D = 16: both at n = N_D


def test_fid_rejects_bad_input(tiny_extractor):
    real, _ = _blobs(4, seed=0)
    with pytest.raises(ValueError, match="at least 2"):
        fid.fid(real, real[:1], tiny_extractor)
    with pytest.raises(ValueError, match=r"\(N, 1\|3, H, W\)"):
        fid.fid(real[:, 0], real, tiny_extractor)
    with pytest.raises(ValueError, match="allowed"):
        fid.fid(real, real, "vgg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dataset="):
        fid.fid(real, real, "domain")


def test_inception_without_local_weights_raises_a_clear_error(no_inception, monkeypatch, tmp_path):
    real, _ = _blobs(4, seed=0)
    assert not features.inception_available()
    with pytest.raises(InceptionUnavailableError, match=features.INCEPTION_WEIGHTS_ENV) as error:
        fid.fid(real, real, "inception")
    assert "never downloads" in str(error.value) or "torch-fidelity" in str(error.value)
    monkeypatch.setenv(features.INCEPTION_WEIGHTS_ENV, str(tmp_path / "missing.pth"))
    with pytest.raises(InceptionUnavailableError, match="missing.pth"):
        fid.fid(real, real, "inception")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a state dict")
    monkeypatch.setenv(features.INCEPTION_WEIGHTS_ENV, str(garbage))
    with pytest.raises(InceptionUnavailableError):
        features.InceptionFeatureExtractor()


def test_auto_falls_back_to_the_cached_domain_extractor_and_says_so(no_inception, tmp_path):
    data = _npz_dataset(tmp_path / "blobs.npz")
    cache = tmp_path / "cache"
    real, _ = _blobs(32, seed=7)
    first = fid.fid(real, real.flip(-1), "auto", dataset=data, cache_dir=cache, domain_config=TINY)
    assert first.extractor_name == "domain-resnet6[blobs]"
    assert "Inception" in first.note and "domain" in first.note
    assert first.value > 0
    files = list(cache.glob("domain_extractor-blobs-*.safetensors"))
    assert len(files) == 1
    # the second call loads the cached weights (same numbers, the original training time kept)
    loaded = extractor_training.domain_extractor(data, cache, config=TINY)
    again = fid.fid(real, real.flip(-1), loaded)
    assert again.value == pytest.approx(first.value, rel=1e-5)
    assert loaded.train_seconds == loaded.train_seconds  # not NaN: read from the cache metadata
    assert len(loaded.history) == 2
    explicit = fid.fid(real, real.flip(-1), "domain", dataset=data, cache_dir=cache, domain_config=TINY)
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
    weights = tmp_path / features.INCEPTION_WEIGHTS_FILE
    torch.save(random_net.state_dict(), weights)
    monkeypatch.setenv(features.INCEPTION_WEIGHTS_ENV, str(weights))
    assert features.inception_available()
    network, note = fid.resolve_extractor("auto")
    assert isinstance(network, features.InceptionFeatureExtractor) and note == ""
    assert network.name == "inception-v3"
    real, _ = _blobs(2, seed=0)
    with torch.inference_mode():
        feats = network(real)
        assert feats.shape == (2, 2048)
        assert torch.allclose(network(real.repeat(1, 3, 1, 1)), feats)


def test_processes_that_need_the_domain_extractor_at_once_train_it_once(tmp_path, monkeypatch):
    """Four callers at once (sweep jobs, the ranks of an accelerate launch): one trains the extractor, the others
    wait on its lock and load the same weights."""
    import threading
    import time

    data = _npz_dataset(tmp_path / "blobs.npz")
    cache = tmp_path / "cache"
    trained = []
    real_train = extractor_training.train_domain_extractor

    def slow_train(*args, **kwargs):
        trained.append(threading.get_ident())
        time.sleep(0.5)  # long enough for the others to arrive while it trains
        return real_train(*args, **kwargs)

    monkeypatch.setattr(extractor_training, "train_domain_extractor", slow_train)
    got: list = [None] * 4

    def ask(i: int) -> None:
        got[i] = extractor_training.domain_extractor(data, cache, config=TINY)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(trained) == 1
    weights = [tuple(e.classifier.state_dict().values()) for e in got]
    assert all(all(torch.equal(a, b) for a, b in zip(w, weights[0], strict=True)) for w in weights)
    assert len(list(cache.glob("domain_extractor-blobs-*.safetensors"))) == 1
