"""Many processes share one run store: a stage is computed once, readers never see it missing or half."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

from safcore.runtime.runs import CorruptRunError, RunStore

CONFIG = {"stage": "shared", "n": 3}


def _make(root: str, log: str, barrier, answers) -> None:
    store = RunStore(root)
    barrier.wait()  # all four ask at the same moment

    def make(tmp: Path):
        with open(log, "a") as handle:  # one line per computation
            handle.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        (tmp / "result.txt").write_text("42")
        return {"made_by": os.getpid()}

    run = store.get_or_create("stage", CONFIG, make, seed=0)
    answers.put(f"{run.file('result.txt').read_text()} {run.manifest['extra']['made_by']}")


def _read(root: str, seconds: float, queue) -> None:
    store = RunStore(root)
    seen, problems = False, []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            run = store.find("stage", CONFIG)
        except CorruptRunError as error:
            problems.append(f"corrupt: {error}")
            continue
        if run is None and seen:
            problems.append("missing after it was published")
        seen = seen or run is not None
    queue.put((seen, problems))


def test_four_processes_compute_a_stage_once_and_a_reader_never_sees_it_missing(tmp_path):
    ctx = mp.get_context("fork")
    root, log = str(tmp_path / "runs"), str(tmp_path / "made.log")
    barrier, queue, results = ctx.Barrier(4), ctx.Queue(), ctx.Queue()
    reader = ctx.Process(target=_read, args=(root, 4.0, queue))
    reader.start()
    writers = [ctx.Process(target=_make, args=(root, log, barrier, results)) for _ in range(4)]
    for writer in writers:
        writer.start()
    answers = [results.get(timeout=30) for _ in writers]
    for writer in writers:
        writer.join(10)
        assert writer.exitcode == 0
    reader.join(10)
    seen, problems = queue.get(timeout=5)
    made = Path(log).read_text().split()
    assert len(made) == 1  # computed exactly once
    assert answers == [f"42 {made[0]}"] * 4  # all four got the one result
    assert seen and problems == []
    leftovers = [p.name for p in (tmp_path / "runs" / "stage").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_a_second_writer_without_the_lock_keeps_the_first_run(tmp_path):
    store = RunStore(tmp_path / "runs")
    with store.create("stage", CONFIG, seed=0) as tmp:
        (tmp / "result.txt").write_text("first")
    with store.create("stage", CONFIG, seed=0) as tmp:
        (tmp / "result.txt").write_text("second")
    assert store.find("stage", CONFIG).file("result.txt").read_text() == "first"
    assert sorted(p.name for p in (tmp_path / "runs" / "stage").iterdir()) == [store.path("stage", CONFIG).name]


def _hold(root: str, ready) -> None:
    with RunStore(root).lock("stage", CONFIG):
        ready.set()
        time.sleep(60)


def test_a_crashed_holder_does_not_block_forever(tmp_path):
    import filelock

    ctx = mp.get_context("fork")
    root = str(tmp_path / "runs")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold, args=(root, ready))
    holder.start()
    assert ready.wait(10)
    store = RunStore(root)
    with pytest.raises(filelock.Timeout):
        with store.lock("stage", CONFIG, timeout=0.2):
            pass
    os.kill(holder.pid, signal.SIGKILL)  # the holder dies without releasing
    holder.join(10)
    with store.lock("stage", CONFIG, timeout=5):
        pass
