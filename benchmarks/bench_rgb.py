"""Why does the cpu profile's RGB score model not learn RetinaMNIST? (issue 21) — variants side by side.

Trains the cpu profile's score model (1.1 M-parameter U-Net, sub-VP) on the same N_D RetinaMNIST images
(seeded subset, x_p fingerprinted as in a Study) in several variants, one at a time, and prints for each:
the ε-MSE on D_p per diffusion time (where in t the network errs), the samples' raw range before
clipping, black / white samples, saturated pixels (D_p beside), the quality gate's unlike count
(:mod:`safcore.measures.quality`) and how many samples copy a training image (the audit's calibrated rule, with its
held-out control). Variants are named on the command line:

    rgb         the cpu profile as it is (bf16 autocast, lr 2e-4, 2000 steps; RGB gets the mean head,
                safcore.generators.score_model.MeanPrior)
    nohead      RGB without the mean head: the U-Net alone, as before issue 21
    grey        the same images converted to grey (ITU-R 601 luma), trained the same way — the reference
    fp32        RGB without bf16 autocast (and without the mean head)
    long        RGB, 4000 steps (without the mean head)
    lr1e-3      RGB, peak learning rate 1e-3 (without the mean head)
    (any variant can be given a step count: rgb:1000)

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_rgb.py rgb grey fp32 --out benchmarks/results/bench_rgb_cpu.txt
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from safcore.measures.control import copy_threshold_for
from safcore.data.datasets import from_model_range
from safcore.measures.memorization import carlini_nearest
from safcore.measures.extractor_training import domain_extractor
from safcore.study.profiles import CPU
from safcore.measures.quality import pixel_statistics, sample_quality
from safcore.generators.sampling import sample
from safcore.generators.sde import SubVPSDE
from safcore.study import Study
from safcore.generators import train

TIMES = (0.01, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)


def grey(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of RGB images, (N, 3, H, W) → (N, 1, H, W)."""
    w = torch.tensor([0.299, 0.587, 0.114]).reshape(1, 3, 1, 1)
    return (images * w).sum(1, keepdim=True)


@torch.no_grad()
def eps_errors_by_t(model, images_unit: torch.Tensor, sde, seed: int = 0, repeats: int = 8) -> tuple[dict, dict]:
    """ε-MSE on D_p per diffusion time, and the coherent error: the RMS over images and channels of the error's
    mean over an image's pixels, mean_px(ε̂ − z) (an error that is coherent over every pixel of a channel shifts
    the whole image's colour when the reverse process integrates it; pixel-wise noise averages out)."""
    g = torch.Generator().manual_seed(seed)
    x0 = (images_unit * 2 - 1).repeat(repeats, 1, 1, 1)
    mse, bias = {}, {}
    for t in TIMES:
        tt = torch.full((len(x0),), t)
        z = torch.randn(x0.shape, generator=g)
        mean, std = sde.marginal_prob(x0, tt)
        xt = mean + std.reshape(-1, 1, 1, 1) * z
        err = model.eps(xt, tt) - z
        mse[t] = float((err**2).mean())
        bias[t] = float(err.mean((2, 3)).pow(2).mean().sqrt())
    return mse, bias


