"""One device for a study (issue 12, item 1): every stage's tensors live where the study was told to run."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from safcore.runtime.runs import config_key
from safcore.study import Study

pytestmark = pytest.mark.usefixtures("one_thread")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA here"))]


@pytest.mark.parametrize("device", DEVICES)
def test_every_tensor_of_a_loaded_study_is_on_its_device(data_root, smoke_store, device, monkeypatch):
    """The smoke study's stages are read from the run store (trained once per session) and land on the device."""
    run_store = smoke_store
    study = Study("breastmnist", 8, profile="smoke", data_root=data_root, store=run_store, progress=False, device=device)
    assert study.device.type == device
    result = study.audit()
    probe = study.probe(study.probe_config(M=2, grid=(0.5, 0.1)))
    # t' is kept in the run store: asked again (here or by a sweep, a notebook) it is read, not probed
    import safcore.study.stages  # the probe stage runs find_t_prime there

    def no_probe(*args, **kwargs):
        raise AssertionError("probed again")

    monkeypatch.setattr(safcore.study.stages, "find_t_prime", no_probe)
    again = study.probe(study.probe_config(M=2, grid=(0.5, 0.1)))
    assert (again.t_prime, again.k.tolist()) == (probe.t_prime, probe.k.tolist())
    loaded = study.tensors()
    assert set(loaded) == {"score_model", "c_p", "c_id"}
    for name, tensors in loaded.items():
        assert tensors and {t.device.type for t in tensors} == {device}, name
    assert result.n == study.profile.n_samples
    # a kept checkpoint comes back on the device too
    step = study.profile.train.keep_steps[0]
    assert {p.device.type for p in study.model_at(step).parameters()} == {device}
    # the device is no part of any key: the CPU study reuses what this one computed
    other = Study("breastmnist", 8, profile="smoke", data_root=data_root, store=run_store, progress=False, device="cpu")
    assert config_key(other.model_config()) == config_key(study.model_config())
    assert config_key(other.classifier_config("c_p")) == config_key(study.classifier_config("c_p"))


def test_a_device_this_machine_lacks_is_one_clear_error(data_root, run_store):
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ValueError, match=rf"device 'cuda:{count}' is not available: this machine has {count} CUDA"):
        Study("breastmnist", 8, profile="smoke", data_root=data_root, store=run_store, device=f"cuda:{count}")
    with pytest.raises(ValueError, match="device 'tpu'; allowed: auto, cpu, cuda, cuda:N"):
        Study("breastmnist", 8, profile="smoke", data_root=data_root, store=run_store, device="tpu")


# ------------------------------------------------------------------ batches prepared ahead (classifier training)


def _random_batches(seed: int, n: int = 7):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(n):
        yield torch.rand(4, 1, 8, 8, generator=generator), torch.randint(0, 2, (4,), generator=generator)


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_batches_ahead_yields_the_same_batches_in_order(depth):
    from safcore.runtime.device import batches_ahead

    direct = list(_random_batches(0))
    ahead = list(batches_ahead(_random_batches(0), "cpu", depth=depth))
    assert len(ahead) == len(direct) == 7
    for (a, b), (c, d) in zip(ahead, direct, strict=True):
        assert torch.equal(a, c) and torch.equal(b, d) and a.device.type == "cpu"


def test_batches_ahead_raises_the_producers_error_and_stops_its_thread():
    import threading

    from safcore.runtime.device import batches_ahead

    def failing():
        yield torch.zeros(1), torch.zeros(1)
        raise RuntimeError("augmentation broke")

    with pytest.raises(RuntimeError, match="augmentation broke"):
        list(batches_ahead(failing(), "cpu", depth=2))
    taken = batches_ahead(_random_batches(1, n=50), "cpu", depth=2)
    next(taken)
    taken.close()  # a consumer that stops early: the producer thread ends
    assert not [t for t in threading.enumerate() if t.name == "safcore-batches-ahead" and t.is_alive()]
    with pytest.raises(ValueError, match="depth = -1"):
        next(batches_ahead(_random_batches(0), "cpu", depth=-1))


def test_classifier_training_is_the_same_with_batches_prepared_ahead(monkeypatch):
    """The producer thread makes every SAF batch (and its random draws) in order: same weights as without it."""
    import safcore.adversary.classifiers as classifiers
    from safcore.adversary.classifiers import ClassifierConfig, train_saf_classifier
    from safcore.runtime.device import batches_ahead

    torch.manual_seed(3)
    train, val = torch.rand(24, 1, 28, 28), torch.rand(12, 1, 28, 28)
    config = ClassifierConfig(arch="resnet18", stem_stride=2, epochs=2, patience=2, batch_size=8, augmix=False,
                              device="cpu")
    plain = train_saf_classifier(train, val, config=config, progress=False)
    monkeypatch.setattr(classifiers, "batches_ahead", lambda batches, device: batches_ahead(batches, device, depth=2))
    ahead = train_saf_classifier(train, val, config=config, progress=False)
    for (name, a), (_, b) in zip(plain.model.state_dict().items(), ahead.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_a_study_of_loaded_data_is_the_study_of_its_flag(data_root, run_store):
    """``Study(MedMNISTData, ...)`` (a sweep loads each dataset once) uses that object and keys every stage as the
    study of the flag does."""
    from safcore.data.datasets import load_dataset

    data = load_dataset("breastmnist", root=data_root)
    loaded = Study(data, 8, profile="smoke", store=run_store, progress=False)
    by_flag = Study("breastmnist", 8, profile="smoke", data_root=data_root, store=run_store, progress=False)
    assert loaded.data is data
    assert loaded.model_config() == by_flag.model_config()
    assert loaded.classifier_config("c_p") == by_flag.classifier_config("c_p")
    assert torch.equal(loaded.private.images, by_flag.private.images)
    with pytest.raises(ValueError, match="100000"):
        Study(data, 100000, profile="smoke", store=run_store)


def test_bf16_runs_where_the_device_has_it_and_full_precision_elsewhere(monkeypatch, tmp_path):
    """A bf16 profile on a device without native bf16 (a V100, say) trains in fp32 — bit for bit the fp32 run — with
    one warning, instead of failing or emulating; the CPU autocasts."""
    import safcore.runtime.device as device_lib
    from conftest import half_images
    from safcore.generators.train import TrainConfig, train

    assert device_lib.bf16_supported("cpu")
    with device_lib.bf16_autocast("cpu"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with device_lib.bf16_autocast("cpu", enabled=False):
        assert not torch.is_autocast_enabled("cpu")
    config = TrainConfig(preset="tiny", steps=3, batch_size=4, lr=2e-3, warmup_steps=1, checkpoint_every=3,
                         keep_steps=(3,), ema_decay=0.9, seed=0, device="cpu")
    fp32 = train(half_images(), config, tmp_path / "fp32", progress=False)
    bf16 = train(half_images(), dataclasses.replace(config, bf16=True), tmp_path / "bf16", progress=False)
    assert fp32.losses != bf16.losses  # the CPU does run bf16
    monkeypatch.setattr(device_lib, "_bf16_supported", lambda device: False)
    monkeypatch.setattr(device_lib, "_WARNED_BF16", set())
    with pytest.warns(RuntimeWarning, match="no native bfloat16"):
        fallback = train(half_images(), dataclasses.replace(config, bf16=True), tmp_path / "fallback", progress=False)
    assert fallback.losses == fp32.losses
