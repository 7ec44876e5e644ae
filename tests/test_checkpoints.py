"""Checkpoints that survive a bad disk day (issue 12, item 5).

The previous checkpoint stays until the new one is written, fsynced and read back; a truncated or
corrupt latest checkpoint falls back to the previous one with a warning naming both; a run manifest
without its file list is corrupt; what dead processes left behind is cleaned and what live ones are
writing is not; resuming with another SDE or device type is refused.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import safcore.generators.checkpoints as checkpoints_module
from safcore.runtime.runs import (
    CorruptRunError,
    RunStore,
    atomic_save_safetensors,
    remove_stale_temporaries,
    temporary_owner,
    temporary_prefix,
)
from safcore.generators.sde import VPSDE, SubVPSDE
from safcore.generators.checkpoints import (
    CheckpointError,
    CheckpointFallbackWarning,
    latest_checkpoint,
    read_checkpoint,
)
from safcore.generators.train import TrainConfig, Trainer, train

from conftest import half_images

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(**changes) -> TrainConfig:
    torch.manual_seed(0)
    base = TrainConfig(preset="tiny", steps=10, batch_size=4, lr=2e-3, warmup_steps=2, checkpoint_every=3,
                       keep_steps=(), ema_decay=0.9, seed=0, device="cpu")
    return dataclasses.replace(base, **changes)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _named_for(target: str, pid: int) -> str:
    """A temporary's name as process ``pid`` on this host would make it."""
    return temporary_prefix(target).replace(f"~{os.getpid()}~", f"~{pid}~") + "x1y2.tmp"


# ------------------------------------------------------------------ fallback and keeping the previous one
def test_truncated_latest_checkpoint_falls_back_and_resume_is_bit_identical(tmp_path):
    images, config = half_images(), _config()
    full = train(images, config, tmp_path / "full", progress=False)
    crashed = train(images, config, tmp_path / "resumed", progress=False, stop_after=7)
    work = tmp_path / "resumed"
    assert crashed.steps_done == 7
    assert _names(work) == ["checkpoint_step000003.safetensors", "checkpoint_step000006.safetensors"]
    latest = latest_checkpoint(work)
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # the disk lost its tail
    with pytest.warns(CheckpointFallbackWarning) as caught:
        resumed = train(images, config, work, progress=False)
    message = str(caught[0].message)
    assert "checkpoint_step000006.safetensors" in message and "checkpoint_step000003.safetensors" in message
    assert "truncated or corrupt" in message
    assert resumed.resumed_from == 3 and resumed.steps_done == 10
    assert resumed.losses == full.losses
    theirs = dict(full.model.named_parameters())
    for name, value in resumed.model.named_parameters():
        assert torch.equal(value, theirs[name]), name
    assert "checkpoint_step000006.safetensors.unreadable" in _names(work)  # set aside, not deleted


