"""safcore's command line: fingerprint a training set, train or bring a model, audit it, probe t'.

    safcore fingerprint --dataset breastmnist --n-dataset 16 --out fp/      # D_p for your trainer
    (train your diffusion model on fp/dp.npz or fp/images/, save it as a diffusers pipeline)
    safcore audit --model my_pipeline/ --fingerprint fp/ --probe             # will it hand back x_p?

Bad input and every expected failure (a full or read-only disk, a corrupt stored run, unreadable weights, no
network for a Hub id) end with one line on stderr naming the file or value and the remedy, and exit code 2
(--debug shows the traceback). Every input is checked before the first stage. A command writes only into a new
or empty folder unless --overwrite is given, and writes it beside its place and renames it there when whole.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import typing
from pathlib import Path

import safcore
from safcore.runtime import paths
from safcore.study.profiles import PROFILES, SamplerMethod

EPILOG = ("Each command has its own --help. Reports are written to runs/reports/ unless --out is given; an --out that "
          "is not new or empty is refused unless --overwrite is given.")


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block) and exit with code 2."""

    def error(self, message: str):  # noqa: D401 — argparse's hook
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _common(parser: argparse.ArgumentParser, *, profile_default: str = "cpu") -> None:
    parser.add_argument("--profile", choices=sorted(PROFILES), default=profile_default,
                        help=f"scale of every stage: smoke (seconds), cpu (minutes on a laptop), paper (GPU); default {profile_default}")
    parser.add_argument("--data-root", default=None,
                        help="folder holding the MedMNIST .npz files (default: $SAFCORE_DATA_ROOT, else medmnist's cache)")
    parser.add_argument("--offline", action="store_true", help="never download a dataset (also: SAFCORE_OFFLINE=1)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--device", default="auto",
                        help="where every stage runs (training, the model, c_p / c_id, sampling, t', FID): auto, cpu, cuda "
                             "or cuda:N (default auto: a GPU when one is visible)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out if it already holds an earlier output (a report, probe, fingerprint or model "
                             "folder; a summary file for sweep); without it a non-empty --out is refused before any work")


