"""The notebooks' tables, built from a study's results: Tab. 2 per dataset (notebook 07), each defence
against ε (notebook 09) and the SAF audit beside the field's metrics against ``N_D`` (notebook 10).

Each table takes a sequence of typed records — one per row, holding the results that row is built from —
and returns a :class:`pandas.DataFrame`, one row per record, in the records' order. The same records feed
the figures of :mod:`safcore.study.plotting` (``xp_and_samples``, ``defences_vs_epsilon``,
``defence_images``, ``peers_vs_n_d``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from safcore.audit.sample_audit import AuditResult
    from safcore.defences import CADP, DPSGD
    from safcore.measures.canaries import CanaryAudit
    from safcore.measures.fid import FIDResult
    from safcore.probe import ProbeResult
    from safcore.study.hub import Study


@dataclass(frozen=True)
class DatasetResults:
    """One dataset's row of Tab. 2 (notebook 07): its study and what the audit, the probe and FID found.

    Attributes:
        study: the :class:`~safcore.study.hub.Study` of the dataset.
        audit: its :meth:`Study.audit`.
        probe: its :meth:`Study.probe` (Algorithm 1's ``t'``).
        fid_train, fid_test: its :meth:`Study.fid` against ``D_p`` and against the test split.
    """

    study: Study
    audit: AuditResult
    probe: ProbeResult
    fid_train: FIDResult
    fid_test: FIDResult

    @classmethod
    def of(cls, study: Study) -> DatasetResults:
        """Audit, probe and FID (train, then test) of ``study``, in that order (each from the run store when kept)."""
        audit, probe = study.audit(), study.probe()
        return cls(study, audit, probe, study.fid("train"), study.fid("test"))


@dataclass(frozen=True)
class DefenceResults:
    """One defended (or undefended) model of notebook 09 and what it was measured by.

    Attributes:
        defence: ``None`` (no defence), a :class:`~safcore.defences.CADP` or a :class:`~safcore.defences.DPSGD`.
        study: the :class:`~safcore.study.hub.Study` trained under ``defence``.
        audit, probe, fid: its :meth:`Study.audit`, :meth:`Study.probe` and ``Study.fid("train")``.
        utility: its :meth:`Study.utility` (``"real"``, ``"samples"``, with CADP ``"privatized"``).
        copies: its :meth:`Study.copies`, samples that copy some training image.
    """

    defence: CADP | DPSGD | None
    study: Study
    audit: AuditResult
    probe: ProbeResult
    fid: FIDResult
    utility: Mapping[str, float]
    copies: int


@dataclass(frozen=True)
class PeerResults:
    """One training-set size of notebook 10: the SAF audit beside the field's metrics.

    Attributes:
        n_d: the training-set size ``N_D``.
        audit, probe: the study's :meth:`Study.audit` and :meth:`Study.probe`.
        peers: its :meth:`Study.peers` (membership inference, extraction, copy criteria beside their control).
        canary: the :class:`~safcore.measures.canaries.CanaryAudit` of its :meth:`Study.canary_audit`.
    """

    n_d: int
    audit: AuditResult
    probe: ProbeResult
    peers: Mapping[str, Any]
    canary: CanaryAudit


def epsilon_text(defence: CADP | DPSGD | None) -> str:
    """A defence's ε as a table shows it: ``"—"`` without a defence, ``"∞"`` for ε = ∞, else ``f"{ε:g}"``."""
    if defence is None:
        return "—"
    return "∞" if math.isinf(defence.epsilon) else f"{defence.epsilon:g}"


def auc_text(summary: Mapping[str, Any]) -> str:
    """An attack's AUC with its 95 % (Newcombe) interval: ``"0.81 [0.60, 0.93]"``."""
    low, high = summary["auc_interval"]
    return f"{summary['auc']:.2f} [{low:.2f}, {high:.2f}]"


def tpr_text(summary: Mapping[str, Any]) -> str:
    """An attack's TPR at the first FPR (1 %) with its exact interval, ``"—"`` where the non-members cannot
    resolve that rate (``tprs[0] is None``)."""
    tpr, interval = summary["tprs"][0], summary["tpr_intervals"][0]
    return "—" if tpr is None else f"{tpr:.2f} [{interval[0]:.2f}, {interval[1]:.2f}]"


def beside_control(criterion: Mapping[str, int]) -> str:
    """A copy count beside the same count on the held-out control: ``"k/n | j/m"`` (samples | real images)."""
    return f"{criterion['samples']}/{criterion['n']} | {criterion['control']}/{criterion['n_control']}"


