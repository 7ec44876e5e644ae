"""The run store: results kept under a key made from their whole configuration, written atomically.

A run is a folder ``<runs_dir>/<kind>/<key>/`` holding its files and a ``manifest.json`` with the
configuration, the seed, the git revision, the creation time and the SHA-256 of every file. A run is
published by renaming a finished temporary folder into place, so a crash never leaves a half-written
run under a valid key; a folder whose manifest is missing or whose files do not match their hashes
is reported as corrupt (:class:`CorruptRunError`) and never used silently.

Many processes may share one store (notebooks, commands, ``accelerate launch`` ranks, a sweep): each
run key has an inter-process file lock (:meth:`RunStore.lock`, ``filelock``), and
:meth:`RunStore.get_or_create` computes a stage once — the first process computes it under the lock,
the others wait and then read it. A published run is never removed before its replacement is in
place, so a reader without the lock sees the old run or the new one, never none and never a half.

Temporary files and folders carry their writer's host and process id in their names
(``.<target>~<host>~<pid>~<random>.tmp``), so what a killed process left behind can be told from what a
live one is still writing: :func:`remove_stale_temporaries` removes only the former. A key's resume
folder ``<key>.partial`` is the resume point of a crashed training and is kept until the key is
published; once it is, the folder is removed by whoever holds the key's lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from safetensors.torch import save_file

from safcore.runtime import paths

MANIFEST = "manifest.json"


class CorruptRunError(RuntimeError):
    """A stored run is partial or its files do not match the manifest."""


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


def _fsync_folder(folder: Path) -> None:
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
    _fsync_folder(path.parent)


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


def compute_environment() -> dict[str, Any]:
    """What a manifest records beside the seed for reproducing a run: the torch build, the CPU threads
    and the CUDA device. The same seed reproduces a run bit for bit only with the same three: another
    thread count sums floats in another order (bf16 most visibly), and training amplifies the difference.
    """
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def git_revision() -> str:
    """The checkout's ``git describe --always --dirty`` revision, or ``"unknown"`` outside git."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=paths.repo_root(),
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise TypeError(f"run configuration value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def config_key(config: Mapping[str, Any] | Any) -> str:
    """A 16-hex-digit key: SHA-256 of the canonical JSON of ``config`` (a mapping or dataclass)."""
    canonical = json.dumps(_jsonable(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Run:
    """A published, verified run: its folder and its manifest."""

    path: Path
    manifest: dict

    def file(self, name: str) -> Path:
        """The path of one of the run's files; ``KeyError`` if the manifest does not list it."""
        if name not in self.manifest["files"]:
            raise KeyError(f"run {self.path} has no file {name!r}; it has {sorted(self.manifest['files'])}")
        return self.path / name

    @property
    def config(self) -> dict:
        return self.manifest["config"]


class RunStore:
    """Runs keyed by ``(kind, config)`` under ``root`` (default :func:`safcore.runtime.paths.runs_dir`).

    >>> store = RunStore()
    >>> run = store.find("score_model", config)            # None if never made
    >>> with store.create("score_model", config, seed=0) as tmp:
    ...     (tmp / "weights.safetensors").write_bytes(...)  # published on success only
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser().resolve() if root is not None else paths.runs_dir()

    def path(self, kind: str, config: Mapping[str, Any] | Any) -> Path:
        """Where the run for ``(kind, config)`` lives (whether or not it exists)."""
        if not kind or "/" in kind or kind.startswith("."):
            raise ValueError(f"run kind {kind!r} must be a plain folder name")
        return self.root / kind / config_key(config)

    def scratch_dir(self, kind: str, config: Mapping[str, Any] | Any) -> Path:
        """A persistent work folder ``<key>.partial`` for an unfinished run (checkpoints to resume from).

        Use it while holding the key's :meth:`lock`. It survives a crash (the next holder resumes from
        it); the temporaries that dead processes left in it are removed here
        (:func:`remove_stale_temporaries`), and the folder itself once the run is published.
        """
        final = self.path(kind, config)
        scratch = final.with_name(final.name + ".partial")
        scratch.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(scratch)
        return scratch

    def lock_path(self, kind: str, config: Mapping[str, Any] | Any) -> Path:
        """The lock file of a run key, beside its folder: ``<key>.lock``."""
        final = self.path(kind, config)
        return final.with_name(final.name + ".lock")

    @contextlib.contextmanager
    def lock(self, kind: str, config: Mapping[str, Any] | Any, *, timeout: float | None = None) -> Iterator[Path]:
        """Hold the exclusive lock of one run key (across processes and threads) for the ``with`` block.

        ``filelock.FileLock`` takes an OS lock (``fcntl.flock`` / ``msvcrt.locking``) on ``<key>.lock``; the
        OS drops it when the holder's process ends, so a crashed holder never blocks the others.
        Raises ``filelock.Timeout`` after ``timeout`` seconds (``None``: wait as long as it takes).
        """
        path = self.lock_path(kind, config)
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path), timeout=-1 if timeout is None else float(timeout)):
            yield self.path(kind, config)

    def get_or_create(
        self,
        kind: str,
        config: Mapping[str, Any] | Any,
        make: Callable[[Path], Mapping | None],
        *,
        seed: int | None = None,
        extra: Mapping | None = None,
    ) -> Run:
        """The run for ``(kind, config)``, computed by ``make(tmp_folder)`` exactly once across processes.

        A published run is returned without locking. Otherwise the key's lock is taken, the store is
        looked at again (another process may have published it meanwhile — then it is reused), and
        only then ``make`` fills a private temporary folder, which is published atomically. ``make``
        may return a mapping added to the manifest's ``extra`` (e.g. measured times).
        """
        run = self.find(kind, config)
        if run is not None:
            return run
        with self.lock(kind, config):
            run = self.find(kind, config)
            if run is None:
                with self.create(kind, config, seed=seed, extra=extra) as tmp:
                    more = make(tmp)
                    if more:
                        tmp_extra = dict(extra or {})
                        tmp_extra.update(more)
                        (tmp / ".extra.json").write_text(json.dumps(_jsonable(tmp_extra)))
                run = self.find(kind, config)
        if run is None:  # pragma: no cover — create() published or raised
            raise CorruptRunError(f"run {self.path(kind, config)} vanished right after it was published")
        return run

    def find(self, kind: str, config: Mapping[str, Any] | Any) -> Run | None:
        """The verified run for ``(kind, config)``, ``None`` if there is none.

        Raises :class:`CorruptRunError` if the folder exists but its manifest is missing or
        unreadable, its configuration differs, or a file is missing or does not match its hash.
        """
        path = self.path(kind, config)
        if not path.exists():
            return None
        manifest_path = path / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise CorruptRunError(
                f"run {path} has no readable {MANIFEST} ({error}); it is partial or corrupt. "
                f"Delete the folder to recompute it."
            ) from error
        if not isinstance(manifest, dict):
            raise CorruptRunError(
                f"run {path}: its {MANIFEST} holds a {type(manifest).__name__}, not a JSON object; it is corrupt. "
                f"Delete the folder to recompute it."
            )
        if manifest.get("config") != _jsonable(config):
            raise CorruptRunError(f"run {path} was stored for another configuration; delete it to recompute")
        files = manifest.get("files")
        if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            found = "no 'files' entry" if files is None else f"'files' = {type(files).__name__} {str(files)[:80]!r}"
            raise CorruptRunError(
                f"run {path}: its {MANIFEST} lacks its file list ({found}; expected an object mapping every "
                f"file of the run to its SHA-256), so the files cannot be verified. The run is partial or "
                f"corrupt; delete the folder to recompute it."
            )
        for name, expected in files.items():
            file = path / name
            if not file.is_file():
                raise CorruptRunError(f"run {path} lacks {name}, listed in its manifest; delete the folder")
            if file_sha256(file) != expected:
                raise CorruptRunError(
                    f"run {path}: {name} does not match its SHA-256 in the manifest (corrupt); delete the folder"
                )
        _remove_published_scratch(path)
        return Run(path=path, manifest=manifest)

    def remove_stale(self, kind: str | None = None) -> list[Path]:
        """Remove what dead processes left in the store (all kinds, or one ``kind``); returns what was removed.

        Guarantees: removed are (1) temporary files and folders whose writer process is dead
        (:func:`remove_stale_temporaries`; beside the runs and inside ``<key>.partial`` folders) and
        (2) a ``<key>.partial`` resume folder whose run is already published, only while this call holds
        the key's lock (taken without waiting; a held lock means a live writer and the folder is kept).
        The ``.partial`` folder of an unpublished key is a crashed training's resume point and is kept.
        """
        if kind is not None:
            self.path(kind, {})  # checks the kind's name
            kinds = [self.root / kind]
        else:
            kinds = sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []
        removed: list[Path] = []
        for folder in kinds:
            if not folder.is_dir():
                continue
            removed += remove_stale_temporaries(folder)
            for scratch in sorted(folder.glob("*.partial")):
                if not scratch.is_dir():
                    continue
                final = scratch.with_name(scratch.name.removesuffix(".partial"))
                if _remove_published_scratch(final):
                    removed.append(scratch)
                else:
                    removed += remove_stale_temporaries(scratch)
        return sorted(removed)

    @contextlib.contextmanager
    def create(
        self, kind: str, config: Mapping[str, Any] | Any, *, seed: int | None = None, extra: Mapping | None = None
    ) -> Iterator[Path]:
        """Yield a temporary folder; on success write the manifest and publish it atomically.

        On an exception the temporary folder is removed and nothing is published.
        """
        final = self.path(kind, config)
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(final.parent)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=temporary_prefix(final.name), suffix=".tmp"))
        try:
            yield tmp
            extra_file = tmp / ".extra.json"
            if extra_file.is_file():  # get_or_create: what make() measured
                extra = json.loads(extra_file.read_text())
                extra_file.unlink()
            files = {
                str(p.relative_to(tmp)): file_sha256(p)
                for p in sorted(tmp.rglob("*"))
                if p.is_file() and p.name != MANIFEST
            }
            manifest = {
                "kind": kind,
                "key": final.name,
                "config": _jsonable(config),
                "seed": seed,
                "revision": git_revision(),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                **compute_environment(),
                "files": files,
                "extra": _jsonable(dict(extra or {})),
            }
            atomic_write(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
            _publish(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        scratch = final.with_name(final.name + ".partial")
        shutil.rmtree(scratch, ignore_errors=True)

    def manifest_for(self, kind: str, config: Mapping[str, Any] | Any) -> dict:
        """The manifest of an existing run (verified)."""
        run = self.find(kind, config)
        if run is None:
            raise FileNotFoundError(f"no {kind} run for this configuration under {self.root}")
        return run.manifest


def _remove_published_scratch(final: Path) -> bool:
    """Remove ``<key>.partial`` beside the published run ``final`` if the key's lock is free right now.

    A process killed between publishing a run and removing its resume folder leaves that folder
    behind; nobody resumes a published run, so it is removed — but only under the key's lock (taken
    without waiting), so a holder still working in it is never disturbed. Returns whether it was removed.
    """
    scratch = final.with_name(final.name + ".partial")
    if not scratch.is_dir() or not (final / MANIFEST).is_file():
        return False
    try:
        with FileLock(str(final.with_name(final.name + ".lock")), blocking=False):
            shutil.rmtree(scratch, ignore_errors=True)
    except (Timeout, OSError):  # a live holder, or a store we may not write to
        return False
    return not scratch.exists()


def _publish(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final`` in one ``rename``; a run already there is kept.

    A published run is never removed or replaced, so a reader sees it whole or not at all. Two writers
    of one key compute the same configuration; when they race without :meth:`RunStore.lock`, the first
    to publish wins and the second's folder is discarded (``rename`` of a folder onto a non-empty one
    fails atomically).
    """
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / MANIFEST).is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- a command's output