def _model_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--model", required=required,
                        help="the model to audit: a diffusers pipeline folder (model_index.json), a UNet2DModel folder with "
                             "scheduler_config.json, a MONAI bundle or MONAI folder (config.json with network and scheduler), "
                             "a folder from safcore train, or a Hub id owner/name")
    parser.add_argument("--fingerprint", required=True, type=Path,
                        help="the folder safcore fingerprint wrote (the model was trained on its D_p)")
    parser.add_argument("--scheduler", choices=("model", "ddpm", "ddim", "dpm", "dpm_sde", "unipc"), default="model",
                        help="sample a diffusers or MONAI model with its own scheduler (default), with DDPM / DDIM, or with "
                             "diffusers' multistep DPM-Solver++ 2M (dpm), its SDE variant (dpm_sde) or UniPC (unipc), built from its "
                             "noise schedule")
    parser.add_argument("--sampler", choices=typing.get_args(SamplerMethod), default=None,
                        help="sampler of a safcore SDE model for the audit's samples and the t' probe (default: the "
                             "profile's); e.g. --sampler euler_maruyama --sample-steps 200 is the cpu profile's reference")
    parser.add_argument("--sample-steps", type=int, default=None,
                        help="steps of a full reverse run of --sampler (default: the profile's sample_steps)")
    parser.add_argument("--steps", type=int, default=None,
                        help="inference steps of a full reverse run of a diffusers or MONAI model, 1 … T (its scheduler's "
                             "num_train_timesteps; default: the profile's, at most T)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="safcore", description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"safcore {safcore.__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    fp = commands.add_parser("fingerprint", help="draw D_p (one image fingerprinted) and write it for your trainer",
                             description="Draw N_D training images from a dataset, paint the synthetic anatomic fingerprint "
                                         "(a grey disc) onto one of them (x_p) and drop its clean original. Writes DIR/dp.npz "
                                         "(MedMNIST layout, train split = D_p), DIR/images/*.png (D_p as PNGs), "
                                         "DIR/fingerprint.json (what D_p is) and DIR/x_p.png. Train your model on D_p.")
    fp.add_argument("--dataset", default="breastmnist", help="a 2D MedMNIST flag or the path of a MedMNIST-layout .npz")
    fp.add_argument("--n-dataset", type=int, required=True, help="N_D, the number of training images")
    fp.add_argument("--seed", type=int, default=0, help="draws the images, x_p and the disc's place (default 0)")
    fp.add_argument("--out", type=Path, required=True, help="the folder to write (must be new or empty)")
    fp.add_argument("--radius", type=float, default=None, help="disc radius in px (default: the paper's rule for the image size)")
    fp.add_argument("--grey", type=float, default=0.5, help="the disc's grey value in [0, 1] (default 0.5)")
    fp.add_argument("--overwrite", action="store_true",
                    help="replace an output folder that holds an earlier fingerprint, report or model (nothing else)")
    fp.add_argument("--data-root", default=None, help="folder holding the MedMNIST .npz files")
    fp.add_argument("--offline", action="store_true", help="never download a dataset")

    tr = commands.add_parser("train", help="train safcore's sub-VP score model on a fingerprint folder's D_p",
                             description="Train safcore's sub-VP score model (the profile's U-Net and steps) on the D_p of a "
                                         "fingerprint folder and save it where safcore audit --model reads it.")
    tr.add_argument("--fingerprint", required=True, type=Path, help="the folder safcore fingerprint wrote")
    tr.add_argument("--out", required=True, type=Path, help="the model folder to write (must be new or empty)")
    _common(tr)

    au = commands.add_parser("audit", help="audit a model (or its samples) for copies of x_p; writes a report",
                             description="Train (or reuse) the adversary for the fingerprint folder (c_p on the dataset's real "
                                         "images, c_id on D_p), sample the model, count |c_p+|, |c_id+|, |q| against "
                                         "E|q| = n/N_D with the independent nearest-neighbour copy count, and with --probe "
                                         "measure t' (Algorithm 1). Writes report.md, summary.json, figures and a manifest.")
    _model_options(au, required=False)
    au.add_argument("--samples", type=Path, default=None,
                    help="audit these images (a PNG folder, .npy or .npz) instead of sampling the model")
    au.add_argument("--n", type=int, default=None, help="samples to draw (default: the profile's)")
    au.add_argument("--probe", action="store_true", help="also measure t' (needs --model)")
    au.add_argument("--spread", type=int, default=3, help="further top-down t' probes that show its spread (default 3; 0: none)")
    au.add_argument("--out", type=Path, default=None, help="report folder (default runs/reports/audit_<dataset>_ND<N>)")
    _common(au)

    pr = commands.add_parser("probe", help="measure t' (Algorithm 1) of a model for its fingerprint folder",
                             description="Diffuse x_p to each t of the profile's grid, run the model's reverse process M times "
                                         "and report t', the largest t from which x_p comes back, with q_M(t).")
    _model_options(pr, required=True)
    pr.add_argument("--M", type=int, default=None, help="reverse samples per t (default: the profile's)")
    pr.add_argument("--search", choices=("exhaustive", "topdown"), default="exhaustive",
                    help="exhaustive: the whole q_M(t) curve; topdown: t' alone, same law, cheap when t' is high")
    pr.add_argument("--repeats", type=int, default=1, help="independent runs; t' is the largest, with their spread")
    pr.add_argument("--out", type=Path, default=None, help="folder for probe.json and q_curve.png")
    _common(pr)

    demo = commands.add_parser("demo", help="SAF, score model, classifiers, audit and t' on one dataset, with a report",
                               description="The whole chain with safcore's own sub-VP model on a MedMNIST flag or .npz.")
    demo.add_argument("--dataset", default="breastmnist", help="2D MedMNIST flag or path of a MedMNIST-layout .npz")
    demo.add_argument("--n-dataset", type=int, default=None, help="N_D (default: the profile's)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", type=Path, default=None, help="report folder (default runs/reports/<profile>_<dataset>_ND<N>)")
    _common(demo)

    sw = commands.add_parser("sweep", help="run the grid of Tab. 1 / Tab. 2 (datasets x N_D x seeds) cell by cell, resumable",
                             description="Run one Study per cell of datasets x N_D x seeds at one profile: train (or reuse) "
                                         "its score model and classifiers, audit its samples (|c_p+|, |c_id+|, |q| against "
                                         "E|q|, p-value), measure t' and, with --fid, FID_train / FID_test. Every stage and "
                                         "each cell's record go into the run store, so notebooks 04 and 07 with the same "
                                         "settings reuse them; cells already recorded are skipped, so a killed sweep "
                                         "resumes where it stopped. Prints a table; --out also writes it as CSV or JSON.")
    sw.add_argument("--datasets", nargs="+", required=True, metavar="DATASET",
                    help="2D MedMNIST flags and/or paths of MedMNIST-layout .npz files")
    sw.add_argument("--n-dataset", nargs="+", type=int, required=True, metavar="N_D", help="one or more training-set sizes N_D")
    sw.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="SEED", help="one or more study seeds (default 0)")
    sw.add_argument("--n", type=int, default=None, help="audit samples per cell (default: the profile's)")
    sw.add_argument("--no-probe", action="store_true", help="skip the t' probe")
    sw.add_argument("--fid", action="store_true", help="also compute FID_train and FID_test (Tab. 2)")
    sw.add_argument("--jobs", type=int, default=1,
                    help="cells at once (default 1, in this process); K > 1: K worker processes, job j on GPU j mod the "
                         "number of visible GPUs where there are GPUs")
    sw.add_argument("--threads", type=int, default=None,
                    help="torch threads per worker process when --jobs > 1 (default: this process's threads / jobs)")
    sw.add_argument("--out", type=Path, default=None, help="also write the summary to this .csv or .json file")
    _common(sw)

    from safcore.study.paper_rows import PAPER_TAB2, PAPER_TAB2_SAMPLES

    t2 = commands.add_parser("tab2", help="rerun one row of the paper's Tab. 2 at the paper profile, beside the paper's",
                             description="Run a dataset's row of the paper's Tab. 2 at the paper profile (N_D = the "
                                         "paper's, its 50 000 samples, 3 channels, FID, t' with M = 16) as one resumable "
                                         "sweep cell and print it beside the published row. First it times a few steps "
                                         "of the paper U-Net on the device and says how long the row would take; "
                                         "without a GPU it stops there unless --here is given.")
    t2.add_argument("--dataset", default="retinamnist", choices=sorted(PAPER_TAB2), help="the row (default retinamnist)")
    t2.add_argument("--n", type=int, default=PAPER_TAB2_SAMPLES, help=f"audit samples (default the paper's {PAPER_TAB2_SAMPLES})")
    t2.add_argument("--seed", type=int, default=0)
    t2.add_argument("--here", action="store_true", help="run even without a GPU (the projection says how long)")
    t2.add_argument("--data-root", default=None, help="folder holding the MedMNIST .npz files")
    t2.add_argument("--offline", action="store_true", help="never download a dataset")
    t2.add_argument("--no-progress", action="store_true", help="hide progress bars")
    t2.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto: a GPU when one is visible)")
    return parser


