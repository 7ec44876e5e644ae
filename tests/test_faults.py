"""Fault injection (issue 22): every expected failure is one line and exit code 2, nothing a user owns is
replaced, nothing is half written, and every input error is found before the first stage.

Faults are injected without root or a real small disk: a full disk is a patched writer that fails as the real
one does (safetensors' ``IoError(Os { code: 28 … })``, Python's ``OSError(ENOSPC)``), a read-only folder patches
the ``os`` / ``open`` calls that would write under it (permission bits mean nothing to root, which CI is), and
the network is blocked by ``conftest.no_network``. No test trains ``c_p``: an input error must be found before
it, and the few that train the score model shrink the smoke profile to two steps. Each test has its own run
store, which the "nothing computed" checks look into.
"""

from __future__ import annotations

import builtins
import dataclasses
import errno
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from safcore.study import profiles
from safcore.__main__ import failure_line, main
from safcore.data.fingerprint_io import export_fingerprint

pytestmark = pytest.mark.usefixtures("one_thread")

ENOSPC_SAFETENSORS = 'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'


# ------------------------------------------------------------------ fixtures and helpers

@pytest.fixture(autouse=True)
def store(tmp_path, monkeypatch) -> Path:
    """This test's own run store (the default one of every command here)."""
    root = tmp_path / "runs"
    monkeypatch.setenv("SAFCORE_RUNS_DIR", str(root))
    return root


@pytest.fixture(scope="module")
def fingerprint(tmp_path_factory, data_root) -> Path:
    out = tmp_path_factory.mktemp("faults") / "fp"
    export_fingerprint("breastmnist", 8, out, seed=0, data_root=data_root)
    return out


