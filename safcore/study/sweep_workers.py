"""A sweep's worker processes: ``jobs = K > 1`` cells at once, each in a fresh Python process
(``python -m safcore.study.sweep_workers PAYLOAD``), job slot ``j`` on ``CUDA_VISIBLE_DEVICES`` = the ``j mod
count``-th visible GPU, ``threads`` torch threads each (:func:`safcore.study.sweep.run_sweep` drives them)."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from safcore.runtime.runs import RunStore, atomic_write

if TYPE_CHECKING:
    from safcore.study.sweep import Cell, CellOutcome

LOG_DIR = "sweep_logs"


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (empty without CUDA):
    the entries of ``$CUDA_VISIBLE_DEVICES`` when it is set, else ``0 … count-1``."""
    import torch

    if not torch.cuda.is_available():
        return []
    count = torch.cuda.device_count()
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [entry.strip() for entry in given.split(",") if entry.strip()][:count]
    return [str(i) for i in range(count)]


def worker_env(slot: int, gpus: Sequence[str], threads: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of job slot ``slot``: ``CUDA_VISIBLE_DEVICES`` = ``gpus[slot mod len(gpus)]`` when
    there are GPUs, ``threads`` for OpenMP / MKL, progress bars off (a worker writes to its log file)."""
    env = dict(os.environ if base is None else base)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(gpus[slot % len(gpus)])
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["SAFCORE_PROGRESS"] = "0"
    return env


@dataclasses.dataclass
class _Running:
    index: int
    process: subprocess.Popen
    log: Path
    outcome: Path
    handle: io.IOBase


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def run_workers(cells: Sequence[Cell], pending: Sequence[int], *, jobs: int, threads: int, store: RunStore,
                 data_root: str | os.PathLike | None, poll_s: float, device: str = "auto"):
    """Run ``pending`` cells in ``jobs`` worker processes (one cell per process, slot ``j`` on GPU ``j mod
    count``); yield ``(index, CellOutcome)`` as each ends. On an error or interrupt here the workers still
    running are terminated."""
    gpus = visible_gpus()
    log_dir = store.root / LOG_DIR
    log_dir.mkdir(parents=True, exist_ok=True)
    queue = collections.deque(pending)
    slots: dict[int, _Running] = {}
    try:
        while queue or slots:
            for slot in range(jobs):
                if slot not in slots and queue:
                    i = queue.popleft()
                    cell = cells[i]
                    name = f"{i:03d}_{cell.label()}"
                    log, outcome = log_dir / f"{name}.log", log_dir / f"{name}.outcome.json"
                    with contextlib.suppress(FileNotFoundError):
                        outcome.unlink()
                    payload = {"cell": dataclasses.asdict(cell), "store": str(store.root),
                               "data_root": None if data_root is None else str(data_root), "threads": threads,
                               "outcome": str(outcome), "device": device}
                    handle = open(log, "w")  # noqa: SIM115 — closed when the worker ends
                    process = subprocess.Popen([sys.executable, "-m", "safcore.study.sweep_workers", json.dumps(payload)],
                                               stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                                               env=worker_env(slot, gpus, threads))
                    slots[slot] = _Running(i, process, log, outcome, handle)
            time.sleep(poll_s)
            for slot, running in list(slots.items()):
                code = running.process.poll()
                if code is None:
                    continue
                running.handle.close()
                del slots[slot]
                yield running.index, _worker_outcome(cells[running.index], running, code)
    finally:
        for running in slots.values():
            running.process.terminate()
        for running in slots.values():
            try:
                running.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                running.process.kill()
                running.process.wait()
            running.handle.close()


def _worker_outcome(cell: Cell, running: _Running, code: int) -> CellOutcome:
    from safcore.study.sweep import CellOutcome

    try:
        reported = json.loads(running.outcome.read_text())
        running.outcome.unlink()
    except (OSError, json.JSONDecodeError):
        reported = None
    if code == 0 and reported is not None and reported.get("status") in ("computed", "skipped"):
        return CellOutcome(cell, reported["status"], reported["record"], log=running.log)
    error = (reported or {}).get("error") or _last_line(running.log) or f"the worker ended with exit code {code}"
    return CellOutcome(cell, "failed", error=error, log=running.log)


def _last_line(path: Path) -> str | None:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    return lines[-1] if lines else None


def _worker_main(argv: Sequence[str]) -> int:
    """``python -m safcore.study.sweep_workers PAYLOAD``: run one cell (a sweep's worker process); the outcome goes to
    the payload's ``outcome`` file, the stages' output to stdout/stderr (the sweep's log of the cell)."""
    if len(argv) != 1:
        print("usage: python -m safcore.study.sweep_workers PAYLOAD_JSON (started by safcore sweep --jobs K)", file=sys.stderr)
        return 2
    from safcore.study.sweep import Cell, run_cell

    payload = json.loads(argv[0])
    outcome_path = Path(payload["outcome"])
    cell = Cell(**payload["cell"])
    print(f"cell {cell.label()} (pid {os.getpid()}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}, "
          f"{payload['threads']} thread(s))", flush=True)
    try:
        import torch

        torch.set_num_threads(int(payload["threads"]))
        outcome = run_cell(cell, store=RunStore(payload["store"]), data_root=payload["data_root"], progress=False,
                           device=payload.get("device", "auto"))
    except Exception as error:  # noqa: BLE001 — the sweep reports it
        traceback.print_exc()
        atomic_write(outcome_path, json.dumps({"status": "failed", "error": one_line(error)}))
        return 1
    atomic_write(outcome_path, json.dumps({"status": outcome.status, "record": outcome.record}))
    print(f"cell {cell.label()}: {outcome.status} in {outcome.record['seconds']['total']:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