def _load(args):
    from safcore.runtime.checks import check_int
    from safcore.runtime.device import resolve_device
    from safcore.generators.loader import load_model, max_inference_steps

    model = load_model(args.model)
    T = max_inference_steps(model)  # None: a safcore SDE model, sampled with the profile's sampler and steps
    if T is not None:
        model = model.with_scheduler(args.scheduler)
        if args.steps is not None:  # refused, not capped: a run of T steps is not what was asked for
            check_int(args.steps, "--steps", 1, T, why=f" (T = {T}, the num_train_timesteps of {args.model!r}'s scheduler)")
    elif args.scheduler != "model":
        raise ValueError(f"--scheduler {args.scheduler} applies to a diffusers model; {args.model!r} is a safcore sub-VP model")
    elif args.steps is not None:
        raise ValueError(f"--steps applies to a diffusers model; {args.model!r} is a safcore sub-VP model (its sampler "
                         "steps are the profile's, or --sample-steps)")
    if T is not None and (args.sampler is not None or args.sample_steps is not None):
        raise ValueError(f"--sampler / --sample-steps apply to a safcore SDE model; {args.model!r} is driven by its "
                         "scheduler (--scheduler, --steps)")
    return model.to(resolve_device(args.device))


def _out(args) -> Path | None:
    """``--out`` checked before any work (new or empty folder unless --overwrite; no link, no file; writable)."""
    from safcore.runtime.runs import check_output_folder

    return check_output_folder(args.out, overwrite=args.overwrite) if args.out is not None else None


