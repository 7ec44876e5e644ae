"""The paper's Tab. 2 rows, and one of them rerun at the paper profile beside the published numbers.

Dombrowski et al. 2023, Tab. 2 ("for the generative scores we use 50000 samples"; ``t'`` with M = 16):
:data:`PAPER_TAB2`. :func:`projection` times a few training steps and network evaluations of the paper
profile's U-Net on the device at hand and scales them to a whole row — training, the audit's samples and
Algorithm 1's exhaustive search — so that a user without a GPU learns at once what a run would cost.
:func:`run_paper_row` runs the row as one cell of a sweep (:mod:`safcore.study.sweep`: resumable, every stage in
the run store) and :func:`row_beside_paper` prints it beside the paper's.
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch

__all__ = ["PAPER_TAB2", "PAPER_TAB2_SAMPLES", "PaperRow", "Projection", "projection", "row_beside_paper", "run_paper_row"]

PAPER_TAB2_SAMPLES = 50_000
"""Samples behind the paper's Tab. 2 ("for the generative scores we use 50000 samples")."""


@dataclasses.dataclass(frozen=True)
class PaperRow:
    """One row of the paper's Tab. 2 (accuracies in %, Inception FIDs, ``E|q|``, ``|q|``, ``t'``)."""

    n_dataset: int
    saf_accuracy: float
    id_accuracy: float
    fid_train: float
    fid_test: float
    expected_q: float
    n_q: int
    t_prime: float


PAPER_TAB2: dict[str, PaperRow] = {
    "retinamnist": PaperRow(1080, 100.0, 99.6, 5.9, 19.7, 46.3, 52, 0.998),
    "bloodmnist": PaperRow(11959, 100.0, 99.5, 9.3, 11.0, 4.2, 0, 0.241),
    "chestmnist": PaperRow(78468, 99.93, 99.8, 3.3, 3.9, 0.6, 0, 0.206),
    "pneumoniamnist": PaperRow(4708, 100.0, 99.8, 9.5, 28.4, 10.6, 2, 0.719),
    "breastmnist": PaperRow(546, 100.0, 98.7, 9.2, 62.6, 91.6, 57, 0.886),
    "organsmnist": PaperRow(13940, 99.47, 99.8, 19.6, 19.7, 3.6, 0, 0.582),
}


def _paper_row(dataset: str) -> PaperRow:
    if dataset not in PAPER_TAB2:
        raise ValueError(f"dataset {dataset!r} has no row in the paper's Tab. 2; allowed: {', '.join(PAPER_TAB2)}")
    return PAPER_TAB2[dataset]


@dataclasses.dataclass(frozen=True)
class Projection:
    """Projected wall time of a paper-profile row on one device (a linear scaling of timed steps).

    Attributes:
        device: where it was timed.
        train_s, sample_s, probe_s: training, the audit's samples and Algorithm 1's exhaustive search.
        train_step_s: seconds per training step at the profile's batch; nfe_image_s: seconds per image
            and network evaluation when sampling.
        probe_nfe: network evaluations per image of the exhaustive search (``M · Σ_t steps(t)``).
    """

    device: str
    train_s: float
    sample_s: float
    probe_s: float
    train_step_s: float
    nfe_image_s: float
    probe_nfe: int

    @property
    def total_s(self) -> float:
        return self.train_s + self.sample_s + self.probe_s

    def describe(self) -> str:
        def h(s: float) -> str:
            return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min"

        return (f"≈ {h(self.total_s)} on {self.device} (training {h(self.train_s)}, samples {h(self.sample_s)}, t' "
                f"{h(self.probe_s)}; the classifiers and FID come on top) — a linear projection of timed steps")


