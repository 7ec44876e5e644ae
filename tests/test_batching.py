"""The GPU path on the CPU: the network micro-batch chosen for a device's memory (a faked ``torch.cuda``), its
draws unchanged; channels_last / torch.compile of the U-Net; the probe's reverse runs batched across t."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

from safcore.generators.base import steps_for
from safcore.generators.loader import Sampling
from safcore.generators.score_model import ScoreModel, build_unet
from safcore.generators.sampling import sample
from safcore.generators.sde import GaussianDataScore, SubVPSDE
from safcore.probe import q_curve
from safcore.runtime import batching
from safcore.runtime.batching import fitting_batch_size, forward_batch, in_micro_batches
from safcore.runtime.device import faster_network
from safcore.runtime.runs import RunStore
from safcore.study import stages
from safcore.study.profiles import SMOKE


@pytest.fixture(scope="module")
def model() -> ScoreModel:
    torch.manual_seed(0)
    return ScoreModel(build_unet("tiny", 1), SubVPSDE()).eval()


class FakeCuda:
    """``torch.cuda``'s memory calls: ``base`` bytes allocated, a forward pass of n images peaks at
    ``base + n · per_image``, ``free`` bytes free."""

    def __init__(self, monkeypatch, *, free: int, per_image: int, base: int = 10_000) -> None:
        self.base, self.per_image, self.free, self.peak, self.calls = base, per_image, free, base, []
        for name, fn in {"is_available": lambda: True, "synchronize": lambda device=None: None,
                         "reset_peak_memory_stats": self.reset, "memory_allocated": lambda device=None: self.base,
                         "max_memory_allocated": lambda device=None: self.peak,
                         "mem_get_info": lambda device=None: (self.free, 80 * 2**30)}.items():
            monkeypatch.setattr(torch.cuda, name, fn)

    def reset(self, device=None) -> None:
        self.peak = self.base

    def forward(self, n: int) -> None:
        self.calls.append(n)
        self.peak = self.base + n * self.per_image


def test_cpu_keeps_the_setting():
    choice = fitting_batch_size(lambda n: pytest.fail("no trial pass on the CPU"), "cpu", 64)
    assert (choice.batch_size, choice.cap, choice.free_bytes, choice.per_image_bytes) == (64, 64, None, None)


def test_cuda_choice_from_free_memory(monkeypatch):
    mib = 2**20
    fake = FakeCuda(monkeypatch, free=1000 * mib, per_image=10 * mib)
    choice = fitting_batch_size(fake.forward, "cuda", 4096, safety=0.7, trial=4)
    assert fake.calls == [4]
    assert choice.per_image_bytes == 10 * mib and choice.free_bytes == 1000 * mib
    assert choice.batch_size == 70  # ⌊0.7 · 1000 / 10⌋
    assert fitting_batch_size(fake.forward, "cuda:0", 32).batch_size == 32  # capped by the setting
    assert fake.calls[-1] == 4
    fake.free = 5 * mib  # less than one image: still 1
    assert fitting_batch_size(fake.forward, "cuda", 32).batch_size == 1
    assert fitting_batch_size(fake.forward, "cuda", 2, trial=8).batch_size == 1 and fake.calls[-1] == 2
    record = choice.record()
    assert record["forward_batch"] == 70 and record["forward_batch_cap"] == 4096


@pytest.mark.parametrize("bad", [dict(cap=0), dict(cap=True), dict(safety=0.0), dict(safety=1.5), dict(trial=0)])
def test_bad_settings(bad):
    args = {"cap": 8, **bad}
    cap = args.pop("cap")
    with pytest.raises(ValueError, match="allowed"):
        fitting_batch_size(lambda n: None, "cpu", cap, **args)


def test_forward_choice_on_a_faked_gpu(monkeypatch):
    fake = FakeCuda(monkeypatch, free=2**30, per_image=2**20)
    seen = []

    class Gpu:  # what forward_choice asks of a Generator on CUDA
        device, channels, image_size = torch.device("cuda"), 3, 16

        def eps(self, x, t):
            seen.append(tuple(x.shape))
            fake.forward(x.shape[0])

    monkeypatch.setattr(stages, "as_generator", lambda model, method: model)
    monkeypatch.setattr(torch, "zeros", lambda shape, device=None: torch.empty(shape, device="meta"))
    monkeypatch.setattr(torch, "full", lambda shape, value, device=None: torch.empty(shape, device="meta"))
    choice = stages.forward_choice(Gpu(), None, 512, method="euler_maruyama")
    assert seen == [(4, 3, 16, 16)] and choice.batch_size == 512  # 0.7 GiB / 1 MiB = 716 > 512
    assert stages.forward_choice(Gpu(), 7, 512, method="euler_maruyama").batch_size == 7  # the user's setting


def test_forward_choice_on_the_cpu_is_none(model):
    assert stages.forward_choice(model, None, 64, method="euler_maruyama") is None


def test_micro_batches_split_and_restore():
    rows = []

    def call(sl):
        rows.append(sl)
        return torch.arange(10)[sl]

    assert torch.equal(in_micro_batches(call, 10), torch.arange(10)) and rows == [slice(None)]
    rows.clear()
    with forward_batch(4):
        assert batching.current_forward_batch() == 4
        assert torch.equal(in_micro_batches(call, 10), torch.arange(10))
    assert rows == [slice(0, 4), slice(4, 8), slice(8, 10)] and batching.current_forward_batch() is None
    with pytest.raises(ValueError, match="allowed"):
        with forward_batch(0):
            pass


@pytest.mark.parametrize("method", ["euler_maruyama", "dpm2m_sde_t", "pc"])
def test_sampler_chunk_changes_draws_but_micro_batches_do_not(model, method):
    """The seeding scheme draws noise per sampler chunk, so the chunk (``sample_batch``) stays out of the
    automatic choice; micro-batching the network inside a chunk draws the same noise: identical images for a
    row-wise exact score, the U-Net's within float rounding (a conv of another batch size rounds otherwise)."""

    def run(score, batch_size, limit=None):
        with forward_batch(limit):
            return sample(score, model.sde, shape=(6, 1, 28, 28), method=method, steps=6, batch_size=batch_size,
                          generator=torch.Generator().manual_seed(3), progress=False)

    exact = GaussianDataScore(model.sde, 0.1, 0.5)
    whole = run(exact, 6)
    assert not torch.allclose(run(exact, 3).images, whole.images, atol=1e-2)  # another chunk: other draws
    for limit in (1, 4):
        micro = run(exact, 6, limit)
        assert torch.equal(micro.images, whole.images)
        assert torch.equal(micro.nfe_per_sample, whole.nfe_per_sample)
    net = run(model, 6)
    scale = float(net.images.abs().max())  # the untrained U-Net's samples reach |x| ~ 100
    assert float((run(model, 3).images - net.images).abs().max()) > 0.01 * scale
    assert float((run(model, 6, 4).images - net.images).abs().max()) <= 1e-6 * scale


