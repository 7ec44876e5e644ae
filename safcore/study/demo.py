"""The demo: safcore's own sub-VP model on one dataset, audited end to end (``safcore demo``).

The report itself is :func:`safcore.study.report.run_audit`'s; the demo is the study that trains its model.
"""

from __future__ import annotations

from pathlib import Path

from safcore.study.report import AuditReport, run_audit
from safcore.study.hub import Study

__all__ = ["run_demo", "AuditReport"]


def run_demo(study: Study, out_dir: str | Path, *, spread_runs: int = 3, progress: bool = True,
             overwrite: bool = False) -> AuditReport:
    """Train (or reuse) every stage of ``study`` and write the audit report into ``out_dir``; see :func:`run_audit`
    (``out_dir`` new or empty unless ``overwrite``)."""
    return run_audit(study, out_dir, spread_runs=spread_runs, progress=progress, overwrite=overwrite)
