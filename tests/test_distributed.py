"""safcore.study.distributed: split sampling and probe independent of the world size, DDP training and its resume,
and ``safcore demo`` under ``accelerate launch`` with two CPU processes (gloo over 127.0.0.1)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from safcore.study.distributed import (
    SplitSampling,
    chunks_of_rank,
    derived_seed,
    merge_probe,
    probe_job_tallies,
    probe_jobs,
    probe_split,
    sample_chunks,
    sample_split,
    topdown_split,
    topdown_units,
    train_distributed,
)
from safcore.generators.score_model import ScoreModel, build_unet
from safcore.probe import ProbeConfig
from safcore.generators.sampling import sample
from safcore.generators.checkpoints import latest_checkpoint
from safcore.generators.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")


def _model(seed: int = 0) -> ScoreModel:
    torch.manual_seed(seed)
    return ScoreModel(build_unet("tiny", channels=1, image_size=28)).eval()


def _images(n: int = 6) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(n, 1, 28, 28)


def _config(**changes) -> TrainConfig:
    base = dict(preset="tiny", steps=6, batch_size=4, lr=2e-3, warmup_steps=2, checkpoint_every=2, keep_steps=(6,),
                ema_decay=0.9, seed=0, device="cpu")
    return TrainConfig(**{**base, **changes})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_QUIET = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "SAFCORE_PROGRESS": "0", "SAFCORE_OFFLINE": "1"}


def _launch(args: list[str], *, processes: int, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """``accelerate launch`` of ``processes`` CPU processes (torchrun, gloo on 127.0.0.1), one thread each."""
    env = {**os.environ, **_QUIET, **(env or {})}
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
           "--main_process_port", str(_free_port()), *args]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


# ------------------------------------------------------------------ seeds and sampling


def test_derived_seed_rule():
    assert derived_seed(7, 0) == 7
    assert derived_seed(7, 1) == int(np.random.SeedSequence([7, 1]).generate_state(1, dtype=np.uint64)[0] >> 1)
    assert len({derived_seed(s, i) for s in range(3) for i in range(4)}) == 12
    with pytest.raises(ValueError, match="index"):
        derived_seed(0, -1)


def test_sample_split_is_the_same_for_one_and_two_ranks():
    model, settings = _model(), SplitSampling(chunk_size=2, steps=3)
    n, seed = 5, 11
    one = sample_split(model, n, seed, settings, progress=False)
    assert one.shape == (5, 1, 28, 28) and 0.0 <= float(one.min()) and float(one.max()) <= 1.0
    assert chunks_of_rank(n, 2, 0, 2) == [0, 2] and chunks_of_rank(n, 2, 1, 2) == [1]
    drawn = {}
    for rank in (0, 1):  # two ranks simulated in one process, then merged in chunk order
        drawn.update(sample_chunks(model, n, seed, chunks_of_rank(n, 2, rank, 2), settings))
    two = torch.cat([drawn[c] for c in sorted(drawn)])
    assert torch.equal(one, two)
    # chunk 0 is sample() with the seed itself: one chunk reproduces the single-process sampler
    g = torch.Generator().manual_seed(seed)
    plain = sample(model, model.sde, shape=(2, 1, 28, 28), steps=3, generator=g, progress=False).images
    assert torch.equal(one[:2], ((plain.float() + 1) / 2).clamp(0, 1))
    # another seed or chunking gives other images (the test can fail)
    assert not torch.equal(one, sample_split(model, n, seed + 1, settings, progress=False))
    with pytest.raises(ValueError, match="chunk indices"):
        sample_chunks(model, n, seed, [3], settings)
    with pytest.raises(ValueError, match="rank"):
        chunks_of_rank(n, 2, 2, 2)


def test_probe_split_is_the_same_for_one_and_two_ranks():
    model = _model()
    x_p = torch.rand(1, 28, 28)
    c_p = lambda x: x[:, 0, :, :14].mean(dim=(1, 2)) > x[:, 0, :, 14:].mean(dim=(1, 2))  # noqa: E731 — fixed classifiers
    c_id = lambda x: x[:, 0, :14].mean(dim=(1, 2)) > x[:, 0, 14:].mean(dim=(1, 2)) - 0.05  # noqa: E731
    config = ProbeConfig(M=3, grid=(0.8, 0.6, 0.4, 0.2), steps_full=4, batch_size=6, batch_waste=1.0, repeats=2, n_example_t=2,
                         n_examples=2)
    assert probe_jobs(config) == [(0.8, 0.6), (0.4, 0.2)]
    one = probe_split(model, model.sde, x_p, c_p, c_id, config, progress=False)
    pairs = [(run, j) for run in range(2) for j in range(2)]
    tallies = {}
    for rank in (0, 1):
        tallies.update(probe_job_tallies(model, model.sde, x_p, c_p, c_id, config,
                                         [p for i, p in enumerate(pairs) if i % 2 == rank]))
    two = merge_probe(model, model.sde, config, tallies)
    assert np.array_equal(one.ts, two.ts) and np.array_equal(one.n, two.n) and np.array_equal(one.k, two.k)
    assert one.n.tolist() == [6, 6, 6, 6]  # M per run, 2 runs, every grid t
    assert one.k.sum() > 0 and one.t_prime is not None  # positives occur: t' is checked, not vacuous
    assert one.t_prime == two.t_prime and one.t_prime_runs == two.t_prime_runs
    positive = [t for t, k in zip(one.ts, one.k) if k > 0]
    assert one.t_prime == (max(positive) if positive else None)
    assert one.eq9_indicator == two.eq9_indicator
    for a, b in zip(one.examples, two.examples):
        assert torch.equal(a.samples, b.samples)
    with pytest.raises(ValueError, match="exhaustive"):
        merge_probe(model, model.sde, ProbeConfig(M=3, grid=(0.5,), search="topdown"), tallies)
    with pytest.raises(ValueError, match="missing"):
        merge_probe(model, model.sde, config, {k: v for k, v in tallies.items() if k != (1, 1)})


class _ThreadWorld:
    """W ranks as W threads of this process: ``gather`` hands every rank the objects of all (rank order)."""

    def __init__(self, world: int):
        self.world, self.slots = world, [None] * world
        self.barrier = threading.Barrier(world)

    def gather(self, rank: int, obj):
        self.slots[rank] = obj
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()
        return out


class _ThreadRank:
    def __init__(self, world: _ThreadWorld, rank: int):
        self.world, self.process_index, self.num_processes = world, rank, world.world


def _in_threads(world: int, run, monkeypatch):
    """``run(accelerator)`` on ``world`` simulated ranks (threads); returns every rank's result."""
    import safcore.runtime.parallel as parallel

    monkeypatch.setattr(parallel, "gather", lambda acc, obj: [obj] if acc is None else acc.world.gather(
        acc.process_index, obj))
    shared, results = _ThreadWorld(world), [None] * world

    def target(rank: int) -> None:
        results[rank] = run(_ThreadRank(shared, rank))

    threads = [threading.Thread(target=target, args=(r,)) for r in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_topdown_split_is_the_same_for_one_two_and_three_ranks(monkeypatch):
    """Rounds of W units, the first positive in the search's order ends a run: t', counts and examples do not
    depend on W; classifiers that always / never fire give the known answers (top of the grid after one
    sample / no t' after all M at every t)."""
    model = _model()
    x_p = torch.rand(1, 28, 28)
    c_p = lambda x: x[:, 0, :, :14].mean(dim=(1, 2)) > x[:, 0, :, 14:].mean(dim=(1, 2))  # noqa: E731
    c_id = lambda x: x[:, 0, :14].mean(dim=(1, 2)) > x[:, 0, 14:].mean(dim=(1, 2)) - 0.05  # noqa: E731
    config = ProbeConfig(M=4, grid=(0.8, 0.6, 0.4, 0.2), steps_full=4, batch_size=4, search="topdown", repeats=3,
                         n_example_t=2, n_examples=2)
    assert topdown_units(config)[:4] == [(0, 1), (0, 1), (0, 2), (1, 1)]
    one = probe_split(model, model.sde, x_p, c_p, c_id, config, progress=False)
    assert one.search == "topdown" and one.k.sum() > 0 and one.t_prime is not None  # positives occur
    for world in (2, 3):
        results = _in_threads(world, lambda acc: topdown_split(model, model.sde, x_p, c_p, c_id, config,
                                                               accelerator=acc, progress=False), monkeypatch)
        for other in results:
            assert other.t_prime_runs == one.t_prime_runs and other.t_prime == one.t_prime
            assert np.array_equal(other.ts, one.ts) and np.array_equal(other.n, one.n) and np.array_equal(other.k, one.k)
            assert other.k_at_t_prime == one.k_at_t_prime and other.nfe == one.nfe
            for a, b in zip(other.examples, one.examples, strict=True):
                assert torch.equal(a.samples, b.samples)
    always = lambda x: torch.ones(x.shape[0], dtype=torch.bool)  # noqa: E731
    never = lambda x: torch.zeros(x.shape[0], dtype=torch.bool)  # noqa: E731
    top = probe_split(model, model.sde, x_p, always, always, config, progress=False)
    assert top.t_prime == 0.8 and top.n.tolist() == [3] and top.k.tolist() == [3]  # one sample per run
    none = probe_split(model, model.sde, x_p, always, never, config, progress=False)
    assert none.t_prime is None and none.n.tolist() == [12, 12, 12, 12] and none.k.sum() == 0


# ------------------------------------------------------------------ training


def test_world_size_one_is_plain_training_and_refuses_plain_checkpoints(tmp_path):
    images, config = _images(), _config()
    plain = train(images, config, tmp_path / "plain", progress=False)
    ddp, trainer = train_distributed(images, config, tmp_path / "ddp", progress=False)
    assert ddp.losses == plain.losses
    for (name, a), (_, b) in zip(plain.model.named_parameters(), ddp.model.named_parameters()):
        assert torch.equal(a, b), name
    with safe_open(str(latest_checkpoint(tmp_path / "ddp")), framework="pt") as handle:
        record = json.loads(handle.metadata()["distributed"])
    assert record["world_size"] == 1 and record["rank_seeds"] == [config.seed]
    with pytest.raises(ValueError, match="single-process training"):
        train_distributed(images, config, tmp_path / "plain", progress=False)
    with pytest.raises(ValueError, match="multiple of the world size"):
        from safcore.generators.train import Trainer
        from safcore.runtime.parallel import DataParallel

        class _Two:  # an accelerator of world size 2 is only consulted for its rank and size here
            process_index, num_processes = 0, 2

        Trainer(images, _config(batch_size=5), parallel=DataParallel(_Two()))


_SCRIPT = """
import json, sys
from pathlib import Path
import torch
from accelerate import Accelerator
from safcore.study.distributed import train_distributed
from safcore.generators.train import TrainConfig

acc = Accelerator(cpu=True)
torch.manual_seed(1)
images = torch.rand(6, 1, 28, 28)
config = TrainConfig(preset="tiny", steps=6, batch_size=4, lr=2e-3, warmup_steps=2, checkpoint_every=2, keep_steps=(6,),
                     ema_decay=0.9, seed=0, device="cpu")
root = Path(sys.argv[1])
full, t_full = train_distributed(images, config, root / "full", accelerator=acc, progress=False)
crashed, _ = train_distributed(images, config, root / "resumed", accelerator=acc, progress=False, stop_after=5)
resumed, t_res = train_distributed(images, config, root / "resumed", accelerator=acc, progress=False)
train_distributed(images, config, root / "unfinished", accelerator=acc, progress=False, stop_after=3)
out = {"rank": acc.process_index, "world": acc.num_processes, "full_losses": list(full.losses),
       "resumed_losses": list(resumed.losses), "resumed_from": resumed.resumed_from, "crashed_steps": crashed.steps_done,
       "ema_full": t_full.ema_digest(), "ema_resumed": t_res.ema_digest()}
(root / f"rank{acc.process_index}.json").write_text(json.dumps(out))
"""


def test_ddp_two_processes_resume_is_bit_identical(tmp_path):
    script = tmp_path / "ddp_resume.py"
    script.write_text(textwrap.dedent(_SCRIPT))
    _launch([str(script), str(tmp_path)], processes=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["world"] == 2
        assert r["crashed_steps"] == 5 and r["resumed_from"] == 4
        assert r["full_losses"] == r["resumed_losses"]
        assert r["ema_full"] == r["ema_resumed"]
    assert ranks[0]["ema_full"] == ranks[1]["ema_full"]  # EMA identical on all ranks
    full = load_file(tmp_path / "full" / "checkpoint_step000006.safetensors")
    resumed = load_file(tmp_path / "resumed" / "checkpoint_step000006.safetensors")
    assert full.keys() == resumed.keys() and {"rng.generator.rank0", "rng.generator.rank1"} <= full.keys()
    for name in full:
        assert torch.equal(full[name], resumed[name]), name
    assert not torch.equal(full["rng.generator.rank0"], full["rng.generator.rank1"])
    # two ranks train another trajectory than one process (their own streams): the check can tell them apart
    single = train(_images_of_script(), _config(), tmp_path / "single", progress=False)
    assert list(single.losses) != ranks[0]["full_losses"]
    with pytest.raises(ValueError, match="world size 2"):
        train_distributed(_images_of_script(), _config(), tmp_path / "unfinished", progress=False)


def _images_of_script() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(6, 1, 28, 28)


# ------------------------------------------------------------------ the standard commands under a launcher

# ``safcore demo`` itself, with the smoke profile shrunk to seconds (the registry is patched in the launched
# process only): the command a user runs, started by ``accelerate launch`` or as one plain process.
_DEMO = """
import dataclasses, sys
import safcore.study.profiles as profiles

smoke = profiles.PROFILES["smoke"]
cap = lambda c: dataclasses.replace(c, epochs=1, patience=1, epoch_size=32)
profiles.PROFILES["smoke"] = dataclasses.replace(
    smoke, train=dataclasses.replace(smoke.train, steps=4, batch_size=4, checkpoint_every=2, keep_steps=(4,)),
    n_samples=6, sample_batch=2, sample_steps=4, classifier=cap(smoke.classifier),
    saf_classifier=None if smoke.saf_classifier is None else cap(smoke.saf_classifier),
    probe=dataclasses.replace(smoke.probe, M=2, grid=(0.9, 0.5, 0.1), steps_full=8, batch_size=4), n_fid=8)
from safcore.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def _demo_args(out) -> list[str]:
    return ["demo", "--profile", "smoke", "--dataset", "breastmnist", "--n-dataset", "8", "--seed", "0",
            "--device", "cpu", "--out", str(out)]


def _manifest(store: Path, kind: str) -> dict:
    (run,) = [p for p in (store / kind).iterdir() if p.is_dir() and not p.name.endswith((".partial", ".tmp"))]
    return json.loads((run / "manifest.json").read_text())


def test_demo_under_accelerate_launch_then_as_one_process(tmp_path, data_root):
    """``accelerate launch`` (2 CPU processes, gloo) of ``safcore demo``: DDP training, the samples and the
    exhaustive t' probe split over both, one report. Then the same command as one plain process, on the model
    the two trained: identical samples, audit and t' (derived seeds, not rank seeds)."""
    script = tmp_path / "demo.py"
    script.write_text(textwrap.dedent(_DEMO))
    store = tmp_path / "runs"
    env = {"SAFCORE_RUNS_DIR": str(store), "SAFCORE_DATA_ROOT": str(data_root)}
    _launch([str(script), *_demo_args(tmp_path / "two")], processes=2, timeout=300, env=env)
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    model = _manifest(store, "score_model")
    assert model["extra"]["processes"] == 2  # trained by DDP over both processes
    assert _manifest(store, "samples")["extra"]["processes"] == 2
    probes = [json.loads((p / "manifest.json").read_text()) for p in (store / "probe").iterdir()
              if (p / "manifest.json").is_file()]
    # the exhaustive probe (one generator per sampler call) and the demo's top-down spread probes (one per unit)
    assert sorted(m["config"]["probe"]["search"] for m in probes) == ["exhaustive", "topdown"]
    assert all("seeding" in m["config"] and m["extra"]["processes"] == 2 for m in probes)
    kept = list((store / "score_model").glob("*/kept/ema_step000004.safetensors"))
    with safe_open(str(kept[0]), framework="pt") as handle:
        assert json.loads(handle.metadata()["distributed"])["world_size"] == 2
    samples_two = load_file(next((store / "samples").glob("*/samples.safetensors")))["images"]
    assert samples_two.shape == (6, 1, 28, 28)

    for kind in ("samples", "probe"):  # draw them again, now with one plain process
        shutil.rmtree(store / kind)
    done = subprocess.run([sys.executable, str(script), *_demo_args(tmp_path / "one")], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env, **_QUIET})
    assert done.returncode == 0, done.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert _manifest(store, "score_model") == model  # the model the two processes trained, reused
    assert _manifest(store, "samples")["extra"]["processes"] == 1
    samples_one = load_file(next((store / "samples").glob("*/samples.safetensors")))["images"]
    assert torch.equal(samples_one, samples_two)
    for name in ("audit", "copy_check", "t_prime", "t_prime_k", "t_prime_n", "eq9_indicator", "t_prime_runs"):
        assert one[name] == two[name], name


def test_sweep_under_a_launcher_is_refused(monkeypatch, capsys):
    from safcore.__main__ import main as cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    code = cli(["sweep", "--datasets", "breastmnist", "--n-dataset", "8", "--seeds", "0", "--profile", "smoke"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--jobs" in err[0]
