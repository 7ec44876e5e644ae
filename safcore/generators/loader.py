"""The model under audit, from a folder, a Hub id or an object: the one place that asks which kind a model is.

:func:`load_model` reads a model folder as data, never as code: weights only from safetensors (or a MONAI state
dict read with ``weights_only=True``), the scheduler class only from an allow-list
(:data:`safcore.generators.diffusers_model.SCHEDULERS`, :mod:`safcore.generators.monai_bundle`), no
``trust_remote_code``, no MONAI config expression.
:func:`as_generator` turns any model safcore audits into the one contract the audit, the probe and the attacks
use (:class:`safcore.generators.base.Generator`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from safcore.generators.base import Generator, SDEGenerator
from safcore.generators.diffusers_model import SCHEDULERS, DiffusersModel, _scheduler_class, model_identity
from safcore.generators.latent_model import (AutoencoderAdapter, DiffusersKL, DiffusersVQ, LatentModel, MonaiKL,
                                             MonaiVQ, TensorAutoencoder)
from safcore.generators.diffusers_model import (SCHEDULERS, DiffusersModel, _scheduler_class, check_class_embedding,
                                                model_identity)
from safcore.generators.model_files import ModelLoadError, read_json
from safcore.generators.monai_bundle import is_monai_folder, load_monai
from safcore.generators.monai_model import MonaiModel
from safcore.generators.score_model import SDE_CONFIG_NAME, ScoreModel
from safcore.runtime.checks import check_safetensors

if TYPE_CHECKING:
    import torch
    from diffusers import SchedulerMixin, UNet2DModel

__all__ = ["AUDITABLE", "as_generator", "as_score_model", "load_model", "is_auditable", "max_inference_steps",
           "Sampling", "sampling_for", "network", "model_under_audit", "ModelLoadError", "autoencoder_adapter",
           "AUTOENCODERS"]

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")

#: Models driven by their own discrete-time scheduler (:class:`~safcore.generators.scheduled.ScheduledModel`), and
#: latent models of one (:class:`~safcore.generators.latent_model.LatentModel`).
SCHEDULED = (DiffusersModel, MonaiModel, LatentModel)
#: The autoencoders of a diffusers latent pipeline folder (``model_index.json``'s class names).
AUTOENCODERS: tuple[str, ...] = ("VQModel", "AutoencoderKL")
#: The model objects ``Study(model=...)`` and ``safcore audit --model`` accept.
AUDITABLE = (ScoreModel, *SCHEDULED)


def is_auditable(model) -> bool:
    """Whether ``model`` is one of :data:`AUDITABLE` (a trained network with everything the audit needs)."""
    return isinstance(model, AUDITABLE)


def as_generator(model, sde=None, *, method: str = "euler_maruyama", eps: float = 1e-3) -> Generator:
    """Any model safcore audits as a :class:`~safcore.generators.base.Generator`.

    - a :class:`~safcore.generators.base.SDEGenerator`, a :class:`~safcore.generators.diffusers_model.DiffusersModel`
      or a :class:`~safcore.generators.monai_model.MonaiModel` is one already (returned as is; a scheduler-driven
      model's scheduler defines its processes, ``sde``, ``method`` and ``eps`` do not apply);
    - safcore's :class:`~safcore.generators.score_model.ScoreModel`: its own ``ε̂`` (mean head included), its SDE
      unless ``sde`` is given, its weights' identity;
    - any other score function ``s(x, t)`` with ``sde`` (or a ``.sde``), e.g. the exact
      :class:`~safcore.generators.known_answer.PointMixtureScore`: ``ε̂ = −σ_t s``.

    ``method`` and ``eps`` are the reverse sampler and the end of its grid
    (:func:`safcore.generators.sampling.sample`).
    """
    if isinstance(model, (SDEGenerator, *SCHEDULED)):
        return model
    if isinstance(model, ScoreModel):
        params = next(model.parameters())
        return SDEGenerator(model, sde if sde is not None else model.sde, eps_fn=model.eps, method=method, eps=eps,
                            channels=model.channels, image_size=model.image_size, device=params.device,
                            dtype=params.dtype,
                            identity=lambda: model_identity(model.unet, sde=repr(model.sde)))
    sde = sde if sde is not None else getattr(model, "sde", None)
    if sde is None:
        raise ValueError("sde=None is allowed only for a safcore.generators.diffusers_model.DiffusersModel (its scheduler "
                         "defines the forward and reverse process); pass the score model's SDE")
    return SDEGenerator(model, sde, method=method, eps=eps)


def as_score_model(unet_or_path, sde=None) -> ScoreModel:
    """A safcore :class:`~safcore.generators.score_model.ScoreModel` from a ScoreModel (under ``sde`` when given), a
    diffusers ``UNet2DModel`` read as an ε-predictor of ``sde`` (default sub-VP), or a folder it was saved to."""
    from diffusers import UNet2DModel

    if isinstance(unet_or_path, ScoreModel):
        return unet_or_path if sde is None else ScoreModel(unet_or_path.unet, sde, unet_or_path.mean_prior)
    if isinstance(unet_or_path, UNet2DModel):
        return ScoreModel(unet_or_path, sde)
    if isinstance(unet_or_path, (str, os.PathLike)):
        return ScoreModel.from_pretrained(unet_or_path, sde)
    raise ValueError(f"expected a UNet2DModel, a ScoreModel or a saved model's folder, got {type(unet_or_path).__name__}")


def model_under_audit(model, *, sample_steps: int | None = None, device: torch.device | None = None):
    """``(model, sample_steps)`` of a study's ``model=`` and ``sample_steps=``, checked: a folder or Hub id is loaded
    (:func:`load_model`), the model must be :func:`is_auditable` (then moved to ``device``, in eval mode), and
    ``sample_steps`` an integer ≥ 1 and at most a scheduler-driven model's ``T``. ``model=None``: ``(None, ...)``.

    Raises:
        ValueError (:class:`ModelLoadError` for a folder): what is wrong and what is allowed."""
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    if model is not None and not is_auditable(model):
        raise ValueError(f"model is a {type(model).__name__}; allowed: a ScoreModel, a DiffusersModel, a MonaiModel, a "
                         "model folder or a Hub id")
    model = model.to(device).eval() if model is not None else None
    if sample_steps is not None and (isinstance(sample_steps, bool) or not isinstance(sample_steps, int) or sample_steps < 1):
        raise ValueError(f"sample_steps = {sample_steps!r}; allowed: an integer ≥ 1")
    limit = max_inference_steps(model)
    if sample_steps is not None and limit is not None and sample_steps > limit:
        raise ValueError(f"sample_steps = {sample_steps} exceeds the model's T = {limit} "
                         f"training timesteps; allowed: 1 … {limit}")
    if sample_steps is not None and limit is not None and model.full_schedule_only and sample_steps != limit:
        raise ValueError(f"sample_steps = {sample_steps}: {model.scheduler_name} steps k → k − 1 only, so a run of fewer "
                         f"than its T = {limit} steps never reaches x_0; allowed: {limit}, or its DDIM view "
                         "(--scheduler ddim) for fewer steps")
    return model, sample_steps


def max_inference_steps(model) -> int | None:
    """The most steps a full reverse run of ``model`` may take: a scheduler-driven model's ``T`` (its scheduler's
    ``num_train_timesteps``); ``None`` for an SDE model, whose sampler takes any number (``model=None``: the
    score model a study trains, an SDE model)."""
    return model.num_train_timesteps if isinstance(model, SCHEDULED) else None


@dataclass(frozen=True)
class Sampling:
    """How a model's samples are drawn, as the run store records it.

    Attributes:
        method: the SDE sampler of :func:`safcore.generators.sampling.sample`, or a scheduler-driven model's
            ``scheduler_name`` (diffusers: ``"DDPMScheduler"``, ``"DDIMScheduler"``; MONAI: ``"monai.DDPMScheduler"`` …).
        steps: steps of a full reverse run from ``t = 1``.
        autocast_bf16: whether the network runs under bf16 autocast.
    """

    method: str
    steps: int
    autocast_bf16: bool


def sampling_for(model, *, method: str, steps: int, chosen_steps: int | None = None, bf16: bool = False,
                 model_steps: int | None = None) -> Sampling:
    """How ``model`` is sampled with a profile's ``method``, ``steps``, ``model_steps`` and ``bf16``.

    A scheduler-driven model (:func:`max_inference_steps` not ``None``) runs its own scheduler for
    ``chosen_steps`` (the user's choice, else the profile's ``model_steps``, else ``steps``) inference steps, at
    most ``T`` (all ``T`` for a scheduler that reaches ``x_0`` only on its full grid, ``full_schedule_only``), in
    fp32; an SDE model (or ``None``, the score model a study trains) runs ``method`` for ``steps`` steps
    (``chosen_steps`` and ``model_steps`` do not apply) with ``bf16``."""
    limit = max_inference_steps(model)
    if limit is None:
        return Sampling(method, steps, bf16)
    chosen = chosen_steps if chosen_steps is not None else (model_steps if model_steps is not None else steps)
    if model.full_schedule_only:  # its scheduler reaches x_0 only on the full grid
        chosen = limit
    return Sampling(model.scheduler_name, min(int(chosen), limit), False)


def network_input_shape(model) -> tuple[int, int, int] | None:
    """``(C, H, W)`` of one input of ``model``'s network (a :class:`~safcore.generators.base.Generator`): a latent
    model's latents, else its images; ``None`` when the model does not say (a bare score function)."""
    inner = model.diffusion if isinstance(model, LatentModel) else model
    channels, size = getattr(inner, "channels", None), getattr(inner, "image_size", None)
    return None if channels is None or size is None else (int(channels), int(size), int(size))


