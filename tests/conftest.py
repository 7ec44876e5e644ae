"""Shared fixtures: the real data root (CI: ../shared/data/medmnist) and a throwaway run store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPO.parent / "shared" / "data" / "medmnist"


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = Path(os.environ.get("SAFCORE_DATA_ROOT", DEFAULT_DATA_ROOT))
    if not (root / "breastmnist.npz").is_file():
        pytest.fail(f"breastmnist.npz not found in the data root {root}; set SAFCORE_DATA_ROOT")
    return root


@pytest.fixture(scope="session")
def user_npz(data_root: Path) -> Path:
    path = data_root.parent / "extra" / "pneumonia_subset.npz"
    if not path.is_file():
        pytest.fail(f"{path} not found (the user's-own-data example)")
    return path


@pytest.fixture
def run_store(tmp_path):
    from safcore.runs import RunStore

    return RunStore(tmp_path / "runs")
