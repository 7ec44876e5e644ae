"""Orchestration: the profiles (``profiles``), :class:`Study` wiring data → model → adversary → audit / probe
(``hub``) and the stages it keeps in the run store (``stages``), sweeps (``sweep``, ``sweep_workers``), data
parallelism (``distributed``), the audit, probe and demo reports (``report``), figures (``plotting``, one module per
family), the notebooks' tables (``tables``) and the paper's Tab. 2 rows (``paper_rows``)."""

from safcore.study.hub import Study

__all__ = ["Study"]
