"""The download path of :func:`safcore.data.datasets.load_dataset`, for real, against a loopback HTTP server.

medmnist downloads a flag from ``INFO[flag]["url"]`` with torchvision's ``download_url`` and checks
``INFO[flag]["MD5"]``. Here the URL points at a ``http.server`` on 127.0.0.1 that serves a copy of the
shared (official) ``breastmnist.npz``, whose MD5 is the one medmnist's ``INFO`` holds; ``$HOME`` is a
temporary folder, so medmnist's cache ``~/.medmnist`` is too. The conftest guard refuses every other
address, so a test that tried to reach Zenodo would fail, not download.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from safcore.data import datasets as data

FLAG = "breastmnist"


class _Handler(SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self):  # http.server's method name
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def server(tmp_path):
    """A loopback HTTP server for ``tmp_path/served``; yields ``(base_url, served_dir, requests)``."""
    served = tmp_path / "served"
    served.mkdir()
    requests: list[str] = []
    handler = type("Handler", (_Handler,), {"requests": requests})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served, requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture
def online(tmp_path, monkeypatch):
    """No data root, online, ``$HOME`` (so medmnist's cache) under ``tmp_path``, no proxy in the way."""
    monkeypatch.delenv(data.DATA_ROOT_ENV, raising=False)
    monkeypatch.setenv(data.OFFLINE_ENV, "0")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return home / ".medmnist"


def _point_medmnist_at(monkeypatch, url: str) -> None:
    from medmnist import INFO

    monkeypatch.setitem(INFO[FLAG], "url", url)


def test_download_fetches_verifies_and_loads(server, online, data_root, monkeypatch, capsys):
    base, served, requests = server
    shared = data_root / f"{FLAG}.npz"
    (served / f"{FLAG}.npz").write_bytes(shared.read_bytes())
    _point_medmnist_at(monkeypatch, f"{base}/{FLAG}.npz")

    ds = data.load_dataset(FLAG)

    cached = online / f"{FLAG}.npz"
    assert ds.source == cached and cached.is_file()
    assert f"/{FLAG}.npz" in requests  # fetched from the loopback server
    from medmnist import INFO

    assert hashlib.md5(cached.read_bytes()).hexdigest() == INFO[FLAG]["MD5"]  # the md5 medmnist verified
    reference = data.load_dataset(FLAG, root=data_root)
    for split in data.SPLITS:
        assert np.array_equal(ds.split(split), reference.split(split))
        assert np.array_equal(ds.labels(split), reference.labels(split))
    err = capsys.readouterr().err
    assert f"safcore: downloading {FLAG}.npz ({FLAG}, 28 px) from {base}/{FLAG}.npz into {online}" in err
    assert "100%" in err  # torchvision's download progress bar ran to the end

    count = len(requests)
    again = data.load_dataset(FLAG)  # now in the cache: not fetched again
    assert len(requests) == count and again.source == cached
    assert data.load_dataset(FLAG, offline=True).source == cached  # and readable offline


def test_corrupt_download_is_refused_and_removed(server, online, data_root, monkeypatch):
    base, served, requests = server
    corrupt = bytearray((data_root / f"{FLAG}.npz").read_bytes())
    corrupt[len(corrupt) // 2] ^= 0xFF
    (served / f"{FLAG}.npz").write_bytes(bytes(corrupt))
    _point_medmnist_at(monkeypatch, f"{base}/{FLAG}.npz")
    from medmnist import INFO

    with pytest.raises(RuntimeError) as info:
        data.load_dataset(FLAG)
    message = str(info.value)
    got = hashlib.md5(bytes(corrupt)).hexdigest()
    assert "\n" not in message and requests
    assert f"has MD5 {got}, not medmnist's {INFO[FLAG]['MD5']}" in message and "corrupt" in message
    assert f"removed it from {online}" in message and "SAFCORE_DATA_ROOT" in message
    assert not (online / f"{FLAG}.npz").exists()  # a retry downloads again instead of using the bad file


def test_download_cut_short_in_the_cache_is_fetched_again(server, online, data_root, monkeypatch):
    base, served, requests = server
    release = (data_root / f"{FLAG}.npz").read_bytes()
    (served / f"{FLAG}.npz").write_bytes(release)
    _point_medmnist_at(monkeypatch, f"{base}/{FLAG}.npz")
    online.mkdir(parents=True)
    (online / f"{FLAG}.npz").write_bytes(release[: len(release) // 3])  # an interrupted earlier download

    ds = data.load_dataset(FLAG)
    assert f"/{FLAG}.npz" in requests and (online / f"{FLAG}.npz").read_bytes() == release
    assert len(ds.split("train")) == 546


def test_missing_file_on_the_server_names_url_and_cause(server, online, monkeypatch):
    base, _, _ = server
    _point_medmnist_at(monkeypatch, f"{base}/nothing-here.npz")
    with pytest.raises(RuntimeError) as info:
        data.load_dataset(FLAG)
    message = str(info.value)
    assert f"downloading {FLAG}.npz for '{FLAG}' from {base}/nothing-here.npz into {online} failed" in message
    assert "HTTPError" in message and "404" in message and "SAFCORE_DATA_ROOT" in message


def test_non_loopback_addresses_are_refused(online, monkeypatch):
    """The conftest guard: a download aimed past the loopback never leaves the machine."""
    _point_medmnist_at(monkeypatch, "http://192.0.2.1/breastmnist.npz")  # TEST-NET-1, never routed
    with pytest.raises(RuntimeError, match=r"ConnectionRefusedError: tests may not reach \('192\.0\.2\.1', 80\)"):
        data.load_dataset(FLAG)
    assert not (online / f"{FLAG}.npz").exists()


def test_offline_forbids_the_download(server, online, data_root, monkeypatch):
    base, served, requests = server
    (served / f"{FLAG}.npz").write_bytes((data_root / f"{FLAG}.npz").read_bytes())
    _point_medmnist_at(monkeypatch, f"{base}/{FLAG}.npz")
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    with pytest.raises(FileNotFoundError, match=r"offline .* forbids the download"):
        data.load_dataset(FLAG)
    assert requests == [] and not Path(online).exists()
