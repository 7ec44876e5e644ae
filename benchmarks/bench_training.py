"""Training-step cost, measured side by side in one run (issue 3, item 8).

Prints seconds per step of
  * the bare U-Net step: forward at labels 999·t, MSE to the noise, backward, Adam step (fp32);
  * ``safcore.generators.train.Trainer.step`` (fp32): generator draws, sub-VP perturbation, warm-up lr,
    clipping, EMA, loss bookkeeping — the training loop's step;
  * ``Trainer.step`` with bf16 autocast (attention by ``runtime.device.training_attention_kernel``: on a CPU
    PyTorch's math kernel) and the same with PyTorch's default attention dispatch (the fused flash kernel);
and the ratios: overhead = Trainer/bare − 1 (target ≤ 10 %), bf16 speed-up = fp32/bf16, and the attention
kernel's speed-up = default / chosen (bf16).
The variants alternate in rounds of ``--steps`` steps so that load from other processes hits them
alike; each time is the median over rounds. Finally one ``safcore.generators.train.train`` call (with its
checkpoint writes) reports its own seconds per step.

    .venv/bin/python benchmarks/bench_training.py --preset small --batch 32 --steps 8 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import tempfile
import time

import torch

import safcore.generators.train as train_module
from safcore.generators.train import TrainConfig, Trainer, train
from safcore.runtime.device import training_attention_kernel


def _bare_step(unet, optimizer, x0, t, z, sde) -> None:
    mean, std = sde.marginal_prob(x0, t)
    xt = mean + std[:, None, None, None] * z
    loss = torch.mean((unet(xt, t * 999.0).sample - z) ** 2)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _timed(fn, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", help="U-Net preset (tiny, small, paper)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--n-images", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="steps per variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    images = torch.rand(args.n_images, 1, 28, 28)
    config = TrainConfig(preset=args.preset, steps=10**6, batch_size=args.batch, warmup_steps=10,
                         checkpoint_every=10**6, device="cpu")
    fp32 = Trainer(images, config)
    bf16 = Trainer(images, TrainConfig(**{**config.to_dict(), "keep_steps": (), "bf16": True}))
    unet = copy.deepcopy(fp32.model.unet)
    optimizer = torch.optim.Adam(unet.parameters(), lr=config.lr)
    x0, t, z = fp32.draw_batch()  # the bare step reuses one batch (its best case)
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"preset {args.preset} ({n_params / 1e6:.2f} M params), batch {args.batch}, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds × {args.steps} steps")

    bf16_default = Trainer(images, TrainConfig(**{**config.to_dict(), "keep_steps": (), "bf16": True}))

    def default_kernel_step() -> None:  # the same step with PyTorch's own attention dispatch
        chosen = train_module.training_attention
        train_module.training_attention = lambda device, bf16: contextlib.nullcontext()
        try:
            bf16_default.step()
        finally:
            train_module.training_attention = chosen

    kernel = training_attention_kernel("cpu", True)
    variants = {
        "bare U-Net fwd+bwd+Adam (fp32)": lambda: _bare_step(unet, optimizer, x0, t, z, fp32.sde),
        "safcore Trainer.step (fp32)": fp32.step,
        f"safcore Trainer.step (bf16, {kernel} attn)": bf16.step,
        "safcore Trainer.step (bf16, default attn)": default_kernel_step,
    }
    for fn in variants.values():  # warm-up: allocator, oneDNN primitive caches
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            times[name].append(_timed(fn, args.steps))
    median = {name: statistics.median(v) for name, v in times.items()}
    for name, value in median.items():
        spread = ", ".join(f"{v:.3f}" for v in times[name])
        print(f"  {name:42s} {value:.4f} s/step   (rounds: {spread})")
    bare, ours, ours_bf16, bf16_default_kernel = median.values()
    overhead = ours / bare - 1.0
    print(f"overhead of the safcore step vs bare: {100 * overhead:+.1f} %  (target ≤ 10 %) "
          f"{'OK' if overhead <= 0.10 else 'ABOVE TARGET'}")
    print(f"bf16 autocast speed-up (fp32 / bf16 s/step): {ours / ours_bf16:.2f}×")
    print(f"attention kernel speed-up under bf16 (default / {kernel} s/step): {bf16_default_kernel / ours_bf16:.2f}×")

    steps = args.steps * 2
    with tempfile.TemporaryDirectory() as work:
        cfg = TrainConfig(**{**config.to_dict(), "keep_steps": (), "steps": steps, "checkpoint_every": args.steps})
        result = train(images, cfg, work, progress=False)
    print(f"full train() loop, {steps} steps incl. {steps // args.steps} checkpoint writes (fp32): "
          f"{result.seconds_per_step:.4f} s/step ({result.seconds_per_step / bare:.2f}× bare; includes the first step)")


if __name__ == "__main__":
    main()
