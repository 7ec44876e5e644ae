"""Writing files so that a crash never leaves half of one: a temporary beside the target, fsynced, renamed into place.

Temporary files and folders carry their writer's host and process id in their names
(``.<target>~<host>~<pid>~<random>.tmp``), so what a killed process left behind can be told from what a
live one is still writing: :func:`remove_stale_temporaries` removes only the former.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

__all__ = ["temporary_prefix", "temporary_owner", "remove_stale_temporaries", "os_error_of", "writing", "atomic_write",
           "atomic_save_safetensors", "fsync_folder"]


def _owner_tag() -> str:
    """``<host>~<pid>`` of this process, the host reduced to ``[A-Za-z0-9.-]``."""
    host = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "localhost"
    return f"{host}~{os.getpid()}"


_TEMPORARY = re.compile(r"^\.(?P<target>.+)~(?P<host>[A-Za-z0-9._-]+)~(?P<pid>\d+)~[^~]*\.tmp$")


def temporary_prefix(target_name: str) -> str:
    """The name prefix of a temporary file or folder that will become ``target_name``:
    ``.<target_name>~<host>~<pid>~`` (``tempfile`` appends a random part, the caller ``.tmp``)."""
    return f".{target_name}~{_owner_tag()}~"


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (a process we may not signal counts as alive).

    Assumes one process-id namespace per host name. On Windows every process counts as alive
    (``os.kill(pid, 0)`` would send it a Ctrl-C there), so nothing is ever removed as stale.
    """
    if pid == os.getpid() or os.name == "nt":
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def temporary_owner(path: str | os.PathLike) -> tuple[str, int] | None:
    """``(host, pid)`` of the process that made the temporary ``path`` (named by :func:`temporary_prefix`),
    ``None`` for any other name."""
    match = _TEMPORARY.match(Path(path).name)
    return (match["host"], int(match["pid"])) if match else None


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders in ``folder`` (not below it) whose writer is dead.

    Guarantees: only names made by :func:`temporary_prefix` are considered, and one is removed only if
    its host is this machine and its process id names no running process. Temporaries of a live
    process, of this process, of another host (whose processes cannot be checked from here) and any
    name without an owner (e.g. written by an older safcore) are kept. A process id reused by an
    unrelated process keeps the file too: the error is always on the side of keeping.

    Returns:
        the paths removed (sorted); ``[]`` if ``folder`` does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    host = _owner_tag().split("~")[0]
    removed = []
    for entry in sorted(folder.iterdir()):
        owner = temporary_owner(entry)
        if owner is None or owner[0] != host or _pid_alive(owner[1]):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        if not entry.exists():
            removed.append(entry)
    return removed


def os_error_of(error: BaseException, path: str | os.PathLike | None = None) -> OSError | None:
    """The ``OSError`` behind a failed write, with the file it concerns, or ``None`` if it is not one.

    ``safetensors`` (Rust) reports a full disk as ``SafetensorError('… IoError(Os { code: 28, … })')``, Python's
    own writes an ``OSError`` that may lack the file name; both become ``OSError(errno, strerror, path)``, which
    the command line turns into one line naming the file and the remedy.
    """
    if isinstance(error, OSError):
        if error.filename is None and path is not None and error.errno is not None:
            return OSError(error.errno, error.strerror or os.strerror(error.errno), str(path))
        return error
    if type(error).__name__ == "SafetensorError":
        found = re.search(r"code: (\d+)", str(error))
        if found:
            code = int(found[1])
            return OSError(code, os.strerror(code), None if path is None else str(path))
    return None


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise a failed write of ``path`` (in the ``with`` block) as an ``OSError`` that names it (:func:`os_error_of`)."""
    try:
        yield
    except Exception as error:
        converted = os_error_of(error, path)
        if converted is None or converted is error:
            raise
        raise converted from error


def fsync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` durably and atomically.

    Guarantees: the bytes go to a temporary file in the same folder (named by :func:`temporary_prefix`),
    are fsynced, and replace ``path`` in one ``os.replace``; the folder is then fsynced. A reader sees
    the old content or the new one, never a part; on an error the temporary file is removed.
    """
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    with _replacing(path) as tmp, open(tmp, "wb") as handle:
        handle.write(payload)
    return path


@contextlib.contextmanager
def _replacing(path: Path):
    """Yield a temporary file beside ``path`` (named by :func:`temporary_prefix`) for the caller to fill; then
    fsync it, rename it over ``path`` and fsync the folder. On an error the temporary file is removed and the
    error names ``path`` (:func:`writing`)."""
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path.name), suffix=".tmp")
        os.close(fd)
        try:
            yield tmp
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    fsync_folder(path.parent)


def atomic_save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """Save ``tensors`` (as contiguous CPU copies) as safetensors at ``path``, durably and atomically.

    Guarantees as :func:`atomic_write`: written to a temporary file beside ``path``, fsynced, renamed
    into place, folder fsynced; a crash leaves the old file or the new one, never a half-written one.
    """
    path = Path(path)
    with _replacing(path) as tmp:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, tmp,
                  metadata=dict(metadata) if metadata else None)
    return path
