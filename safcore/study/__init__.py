"""Orchestration: the profiles (``profiles``), :class:`Study` wiring data → model → adversary → audit / probe
(``hub``) and the stages it keeps in the run store (``stages``), sweeps (``sweep``), data parallelism (``distributed``), the audit report (``report``), figures
(``plotting``) and the paper's Tab. 2 rows (``paper_rows``)."""

from safcore.study.hub import Study

__all__ = ["Study"]
