"""The field's metrics on one trained model (issue 14): its members, its non-members, every attack, one result.

The members are the model's training set ``D_p``. The non-members are held-out images of the same split
family (:func:`nonmember_pool`, :func:`draw_nonmembers`): the train split's images outside ``D_p``'s subset
first (closest to the members' distribution), then the val and test splits, every near-duplicate of ``D_p``
or ``x_p``'s clean original removed (RMS < :data:`safcore.measures.control.NEAR_DUPLICATE_RMS`).
:func:`peer_report` runs the attacks of :mod:`safcore.measures.membership` on both sets and the copy criteria on the
model's samples, beside the same criteria on the held-out control, into one :class:`PeerReport`.

Images are unit-range ``(N, C, H, W)``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from safcore.measures import control as control_lib
from safcore.measures import membership, roc
from safcore.measures.memorization import (carlini_copies, dar_copies, dar_threshold, distinct_extracted,
                                          gu_memorization_ratio)
from safcore.runtime.runs import RunStore, atomic_write

__all__ = ["ATTACKS", "PeerReport", "nonmember_pool", "draw_nonmembers", "peer_report"]

#: The membership-inference attacks, by the name their summary is stored under (``mia_<name>``).
ATTACKS = ("loss", "secmi", "pia")


def nonmember_pool(train: torch.Tensor, chosen: Sequence[int] | np.ndarray, others: Sequence[torch.Tensor],
                   patient_images: torch.Tensor) -> tuple[control_lib.HeldOut, int]:
    """Every candidate non-member, near-duplicates removed, and how many kept ones come from the train split.

    Args:
        train: the train split ``(N, C, H, W)``; chosen: the indices of ``D_p``'s subset in it.
        others: further splits, in order (val, test).
        patient_images: every image the model saw or that shows the patient (``D_p`` and ``x_i``).
    """
    rest = np.setdiff1d(np.arange(len(train)), chosen)
    candidates = torch.cat([train[torch.as_tensor(rest, dtype=torch.long)], *others])
    dup = control_lib.near_duplicates(candidates, patient_images)
    pool = control_lib.HeldOut(candidates[~dup], int(len(candidates)), int(dup.sum()), control_lib.NEAR_DUPLICATE_RMS,
                               "train split outside D_p, val, test")
    return pool, int((~dup[: len(rest)]).sum())


def draw_nonmembers(pool: control_lib.HeldOut, n_train: int, n: int, seed: int) -> torch.Tensor:
    """``n`` non-members ``(≤ n, C, H, W)`` of ``pool`` in an order drawn with ``seed``, its first ``n_train``
    (the train split's) before the rest; fewer than ``n`` only when the pool has no more."""
    order = torch.randperm(pool.n, generator=torch.Generator().manual_seed(seed))
    first = order[order < n_train]
    then = order[order >= n_train]
    return pool.images[torch.cat([first, then])[:n]]


@dataclasses.dataclass(frozen=True)
class PeerReport:
    """The field's metrics on one model (what ``Study.peers`` keeps in the run store as ``peers.json``).

    Attributes:
        n_members, n_nonmembers, n_samples: the sizes of the three sets.
        mia_loss, mia_secmi, mia_pia: each attack's :class:`~safcore.measures.roc.ROCSummary` (lower → member).
        carlini_copies: samples that copy a member (Carlini et al. 2023, ratio < 0.5).
        distinct_extracted: different members copied.
        dar_copies, dar_threshold: Dar et al.'s correlation copies and the threshold set on validation images.
        gu_memorization_ratio: Gu et al.'s share of memorized samples.
        nonmember_pool: :meth:`safcore.measures.control.HeldOut.to_dict` of the non-member pool.
        copy_criteria: :func:`safcore.measures.control.copy_criteria` on the samples and the control.

    ``report["mia_loss"]`` reads :meth:`to_dict`'s entries (the stored JSON's keys).
    """

    n_members: int
    n_nonmembers: int
    n_samples: int
    mia_loss: roc.ROCSummary
    mia_secmi: roc.ROCSummary
    mia_pia: roc.ROCSummary
    carlini_copies: int
    distinct_extracted: int
    dar_copies: int
    dar_threshold: float
    gu_memorization_ratio: float
    nonmember_pool: dict
    copy_criteria: dict

    def to_dict(self) -> dict:
        """Plain values, in the order ``peers.json`` holds them."""
        return {f.name: (getattr(self, f.name).to_dict() if f.name.startswith("mia_") else getattr(self, f.name))
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict) -> PeerReport:
        """The report :meth:`to_dict` wrote (JSON lists read back as tuples)."""
        def summary(d: dict) -> roc.ROCSummary:
            pairs = tuple(None if ci is None else tuple(ci) for ci in d["tpr_intervals"])
            return roc.ROCSummary(**{**d, "auc_interval": tuple(d["auc_interval"]), "fprs": tuple(d["fprs"]),
                                       "tprs": tuple(d["tprs"]), "tpr_intervals": pairs})

        return cls(**{k: summary(v) if k.startswith("mia_") else v for k, v in values.items()})

    def __getitem__(self, key: str):
        return self.to_dict()[key]


def peer_report(model, members: torch.Tensor, nonmembers: torch.Tensor, samples: torch.Tensor,
                validation: torch.Tensor, *, pool: control_lib.HeldOut, control: control_lib.HeldOut,
                n_draws: int = 8, seed: int = 0) -> PeerReport:
    """Membership inference on ``model`` (members against non-members) and memorization in its samples.

    The loss attack (``n_draws`` draws from ``seed``), SecMI's t-error and PIA at the reference's steps
    (:func:`safcore.measures.membership.loss_attack`, :func:`~safcore.measures.membership.secmi_t_error`,
    :func:`~safcore.measures.membership.pia_error`), each summarised by :func:`~safcore.measures.roc.roc_summary` with
    lower → member fixed; Carlini et al.'s copies and distinct images extracted, Dar et al.'s correlation
    copies (threshold from ``validation``) and Gu et al.'s ratio against the members; every copy criterion
    beside the same criterion on ``control`` (:func:`safcore.measures.control.copy_criteria`).

    Args:
        model: anything the attacks take (a ScoreModel, a DiffusersModel, a score function with an ``sde``).
        members, nonmembers, samples, validation: ``(N, C, H, W)`` in [0, 1].
        pool: the pool ``nonmembers`` were drawn from (:func:`nonmember_pool`), recorded.
        control: held-out real images the model never saw.
    """
    attacks = {"loss": lambda x: membership.loss_attack(model, x, n_draws=n_draws, seed=seed),
               "secmi": lambda x: membership.secmi_t_error(model, x),
               "pia": lambda x: membership.pia_error(model, x)}
    mia = {f"mia_{name}": roc.roc_summary(attacks[name](members), attacks[name](nonmembers), member_if="lower")
           for name in ATTACKS}
    return PeerReport(
        n_members=int(members.shape[0]), n_nonmembers=int(nonmembers.shape[0]), n_samples=int(samples.shape[0]),
        **mia, carlini_copies=int(carlini_copies(samples, members).sum()),
        distinct_extracted=distinct_extracted(samples, members),
        dar_copies=int(dar_copies(samples, members, validation).sum()),
        dar_threshold=dar_threshold(members, validation),
        gu_memorization_ratio=gu_memorization_ratio(samples, members),
        nonmember_pool=pool.to_dict(), copy_criteria=control_lib.copy_criteria(samples, members, control))


def stored_peer_report(store: RunStore, model_config: dict, make_report: Callable[[], PeerReport], *, n_samples: int,
                       n_draws: int, seed: int) -> PeerReport:
    """The :class:`PeerReport` of the model keyed by ``model_config`` on its ``n_samples`` audit samples, kept in
    the run store as ``peers.json`` (``make_report()`` runs once, under the key's lock)."""
    config = {"model": model_config, "n_samples": int(n_samples), "n_draws": n_draws,
              "nonmembers": "train-rest, val, test; near-duplicates removed",
              "near_duplicate_rms": control_lib.NEAR_DUPLICATE_RMS, "mia": "reference noise levels, Newcombe AUC CI",
              "version": 2}

    def make(tmp: Path) -> None:
        atomic_write(tmp / "peers.json", json.dumps(make_report().to_dict(), indent=2, default=float))

    run = store.get_or_create("peers", config, make, seed=seed)
    return PeerReport.from_dict(json.loads(run.file("peers.json").read_text()))