#: Files that mark what a folder holds (the first present names it): a command never replaces such a folder
#: unless it is told to (``--overwrite``), and ``--overwrite`` replaces nothing else.
FOLDER_MARKS: tuple[tuple[str, str], ...] = (
    ("report.md", "a safcore report"),
    ("summary.json", "a safcore report"),
    ("probe.json", "a safcore probe"),
    ("fingerprint.json", "a fingerprint folder"),
    ("model_index.json", "a diffusers pipeline"),
    ("safcore_sde.json", "a safcore score model"),
    ("config.json", "a model"),
    ("diffusion_pytorch_model.safetensors", "a model's weights"),
    (MANIFEST, "a stored run"),
)


def folder_holds(folder: str | os.PathLike) -> str | None:
    """What ``folder`` holds in words (``"a diffusers pipeline (model_index.json)"``), ``None`` if no file of
    :data:`FOLDER_MARKS` is in it."""
    folder = Path(folder)
    for name, what in FOLDER_MARKS:
        if (folder / name).exists() or (folder / name).is_symlink():
            return f"{what} ({name})"
    return None


def _new_folder(parent: Path, prefix: str) -> Path:
    """A new empty folder ``<parent>/<prefix><random>.tmp`` with the permissions a plain ``mkdir`` gives (the umask's;
    ``tempfile.mkdtemp`` would make a report or model folder readable by its owner alone)."""
    for _ in range(100):
        folder = parent / f"{prefix}{os.urandom(6).hex()}.tmp"
        try:
            os.mkdir(folder)
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(parent))  # pragma: no cover