def network(model) -> torch.nn.Module:
    """The module that holds ``model``'s weights: a scheduler-driven model's U-Net (a latent model's U-Net and
    autoencoder), else ``model`` itself."""
    if isinstance(model, LatentModel):
        import torch

        return torch.nn.ModuleDict({"unet": model.unet, "autoencoder": model.autoencoder.module})
    return model.unet if isinstance(model, SCHEDULED) else model


def autoencoder_adapter(module) -> AutoencoderAdapter:
    """How ``module`` encodes and decodes (:mod:`safcore.generators.latent_model`): diffusers ``AutoencoderKL`` /
    ``VQModel``, MONAI ``AutoencoderKL`` / ``VQVAE``, or any module whose ``encode``/``decode`` return tensors.

    Raises:
        ValueError: ``module`` has no ``encode`` and ``decode``."""
    if isinstance(module, AutoencoderAdapter):
        return module
    kinds = {"diffusers": {"AutoencoderKL": DiffusersKL, "VQModel": DiffusersVQ},
             "monai": {"AutoencoderKL": MonaiKL, "VQVAE": MonaiVQ}}
    for library, classes in kinds.items():
        for name, adapter in classes.items():
            cls = _library_class(library, name)
            if cls is not None and isinstance(module, cls):
                return adapter(module)
    if callable(getattr(module, "encode", None)) and callable(getattr(module, "decode", None)):
        return TensorAutoencoder(module)
    raise ValueError(f"autoencoder is a {type(module).__name__}; allowed: diffusers AutoencoderKL or VQModel, MONAI "
                     "AutoencoderKL or VQVAE, or a module with encode and decode returning tensors")