def test_stage_records_the_micro_batch_not_in_the_key(model, tmp_path):
    how = Sampling("euler_maruyama", 4, False)
    profile = dataclasses.replace(SMOKE, sampler="euler_maruyama", sample_batch=4, split_seeds=False)
    store = RunStore(tmp_path)
    plain = stages.stored_samples(store, {"k": 1}, lambda: model, 6, how, 0, profile=profile, shape=(1, 28, 28),
                                  progress=False)
    micro_store = RunStore(tmp_path / "micro")
    micro = stages.stored_samples(micro_store, {"k": 1}, lambda: model, 6, how, 0,
                                  profile=dataclasses.replace(profile, forward_batch=3), shape=(1, 28, 28),
                                  progress=False)
    assert float((plain - micro).abs().max()) <= 1e-4  # unit range: only the conv's rounding differs
    assert store.path("samples", {"k": 1}).name == micro_store.path("samples", {"k": 1}).name
    extras = [json.dumps(s.find("samples", {"k": 1}).manifest.get("extra")) for s in (store, micro_store)]
    assert "forward_batch" not in extras[0] and '"forward_batch": 3' in extras[1]


def test_channels_last_equals_default(model):
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.2, 0.5, 0.9])
    with torch.inference_mode():
        ref = model(x, t)
        with faster_network(model, channels_last=True):
            assert next(model.parameters()).dim() != 4 or any(
                p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters())
            fast = model(x, t)
    assert torch.allclose(fast, ref, atol=1e-5, rtol=0)
    assert "forward" not in model.__dict__  # restored
    assert all(p.is_contiguous() for p in model.parameters())
    with pytest.raises(ValueError, match="allowed"):
        with faster_network(model, compile=True, compile_mode="fast"):
            pass


