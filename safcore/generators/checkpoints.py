"""Training checkpoints and kept EMA weights: what they hold, how they are written, read back and resumed from.

A checkpoint (``checkpoint_step{N:06d}.safetensors``) holds the whole training state of a
:class:`safcore.generators.train.Trainer` (model, EMA, Adam moments, RNG states, loss history; scalars as JSON
metadata, nothing pickled): :func:`training_state`, :func:`restore_training_state`. Kept EMA weights
(``ema_step{N:06d}.safetensors``) hold the EMA at a chosen step: :func:`load_kept`.

Checkpoints survive a bad disk day: a new checkpoint is fsynced and read back (its header, and the
SHA-256 of its tensors recorded in its metadata) before older ones are deleted, and the previous one
is always kept beside it (:func:`write_checkpoint`). Resuming skips an unreadable latest checkpoint (truncated,
corrupt) with a warning naming it and the one resumed from, and sets it aside as ``<name>.unreadable``
(:func:`resume_point`). A checkpoint records the SDE and the device type it was trained with; resuming with
another is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path

import torch
from diffusers import UNet2DModel
from safetensors import safe_open
from safetensors.torch import load_file

from safcore.generators.score_model import MeanPrior, ScoreModel
from safcore.generators.sde import SubVPSDE
from safcore.runtime.device import resolve_device
from safcore.runtime.runs import atomic_save_safetensors

__all__ = [
    "CHECKPOINT_FORMAT",
    "KEPT_FORMAT",
    "UNREADABLE_SUFFIX",
    "CheckpointError",
    "CheckpointFallbackWarning",
    "sde_identity",
    "training_state",
    "restore_training_state",
    "write_checkpoint",
    "kept_path",
    "latest_checkpoint",
    "read_checkpoint",
    "resume_point",
    "load_kept",
]

CHECKPOINT_FORMAT = "safcore-train-checkpoint/1"
KEPT_FORMAT = "safcore-ema-weights/1"
_CHECKPOINT_GLOB = "checkpoint_step*.safetensors"
_CHECKPOINT_NAME = re.compile(r"^checkpoint_step(\d+)\.safetensors$")
UNREADABLE_SUFFIX = ".unreadable"
_DEFAULT_SDE = "SubVPSDE(beta_min=0.1, beta_max=20.0)"  # what checkpoints without an "sde" entry were trained with


class CheckpointError(ValueError):
    """A checkpoint file cannot be read back whole: truncated, corrupt, or not a training checkpoint."""


class CheckpointFallbackWarning(UserWarning):
    """Resuming skipped an unreadable checkpoint and continued from an earlier one."""


# Fields of TrainConfig that change the trajectory of training: a checkpoint written under other
# values cannot be resumed. (``steps``, ``checkpoint_every`` and ``keep_steps`` may change between a run
# and its resumption: training longer from a checkpoint is the same trajectory. ``device`` may change
# as long as it resolves to the same device type, e.g. "auto" ↔ "cpu" on a machine without CUDA:
# restore_training_state checks the resolved type recorded in the checkpoint.)
_TRAJECTORY_FIELDS = ("preset", "batch_size", "lr", "warmup_steps", "grad_clip", "ema_decay", "eps", "bf16", "seed")


def training_state(trainer) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The full training state of a :class:`safcore.generators.train.Trainer` as (tensors, string metadata) for a
    safetensors file; nothing pickled.

    Tensors: ``model.<name>``, ``ema.<name>``, ``optim.<i>.<key>`` (Adam's step, exp_avg,
    exp_avg_sq per parameter index i), ``rng.generator`` / ``rng.torch`` (/ ``rng.cuda``) byte
    states and ``losses`` (float64, one per step). Metadata: strings (JSON where structured),
    among them ``step``, the ``config``, the ``sde`` (:func:`sde_identity`) and the ``device_type``
    ("cpu" / "cuda") that :func:`restore_training_state` checks.
    """
    tensors: dict[str, torch.Tensor] = {}
    for name, p in zip(trainer.param_names, trainer.params):
        tensors[f"model.{name}"] = p.detach()
    for name, s in zip(trainer.param_names, trainer.ema.shadow_params):
        tensors[f"ema.{name}"] = s.detach()
    opt_state = trainer.optimizer.state_dict()
    for index, state in opt_state["state"].items():
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value)
            tensors[f"optim.{index}.{key}"] = value
    tensors["rng.generator"] = trainer.generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    if trainer.device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(trainer.device)
    tensors["losses"] = torch.tensor(trainer.losses, dtype=torch.float64)
    ema_scalars = {k: v for k, v in trainer.ema.state_dict().items() if k != "shadow_params"}
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "step": str(trainer.step_count),
        "config": json.dumps(trainer.config.to_dict(), sort_keys=True),
        "data_fingerprint": trainer.data_fingerprint,
        "param_groups": json.dumps(opt_state["param_groups"]),
        "ema": json.dumps(ema_scalars),
        "unet_config": json.dumps(dict(trainer.model.unet.config)),
        "sde": sde_identity(trainer.sde),
        "device_type": trainer.device.type,
    }
    return tensors, metadata