def _writable_ancestor(path: Path, option: str) -> None:
    """Check that the folder ``path`` can be made: its nearest existing ancestor is a folder this process can
    create entries in (tried by making and removing a temporary folder there, which also holds for root and for
    read-only mounts, where permission bits say nothing)."""
    ancestor = path.parent
    while not (ancestor.exists() or ancestor.is_symlink()) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{option} {str(path)!r} cannot be made: {str(ancestor)!r} is a file, not a folder")
    try:
        os.rmdir(_new_folder(ancestor, temporary_prefix(path.name)))
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ValueError(f"{option} {str(path)!r} cannot be written: {reason} in {str(ancestor)!r}; choose a folder "
                         "you can write to") from None


def check_output_folder(path: str | os.PathLike, *, overwrite: bool = False, option: str = "--out") -> Path:
    """Check the folder a command will write, before it does any work; returns it (``~`` expanded).

    Allowed: a new folder (its parents are made) or an empty one. A non-empty folder only with ``overwrite``, and
    only if it holds what a command writes (:data:`FOLDER_MARKS`: a report, probe, fingerprint or model) — never
    a folder of other files. Refused always: a symbolic link (the folder is renamed into place, which would
    replace the link) and a file. The nearest existing ancestor must be writable.

    Raises:
        ValueError: one line naming the folder, what it holds and the remedy (``option`` names the setting).
    """
    path = Path(path).expanduser()
    if path.is_symlink():
        raise ValueError(f"{option} {str(path)!r} is a symbolic link (to {os.path.realpath(path)}); give a real folder "
                         "path: the output is written beside it and renamed into place, which would replace the link")
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a file, not a folder; choose a new or empty folder")
    if path.is_dir():
        entries = sorted(entry.name for entry in path.iterdir())
        if entries:
            holds = folder_holds(path)
            shown = ", ".join(repr(e) for e in entries[:3]) + (", …" if len(entries) > 3 else "")
            if not overwrite:
                what = holds or f"{len(entries)} file(s) or folder(s): {shown}"
                raise ValueError(f"{option} {str(path)!r} is not empty: it holds {what}; choose a new or empty folder, "
                                 "or pass --overwrite to replace it")
            if holds is None:
                raise ValueError(f"{option} {str(path)!r} holds files that no safcore command or diffusers wrote "
                                 f"({shown}); --overwrite replaces only a report, probe, fingerprint or model folder: "
                                 "choose a new or empty folder")
    _writable_ancestor(path, option)
    return path


