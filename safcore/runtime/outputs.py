"""A command's output folder (``--out``): checked before any work, written beside its place and renamed into it."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from safcore.runtime.atomic import fsync_folder, remove_stale_temporaries, temporary_prefix, writing
from safcore.runtime.manifests import MANIFEST

__all__ = ["FOLDER_MARKS", "folder_holds", "check_output_folder", "check_output_file", "publish_folder", "output_folder"]


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
    fsync_folder(path.parent)
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
