"""Scaling with data parallel (issue 12, item 7), measured side by side in one run.

Prints, for 1 and 2 processes (``accelerate launch --multi_gpu --num_processes 2``; on a machine without
CUDA the two processes run DDP over gloo on the CPU, each with ``--threads`` torch threads, default 1):
  * training steps/s of a data-parallel :class:`safcore.generators.train.Trainer` (the same GLOBAL batch for
    both, so the 2-process step does half the images per process) and the ratio 2-process / 1-process;
  * sampling images/s of :func:`safcore.study.distributed.sample_split` (same n, chunks and sampler steps);
and, on the device it ran on, the PROJECTED wall time of the paper profile's training (30 000 steps of the
``paper`` U-Net at batch 128, bf16 as the profile) and of its 150 000-sample audit (1000 Euler–Maruyama
steps): a few paper-preset steps and sampler network evaluations are timed in one process and scaled
linearly (a projection, not a run: no data-loading, checkpoint or classifier time; on a busy machine the
measured rates are lower than on an idle one).

Beside today's setting (Euler–Maruyama, 1000 steps for the samples and for each full reverse run of the exhaustive
t' probe: M = 16 runs from each t of the paper grid, each ``steps_for(t)`` steps) it projects the fast-solver setting
(``--sampler dpm2m --steps 20``: DPM-Solver++ 2M, 20 network evaluations per sample; the probe with the same solver,
a run from t the λ tail of a full run, :func:`safcore.generators.solvers.logsnr_steps`) with the SAME measured
seconds per network evaluation: only the number of evaluations changes, so the ratio is exact for the network's
share of the time.

    .venv/bin/python benchmarks/bench_scale.py --budget medium --out benchmarks/results/bench_scale_cpu.txt
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PAPER_STEPS, PAPER_SAMPLES, PAPER_SAMPLE_STEPS = 30_000, 150_000, 1000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ workers (one per process)


def _worker(args) -> None:
    from accelerate import Accelerator

    from safcore.study.distributed import SplitSampling, sample_split
    from safcore.generators.score_model import ScoreModel, build_unet
    from safcore.generators.train import TrainConfig, Trainer
    from safcore.runtime.parallel import DataParallel

    torch.set_num_threads(args.threads)
    acc = Accelerator(cpu=not torch.cuda.is_available())
    device = acc.device.type
    out: dict = {"world_size": acc.num_processes, "device": str(acc.device), "threads": torch.get_num_threads()}
    if args.worker == "train":
        torch.manual_seed(0)
        images = torch.rand(64, args.channels, 28, 28)
        cfg = TrainConfig(preset=args.preset, steps=10**6, batch_size=args.batch, warmup_steps=1,
                          checkpoint_every=10**6, bf16=args.bf16, device=device)
        trainer = Trainer(images, cfg, parallel=DataParallel(acc))
        for _ in range(args.warmup):
            trainer.step()
        acc.wait_for_everyone()
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.worker_steps):
            trainer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        acc.wait_for_everyone()
        out["seconds_per_step"] = (time.perf_counter() - start) / args.worker_steps
    else:
        torch.manual_seed(0)
        model = ScoreModel(build_unet(args.preset, channels=args.channels, image_size=28)).to(acc.device).eval()
        settings = SplitSampling(chunk_size=args.chunk, steps=args.sample_steps, autocast_bf16=args.bf16)
        sample_split(model, args.chunk, 0, settings, accelerator=acc, progress=False)  # warm-up
        acc.wait_for_everyone()
        start = time.perf_counter()
        images = sample_split(model, args.n, 0, settings, accelerator=acc, progress=False)
        if device == "cuda":
            torch.cuda.synchronize()
        out["seconds"] = time.perf_counter() - start
        out["images_per_second"] = images.shape[0] / out["seconds"]
    if acc.is_main_process:
        Path(args.result).write_text(json.dumps(out))
    acc.wait_for_everyone()


def _paper_worker(args) -> None:
    """One process: paper-preset training steps and sampler network evaluations, timed."""
    from safcore.study.profiles import get_profile
    from safcore.generators.train import Trainer

    torch.set_num_threads(args.threads)
    paper = get_profile("paper")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    images = torch.rand(256, 3, 28, 28)
    cfg = dataclasses.replace(paper.train, keep_steps=(), steps=10**6, checkpoint_every=10**6, device=device)
    trainer = Trainer(images, cfg)
    trainer.step()  # warm-up
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(args.worker_steps):
        trainer.step()
    sync()
    step_s = (time.perf_counter() - start) / args.worker_steps
    model = trainer.ema_model()
    x = torch.randn(args.chunk, 3, 28, 28, device=device)
    t = torch.full((args.chunk,), 0.5, device=device)
    with torch.inference_mode(), torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=cfg.bf16):
        model(x, t)  # warm-up
        sync()
        start = time.perf_counter()
        for _ in range(args.sample_steps):
            model(x, t)
        sync()
    nfe_s = (time.perf_counter() - start) / args.sample_steps  # one network evaluation of `chunk` images
    params = sum(p.numel() for p in trainer.params)
    Path(args.result).write_text(json.dumps({
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "params": params, "batch": cfg.batch_size, "seconds_per_step": step_s, "sample_batch": args.chunk,
        "seconds_per_nfe": nfe_s}))


# ------------------------------------------------------------------ driver


def _run(worker_args: list[str], processes: int, env: dict, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        script = [str(Path(__file__).resolve()), *worker_args, "--result", str(result)]
        if processes == 1:
            cmd = [sys.executable, *script]
        else:
            accelerate = Path(sys.executable).with_name("accelerate")
            cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
                   "--main_process_port", str(_free_port()), *script]
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
        return json.loads(result.read_text())


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


@dataclasses.dataclass(frozen=True)
class SolverSetting:
    """Network evaluations of the paper profile's audit under one sampler: ``sample_nfe`` per sample (a full reverse
    run) and ``probe_nfe`` per exhaustive t' probe (``M · Σ_t steps(t)`` over the paper grid)."""

    sampler: str
    steps: int
    sample_nfe: int
    probe_nfe: int