def check_output_file(path: str | os.PathLike, *, overwrite: bool = False, option: str = "--out") -> Path:
    """Check a file a command will write (e.g. a sweep's summary), before any work: not a link or a folder, not an
    existing file unless ``overwrite``, in a folder that can be written."""
    path = Path(path).expanduser()
    if path.is_symlink():
        raise ValueError(f"{option} {str(path)!r} is a symbolic link (to {os.path.realpath(path)}); give a real file path")
    if path.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise ValueError(f"{option} {str(path)!r} exists; choose a new file name, or pass --overwrite to replace it")
    _writable_ancestor(path, option)
    return path


def publish_folder(tmp: str | os.PathLike, path: str | os.PathLike, *, overwrite: bool = False,
                   option: str = "--out") -> Path:
    """Put the finished folder ``tmp`` (beside ``path``) at ``path`` by renaming it.

    A missing or empty ``path`` is replaced in one ``rename``. A non-empty one only with ``overwrite``: it is
    renamed aside, ``tmp`` renamed into place, and then the old folder is removed (if the second rename fails
    the old folder is put back). A reader sees the old folder or the new one whole, never a part (between the
    two renames, for an instant, neither).

    Raises:
        ValueError: ``path`` was filled meanwhile (by another process) and ``overwrite`` is off, or it now holds
            other files; nothing is replaced and ``tmp`` is left for the caller to remove.
    """
    tmp, path = Path(tmp), Path(path)
    try:
        os.rename(tmp, path)
    except OSError as error:
        if error.errno not in (errno.EEXIST, errno.ENOTEMPTY) and not path.is_file():
            raise
        check_output_folder(path, overwrite=overwrite, option=option)  # what is there now
        aside = path.with_name(f"{temporary_prefix(path.name)}replaced-{os.urandom(4).hex()}.tmp")
        os.rename(path, aside)
        try:
            os.rename(tmp, path)
        except BaseException:
            os.rename(aside, path)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    _fsync_folder(path.parent)
    return path


