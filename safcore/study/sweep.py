"""Sweeps: the grid of the paper's Tab. 1 / Tab. 2 (datasets × N_D × seeds), cell by cell, resumable.

A cell is one :class:`~safcore.study.hub.Study` — ``Study(dataset, n_dataset, profile=..., seed=...)`` — whose
audit (and ``t'`` probe, and FID when asked) the sweep computes. Its stages (score model, ``c_p``,
``c_id``, samples) go into the run store under the keys the Study itself uses, so notebooks 04 and 07
with the same settings find them there and train nothing. Each finished cell also leaves a small
record (the counts ``|c_p+|``, ``|c_id+|``, ``|q|``, ``E|q|``, the p-value, ``t'``, FID, the seconds
each stage took) in the store as the run ``("sweep_cell", key)``, written through
:meth:`safcore.runtime.runs.RunStore.get_or_create` — computed once, atomically, under the key's file lock.

A sweep skips every cell whose record is in the store, so it resumes after a kill: the cells finished
before it are kept, and a cell cut short resumes its training from its checkpoints.

>>> grid = SweepGrid(("breastmnist", "pneumoniamnist"), n_datasets=(16, 64), seeds=(0, 1), profile="cpu")
>>> result = run_sweep(grid, jobs=2)       # two cells at once, one per GPU where there are GPUs
>>> print(result.table())
>>> load_records(grid)                     # the finished cells' records, read from the store

``jobs=1`` runs the cells in this process; ``jobs=K > 1`` runs K at once, each in a fresh Python process
(``python -m safcore.study.sweep_workers``). Where CUDA devices are visible, job slot ``j`` gets
``CUDA_VISIBLE_DEVICES`` = the ``j mod count``-th of them; on CPU the K processes share the cores, with
``threads`` torch threads each (default: this process's threads // K). A cell's record is the same
bit for bit whichever slot computes it when the thread count per cell is the same (it is part of every
run's manifest; another count sums floats in another order).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from safcore.data import datasets as data_lib
from safcore.study.profiles import PROFILES
from safcore.runtime.progress import progress_bar
from safcore.runtime.runs import RunStore, atomic_write, config_key
from safcore.study.sweep_workers import one_line, run_workers, torch_threads

if TYPE_CHECKING:
    from safcore.study.hub import Study

KIND = "sweep_cell"
"""The run-store kind of a cell's record: ``<store>/sweep_cell/<key>/cell.json``."""
RECORD_FILE = "cell.json"
RECORD_VERSION = 2  # 2: copy counts with the calibrated rule and their held-out control, x_p handed back (issue 20)
"""Part of every record's key: raise it when the record's content changes, so old records are not reused."""
"""Folder of the store where worker processes (``jobs > 1``) write one log per cell."""
SUMMARY_SUFFIXES = (".csv", ".json")

Status = Literal["computed", "skipped", "failed"]


def _is_path(dataset: str) -> bool:
    return dataset.lower().endswith(".npz") or os.sep in dataset or (os.altsep is not None and os.altsep in dataset)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} = {value!r}; allowed: an integer ≥ {minimum}")
    return int(value)


def _values(name: str, values: Any) -> tuple:
    if isinstance(values, (str, bytes, os.PathLike)) or not isinstance(values, Iterable):
        raise ValueError(f"{name} = {values!r}; allowed: a non-empty list")  # noqa: TRY004 — bad input is a ValueError here
    values = tuple(values)
    if not values:
        raise ValueError(f"{name} is empty; allowed: a non-empty list")
    return values


