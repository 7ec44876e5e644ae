"""Sweeps (issue 12, item 6): the grid cell by cell, skipping recorded cells, resuming after a kill, K at once.

Real BreastMNIST at the smoke profile, N_D = 8, two cells (seeds 0 and 1). The two-cell sweep is computed
once per module (``swept``, starting from the first cell's trained stages, the session's smoke study); the other tests reuse its records as the reference and copy the shared
``c_p`` (one per dataset, not per cell) into their own fresh stores, so each cell's own stages (score
model, ``c_id``, samples, audit, probe) are computed again where the test is about computing them.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SMOKE_STUDY, copy_smoke_stages
from safcore.__main__ import main
from safcore.runtime.runs import RunStore, config_key
from safcore.study.sweep_workers import worker_env
from safcore.study.sweep import (
    KIND,
    Cell,
    SweepGrid,
    load_records,
    run_cell,
    run_sweep,

)

REPO = Path(__file__).resolve().parents[1]
GRID = SweepGrid(("breastmnist",), n_datasets=(8,), seeds=(0, 1), profile="smoke")
assert (GRID.cells()[0].dataset, GRID.cells()[0].n_dataset, GRID.cells()[0].seed, GRID.profile) == tuple(
    SMOKE_STUDY[k] for k in ("dataset", "n_dataset", "seed", "profile"))  # the first cell is the session's smoke study


def _runs(store: RunStore) -> set[str]:
    """Every published run of a store, as ``kind/key``."""
    return {f"{p.parent.parent.name}/{p.parent.name}" for p in store.root.glob("*/*/manifest.json")}


def _without_seconds(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "seconds"}


def _copy_run(source: RunStore, target: RunStore, kind: str, config) -> None:
    path = source.path(kind, config)
    assert (path / "manifest.json").is_file(), f"no {kind} run to copy"
    shutil.copytree(path, target.path(kind, config))


@pytest.fixture(scope="module")
def swept(one_thread, tmp_path_factory, data_root, smoke_stages):
    """GRID swept once in this process (jobs=1), with its wall time, into a store that holds only the first cell's
    trained c_p, c_id and score model (the session's smoke study: a notebook would have left them): the sweep
    records both cells, samples, audits and probes both, and trains the second cell's c_id and model."""
    store = RunStore(tmp_path_factory.mktemp("sweep") / "runs")
    copy_smoke_stages(smoke_stages, store, data_root)
    start = time.perf_counter()
    result = run_sweep(GRID, store=store, data_root=data_root, progress=False)
    return store, result, time.perf_counter() - start


def _study(cell: Cell, store: RunStore, data_root):
    from safcore.study import Study

    return Study(cell.dataset, cell.n_dataset, profile=cell.profile, seed=cell.seed, store=store, data_root=data_root,
                 progress=False)


def test_grid_cells_in_a_fixed_order_and_bad_grids_refused():
    grid = SweepGrid(["breastmnist", "PneumoniaMNIST"], [8, 64], [1, 0], profile="smoke")
    assert [(c.dataset, c.n_dataset, c.seed) for c in grid.cells()] == [
        ("breastmnist", 8, 1), ("breastmnist", 8, 0), ("breastmnist", 64, 1), ("breastmnist", 64, 0),
        ("pneumoniamnist", 8, 1), ("pneumoniamnist", 8, 0), ("pneumoniamnist", 64, 1), ("pneumoniamnist", 64, 0)]
    assert grid.cells()[0].label() == "breastmnist_ND8_seed1_smoke"
    for kwargs, match in [({"n_datasets": (8, 8)}, "names 8 twice"), ({"n_datasets": (0,)}, "N_D = 0"),
                          ({"seeds": (-1,)}, "seed = -1"), ({"profile": "huge"}, "unknown profile 'huge'"),
                          ({"n_datasets": (True,)}, "N_D = True"), ({"datasets": ()}, "datasets is empty"),
                          ({"n_samples": 0}, "n_samples = 0")]:
        with pytest.raises(ValueError, match=match):
            SweepGrid(**{"datasets": ("breastmnist",), "n_datasets": (8,), **kwargs})
    with pytest.raises(ValueError, match="N_D = 600 exceeds the 546 training images of breastmnist"):
        SweepGrid(("breastmnist",), (8, 600)).check()


def test_job_j_gets_gpu_j_mod_count():
    env = {"PATH": "/bin"}
    assert [worker_env(j, ["0", "1"], 4, env)["CUDA_VISIBLE_DEVICES"] for j in range(5)] == ["0", "1", "0", "1", "0"]
    assert [worker_env(j, ["2", "5", "7"], 1, env)["CUDA_VISIBLE_DEVICES"] for j in range(4)] == ["2", "5", "7", "2"]
    cpu = worker_env(3, [], 2, env)
    assert "CUDA_VISIBLE_DEVICES" not in cpu and cpu["OMP_NUM_THREADS"] == "2" and cpu["SAFCORE_PROGRESS"] == "0"


def test_two_cell_sweep_computes_both_then_skips_both(swept, data_root, monkeypatch):
    store, result, seconds = swept
    print(f"2-cell smoke sweep from an empty store: {seconds:.0f} s; per cell: "
          + ", ".join(f"seed {o.cell.seed}: {o.record['seconds']}" for o in result.outcomes))
    assert [o.status for o in result.outcomes] == ["computed", "computed"]
    records = [o.record for o in result.outcomes]
    for seed, record in zip((0, 1), records, strict=True):
        assert (record["dataset"], record["n_dataset"], record["seed"], record["profile"]) == ("breastmnist", 8, seed, "smoke")
        assert record["n"] == 32 and record["expected_q"] == pytest.approx(4.0)
        assert 0 <= record["n_q"] <= min(record["n_cp"], record["n_cid"]) and 0.0 <= record["p_value"] <= 1.0
        assert record["probed"] and record["t_prime_count"] is not None
        assert record["fid_train"] is None and record["verdict"] in ("inconclusive", "reproduces", "not_observed", "unlike_data")
        assert record["seconds"]["total"] > 0
    assert records[0]["stages"]["score_model"] != records[1]["stages"]["score_model"]  # one model per seed
    assert records[0]["stages"]["c_p"] == records[1]["stages"]["c_p"]  # one c_p per dataset
    assert len(list((store.root / KIND).glob("*/manifest.json"))) == 2
    assert list(load_records(GRID, store=store, data_root=data_root).values()) == records

    before = _runs(store)
    monkeypatch.setattr("safcore.study.sweep._compute", lambda *a, **k: pytest.fail("a recorded cell was computed again"))
    start = time.perf_counter()
    again = run_sweep(GRID, store=store, data_root=data_root, progress=False)
    print(f"the same sweep again: {time.perf_counter() - start:.1f} s")
    assert [o.status for o in again.outcomes] == ["skipped", "skipped"]
    assert [o.record for o in again.outcomes] == records
    assert _runs(store) == before
    assert "2 skipped" in again.table()


def test_a_cells_stages_are_the_ones_study_finds(swept, data_root, monkeypatch):
    """Notebooks 04 / 07 build Study(dataset, n_dataset, profile=..., seed=...): it finds the sweep's score
    model, classifiers and samples (training is forbidden here) and its audit and t' are the record's."""
    store, result, _ = swept
    for name in ("train", "train_saf_classifier", "train_id_classifier"):
        module = "stages" if name == "train" else "hub"  # the score model's training runs in safcore.study.stages
        monkeypatch.setattr(f"safcore.study.{module}.{name}", lambda *a, _n=name, **k: pytest.fail(f"Study retrained ({_n})"))
    before = _runs(store)
    for outcome in result.outcomes:
        record = outcome.record
        study = _study(outcome.cell, store, data_root)
        assert record["stages"] == {"score_model": config_key(study.model_config()),
                                    "c_p": config_key(study.classifier_config("c_p")),
                                    "c_id": config_key(study.classifier_config("c_id"))}
        assert store.find("score_model", study.model_config()) is not None
        audit, probe = study.audit(), study.probe()
        assert (audit.n, audit.n_cp, audit.n_cid, audit.n_q) == (record["n"], record["n_cp"], record["n_cid"], record["n_q"])
        assert audit.p_value == pytest.approx(record["p_value"], abs=0)
        assert (probe.t_prime, probe.t_prime_count) == (record["t_prime"], record["t_prime_count"])
        assert study.classifier_accuracies() == {"saf_accuracy": record["saf_accuracy"], "id_accuracy": record["id_accuracy"]}
    assert _runs(store) == before, "the Study drew or trained something the sweep had not stored"


def test_jobs_2_gives_the_records_of_jobs_1(swept, tmp_path, data_root):
    reference, result, _ = swept
    store = RunStore(tmp_path / "runs")
    _copy_run(reference, store, "c_p", _study(GRID.cells()[0], reference, data_root).classifier_config("c_p"))
    for cell in GRID.cells():  # the classifiers as a notebook left them; each worker trains its cell's score model
        _copy_run(reference, store, "c_id", _study(cell, reference, data_root).classifier_config("c_id"))
    start = time.perf_counter()
    parallel = run_sweep(GRID, jobs=2, store=store, data_root=data_root, progress=False)
    print(f"2 cells with --jobs 2 (c_p, c_id copied): {time.perf_counter() - start:.0f} s; per cell: "
          + ", ".join(f"seed {o.cell.seed}: {o.record['seconds']}" for o in parallel.outcomes if o.record))
    assert [o.status for o in parallel.outcomes] == ["computed", "computed"], parallel.table()
    assert [_without_seconds(o.record) for o in parallel.outcomes] == [_without_seconds(o.record) for o in result.outcomes]
    manifests = [json.loads(p.read_text()) for p in sorted((store.root / KIND).glob("*/manifest.json"))]
    pids = {m["extra"]["worker"]["pid"] for m in manifests}
    assert len(pids) == 2 and os.getpid() not in pids, "each cell ran in its own worker process"
    assert all(m["extra"]["worker"]["threads"] == 1 for m in manifests)
    assert all(o.log is not None and o.log.is_file() for o in parallel.outcomes)
    summary = json.loads(parallel.write(tmp_path / "summary.json").read_text())
    assert [c["record"]["n_q"] for c in summary["cells"]] == [o.record["n_q"] for o in result.outcomes]


def test_a_killed_sweep_resumes_without_recomputing_finished_cells(swept, tmp_path, data_root, monkeypatch):
    """The CLI is killed (SIGKILL) while the second cell trains; the rerun keeps the first cell's record,
    computes the second (resuming its training) and gives the uninterrupted sweep's records."""
    reference, result, _ = swept
    runs = tmp_path / "runs"
    store = RunStore(runs)
    first, second = GRID.cells()
    study0, study1 = _study(first, reference, data_root), _study(second, reference, data_root)
    # the first cell's stages as a notebook would have left them (its record is not there): it finishes fast
    _copy_run(reference, store, "c_p", study0.classifier_config("c_p"))
    _copy_run(reference, store, "c_id", study0.classifier_config("c_id"))
    _copy_run(reference, store, "c_id", study1.classifier_config("c_id"))  # the second cell trains its model only
    _copy_run(reference, store, "score_model", study0.model_config())
    for manifest in (reference.root / "samples").glob("*/manifest.json"):
        config = json.loads(manifest.read_text())["config"]
        if config["model"] == study0.model_config():
            _copy_run(reference, store, "samples", config)
    args = ["sweep", "--datasets", "breastmnist", "--n-dataset", "8", "--seeds", "0", "1", "--profile", "smoke",
            "--data-root", str(data_root), "--offline", "--no-progress"]
    env = {**os.environ, "SAFCORE_RUNS_DIR": str(runs), "OMP_NUM_THREADS": "1", "SAFCORE_PROGRESS": "0"}
    log = tmp_path / "killed.log"
    with open(log, "w") as handle:
        process = subprocess.Popen([sys.executable, "-m", "safcore", *args], cwd=REPO, env=env, stdout=handle,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        record_path = checkpoint = None
        while time.monotonic() < deadline and process.poll() is None:
            records = list((runs / KIND).glob("*/manifest.json"))
            if records and record_path is None:
                (record_path,) = records
            if record_path is not None:  # kill once the second cell's training has written a checkpoint
                found = list((runs / "score_model").rglob("checkpoint_step*.safetensors"))
                if found:
                    checkpoint = found[0]
                    break
            time.sleep(0.2)
        assert process.poll() is None, f"the sweep ended before it could be killed:\n{log.read_text()}"
        assert record_path is not None and checkpoint is not None, f"no first record or checkpoint:\n{log.read_text()}"
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    print(f"killed with the first cell recorded and the second training ({checkpoint.name})")
    assert store.find(KIND, json.loads(record_path.read_text())["config"]) is not None
    assert len(list((runs / KIND).glob("*/manifest.json"))) == 1
    kept = record_path.stat()
    first_record = (record_path.parent / "cell.json").read_text()

    monkeypatch.setenv("SAFCORE_RUNS_DIR", str(runs))
    start = time.perf_counter()
    assert main([*args, "--out", str(tmp_path / "summary.csv")]) == 0
    print(f"rerun after the kill: {time.perf_counter() - start:.0f} s")
    after = record_path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns), "the first cell was recorded again"
    assert (record_path.parent / "cell.json").read_text() == first_record
    with open(tmp_path / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["seed"], r["status"]) for r in rows] == [("0", "skipped"), ("1", "computed")]
    records = load_records(GRID, store=store, data_root=data_root)
    assert [_without_seconds(r) for r in records.values()] == [_without_seconds(o.record) for o in result.outcomes]
    assert store.find("score_model", study1.model_config()) is not None