@contextlib.contextmanager
def output_folder(path: str | os.PathLike, *, overwrite: bool = False, option: str = "--out") -> Iterator[Path]:
    """Yield a new temporary folder beside ``path`` to write a command's output into; when the block ends without
    an error it replaces ``path`` (:func:`publish_folder`), on an error it is removed and ``path`` is untouched.

    ``path`` is checked first (:func:`check_output_folder`), so a command that calls it early refuses a bad
    ``--out`` before any work; a crash or a full disk while writing leaves the old folder (or none), never a
    half-written one. The temporary's name carries this process's id (:func:`temporary_prefix`), so what a
    killed writer left behind is removed by the next writer in that folder.
    """
    path = check_output_folder(path, overwrite=overwrite, option=option)
    with writing(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent)
        tmp = _new_folder(path.parent, temporary_prefix(path.name))
    try:
        yield tmp
        publish_folder(tmp, path, overwrite=overwrite, option=option)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_manifest(path: str | os.PathLike, *, config: Any, seed: int | None = None, extra: Mapping | None = None) -> Path:
    """Write a ``<path>.json`` manifest beside an output file (figures, reports)."""
    path = Path(path)
    manifest = {
        "file": path.name,
        "config": _jsonable(config),
        "seed": seed,
        "revision": git_revision(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **compute_environment(),
        "extra": _jsonable(dict(extra or {})),
    }
    return atomic_write(path.with_suffix(path.suffix + ".json"), json.dumps(manifest, indent=2, sort_keys=True))