@pytest.fixture(scope="module")
def pipeline(fingerprint) -> Path:
    """An untrained tiny DDPM pipeline (what matters here is how it is stored, not what it learned)."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=4)
    out = fingerprint.parent / "pipeline"
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(out)
    return out


@pytest.fixture
def two_step_smoke(monkeypatch):
    """The smoke profile with a two-step training (a second), for the tests that must reach the training."""
    smoke = profiles.PROFILES["smoke"]
    train = dataclasses.replace(smoke.train, steps=2, batch_size=4, checkpoint_every=1, keep_steps=(2,), warmup_steps=1)
    monkeypatch.setitem(profiles.PROFILES, "smoke", dataclasses.replace(smoke, train=train))


def one_line(args: list[str], capsys) -> str:
    """Run the command line; it must end with exit code 2 and exactly one line on stderr, no traceback."""
    code = main(args)
    err = capsys.readouterr().err
    command = next(a for a in args if not a.startswith("-"))
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"safcore {command}: error: ") and "Traceback" not in err, err
    return err


def tree(path: Path) -> dict[str, str]:
    """Every entry under ``path`` (and ``path`` itself): a file's SHA-256, a link's target, ``dir`` for a folder."""
    def entry(p: Path) -> str:
        if p.is_symlink():
            return "-> " + os.readlink(p)
        return "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()

    if not (path.exists() or path.is_symlink()):
        return {}
    inner = sorted(path.rglob("*")) if path.is_dir() and not path.is_symlink() else []
    return {".": entry(path), **{str(p.relative_to(path)): entry(p) for p in inner}}


def computed(store: Path) -> list[str]:
    """Files any stage left in the run store (none: nothing was computed)."""
    return sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file()) if store.is_dir() else []


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def audit_args(fingerprint: Path, data_root: Path, out: Path, *extra: str) -> list[str]:
    return ["audit", *extra, "--fingerprint", str(fingerprint), "--profile", "smoke", "--device", "cpu",
            "--data-root", str(data_root), "--out", str(out), "--no-progress"]


def read_only(monkeypatch, root: Path) -> None:
    """Make ``root`` and everything under it behave like a read-only mount (EROFS on every write)."""
    root_text = os.path.abspath(root)

    def inside(path) -> bool:
        try:
            text = os.path.abspath(os.fsdecode(path))
        except TypeError:  # a file descriptor
            return False
        return text == root_text or text.startswith(root_text + os.sep)

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    real = {name: getattr(os, name) for name in ("mkdir", "open", "rename", "replace", "unlink", "rmdir")}
    real_open = builtins.open

    def mkdir(path, *args, **kwargs):
        if inside(path):
            if os.path.lexists(path):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(path))
            refuse(path)
        return real["mkdir"](path, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND):
            refuse(path)
        return real["open"](path, flags, *args, **kwargs)

    def two(name):
        def call(src, dst, *args, **kwargs):
            if inside(src) or inside(dst):
                refuse(dst if inside(dst) else src)
            return real[name](src, dst, *args, **kwargs)
        return call

    def one(name):
        def call(path, *args, **kwargs):
            if inside(path):
                refuse(path)
            return real[name](path, *args, **kwargs)
        return call

    def py_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and inside(file) and set(mode) & set("wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(os, "rename", two("rename"))
    monkeypatch.setattr(os, "replace", two("replace"))
    monkeypatch.setattr(os, "unlink", one("unlink"))
    monkeypatch.setattr(os, "remove", one("unlink"))
    monkeypatch.setattr(os, "rmdir", one("rmdir"))
    monkeypatch.setattr(builtins, "open", py_open)
    monkeypatch.setattr(io, "open", py_open)


def good_samples(fingerprint: Path, folder: Path) -> Path:
    with np.load(fingerprint / "dp.npz") as archive:
        images = archive["train_images"][:4]
    np.save(folder / "good.npy", images)
    return folder / "good.npy"


# ------------------------------------------------------------------ nothing a user owns is replaced

@pytest.mark.parametrize("target", ["pipeline", "fingerprint"])
def test_train_never_replaces_a_model_or_fingerprint_folder(target, pipeline, fingerprint, data_root, tmp_path, store,
                                                           capsys):
    owned = tmp_path / target
    shutil.copytree(pipeline if target == "pipeline" else fingerprint, owned)
    before = tree(owned)
    err = one_line(["train", "--fingerprint", str(fingerprint), "--out", str(owned), "--profile", "smoke",
                    "--data-root", str(data_root), "--no-progress"], capsys)
    holds = "a diffusers pipeline (model_index.json)" if target == "pipeline" else "a fingerprint folder (fingerprint.json)"
    assert f"is not empty: it holds {holds}" in err and "--overwrite" in err
    assert tree(owned) == before and computed(store) == []  # refused before the training


def test_train_overwrite_replaces_an_earlier_model_whole_and_nothing_else(fingerprint, data_root, tmp_path, store,
                                                                         two_step_smoke, capsys):
    from safcore.generators.score_model import ScoreModel

    out = tmp_path / "own"
    args = ["train", "--fingerprint", str(fingerprint), "--out", str(out), "--profile", "smoke", "--data-root",
            str(data_root), "--no-progress"]
    assert main(args) == 0, capsys.readouterr().err
    first = tree(out)
    (out / "stale.txt").write_text("left by an earlier tool")  # a model folder with one more file
    assert "is not empty" in one_line(args, capsys)  # a second train is refused …
    assert main([*args, "--overwrite"]) == 0, capsys.readouterr().err  # … unless asked to replace it
    assert tree(out) == first and not (out / "stale.txt").exists()  # replaced whole (same seed: same model)
    assert isinstance(ScoreModel.from_pretrained(out), ScoreModel) and temporaries(tmp_path) == []
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    err = one_line([*args[:3], "--out", str(notes), *args[5:], "--overwrite"], capsys)
    assert "holds files that no safcore command or diffusers wrote ('todo.txt')" in err
    assert (notes / "todo.txt").read_text() == "mine"


@pytest.mark.parametrize("command", ["fingerprint", "train", "audit", "probe", "demo"])
@pytest.mark.parametrize("kind", ["file", "symlink", "non-empty"])
def test_out_that_is_a_file_a_link_or_full_is_refused_before_any_work(command, kind, pipeline, fingerprint, data_root,
                                                                      tmp_path, store, capsys):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "report.md").write_text("an earlier report")
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("a file of the user's")
    elif kind == "symlink":
        out.symlink_to(victim, target_is_directory=True)
    else:
        out = victim
    before, victim_before = tree(out), tree(victim)
    common = ["--profile", "smoke", "--data-root", str(data_root), "--no-progress", "--out", str(out)]
    args = {
        "fingerprint": ["fingerprint", "--n-dataset", "8", "--data-root", str(data_root), "--out", str(out)],
        "train": ["train", "--fingerprint", str(fingerprint), *common],
        "audit": ["audit", "--model", str(pipeline), "--fingerprint", str(fingerprint), "--probe", *common],
        "probe": ["probe", "--model", str(pipeline), "--fingerprint", str(fingerprint), *common],
        "demo": ["demo", *common],
    }[command]
    err = one_line(args, capsys)
    expected = {"file": "is a file, not a folder", "symlink": "is a symbolic link",
                "non-empty": "is not empty: it holds a safcore report (report.md)"}[kind]
    assert expected in err and str(out) in err
    assert tree(out) == before and tree(victim) == victim_before and computed(store) == []


def test_sweep_summary_file_is_not_replaced(data_root, tmp_path, store, capsys):
    summary = tmp_path / "table.csv"
    summary.write_text("the user's table\n")
    err = one_line(["sweep", "--datasets", "breastmnist", "--n-dataset", "8", "--profile", "smoke", "--data-root",
                    str(data_root), "--out", str(summary), "--no-progress"], capsys)
    assert "exists; choose a new file name, or pass --overwrite" in err
    assert summary.read_text() == "the user's table\n" and computed(store) == []


# ------------------------------------------------------------------ a command's folder appears whole or not at all

def test_output_folder_is_renamed_into_place_whole(tmp_path):
    from safcore.runtime.runs import output_folder

    out = tmp_path / "report"
    with pytest.raises(KeyboardInterrupt), output_folder(out) as tmp:  # stopped while writing
        (tmp / "q_positives.png").write_bytes(b"\x89PNG\r\n\x1a\n")
        raise KeyboardInterrupt
    assert not out.exists() and temporaries(tmp_path) == []
    with output_folder(out) as tmp:
        (tmp / "report.md").write_text("first")
    assert (out / "report.md").read_text() == "first"
    with pytest.raises(ValueError, match="is not empty"), output_folder(out):
        pass
    with pytest.raises(OSError), output_folder(out, overwrite=True) as tmp:  # the disk fills up meanwhile
        (tmp / "report.md").write_text("second, half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert tree(out)["report.md"] == hashlib.sha256(b"first").hexdigest() and temporaries(tmp_path) == []
    with output_folder(out, overwrite=True) as tmp:
        (tmp / "report.md").write_text("second")
    assert [p.name for p in out.iterdir()] == ["report.md"] and (out / "report.md").read_text() == "second"
    assert temporaries(tmp_path) == []


def test_what_a_killed_writer_left_is_removed_by_the_next_one(tmp_path):
    from safcore.runtime.runs import output_folder, temporary_prefix

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    left = tmp_path / temporary_prefix("report").replace(f"~{os.getpid()}~", f"~{pid}~")
    left = left.with_name(left.name + "abc.tmp")
    left.mkdir()
    (left / "samples.png").write_bytes(b"half")
    with output_folder(tmp_path / "report") as tmp:
        (tmp / "report.md").write_text("whole")
    assert not left.exists() and temporaries(tmp_path) == []


# ------------------------------------------------------------------ full and read-only disks

def test_disk_full_while_writing_a_checkpoint(fingerprint, data_root, tmp_path, store, two_step_smoke, monkeypatch,
                                              capsys):
    from safetensors import SafetensorError

    import safcore.runtime.atomic

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 16)  # what a full disk leaves: a few bytes, then the error
        raise SafetensorError(ENOSPC_SAFETENSORS)

    monkeypatch.setattr(safcore.runtime.atomic, "save_file", full)
    out = tmp_path / "model"
    err = one_line(["train", "--fingerprint", str(fingerprint), "--out", str(out), "--profile", "smoke",
                    "--data-root", str(data_root), "--no-progress"], capsys)
    assert "no space left on its disk" in err and "checkpoint_step000001.safetensors" in err and str(store) in err
    assert "SAFCORE_RUNS_DIR" in err
    assert not out.exists() and temporaries(tmp_path) == []
    assert not any(store.rglob("*.tmp")) and not any(store.rglob("manifest.json"))  # nothing half written, published


def test_disk_full_while_writing_a_fingerprint(data_root, tmp_path, monkeypatch, capsys):
    import safcore.data.fingerprint_io

    def full(file, **arrays):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as Python's write reports it: no file name

    monkeypatch.setattr(safcore.data.fingerprint_io.np, "savez_compressed", full)
    out = tmp_path / "fp"
    err = one_line(["fingerprint", "--n-dataset", "8", "--data-root", str(data_root), "--out", str(out)], capsys)
    assert "cannot write" in err and "dp.npz" in err and "no space left" in err and "--out" in err
    assert not out.exists() and temporaries(tmp_path) == []


def test_read_only_run_store(fingerprint, data_root, tmp_path, store, two_step_smoke, monkeypatch, capsys):
    store.mkdir()
    read_only(monkeypatch, store)
    out = tmp_path / "model"
    err = one_line(["train", "--fingerprint", str(fingerprint), "--out", str(out), "--profile", "smoke",
                    "--data-root", str(data_root), "--no-progress"], capsys)
    assert "read-only file system" in err and str(store) in err and "SAFCORE_RUNS_DIR" in err
    assert not out.exists()


def test_read_only_report_folder_is_found_before_any_stage(fingerprint, data_root, tmp_path, store, monkeypatch,
                                                          capsys):
    samples = good_samples(fingerprint, tmp_path)
    locked = tmp_path / "shared_drive"
    locked.mkdir()
    read_only(monkeypatch, locked)
    err = one_line(audit_args(fingerprint, data_root, locked / "report", "--samples", str(samples)), capsys)
    assert "cannot be written: Read-only file system" in err and str(locked) in err
    assert computed(store) == []


def test_corrupt_stored_run_is_one_line(fingerprint, data_root, tmp_path, store, capsys):
    from safcore.runtime.runs import RunStore
    from safcore.study import Study

    runs = RunStore(store)
    study = Study.from_fingerprint(fingerprint, profile="smoke", data_root=data_root, store=runs, progress=False,
                                   device="cpu")
    broken = runs.path("c_p", study.classifier_config("c_p"))
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_text("{ truncated")
    samples = good_samples(fingerprint, tmp_path)
    out = tmp_path / "report"
    err = one_line(audit_args(fingerprint, data_root, out, "--samples", str(samples)), capsys)
    assert str(broken) in err and "Delete the folder" in err and not out.exists()


# ------------------------------------------------------------------ weights, Hub ids

@pytest.mark.parametrize("fault", ["truncated", "garbage", "text link", "system file", "device"])
def test_unreadable_weights_are_one_line(fault, pipeline, fingerprint, data_root, tmp_path, store, capsys):
    model = tmp_path / "model"
    shutil.copytree(pipeline, model)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    if fault == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif fault == "garbage":
        weights.write_bytes(os.urandom(4096))
    else:
        target = {"text link": tmp_path / "notes.txt", "system file": Path(os.path.realpath(sys.executable)),
                  "device": Path(os.devnull)}[fault]
        if fault == "text link":
            target.write_text("not weights\n" * 100)
        weights.unlink()
        weights.symlink_to(target)
    out = tmp_path / "report"
    err = one_line(audit_args(fingerprint, data_root, out, "--model", str(model)), capsys)
    assert str(weights) in err
    expected = {"truncated": "is truncated", "garbage": "is not a safetensors file", "text link": "it is text",
                "system file": "is not a safetensors file", "device": "is not a regular file"}[fault]
    assert expected in err and not out.exists() and computed(store) == []


def test_hub_id_without_network_says_so_at_once(fingerprint, data_root, tmp_path, store, monkeypatch, capsys):
    """No retries, no "does not appear to have a file named config.json": one request, then one line."""
    import diffusers
    from huggingface_hub import constants

    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def retried(*args, **kwargs):
        raise AssertionError("the download was tried after the Hub was found unreachable")

    monkeypatch.setattr(diffusers.UNet2DModel, "from_pretrained", retried)
    monkeypatch.chdir(tmp_path)  # "someone/ddpm" is no local folder here
    err = one_line(audit_args(fingerprint, data_root, tmp_path / "report", "--model", "someone/ddpm"), capsys)
    assert "cannot reach the Hugging Face Hub" in err and "'someone/ddpm'" in err and "--model DIR" in err
    assert computed(store) == []


# ------------------------------------------------------------------ inputs checked before any stage

@pytest.mark.parametrize("case, expected", [
    ("32 px", "are 32×32 px; D_p's images in"),
    ("30 px", "are 30×30 px"),
    ("64 px", "are 64×64 px"),
    ("RGB", "are RGB (3 channels)"),
    ("text .npy", "is not a .npy array (np.save): it is text"),
    ("text .npz", "is not a .npz archive (np.savez, a zip of arrays): it is text"),
    ("objects", "holds Python objects, not numbers"),
])
def test_samples_are_checked_against_the_fingerprint_before_any_stage(case, expected, fingerprint, data_root, tmp_path,
                                                                      store, capsys):
    shapes = {"32 px": (4, 32, 32), "30 px": (4, 30, 30), "64 px": (4, 64, 64), "RGB": (4, 28, 28, 3)}
    samples = tmp_path / ("samples.npz" if case == "text .npz" else "samples.npy")
    if case in shapes:
        np.save(samples, np.zeros(shapes[case], dtype=np.uint8))
    elif case == "objects":
        np.save(samples, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        samples.write_text("these are not images\n")
    out = tmp_path / "report"
    err = one_line(audit_args(fingerprint, data_root, out, "--samples", str(samples)), capsys)
    assert expected in err and str(samples) in err and "pickle" not in err.replace("Python objects", "")
    assert not out.exists() and computed(store) == []


def test_steps_beyond_T_are_refused_not_capped(pipeline, fingerprint, data_root, tmp_path, store, capsys):
    err = one_line(audit_args(fingerprint, data_root, tmp_path / "report", "--model", str(pipeline), "--steps",
                              "100000"), capsys)
    assert "--steps = 100000; allowed: an integer in [1, 1000]" in err and computed(store) == []


def test_negative_seeds_are_refused_everywhere(data_root, tmp_path, store, capsys):
    from safcore.data.fingerprint import make_private_dataset
    from safcore.probe import ProbeConfig
    from safcore.study import Study

    err = one_line(["fingerprint", "--n-dataset", "8", "--seed", "-1", "--data-root", str(data_root), "--out",
                    str(tmp_path / "fp")], capsys)
    assert "--seed = -1; allowed: an integer ≥ 0" in err and not (tmp_path / "fp").exists()
    err = one_line(["demo", "--profile", "smoke", "--seed", "-1", "--data-root", str(data_root), "--out",
                    str(tmp_path / "demo"), "--no-progress"], capsys)
    assert "--seed = -1; allowed: an integer ≥ 0" in err and computed(store) == []
    with pytest.raises(ValueError, match=r"seed = -1; allowed: an integer ≥ 0"):
        export_fingerprint("breastmnist", 8, tmp_path / "api", seed=-1, data_root=data_root)
    with pytest.raises(ValueError, match=r"seed = -1; allowed: an integer ≥ 0"):
        Study("breastmnist", 8, seed=-1, data_root=data_root, progress=False).private  # noqa: B018
    with pytest.raises(ValueError, match=r"seed = -1; allowed: an integer ≥ 0"):
        make_private_dataset(torch.zeros(2, 1, 28, 28), seed=-1)
    with pytest.raises(ValueError, match=r"seed \(ProbeConfig\) = -1"):
        ProbeConfig(seed=-1)
    assert not (tmp_path / "api").exists() and computed(store) == []


@pytest.mark.parametrize("field, value, expected", [
    ("seed", "zero", "'seed' = 'zero'; allowed: an integer ≥ 0"),
    ("n_dataset", 8.5, "'n_dataset' = 8.5; allowed: an integer ≥ 1"),
    ("npz", "/etc/passwd", "files.npz = '/etc/passwd'; allowed: the plain name of a file inside that folder"),
    ("npz", "../fp/dp.npz", "files.npz = '../fp/dp.npz'; allowed: the plain name"),
])
def test_fingerprint_records_are_checked_field_by_field(field, value, expected, fingerprint, data_root, tmp_path,
                                                        store, capsys):
    copy = tmp_path / "fp"
    shutil.copytree(fingerprint, copy)
    meta = json.loads((copy / "fingerprint.json").read_text())
    (meta["files"] if field == "npz" else meta)[field] = value
    (copy / "fingerprint.json").write_text(json.dumps(meta))
    samples = good_samples(fingerprint, tmp_path)
    err = one_line(audit_args(copy, data_root, tmp_path / "report", "--samples", str(samples)), capsys)
    assert expected in err and "fingerprint.json" in err and computed(store) == []


@pytest.mark.parametrize("fault", ["text", "link outside"])
def test_fingerprint_npz_by_header_and_inside_its_folder(fault, fingerprint, data_root, tmp_path, store, capsys):
    from safcore.runtime.runs import file_sha256

    copy = tmp_path / "fp"
    shutil.copytree(fingerprint, copy)
    npz = copy / "dp.npz"
    if fault == "text":
        npz.write_text("a text file in place of D_p\n")
    else:
        outside = tmp_path / "elsewhere.npz"
        shutil.move(npz, outside)
        npz.symlink_to(outside)
    meta = json.loads((copy / "fingerprint.json").read_text())
    meta["npz_sha256"] = file_sha256(npz)  # even with a matching hash
    (copy / "fingerprint.json").write_text(json.dumps(meta))
    samples = good_samples(fingerprint, tmp_path)
    err = one_line(audit_args(copy, data_root, tmp_path / "report", "--samples", str(samples)), capsys)
    expected = "is not a .npz archive" if fault == "text" else "outside the fingerprint folder"
    assert expected in err and str(npz) in err and "pickle" not in err and computed(store) == []


# ------------------------------------------------------------------ one error path

def test_debug_shows_the_traceback_and_bugs_are_not_hidden(data_root, tmp_path, monkeypatch):
    from safetensors import SafetensorError

    import safcore.__main__ as cli

    with pytest.raises(ValueError, match="--seed = -1"):
        main(["--debug", "fingerprint", "--n-dataset", "8", "--seed", "-1", "--out", str(tmp_path / "fp")])
    assert failure_line(RuntimeError("a bug")) is None  # a bug keeps its traceback …
    monkeypatch.setattr(cli, "_run", lambda args: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        main(["fingerprint", "--n-dataset", "8", "--out", str(tmp_path / "fp")])
    line = failure_line(SafetensorError(ENOSPC_SAFETENSORS))  # … an expected failure is one line
    assert line.startswith("No space left on device: no space left on its disk")
    line = failure_line(OSError(errno.EACCES, "Permission denied", str(tmp_path / "x")))
    assert line.startswith(f"cannot use '{tmp_path / 'x'}': permission denied")