def _samples(args):
    """``--samples`` read and checked against the fingerprint folder's D_p before any stage: header, dtype,
    range, channels and size (a mismatch found after c_p's training costs minutes, at the paper profile hours)."""
    from safcore.data.fingerprint_io import read_fingerprint
    from safcore.data.images import check_images_fit, load_images

    fp = read_fingerprint(args.fingerprint)
    images = load_images(args.samples)
    check_images_fit(images, fp.channels, fp.image_size, what=f"the images in {str(args.samples)!r}",
                     against=f"D_p's images in {str(args.fingerprint)!r}")
    return images


def _profile(args):
    """``--profile``, with ``--sampler`` / ``--sample-steps`` (audit, probe) switching all its sampling settings."""
    from safcore.study.profiles import get_profile

    sampler, steps = getattr(args, "sampler", None), getattr(args, "sample_steps", None)
    if sampler is None and steps is None:
        return args.profile
    _positive("--sample-steps", steps)
    profile = get_profile(args.profile)
    return profile.with_sampler(sampler or profile.sampler, steps or profile.sample_steps)


def _study(args, model=None):
    from safcore.study.hub import Study

    return Study.from_fingerprint(args.fingerprint, model=model, profile=_profile(args), data_root=args.data_root,
                                  progress=not args.no_progress, sample_steps=getattr(args, "steps", None),
                                  device=args.device)


def _positive(name: str, value) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name} = {value}; allowed: an integer ≥ 1")


def _seed(name: str, value) -> None:
    from safcore.runtime.checks import check_seed

    check_seed(value, name)


