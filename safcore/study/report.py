"""The audit report: SAF → model → classifiers → audit → t', and the short report a user reads first.

:func:`run_audit` walks a :class:`~safcore.study.hub.Study` through every stage with a progress display
(stage, elapsed time and an estimate of the time left) and writes ``report.md`` (verdict, the
adversary's count, the independent copy count, bounds, t'), ``summary.json``, its figures and a
manifest, each file atomically. The same report serves safcore's own demo model (:func:`run_demo`) and a
model trained elsewhere (``Study.from_fingerprint(..., model=...)``), and images generated elsewhere (``images=``).
:func:`run_probe` measures t' alone and writes ``probe.json``, ``q_curve.png`` and a manifest.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

from safcore.study import conditional, distributed
from safcore.study import plotting
from safcore.audit.autoencoder import AutoencoderCheck, autoencoder_check, with_autoencoder_finding
from safcore.audit.sample_audit import AuditResult
from safcore.probe import ProbeResult
from safcore.runtime.progress import progress_bar
from safcore.runtime.runs import atomic_write, output_folder, write_manifest
from safcore.study.hub import Study

# Rough share of the demo's time each stage takes at the cpu profile (measured on 2 cores); the
# overall bar's time-left estimate scales the measured time of finished stages by these weights.
STAGE_WEIGHTS = {"data and SAF": 0.01, "score model": 0.45, "c_p": 0.12, "c_id": 0.12, "audit samples": 0.10, "t' probe": 0.20}


@dataclasses.dataclass(frozen=True)
class AuditReport:
    """What the audit found, and where it wrote it (``probe`` is ``None`` when t' was not run)."""

    study: str
    audit: AuditResult
    probe: ProbeResult | None
    accuracies: dict
    copies: int
    seconds: float
    directory: Path
    autoencoder: AutoencoderCheck | None = None  # a latent model's: does the SAF survive encode → decode?

    def __str__(self) -> str:
        return (
            f"{self.study}\n{with_autoencoder_finding(self.audit.verdict(), self.autoencoder).headline}\n{self.audit}\n"
            + (f"{self.probe}\n" if self.probe is not None else "t' not probed\n")
            + 
            f"samples that copy a training image (calibrated Carlini rule): {self.audit.copies.copies_text()}\n"
            f"SAF accuracy {self.accuracies['saf_accuracy']:.1%}, ID accuracy {self.accuracies['id_accuracy']:.1%}; "
            f"{self.seconds / 60:.1f} min; report: {self.directory / 'report.md'}"
        )


def _stages(study: Study, images, n: int | None, probe: bool) -> list[tuple[str, Callable[[], object]]]:
    stages = [("data and SAF", lambda: study.private)]
    if images is None or probe:
        stages.append(("score model", lambda: study.score_model))
    stages += [("c_p", lambda: study.c_p), ("c_id", lambda: study.c_id)]
    stages.append(("audit samples", (lambda: study.samples(n)) if images is None else (lambda: images)))
    if probe:
        stages.append(("t' probe", lambda: study.probe()))
    return stages


def check_audit_inputs(study: Study, out_dir: str | Path, *, images=None, n: int | None = None, spread_runs: int = 3,
                       overwrite: bool = False) -> Path:
    """Everything :func:`run_audit` can check before its first stage, so that a bad input costs seconds, not the
    minutes (hours at the paper profile) of training ``c_p``, ``c_id`` and the score model first: the images'
    shape, channels, size and range against ``D_p``, the numbers, and ``out_dir`` (new or empty unless
    ``overwrite``, never a link or a file, in a writable folder). Returns ``out_dir`` as a ``Path``.

    Raises:
        ValueError: one line naming the value and what is allowed.
    """
    from safcore.runtime.checks import check_int, check_seed
    from safcore.data.datasets import check_unit_images
    from safcore.data.images import check_images_fit
    from safcore.runtime.runs import check_output_folder

    if isinstance(spread_runs, bool) or not isinstance(spread_runs, int) or spread_runs < 0:
        raise ValueError(f"spread_runs = {spread_runs!r} must be an integer ≥ 0")
    if n is not None:
        check_int(n, "n (samples to audit)", 1)
    check_seed(study.seed, "the study's seed")
    if conditional.num_classes(study) is not None:
        conditional.dp_labels(study)  # D_p's labels fit the model's K classes, before any stage
    if images is not None:
        check_unit_images(images, "the images to audit")
        size = study.fingerprint.image_size if study.fingerprint is not None else study.image_size
        check_images_fit(images, study.channels, size)
    if distributed.is_main_process():
        return check_output_folder(out_dir, overwrite=overwrite)
    return Path(out_dir)


def run_audit(study: Study, out_dir: str | Path, *, images=None, n: int | None = None, probe: bool = True,
              spread_runs: int = 3, progress: bool = True, overwrite: bool = False) -> AuditReport:
    """Run every stage of ``study`` and write the report into ``out_dir``.

    Every input is checked before the first stage (:func:`check_audit_inputs`). ``out_dir`` must be new or
    empty, unless ``overwrite`` (then it may hold an earlier report, probe, fingerprint or model, nothing
    else); the report is written into a temporary folder beside it and renamed into place when whole, so an
    audit stopped while writing leaves the old folder or none, never a part.

    Under ``accelerate launch`` call it on every rank: the stages run as :class:`~safcore.study.hub.Study` runs
    them there (DDP training, split sampling and probe) and the main process alone writes the report.

    Args:
        images: audit these ``(n, C, H, W)`` unit-range images (generated elsewhere) instead of sampling.
        n: samples to draw (default: the profile's ``n_samples``).
        probe: run Algorithm 1 (t'); needs the model.
        spread_runs: further t' probes (top-down search, other seeds; 0: none) show how much t' varies:
            t' is a random variable even for a fixed model (it rests on M reverse samples per t).
    """
    # made only when the report is written: a failed stage leaves no empty folder
    out_dir = check_audit_inputs(study, out_dir, images=images, n=n, spread_runs=spread_runs, overwrite=overwrite)
    start = time.perf_counter()
    results: dict[str, object] = {}
    stage_seconds: dict[str, float] = {}
    stages = _stages(study, images, n, probe)
    total_weight = sum(STAGE_WEIGHTS[name] for name, _ in stages)
    with progress_bar(total=len(stages), desc="safcore demo", unit="stage", enabled=progress and distributed.is_main_process(),
                      position=0) as bar:
        done_weight = 0.0
        for name, run in stages:
            bar.set_postfix_str(f"now: {name}")
            began = time.perf_counter()
            results[name] = run()
            stage_seconds[name] = time.perf_counter() - began
            done_weight += STAGE_WEIGHTS[name]
            elapsed = time.perf_counter() - start
            if "score model" in stage_seconds or name == "c_p":
                left = elapsed * (total_weight - done_weight) / done_weight
                bar.set_postfix_str(f"done: {name}, ≈{left / 60:.1f} min left")
            else:  # the score model's own bar shows its time left; the rest is known once it is done
                bar.set_postfix_str(f"done: {name}")
            bar.update(1)
    samples = results["audit samples"]
    audit_result = study.audit(n, images=images)
    probe_result: ProbeResult | None = results.get("t' probe")  # type: ignore[assignment]
    spread = None
    if probe and spread_runs:
        began = time.perf_counter()
        spread = study.probe(study.probe_config(search="topdown", repeats=spread_runs, seed=study.probe_config().seed + 1))
        stage_seconds["t' spread"] = time.perf_counter() - began
    accuracies = study.classifier_accuracies()
    copies = audit_result.copies.n_copies  # the audit's own neighbour search, not a second one
    ae_check = latent_check(study)
    seconds = time.perf_counter() - start
    if distributed.is_main_process():  # under accelerate launch every rank ran the stages; one writes
        with output_folder(out_dir, overwrite=overwrite) as tmp:  # renamed into place when whole
            _write_report(study, tmp, audit_result, probe_result, spread, accuracies, copies, samples, seconds,
                          stage_seconds, images_given=images is not None, autoencoder=ae_check)
    return AuditReport(repr(study), audit_result, probe_result, accuracies, copies, seconds, out_dir, ae_check)


def latent_check(study: Study) -> AutoencoderCheck | None:
    """A latent model's :func:`~safcore.audit.autoencoder.autoencoder_check` on ``x_p`` with the study's ``c_p`` and
    ``c_id`` (``None`` for a model that diffuses pixels, or none)."""
    from safcore.generators.loader import as_generator

    if study.model is None or as_generator(study.model).space == "pixel":
        return None
    p = study.private
    return autoencoder_check(as_generator(study.model), p.x_p, p.x_i, p.mask, study.c_p, study.c_id)


def _latent_section(autoencoder: AutoencoderCheck | None) -> list[str]:
    if autoencoder is None:
        return []
    answer = "yes" if autoencoder.saf_survives else "**no: the audit cannot see the SAF, the autoencoder erases it**"
    return ["## Latent diffusion: does the SAF survive the autoencoder?", "",
            f"{answer} — {autoencoder.describe()}. The model diffuses the autoencoder's latents: every sample is a "
            "decoded latent, so the best it can hand back of x_p is decode(encode(x_p)); Algorithm 1 encodes x_p, "
            "noises the latent to t, reverses and decodes, so t' is a time of the latent diffusion.", ""]


def run_demo(study: Study, out_dir: str | Path, *, spread_runs: int = 3, progress: bool = True,
             overwrite: bool = False) -> AuditReport:
    """The demo (``safcore demo``): train (or reuse) every stage of safcore's own model for ``study`` and write the
    audit report into ``out_dir`` (:func:`run_audit`, t' probed; ``out_dir`` new or empty unless ``overwrite``)."""
    return run_audit(study, out_dir, spread_runs=spread_runs, progress=progress, overwrite=overwrite)


@dataclasses.dataclass(frozen=True)
class ProbeReport:
    """What :func:`run_probe` found (``result`` is ``None`` on processes other than the main one), and where."""

    study: str
    result: ProbeResult | None
    directory: Path

    def __str__(self) -> str:
        return (f"{self.study}\n{self.result}\nwritten: {self.directory / 'probe.json'}, "
                f"{self.directory / 'q_curve.png'}")


def run_probe(study: Study, out_dir: str | Path, config=None, *, overwrite: bool = False) -> ProbeReport:
    """Algorithm 1 for ``study`` (:meth:`~safcore.study.hub.Study.probe`; ``config``: its
    :class:`~safcore.probe.ProbeConfig`, default the profile's) and write ``probe.json`` (counts, t', config),
    ``examples.safetensors`` (as the run store keeps them), ``q_curve.png`` and a manifest into ``out_dir``.

    ``out_dir`` is checked before the probe (new or empty unless ``overwrite``) and written beside its place,
    renamed there when whole. Under ``accelerate launch`` call it on every rank; the main process writes.
    """
    from safcore.probe.io import save_probe
    from safcore.runtime.runs import check_output_folder

    if distributed.is_main_process():
        check_output_folder(out_dir, overwrite=overwrite)  # the default folder too, before the probe
    out_dir = Path(out_dir)
    result = study.probe(config)
    if not distributed.is_main_process():
        return ProbeReport(repr(study), None, out_dir)
    figure = plotting.q_curve(result.ts, result.q, result.ci_low, result.ci_high, result.t_prime,
                              label=f"N_D={study.n_dataset}", k=result.k, n=result.n,
                              title=(f"x_p comes back from t' = {result.t_prime:.2f} ({result.t_prime_count})"
                                     if result.t_prime is not None else "x_p did not come back from any t of the grid"))
    with output_folder(out_dir, overwrite=overwrite) as tmp:  # renamed into place when whole
        plotting.save_figure(figure, tmp / "q_curve.png")
        save_probe(result, tmp)
        label = conditional.x_p_label(study)  # a class-conditional model is probed conditioned on x_p's label
        write_manifest(tmp / "probe.json", config={"study": study.model_config(), "profile": study.profile.name,
                                                   **({"class_label": label} if label is not None else {})},
                       seed=study.seed)
    return ProbeReport(repr(study), result, out_dir)


def _md_table(rows: list[dict]) -> list[str]:
    head = rows[0]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    return (["| " + " | ".join(k.replace("|", "\\|") for k in head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
            + ["| " + " | ".join(fmt(v).replace("|", "\\|") for v in row.values()) + " |" for row in rows])


def _quality_section(quality) -> list[str]:
    """The sample-quality gate (:mod:`safcore.measures.quality`): are the samples like real images of the dataset?"""
    if quality is None:
        return ["## Are the samples like the data?", "",
                "- Not checked: fewer held-out images than the quality gate needs.", ""]
    verdict = "yes" if quality.passed else "**no**"
    return ["## Are the samples like the data?", "",
            f"{verdict} — compared with {quality.n_fit + quality.n_calibration} real held-out images (half fit the "
            f"distribution of their features, half set the threshold beyond which ≤ {quality.alpha:.0%} of real images lie):",
            "", *[f"- {line}." for line in quality.findings()], ""]


def _classes_lines(classes) -> list[str]:
    """The report's bullet on a class-conditional model's per-class sampling and test (none for an unconditional
    model)."""
    if classes is None:
        return []
    per = ", ".join(f"class {c}: n_c = {k} of N_c = {N}" for c, N, k in zip(classes.classes, classes.n_dataset,
                                                                          classes.n_samples))
    return [f"- Class-conditional model: sampled per class in proportion to D_p's labels ({classes.scheme}): {per}. "
            f"x_p's class is {classes.label}: |q| = {classes.n_q} of its n_c = {classes.n_class} samples against "
            f"E|q| = n_c/N_c = {classes.n_class}/{classes.n_dataset_class} = {classes.expected_q:.3g} (the p above "
            "tests this class: H0 every sample of the class copies one of its N_c training images, each equally often)."]


def _model_line(study: Study, images_given: bool) -> str:
    if images_given:
        return "images generated elsewhere (given to the audit), " + (repr(study.model) if study.model is not None else "no model")
    if study.model is not None:
        return repr(study.model)
    return f"safcore's sub-VP score model, trained by this study ({study.profile.train.preset} U-Net, {study.profile.train.steps} steps)"


def _nfe_per_run(method: str, steps: int, scheduled: bool) -> int | str:
    """Network evaluations of one full reverse run of ``steps`` steps: a scheduler-driven model's ``steps`` (one per
    inference step, DDPM / DDIM / DPM-Solver++ / UniPC alike), an SDE sampler's ``steps`` (EM, DPM-Solver++), twice
    that for PC (one corrector step per predictor step), ``"adaptive"`` for the ODE (RK45 chooses its steps)."""
    if scheduled:
        return int(steps)
    if method == "ode":
        return "adaptive"
    return int(steps) * (2 if method == "pc" else 1)


def _sampler(study: Study) -> dict:
    """The sampler of the audit's samples and of the probe, and their network evaluations per full run (a
    scheduler-driven model: its scheduler, for both)."""
    from safcore.generators.loader import max_inference_steps

    how = study._sampling(study.profile.sample_steps)  # noqa: SLF001 — the study's own sampling rule
    probe = study._sampling(study.profile.probe.steps_full)  # noqa: SLF001 — as Study.probe runs it
    scheduled = max_inference_steps(study.model) is not None
    probe_method = probe.method if scheduled else study.profile.probe.method
    probe_steps = probe.steps if scheduled else study.profile.probe.steps_full
    return {"method": how.method, "steps": how.steps, "nfe_per_sample": _nfe_per_run(how.method, how.steps, scheduled),
            "probe_method": probe_method, "probe_steps_full": probe_steps,
            "probe_nfe_per_full_run": _nfe_per_run(probe_method, probe_steps, scheduled)}


def _sampler_lines(sampler: dict | None, probe_result) -> list[str]:
    """The report's lines naming the sampler (or solver) and its NFE, and the probe's method, steps and NFE."""
    lines = []
    if sampler is not None:
        lines.append(f"Sampler of the audit's samples: {sampler['method']}, {sampler['steps']} steps, "
                     f"NFE {sampler['nfe_per_sample']} per sample.")
    if sampler is not None and probe_result is not None:
        lines.append(f"t' probe (Algorithm 1): {sampler['probe_method']}, {sampler['probe_steps_full']} steps per full "
                     f"run (NFE {sampler['probe_nfe_per_full_run']} per run from t = 1; a run from t < 1 takes the "
                     f"tail of that grid), NFE {probe_result.nfe:,} in all.")
    return [*lines, ""] if lines else []


def _write_report(study, out_dir, audit_result, probe_result, spread, accuracies, copies, samples, seconds,
                  stage_seconds, images_given: bool = False, autoencoder: AutoencoderCheck | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    x_p = study.private.x_p
    sampler = None if images_given else _sampler(study)
    verdict = with_autoencoder_finding(audit_result.verdict(), autoencoder)
    check = audit_result.copies
    u = audit_result.handed_back_interval()[1]
    k_back = audit_result.n_handed_back
    headline = (f"|q| = {audit_result.n_q}, x_p copies {check.n_xp_copies} of {audit_result.n} (E|q| = "
                f"{audit_result.expected_q:.3g}); P(x_p) ≤ {u:.2%} (95 %)")
    groups = {"q-positives": audit_result.q_indices}
    missed = audit_result.missed_copies
    groups["x_p copies the adversary missed"] = missed
    groups["c_p+ that are not x_p"] = tuple(i for i in audit_result.cp_indices
                                            if i not in set(check.xp_copy_indices) | set(audit_result.q_indices))
    figure = plotting.audit_gallery(samples, groups, x_p, title=headline)
    plotting.save_figure(figure, out_dir / "q_positives.png")
    if probe_result is not None:
        title = None
        if probe_result.t_prime is not None:
            title = f"x_p comes back from t' = {probe_result.t_prime:.2f} ({probe_result.t_prime_count})"
            if spread is not None:
                title += "; further probes: " + ", ".join("none" if t is None else f"{t:.2f}" for t in spread.t_prime_runs)
        figure = plotting.q_curve(probe_result.ts, probe_result.q, probe_result.ci_low, probe_result.ci_high,
                                  probe_result.t_prime, label=f"N_D={study.n_dataset}", k=probe_result.k, n=probe_result.n,
                                  title=title)
        plotting.save_figure(figure, out_dir / "q_curve.png")
    overview = {"q": audit_result.q_indices, "missed x_p copy": missed}
    figure = plotting.samples_overview(samples, overview, n_show=64, ncols=16,
                                       title=f"{headline}; every q-positive (red) and missed x_p copy (orange) framed")
    plotting.save_figure(figure, out_dir / "samples.png")
    figure = plotting.copies_per_image(check.per_image, check.x_p_index, n_samples=audit_result.n,
                                       control_rate=check.control_copy_rate)
    plotting.save_figure(figure, out_dir / "copies_per_image.png")
    need = audit_result.samples_to_bound()
    rate = audit_result.rate_name  # 1/N_D, or 1/N_c of x_p's class (a class-conditional model)
    tab1 = {k: v for k, v in audit_result.to_row().items()
            if k in ("N_D", "n", "E|q|", "|c_p+|", "|c_id+|", "|q|", "p", "x_p handed back", "P(x_p) ≤", "MAE", "MSE",
                     "class", "n_class", "N_class", "|q| in class")}
    ctl = check.control
    ctl_n = ctl["n"] if ctl else 0
    vs = lambda key: f" (held-out {ctl[key]}/{ctl_n})" if ctl else ""  # noqa: E731
    checks = {
        "x_p copies (NN)": f"{check.n_xp_copies}/{check.n}{vs('xp_copies')}",
        "with a visible SAF": len(check.xp_copies_with_saf) if check.xp_copies_with_saf is not None else "-",
        "caught (c_p ∧ c_id)": check.q_hits,
        "c_p recall": check.cp_recall,
        "c_id recall": check.cid_recall,
        "q+ not NN copies": len(check.q_not_copies),
        "c_p+ on others": f"{check.cp_others}/{check.n_others}",
        "c_id+ on others": f"{check.cid_others}/{check.n_others}",
        "copies of any image": f"{check.n_copies}/{check.n}{vs('copies')}",
        "Carlini 0.5 (published)": f"{check.carlini_copies}/{check.n}{vs('carlini_0.5')}",
        f"evenness p ({check.evenness_method})": check.evenness_p,
    }
    control = study.control
    lines = [
        f"# safcore audit — {study.data.name}, N_D = {study.n_dataset}, profile {study.profile.name}",
        "",
        "Will this model hand back the fingerprinted training image x_p?",
        "",
        f"Model under audit: {_model_line(study, images_given)}.",
        "",
        *_sampler_lines(sampler, probe_result),
        f"**{verdict.headline}**",
        "",
        *[f"- **Not conclusive:** {r}." for r in verdict.reasons],
        *[f"- Warning: {w}." for w in verdict.warnings],
        "",
        *_quality_section(audit_result.quality),
        *_latent_section(autoencoder),
        "## The adversary's count (paper Tab. 1)",
        "",
        *_md_table([tab1]),
        "",
        f"- |q| = {audit_result.n_q} of {audit_result.n} samples are x_p with its SAF by the adversary (c_p ∧ c_id); "
        f"E|q| = {'n/N_D' if audit_result.classes is None else 'n_c/N_c'} = {audit_result.expected_q:.3g}; one-sided binomial p = {audit_result.p_value:.3g} (H0: "
        "every sample copies a training image, each equally often — the paper's test).",
        *_classes_lines(audit_result.classes),
        f"- x_p handed back: {k_back}{audit_result.scope or f' of {audit_result.n} samples'}, the larger of |q| and the nearest-neighbour copies "
        f"of x_p (SAF visible or not). With 95 % confidence the model generates x_p in at most **{u:.2%}** of its "
        f"samples (exact Clopper–Pearson); {rate} = {1 / audit_result.n_dataset_tested:.2%}. "
        + ("A copy found is a breach of this patient's image whatever its rate: no sample size turns it into "
           "\"fewer than expected\"." if k_back or audit_result.n_handed_back_other_classes
           else f"At this rate no number of samples bounds it below {rate}." if need is None
           else f"That is below {rate} already ({need:,} samples without a copy suffice)." if need <= audit_result.n_tested
           else f"Bounding it below {rate} needs ≥ {need:,} samples without a copy."),
        "",
        "## The independent copy count, beside its control",
        "",
        f"A sample copies its nearest training image when {check.calibration.describe()}. "
        f"The control: {control.describe()}; each count below stands beside the same count on them.",
        "",
        *_md_table([checks]),
        "",
        f"- {check.n_xp_copies} samples copy x_p by nearest neighbour (P ≤ {audit_result.copies_upper():.2%} at 95 %); "
        f"the adversary caught {check.q_hits} of them (c_p {check.cp_hits}, c_id {check.cid_hits}).",
        f"- c_p fires on x_p itself: {audit_result.cp_on_x_p}; c_id: {audit_result.cid_on_x_p}. "
        f"c_p SAF accuracy (test split) {accuracies['saf_accuracy']:.1%}; c_id ID accuracy (train) {accuracies['id_accuracy']:.1%}.",
        f"- {check.copies_text()} copy some training image; x_p is copied in "
        f"{check.per_image[check.x_p_index]}, the most-copied image in {max(check.per_image)}.",
        "",
        "## t' (Algorithm 1)",
        "",
        *([f"- {probe_result}",
           *(["- t' is measured in latent space: x_p is encoded, its latent noised to t and reversed by the diffusion "
              "network, the reverse samples decoded before c_p and c_id see them."] if autoencoder is not None else []),
           *([f"- Spread: {len(spread.t_prime_runs)} further top-down probes (same M, other seeds) give t' = "
              + ", ".join("none" if t is None else f"{t:.2f}" for t in spread.t_prime_runs)
              + " — the top-down search draws t' from the same law as the exhaustive one."] if spread is not None else []),
           "- The Eq. 9 indicator (the paper's sum over σ_t with 95 % Clopper–Pearson upper limits of q, "
           "[0, t_min] counted as q = 1) is an index of how far into the noise x_p survives, not a probability."]
          if probe_result is not None else ["- Not probed (run with the model and --probe to measure t')."]),
        "",
        f"{seconds / 60:.1f} min in all; per stage: "
        + ", ".join(f"{name} {sec:.0f} s" for name, sec in stage_seconds.items())
        + " (a stage of about a second was loaded from the run store, not computed).",
        "",
        "![q-positives, missed copies and c_p false positives beside x_p](q_positives.png)",
        "",
        *(["![q_M(t)](q_curve.png)", ""] if probe_result is not None else []),
        "![samples: every q-positive and missed x_p copy framed](samples.png)",
        "",
        "![copies per training image](copies_per_image.png)",
        "",
    ]
    atomic_write(out_dir / "report.md", "\n".join(lines))
    summary = {
        "verdict": {"kind": verdict.kind, "headline": verdict.headline, "reasons": list(verdict.reasons),
                    "warnings": list(verdict.warnings)},
        "audit": audit_result.to_row(),
        "q_upper_95": u,
        "copies_upper_95": audit_result.copies_upper(),
        "samples_to_bound_below_1_over_N_D": need,
        "copy_check": {"x_p_copies": check.n_xp_copies, "x_p_copies_with_saf": len(check.xp_copies_with_saf or ()),
                       "caught": check.q_hits, "c_p_hits": check.cp_hits,
                       "c_id_hits": check.cid_hits, "q_not_copies": len(check.q_not_copies),
                       "c_p_others": check.cp_others, "c_id_others": check.cid_others, "n_others": check.n_others,
                       "copies": check.n_copies, "per_image": list(check.per_image), "evenness_p": check.evenness_p,
                       "evenness_method": check.evenness_method, "carlini_0.5_copies": check.carlini_copies,
                       "threshold": check.threshold, "threshold_rule": check.calibration.describe(),
                       "control": check.control, "control_set": control.to_dict()},
        "x_p_handed_back": k_back,
        **({"classes": audit_result.classes.to_dict()} if audit_result.classes is not None else {}),
        "quality": audit_result.quality.to_dict() if audit_result.quality is not None else None,
        "c_p_on_x_p": audit_result.cp_on_x_p, "c_id_on_x_p": audit_result.cid_on_x_p,
        "model": _model_line(study, images_given),
        **({"t_prime_space": "latent", "autoencoder": autoencoder.to_dict()} if autoencoder is not None else {}),
        "probed": probe_result is not None,
        "t_prime": probe_result.t_prime if probe_result else None,
        "t_prime_k": probe_result.k_at_t_prime if probe_result else None,
        "t_prime_n": probe_result.n_at_t_prime if probe_result else None,
        "t_prime_runs": list(spread.t_prime_runs) if spread is not None else None,
        "eq9_indicator": probe_result.eq9_indicator if probe_result else None,
        "nfe": probe_result.nfe if probe_result else None, "copies": copies, **accuracies,
        "sampler": sampler,
        "seconds": seconds, "stage_seconds": stage_seconds,
    }
    atomic_write(out_dir / "summary.json", json.dumps(summary, indent=2, default=float))
    write_manifest(out_dir / "report.md", config={"study": study.model_config(), "profile": study.profile.name,
                                                  "fingerprint": str(study.fingerprint.folder) if study.fingerprint else None,
                                                  "model": _model_line(study, images_given)},
                   seed=study.seed)
