"""What the field reports beside t', on one model: membership inference, extraction, nearest-neighbour copies.

The peers the SAF audit is compared with (issue 14), each in the module of its concept:

* **Membership inference on the model** (:mod:`safcore.measures.membership`): the loss attack, SecMI's
  t-error (Duan et al. 2023) and PIA (Kong et al. 2024) at the reference DDPM's noise levels on the model's
  own clock, each summarised by :mod:`safcore.measures.roc` (AUC with Newcombe's interval, TPR at a fixed
  FPR with a Clopper–Pearson interval).
* **Copies in its samples** (:mod:`safcore.measures.memorization`): Carlini et al. 2023's copies and
  distinct images extracted, Dar et al. 2024's correlation copies, Gu et al. 2023's memorization ratio.

:func:`peer_metrics` runs them all on one model and returns the plain values ``Study.peers`` stores.
"""

from __future__ import annotations

import torch

from safcore.measures.membership import loss_attack, pia_error, secmi_t_error
from safcore.measures.memorization import (
    carlini_copies,
    dar_copies,
    dar_threshold,
    distinct_extracted,
    gu_memorization_ratio,
)
from safcore.measures.roc import roc_summary

__all__ = ["peer_metrics"]


def peer_metrics(
    model,
    members: torch.Tensor,
    nonmembers: torch.Tensor,
    samples: torch.Tensor,
    validation: torch.Tensor,
    *,
    n_draws: int = 8,
    seed: int = 0,
) -> dict:
    """The field's metrics on one model, as plain values (what ``Study.peers`` stores).

    Membership inference on the model (members = its training set, non-members = held-out images of
    the same split family): the loss attack (``n_draws`` draws from ``seed``), SecMI's t-error and PIA at
    the reference's steps (:data:`~safcore.measures.membership.SECMI_STEPS`,
    :data:`~safcore.measures.membership.PIA_STEPS` on the model's clock), each as a
    :class:`~safcore.measures.roc.ROCSummary` with lower → member fixed (AUC with Newcombe's interval, TPR at 1 % / 0.1 % FPR
    with a Clopper–Pearson interval where the non-member count resolves them).
    Memorization in its samples against the members: Carlini et al.'s copies and distinct images
    extracted, Dar et al.'s correlation copies (threshold from ``validation``), Gu et al.'s ratio.

    Args:
        model: anything :func:`safcore.generators.loader.as_generator` accepts.
        members, nonmembers, samples, validation: (N, C, H, W) in [0, 1].
    """
    out: dict = {"n_members": int(members.shape[0]), "n_nonmembers": int(nonmembers.shape[0]), "n_samples": int(samples.shape[0])}
    attacks = {
        "loss": lambda x: loss_attack(model, x, n_draws=n_draws, seed=seed),
        "secmi": lambda x: secmi_t_error(model, x),
        "pia": lambda x: pia_error(model, x),
    }
    for name, attack in attacks.items():
        summary = roc_summary(attack(members), attack(nonmembers), member_if="lower")
        out[f"mia_{name}"] = summary.to_dict()
    copies = carlini_copies(samples, members)
    out["carlini_copies"] = int(copies.sum())
    out["distinct_extracted"] = distinct_extracted(samples, members)
    out["dar_copies"] = int(dar_copies(samples, members, validation).sum())
    out["dar_threshold"] = dar_threshold(members, validation)
    out["gu_memorization_ratio"] = gu_memorization_ratio(samples, members)
    return out
