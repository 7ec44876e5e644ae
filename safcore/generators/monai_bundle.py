"""A MONAI model folder read as data, never as code: a plain folder or a MONAI bundle.

Two layouts (:func:`is_monai_folder`, :func:`load_monai`):

- **a plain folder**: ``config.json`` and ``model.safetensors`` (or ``model.pt``, a state dict)::

      {"network": {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "channels": [8, 16], ...},
       "scheduler": {"_target_": "DDPMScheduler", "num_train_timesteps": 1000, ...},
       "image_size": 28}

  ``network`` holds ``DiffusionModelUNet``'s keyword arguments (a ``_target_`` is optional), ``scheduler`` a
  MONAI scheduler's, ``image_size`` the side (px) of the square images the model makes;
- **a MONAI bundle**: ``configs/inference.json`` (else ``configs/train_diffusion.json``) and
  ``models/model.safetensors`` / ``models/model.pt`` (or the one ``.pt`` in ``models/``). Only the network entry
  (the first of :data:`NETWORK_ENTRIES` present), the scheduler entry (:data:`SCHEDULER_ENTRIES`) and the image
  size (``image_size`` or ``spatial_size``) are read; ``"@name"`` (and ``"@name#key"``) references to other
  top-level entries are resolved.

**A latent model** (:class:`~safcore.generators.latent_model.LatentModel`) has an autoencoder besides: the plain
folder's ``autoencoder`` entry (``AutoencoderKL`` or ``VQVAE`` arguments with their ``_target_``) and
``scale_factor``, weights ``autoencoder.safetensors`` / ``autoencoder.pt``; a bundle's autoencoder entry
(:data:`AUTOENCODER_ENTRIES`, e.g. the model zoo's ``autoencoder_def``), its weights ``models/autoencoder.*`` or
``models/model_autoencoder.pt`` (the model zoo's name), and the scale factor of its ``inferer`` entry (as
``LatentDiffusionInferer(scheduler, scale_factor=…)`` takes it) or a top-level ``scale_factor``. The network then
diffuses the latents: its image size is the latents' (one zero image encoded). A folder that names a scale factor
or a ``LatentDiffusionInferer`` but no autoencoder, or whose autoencoder weights are missing, is refused.

``_target_`` must be one of :data:`NETWORK_TARGETS` / :data:`SCHEDULER_TARGETS` / :data:`AUTOENCODER_TARGETS`; a ``"$…"`` expression or a
``"%…"`` macro is never evaluated: it is refused in one :class:`ModelLoadError` naming the entry. Weights are read
by :func:`safcore.generators.model_files.read_state_dict` (safetensors, or ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from safcore.generators.latent_model import LatentModel, MonaiKL, MonaiVQ
from safcore.generators.model_files import ModelLoadError, read_json, read_state_dict
from safcore.generators.monai_model import MonaiModel

__all__ = ["NETWORK_TARGETS", "SCHEDULER_TARGETS", "AUTOENCODER_TARGETS", "NETWORK_ENTRIES", "SCHEDULER_ENTRIES",
           "AUTOENCODER_ENTRIES", "is_monai_folder", "load_monai"]

#: The ``_target_`` names accepted for the network, and the MONAI class each means.
NETWORK_TARGETS = {"monai.networks.nets.DiffusionModelUNet": "DiffusionModelUNet",
                   "DiffusionModelUNet": "DiffusionModelUNet"}
#: The ``_target_`` names accepted for the scheduler, and the MONAI class each means.
SCHEDULER_TARGETS = {f"{prefix}{name}": name for name in ("DDPMScheduler", "DDIMScheduler")
                     for prefix in ("monai.networks.schedulers.", "")}
#: The ``_target_`` names accepted for a latent model's autoencoder, and the MONAI class each means.
AUTOENCODER_TARGETS = {f"{prefix}{name}": name for name in ("AutoencoderKL", "VQVAE")
                       for prefix in ("monai.networks.nets.", "")}
#: How each autoencoder class is called (:mod:`safcore.generators.latent_model`).
_ADAPTERS = {"AutoencoderKL": MonaiKL, "VQVAE": MonaiVQ}
#: A bundle's entries that may hold the diffusion network / its scheduler, in the order they are looked for.
NETWORK_ENTRIES = ("diffusion_def", "network_def", "unet_def", "network")
SCHEDULER_ENTRIES = ("noise_scheduler", "scheduler")
AUTOENCODER_ENTRIES = ("autoencoder_def", "autoencoder")
BUNDLE_CONFIGS = ("configs/inference.json", "configs/train_diffusion.json")
_PLAIN_WEIGHTS = ("model.safetensors", "model.pt")
_AUTOENCODER_WEIGHTS = ("autoencoder.safetensors", "autoencoder.pt", "model_autoencoder.safetensors",
                        "model_autoencoder.pt")


def _bundle_config(folder: Path) -> Path | None:
    return next((folder / name for name in BUNDLE_CONFIGS if (folder / name).is_file()), None)


def is_monai_folder(folder: Path) -> bool:
    """Whether ``folder`` is a MONAI bundle (``configs/inference.json`` …) or a plain MONAI folder (a
    ``config.json`` holding ``network`` and ``scheduler``)."""
    if _bundle_config(folder) is not None:
        return True
    if not (folder / "config.json").is_file():
        return False
    config = read_json(folder / "config.json")
    return "network" in config and "scheduler" in config and "_class_name" not in config


class _Resolver:
    """Plain data of a config's entries: ``@`` references resolved, expressions and macros refused."""

    def __init__(self, config: dict, file: str) -> None:
        self.config, self.file = config, file

    def entry(self, name: str, depth: int = 0):
        if depth > 16:
            raise ModelLoadError(f"{self.file}: the references through {name!r} do not end (a cycle?)")
        key, *path = name.split("#")
        if key not in self.config:
            raise ModelLoadError(f"{self.file}: reference @{name} names no top-level entry")
        value = self.config[key]
        for part in path:
            try:
                value = value[int(part)] if isinstance(value, list) else value[part]
            except (KeyError, IndexError, ValueError, TypeError):
                raise ModelLoadError(f"{self.file}: reference @{name} names nothing in entry {key!r}") from None
        return self.value(value, name.replace("#", "."), depth)

    def value(self, value, where: str, depth: int = 0):
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                if k.startswith("_") and k.endswith("_") and k not in ("_target_", "_desc_"):
                    raise ModelLoadError(f"{self.file}: {where}.{k} is a MONAI config directive; safcore reads "
                                         "_target_ and plain arguments only")
                if k != "_desc_":
                    out[k] = self.value(v, f"{where}.{k}", depth)
            return out
        if isinstance(value, list):
            return [self.value(v, f"{where}.{i}", depth) for i, v in enumerate(value)]
        if isinstance(value, str) and value.startswith("@"):
            return self.entry(value[1:], depth + 1)
        if isinstance(value, str) and value.startswith(("$", "%")):
            kind = "an expression" if value.startswith("$") else "a macro"
            shown = value if len(value) <= 40 else value[:37] + "..."
            raise ModelLoadError(f"{self.file}: {where} = {shown!r} is {kind}; safcore reads configs as data")
        return value


