"""The GPU path side by side: images/s of sampling the cpu profile's U-Net with fp32 vs bf16 autocast,
channels_last off/on, torch.compile off/on, and a few sampler batch sizes, as ratios to the plain fp32 run.

    .venv/bin/python benchmarks/bench_gpu_path.py                       # the full table (an idle machine)
    .venv/bin/python benchmarks/bench_gpu_path.py --device cuda         # on a GPU
    .venv/bin/python benchmarks/bench_gpu_path.py --quick --out /tmp/g  # smoke test (tests/test_batching.py)

The U-Net is the cpu profile's preset with random weights (no training: the speed of a forward pass does not
depend on the weights); the sampler is ``--method`` (default DPM-Solver++ (2M) SDE on a t grid, 20 steps) from
the prior, ``--n`` images. Every setting runs once to warm up (torch.compile compiles there; its compile time is
printed apart), then ``--repeats`` times; the median is reported. On CUDA the network micro-batch that
:func:`safcore.runtime.batching.fitting_batch_size` would choose for the largest batch is printed too.
``--out PATH`` writes ``PATH.txt`` and ``PATH.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from safcore.generators.sampling import METHODS, sample
from safcore.generators.score_model import ScoreModel, build_unet
from safcore.generators.sde import SubVPSDE
from safcore.runtime.batching import fitting_batch_size
from safcore.runtime.device import bf16_supported, faster_network, resolve_device
from safcore.study.profiles import CPU


@dataclasses.dataclass(frozen=True)
class Row:
    """One setting: its images/s (median of the repeats), the ratio to the plain fp32 row of the same batch,
    and the first (warm-up, compiling) run's seconds."""

    batch: int
    bf16: bool
    channels_last: bool
    compile: bool
    images_per_s: float
    ratio: float
    warmup_s: float


def _settings(args) -> list[tuple[int, bool, bool, bool]]:
    """(batch, bf16, channels_last, compile): each lever alone and all together at the first batch size,
    the plain fp32 run at every other batch size."""
    first, *rest = args.batches
    levers = [(False, False, False), (True, False, False), (False, True, False), (False, False, True),
              (True, True, False), (True, True, True)]
    if args.no_compile:
        levers = [lever for lever in levers if not lever[2]]
    return [(first, *lever) for lever in levers] + [(b, False, False, False) for b in rest]


def _time(model, sde, args, device, batch, bf16, channels_last, compile) -> tuple[float, float]:
    def once() -> float:
        start = time.perf_counter()
        sample(model, sde, shape=(args.n, model.channels, model.image_size, model.image_size), method=args.method,
               steps=args.steps, batch_size=batch, autocast_bf16=bf16, device=device,
               generator=torch.Generator(device=device).manual_seed(0), progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    with faster_network(model, channels_last=channels_last, compile=compile):
        warmup = once()
        seconds = statistics.median(once() for _ in range(args.repeats))
    return args.n / seconds, warmup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--method", default="dpm2m_sde_t", choices=METHODS)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--n", type=int, default=256, help="images per timed run")
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 64, 128])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", default=CPU.train.preset, help="U-Net preset (default: the cpu profile's)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny U-Net, 8 images, 2 steps, no compile")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.n, args.steps, args.batches, args.repeats, args.no_compile = "tiny", 8, 2, [8, 4], 1, True
    if min(args.n, args.steps, args.repeats, *args.batches) < 1:
        parser.error("--n, --steps, --repeats and --batches must be ≥ 1")
    device = resolve_device(args.device)
    torch.manual_seed(0)
    sde = SubVPSDE()
    model = ScoreModel(build_unet(args.preset, 1), sde).to(device).eval()

    rows: list[Row] = []
    base: dict[int, float] = {}
    for batch, bf16, channels_last, compile in _settings(args):
        if bf16 and not bf16_supported(device):
            continue
        speed, warmup = _time(model, sde, args, device, batch, bf16, channels_last, compile)
        if not (bf16 or channels_last or compile):
            base[batch] = speed
        reference = base.get(batch, base[args.batches[0]])
        rows.append(Row(batch, bf16, channels_last, compile, speed, speed / reference, warmup))

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    lines = [f"bench_gpu_path on {name}: U-Net {args.preset!r} (random weights), {args.method} {args.steps} steps, "
             f"{args.n} images, median of {args.repeats}",
             f"{'batch':>6} {'bf16':>5} {'ch_last':>7} {'compile':>7} {'images/s':>10} {'ratio':>6} {'warm-up s':>9}"]
    for r in rows:
        lines.append(f"{r.batch:>6} {r.bf16!s:>5} {r.channels_last!s:>7} {r.compile!s:>7} {r.images_per_s:>10.1f} "
                     f"{r.ratio:>6.2f} {r.warmup_s:>9.2f}")
    lines.append("ratio: to plain fp32 at the same batch size (its own row: 1.00)")
    if device.type == "cuda":
        shape = (model.channels, model.image_size, model.image_size)
        choice = fitting_batch_size(
            lambda n: model(torch.zeros((n, *shape), device=device), torch.full((n,), 0.5, device=device)),
            device, max(args.batches))
        lines.append(f"network micro-batch for {max(args.batches)} images: {choice.batch_size} ({choice.reason})")
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".txt").write_text(text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(
            {"device": name, "preset": args.preset, "method": args.method, "steps": args.steps, "n": args.n,
             "rows": [dataclasses.asdict(r) for r in rows]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