def _no_duplicates(name: str, values: Sequence) -> None:
    seen: set = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{name} names {value!r} twice; each value may appear once")
        seen.add(value)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One cell of a sweep: one Study (``dataset``, ``n_dataset``, ``seed`` at ``profile``) and what it computes.

    Args:
        dataset: a 2D MedMNIST flag or the absolute path of a MedMNIST-layout ``.npz``.
        n_dataset: ``N_D``.
        seed: the Study's seed (draws ``D_p``, ``x_i`` and the SAF's place).
        profile: ``"smoke"``, ``"cpu"`` or ``"paper"``.
        n_samples: audit samples (``None``: the profile's ``n_samples``).
        probe: also measure ``t'`` (Algorithm 1, the profile's probe settings).
        fid: also compute FID_train and FID_test (:meth:`safcore.study.hub.Study.fid`).
    """

    dataset: str
    n_dataset: int
    seed: int
    profile: str
    n_samples: int | None = None
    probe: bool = True
    fid: bool = False

    @property
    def name(self) -> str:
        """The dataset's short name: the flag, or the ``.npz`` file's stem (as :class:`MedMNISTData` names it)."""
        return Path(self.dataset).stem if _is_path(self.dataset) else self.dataset.lower()

    def label(self) -> str:
        """A short file-name-safe name: ``breastmnist_ND8_seed0_smoke``."""
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", self.name)
        return f"{name}_ND{self.n_dataset}_seed{self.seed}_{self.profile}"

    def study(self, *, store: RunStore | None = None, data_root: str | os.PathLike | None = None,
              progress: bool = True, data: data_lib.MedMNISTData | None = None, device: str = "auto") -> Study:
        """The cell's :class:`~safcore.study.hub.Study` — the same one a notebook builds with these settings.

        ``data``: the dataset, already loaded (a sweep loads each dataset once for all its cells)."""
        from safcore.study.hub import Study

        return Study(self.dataset if data is None else data, self.n_dataset, profile=self.profile, seed=self.seed,
                     data_root=data_root, store=store, progress=progress, device=device)


@dataclasses.dataclass(frozen=True)
class SweepGrid:
    """The grid of a sweep: every dataset × every ``N_D`` × every seed at one profile.

    Args:
        datasets: 2D MedMNIST flags and/or paths of MedMNIST-layout ``.npz`` files (paths are made absolute).
        n_datasets: the ``N_D`` of Tab. 1's columns.
        seeds: Study seeds (one model per seed and cell).
        profile: ``"smoke"``, ``"cpu"`` or ``"paper"``.
        n_samples: audit samples per cell (``None``: the profile's; notebook 04 passes its ``N_SAMPLES``).
        probe: measure ``t'`` in every cell.
        fid: compute FID_train and FID_test in every cell (Tab. 2).

    Raises:
        ValueError: an empty or duplicated list, a non-integer or negative value, an unknown profile.
            Whether each ``N_D`` fits each dataset is :meth:`check`'s question.
    """

    datasets: tuple[str, ...]
    n_datasets: tuple[int, ...]
    seeds: tuple[int, ...] = (0,)
    profile: str = "smoke"
    n_samples: int | None = None
    probe: bool = True
    fid: bool = False

    def __post_init__(self) -> None:
        datasets = _values("datasets", self.datasets)
        for dataset in datasets:
            if not isinstance(dataset, (str, os.PathLike)) or not os.fspath(dataset):
                raise ValueError(f"dataset {dataset!r}; allowed: a 2D MedMNIST flag or the path of an .npz")
        datasets = tuple(os.fspath(d) for d in datasets)
        datasets = tuple(str(Path(d).expanduser().resolve()) if _is_path(d) else d.lower() for d in datasets)
        _no_duplicates("datasets", datasets)
        n_datasets = tuple(_check_int("N_D", n, 1) for n in _values("n_datasets", self.n_datasets))
        _no_duplicates("n_datasets", n_datasets)
        seeds = tuple(_check_int("seed", s, 0) for s in _values("seeds", self.seeds))
        _no_duplicates("seeds", seeds)
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; allowed: {', '.join(PROFILES)}")
        if self.n_samples is not None:
            _check_int("n_samples", self.n_samples, 1)
        for name in ("probe", "fid"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} = {getattr(self, name)!r}; allowed: True or False")  # noqa: TRY004
        object.__setattr__(self, "datasets", datasets)
        object.__setattr__(self, "n_datasets", n_datasets)
        object.__setattr__(self, "seeds", seeds)

    def cells(self) -> tuple[Cell, ...]:
        """Every cell, in a fixed order: dataset by dataset (one ``c_p`` serves a dataset's cells), then
        ``N_D``, then seed, each as given."""
        return tuple(Cell(dataset, n, seed, self.profile, self.n_samples, self.probe, self.fid)
                     for dataset in self.datasets for n in self.n_datasets for seed in self.seeds)

    def check(self) -> None:
        """Refuse, before any work, a grid with an ``N_D`` that does not fit a dataset's train split or an
        unknown dataset (:func:`safcore.data.datasets.check_n_dataset`: a flag's size is medmnist's, nothing is read;
        an ``.npz`` is opened and validated)."""
        for dataset in self.datasets:
            for n in self.n_datasets:
                data_lib.check_n_dataset(dataset, n)


# ---------------------------------------------------------------------------------------------- one cell


def cell_config(study: Study, cell: Cell) -> dict:
    """The key of a cell's record: every setting its numbers depend on — the Study's score-model key
    (data, ``D_p``, SAF, training), both classifiers' keys, how the audit samples are drawn, the probe's
    and FID's settings, and :data:`RECORD_VERSION`."""
    profile = study.profile
    n = profile.n_samples if cell.n_samples is None else cell.n_samples
    return {
        "version": RECORD_VERSION,
        "profile": profile.name,
        "model": study.model_config(),
        "c_p": study.classifier_config("c_p"),
        "c_id": study.classifier_config("c_id"),
        "audit": {"n": n, "sampler": profile.sampler, "sample_steps": profile.sample_steps,
                  "step": profile.train.steps, "seed": 0},
        "probe": dataclasses.asdict(profile.probe) if cell.probe else None,
        "fid": {"n_fid": profile.n_fid, "extractor": "auto", "splits": ["train", "test"], "seed": 0} if cell.fid else None,
    }


def _finite(value: Any) -> Any:
    """``None`` for NaN/inf (JSON has no such numbers), plain floats otherwise."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _compute(study: Study, cell: Cell) -> dict:
    """Run the cell's stages through ``study`` and return its record (see :func:`run_cell`)."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        seconds[name] = round(now - since, 3)
        return now

    mark = start
    study.score_model  # noqa: B018 — trained, or read from the store
    mark = lap("score_model", mark)
    study.c_p, study.c_id  # noqa: B018
    accuracies = study.classifier_accuracies()
    mark = lap("classifiers", mark)
    audit = study.audit(cell.n_samples)
    mark = lap("audit", mark)
    probe = None
    if cell.probe:
        probe = study.probe()
        mark = lap("probe", mark)
    fid_train = fid_test = None
    if cell.fid:
        fid_train, fid_test = study.fid("train"), study.fid("test")
        mark = lap("fid", mark)
    seconds["total"] = round(mark - start, 3)
    copies = audit.copies
    record = {
        "dataset": study.data.name,
        "n_dataset": study.n_dataset,
        "seed": study.seed,
        "profile": study.profile.name,
        "n": audit.n,
        "expected_q": audit.expected_q,
        "n_cp": audit.n_cp,
        "n_cid": audit.n_cid,
        "n_q": audit.n_q,
        "p_value": audit.p_value,
        "q_upper": audit.q_upper(),
        "saf_accuracy": accuracies["saf_accuracy"],
        "id_accuracy": accuracies["id_accuracy"],
        "cp_on_x_p": audit.cp_on_x_p,
        "xp_copies_nn": None if copies is None else copies.n_xp_copies,
        "caught": None if copies is None else copies.q_hits,
        "copies": None if copies is None else copies.n_copies,
        "copies_control": None if copies is None or not copies.control else copies.control["copies"],
        "n_control": None if copies is None or not copies.control else copies.control["n"],
        "x_p_handed_back": audit.n_handed_back,
        "verdict": audit.verdict().kind,
        "probed": cell.probe,
        "t_prime": None if probe is None else probe.t_prime,
        "t_prime_count": None if probe is None else probe.t_prime_count,
        "fid_train": None if fid_train is None else fid_train.value,
        "fid_test": None if fid_test is None else fid_test.value,
        "fid_n": None if fid_train is None else fid_train.n_real,
        "fid_extractor": None if fid_train is None else fid_train.extractor_name,
        "stages": {"score_model": config_key(study.model_config()),
                   "c_p": config_key(study.classifier_config("c_p")),
                   "c_id": config_key(study.classifier_config("c_id"))},
        "seconds": seconds,
    }
    return {key: _finite(value) for key, value in record.items()}


@dataclasses.dataclass(frozen=True)
class CellOutcome:
    """What a sweep did with one cell.

    Attributes:
        cell: the cell.
        status: ``"computed"`` (by this sweep), ``"skipped"`` (its record was in the store, or another
            process computed it while this one waited for the key's lock) or ``"failed"``.
        record: the cell's record (``None`` when it failed).
        error: why it failed, one line (``None`` otherwise).
        log: the worker's log file (``jobs > 1``), else ``None``.
    """

    cell: Cell
    status: Status
    record: dict | None = None
    error: str | None = None
    log: Path | None = None


def run_cell(cell: Cell, *, store: RunStore | None = None, data_root: str | os.PathLike | None = None,
             progress: bool = True, study: Study | None = None, device: str = "auto") -> CellOutcome:
    """Compute one cell through its :class:`~safcore.study.hub.Study` and keep its record in the store.

    The record is the run ``("sweep_cell", cell_config(...))`` with ``cell.json``; it is made by
    :meth:`RunStore.get_or_create`, so across processes a cell is computed once, under its lock, and
    published atomically. Stages already in the store (a shared ``c_p``, a model trained by a notebook)
    are reused, not retrained. The record holds ``n``, ``E|q|``, ``|c_p+|`` (``n_cp``), ``|c_id+|``
    (``n_cid``), ``|q|`` (``n_q``), the p-value, the 95 % upper bound on P(``x_p``), the classifiers'
    accuracies, the nearest-neighbour count of ``x_p`` copies, the verdict, ``t'`` with its count, FID
    (train, test, ``n``, extractor), the keys of the stages it used and the seconds of each stage.

    Returns:
        :class:`CellOutcome` with status ``"computed"`` or ``"skipped"`` (errors propagate).
    """
    study = study if study is not None else cell.study(store=store, data_root=data_root, progress=progress, device=device)
    config = cell_config(study, cell)
    made: list[bool] = []

    def make(tmp: Path) -> dict:
        record = _compute(study, cell)
        atomic_write(tmp / RECORD_FILE, json.dumps(record, indent=2, sort_keys=True))
        made.append(True)
        return {"seconds": record["seconds"], "worker": {
            "pid": os.getpid(), "threads": torch_threads(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}}

    run = study.store.get_or_create(KIND, config, make, seed=cell.seed)
    record = json.loads(run.file(RECORD_FILE).read_text())
    return CellOutcome(cell, "computed" if made else "skipped", record)


# ---------------------------------------------------------------------------------------------- the sweep


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """The outcome of every cell of a grid, in :meth:`SweepGrid.cells` order."""

    grid: SweepGrid
    outcomes: tuple[CellOutcome, ...]
    seconds: float

    @property
    def failed(self) -> tuple[CellOutcome, ...]:
        return tuple(o for o in self.outcomes if o.status == "failed")

    def count(self, status: Status) -> int:
        return sum(o.status == status for o in self.outcomes)

    def rows(self) -> list[dict]:
        """One flat dict per cell: the cell, its status and its record's scalars (``seconds`` = the cell's total)."""
        rows = []
        for o in self.outcomes:
            row = {"dataset": o.cell.dataset, "n_dataset": o.cell.n_dataset, "seed": o.cell.seed,
                   "profile": o.cell.profile, "status": o.status, "error": o.error}
            if o.record is not None:
                row.update({k: v for k, v in o.record.items() if k not in ("stages", "seconds", "dataset", "n_dataset",
                                                                          "seed", "profile")})
                row["data_name"] = o.record["dataset"]
                row["seconds"] = o.record["seconds"]["total"]
            rows.append(row)
        return rows

    def table(self) -> str:
        """The grid as a plain-text table (one line per cell) with a last line of totals."""
        header = ("dataset", "N_D", "seed", "status", "|c_p+|", "|c_id+|", "|q|", "E|q|", "p", "t'", "FID_train",
                  "FID_test", "s")
        lines = [header]

        def num(value, spec: str, missing: str = "-") -> str:
            return missing if value is None else format(value, spec)

        for o in self.outcomes:
            name = o.record["dataset"] if o.record else o.cell.name
            r = o.record or {}
            t_prime = "-" if not r.get("probed") else ("none" if r.get("t_prime") is None else f"{r['t_prime']:.2f}")
            lines.append((name, str(o.cell.n_dataset), str(o.cell.seed), o.status, num(r.get("n_cp"), "d"),
                          num(r.get("n_cid"), "d"), num(r.get("n_q"), "d"), num(r.get("expected_q"), ".3g"),
                          num(r.get("p_value"), ".3g"), t_prime, num(r.get("fid_train"), ".1f"),
                          num(r.get("fid_test"), ".1f"), num((r.get("seconds") or {}).get("total"), ".0f")))
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        text = ["  ".join(v.ljust(w) if i < 4 else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths, strict=True)))
                for line in lines]
        text.append(f"{len(self.outcomes)} cells at profile {self.grid.profile}: {self.count('computed')} computed, "
                    f"{self.count('skipped')} skipped, {self.count('failed')} failed, in {self.seconds:.0f} s")
        for o in self.failed:
            text.append(f"failed {o.cell.label()}: {o.error}" + (f" (log: {o.log})" if o.log else ""))
        return "\n".join(text)

    def write(self, path: str | os.PathLike) -> Path:
        """Write the summary atomically: ``.csv`` (:meth:`rows`) or ``.json`` (the grid and every cell's
        full record, stage keys and per-stage seconds included)."""
        path = Path(path)
        check_summary_path(path)
        if path.suffix.lower() == ".json":
            payload = {"grid": dataclasses.asdict(self.grid), "seconds": self.seconds,
                       "cells": [{**dataclasses.asdict(o.cell), "status": o.status, "error": o.error,
                                  "record": o.record} for o in self.outcomes]}
            return atomic_write(path, json.dumps(payload, indent=2, default=str))
        rows = self.rows()
        fields = list(dict.fromkeys(key for row in rows for key in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return atomic_write(path, buffer.getvalue())


def check_summary_path(path: str | os.PathLike) -> Path:
    """A summary path must end in ``.csv`` or ``.json`` and must not be a folder."""
    path = Path(path)
    if path.suffix.lower() not in SUMMARY_SUFFIXES:
        raise ValueError(f"summary file {str(path)!r} must end in {' or '.join(SUMMARY_SUFFIXES)}")
    if path.is_dir():
        raise ValueError(f"summary file {str(path)!r} is a folder; give a .csv or .json file name")
    return path


def run_sweep(grid: SweepGrid, *, jobs: int = 1, store: RunStore | None = None,
              data_root: str | os.PathLike | None = None, progress: bool = True, threads: int | None = None,
              poll_s: float = 0.5, device: str = "auto") -> SweepResult:
    """Run every cell of ``grid`` whose record is not in the store; return the outcome of every cell.

    Before any work: the grid is checked (:meth:`SweepGrid.check`: each ``N_D`` fits each dataset) and
    each dataset is loaded once (a missing file stops here). Cells already recorded are skipped; the
    others run in :meth:`SweepGrid.cells` order, ``jobs`` at a time (see the module docstring). A cell
    that fails is reported as ``"failed"`` (with its log for ``jobs > 1``) and the others still run.

    Args:
        grid: the grid.
        jobs: cells at once (``≥ 1``); 1 runs them in this process.
        store: the run store (default ``safcore.runtime.paths.runs_dir()``).
        data_root: where the MedMNIST files are (see :func:`safcore.data.datasets.load_dataset`).
        progress: a bar over the cells (and, with ``jobs = 1``, each stage's own bars).
        threads: torch threads per worker process (``jobs > 1``; default this process's // ``jobs``, ≥ 1).
        poll_s: how often the workers are looked at.
        device: each cell's :class:`~safcore.study.hub.Study` device (``"auto"``: a worker's GPU where there are
            GPUs, else the CPU; checked before any work).

    Raises:
        ValueError: ``jobs`` or ``threads`` not an integer ≥ 1, or a grid :meth:`SweepGrid.check` refuses.
        FileNotFoundError: a dataset's file is missing (offline, or not in ``data_root``).
    """
    jobs = _check_int("jobs", jobs, 1)
    from safcore.runtime.device import resolve_device

    resolve_device(device)  # an unknown or absent device stops here, before any work
    if threads is not None:
        threads = _check_int("threads", threads, 1)
    grid.check()
    start = time.perf_counter()
    loaded = {dataset: data_lib.load_dataset(dataset, root=data_root) for dataset in grid.datasets}
    store = store if store is not None else RunStore()
    cells = grid.cells()
    outcomes: list[CellOutcome | None] = [None] * len(cells)
    pending: list[int] = []
    studies: dict[int, Study] = {}
    for i, cell in enumerate(cells):
        study = cell.study(store=store, data_root=data_root, progress=progress, data=loaded[cell.dataset], device=device)
        try:
            run = store.find(KIND, cell_config(study, cell))
        except Exception:  # noqa: BLE001 — a corrupt record: the cell runs and reports it
            run = None
        if run is not None:
            outcomes[i] = CellOutcome(cell, "skipped", json.loads(run.file(RECORD_FILE).read_text()))
        else:
            pending.append(i)
            studies[i] = study
    with progress_bar(total=len(cells), desc=f"sweep ({grid.profile})", unit="cell", enabled=progress) as bar:
        bar.update(len(cells) - len(pending))
        if jobs == 1:
            for i in pending:
                bar.set_postfix_str(f"now: {cells[i].label()}")
                try:
                    outcomes[i] = run_cell(cells[i], study=studies.pop(i), progress=progress)
                except Exception as error:  # noqa: BLE001 — reported, the other cells still run
                    outcomes[i] = CellOutcome(cells[i], "failed", error=one_line(error))
                bar.update(1)
        else:
            threads = threads or max(1, torch_threads() // jobs)
            studies.clear()
            for i, outcome in run_workers(cells, pending, jobs=jobs, threads=threads, store=store,
                                           data_root=data_root, poll_s=poll_s, device=device):
                outcomes[i] = outcome
                bar.set_postfix_str(f"done: {cells[i].label()}")
                bar.update(1)
    return SweepResult(grid, tuple(outcomes), round(time.perf_counter() - start, 3))


def load_records(grid: SweepGrid, *, store: RunStore | None = None,
                 data_root: str | os.PathLike | None = None) -> dict[Cell, dict]:
    """The records of ``grid``'s finished cells, read from the store (nothing is computed): ``{cell: record}``
    in :meth:`SweepGrid.cells` order; cells not yet swept are left out."""
    grid.check()
    store = store if store is not None else RunStore()
    loaded = {dataset: data_lib.load_dataset(dataset, root=data_root) for dataset in grid.datasets}
    records = {}
    for cell in grid.cells():
        study = cell.study(store=store, data_root=data_root, progress=False, data=loaded[cell.dataset])
        run = store.find(KIND, cell_config(study, cell))
        if run is not None:
            records[cell] = json.loads(run.file(RECORD_FILE).read_text())
    return records