def _target(kwargs: dict, where: str, allowed: dict, default: str | None) -> tuple[str, dict]:
    kwargs = dict(kwargs)
    target = kwargs.pop("_target_", default)
    if target not in allowed:
        raise ModelLoadError(f"{where}: _target_ {target!r} is not allowed; allowed: {', '.join(allowed)}")
    return allowed[target], kwargs


def _build(cls, kwargs: dict, where: str):
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, KeyError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ModelLoadError(f"{where}: {cls.__name__}({', '.join(kwargs)}) cannot be built: {first}") from None


def _network(spec, where: str):
    from monai.networks import nets

    if not isinstance(spec, dict):
        raise ModelLoadError(f"{where} is a {type(spec).__name__}; allowed: an object of DiffusionModelUNet arguments")
    name, kwargs = _target(spec, where, NETWORK_TARGETS, "DiffusionModelUNet")
    if kwargs.get("spatial_dims") != 2:
        raise ModelLoadError(f"{where}.spatial_dims = {kwargs.get('spatial_dims')!r}; allowed: 2 (2-D images)")
    for key in ("with_conditioning", "cross_attention_dim"):  # a context (text, image) by cross-attention
        if kwargs.get(key):
            raise ModelLoadError(f"{where}.{key} = {kwargs[key]!r}: conditioning by cross-attention is not a class "
                                 "label; allowed: an unconditional DiffusionModelUNet or one with num_class_embeds")
    k = kwargs.get("num_class_embeds")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ModelLoadError(f"{where}.num_class_embeds = {k!r}; allowed: null or an integer ≥ 1 (class labels 0 … K − 1)")
    return _build(getattr(nets, name), kwargs, where)