def solver_setting(sampler: str, steps: int) -> SolverSetting:
    """The paper profile's NFE with ``sampler`` at ``steps`` steps per full run (EM and DPM-Solver++: one network
    evaluation per step; a run of the probe from t: :func:`safcore.generators.sampling.reverse_steps`, the t-tail
    of EM's grid or the λ-tail of DPM-Solver++'s, on the paper's sub-VP SDE)."""
    from safcore.generators.sampling import reverse_steps
    from safcore.generators.sde import SubVPSDE
    from safcore.study.profiles import get_profile

    probe = get_profile("paper").probe
    sde = SubVPSDE()
    per_t = [reverse_steps(sde, sampler, t, steps, probe.eps) for t in probe.grid]
    return SolverSetting(sampler, steps, steps, probe.M * sum(per_t))


def solver_lines(seconds_per_nfe: float, sample_batch: int, sampler: str, steps: int) -> list[str]:
    """Today's EM 1000-step audit and exhaustive probe beside the fast setting, from ONE measured seconds per
    network evaluation of ``sample_batch`` images (only the NFE differs), and their ratio."""
    ref, fast = solver_setting("euler_maruyama", PAPER_SAMPLE_STEPS), solver_setting(sampler, steps)
    per_image = seconds_per_nfe / sample_batch
    out = [f"FAST SOLVER beside today's (the same {seconds_per_nfe:.4f} s per evaluation of {sample_batch} images; "
           "only the NFE changes):",
           f"  {'setting':<26} {'NFE/sample':>10} {'audit (150000)':>15} {'probe NFE':>10} {'probe':>10}"]
    for s in (ref, fast):
        out.append(f"  {s.sampler + ' ' + str(s.steps) + ' steps':<26} {s.sample_nfe:>10} "
                   f"{_hours(PAPER_SAMPLES * s.sample_nfe * per_image):>15} {s.probe_nfe:>10,} "
                   f"{_hours(s.probe_nfe * per_image):>10}")
    out.append(f"  ratio today / fast: audit {ref.sample_nfe / fast.sample_nfe:.1f}x, exhaustive probe "
               f"{ref.probe_nfe / fast.probe_nfe:.1f}x (fast uses {fast.sample_nfe / ref.sample_nfe:.1%} and "
               f"{fast.probe_nfe / ref.probe_nfe:.1%} of the evaluations)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=("short", "medium", "full"), default="short",
                        help="short: a handful of steps (CPU, ~1.5 min); medium: 6x the steps and 4x the images "
                             "(CPU, a few minutes); full: more steps and images (GPU)")
    parser.add_argument("--preset", default="small", help="U-Net preset of the 1-vs-2-process comparison")
    parser.add_argument("--batch", type=int, default=32, help="global training batch (cpu profile: 32)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads PER PROCESS (default 1: on a loaded 2-core machine two threads of one "
                             "process spin and lose ~30x, so 1 vs 2 processes is compared at one thread each)")
    parser.add_argument("--device", choices=("auto", "cpu"), default="auto", help="cpu: hide CUDA from the workers")
    from safcore.generators.sampling import METHODS
    from safcore.study.profiles import PAPER

    parser.add_argument("--sampler", choices=METHODS, default=PAPER.sampler,
                        help="the fast setting's sampler projected beside the Euler–Maruyama 1000-step reference "
                             f"(default: the paper profile's, {PAPER.sampler})")
    parser.add_argument("--steps", type=int, default=PAPER.sample_steps,
                        help=f"the fast setting's steps per full reverse run (default: the paper profile's, "
                             f"{PAPER.sample_steps})")
    parser.add_argument("--out", default=None, help="also write the printed report here")
    parser.add_argument("--timeout", type=float, default=1800)
    # worker-only
    parser.add_argument("--worker", choices=("train", "sample", "paper"), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--worker-steps", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sample-steps", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--channels", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "paper":
        return _paper_worker(args)
    if args.worker is None and args.steps < 1:
        parser.error(f"--steps {args.steps}; allowed: an integer ≥ 1")
    if args.worker:
        return _worker(args)

    cuda = args.device == "auto" and torch.cuda.is_available()
    n_gpu = torch.cuda.device_count() if cuda else 0
    env = {**os.environ, "SAFCORE_PROGRESS": "0"}
    if not cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""
    steps, n, chunk, sample_steps = {"short": (4, 32, 8, 10), "medium": (24, 128, 16, 10),
                                     "full": (50, 2048, 256, 100)}[args.budget]
    worlds = [1, 2] if (not cuda or n_gpu >= 2) else [1]
    lines = [f"bench_scale: device {'cuda x' + str(n_gpu) if cuda else 'cpu'}, {args.threads} torch thread(s) per process, "
             f"budget {args.budget}, torch {torch.__version__}"]
    print(lines[0], flush=True)
    rows: dict[int, dict] = {}
    for world in worlds:
        threads = args.threads
        common = ["--threads", str(threads), "--preset", args.preset]
        env_w = {**env, "OMP_NUM_THREADS": str(threads)}
        trained = _run(["--worker", "train", *common, "--batch", str(args.batch), "--worker-steps", str(steps)], world, env_w,
                       args.timeout)
        sampled = _run(["--worker", "sample", *common, "--n", str(n), "--chunk", str(chunk), "--sample-steps",
                        str(sample_steps)], world, env_w, args.timeout)
        rows[world] = {"steps_per_s": 1.0 / trained["seconds_per_step"], "images_per_s": sampled["images_per_second"],
                       "threads": threads}
    lines.append(f"training: preset {args.preset}, global batch {args.batch}, {steps} timed steps (after 1 warm-up); "
                 f"sampling: {n} images, chunks of {chunk}, {sample_steps} Euler–Maruyama steps")
    lines.append(f"  {'processes':>9} {'threads/proc':>12} {'train steps/s':>14} {'sample images/s':>16}")
    for world, row in rows.items():
        lines.append(f"  {world:>9} {row['threads']:>12} {row['steps_per_s']:>14.3f} {row['images_per_s']:>16.2f}")
    if 2 in rows:
        lines.append(f"  ratio 2/1: training {rows[2]['steps_per_s'] / rows[1]['steps_per_s']:.2f}x, "
                     f"sampling {rows[2]['images_per_s'] / rows[1]['images_per_s']:.2f}x")
    else:
        lines.append("  2 processes: not measured (fewer than 2 GPUs visible)")
    for line in lines[1:]:
        print(line, flush=True)

    paper_steps, paper_chunk, paper_nfe = (20, 1024, 20) if args.budget == "full" else (2, 16, 3)
    paper = _run(["--worker", "paper", "--threads", str(args.threads), "--worker-steps", str(paper_steps), "--chunk",
                  str(paper_chunk), "--sample-steps", str(paper_nfe)], 1,
                 {**env, "OMP_NUM_THREADS": str(args.threads)}, args.timeout)
    train_s = PAPER_STEPS * paper["seconds_per_step"]
    audit_s = PAPER_SAMPLES / paper["sample_batch"] * PAPER_SAMPLE_STEPS * paper["seconds_per_nfe"]
    more = [
        f"PROJECTION for the paper profile on {paper['device']} (one process; measured {paper_steps} steps at batch "
        f"{paper['batch']} and {paper_nfe} network evaluations of {paper['sample_batch']} images, "
        f"{paper['params'] / 1e6:.1f} M params, bf16, scaled linearly):",
        f"  training {PAPER_STEPS} steps: {paper['seconds_per_step']:.3f} s/step -> {_hours(train_s)}",
        f"  audit {PAPER_SAMPLES} samples x {PAPER_SAMPLE_STEPS} steps: {paper['seconds_per_nfe']:.4f} s per evaluation "
        f"of {paper['sample_batch']} images -> {_hours(audit_s)}",
    ]
    if 2 in rows:
        more.append(f"  with 2 processes at the measured ratios: training {_hours(train_s * rows[1]['steps_per_s'] / rows[2]['steps_per_s'])}, "
                    f"audit {_hours(audit_s * rows[1]['images_per_s'] / rows[2]['images_per_s'])} (ratios of preset {args.preset})")
    more += solver_lines(paper["seconds_per_nfe"], paper["sample_batch"], args.sampler, args.steps)
    for line in more:
        print(line, flush=True)
    if args.out:
        from safcore.runtime.runs import atomic_write

        atomic_write(args.out, "\n".join(lines + more) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
