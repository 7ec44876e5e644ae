"""One device for a study (issue 12, item 1): every stage's tensors live where the study was told to run."""

from __future__ import annotations

import pytest
import torch

from safcore.runs import config_key
from safcore.study import Study

pytestmark = pytest.mark.usefixtures("one_thread")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA here"))]


@pytest.mark.parametrize("device", DEVICES)
def test_every_tensor_of_a_loaded_study_is_on_its_device(data_root, run_store, device, monkeypatch):
    study = Study("breastmnist", 8, profile="smoke", data_root=data_root, store=run_store, progress=False, device=device)
    assert study.device.type == device
    result = study.audit()
    probe = study.probe(study.probe_config(M=2, grid=(0.5, 0.1)))
    # t' is kept in the run store: asked again (here or by a sweep, a notebook) it is read, not probed
    import safcore.study

    def no_probe(*args, **kwargs):
        raise AssertionError("probed again")

    monkeypatch.setattr(safcore.study, "find_t_prime", no_probe)
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
