"""Defences measured by the same audit (issue 13): what a hospital can do before publishing a model.

* :class:`CADP` (:mod:`safcore.defences.cadp`): privatize every training image with a label-conditioned
  INN — per-image latent clipping and Laplace or Gaussian noise (Tölle et al. 2022).
* :class:`DPSGD` (:mod:`safcore.defences.dpsgd`): train the score model with Opacus' DP-SGD for a target ε.

Pass one as ``Study(..., defence=...)``; it becomes part of every run key downstream of the score model,
while ``c_p`` and ``c_id`` stay the attacker's (trained on clean data and the clean ``x_p``).
"""

from __future__ import annotations

from safcore.defences.cadp import CADP, INNConfig
from safcore.defences.dpsgd import DPSGD

Defence = CADP | DPSGD

__all__ = ["CADP", "DPSGD", "INNConfig", "Defence", "check_defence", "defended_train_config", "defence_key",
           "trainer_factory"]


def check_defence(defence) -> CADP | DPSGD | None:
    """``defence`` if it is ``None``, a :class:`CADP` or a :class:`DPSGD`; anything else raises ``ValueError``."""
    if defence is None or isinstance(defence, (CADP, DPSGD)):
        return defence
    raise ValueError(f"defence = {defence!r}; allowed: None, safcore.defences.CADP(...) or safcore.defences.DPSGD(...)")


def defended_train_config(train, defence: CADP | DPSGD | None, n_dataset: int, channels: int):
    """The score model's training settings under ``defence``: ``train`` itself, or DP-SGD's version of them
    (:func:`safcore.defences.dpsgd.dp_train_config`: expected batch ≤ N_D, fp32, no global clipping) with the
    mean head off (its prior is a statistic of ``D_p`` that DP-SGD's accountant does not cover)."""
    if not isinstance(defence, DPSGD):
        return train
    import dataclasses

    from safcore.defences.dpsgd import dp_train_config

    config = dp_train_config(train, defence, n_dataset)
    return dataclasses.replace(config, mean_head=False) if config.uses_mean_head(channels) else config


def defence_key(defence: CADP | DPSGD | None, n_dataset: int, inn: INNConfig) -> dict | None:
    """The defence's settings as they enter the run keys (CADP's INN — its own or ``inn`` — and DP-SGD's δ
    resolved); ``None`` without a defence."""
    if isinstance(defence, CADP):
        return defence.to_dict(defence.inn or inn)
    if isinstance(defence, DPSGD):
        return defence.to_dict(n_dataset)
    return None


def trainer_factory(defence: CADP | DPSGD | None):
    """The trainer class a defended score model trains with (``make_trainer`` of
    :func:`safcore.generators.train.train`): DP-SGD's :class:`~safcore.defences.dpsgd.DPTrainer`, else ``None``
    (the plain trainer; CADP changes the images, not the training)."""
    if not isinstance(defence, DPSGD):
        return None
    import functools

    from safcore.defences.dpsgd import DPTrainer

    return functools.partial(DPTrainer, dp=defence)
