"""Progress bars: one switch for every bar safcore draws.

All long loops in safcore show a ``tqdm.auto`` bar (a widget in JupyterLab, text in a terminal).
``SAFCORE_PROGRESS=0`` turns every bar off for the process and the notebook kernels it starts.
The test command sets it: nbval does not read a kernel's output while a cell runs, so a long cell
that redraws its bars thousands of times overflows ZeroMQ's 1000-message queue, the kernel's final
"idle" message is dropped, and nbval reports "Timeout of 5 seconds exceeded waiting for output".
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

PROGRESS_ENV = "SAFCORE_PROGRESS"
_OFF_VALUES = ("0", "false", "no", "off")
_ON_VALUES = ("", "1", "true", "yes", "on")


def progress_enabled() -> bool:
    """Whether ``SAFCORE_PROGRESS`` allows progress bars (on unless set to 0/false/no/off)."""
    value = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if value in _OFF_VALUES:
        return False
    if value in _ON_VALUES:
        return True
    raise ValueError(
        f"{PROGRESS_ENV}={os.environ[PROGRESS_ENV]!r} is not understood; use one of "
        f"{', '.join(v for v in _ON_VALUES if v)} to show progress bars or {', '.join(_OFF_VALUES)} to hide them"
    )


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A ``tqdm.auto`` bar, shown when ``enabled`` and ``SAFCORE_PROGRESS`` allow it.

    Args:
        iterable: what to iterate over, as for ``tqdm``.
        enabled: the caller's own switch (the ``progress=`` argument of safcore functions).
        **kwargs: passed to ``tqdm`` (``total``, ``desc``, ``unit``, ``leave`` ...).
    """
    return tqdm(iterable, disable=not (enabled and progress_enabled()), **kwargs)
