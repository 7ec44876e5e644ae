"""Algorithm 1: diffuse ``x_p`` to ``t``, reverse ``M`` times, ``t'`` = the largest ``t`` from which ``x_p``
comes back (``core``); probe results on disk (``io``); an interactive explorer (``explorer``)."""

from safcore.probe.core import *  # noqa: F401,F403  (the public names of Algorithm 1)
from safcore.probe.core import __all__ as _core_all
from safcore.probe.io import load_probe, save_probe

__all__ = [*_core_all, "load_probe", "save_probe"]
