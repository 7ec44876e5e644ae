"""Where safcore keeps things: the repository root, ``figures/`` and the run store.

Every path is resolved from the package's own location (or an environment variable), never from the
current directory: nbval runs notebooks inside ``notebooks/`` while papermill runs them wherever it
was invoked, and both must find the same folders.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # safcore/ (this module is safcore/runtime/paths.py)

HOME_ENV = "SAFCORE_HOME"
RUNS_ENV = "SAFCORE_RUNS_DIR"
FIGURES_ENV = "SAFCORE_FIGURES_DIR"


def repo_root() -> Path:
    """The safcore checkout that holds this package (``pyproject.toml`` beside ``safcore/``).

    ``$SAFCORE_HOME`` overrides it. A non-editable install has no checkout: then the user's data
    directory (``~/.local/share/safcore``) stands in for it.
    """
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser().resolve()
    candidate = _PACKAGE_DIR.parent
    if (candidate / "pyproject.toml").is_file():
        return candidate
    return Path.home() / ".local" / "share" / "safcore"


def figures_dir() -> Path:
    """Where figures and tables go with their manifests: ``$SAFCORE_FIGURES_DIR`` or ``<repo>/figures``, created on
    first use.

    ``<repo>/figures`` holds the committed figures of real runs (``scripts/cpu_reports.sh``). The test command
    (``scripts/test.sh``, and ``tests/conftest.py`` for any pytest run) points ``$SAFCORE_FIGURES_DIR`` into the
    ignored ``runs/`` folder, so notebooks run at their default (test) parameters never rewrite a committed file.
    """
    path = Path(os.environ[FIGURES_ENV]).expanduser().resolve() if os.environ.get(FIGURES_ENV) else repo_root() / "figures"
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir() -> Path:
    """The run store (trained models, classifiers, caches): ``$SAFCORE_RUNS_DIR`` or ``<repo>/runs``."""
    path = Path(os.environ[RUNS_ENV]).expanduser() if os.environ.get(RUNS_ENV) else repo_root() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def notebooks_dir() -> Path:
    """``<repo>/notebooks``."""
    return repo_root() / "notebooks"
