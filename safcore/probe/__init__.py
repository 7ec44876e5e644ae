"""Algorithm 1 (paper Sec. 3.4): diffuse ``x_p`` to ``t``, reverse ``M`` times, ``t'`` = the largest ``t`` from which
``x_p`` comes back.

Modules: ``config`` (:class:`ProbeConfig`, the t grid), ``results`` (:class:`ProbeExample`, :class:`QCurve`,
:class:`ProbeResult`), ``eq9`` (the forward kernel ``p(x_t | x_p)``, ``σ_t`` and the Eq. 9 indicator),
``runner`` (diffuse → reverse → classify on any :class:`~safcore.generators.base.Generator`: :func:`probe_at`,
:func:`q_curve`, :class:`QTally`), ``search`` (t' by exhaustive or top-down search: :func:`find_t_prime`),
``io`` (probe results on disk) and ``explorer`` (an interactive look). Every public name is importable from
``safcore.probe``.
"""

from safcore.probe.config import DEFAULT_GRID, ProbeConfig, as_single_image, steps_for
from safcore.probe.eq9 import diffuse, eq9_indicator, marginal_std
from safcore.probe.io import load_probe, save_probe
from safcore.probe.results import ProbeExample, ProbeResult, QCurve
from safcore.probe.runner import QTally, call_groups, fill_q_curve, probe_at, q_curve, tally_draws
from safcore.probe.search import chunk_sizes, find_t_prime, probe_result, run_seed, topdown_search

__all__ = [
    "DEFAULT_GRID",
    "QTally",
    "call_groups",
    "fill_q_curve",
    "probe_result",
    "tally_draws",
    "ProbeConfig",
    "ProbeExample",
    "QCurve",
    "ProbeResult",
    "diffuse",
    "marginal_std",
    "q_curve",
    "find_t_prime",
    "topdown_search",
    "chunk_sizes",
    "run_seed",
    "eq9_indicator",
    "probe_at",
    "load_probe",
    "save_probe",
    "steps_for",
    "as_single_image",
]