def projection(dataset: str = "retinamnist", *, device: str | torch.device = "cpu", n_samples: int = PAPER_TAB2_SAMPLES,
               timed_steps: int = 2, batch: int = 8) -> Projection:
    """Time ``timed_steps`` training steps and sampler evaluations of the paper U-Net on ``batch`` images and
    scale them to a paper-profile row of ``dataset`` (its channels, 28 px, the profile's steps and ``n_samples``).

    Per-image costs are measured on a small batch and scaled linearly, so the projection is a lower bound on
    a CPU (a full batch does not fit caches better) and rough on a GPU (where a larger batch is cheaper per
    image); it never trains or samples anything it keeps.
    """
    from safcore.runtime.device import bf16_autocast
    from safcore.generators.score_model import ScoreModel, build_unet
    from safcore.study.profiles import PAPER

    _paper_row(dataset)
    channels = 3  # the paper profile feeds 3 channels (grey repeated), RGB as it is
    device = torch.device(device)
    torch.manual_seed(0)
    model = ScoreModel(build_unet(PAPER.train.preset, channels, 28)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=PAPER.train.lr)
    x = torch.randn(batch, channels, 28, 28, device=device)
    t = torch.rand(batch, device=device)

    def train_step() -> None:
        with bf16_autocast(device, PAPER.train.bf16):
            loss = (model.eps(x, t).float() - x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def forward() -> None:
        with torch.no_grad(), bf16_autocast(device, True):
            model.eps(x, t)

    def timed(fn) -> float:
        fn()  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        for _ in range(timed_steps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - began) / timed_steps

    train_image_s = timed(train_step) / batch
    nfe_image_s = timed(forward) / batch
    probe = PAPER.probe
    eps = 1e-3
    per_t = [math.ceil((tt - eps) / (1 - eps) * probe.steps_full) for tt in probe.grid]
    probe_nfe = probe.M * sum(per_t)
    train_step_s = train_image_s * PAPER.train.batch_size
    return Projection(
        device=str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        train_s=train_step_s * PAPER.train.steps,
        sample_s=nfe_image_s * n_samples * PAPER.sample_steps,
        probe_s=nfe_image_s * probe_nfe,
        train_step_s=train_step_s,
        nfe_image_s=nfe_image_s,
        probe_nfe=int(probe_nfe),
    )


def run_paper_row(dataset: str = "retinamnist", *, n_samples: int = PAPER_TAB2_SAMPLES, seed: int = 0,
                  data_root=None, device: str = "auto", progress: bool = True) -> dict:
    """Run ``dataset``'s Tab. 2 row at the paper profile (``N_D`` = the paper's, ``n_samples``, FID, ``t'``) as
    one sweep cell; returns its record (:func:`safcore.study.sweep.run_cell`). Resumable: stages already in the run
    store are reused."""
    from safcore.study.sweep import SweepGrid, run_sweep

    row = _paper_row(dataset)
    grid = SweepGrid((dataset,), (row.n_dataset,), (seed,), profile="paper", n_samples=n_samples, probe=True, fid=True)
    result = run_sweep(grid, jobs=1, data_root=data_root, progress=progress, device=device)
    outcome = result.outcomes[0]
    if outcome.record is None:
        raise RuntimeError(f"the paper row of {dataset} failed: {outcome.error}")
    return outcome.record


def row_beside_paper(dataset: str, record: dict) -> str:
    """A two-line table: the paper's Tab. 2 row of ``dataset`` and this run's (``record`` from a sweep cell)."""
    p = _paper_row(dataset)

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    def num(v, spec):
        return "-" if v is None else format(v, spec)

    head = ("", "N_D", "SAF (%)", "ID (%)", "FID_train", "FID_test", "E|q|", "|q|", "t'", "x_p copies (NN)", "verdict")
    paper = ("paper (Inception FID)", str(p.n_dataset), f"{p.saf_accuracy:g}", f"{p.id_accuracy:g}", f"{p.fid_train:g}",
             f"{p.fid_test:g}", f"{p.expected_q:g}", str(p.n_q), f"{p.t_prime:g}", "-", "-")
    ours = (f"safcore ({record.get('fid_extractor') or 'no FID'})", str(record["n_dataset"]), pct(record["saf_accuracy"]),
            pct(record["id_accuracy"]), num(record.get("fid_train"), ".1f"), num(record.get("fid_test"), ".1f"),
            num(record["expected_q"], ".1f"), str(record["n_q"]),
            "none" if record.get("t_prime") is None else f"{record['t_prime']:.3f} ({record.get('t_prime_count')})",
            num(record.get("xp_copies_nn"), "d"), record["verdict"])
    widths = [max(len(r[i]) for r in (head, paper, ours)) for i in range(len(head))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in (head, paper, ours))
