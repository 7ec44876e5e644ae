import json

import pytest
import torch
from safetensors.torch import load_file

from safcore.runtime import paths
from safcore.runtime.runs import CorruptRunError, atomic_save_safetensors, atomic_write, config_key


def test_paths_do_not_depend_on_cwd(tmp_path, monkeypatch):
    root = paths.repo_root()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(paths.FIGURES_ENV, raising=False)
    assert paths.repo_root() == root and (root / "pyproject.toml").is_file()
    assert paths.figures_dir() == root / "figures"


def test_tests_write_figures_outside_the_committed_folder(tmp_path, monkeypatch):
    """conftest (and scripts/test.sh) point figures into the ignored runs/ folder: a test run never rewrites a
    committed figure or manifest."""
    import os

    assert os.environ.get(paths.FIGURES_ENV) and paths.figures_dir() != paths.repo_root() / "figures"
    monkeypatch.setenv(paths.FIGURES_ENV, str(tmp_path / "figs"))
    assert paths.figures_dir() == (tmp_path / "figs").resolve() and (tmp_path / "figs").is_dir()


def test_runs_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.RUNS_ENV, str(tmp_path / "elsewhere"))
    assert paths.runs_dir() == (tmp_path / "elsewhere").resolve()


def test_config_key_is_order_independent():
    assert config_key({"a": 1, "b": [1, 2]}) == config_key({"b": [1, 2], "a": 1})
    assert config_key({"a": 1}) != config_key({"a": 2})


def test_create_find_and_manifest(run_store):
    config = {"dataset": "breastmnist", "N_D": 32, "seed": 0}
    assert run_store.find("model", config) is None
    with run_store.create("model", config, seed=0) as tmp:
        atomic_save_safetensors({"w": torch.arange(3.0)}, tmp / "weights.safetensors")
    run = run_store.find("model", config)
    assert run.manifest["seed"] == 0 and run.config == config and "revision" in run.manifest
    assert run.manifest["threads"] == torch.get_num_threads() and run.manifest["torch"] == torch.__version__
    assert torch.equal(load_file(run.file("weights.safetensors"))["w"], torch.arange(3.0))


def test_failed_create_publishes_nothing(run_store):
    with pytest.raises(RuntimeError):
        with run_store.create("model", {"x": 1}) as tmp:
            (tmp / "half.bin").write_bytes(b"12")
            raise RuntimeError("crash mid-run")
    assert run_store.find("model", {"x": 1}) is None
    assert list((run_store.root / "model").iterdir()) == []


def test_corrupt_and_partial_runs_are_detected(run_store):
    with run_store.create("model", {"x": 2}) as tmp:
        (tmp / "a.bin").write_bytes(b"hello")
    path = run_store.path("model", {"x": 2})
    (path / "a.bin").write_bytes(b"hellO")
    with pytest.raises(CorruptRunError, match="SHA-256"):
        run_store.find("model", {"x": 2})
    (path / "manifest.json").unlink()
    with pytest.raises(CorruptRunError, match="partial or corrupt"):
        run_store.find("model", {"x": 2})


def test_atomic_write_replaces(tmp_path):
    target = atomic_write(tmp_path / "f.json", json.dumps({"a": 1}))
    atomic_write(target, "new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_output_manifest_records_config_seed_and_environment(tmp_path):
    from safcore.runtime.runs import write_manifest

    figure = atomic_write(tmp_path / "figure.png", b"png")
    manifest = json.loads(write_manifest(figure, config={"N_D": 16}, seed=3).read_text())
    assert manifest["file"] == "figure.png" and manifest["config"] == {"N_D": 16} and manifest["seed"] == 3
    assert manifest["threads"] == torch.get_num_threads()
    assert manifest["cuda_device"] == (torch.cuda.get_device_name() if torch.cuda.is_available() else None)