@pytest.mark.skipif(os.environ.get("SAFCORE_TEST_COMPILE") != "1",
                    reason="torch.compile of the tiny U-Net took 71 s on this 2-core CPU (over a test's budget); "
                           "SAFCORE_TEST_COMPILE=1 runs it")
def test_compile_equals_default(model):
    x, t = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(2)), torch.tensor([0.3, 0.7])
    with torch.inference_mode():
        ref = model(x, t)
        with faster_network(model, channels_last=True, compile=True):
            fast = model(x, t)
    assert torch.allclose(fast, ref, atol=1e-5, rtol=0) and "forward" not in model.__dict__


def test_probe_reverse_batched_across_t(model):
    """The exhaustive probe runs several t in one sampler call (per-row start times and step counts): the
    network is called max_t steps(t) times for a call of several t, each trajectory costs its own steps(t)
    (NFE = Σ M · steps(t)), and micro-batching the network changes no count."""
    grid, M, steps_full, eps = (0.9, 0.8, 0.7), 2, 20, 1e-3
    calls = []

    def counted(x, t):
        calls.append(x.shape[0])
        return model(x, t)

    def curve(limit=None, waste=0.5):
        with forward_batch(limit):
            return q_curve(counted, model.sde, torch.full((1, 28, 28), 0.5), lambda x: x.mean((1, 2, 3)) > 0.5,
                           lambda x: torch.ones(x.shape[0], dtype=torch.bool), grid, M, steps_full=steps_full,
                           eps=eps, batch_size=64, batch_waste=waste, generator=torch.Generator().manual_seed(0),
                           progress=False)

    result = curve()
    steps = [steps_for(t, steps_full, eps) for t in grid]
    assert steps == [18, 16, 14]
    assert len(calls) == max(steps)  # one sampler call for the three t: one network call per iteration
    assert sum(calls) == M * sum(steps) == result.nfe
    assert list(result.nfe_per_t) == [M * s for s in reversed(steps)]
    calls.clear()
    again = curve(limit=3)
    assert list(again.k) == list(result.k) and again.nfe == result.nfe and sum(calls) == result.nfe
    assert max(calls) <= 3
    calls.clear()
    alone = curve(waste=0.0)  # no t may wait: one call per t, the same NFE
    assert len(calls) == sum(steps) and alone.nfe == result.nfe


def test_bench_gpu_path_quick(tmp_path):
    """benchmarks/bench_gpu_path.py --quick: every lever's row at the first batch size, plain fp32 at the others,
    the plain row of each batch at ratio 1."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu_path.py"
    spec = importlib.util.spec_from_file_location("bench_gpu_path", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu_path"] = bench
    spec.loader.exec_module(bench)
    assert bench.main(["--quick", "--device", "cpu", "--out", str(tmp_path / "g")]) == 0
    rows = json.loads((tmp_path / "g.json").read_text())["rows"]
    settings = [(r["batch"], r["bf16"], r["channels_last"], r["compile"]) for r in rows]
    assert settings == [(8, False, False, False), (8, True, False, False), (8, False, True, False),
                        (8, True, True, False), (4, False, False, False)]
    assert rows[0]["ratio"] == rows[-1]["ratio"] == 1.0 and all(r["images_per_s"] > 0 for r in rows)
    assert "ratio: to plain fp32" in (tmp_path / "g.txt").read_text()