def _run(args) -> int:
    progress = not getattr(args, "no_progress", False)
    if args.command == "fingerprint":
        from safcore.study.distributed import is_main_process
        from safcore.data.fingerprint import SAFConfig
        from safcore.data.fingerprint_io import export_fingerprint

        _seed("--seed", args.seed)
        if not is_main_process():  # under a launcher one process writes the folder
            return 0
        fp = export_fingerprint(args.dataset, args.n_dataset, args.out, seed=args.seed,
                                saf=SAFConfig(radius=args.radius, grey=args.grey), data_root=args.data_root,
                                overwrite=args.overwrite)
        print(f"D_p: {fp.n_dataset} images of {fp.dataset_name} ({fp.channels} channel(s), {fp.image_size} px); "
              f"x_p is image {fp.index} (SAF at row {fp.center[0]:.1f}, col {fp.center[1]:.1f}, radius {fp.radius:.2f} px, "
              f"grey {fp.grey:g}); its clean original is left out.\n"
              f"Train on {fp.folder / 'dp.npz'} (train split) or {fp.folder / 'images'}/, then: "
              f"safcore audit --model YOUR_MODEL --fingerprint {fp.folder} --probe")
        return 0
    if args.command == "train":
        from safcore.study.distributed import is_main_process
        from safcore.runtime.runs import output_folder

        _out(args)  # before the training, not after it
        study = _study(args)
        model = study.score_model  # under accelerate launch: DDP training on every rank
        if not is_main_process():
            return 0
        with output_folder(args.out, overwrite=args.overwrite) as tmp:  # renamed into place when whole
            model.save_pretrained(tmp)
        print(f"{study}: sub-VP score model ({study.profile.train.steps} steps) saved to {args.out}; "
              f"audit it with: safcore audit --model {args.out} --fingerprint {args.fingerprint} --probe")
        return 0
    if args.command == "audit":
        from safcore.study.distributed import is_main_process
        from safcore.study.report import run_audit

        _positive("--n", args.n)
        _positive("--steps", args.steps)
        if args.model is None and args.samples is None:
            raise ValueError("give --model (a model to sample) or --samples (images generated elsewhere)")
        if args.probe and args.model is None:
            raise ValueError("--probe needs --model: t' runs the model's reverse process")
        if args.spread < 0:
            raise ValueError(f"--spread = {args.spread}; allowed: an integer ≥ 0")
        if args.steps is not None and args.model is None:
            raise ValueError("--steps applies to sampling a model (--model); --samples alone samples nothing")
        _out(args)
        images = _samples(args) if args.samples is not None else None
        study = _study(args, _load(args) if args.model is not None else None)
        out = args.out or paths.runs_dir() / "reports" / f"audit_{study.data.name}_ND{study.n_dataset}_{study.profile.name}"
        report = run_audit(study, out, images=images, n=args.n, probe=args.probe, spread_runs=args.spread if args.probe else 0,
                           progress=progress, overwrite=args.overwrite)
        if is_main_process():
            print(report)
        return 0
    if args.command == "probe":
        from safcore.study.distributed import is_main_process
        from safcore.study.report import run_probe

        _positive("--M", args.M)
        _positive("--repeats", args.repeats)
        _positive("--steps", args.steps)
        _out(args)
        study = _study(args, _load(args))
        config = study.probe_config(search=args.search, repeats=args.repeats, **({"M": args.M} if args.M else {}))
        out = args.out or paths.runs_dir() / "reports" / f"probe_{study.data.name}_ND{study.n_dataset}_{study.profile.name}"
        report = run_probe(study, out, config, overwrite=args.overwrite)
        if is_main_process():
            print(report)
        return 0
    if args.command == "sweep":
        return _sweep(args, progress)
    if args.command == "tab2":
        return _tab2(args, progress)
    # demo
    from safcore.study.distributed import is_main_process
    from safcore.study.report import run_demo
    from safcore.study.hub import Study

    _seed("--seed", args.seed)
    _out(args)
    study = Study(args.dataset, args.n_dataset, profile=args.profile, seed=args.seed, data_root=args.data_root,
                  progress=progress, device=args.device)
    out = args.out or paths.runs_dir() / "reports" / f"{study.profile.name}_{study.data.name}_ND{study.n_dataset}"
    report = run_demo(study, out, progress=progress, overwrite=args.overwrite)
    if is_main_process():
        print(report)
    return 0


def _sweep(args, progress: bool) -> int:
    from safcore.study.distributed import launched
    from safcore.study.sweep import SweepGrid, check_summary_path, run_sweep

    if launched():
        raise ValueError("safcore sweep runs its cells in its own worker processes (--jobs K, one per GPU); do not start "
                         "it under accelerate launch / torchrun (WORLD_SIZE > 1)")

    _positive("--jobs", args.jobs)
    _positive("--threads", args.threads)
    _positive("--n", args.n)
    if args.out is not None:
        from safcore.runtime.runs import check_output_file

        check_output_file(check_summary_path(args.out), overwrite=args.overwrite)
    grid = SweepGrid(tuple(args.datasets), tuple(args.n_dataset), tuple(args.seeds), profile=args.profile,
                     n_samples=args.n, probe=not args.no_probe, fid=args.fid)
    result = run_sweep(grid, jobs=args.jobs, data_root=args.data_root, progress=progress, threads=args.threads,
                       device=args.device)
    print(result.table())
    if args.out is not None:
        print(f"written: {result.write(args.out)}")
    if result.failed:
        print(f"safcore sweep: {len(result.failed)} of {len(result.outcomes)} cell(s) failed: "
              + "; ".join(f"{o.cell.label()}: {o.error}" for o in result.failed), file=sys.stderr)
        return 1
    return 0


