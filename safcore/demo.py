"""The demo audit: SAF → score model → classifiers → audit → t', and a short report a user reads first.

:func:`run_demo` walks a :class:`~safcore.study.Study` through every stage with a progress display
(stage, elapsed time and an estimate of the time left) and writes ``report.md`` with the table row,
``q_M(t)`` and the q-positives beside ``x_p``, plus its figures and a manifest, atomically.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

from safcore import plotting
from safcore.audit import AuditResult
from safcore.probe import ProbeResult
from safcore.progress import progress_bar
from safcore.runs import atomic_write, write_manifest
from safcore.study import Study

# Rough share of the demo's time each stage takes at the cpu profile (measured on 2 cores); the
# overall bar's time-left estimate scales the measured time of finished stages by these weights.
STAGE_WEIGHTS = {"data and SAF": 0.01, "score model": 0.45, "c_p": 0.12, "c_id": 0.12, "audit samples": 0.10, "t' probe": 0.20}


@dataclasses.dataclass(frozen=True)
class DemoReport:
    """What the demo found, and where it wrote it."""

    study: str
    audit: AuditResult
    probe: ProbeResult
    accuracies: dict
    copies: int
    seconds: float
    directory: Path

    def __str__(self) -> str:
        return (
            f"{self.study}\n{self.audit}\n{self.probe}\n"
            f"samples that copy a training image (Carlini et al.): {self.copies}/{self.audit.n}\n"
            f"SAF accuracy {self.accuracies['saf_accuracy']:.1%}, ID accuracy {self.accuracies['id_accuracy']:.1%}; "
            f"{self.seconds / 60:.1f} min; report: {self.directory / 'report.md'}"
        )


def _stages(study: Study) -> list[tuple[str, Callable[[], object]]]:
    return [
        ("data and SAF", lambda: study.private),
        ("score model", lambda: study.score_model),
        ("c_p", lambda: study.c_p),
        ("c_id", lambda: study.c_id),
        ("audit samples", lambda: study.samples()),
        ("t' probe", lambda: study.probe()),
    ]


def run_demo(study: Study, out_dir: str | Path, *, progress: bool = True) -> DemoReport:
    """Run every stage of ``study`` and write the report into ``out_dir`` (created)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results: dict[str, object] = {}
    stages = _stages(study)
    total_weight = sum(STAGE_WEIGHTS.values())
    with progress_bar(total=len(stages), desc="safcore demo", unit="stage", enabled=progress, position=0) as bar:
        done_weight = 0.0
        for name, run in stages:
            bar.set_postfix_str(f"now: {name}")
            results[name] = run()
            done_weight += STAGE_WEIGHTS[name]
            elapsed = time.perf_counter() - start
            if done_weight >= STAGE_WEIGHTS["data and SAF"] + STAGE_WEIGHTS["score model"]:
                left = elapsed * (total_weight - done_weight) / done_weight
                bar.set_postfix_str(f"done: {name}, ≈{left / 60:.1f} min left")
            else:  # the score model's own bar shows its time left; the rest is known once it is done
                bar.set_postfix_str(f"done: {name}")
            bar.update(1)
    samples = results["audit samples"]
    audit_result = study.audit()
    probe_result: ProbeResult = results["t' probe"]  # type: ignore[assignment]
    accuracies = study.classifier_accuracies()
    copies = study.copies()
    seconds = time.perf_counter() - start
    _write_report(study, out_dir, audit_result, probe_result, accuracies, copies, samples, seconds)
    return DemoReport(repr(study), audit_result, probe_result, accuracies, copies, seconds, out_dir)


def _write_report(study, out_dir, audit_result, probe_result, accuracies, copies, samples, seconds) -> None:
    x_p = study.private.x_p
    figure = plotting.audit_gallery(samples, {"q-positives": audit_result.q_indices}, x_p)
    plotting.save_figure(figure, out_dir / "q_positives.png")
    figure = plotting.q_curve(probe_result.ts, probe_result.q, probe_result.ci_low, probe_result.ci_high,
                              probe_result.t_prime, label=f"N_D={study.n_dataset}")
    plotting.save_figure(figure, out_dir / "q_curve.png")
    figure = plotting.image_grid(samples[:64], ncols=16, highlight=set(int(i) for i in audit_result.q_indices if i < 64))
    plotting.save_figure(figure, out_dir / "samples.png")
    row = audit_result.to_row()
    lines = [
        f"# safcore audit — {study.data.name}, N_D = {study.n_dataset}, profile {study.profile.name}",
        "",
        "Will this model hand back the fingerprinted training image x_p?",
        "",
        "| " + " | ".join(k.replace("|", "\\|") for k in row) + " |",
        "| " + " | ".join("---" for _ in row) + " |",
        "| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()) + " |",
        "",
        f"- **|q| = {audit_result.n_q}** of {audit_result.n} samples are x_p with its SAF "
        f"(E|q| = n/N_D = {audit_result.expected_q:.3g}; one-sided binomial p = {audit_result.p_value:.3g}).",
        f"- {copies} of {audit_result.n} samples copy some training image (Carlini et al. 2023 criterion).",
        f"- **t' = {probe_result.t_prime}** — {probe_result}",
        f"- c_p SAF accuracy (test) {accuracies['saf_accuracy']:.1%}; c_id ID accuracy (train) {accuracies['id_accuracy']:.1%}.",
        f"- {seconds / 60:.1f} min in all.",
        "",
        "![q-positives beside x_p](q_positives.png)",
        "",
        "![q_M(t)](q_curve.png)",
        "",
        "![samples, q-positives framed](samples.png)",
        "",
    ]
    atomic_write(out_dir / "report.md", "\n".join(lines))
    summary = {"audit": row, "t_prime": probe_result.t_prime, "darboux_bound": probe_result.darboux_bound,
               "nfe": probe_result.nfe, "copies": copies, **accuracies, "seconds": seconds}
    atomic_write(out_dir / "summary.json", json.dumps(summary, indent=2, default=float))
    write_manifest(out_dir / "report.md", config={"study": study.model_config(), "profile": study.profile.name},
                   seed=study.seed)