def _library_class(library: str, name: str):
    """``library``'s class ``name`` where the library is installed, else ``None``."""
    import importlib.util

    if importlib.util.find_spec(library) is None:
        return None
    if library == "diffusers":
        import diffusers

        return getattr(diffusers, name)
    from monai.networks import nets

    return getattr(nets, name)


def _check_weights(folder: Path) -> None:
    weights = folder / WEIGHTS_NAME
    if weights.exists() or weights.is_symlink():
        try:
            check_safetensors(weights, "weights file", "re-save the model (unet.save_pretrained(folder)) or copy it again")
        except (ValueError, OSError) as error:
            raise ModelLoadError(str(error)) from None
        return
    pickled = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt*"))
    if pickled:
        raise ModelLoadError(
            f"{str(folder)!r} holds only pickled weights ({', '.join(pickled)}); safcore loads safetensors only "
            f"(a pickle can run code): re-save with unet.save_pretrained(folder, safe_serialization=True)")
    raise ModelLoadError(f"{str(folder)!r} holds no {WEIGHTS_NAME}")


def _load_unet(folder: Path) -> UNet2DModel:
    from diffusers import UNet2DModel

    config = read_json(folder / "config.json")
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ModelLoadError(f"{str(folder)!r} holds a {config.get('_class_name')!r}; allowed: UNet2DModel "
                             "(an unconditional or class-conditional image diffusion network)")
    check_class_embedding(config, repr(str(folder / "config.json")))  # a class label (num_class_embeds) or none
    _check_weights(folder)
    return UNet2DModel.from_pretrained(folder, use_safetensors=True, low_cpu_mem_usage=False)


def _load_scheduler(file: Path) -> SchedulerMixin:
    config = read_json(file)
    name = config.get("_class_name")
    if name not in SCHEDULERS:
        raise ModelLoadError(f"{str(file)!r} names scheduler {name!r}; allowed: {', '.join(SCHEDULERS)}")
    return _scheduler_class(name).from_config(config)


