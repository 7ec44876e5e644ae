"""One audit end to end — data → SAF → score model → classifiers → samples → audit → t' — with reuse.

A :class:`Study` names one experiment (dataset, ``N_D``, seed, SAF, profile). Each stage is computed
on first use and kept in the run store (:class:`safcore.runtime.runs.RunStore`) under a key made from every
setting it depends on, so notebooks and the command line share trained models instead of training
again, and a changed setting never reuses a stale result.

>>> study = Study("breastmnist", n_dataset=32, profile="cpu")
>>> study.audit()          # trains the score model and both classifiers on first use
>>> study.probe()          # Algorithm 1, t'

A model trained elsewhere (a diffusers pipeline with its DDPM/DDIM scheduler, or any model folder
:func:`safcore.generators.loader.load_model` reads) is audited on the fingerprint folder it was trained on:

>>> study = Study.from_fingerprint("fp/", model="my_ddpm_pipeline/", profile="cpu")
>>> study.audit(); study.probe()
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from safcore.data import datasets as data_lib
from safcore.runtime import paths
from safcore.audit.sample_audit import AuditResult, audit
from safcore.measures import control as control_lib
from safcore.adversary.classifiers import Classifier, id_accuracy, saf_accuracy, train_id_classifier, train_saf_classifier
from safcore.defences import CADP, DPSGD, check_defence, defence_key, defended_train_config, trainer_factory
from safcore.runtime.device import resolve_device
from safcore.data.fingerprint import PrivateDataset, SAFConfig, make_private_dataset
from safcore.generators.score_model import ScoreModel
from safcore.probe import ProbeConfig, ProbeResult
from safcore.study import conditional
from safcore.study.profiles import Profile, get_profile
from safcore.study.stages import without_device as _without_device
from safcore.measures.quality import SampleQuality
from safcore.runtime.runs import RunStore, file_sha256, write_manifest
from safcore.generators.loader import (Sampling, as_generator, max_inference_steps, model_under_audit, network,
                                       sampling_for)
from safcore.generators.checkpoints import load_kept
from safcore.generators.train import TrainResult

if TYPE_CHECKING:
    from safcore.data.fingerprint_io import Fingerprint
    from safcore.defences.cadp import ConditionalINN, Privatized
    from safcore.generators.diffusers_model import DiffusersModel
    from safcore.measures.canaries import CanaryRun
    from safcore.measures.fid import FIDResult
    from safcore.measures.peers import PeerReport

Split = Literal["train", "val", "test"]


class Study:
    """One experiment of the paper, computed lazily and cached in the run store.

    Args:
        dataset: a 2D MedMNIST flag, the path of a MedMNIST-layout ``.npz``, or one already loaded
            (:class:`safcore.data.datasets.MedMNISTData`, e.g. shared by the cells of a sweep).
        n_dataset: ``N_D``, drawn from the train split with ``seed``; ``None`` → the profile's.
        profile: ``"smoke"``, ``"cpu"``, ``"paper"`` or a :class:`~safcore.study.profiles.Profile`.
        seed: draws the subset, ``x_i`` and the SAF's place (the models' own seeds are in the profile).
        saf: the fingerprint's look.
        data_root: where the flags' files are (see :func:`safcore.data.datasets.load_dataset`).
        store: the run store (default ``safcore.runtime.paths.runs_dir()``).
        progress: progress bars.
        model: the model under audit when it was trained elsewhere — a :class:`ScoreModel`, a
            :class:`~safcore.generators.diffusers_model.DiffusersModel` or a folder / Hub id for
            :func:`~safcore.generators.loader.load_model`; ``None`` → safcore trains its sub-VP model (the profile's).
        sample_steps: a diffusers model's inference steps for audit samples and for a full probe
            trajectory (``None``: the profile's ``sample_steps`` / ``probe.steps_full``, at most the
            scheduler's ``num_train_timesteps``).
        defence: ``None``, :class:`safcore.defences.CADP` (the score model is trained on privatized
            images) or :class:`safcore.defences.DPSGD` (trained with DP-SGD). It is part of the key of the
            score model and of everything drawn from it; ``c_p`` and ``c_id`` stay the attacker's.
        device: where every stage runs: ``"auto"`` (CUDA when visible), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``
            (:func:`safcore.runtime.device.resolve_device`); in no run key (a GPU-trained model is reused on a CPU).
    """

    def __init__(
        self,
        dataset: str | os.PathLike | data_lib.MedMNISTData = "breastmnist",
        n_dataset: int | None = None,
        *,
        profile: str | Profile = "smoke",
        seed: int = 0,
        saf: SAFConfig = SAFConfig(),
        data_root: str | os.PathLike | None = None,
        store: RunStore | None = None,
        progress: bool = True,
        model: ScoreModel | DiffusersModel | str | os.PathLike | None = None,
        sample_steps: int | None = None,
        defence: CADP | DPSGD | None = None,
        device: str | torch.device = "auto",
    ) -> None:
        self.dataset = dataset
        self.device = resolve_device(device)
        self.defence = check_defence(defence)
        if self.defence is not None and model is not None:
            raise ValueError("defence= applies to the model this study trains; a model trained elsewhere (model=) is "
                             "audited as it is")
        self.profile = get_profile(profile)
        self.n_dataset = self.profile.n_dataset if n_dataset is None else n_dataset
        self.seed = data_lib.check_seed(seed)
        self.saf = saf
        self.data_root = data_root
        self.progress = progress
        # Before any work or folder: N_D must fit the train split, and a user's .npz must be readable and of a
        # supported size (28, 64 or 128 px; load_npz checks it while counting the split).
        data_lib.check_n_dataset(dataset, self.n_dataset)
        self.store = store or RunStore()
        self.fingerprint: Fingerprint | None = None
        self.model, self.sample_steps = model_under_audit(model, sample_steps=sample_steps, device=self.device)
        if self.model is not None and self.model.channels != self.channels:
            raise ValueError(f"the model under audit has {self.model.channels} input channel(s); the data it is audited on "
                             f"has {self.channels} (profile {self.profile.name!r})")

    @classmethod
    def from_fingerprint(
        cls,
        folder: str | os.PathLike,
        *,
        model: ScoreModel | DiffusersModel | str | os.PathLike | None = None,
        profile: str | Profile = "smoke",
        data_root: str | os.PathLike | None = None,
        store: RunStore | None = None,
        progress: bool = True,
        sample_steps: int | None = None,
        device: str | torch.device = "auto",
    ) -> Study:
        """The study of a fingerprint folder (``safcore fingerprint``): ``D_p`` exactly as the trainer read it; the
        source it names (checked by sha256) gives ``c_p``'s real images and ``x_p``'s clean original.

        Raises:
            ValueError: not a fingerprint folder, a source that is missing or changed, or a folder whose
                ``D_p`` is not the one its records regenerate from the source.
        """
        from safcore.data.fingerprint_io import read_fingerprint

        fp = read_fingerprint(folder)
        base = get_profile(profile)
        study = cls(fp.dataset, fp.n_dataset, profile=dataclasses.replace(base, channels=fp.channels), seed=fp.seed,
                    saf=fp.saf, data_root=data_root, store=store, progress=progress, model=model,
                    sample_steps=sample_steps, device=device)
        study.fingerprint = fp
        if study.model is not None:
            study._check_model_size(fp.image_size)
        return study

    @property
    def channels(self) -> int:
        """Channels of the images every model of this study sees: the profile's ``channels``, or the data's
        own (grey 1, RGB 3) when the profile follows the data (``None``, the smoke and cpu profiles)."""
        return self.profile.channels if self.profile.channels is not None else self.data.n_channels

    @property
    def image_size(self) -> int:
        """Side of the study's square images in px (28, 64 or 128): the data's."""
        return self.data.image_size

    @property
    def is_external(self) -> bool:
        """Whether the model under audit was trained elsewhere (``model=``), not by this study."""
        return self.model is not None

    def __repr__(self) -> str:
        defence = f", defence={self.defence.label()!r}" if self.defence is not None else ""
        return f"Study({self.data.name!r}, N_D={self.n_dataset}, profile={self.profile.name!r}, seed={self.seed}{defence})"

    # ------------------------------------------------------------------ data and the SAF
    @functools.cached_property
    def data(self) -> data_lib.MedMNISTData:
        if isinstance(self.dataset, data_lib.MedMNISTData):
            return self.dataset
        return data_lib.load_dataset(self.dataset, root=self.data_root)

    @functools.cached_property
    def private(self) -> PrivateDataset:
        """``D_p``: ``N_D`` seeded training images with ``x_p`` in place of ``x_i``.

        From a fingerprint folder: its uint8 images (what the trainer read), after checking that the
        source regenerates them."""
        data_lib.check_n_dataset(self.data, self.n_dataset)
        clean, _ = data_lib.seeded_subset(self.data.split("train"), self.n_dataset, seed=self.seed)
        images = data_lib.to_unit_tensor(clean, channels=self.channels)
        private = make_private_dataset(images, seed=self.seed, config=self.saf)
        if self.fingerprint is None:
            return private
        from safcore.data.fingerprint_io import regenerated_private_dataset

        return regenerated_private_dataset(self.fingerprint, private, self.data.source)

    def images(self, split: Split) -> torch.Tensor:
        """All images of ``split`` as unit-range tensors ``(N, C, S, S)`` with the study's :attr:`channels`."""
        return data_lib.to_unit_tensor(self.data.split(split), channels=self.channels)

    @functools.cached_property
    def data_config(self) -> dict:
        """What ``D_p`` depends on: the data file's content (which pins the image size), not its location, and the
        channels the models see (grey repeated to 3 channels, the paper profile, is another run)."""
        return {
            "dataset": self.data.name,
            "data_sha256": file_sha256(self.data.source)[:16],
            "n_dataset": self.n_dataset,
            "seed": self.seed,
            "saf": self.private.parameters(),
            "channels": self.channels,
            **({"fingerprint_dp_sha256": self.fingerprint.meta["dp_sha256"][:16]} if self.fingerprint else {}),
        }

    # ------------------------------------------------------------------ the score model
    def model_config(self) -> dict:
        """What the model under audit depends on: ``D_p``, the training settings and the defence, or an
        external model's hashes. Without a defence the key is the one it always was (stored models are reused)."""
        if self.model is not None:
            return {**self.data_config, "external_model": as_generator(self.model).identity()}
        config = {**self.data_config, "train": _without_device(self.train_config, self.channels)}
        if self.defence is not None:
            config["defence"] = self.defence_config()
        return config

    @property
    def train_config(self):
        """The score model's training settings (:func:`safcore.defences.defended_train_config`)."""
        return defended_train_config(self.profile.train, self.defence, self.n_dataset, self.channels)

    def defence_config(self) -> dict | None:
        """The defence's settings as they enter the run keys (:func:`safcore.defences.defence_key`)."""
        return defence_key(self.defence, self.n_dataset, self.profile.inn)

    def training_images(self) -> torch.Tensor:
        """What the score model is trained on: ``D_p``, or its CADP-privatized version."""
        if isinstance(self.defence, CADP):
            return self.privatized().images
        return self.private.images

    def _train(self) -> TrainResult | None:
        if self.model is not None:
            raise ValueError("this study audits a model trained elsewhere (model=); it trains nothing")
        make_trainer = trainer_factory(self.defence)
        return self._train_on(self.training_images(), self.model_config(), train_config=self.train_config,
                              make_trainer=make_trainer)

    def _train_on(self, images: torch.Tensor, config: dict, *, train_config=None, make_trainer=None) -> TrainResult | None:
        """Train the profile's score model (or ``train_config``) on ``images`` into the run ``("score_model",
        config)`` unless it exists (:func:`safcore.study.stages.train_into_store`)."""
        from safcore.study.stages import train_into_store

        train_config = self.profile.train if train_config is None else train_config
        return train_into_store(self.store, config, images, dataclasses.replace(train_config, device=self.device),
                                make_trainer=make_trainer, progress=self.progress)

    def tensors(self) -> dict[str, list[torch.Tensor]]:
        """The parameters and buffers of every model this study has loaded so far, by name (for checking
        where they live; loading happens on first use, so call the stages first)."""
        loaded = {name: self.__dict__[name] for name in ("score_model", "c_p", "c_id") if name in self.__dict__}
        modules = {name: m.model if isinstance(m, Classifier) else network(m) for name, m in loaded.items()}
        return {name: [*m.parameters(), *m.buffers()] for name, m in modules.items()}

    # ------------------------------------------------------------------ defences (issue 13)
    def cadp_inn(self) -> tuple[ConditionalINN, dict]:
        """CADP's conditional INN, trained on the train split **without** ``D_p``'s images, kept in the run store
        (:func:`safcore.defences.cadp_store.stored_inn`): ``(ConditionalINN, record)``."""
        from safcore.defences.cadp_store import stored_inn

        if not isinstance(self.defence, CADP):
            raise ValueError("cadp_inn() belongs to a study with defence=CADP(...)")
        return stored_inn(self.store, self.data, self.defence.inn or self.profile.inn, n_dataset=self.n_dataset,
                          seed=self.seed, channels=self.channels, data_sha256=self.data_config["data_sha256"],
                          device=self.device, progress=self.progress)

    def privatized(self) -> Privatized:
        """CADP applied to every image of ``D_p`` (``x_p`` with its SAF included), kept in the run store
        (:func:`safcore.defences.cadp_store.stored_privatized`); ``x_p`` is at :attr:`private.index`."""
        from safcore.defences.cadp_store import dp_labels, stored_privatized

        if not isinstance(self.defence, CADP):
            raise ValueError("privatized() belongs to a study with defence=CADP(...)")
        config = {**self.data_config, "defence": self.defence_config()}
        return stored_privatized(self.store, config, self.defence, inn=lambda: self.cadp_inn()[0],
                                 images=self.private.images, labels=dp_labels(self.data, self.n_dataset, self.seed),
                                 device=self.device)

    def training_record(self) -> dict:
        """What the training reported beyond its losses: DP-SGD's ε spent, δ, noise multiplier, sampling
        rate (empty for plain training)."""
        if self.model is not None:
            return {}
        file = self._trained_run().path / "training_record.json"
        return json.loads(file.read_text()) if file.is_file() else {}

    def _dp_labels(self):
        """``D_p``'s labels in MedMNIST's layout, and the dataset's task and number of outputs."""
        _, chosen = data_lib.seeded_subset(self.data.split("train"), self.n_dataset, seed=self.seed)
        return self.data.labels("train")[chosen], *data_lib.label_task(self.data)

    def utility_reference(self) -> torch.nn.Module:
        """The classifier trained on the real ``D_p`` with its labels, trained once per ``D_p``
        (:func:`safcore.measures.utility.stored_reference`); in eval mode on the study's device."""
        from safcore.measures import utility as utility_lib

        labels, task, n_outputs = self._dp_labels()
        return utility_lib.stored_reference(self.store, self.data_config, self.private.images, labels, task=task,
                                            n_outputs=n_outputs, device=self.device)

    def utility(self, n: int | None = None) -> dict[str, float]:
        """Utility of ``n`` samples (and under CADP of the privatized ``D_p``) beside the real ``D_p``'s
        (:func:`safcore.measures.utility.stored_utility`)."""
        from safcore.measures import utility as utility_lib

        samples = self.samples(n)
        labels, task, n_outputs = self._dp_labels()
        privatized = (lambda: self.privatized().images) if isinstance(self.defence, CADP) else None
        return utility_lib.stored_utility(self.store, self.model_config(), samples, reference=self.utility_reference,
                                          labels=labels, test=self.images("test"), test_labels=self.data.labels("test"),
                                          task=task, n_outputs=n_outputs, device=self.device, privatized=privatized,
                                          seed=self.seed)

    @functools.cached_property
    def score_model(self) -> ScoreModel | DiffusersModel:
        """The model under audit: ``model=``, else the EMA score model after the profile's steps (trained once)."""
        if self.model is not None:
            self._check_model_size()
            return self.model
        self._train()
        run = self.store.find("score_model", self.model_config())
        return ScoreModel.from_pretrained(run.path / "model").to(self.device).eval()

    def _trained_run(self):
        """The run store's run of the score model this study trained (trained first when it is not there yet)."""
        self.score_model  # noqa: B018 — make sure it exists
        return self.store.find("score_model", self.model_config())

    def _check_model_size(self, size: int | None = None) -> None:
        size = int(self.private.images.shape[-1]) if size is None else int(size)
        model_size = self.model.image_size
        if model_size != size:
            raise ValueError(f"the model under audit makes {model_size}×{model_size} px images; D_p's are {size}×{size}")

    @property
    def losses(self) -> list[float]:
        """The training loss of every step."""
        if self.model is not None:
            raise ValueError("the model under audit was trained elsewhere; safcore has no record of its losses")
        return json.loads(self._trained_run().file("losses.json").read_text())

    def model_at(self, step: int) -> ScoreModel:
        """The EMA score model kept at training ``step`` (one of the profile's ``keep_steps``)."""
        if step == self.profile.train.steps or (self.model is not None and step is None):
            return self.score_model
        if self.model is not None:
            raise ValueError(f"step = {step!r}: a model trained elsewhere is audited as given (step=None)")
        file = self._trained_run().path / "kept" / f"ema_step{step:06d}.safetensors"
        if not file.is_file():
            raise ValueError(f"training step {step} was not kept; kept steps: {list(self.profile.train.keep_steps)}")
        return load_kept(file, step).to(self.device).eval()

    # ------------------------------------------------------------------ the adversary
    def classifier_config(self, kind: Literal["c_p", "c_id"]) -> dict:
        """What a classifier depends on. ``c_p`` knows only the SAF's look and the dataset, so one
        ``c_p`` serves every ``N_D`` and seed; ``c_id`` is trained on this ``D_p``."""
        classifier = _without_device(self.profile.classifier_for(kind))
        if kind == "c_p":
            saf = {"radius": self.private.radius, "grey": self.private.grey}
            return {"dataset": self.data.name, "data_sha256": self.data_config["data_sha256"], "saf": saf,
                    "channels": self.channels, "kind": kind, "classifier": classifier}
        return {**self.data_config, "kind": kind, "classifier": classifier}

    def _classifier(self, kind: Literal["c_p", "c_id"]) -> Classifier:
        from safcore.study.stages import stored_classifier

        settings = dataclasses.replace(self.profile.classifier_for(kind), device=self.device)
        if kind == "c_p":  # the attacker paints SAFs on the dataset's real training images
            make = lambda: train_saf_classifier(self.images("train"), self.images("val"), self.saf,  # noqa: E731
                                                settings, progress=self.progress)
        else:
            make = lambda: train_id_classifier(self.private, settings, progress=self.progress,  # noqa: E731
                                               val_images=self.images("val"))
        return stored_classifier(self.store, kind, self.classifier_config(kind), make, seed=settings.seed,
                                 device=self.device)

    @functools.cached_property
    def c_p(self) -> Classifier:
        """The SAF detector ``c_p``."""
        return self._classifier("c_p")

    @functools.cached_property
    def c_id(self) -> Classifier:
        """The identity classifier ``c_id`` (is this ``x_p``?)."""
        return self._classifier("c_id")

    def classifier_accuracies(self) -> dict[str, float]:
        """Tab. 2's "SAF (%)" (test split) and "ID (%)" (training set), as fractions."""
        return dict(self._accuracies)

    @functools.cached_property
    def _accuracies(self) -> dict[str, float]:
        return {
            "saf_accuracy": saf_accuracy(self.c_p, self.images("test"), self.saf, seed=self.seed),
            "id_accuracy": id_accuracy(self.c_id, self.private),
        }

    # ------------------------------------------------------------------ sampling and the audit
    def samples(self, n: int | None = None, *, step: int | None = None, seed: int = 0) -> torch.Tensor:
        """``n`` generated images ``(n, C, S, S)`` in ``[0, 1]`` (cached), from the model at ``step`` (per class)."""
        n = self.profile.n_samples if n is None else n
        step = (None if self.model is not None else self.profile.train.steps) if step is None else step
        how = self._sampling(self.profile.sample_steps)
        config = {"model": self.model_config(), "step": step, "method": how.method, "steps": how.steps, "n": n,
                  "seed": seed}
        return self._stored_samples(config, lambda: self.model_at(step), n, how, seed, conditional.class_plan(self, n))

    def _sampling(self, steps: int) -> Sampling:
        """How the model under audit is sampled with ``steps`` steps: the profile's sampler and bf16, or a
        diffusers model's scheduler for ``sample_steps=`` (else ``steps``) steps, at most its ``T``
        (:func:`safcore.generators.loader.sampling_for`)."""
        return sampling_for(self.model, method=self.profile.sampler, steps=steps, chosen_steps=self.sample_steps,
                            bf16=self.profile.train.bf16, model_steps=self.profile.model_steps)

    def _stored_samples(self, config: dict, load_model, n: int, how: Sampling, seed: int, per_class=None) -> torch.Tensor:
        """``n`` samples ``(n, C, S, S)`` in [0, 1] of ``load_model()`` kept in the run store under ``("samples",
        config)`` (:func:`safcore.study.stages.stored_samples`; ``per_class``: a class-conditional model's plan)."""
        from safcore.study.stages import stored_samples

        return stored_samples(self.store, config, load_model, n, how, seed, profile=self.profile, per_class=per_class,
                              shape=(self.channels, *self.private.images.shape[-2:]), progress=self.progress)

    def audit(self, n: int | None = None, *, step: int | None = None, seed: int = 0,
              images: torch.Tensor | None = None) -> AuditResult:
        """Sample ``n`` images and count ``|c_p+|``, ``|c_id+|``, ``|q|`` against ``E|q| = n/N_D``, with the
        independent nearest-neighbour copy count against ``D_p`` and ``c_p``'s SAF accuracy on the test
        split, so that :meth:`AuditResult.verdict` can judge the adversary.

        ``images``: audit these instead of sampling — ``(n, C, H, W)`` in [0, 1], e.g. generated elsewhere
        and read with :func:`safcore.data.images.load_images`. A class-conditional model: :mod:`~safcore.study.conditional`."""
        if own := images is None:
            images = self.samples(n, step=step, seed=seed)
        else:
            data_lib.check_unit_images(images, "the images to audit")  # before c_p / c_id are trained
            expected = tuple(self.private.images.shape[1:])
            if images.ndim != 4 or tuple(images.shape[1:]) != expected:
                raise ValueError(f"the images to audit have shape {tuple(images.shape)}; D_p's images are {expected} "
                                 "(channels, height, width)")
        quality = self.quality(images)  # before c_p / c_id: a broken model is the first thing to know
        return audit(images, self.c_p, self.c_id, self.private.x_p, self.n_dataset, train_images=self.private.images,
                     x_p_index=self.private.index, saf_mask=self.private.mask, saf_grey=self.private.grey,
                     saf_accuracy=self._accuracies["saf_accuracy"], control=self.control.images, quality=quality,
                     **conditional.audit_labels(self, len(images), given=not own))

    @functools.cached_property
    def domain_extractor(self):
        """The dataset's domain feature extractor (:func:`safcore.measures.extractor_training.domain_extractor`, cached in the run
        store): FID's features and the quality gate's."""
        from safcore.measures.extractor_training import domain_extractor

        return domain_extractor(self.data, self.store.root / "fid_extractors", device=self.device, progress=self.progress)

    def quality(self, images: torch.Tensor) -> SampleQuality | None:
        """The sample-quality gate (:func:`safcore.measures.quality.sample_quality`) of ``images`` against the control,
        with ``D_p`` as its control; ``None`` when the control has fewer than
        :data:`safcore.measures.quality.MIN_CONTROL` images (the verdict then cannot say whether the model learned)."""
        from safcore.measures.quality import MIN_CONTROL, sample_quality

        if self.control.n < MIN_CONTROL or len(images) < 2:
            return None
        return sample_quality(images, self.control.images, self.domain_extractor, training=self.private.images,
                              seed=self.seed)

    # ------------------------------------------------------------------ the control (issue 20)
    @functools.cached_property
    def _patient_images(self) -> torch.Tensor:
        """Every image the model saw or that shows the fingerprinted patient: ``D_p`` and ``x_p``'s clean original."""
        return torch.cat([self.private.images, self.private.x_i[None]])

    @functools.cached_property
    def control(self) -> control_lib.HeldOut:
        """Real images the model never saw: the dataset's val and test splits without their near-duplicates
        of ``D_p`` or ``x_p``'s original (RMS < :data:`safcore.measures.control.NEAR_DUPLICATE_RMS`). Every copy count
        is reported beside theirs, and the audit's copy rule is calibrated on them."""
        candidates = torch.cat([self.images("val"), self.images("test")])
        return control_lib.held_out(candidates, self._patient_images, source="val + test splits")

    # ------------------------------------------------------------------ the field's metrics (issue 14)
    def nonmembers(self) -> torch.Tensor:
        """``N_D`` held-out images ``(n, C, H, W)`` for membership inference, drawn with the study's seed from
        :meth:`nonmember_pool` (:func:`safcore.measures.peers.draw_nonmembers`)."""
        from safcore.measures.peers import draw_nonmembers

        pool, n_train = self.nonmember_pool()
        return draw_nonmembers(pool, n_train, self.n_dataset, self.seed)

    def nonmember_pool(self) -> tuple[control_lib.HeldOut, int]:
        """Every candidate non-member, near-duplicates removed, and how many come from the train split
        (:func:`safcore.measures.peers.nonmember_pool`)."""
        from safcore.measures.peers import nonmember_pool

        _, chosen = data_lib.seeded_subset(self.data.split("train"), self.n_dataset, seed=self.seed)
        return nonmember_pool(self.images("train"), chosen, [self.images("val"), self.images("test")],
                              self._patient_images)

    def peers(self, *, n_draws: int = 8) -> PeerReport:
        """The field's metrics on this study's model and audit samples (:func:`safcore.measures.peers.peer_report`,
        kept in the run store by :func:`~safcore.measures.peers.stored_peer_report`)."""
        from safcore.measures.peers import draw_nonmembers, peer_report, stored_peer_report
        from safcore.study import distributed

        samples = self.samples()
        if distributed.launched():
            self.score_model  # noqa: B018 — on every rank before one takes the key's lock (DDP training is collective)

        def make() -> PeerReport:
            pool, n_train = self.nonmember_pool()
            nonmembers = draw_nonmembers(pool, n_train, self.n_dataset, self.seed)
            return peer_report(self.score_model, self.private.images, nonmembers, samples, self.images("val"),
                               pool=pool, control=self.control, n_draws=n_draws, seed=self.seed)

        return stored_peer_report(self.store, self.model_config(), make, n_samples=samples.shape[0], n_draws=n_draws,
                                  seed=self.seed)

    def canary_audit(self, m: int | None = None, *, n_samples: int | None = None, delta: float = 1e-5) -> CanaryRun:
        """SAF canaries as a one-run privacy audit (Steinke, Nasr & Jagielski 2023) for this study's setting
        (:func:`safcore.study.stages.canary_run`: ``m`` canaries, one training, ``n_samples`` samples scored).

        Returns:
            :class:`~safcore.measures.canaries.CanaryRun`, unpacking as ``(CanaryAudit, CanaryDesign, scores)``.
        """
        from safcore.study.stages import canary_run

        return canary_run(self, m, n_samples=n_samples, delta=delta)

    def copies(self, n: int | None = None, *, step: int | None = None, seed: int = 0) -> int:
        """How many of the ``n`` samples copy some image of ``D_p``: the audit's copy rule (Carlini et al. 2023's
        ratio, its threshold calibrated on :attr:`control`, ≤ 1 % of held-out images pass)."""
        from safcore.measures.memorization import carlini_ratio

        threshold, _, _ = control_lib.copy_threshold_for(self.private.images, self.control.images)
        return int((carlini_ratio(self.samples(n, step=step, seed=seed), self.private.images) < threshold.value).sum())

    # ------------------------------------------------------------------ Algorithm 1
    def probe_config(self, **changes) -> ProbeConfig:
        """The profile's :class:`~safcore.probe.ProbeConfig`, with ``changes`` applied."""
        return dataclasses.replace(self.profile.probe, **changes)

    def probe(self, config: ProbeConfig | None = None, *, step: int | None = None) -> ProbeResult:
        """Algorithm 1: ``q_M(t)`` and ``t'`` for ``x_p`` under the score model at ``step``, computed once per
        model, step, probe settings and classifiers (the search is seeded by ``config.seed``) and kept in the
        run store, so notebooks, sweeps and the command line read it back instead of probing again; with the
        profile's ``split_seeds`` the same for any number of processes (:func:`safcore.study.stages.stored_probe`)."""
        from safcore.study.stages import stored_probe

        step = step if step is not None or self.model is not None else self.profile.train.steps
        config = config or self.profile.probe
        scheduled = max_inference_steps(self.model) is not None  # a diffusers model runs its own step grid
        if scheduled:
            config = dataclasses.replace(config, steps_full=self._sampling(config.steps_full).steps)
        # seeded by config.seed, so one computation per key; kept in the run store like every other stage
        key = {"model": self.model_config(), "step": step, "probe": dataclasses.asdict(config),
               "c_p": self.classifier_config("c_p"), "c_id": self.classifier_config("c_id"),
               # version 2: the exhaustive search runs each t with its own step count (issue 20); the top-down
               # search and diffusers models are unchanged, so their stored probes stay valid
               "version": 2 if config.search == "exhaustive" and not scheduled else 1}
        key, load_model = conditional.probe_key(self, key, step)  # a class-conditional model: x_p's label
        return stored_probe(self.store, key, config, load_model, lambda: self.private.x_p, lambda: (self.c_p, self.c_id),
                            split=self.profile.split_seeds, forward_batch=self.profile.forward_batch, progress=self.progress)

    # ------------------------------------------------------------------ figures
    def save_figure(self, figure, name: str) -> Path:
        """Save ``figure`` as ``figures/<name>_<profile>.png`` with a manifest of this study's settings."""
        from safcore.study import plotting

        path = paths.figures_dir() / f"{name}_{self.profile.name}.png"
        plotting.save_figure(figure, path)
        write_manifest(path, config={**self.model_config(), "profile": self.profile.name}, seed=self.seed)
        return path

    # ------------------------------------------------------------------ image quality
    def fid(self, split: Split = "train", *, extractor: str = "auto", seed: int = 0) -> FIDResult:
        """FID between real images and the model's samples (Tab. 2's FID_train / FID_test), same ``n`` on both sides.

        ``split="train"``: against ``D_p``, the images the model was trained on (not the whole train split, most of
        which it never saw at small ``N_D``); ``"test"`` / ``"val"``: against that split. FID's small-sample bias
        depends on ``n``, so FID_train and FID_test use the same ``n = min(profile.n_fid, N_D, |test split|)`` real
        and generated images, drawn with :func:`safcore.measures.fid.subsample` (seeded by ``seed``; both share
        the generated subset). Inception where its weights are available locally, else the dataset's domain
        extractor (the result names it; not comparable with the paper's Inception FIDs).
        """
        from safcore.measures.fid import fid

        reference = self.private.images if split == "train" else self.images(split)
        n = min(self.profile.n_fid, self.n_dataset, len(self.data.split("test")), len(reference))
        return fid(reference, self.samples(self.profile.n_fid), extractor, n_per_side=n, seed=seed,
                   dataset=self.data, cache_dir=self.store.root / "fid_extractors", progress=self.progress,
                   device=self.device)
