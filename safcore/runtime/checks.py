"""Input checks that run before any work: numbers in range, and files known by their first bytes.

An audit that trains classifiers for minutes (hours at the paper profile) must not find a bad seed, a text
file named ``samples.npy`` or a truncated weights file only when it reaches them. Each check here is cheap
and raises one ``ValueError`` that names the value or the file, what it is, and what is allowed:

- :func:`check_seed`, :func:`check_int`: integers in range (``bool`` is not an integer here);
- :func:`file_head`, :func:`expect_format`: a file is identified by its header (``.npy``, ``.npz`` = zip,
  PNG, safetensors), never by its suffix alone, and never handed to a reader that would misread it (numpy
  tells a user who gave a text file to "load pickles");
- :func:`check_safetensors`: a weights file's header is whole and its tensors fit the file (truncated,
  empty, a link to a system file or a device are refused before diffusers or safetensors read it);
- :func:`plain_name`: a file name recorded in a folder's JSON (``fingerprint.json``) names a file inside
  that folder, not an absolute path or ``..``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

__all__ = ["check_seed", "check_int", "file_head", "describe_head", "expect_format", "check_safetensors", "plain_name",
           "regular_file"]

#: Largest safetensors header safcore reads (the format allows 100 MB; a U-Net's is a few hundred kB).
MAX_SAFETENSORS_HEADER = 100_000_000

_MAGIC: dict[str, tuple[bytes, ...]] = {
    "npy": (b"\x93NUMPY",),
    "npz": (b"PK\x03\x04", b"PK\x05\x06"),  # a zip archive (np.savez); the second is an empty one
    "png": (b"\x89PNG\r\n\x1a\n",),
}
FORMAT_NAMES = {"npy": "a .npy array (np.save)", "npz": "a .npz archive (np.savez, a zip of arrays)",
                "png": "a PNG image", "safetensors": "a safetensors file"}


def check_int(value, name: str, minimum: int, maximum: int | None = None, *, why: str = "") -> int:
    """``value`` as an ``int`` if it is an integer in ``[minimum, maximum]``; else one ``ValueError`` naming it."""
    ok = not isinstance(value, bool) and isinstance(value, (int, np.integer))
    if ok and value >= minimum and (maximum is None or value <= maximum):
        return int(value)
    allowed = f"an integer ≥ {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"
    raise ValueError(f"{name} = {value!r}; allowed: {allowed}{why}")


def check_seed(seed, name: str = "seed") -> int:
    """A seed is an integer ≥ 0 (numpy's and torch's generators take no negative seeds)."""
    return check_int(seed, name, 0)


def regular_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` if it is a regular file (a link is followed); a folder, a device, a pipe or a dangling link is
    refused with one ``ValueError`` that names it and, for a link, its target."""
    path = Path(path)
    link = f" (a link to {os.path.realpath(path)})" if path.is_symlink() else ""
    if path.is_file():
        return path
    if not path.exists():
        raise FileNotFoundError(f"{what} {str(path)!r}{link} does not exist")
    kind = "a folder" if path.is_dir() else "not a regular file (a device, pipe or socket)"
    raise ValueError(f"{what} {str(path)!r}{link} is {kind}; allowed: a regular file")


def file_head(path: str | os.PathLike, n: int = 16) -> bytes:
    """The first ``n`` bytes of a regular file."""
    with open(path, "rb") as handle:
        return handle.read(n)


def describe_head(head: bytes) -> str:
    """What a file looks like from its first bytes, in words (its content is not echoed)."""
    if not head:
        return "empty"
    for fmt, magics in _MAGIC.items():
        if head.startswith(magics):
            return FORMAT_NAMES[fmt]
    if head.lstrip().startswith((b"{", b"[")):
        return "JSON or other text"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary data of an unknown format"
    return "text" if all(c.isprintable() or c in "\r\n\t" for c in text) else "binary data of an unknown format"


def expect_format(path: str | os.PathLike, fmt: str, what: str, allowed: str = "") -> Path:
    """Check that the regular file ``path`` starts like ``fmt`` (``"npy"``, ``"npz"`` or ``"png"``).

    Raises:
        ValueError: a folder, device or dangling link, or a file of another kind; the message names the file,
            what it is and ``allowed`` (default: the expected format).
    """
    path = regular_file(path, what)
    head = file_head(path)
    if head.startswith(_MAGIC[fmt]):
        return path
    link = f" (a link to {os.path.realpath(path)})" if path.is_symlink() else ""
    raise ValueError(f"{what} {str(path)!r}{link} is not {FORMAT_NAMES[fmt]}: it is {describe_head(head)}; "
                     f"allowed: {allowed or FORMAT_NAMES[fmt]}")


def check_safetensors(path: str | os.PathLike, what: str = "weights file", remedy: str = "") -> Path:
    """Check a safetensors file before anything loads it: a regular file whose header is a JSON object of
    tensors whose byte ranges end exactly at the end of the file.

    Refused with one ``ValueError`` naming the file (and a link's target): a folder, device or dangling link,
    an empty or truncated file, trailing bytes, or a file of another kind (text, a pickle, a zip).
    """
    path = regular_file(path, what)
    link = f" (a link to {os.path.realpath(path)})" if path.is_symlink() else ""
    name = f"{what} {str(path)!r}{link}"
    remedy = f"; {remedy}" if remedy else ""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if length < 2 or length > min(size - 8, MAX_SAFETENSORS_HEADER):
            if 8 <= size and 2 <= length <= MAX_SAFETENSORS_HEADER and handle.read(1) == b"{":
                raise ValueError(f"{name} is truncated: its header alone needs {8 + length} bytes, the file holds "
                                 f"{size}{remedy}")
            handle.seek(0)
            raise ValueError(f"{name} is not a safetensors file: it is {describe_head(handle.read(16))}{remedy}")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if not isinstance(header, dict):
        raise ValueError(f"{name} is not a safetensors file: its header is not a JSON object{remedy}")
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise ValueError(f"{name} is not a safetensors file: tensor {key!r} has no data_offsets{remedy}")
        end = max(end, offsets[1])
    expected = 8 + length + end
    if size < expected:
        raise ValueError(f"{name} is truncated: its header declares {expected} bytes, the file holds {size}{remedy}")
    if size > expected:
        raise ValueError(f"{name} is corrupt: {size - expected} bytes follow the tensors its header declares{remedy}")
    return path


def plain_name(value, field: str, record: str | os.PathLike) -> str:
    """A file name recorded in ``record`` (e.g. ``fingerprint.json``'s ``files.npz``) must be a plain name of a
    file inside the record's folder: no absolute path, no separator, no ``..``."""
    if (not isinstance(value, str) or not value or value in (".", "..") or "/" in value or "\\" in value
            or "\x00" in value or Path(value).is_absolute()):
        raise ValueError(f"{str(record)!r}: {field} = {value!r}; allowed: the plain name of a file inside that folder "
                         "(no absolute path, no '/' or '..')")
    return value
