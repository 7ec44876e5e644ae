"""Named scales of the whole audit: ``smoke`` (CI, seconds), ``cpu`` (a laptop demo), ``paper`` (GPU).

A :class:`Profile` groups the settings of every stage — score-model training, sampling, the two
classifiers and Algorithm 1 — so a notebook or the command line switches all of them with one name;
``dataclasses.replace`` varies one setting.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from safcore.adversary.classifiers import ClassifierConfig
from safcore.defences.cadp import INNConfig
from safcore.probe import ProbeConfig
from safcore.generators.sampling import Method
from safcore.generators.train import TrainConfig

ProfileName = Literal["smoke", "cpu", "paper"]
SamplerMethod = Method  # the samplers of safcore.generators.sampling.sample


@dataclasses.dataclass(frozen=True)
class Profile:
    """Every setting of one audit scale.

    Args:
        name: the profile's name.
        n_dataset: the default ``N_D``.
        train: score-model training (:class:`safcore.generators.train.TrainConfig`).
        sampler, sample_steps: how an SDE model's audit samples are drawn (:func:`safcore.generators.sampling.sample`).
        model_steps: inference steps of a scheduler-driven model's own scheduler (a diffusers or MONAI model;
            ``--steps`` overrides it), for its samples and its probe's full run; ``None``: ``sample_steps``. Kept
            apart because a fast SDE solver's few steps are not a DDPM scheduler's. cpu and paper: 100, a tenth of
            the usual T = 1000, measured indistinguishable from all T steps on notebook 08's DDPM
            (``benchmarks/results/bench_solvers_cpu.txt``); its fast views (``--scheduler dpm_sde|ddim|dpm|unipc``)
            are the user's choice. A MONAI DDPM still runs all T (its scheduler reaches x_0 only on its full grid).
        n_samples: images sampled for the audit (paper: 150 000 for Tab. 1, 50 000 for Tab. 2).
        sample_batch: images per sampler call.
        classifier: ``c_p`` and ``c_id`` settings (:class:`safcore.adversary.classifiers.ClassifierConfig`). AugMix is
            on only in the paper profile: with it a ResNet18 could not learn the grey SAF within a CPU
            budget (c_p stopped at 55 % test accuracy on BreastMNIST, 95 % without).
        probe: Algorithm 1's settings (:class:`safcore.probe.ProbeConfig`).
        n_fid: images per side for FID.
        saf_classifier: ``c_p``'s settings where they differ from ``c_id``'s (``None``: ``classifier``).
            An audit is only as good as its SAF detector: the verdict needs ≥ 95 % SAF accuracy.
        channels: image channels the models see. ``None`` (smoke, cpu) follows the data: grey stays grey
            (1 channel), RGB stays RGB (3). ``3`` (paper) repeats a grey channel three times, as the paper
            feeds grey MedMNIST to its networks, and keeps RGB as it is; ``1`` refuses RGB data. The image
            size always follows the data (28, 64 or 128 px; the U-Net gets the levels for it).
        inn: the conditional INN of the CADP defence (:class:`safcore.defences.INNConfig`), used when
            ``CADP(inn=None)``.
        split_seeds: how audit samples and the exhaustive t' probe draw their randomness. ``True`` (smoke,
            paper): samples in chunks of ``sample_batch``, chunk ``c`` seeded ``derived_seed(seed, c)``, and one
            generator per probe sampler call (:mod:`safcore.study.distributed`) — the same images and t' for one
            process or any number under ``accelerate launch``, which split them. ``False`` (cpu): one generator
            through all batches, as the committed cpu reports were drawn (kept so that their stored samples
            stay valid); under a launcher these stages then run on one process while the others wait.
        forward_batch: most images per network call while sampling and probing (the sampler chunk is then
            evaluated in micro-batches; no draw changes, so it is not in any run key). ``None``: on CUDA the most
            that fit the free memory (:func:`safcore.study.stages.forward_choice`), capped by ``sample_batch`` /
            ``probe.batch_size``; on the CPU no micro-batching. The choice is recorded in the run's manifest.
        channels_last, compile: run the U-Net in ``channels_last`` memory format / under ``torch.compile`` while
            sampling (:func:`safcore.runtime.device.faster_network`); off in every profile: neither has been
            measured to pay on a GPU here (``benchmarks/bench_gpu_path.py`` measures them).
    """

    name: ProfileName
    n_dataset: int
    train: TrainConfig
    sampler: SamplerMethod
    sample_steps: int
    n_samples: int
    sample_batch: int
    classifier: ClassifierConfig
    probe: ProbeConfig
    n_fid: int
    saf_classifier: ClassifierConfig | None = None
    channels: int | None = None
    inn: INNConfig = INNConfig()
    split_seeds: bool = False
    model_steps: int | None = None
    forward_batch: int | None = None
    channels_last: bool = False
    compile: bool = False

    def classifier_for(self, kind: Literal["c_p", "c_id"]) -> ClassifierConfig:
        """The settings of ``c_p`` (``saf_classifier`` when set) or ``c_id`` (``classifier``)."""
        if kind not in ("c_p", "c_id"):
            raise ValueError(f"kind = {kind!r}; allowed: 'c_p', 'c_id'")
        return self.saf_classifier if kind == "c_p" and self.saf_classifier is not None else self.classifier

    def with_sampler(self, method: SamplerMethod, steps: int) -> Profile:
        """This profile with every sampling setting switched together: the audit's ``sampler`` / ``sample_steps``
        and the probe's ``method`` / ``steps_full`` (e.g. ``CPU.with_sampler("euler_maruyama", 200)``, today's
        reference, or a fast solver ``("dpm2m", 20)``, :mod:`safcore.generators.solvers`)."""
        probe = dataclasses.replace(self.probe, method=method, steps_full=steps)
        model_steps = self.model_steps if self.model_steps is not None else self.sample_steps  # scheduled models: as before
        return dataclasses.replace(self, sampler=method, sample_steps=steps, probe=probe, model_steps=model_steps)

    def __post_init__(self) -> None:
        if self.channels is not None and (isinstance(self.channels, bool) or self.channels not in (1, 3)):
            raise ValueError(f"Profile.channels = {self.channels!r}: allowed None (follow the data), 1 or 3")
        for flag in ("split_seeds", "channels_last", "compile"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"Profile.{flag} = {getattr(self, flag)!r}: allowed True or False")
        for name in ("model_steps", "forward_batch"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"Profile.{name} = {value!r}: allowed None or an integer ≥ 1")
        for name in ("n_dataset", "sample_steps", "n_samples", "sample_batch", "n_fid"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Profile.{name} = {value!r}: must be an integer ≥ 1")


def _grid(top: float, bottom: float, step: float) -> tuple[float, ...]:
    count = int(round((top - bottom) / step)) + 1
    return tuple(round(top - i * step, 6) for i in range(count))


SMOKE = Profile(
    name="smoke",
    n_dataset=8,
    train=TrainConfig(preset="tiny", steps=400, batch_size=16, lr=2e-3, warmup_steps=20, ema_decay=0.99,
                      checkpoint_every=200, keep_steps=(100, 200, 400), bf16=True),
    sampler="euler_maruyama",
    sample_steps=50,
    n_samples=32,
    sample_batch=64,
    classifier=ClassifierConfig(arch="resnet18", stem_stride=2, norm="batch", epochs=20, patience=20, epoch_size=256,
                                batch_size=32, augmix=False, saf_noise_std=0.05),
    probe=ProbeConfig(M=4, grid=(*_grid(0.9, 0.1, 0.1), 0.05, 0.02), steps_full=50, batch_size=64),
    n_fid=64,
    inn=INNConfig(depths=(1, 1), width=8, fc_blocks=1, fc_width=32, steps=40, batch_size=32),
    split_seeds=True,
)

CPU = Profile(
    name="cpu",
    n_dataset=16,
    train=TrainConfig(preset="small", steps=2000, batch_size=32, lr=2e-4, warmup_steps=100, ema_decay=0.999,
                      checkpoint_every=250, keep_steps=(250, 500, 1000, 1500, 2000), bf16=True),
    # DPM-Solver++ (2M) SDE on a t-uniform grid, 20 steps: a tenth of the Euler–Maruyama 200-step reference's network
    # evaluations for the samples and for the probe, with copy rate, |q| and t' indistinguishable from it on the cpu
    # models (benchmarks/results/bench_solvers_cpu.txt); the reference: --sampler euler_maruyama --sample-steps 200
    # (Profile.with_sampler). A scheduler-driven model keeps its own scheduler, at model_steps = 100: a tenth of a
    # 1000-step DDPM's reference, indistinguishable from it on notebook 08's DDPM (same file; --steps 1000 for all T).
    sampler="dpm2m_sde_t",
    sample_steps=20,
    model_steps=100,
    n_samples=256,
    sample_batch=128,
    classifier=ClassifierConfig(arch="resnet18", stem_stride=2, norm="batch", epochs=25, patience=8, epoch_size=256,
                                batch_size=32, augmix=False, saf_noise_std=0.05),
    probe=ProbeConfig(M=8, grid=_grid(0.95, 0.05, 0.05), steps_full=20, batch_size=128, method="dpm2m_sde_t"),
    n_fid=512,
    # c_p trained 4x longer per epoch and up to 60 epochs: with 25 x 256 images it stopped at 90.5-94.9 %
    # SAF accuracy on PneumoniaMNIST (still improving at its last epoch) and missed x_p's own SAF on the
    # PneumoniaMNIST subset; measured with these settings (2 threads, seed 0, test split): BreastMNIST 100 %,
    # PneumoniaMNIST 98.2 %, the subset 99.8 % (c_p fires on x_p in all three), ≈ 140 s each on 2 cores.
    saf_classifier=ClassifierConfig(arch="resnet18", stem_stride=2, norm="batch", epochs=60, patience=12, epoch_size=1024,
                                    batch_size=32, augmix=False, saf_noise_std=0.05),
)

PAPER = Profile(
    name="paper",
    channels=3,  # grey repeated three times, as in the paper; RGB stays RGB
    n_dataset=1000,
    train=TrainConfig(preset="paper", steps=30000, batch_size=128, lr=2e-4, warmup_steps=5000, ema_decay=0.9999,
                      checkpoint_every=2000, keep_steps=tuple(range(2000, 30001, 2000)), bf16=True),
    # the cpu profile's solver at a tenth of the Euler–Maruyama 1000-step reference's evaluations (measured
    # equivalent at the cpu scale only; the reference: --sampler euler_maruyama --sample-steps 1000)
    sampler="dpm2m_sde_t",
    sample_steps=100,
    model_steps=100,  # a scheduler-driven model: its own scheduler at a tenth of T = 1000 (as cpu; --steps 1000)
    n_samples=150_000,
    sample_batch=1024,
    classifier=ClassifierConfig(arch="resnet50", stem_stride=1, norm="batch", epochs=200, patience=20, batch_size=128,
                                augmix=True, saf_noise_std=0.05),
    probe=ProbeConfig(M=16, steps_full=100, batch_size=1024, method="dpm2m_sde_t"),
    n_fid=50_000,
    # CADP's chest X-ray / MNIST settings: conv subnets 128 wide, 4 couplings per level, fc width 392
    inn=INNConfig(depths=(4, 4), width=128, fc_blocks=2, fc_width=392, steps=20_000, batch_size=256),
    split_seeds=True,
)

PROFILES: dict[str, Profile] = {p.name: p for p in (SMOKE, CPU, PAPER)}


def get_profile(name: str | Profile) -> Profile:
    """The profile called ``name`` (``"smoke"``, ``"cpu"``, ``"paper"``); a :class:`Profile` passes through."""
    if isinstance(name, Profile):
        return name
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; allowed: {', '.join(PROFILES)}")
    return PROFILES[name]