@torch.no_grad()
def dc_slope(model, channels: int, seed: int = 0) -> list[float]:
    """Per channel: how much of the channel mean of pure noise z the model returns in ε̂(z, t = 1) (ideal 1)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(64, channels, 28, 28, generator=g)
    dz, de = z.mean((2, 3)), model.eps(z, torch.ones(64)).mean((2, 3))
    return [float(v) for v in (dz * de).sum(0) / (dz * dz).sum(0)]


def run(variant: str, data, training: torch.Tensor, control: torch.Tensor, n: int, extractor_for, seed: int,
        keep: Path | None = None) -> dict:
    name, _, steps = variant.partition(":")
    config = CPU.train
    images = training
    if name == "grey":
        images = grey(training)
    elif name == "nohead":
        config = dataclasses.replace(config, mean_head=False)
    elif name == "fp32":
        config = dataclasses.replace(config, bf16=False, mean_head=False)
    elif name == "long":
        config = dataclasses.replace(config, steps=4000, keep_steps=(4000,), mean_head=False)
    elif name == "lr1e-3":
        config = dataclasses.replace(config, lr=1e-3, mean_head=False)
    elif name != "rgb":
        raise SystemExit(f"unknown variant {name!r}; allowed: rgb, nohead, grey, fp32, long, lr1e-3")
    if steps:
        config = dataclasses.replace(config, steps=int(steps), keep_steps=(int(steps),))
    config = dataclasses.replace(config, keep_steps=tuple(s for s in config.keep_steps if s <= config.steps) or (config.steps,))
    sde = SubVPSDE()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        result = train(images, config, work, sde=sde, progress=False)
    model = result.model.eval()
    train_seconds = time.perf_counter() - began
    errors, bias = eps_errors_by_t(model, images, sde, seed)
    if keep is not None:
        model.save_pretrained(keep / variant.replace(":", "_"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out = sample(model, sde, shape=(n, *images.shape[1:]), method=CPU.sampler, steps=CPU.sample_steps,
                     generator=g, batch_size=CPU.sample_batch, progress=False)
    raw = out.images
    unit = from_model_range(raw).clamp(0, 1)
    reference = grey(control) if name == "grey" else control
    stats, ref_stats = pixel_statistics(unit), pixel_statistics(images)
    c = images.shape[1]
    calibration, _, ratio_c = copy_threshold_for(images, reference)
    _, ratio = carlini_nearest(unit, images)
    copies = int((ratio < calibration.value).sum())
    control_copies = int((ratio_c < calibration.value).sum())
    quality = sample_quality(unit, reference, extractor_for(c), training=images, seed=seed)
    means = unit.mean((1, 2, 3))
    return {
        "variant": variant, "channels": c, "steps": config.steps, "bf16": config.bf16, "lr": config.lr,
        "mean_head": config.uses_mean_head(c), "dc_slope_t1": dc_slope(model, c, seed),
        "train_s": round(train_seconds, 1), "final_loss": sum(result.losses[-50:]) / 50,
        "eps_mse_by_t": {str(k): round(v, 4) for k, v in errors.items()},
        "eps_bias_by_t": {str(k): round(v, 4) for k, v in bias.items()},
        "channel_mean": [float(v) for v in unit.mean((0, 2, 3))], "channel_mean_D_p": [float(v) for v in images.mean((0, 2, 3))],
        "raw_min": float(raw.min()), "raw_max": float(raw.max()),
        "black": int((means < 0.03).sum()), "white": int((means > 0.9).sum()), "n": n,
        "saturated": float(stats[:, 2 * c :].mean()), "saturated_D_p": float(ref_stats[:, 2 * c :].mean()),
        "copies": copies, "control_copies": control_copies, "control_n": len(reference),
        "threshold": calibration.value, "unlike": quality.n_unlike, "fid": quality.fid, "fid_control": quality.fid_control,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--dataset", default="retinamnist")
    parser.add_argument("--n-dataset", type=int, default=16)
    parser.add_argument("--n", type=int, default=128, help="samples per variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="save each variant's EMA model in this folder")
    args = parser.parse_args(argv)
    study = Study(args.dataset, args.n_dataset, profile="cpu", seed=args.seed, data_root=args.data_root, progress=False)
    data, training, control = study.data, study.private.images, study.control.images  # as the audit has them
    cache = Path(tempfile.gettempdir()) / "safcore_bench_rgb_extractors"
    extractors = {}

    def extractor_for(channels: int):
        if channels not in extractors:
            extractors[channels] = domain_extractor(data, cache)  # grey images are averaged to 1 channel by it
        return extractors[channels]

    lines = [f"bench_rgb: {args.dataset}, N_D = {args.n_dataset}, seed {args.seed}, {args.n} samples per variant, cpu "
             f"profile ({CPU.train.preset} U-Net, sampler {CPU.sampler} {CPU.sample_steps} steps); {platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} threads, torch {torch.__version__}"]
    print(lines[0], flush=True)
    rows = []
    for variant in args.variants:
        row = run(variant, data, training, control, args.n, extractor_for, args.seed, args.keep)
        rows.append(row)
        line = (f"{row['variant']:>10} | C {row['channels']} | mean head {row['mean_head']} | DC slope at t=1 "
                + "/".join(f"{v:.2f}" for v in row["dc_slope_t1"]) + f" | loss {row['final_loss']:.4f} | ε-MSE by t "
                + " ".join(f"{t}:{v:.3f}" for t, v in row["eps_mse_by_t"].items())
                + " | coherent ε error " + " ".join(f"{t}:{v:.3f}" for t, v in row["eps_bias_by_t"].items())
                + f" | raw [{row['raw_min']:.1f}, {row['raw_max']:.1f}] | black {row['black']} white {row['white']} of {row['n']}"
                f" | saturated {row['saturated']:.1%} (D_p {row['saturated_D_p']:.1%}) | unlike {row['unlike']}/{row['n']}"
                f" | FID {row['fid']:.2f} (held-out {row['fid_control']:.2f}) | copies {row['copies']}/{row['n']}"
                f" (held-out {row['control_copies']}/{row['control_n']}) | {row['train_s']:.0f} s")
        print(line, flush=True)
        lines.append(line)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
        (args.out.parent / (args.out.name + ".json")).write_text(json.dumps({"argv": sys.argv[1:], "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