def _latent_pipeline(folder: Path, index: dict, model: DiffusersModel) -> DiffusersModel | LatentModel:
    """``model`` itself for a pixel pipeline; with a ``vqvae`` or ``vae`` entry (``LDMPipeline.save_pretrained``),
    the :class:`LatentModel` of that autoencoder (safetensors, a class of :data:`AUTOENCODERS`) with
    ``scale_factor`` = its ``config.scaling_factor``, as ``LDMPipeline`` decodes ``latents / scaling_factor``."""
    import diffusers

    part = next((p for p in ("vqvae", "vae") if p in index), None)
    if part is None:
        if str(index.get("_class_name", "")).startswith("LDM"):
            raise ModelLoadError(f"{str(folder / 'model_index.json')!r} is a {index['_class_name']} without an "
                                 "autoencoder (vqvae or vae entry); safcore cannot decode its latents without it")
        return model
    entry = index[part]
    if not (isinstance(entry, list) and len(entry) == 2 and entry[0] == "diffusers" and entry[1] in AUTOENCODERS):
        raise ModelLoadError(f"{str(folder / 'model_index.json')!r} has {part} = {entry!r}; allowed: "
                             f"['diffusers', one of {', '.join(AUTOENCODERS)}]")
    sub = folder / part
    if not (sub / "config.json").is_file():
        raise ModelLoadError(f"latent pipeline folder {str(folder)!r} has no {part}/config.json: the autoencoder is "
                             "missing, and safcore cannot decode the latents without it")
    config = read_json(sub / "config.json")
    if config.get("_class_name") != entry[1]:
        raise ModelLoadError(f"{str(sub / 'config.json')!r} holds a {config.get('_class_name')!r}; allowed: {entry[1]} "
                             "(as model_index.json names it)")
    _check_weights(sub)
    module = getattr(diffusers, entry[1]).from_pretrained(sub, use_safetensors=True, low_cpu_mem_usage=False).eval()
    scale = float(module.config.get("scaling_factor") or 1.0)
    return LatentModel(autoencoder_adapter(module), model, scale_factor=scale, source=str(folder))


def _load_local(folder: Path) -> ScoreModel | DiffusersModel | MonaiModel:
    if (folder / "model_index.json").is_file():  # a pipeline folder (DDPMPipeline.save_pretrained)
        index = read_json(folder / "model_index.json")
        for part, allowed in (("unet", ("UNet2DModel",)), ("scheduler", SCHEDULERS)):
            entry = index.get(part)
            if not (isinstance(entry, list) and len(entry) == 2 and entry[0] == "diffusers" and entry[1] in allowed):
                raise ModelLoadError(f"{str(folder / 'model_index.json')!r} has {part} = {entry!r}; allowed: "
                                     f"['diffusers', one of {', '.join(allowed)}]")
        if not (folder / "unet" / "config.json").is_file():
            raise ModelLoadError(f"pipeline folder {str(folder)!r} has no unet/config.json")
        file = folder / "scheduler" / "scheduler_config.json"
        if not file.is_file():
            raise ModelLoadError(f"pipeline folder {str(folder)!r} has no scheduler/scheduler_config.json")
        model = DiffusersModel(_load_unet(folder / "unet"), _load_scheduler(file), source=str(folder))
        return _latent_pipeline(folder, index, model)
    if is_monai_folder(folder):  # a MONAI bundle or a plain MONAI folder
        return load_monai(folder)
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{str(folder)!r} is not a model folder: it holds neither model_index.json (a pipeline) "
                             "nor config.json (a UNet2DModel)")
    if (folder / SDE_CONFIG_NAME).is_file():  # one of safcore's own sub-VP / VP score models
        _check_weights(folder)
        return ScoreModel.from_pretrained(folder)
    if (folder / "scheduler_config.json").is_file():
        return DiffusersModel(_load_unet(folder), _load_scheduler(folder / "scheduler_config.json"), source=str(folder))
    raise ModelLoadError(
        f"{str(folder)!r} holds a UNet2DModel but no scheduler_config.json or {SDE_CONFIG_NAME}: the forward process it "
        f"was trained with is unknown; save the scheduler beside it (scheduler.save_pretrained(folder)) or save the "
        f"whole pipeline (DDPMPipeline(unet, scheduler).save_pretrained(folder))")