def test_bit_flip_in_tensor_data_is_caught_by_the_recorded_digest(tmp_path):
    images, config = half_images(), _config(steps=2, checkpoint_every=1)
    train(images, config, tmp_path, progress=False)
    path = latest_checkpoint(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x01  # inside the last tensor's bytes; the header and the file size are intact
    path.write_bytes(bytes(raw))
    with safe_open(str(path), framework="pt") as handle:  # safetensors itself does not notice
        assert handle.metadata()["step"] == "2"
    with pytest.raises(CheckpointError, match="do not match the SHA-256"):
        read_checkpoint(path)
    with pytest.warns(CheckpointFallbackWarning, match="checkpoint_step000001.safetensors"):
        result = train(images, dataclasses.replace(config, steps=3), tmp_path, progress=False)
    assert result.resumed_from == 1 and result.steps_done == 3


def test_no_readable_checkpoint_is_one_clear_error_naming_the_files(tmp_path):
    images, config = half_images(), _config(steps=2, checkpoint_every=1)
    train(images, config, tmp_path, progress=False)
    for path in tmp_path.glob("checkpoint_step*.safetensors"):
        path.write_bytes(b"\x00" * 5)
    with pytest.raises(ValueError, match="no readable checkpoint") as error:
        train(images, dataclasses.replace(config, steps=3), tmp_path, progress=False)
    assert "checkpoint_step000001.safetensors" in str(error.value) and "checkpoint_step000002.safetensors" in str(error.value)
    assert "Delete them" in str(error.value)


def test_older_checkpoints_stay_until_the_new_one_reads_back(tmp_path, monkeypatch):
    trainer = Trainer(half_images(), _config())
    for _ in range(2):
        trainer.step()
        trainer.save_checkpoint(tmp_path)
    assert _names(tmp_path) == ["checkpoint_step000001.safetensors", "checkpoint_step000002.safetensors"]
    real_save = checkpoints_module.atomic_save_safetensors

    def lossy_save(tensors, path, metadata=None):  # the write "succeeds" but the disk keeps half
        real_save(tensors, path, metadata)
        Path(path).write_bytes(Path(path).read_bytes()[:1000])
        return path

    monkeypatch.setattr(checkpoints_module, "atomic_save_safetensors", lossy_save)
    trainer.step()
    with pytest.raises(CheckpointError, match="does not read back"):
        trainer.save_checkpoint(tmp_path)
    assert _names(tmp_path) == ["checkpoint_step000001.safetensors", "checkpoint_step000002.safetensors",
                                "checkpoint_step000003.safetensors.unreadable"]
    monkeypatch.setattr(checkpoints_module, "atomic_save_safetensors", real_save)
    trainer.step()
    trainer.save_checkpoint(tmp_path)  # a good one: all but the previous one go
    assert [n for n in _names(tmp_path) if n.endswith(".safetensors")] == [
        "checkpoint_step000002.safetensors", "checkpoint_step000004.safetensors"]
    tensors, metadata = read_checkpoint(tmp_path / "checkpoint_step000004.safetensors", expect_step=4)
    assert metadata["step"] == "4" and tensors["losses"].numel() == 4


# ------------------------------------------------------------------ SDE and device type
def _checkpoint(tmp_path: Path) -> tuple[TrainConfig, Path]:
    config = _config(steps=1, checkpoint_every=1)
    train(half_images(), config, tmp_path, progress=False)
    return config, latest_checkpoint(tmp_path)


def test_resume_refuses_another_sde(tmp_path):
    config, _ = _checkpoint(tmp_path)
    longer = dataclasses.replace(config, steps=2)
    with pytest.raises(ValueError, match=r"trained with the SDE SubVPSDE\(beta_min=0\.1, beta_max=20\.0\), but this "
                                         r"run uses VPSDE\(beta_min=0\.1, beta_max=20\.0\)"):
        train(half_images(), longer, tmp_path, progress=False, sde=VPSDE())
    with pytest.raises(ValueError, match=r"beta_max=10\.0"):
        train(half_images(), longer, tmp_path, progress=False, sde=SubVPSDE(beta_max=10.0))
    again = train(half_images(), longer, tmp_path, progress=False, sde=SubVPSDE())  # the same SDE, spelled out
    assert again.resumed_from == 1 and again.steps_done == 2


def _rewrite_metadata(path: Path, change) -> None:
    tensors, metadata = read_checkpoint(path)
    change(metadata)
    atomic_save_safetensors(tensors, path, metadata)  # tensors unchanged: the recorded digest still holds


def test_resume_refuses_another_device_type(tmp_path):
    config, path = _checkpoint(tmp_path)
    _rewrite_metadata(path, lambda m: m.update(device_type="cuda"))
    tensors, metadata = read_checkpoint(path)
    with pytest.raises(ValueError, match="written on device type 'cuda', but this run is on 'cpu'.*device='cuda'"):
        Trainer(half_images(), config).load_state(tensors, metadata, source=str(path))


def test_checkpoints_without_sde_or_device_count_as_the_old_defaults(tmp_path):
    config, path = _checkpoint(tmp_path)

    def strip(metadata):
        del metadata["sde"], metadata["device_type"]

    _rewrite_metadata(path, strip)
    tensors, metadata = read_checkpoint(path)
    trainer = Trainer(half_images(), config)
    trainer.load_state(tensors, metadata, source=str(path))  # default SubVPSDE, no rng.cuda → cpu: accepted
    assert trainer.step_count == 1
    with pytest.raises(ValueError, match="records no SDE"):
        Trainer(half_images(), config, sde=VPSDE()).load_state(tensors, metadata, source=str(path))
    tensors["rng.cuda"] = torch.zeros(16, dtype=torch.uint8)  # what a CUDA run records
    with pytest.raises(ValueError, match="device type 'cuda'"):
        Trainer(half_images(), config).load_state(tensors, metadata, source=str(path))


# ------------------------------------------------------------------ the run store's manifest
@pytest.mark.parametrize("files", [None, ["a.bin"], {"a.bin": 3}])
def test_manifest_without_its_file_list_is_corrupt(run_store, files):
    config = {"x": 1}
    with run_store.create("stage", config) as tmp:
        (tmp / "a.bin").write_bytes(b"hello")
    manifest_path = run_store.path("stage", config) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["files"] == {"a.bin": manifest["files"]["a.bin"]}
    if files is None:
        del manifest["files"]
    else:
        manifest["files"] = files
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CorruptRunError, match="file list.*cannot be verified.*delete the folder"):
        run_store.find("stage", config)