def _scheduler(spec, where: str):
    from monai.networks import schedulers

    if not isinstance(spec, dict):
        raise ModelLoadError(f"{where} is a {type(spec).__name__}; allowed: an object with _target_ and arguments")
    name, kwargs = _target(spec, where, SCHEDULER_TARGETS, None)
    return _build(getattr(schedulers, name), kwargs, where)


def _image_size(value, where: str) -> int:
    if isinstance(value, list) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelLoadError(f"{where} = {value!r}; allowed: an integer ≥ 1 or [n, n] (square 2-D images)")
    return value


def _weights(folder: Path, names: tuple[str, ...], what: str) -> Path:
    found = [folder / n for n in names if (folder / n).exists() or (folder / n).is_symlink()]
    if not found and what == "bundle":
        found = [p for p in sorted(folder.glob("*.pt")) if p.name not in _AUTOENCODER_WEIGHTS]
        if len(found) > 1:
            raise ModelLoadError(f"{str(folder)!r} holds {len(found)} .pt files ({', '.join(p.name for p in found)}); "
                                 "name the diffusion network's weights model.pt")
    if not found:
        raise ModelLoadError(f"{str(folder)!r} holds no {' or '.join(names)} (the network's state dict)")
    return found[0]


def _fill(module, weights: Path, file: str, name: str):
    """``module`` with the state dict in ``weights``; every key must fit (one line naming what does not)."""
    try:  # torch names the keys that do not fit; a shape that does not fit raises
        fit = module.load_state_dict(read_state_dict(weights), strict=False)
    except RuntimeError as error:
        first = (str(error).strip().splitlines() or ["size mismatch"])[-1].strip()
        raise ModelLoadError(f"{str(weights)!r} does not fit {file}'s {name}: {first}") from None
    if fit.missing_keys or fit.unexpected_keys:
        shown = "; ".join(f"{len(names)} {what} ({', '.join(sorted(names)[:3])}{', …' if len(names) > 3 else ''})"
                          for what, names in (("missing", fit.missing_keys), ("unexpected", fit.unexpected_keys))
                          if names)
        raise ModelLoadError(f"{str(weights)!r} does not fit {file}'s {name}: weights {shown}")
    return module.eval()


def _autoencoder(spec, where: str):
    """A MONAI ``AutoencoderKL`` / ``VQVAE`` (2-D) of an allow-listed ``_target_`` and the adapter that calls it."""
    from monai.networks import nets

    if not isinstance(spec, dict):
        raise ModelLoadError(f"{where} is a {type(spec).__name__}; allowed: an object with _target_ and arguments")
    name, kwargs = _target(spec, where, AUTOENCODER_TARGETS, None)
    if kwargs.get("spatial_dims") != 2:
        raise ModelLoadError(f"{where}.spatial_dims = {kwargs.get('spatial_dims')!r}; allowed: 2 (2-D images)")
    return _build(getattr(nets, name), kwargs, where), _ADAPTERS[name], int(kwargs.get("in_channels", 1))