def _reach_hub(repo_id: str) -> None:
    """Ask the Hub once, without retries, for the model's ``unet/config.json`` (a HEAD request through
    huggingface_hub, so its endpoint, token and proxy settings apply); a network failure or a missing model is
    one :class:`ModelLoadError` at once, not half a minute of retries ending in "no file named config.json"."""
    import huggingface_hub
    from huggingface_hub import constants

    url = huggingface_hub.hf_hub_url(repo_id, "config.json", subfolder="unet")
    try:
        huggingface_hub.get_hf_file_metadata(url, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except Exception as error:  # noqa: BLE001 — classified below, every kind one line
        name = type(error).__name__
        first = (str(error).strip().splitlines() or [name])[0]
        if name in ("RepositoryNotFoundError", "GatedRepoError"):
            raise ModelLoadError(f"Hub model {repo_id!r} does not exist or is private/gated ({name}); check the id, or "
                                 "log in with an access token (hf auth login)") from None
        if name in ("EntryNotFoundError", "RemoteEntryNotFoundError", "RevisionNotFoundError"):
            raise ModelLoadError(f"Hub model {repo_id!r} has no unet/config.json: safcore reads a diffusers pipeline "
                                 "(unet/ and scheduler/ subfolders)") from None
        if name == "OfflineModeIsEnabled":
            return  # HF_HUB_OFFLINE: from_pretrained reads the local cache
        raise ModelLoadError(f"cannot reach the Hugging Face Hub ({constants.ENDPOINT}) for model {repo_id!r}: "
                             f"{name}: {first}. Check the network (or HTTPS_PROXY), or download the model where "
                             f"there is one (hf download {repo_id} --local-dir DIR) and give --model DIR") from None


def _load_hub(repo_id: str) -> DiffusersModel:
    from diffusers import SchedulerMixin, UNet2DModel
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        _reach_hub(repo_id)
    try:
        unet = UNet2DModel.from_pretrained(repo_id, subfolder="unet", use_safetensors=True)
        config = SchedulerMixin.load_config(repo_id, subfolder="scheduler")
    except Exception as error:  # noqa: BLE001 — no network, no such repo, pickled weights only: one line
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelLoadError(f"cannot load Hub model {repo_id!r} (subfolder 'unet', safetensors only): {first}") from None
    name = config.get("_class_name")
    if name not in SCHEDULERS:
        raise ModelLoadError(f"Hub model {repo_id!r} names scheduler {name!r}; allowed: {', '.join(SCHEDULERS)}")
    return DiffusersModel(unet, _scheduler_class(name).from_config(config), source=f"hub:{repo_id}")


def load_model(source: str | os.PathLike) -> ScoreModel | DiffusersModel | MonaiModel:
    """The model under audit, from a folder or a Hugging Face Hub id.

    - a pipeline folder (``model_index.json`` naming a ``UNet2DModel`` and a DDPM/DDIM scheduler, as
      ``DDPMPipeline.save_pretrained`` writes it) → :class:`DiffusersModel`; with a ``vqvae`` (``VQModel``) or ``vae``
      (``AutoencoderKL``) besides, as ``LDMPipeline.save_pretrained`` writes it →
      :class:`~safcore.generators.latent_model.LatentModel`;
    - a bare ``UNet2DModel`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``) with a
      ``scheduler_config.json`` beside it → :class:`DiffusersModel`;
    - a folder written by safcore (``safcore_sde.json`` beside the U-Net) → :class:`safcore.generators.score_model.ScoreModel`;
    - a MONAI bundle (``configs/inference.json`` + ``models/model.pt``) or a plain MONAI folder (``config.json`` with
      ``network``, ``scheduler``, ``image_size`` + ``model.safetensors`` / ``model.pt``) →
      :class:`safcore.generators.monai_model.MonaiModel` (:mod:`safcore.generators.monai_bundle`; with an autoencoder
      entry: a :class:`~safcore.generators.latent_model.LatentModel`);
    - ``owner/name`` that is not a local folder → the Hub (``subfolder="unet"``, ``"scheduler"``), where
      the machine has access.

    Weights are read from safetensors only (a MONAI ``.pt`` state dict with ``torch.load(weights_only=True)``);
    ``trust_remote_code`` is never passed and no config expression is evaluated; the scheduler class comes from
    an allow-list, not from the folder.

    Raises:
        ModelLoadError: one line naming what is wrong and what is allowed.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return _load_local(path)
    if path.exists():
        raise ModelLoadError(f"{str(source)!r} is a file; allowed: a model folder (pipeline, UNet + scheduler_config.json, "
                             "or a safcore score model) or a Hub id owner/name")
    if isinstance(source, str) and _HUB_ID.match(source) and not source.startswith((".", "/")):
        return _load_hub(source)
    raise ModelLoadError(f"model {str(source)!r} not found: no such folder, and not a Hub id of the form owner/name")