def restore_training_state(trainer, tensors: dict[str, torch.Tensor], metadata: dict[str, str], *, source: str = "checkpoint") -> None:
    """Restore into ``trainer`` the state written by :func:`training_state`.

    Raises ``ValueError`` (nothing restored) if the checkpoint does not fit the trainer: another
    format, another trajectory configuration, other images, another SDE or another device type
    (a resumed run continues the same trajectory only on the device type it started on). A
    checkpoint written before checkpoints recorded their SDE counts as trained with the default
    ``SubVPSDE()``; its device type is read from its RNG states (``rng.cuda`` only on CUDA).
    """
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{source}: not a safcore training checkpoint (format {metadata.get('format')!r})")
    saved = json.loads(metadata["config"])
    mine = trainer.config.to_dict()
    differ = [f for f in _TRAJECTORY_FIELDS if saved.get(f) != mine[f]]
    if differ:
        details = ", ".join(f"{f}: saved {saved.get(f)!r} vs now {mine[f]!r}" for f in differ)
        raise ValueError(f"{source} was written with another training configuration ({details}); use a fresh work_dir")
    if metadata.get("data_fingerprint") != trainer.data_fingerprint:
        raise ValueError(f"{source} was written for other training images; use a fresh work_dir")
    saved_sde, my_sde = metadata.get("sde", _DEFAULT_SDE), sde_identity(trainer.sde)
    if saved_sde != my_sde:
        older = "" if "sde" in metadata else " (it records no SDE: written by an older safcore, whose default this was)"
        raise ValueError(
            f"{source} was trained with the SDE {saved_sde}{older}, but this run uses {my_sde}; resuming would "
            f"mix two diffusion processes in one model. Resume with sde={saved_sde} or use a fresh work_dir"
        )
    saved_device = metadata.get("device_type", "cuda" if "rng.cuda" in tensors else "cpu")
    if saved_device != trainer.device.type:
        raise ValueError(
            f"{source} was written on device type {saved_device!r}, but this run is on {trainer.device.type!r} "
            f"(TrainConfig.device = {trainer.config.device!r}); a run resumes only on the device type it started "
            f"on (its random states and kernels differ between devices). Resume with device={saved_device!r} "
            f"or use a fresh work_dir"
        )
    with torch.no_grad():
        for name, p in zip(trainer.param_names, trainer.params):
            p.copy_(tensors[f"model.{name}"])
    ema_state = json.loads(metadata["ema"])
    ema_state["shadow_params"] = [tensors[f"ema.{name}"].to(trainer.device) for name in trainer.param_names]
    trainer.ema.load_state_dict(ema_state)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, field = key.split(".", 2)
            state.setdefault(int(index), {})[field] = value
    param_groups = json.loads(metadata["param_groups"])
    for group in param_groups:  # JSON turns Adam's betas tuple into a list
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    trainer.optimizer.load_state_dict({"state": state, "param_groups": param_groups})
    trainer.generator.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and trainer.device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], trainer.device)
    trainer.step_count = int(metadata["step"])
    trainer.losses = [float(v) for v in tensors["losses"].tolist()]
    if len(trainer.losses) != trainer.step_count:
        raise ValueError(f"{source}: {len(trainer.losses)} losses stored for step {trainer.step_count} (corrupt)")