#: What the remedy is for an OS error, by errno (the file is named beside it).
_OS_REMEDIES = {
    errno.ENOSPC: ("cannot write", "no space left on its disk: free space there, or write elsewhere"),
    errno.EDQUOT: ("cannot write", "disk quota exceeded there: free space, or write elsewhere"),
    errno.EROFS: ("cannot write", "it is on a read-only file system: write elsewhere"),
    errno.EACCES: ("cannot use", "permission denied: use another folder, or fix its permissions"),
    errno.EPERM: ("cannot use", "operation not permitted: use another folder, or fix its permissions"),
    errno.EIO: ("cannot use", "the disk reported an input/output error: check the disk"),
}


def _where(filename: str) -> str:
    """Which setting chooses the folder of ``filename``: the run store's variable, or --out."""
    store = os.environ.get(paths.RUNS_ENV) or str(paths.repo_root() / "runs")
    inside = os.path.abspath(filename).startswith(os.path.abspath(store) + os.sep)
    return (f" (the run store {store}: set {paths.RUNS_ENV} to a writable folder with space)" if inside
            else " (choose another --out)")


def _tab2(args, progress: bool) -> int:
    from safcore.runtime.checks import check_int, check_seed
    from safcore.runtime.device import resolve_device
    from safcore.study.paper_rows import projection, row_beside_paper, run_paper_row

    check_int(args.n, "--n", 1)
    check_seed(args.seed, "--seed")
    device = resolve_device(args.device)
    estimate = projection(args.dataset, device=device, n_samples=args.n)
    print(f"{args.dataset} at the paper profile, {args.n:,} samples: {estimate.describe()}.", flush=True)
    if device.type != "cuda" and not args.here:
        print(f"No GPU here: stopped. Run it on a machine with one (safcore tab2 --dataset {args.dataset}), or here "
              "with --here.")
        return 0
    record = run_paper_row(args.dataset, n_samples=args.n, seed=args.seed, data_root=args.data_root,
                           device=str(device), progress=progress)
    print(row_beside_paper(args.dataset, record))
    return 0


def failure_line(error: BaseException) -> str | None:
    """The one line an expected failure ends with on the command line, ``None`` for anything else (a bug, whose
    traceback is shown). Expected: bad input (``ValueError``, incl. unreadable weights and unreachable Hub ids),
    OS errors (a full, read-only or forbidden disk, a missing file), corrupt stored runs, a full disk reported by
    safetensors, a missing Inception, and running out of memory."""
    from safcore.runtime.runs import CorruptRunError, os_error_of

    os_error = os_error_of(error)
    if isinstance(os_error, OSError) and not isinstance(error, ValueError):
        if os_error.errno in _OS_REMEDIES:
            verb, remedy = _OS_REMEDIES[os_error.errno]
            if os_error.filename:
                name = str(os_error.filename)
                return f"{verb} {name!r}: {remedy}{_where(name)}"
            return f"{os_error.strerror}: {remedy}"
        if os_error.errno is not None and os_error.strerror:
            files = " → ".join(repr(str(f)) for f in (os_error.filename, os_error.filename2) if f)
            return f"{os_error.strerror}: {files}" if files else os_error.strerror
        return str(os_error) or type(os_error).__name__
    if isinstance(error, (ValueError, CorruptRunError)):
        return str(error) or type(error).__name__
    if type(error).__name__ in ("InceptionUnavailableError", "SafetensorError"):
        return f"{type(error).__name__}: {error}"
    if type(error).__name__ == "OutOfMemoryError" or isinstance(error, MemoryError):
        return (f"out of memory ({' '.join(str(error).split())[:200]}); use a smaller profile or --device cpu, or free "
                "memory")
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "offline", False):
        os.environ["SAFCORE_OFFLINE"] = "1"
    if args.debug:
        return _run(args)
    try:
        return _run(args)
    except Exception as error:  # an expected failure: one line, exit code 2; anything else: its traceback
        line = failure_line(error)
        if line is None:
            raise
        message = " ".join(line.split()) or type(error).__name__
        print(f"safcore {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