# ------------------------------------------------------------------ what dead processes leave behind
def test_temporaries_name_their_owner():
    name = temporary_prefix("weights.safetensors") + "abc.tmp"
    host, pid = temporary_owner(name)
    assert pid == os.getpid() and host and "~" not in host
    assert temporary_owner(".weights.safetensors.abc123.tmp") is None  # a name without an owner


def test_stale_temporaries_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = _dead_pid()
        names = {
            "dead_file": _named_for("checkpoint_step000003.safetensors", dead),
            "dead_folder": _named_for("0123456789abcdef", dead),
            "live_file": _named_for("checkpoint_step000003.safetensors", live.pid),
            "mine": _named_for("checkpoint_step000006.safetensors", os.getpid()),
            "other_host": f".checkpoint_step000003.safetensors~elsewhere.example~{dead}~x1y2.tmp",
            "no_owner": ".checkpoint_step000003.safetensors.x1y2.tmp",
        }
        for key, name in names.items():
            if key == "dead_folder":
                (tmp_path / name).mkdir()
                (tmp_path / name / "half.bin").write_bytes(b"12")
            else:
                (tmp_path / name).write_bytes(b"half")
        removed = remove_stale_temporaries(tmp_path)
        assert sorted(p.name for p in removed) == sorted([names["dead_file"], names["dead_folder"]])
        kept = {k for k, n in names.items() if (tmp_path / n).exists()}
        assert kept == {"live_file", "mine", "other_host", "no_owner"}
        # train() cleans its work_dir the same way before it resumes
        work = tmp_path / "work"
        work.mkdir()
        (work / names["dead_file"]).write_bytes(b"half")
        (work / names["live_file"]).write_bytes(b"half")
        train(half_images(), _config(steps=1, checkpoint_every=1), work, progress=False)
        assert _names(work) == sorted(["checkpoint_step000001.safetensors", names["live_file"]])
    finally:
        live.kill()
        live.wait()


def _hold_lock(root: str, config: dict, ready, release) -> None:
    with RunStore(root).lock("score_model", config):
        ready.set()
        release.wait(30)


def test_stale_partial_folders_are_removed_only_when_published_and_unlocked(tmp_path):
    store = RunStore(tmp_path / "runs")
    done, unfinished = {"n": 1}, {"n": 2}
    scratch = store.scratch_dir("score_model", done)  # a training that was killed after publishing...
    (scratch / "checkpoint_step000003.safetensors").write_bytes(b"ckpt")
    with store.create("score_model", done) as tmp:
        (tmp / "w.bin").write_bytes(b"w")
    scratch.mkdir()  # ...before it removed its resume folder
    (scratch / "checkpoint_step000003.safetensors").write_bytes(b"ckpt")
    resume = store.scratch_dir("score_model", unfinished)  # a crashed training's resume point
    (resume / "checkpoint_step000003.safetensors").write_bytes(b"ckpt")
    dead = _dead_pid()
    (resume / _named_for("checkpoint_step000006.safetensors", dead)).write_bytes(b"half")
    kind = store.root / "score_model"
    (kind / _named_for(store.path("score_model", unfinished).name, dead)).mkdir()  # a killed create()

    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(store.root), done, ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        assert store.find("score_model", done) is not None
        assert scratch.is_dir()  # a live process holds the key: its folder is not touched
        removed = store.remove_stale()
        assert scratch.is_dir() and scratch not in removed
    finally:
        release.set()
        holder.join(10)
    assert sorted(p.name for p in removed) == sorted(
        [_named_for(store.path("score_model", unfinished).name, dead),
         _named_for("checkpoint_step000006.safetensors", dead)])
    assert store.find("score_model", done) is not None
    assert not scratch.exists()  # published and unlocked: removed by the next look
    assert _names(resume) == ["checkpoint_step000003.safetensors"]  # the resume point stays
    assert store.remove_stale() == []
