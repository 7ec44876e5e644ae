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

__all__ = ["CADP", "DPSGD", "INNConfig", "Defence", "check_defence"]


def check_defence(defence) -> CADP | DPSGD | None:
    """``defence`` if it is ``None``, a :class:`CADP` or a :class:`DPSGD`; anything else raises ``ValueError``."""
    if defence is None or isinstance(defence, (CADP, DPSGD)):
        return defence
    raise ValueError(f"defence = {defence!r}; allowed: None, safcore.defences.CADP(...) or safcore.defences.DPSGD(...)")
