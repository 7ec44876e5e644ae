"""Shared fixtures: the real data root (CI: ../shared/data/medmnist), a throwaway run store, and no network.

Every test runs offline (``SAFCORE_OFFLINE=1``, so :func:`safcore.data.datasets.load_dataset` never downloads)
and with sockets that refuse any address but the loopback (so nothing can reach the internet, even by
mistake). The download test lifts the first for itself and serves its file from 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPO.parent / "shared" / "data" / "medmnist"

# Figures, tables and their manifests that tests and notebooks (nbval kernels inherit this environment) write at
# their test parameters go to the ignored runs/ folder, never over the committed files in figures/ (only
# scripts/cpu_reports.sh writes there). scripts/test.sh sets the same.
os.environ.setdefault(
    "SAFCORE_FIGURES_DIR", str(Path(os.environ.get("SAFCORE_RUNS_DIR") or REPO / "runs") / "test-figures"))
_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def is_loopback(address) -> bool:
    """Whether a socket address is on this machine: a Unix socket path, 127.0.0.0/8, ::1 or ``localhost``."""
    if not isinstance(address, tuple):  # AF_UNIX: a path (str or bytes)
        return True
    host = address[0]
    if isinstance(host, bytes):
        host = host.decode()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:  # a name other than localhost: refused without resolving it
        return False


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Offline by default, and refuse any connection that leaves 127.0.0.1 / ::1."""
    monkeypatch.setenv("SAFCORE_OFFLINE", "1")
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guard(address):
        if not is_loopback(address):
            raise ConnectionRefusedError(f"tests may not reach {address!r}: only the loopback (127.0.0.1, ::1) is allowed")

    def guarded_connect(self, address):
        guard(address)
        return connect(self, address)

    def guarded_connect_ex(self, address):
        guard(address)
        return connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)


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
    from safcore.runtime.runs import RunStore

    return RunStore(tmp_path / "runs")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread is faster than two under load, and leaves the other core alone
    (``pytestmark = pytest.mark.usefixtures("one_thread")`` in a test module)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def images():
    """Algorithm 1's known-answer pair: ``x_p`` a binary 28 px pattern ``(1, 1, 28, 28)`` with a grey SAF disk,
    ``y = 1 − x_p`` (the disk stays grey), and the disk ``(28, 28)`` bool."""
    import torch

    g = torch.Generator().manual_seed(0)
    x_p = (torch.rand(1, 1, 28, 28, generator=g) > 0.5).float()
    yy, xx = torch.meshgrid(torch.arange(28), torch.arange(28), indexing="ij")
    disk = ((yy - 9) ** 2 + (xx - 18) ** 2) <= 16
    x_p[0, 0][disk] = 0.5
    return x_p, 1.0 - x_p, disk


def half_images(n: int = 4) -> torch.Tensor:
    """(n ≤ 4, 1, 28, 28) unit-range training images a tiny score model learns in a few steps: left/right and
    top/bottom halves bright (0.9) on dark (0.1). Shared by the training and checkpoint tests."""
    torch.manual_seed(0)
    base = torch.zeros(4, 1, 28, 28)
    base[0, :, :, :14] = 1.0
    base[1, :, :, 14:] = 1.0
    base[2, :, :14] = 1.0
    base[3, :, 14:] = 1.0
    return (0.1 + 0.8 * base[:n]).clamp(0, 1)


# ------------------------------------------------------------------ one smoke study's trained stages, once per session

#: The smoke study several tests audit: c_p, c_id and the score model cost ~90 s on one thread, so they are trained
#: once per session (``smoke_stages``) and copied into a test's own store (``smoke_store``, ``copy_smoke_stages``).
SMOKE_STUDY = {"dataset": "breastmnist", "n_dataset": 8, "profile": "smoke", "seed": 0}


def _smoke_study(store, data_root):
    from safcore.study import Study

    spec = dict(SMOKE_STUDY)
    return Study(spec.pop("dataset"), spec.pop("n_dataset"), **spec, data_root=data_root, store=store, progress=False,
                 device="cpu")


@pytest.fixture(scope="session")
def smoke_stages(tmp_path_factory, data_root):
    """A run store holding ``c_p``, ``c_id`` and the score model of the :data:`SMOKE_STUDY` (trained on one thread,
    as the tests that compute them themselves do, so a copy is bit for bit what they would train)."""
    from safcore.runtime.runs import RunStore

    store = RunStore(tmp_path_factory.mktemp("smoke_stages") / "runs")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        study = _smoke_study(store, data_root)
        study.c_p, study.c_id, study.score_model  # noqa: B018
    finally:
        torch.set_num_threads(before)
    return store


def copy_smoke_stages(source, target, data_root) -> None:
    """Copy the :data:`SMOKE_STUDY`'s ``c_p``, ``c_id`` and score model runs from ``source`` into ``target``."""
    import shutil

    study = _smoke_study(source, data_root)
    for kind, config in (("c_p", study.classifier_config("c_p")), ("c_id", study.classifier_config("c_id")),
                         ("score_model", study.model_config())):
        shutil.copytree(source.path(kind, config), target.path(kind, config))


@pytest.fixture
def smoke_store(smoke_stages, run_store, data_root):
    """This test's own run store with the :data:`SMOKE_STUDY`'s trained stages already in it."""
    copy_smoke_stages(smoke_stages, run_store, data_root)
    return run_store


class Recording:
    """Wraps a score function and records every t it is evaluated at (one entry per image) and its calls
    (``from conftest import Recording``: the probe's and the sampler's time-grid tests share it)."""

    def __init__(self, fn):
        self.fn, self.ts, self.calls = fn, [], 0

    def __call__(self, x, t):
        self.calls += 1
        self.ts += t.tolist()
        return self.fn(x, t)


def assert_model_refused(model, expected: str, fingerprint, data_root, out, capsys) -> None:
    """A model folder safcore refuses to read: ``load_model`` raises one line containing ``expected``, and
    ``safcore audit --model`` stops with that line, exit code 2, writing nothing at ``out``."""
    import pytest

    from safcore.__main__ import main
    from safcore.generators.loader import ModelLoadError, load_model

    with pytest.raises(ModelLoadError) as info:
        load_model(model)
    assert expected in str(info.value) and "\n" not in str(info.value)
    code = main(["audit", "--model", str(model), "--fingerprint", str(fingerprint), "--profile", "smoke",
                 "--data-root", str(data_root), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("safcore audit: error: ") and expected in err, err
    assert not out.exists()  # nothing written
