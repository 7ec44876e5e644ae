"""Orchestration: the profiles (``profiles``), :class:`Study` wiring data → model → adversary → audit / probe
(``hub``), sweeps (``sweep``), data parallelism (``distributed``), the audit report (``report``), figures
(``plotting``, one module per family), the notebooks' tables (``tables``), the demo (``demo``) and the paper's
Tab. 2 rows (``paper_rows``)."""

from safcore.study.hub import Study

__all__ = ["Study"]