def write_checkpoint(tensors: dict[str, torch.Tensor], metadata: dict[str, str], work_dir: str | Path, step: int) -> Path:
    """Write ``tensors`` and ``metadata`` (:func:`training_state`) as ``checkpoint_step{N:06d}.safetensors``
    (N = ``step``) so that a readable checkpoint always remains.

    Guarantees, in this order: the state (plus the SHA-256 of its tensors as ``tensors_sha256``) is written to a temporary file, fsynced and renamed into place
    (:func:`safcore.runtime.runs.atomic_save_safetensors`); the file is read back (:func:`read_checkpoint`:
    format, step and tensor digest); only then are older checkpoints deleted, all but the previous
    one (the highest step below N), which stays as the fallback if this one is later found
    unreadable. Checkpoints of higher steps are never touched.

    Raises:
        CheckpointError: the file just written does not read back as written; it is renamed
            ``<name>.unreadable`` and nothing is deleted.
    """
    work_dir = Path(work_dir)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    metadata = {**metadata, "tensors_sha256": _tensors_sha256(tensors)}
    path = work_dir / f"checkpoint_step{step:06d}.safetensors"
    atomic_save_safetensors(tensors, path, metadata)
    try:
        read_checkpoint(path, expect_step=step)
    except CheckpointError as error:
        aside = path.with_name(path.name + UNREADABLE_SUFFIX)
        os.replace(path, aside)
        raise CheckpointError(
            f"the checkpoint just written does not read back: {error}. It is set aside as {aside.name} and "
            f"the older checkpoints are kept; check the disk under {work_dir}"
        ) from error
    older = sorted(s for s in (_checkpoint_step(p) for p in work_dir.glob(_CHECKPOINT_GLOB)) if s is not None
                   and s < step)
    for old in older[:-1]:  # all but the previous one
        (work_dir / f"checkpoint_step{old:06d}.safetensors").unlink(missing_ok=True)
    return path


def sde_identity(sde) -> str:
    """How a checkpoint names its SDE: ``repr(sde)`` (e.g. ``SubVPSDE(beta_min=0.1, beta_max=20.0)``), or
    ``module.QualName`` for a class without its own ``__repr__`` (the default one holds a memory address)."""
    if type(sde).__repr__ is object.__repr__:
        return f"{type(sde).__module__}.{type(sde).__qualname__}"
    return repr(sde)


def _tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order (CPU tensors)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())  # the bytes, without a copy
    return digest.hexdigest()


def _checkpoint_step(path: Path) -> int | None:
    """The step in a ``checkpoint_step{N}.safetensors`` name; ``None`` for any other name."""
    match = _CHECKPOINT_NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def _checkpoints(work_dir: Path) -> list[Path]:
    """The checkpoint files of ``work_dir``, highest step first."""
    found = [p for p in Path(work_dir).glob(_CHECKPOINT_GLOB) if _checkpoint_step(p) is not None]
    return sorted(found, key=_checkpoint_step, reverse=True)


def kept_path(work_dir: str | Path, step: int) -> Path:
    """``work_dir / f"ema_step{step:06d}.safetensors"``."""
    return Path(work_dir) / f"ema_step{step:06d}.safetensors"


def latest_checkpoint(work_dir: str | Path) -> Path | None:
    """The checkpoint of highest step in ``work_dir`` (``None`` if there is none), readable or not
    (:func:`train` resumes from the highest *readable* one)."""
    found = _checkpoints(Path(work_dir))
    return found[0] if found else None


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    return load_file(str(path)), metadata