def _scale_factor(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < float("inf"):
        raise ModelLoadError(f"{where} = {value!r}; allowed: a number > 0 (LatentDiffusionInferer's scale_factor)")
    return float(value)


def _latent_entries(resolver: _Resolver, file: str, bundle: bool) -> tuple[str | None, str | None]:
    """``(autoencoder entry, scale-factor reference)`` of a config; ``(None, None)``: a pixel model. A config that
    names a scale factor or a ``LatentDiffusionInferer`` without an autoencoder entry is refused."""
    config = resolver.config
    names = AUTOENCODER_ENTRIES if bundle else ("autoencoder",)
    entry = next((n for n in names if n in config), None)
    inferer = config.get("inferer")
    scale = "scale_factor" if "scale_factor" in config else None
    if scale is None and isinstance(inferer, dict) and "scale_factor" in inferer:
        scale = "inferer#scale_factor"
    latent_inferer = isinstance(inferer, dict) and str(inferer.get("_target_", "")).endswith("LatentDiffusionInferer")
    if entry is None and (scale is not None or latent_inferer):
        raise ModelLoadError(f"{file} describes a latent diffusion model but has no autoencoder entry (allowed: one of "
                             f"{', '.join(names)}); safcore cannot decode its latents without the autoencoder")
    if entry is not None and scale is None:
        raise ModelLoadError(f"{file} has an autoencoder ({entry}) but no scale_factor (allowed: a top-level "
                             "scale_factor or the inferer's, as LatentDiffusionInferer(scheduler, scale_factor=…))")
    return entry, scale


def _latent(resolver: _Resolver, file: str, folder: Path, entry: str, scale: str, unet, scheduler, size: int):
    """The :class:`LatentModel` of a MONAI config's autoencoder entry and its weights."""
    module, adapter, channels = _autoencoder(resolver.entry(entry), f"{file}: {entry}")
    scale_factor = _scale_factor(resolver.entry(scale), f"{file}: {scale.replace('#', '.')}")
    found = [folder / n for n in _AUTOENCODER_WEIGHTS if (folder / n).exists() or (folder / n).is_symlink()]
    if not found:
        raise ModelLoadError(f"{str(folder)!r} holds no autoencoder weights ({' or '.join(_AUTOENCODER_WEIGHTS)}); "
                             "safcore cannot decode the latents without them")
    autoencoder = adapter(_fill(module, found[0], file, entry))
    with torch.no_grad():
        latent = autoencoder.encode(torch.zeros(1, channels, size, size))
    if latent.shape[1] != int(unet.in_channels):
        raise ModelLoadError(f"{file}: {entry} makes latents of {latent.shape[1]} channel(s), the network takes "
                             f"{unet.in_channels}")
    inner = MonaiModel(unet, scheduler, image_size=int(latent.shape[-1]), source=str(folder))
    return LatentModel(autoencoder, inner, scale_factor=scale_factor, source=str(folder))


def load_monai(folder: Path) -> MonaiModel | LatentModel:
    """The :class:`MonaiModel` (or, with an autoencoder, the :class:`LatentModel`) of a bundle or a plain MONAI
    folder (module docstring).

    Raises:
        ModelLoadError: one line naming the file, the entry and what is allowed."""
    config_file = _bundle_config(folder)
    if config_file is not None:
        file = str(config_file.relative_to(folder))
        resolver = _Resolver(read_json(config_file), file)
        net_name = next((n for n in NETWORK_ENTRIES if n in resolver.config), None)
        sched_name = next((n for n in SCHEDULER_ENTRIES if n in resolver.config), None)
        size_name = next((n for n in ("image_size", "spatial_size") if n in resolver.config), None)
        for what, name, names in (("network", net_name, NETWORK_ENTRIES), ("scheduler", sched_name, SCHEDULER_ENTRIES),
                                  ("image size", size_name, ("image_size", "spatial_size"))):
            if name is None:
                raise ModelLoadError(f"{file} has no {what} entry; allowed: one of {', '.join(names)}")
        weights = _weights(folder / "models", _PLAIN_WEIGHTS, "bundle")
        latent = _latent_entries(resolver, file, bundle=True)
        weights_folder = folder / "models"
    else:
        file = "config.json"
        resolver = _Resolver(read_json(folder / file), file)
        net_name, sched_name, size_name = "network", "scheduler", "image_size"
        if size_name not in resolver.config:
            raise ModelLoadError(f"{str(folder / file)!r} has no image_size (the side of the square images, px)")
        weights = _weights(folder, _PLAIN_WEIGHTS, "plain")
        latent = _latent_entries(resolver, file, bundle=False)
        weights_folder = folder
    unet = _network(resolver.entry(net_name), f"{file}: {net_name}")
    scheduler = _scheduler(resolver.entry(sched_name), f"{file}: {sched_name}")
    size = _image_size(resolver.entry(size_name), f"{file}: {size_name}")
    unet = _fill(unet, weights, file, net_name)
    if latent[0] is not None:
        return _latent(resolver, file, weights_folder, *latent, unet, scheduler, size)
    return MonaiModel(unet, scheduler, image_size=size, source=str(folder))
