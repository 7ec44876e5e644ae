"""Sampler throughput: ``safcore.generators.sampling.sample`` vs a plain per-step loop, bf16 autocast on vs off.

All variants run Euler–Maruyama on the same randomly initialised U-Net with the same number of
network evaluations, interleaved round by round (side by side, so load from other processes hits
all of them alike); the best round of each is reported. Target (issue 3, item 8): sampler ≥ 1.3×
the plain loop.

    .venv/bin/python benchmarks/bench_sampling.py --preset small --images 32 --steps 50 --threads 1  # ~2.5 min
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from safcore.generators.score_model import UNET_PRESETS, ScoreModel, build_unet
from safcore.generators.sampling import sample
from safcore.generators.sde import SubVPSDE


def plain_loop(model: ScoreModel, n: int, steps: int, eps: float = 1e-3, seed: int = 0) -> torch.Tensor:
    """The baseline: the textbook Euler–Maruyama loop, ``torch.no_grad``, fp32, one batch, no tricks."""
    sde = model.sde
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, model.channels, 28, 28, generator=g)
    dt = (1.0 - eps) / steps
    with torch.no_grad():
        for k in range(steps):
            t = torch.full((n,), 1.0 - k * dt)
            eps_hat = model.unet(x, t * 999).sample
            std = sde.marginal_prob(torch.zeros_like(t), t)[1]
            score = -eps_hat / std[:, None, None, None]
            drift, diffusion = sde.sde(x, t)
            x_mean = x - (drift - diffusion[:, None, None, None] ** 2 * score) * dt
            noise = torch.randn(x.shape, generator=g) if k < steps - 1 else torch.zeros_like(x)
            x = x_mean + diffusion[:, None, None, None] * dt**0.5 * noise
    return x


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process). On a shared machine the CPU time is the steadier
    measure (with one thread it excludes time spent waiting for a core)."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small", choices=sorted(UNET_PRESETS))
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best of each is kept")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = ScoreModel(build_unet(args.preset, channels=1), SubVPSDE()).eval()
    n_params = sum(p.numel() for p in model.parameters())
    n, steps = args.images, args.steps
    shape = (n, 1, 28, 28)

    def ours(bf16: bool) -> Callable[[], object]:
        return lambda: sample(
            model, model.sde, shape=shape, steps=steps, method="euler_maruyama", autocast_bf16=bf16,
            generator=torch.Generator().manual_seed(0), progress=False,
        )

    variants = {
        "plain loop (no_grad, fp32)": lambda: plain_loop(model, n, steps),
        "sample() fp32": ours(False),
        "sample() bf16 autocast": ours(True),
    }
    # warm-up: one-off kernel selection / allocation, not counted
    plain_loop(model, 4, 2)
    for bf16 in (False, True):
        sample(model, model.sde, shape=(4, 1, 28, 28), steps=2, autocast_bf16=bf16, progress=False)

    wall = {k: float("inf") for k in variants}
    cpu = {k: float("inf") for k in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            w, c = timed(fn)
            wall[name], cpu[name] = min(wall[name], w), min(cpu[name], c)

    print(f"preset {args.preset} ({n_params / 1e6:.2f} M params), {n} images × {steps} steps "
          f"(NFE {steps} each), {torch.get_num_threads()} thread(s), best of {args.rounds} round(s)")
    for name in variants:
        w, c = wall[name], cpu[name]
        print(f"  {name:<28} wall {w:7.2f} s = {n / w:6.2f} images/s | CPU {c:7.2f} s = {n / c:6.2f} images/s")
    for label, d in (("wall", wall), ("CPU ", cpu)):
        plain, fp32, bf16 = d.values()
        print(f"[{label}] sample() bf16 / plain loop: {plain / bf16:.2f}x (target >= 1.3x) | "
              f"sample() fp32 / plain loop: {plain / fp32:.2f}x | bf16 on / off: {fp32 / bf16:.2f}x")


if __name__ == "__main__":
    main()