def read_checkpoint(path: str | Path, *, expect_step: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a training checkpoint whole and check it is what was written.

    Guarantees on return: the safetensors file opened and all its tensors loaded; its metadata has the
    training-checkpoint format and a step equal to the one in its name (and to ``expect_step`` if given);
    its loss history has one entry per step; and, where the metadata records ``tensors_sha256`` (every
    checkpoint since it was introduced), the loaded tensors hash to it.

    Raises:
        CheckpointError: naming the file and what is wrong (truncated or corrupt file, wrong format or
            step, digest mismatch). Whether the checkpoint fits a trainer is :func:`restore_training_state`'s check.
    """
    path = Path(path)
    try:
        tensors, metadata = _read_safetensors(path)
    except Exception as error:  # safetensors raises its own SafetensorError (e.g. "invalid header length")
        raise CheckpointError(f"{path} cannot be read ({type(error).__name__}: {error}); it is truncated or corrupt") from error
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: format {metadata.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    named = _checkpoint_step(path)
    try:
        step = int(metadata.get("step", ""))
    except ValueError:
        raise CheckpointError(f"{path}: metadata step {metadata.get('step')!r} is not an integer") from None
    for expected, what in ((named, "its name"), (expect_step, "the step written")):
        if expected is not None and step != expected:
            raise CheckpointError(f"{path}: metadata says step {step}, but {what} says {expected}")
    losses = tensors.get("losses")
    if losses is None or losses.numel() != step:
        count = "no" if losses is None else losses.numel()
        raise CheckpointError(f"{path}: {count} losses stored for step {step}; expected one per step")
    recorded = metadata.get("tensors_sha256")
    if recorded is not None and _tensors_sha256(tensors) != recorded:
        raise CheckpointError(f"{path}: its tensors do not match the SHA-256 recorded when it was written (corrupt)")
    return tensors, metadata


def resume_point(work_dir: Path) -> tuple[Path, dict[str, torch.Tensor], dict[str, str]] | None:
    """The highest-step readable checkpoint of ``work_dir`` with its content; ``None`` if there is none.

    Unreadable checkpoints above it are renamed ``<name>.unreadable`` (kept for inspection, out of the
    way of later resumes and of :func:`write_checkpoint`'s clean-up) and a
    :class:`CheckpointFallbackWarning` names each of them and the checkpoint resumed from.

    Raises:
        ValueError: checkpoints exist but none is readable (naming every file and its fault).
    """
    bad: list[tuple[Path, CheckpointError]] = []
    for path in _checkpoints(work_dir):
        try:
            tensors, metadata = read_checkpoint(path)
        except CheckpointError as error:
            bad.append((path, error))
            continue
        if bad:
            for unreadable, _ in bad:
                os.replace(unreadable, unreadable.with_name(unreadable.name + UNREADABLE_SUFFIX))
            faults = "; ".join(str(error) for _, error in bad)
            warnings.warn(
                f"resuming from the previous checkpoint {path} (step {metadata['step']}) because the latest "
                f"{'checkpoint is' if len(bad) == 1 else 'checkpoints are'} unreadable: {faults}. Set aside as "
                f"{', '.join(p.name + UNREADABLE_SUFFIX for p, _ in bad)}; the steps after "
                f"{metadata['step']} are trained again.",
                CheckpointFallbackWarning,
                stacklevel=3,
            )
        return path, tensors, metadata
    if bad:
        faults = "\n  ".join(str(error) for _, error in bad)
        raise ValueError(
            f"no readable checkpoint to resume from in {work_dir}; every one is damaged:\n  {faults}\n"
            f"Delete them (or the whole work_dir) to train from the start."
        )
    return None


def load_kept(
    work_dir_or_file: str | Path, step: int | None = None, sde=None, *, device: str | torch.device = "cpu"
) -> ScoreModel:
    """Load kept EMA weights (``ema_step{N:06d}.safetensors``) as an eval-mode :class:`ScoreModel`.

    Args:
        work_dir_or_file: a training ``work_dir`` (then ``step`` is required) or the file itself.
        step: the kept step; checked against the file's metadata when a file is given.
        sde: the SDE of the score model (default :class:`safcore.generators.sde.SubVPSDE`).
        device: where to put the model.
    """
    path = Path(work_dir_or_file)
    if path.is_dir():
        if step is None:
            raise ValueError(f"load_kept({str(path)!r}): a work_dir needs the step to load")
        file = kept_path(path, step)
        if not file.is_file():
            available = sorted(int(p.stem.removeprefix("ema_step")) for p in path.glob("ema_step*.safetensors"))
            raise ValueError(f"no kept EMA weights for step {step} in {path}; kept steps: {available}")
    elif path.is_file():
        file = path
    else:
        raise ValueError(f"load_kept: {str(path)!r} is neither a work_dir nor a kept-weights file")
    tensors, metadata = _read_safetensors(file)
    if metadata.get("format") != KEPT_FORMAT:
        raise ValueError(f"{file}: not a kept EMA weights file (format {metadata.get('format')!r})")
    if step is not None and int(metadata["step"]) != step:
        raise ValueError(f"{file} holds step {metadata['step']}, not the requested step {step}")
    unet = UNet2DModel.from_config(json.loads(metadata["unet_config"]))
    unet.load_state_dict(tensors, strict=True)
    prior = json.loads(metadata["mean_prior"]) if "mean_prior" in metadata else None
    prior = MeanPrior(tuple(prior["mean"]), tuple(prior["var"])) if prior is not None else None
    model = ScoreModel(unet, sde if sde is not None else SubVPSDE(), prior)
    return model.to(resolve_device(device)).eval()
