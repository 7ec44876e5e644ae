"""Command line: ``python -m safcore demo`` (or the ``safcore`` console script) for headless runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from safcore import paths
from safcore.profiles import PROFILES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safcore", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="SAF → score model → classifiers → audit → t' on one dataset, with a short report"
    )
    demo.add_argument("--dataset", default="breastmnist", help="2D MedMNIST flag or path of a MedMNIST-layout .npz")
    demo.add_argument("--n-dataset", type=int, default=None, help="N_D (default: the profile's)")
    demo.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--data-root", default=None, help="folder with the flags' .npz files (default $SAFCORE_DATA_ROOT)")
    demo.add_argument("--out", type=Path, default=None, help="report folder (default runs/reports/<profile>_<dataset>_ND<N>)")
    demo.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from safcore.demo import run_demo
    from safcore.study import Study

    study = Study(args.dataset, args.n_dataset, profile=args.profile, seed=args.seed, data_root=args.data_root,
                  progress=not args.no_progress)
    out = args.out or paths.runs_dir() / "reports" / f"{study.profile.name}_{study.data.name}_ND{study.n_dataset}"
    report = run_demo(study, out, progress=not args.no_progress)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
