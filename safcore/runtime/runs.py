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
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from safcore.runtime import paths
from safcore.runtime.atomic import (  # noqa: F401  (re-exported: see __all__)
    atomic_save_safetensors,
    atomic_write,
    os_error_of,
    remove_stale_temporaries,
    temporary_owner,
    temporary_prefix,
    writing,
)
from safcore.runtime.manifests import (  # noqa: F401
    MANIFEST,
    compute_environment,
    config_key,
    file_sha256,
    git_revision,
    jsonable,
    write_manifest,
)
from safcore.runtime.outputs import (  # noqa: F401
    FOLDER_MARKS,
    check_output_file,
    check_output_folder,
    folder_holds,
    output_folder,
    publish_folder,
)

__all__ = [
    "CorruptRunError", "Run", "RunStore",
    # re-exported from safcore.runtime.atomic, .manifests and .outputs (importers use this module's names)
    "atomic_save_safetensors", "atomic_write", "os_error_of", "remove_stale_temporaries", "temporary_owner",
    "temporary_prefix", "writing", "MANIFEST", "compute_environment", "config_key", "file_sha256", "git_revision",
    "jsonable", "write_manifest", "FOLDER_MARKS", "check_output_file", "check_output_folder", "folder_holds",
    "output_folder", "publish_folder",
]


class CorruptRunError(RuntimeError):
    """A stored run is partial or its files do not match the manifest."""


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
                        (tmp / ".extra.json").write_text(json.dumps(jsonable(tmp_extra)))
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
        if manifest.get("config") != jsonable(config):
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
                "config": jsonable(config),
                "seed": seed,
                "revision": git_revision(),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                **compute_environment(),
                "files": files,
                "extra": jsonable(dict(extra or {})),
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