def medmnist_table(results: Sequence[DatasetResults]) -> pd.DataFrame:
    """Tab. 2 at this scale (notebook 07), one row per dataset, indexed by the dataset's name.

    Beside Tab. 2's columns (adversary accuracies, ``FID_train`` / ``FID_test``, ``E|q|``, ``|q|``, ``t'``): the
    exact 95 % upper bound on P(sample is ``x_p``), the count ``t'`` rests on, the FID features used, whether
    ``c_p`` fires on ``x_p``, the nearest-neighbour copies of ``x_p`` (with the SAF, caught by the adversary),
    ``c_p``'s rate on the other samples, all copies beside the held-out control, the near-duplicates removed
    from it, the samples unlike the data and the verdict.
    """
    rows = []
    for r in results:
        study, audit, probe, fid_train, fid_test = r.study, r.audit, r.probe, r.fid_train, r.fid_test
        rows.append({"dataset": study.data.name, "|N_D|": study.n_dataset, **study.classifier_accuracies(),
                     "FID_train": fid_train.value, "FID_test": fid_test.value, "FID n": fid_train.n_real,
                     "E|q|": audit.expected_q, "|q|": audit.n_q, "P(x_p) ≤": audit.handed_back_interval()[1],
                     "t'": probe.t_prime_or_zero,
                     "t' k/n": probe.t_prime_count,
                     "FID features": fid_train.extractor_name, "c_p(x_p)": audit.cp_on_x_p,
                     "x_p copies (NN)": audit.copies.n_xp_copies, "with SAF": len(audit.copies.xp_copies_with_saf),
                     "caught": audit.copies.q_hits,
                     "c_p+ others": audit.copies.cp_others, "copies": audit.copies.n_copies,
                     "copies, held-out": f"{audit.copies.control['copies']}/{audit.copies.control['n']}",
                     "near-duplicates removed": study.control.n_removed,
                     "samples unlike data": f"{audit.quality.n_unlike}/{audit.quality.n}" if audit.quality else "—",
                     "verdict": audit.verdict().kind})
    import pandas as pd  # the notebooks extra

    return pd.DataFrame(rows).set_index("dataset")


def defences_table(results: Sequence[DefenceResults]) -> pd.DataFrame:
    """Each defence against ε (notebook 09), one row per model in ``results``' order (default index).

    Columns: the adversary's counts (``|c_p+|``, ``|c_id+|``, ``|q|`` against ``E|q|``), the 95 % upper bound on
    P(x_p), ``x_p`` copies and all copies beside the held-out control, ``t'`` with its count, ``FID_train``, the
    utility on samples / privatized images / the real ``D_p``, DP-SGD's ε spent and the verdict.
    """
    from safcore.defences import DPSGD

    rows = []
    for r in results:
        d, a, p, f, u = r.defence, r.audit, r.probe, r.fid, r.utility
        spent = r.study.training_record().get("epsilon") if isinstance(d, DPSGD) else None
        rows.append({
            "defence": "none" if d is None else type(d).__name__, "ε": epsilon_text(d),
            "|c_p+|": a.n_cp, "|c_id+|": a.n_cid, "|q|": a.n_q, "E|q|": round(a.expected_q, 2),
            "P(x_p) ≤": f"{a.handed_back_interval()[1]:.1%}", "x_p copies": a.copies.n_xp_copies, "copies": r.copies,
            "copies, held-out": f"{a.copies.control['copies']}/{a.copies.control['n']}",
            "t' (k/M)": f"{p.t_prime_or_zero:.2f} ({p.t_prime_count})",
            "FID_train": round(f.value, 2), "utility: samples": round(u["samples"], 3),
            "utility: privatized": round(u["privatized"], 3) if "privatized" in u else None,
            "utility: real D_p": round(u["real"], 3),
            "ε spent (DP-SGD)": None if spent is None else (spent if isinstance(spent, str) else round(spent, 3)),
            "verdict": a.verdict().kind,
        })
    import pandas as pd  # the notebooks extra

    return pd.DataFrame(rows)


def peers_table(results: Sequence[PeerResults]) -> pd.DataFrame:
    """Which method flags which model (notebook 10), one row per ``N_D``, indexed by ``N_D``.

    Every copy count stands beside the same count on the held-out control (:func:`beside_control`); MIA AUCs
    with Newcombe's 95 % interval (:func:`auc_text`), the loss attack's TPR at 1 % FPR (:func:`tpr_text`); the
    canary audit's ε lower bound from ``v`` right of ``r`` guesses on ``m`` canaries.
    """
    rows = []
    for r in results:
        result, probe, peer, canary = r.audit, r.probe, r.peers, r.canary
        criteria = peer["copy_criteria"]
        rows.append({
            "N_D": r.n_d, "|q|": result.n_q, "E|q|": round(result.expected_q, 2), "verdict": result.verdict().kind,
            "t'": probe.t_prime_or_zero, "copies (audit rule)": beside_control(criteria["audit"]),
            "Carlini 0.5": beside_control(criteria["carlini_0.5"]), "distinct extracted": peer["distinct_extracted"],
            "Dar (pixel)": beside_control(criteria["dar_pixel"]), "Gu": beside_control(criteria["gu"]),
            "MIA loss AUC": auc_text(peer["mia_loss"]), "loss TPR@1%": tpr_text(peer["mia_loss"]),
            "SecMI AUC": auc_text(peer["mia_secmi"]), "PIA AUC": auc_text(peer["mia_pia"]),
            "canary ε ≥": round(canary.epsilon, 3), "canary v/r (m)": f"{canary.v}/{canary.r} ({canary.m})",
            "n": result.n, "non-members": peer["n_nonmembers"],
            "near-duplicates removed (non-members | control)":
                f"{peer['nonmember_pool']['n_removed']} | {criteria['control_set']['n_removed']}",
        })
    import pandas as pd  # the notebooks extra

    return pd.DataFrame(rows).set_index("N_D")