def test_a_fid_cell_is_its_own_record_and_reuses_the_trained_stages(swept, data_root, monkeypatch):
    store, result, _ = swept
    for name in ("train", "train_saf_classifier", "train_id_classifier"):
        module = "stages" if name == "train" else "hub"  # the score model's training runs in safcore.study.stages
        monkeypatch.setattr(f"safcore.study.{module}.{name}", lambda *a, _n=name, **k: pytest.fail(f"Study retrained ({_n})"))
    cell = dataclasses.replace(GRID.cells()[0], probe=False, fid=True)
    outcome = run_cell(cell, store=store, data_root=data_root, progress=False)
    record = outcome.record
    print(f"FID cell on stored stages: {record['seconds']}")
    # FID_train against D_p (the images trained on): n = min(n_fid, N_D = 8, |test|) on both sides
    assert outcome.status == "computed" and record["fid_n"] == 8 and record["fid_extractor"]
    assert record["fid_train"] > 0 and record["fid_test"] > 0
    assert not record["probed"] and record["t_prime"] is None
    assert _without_seconds(record) | {"fid_train": None, "fid_test": None, "fid_n": None, "fid_extractor": None,
                                       "probed": True, "t_prime": result.outcomes[0].record["t_prime"],
                                       "t_prime_count": result.outcomes[0].record["t_prime_count"]} \
        == _without_seconds(result.outcomes[0].record)
    assert run_cell(cell, store=store, data_root=data_root, progress=False).status == "skipped"


@pytest.mark.parametrize(("extra", "expected"), [
    (["--n-dataset", "8", "600"], "N_D = 600 exceeds the 546 training images of breastmnist"),
    (["--n-dataset", "8", "--datasets", "nosuchmnist"], "unknown MedMNIST 2D flag 'nosuchmnist'"),
    (["--n-dataset", "8", "--jobs", "0"], "--jobs = 0; allowed: an integer ≥ 1"),
    (["--n-dataset", "8", "--out", "summary.txt"], "must end in .csv or .json"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(extra, expected, tmp_path, monkeypatch, capsys, data_root):
    monkeypatch.setenv("SAFCORE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)
    code = main(["sweep", "--datasets", "breastmnist", "--profile", "smoke", "--data-root", str(data_root), *extra])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("safcore sweep: error: ") and expected in lines[0], captured.err
    assert captured.out == ""
    assert list(tmp_path.iterdir()) == [], "bad input wrote something"
