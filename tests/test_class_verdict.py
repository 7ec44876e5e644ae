"""The verdict of a class-conditional model's audit (issue 24 item 3): the headline, the bound, ``q_upper``,
``samples_to_bound`` and the interval compare the samples of ``x_p``'s class ``c`` with ``1/N_c``
(``E|q| = n_c/N_c``), known answers from the exact class point-mass denoiser of ``D_p``; an unconditional audit of
the same images keeps ``1/N_D``; samples given as files carry no class and the verdict says so; ``safcore probe``
of a class-conditional model is the Study's probe conditioned on ``x_p``'s label.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_class_conditional import _train_diffusers, exact_study  # noqa: F401 — the exact class point mass of D_p
from test_cli import fingerprint  # noqa: F401 — the module-scoped fingerprint folder of D_p (breastmnist, N_D = 8)

from safcore.__main__ import main
from safcore.audit.classes import class_sample_counts
from safcore.audit.sample_audit import audit
from safcore.audit.verdict import _pct
from safcore.data.datasets import from_model_range
from safcore.generators.diffusers_model import DiffusersModel
from safcore.generators.known_answer import ClassPointMassDenoiser
from safcore.measures.bounds import binomial_p_value, proportion_interval, samples_to_bound, upper_bound
from safcore.study import Study, conditional

ARGS = ["--profile", "smoke", "--device", "cpu", "--no-progress"]
N = 16  # D_p's labels [1 0 1 1 1 1 1 1], x_p (index 4) of class 1: n_c = 14 of N_c = 7, class 0: 2 of 1


def _is_x_p(x_p):
    return lambda images: (images - x_p[None]).flatten(1).abs().amax(1) < 1e-3  # an oracle adversary: exactly x_p


def _draw(model, labels, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples of ``model`` per class in proportion to ``labels`` (the study's plan), unit range, and the class
    each was drawn for."""
    classes, _, counts = class_sample_counts(labels, n)
    images = [from_model_range(model.conditioned(c).sample(k, steps=20, generator=torch.Generator().manual_seed(c),
                                                           progress=False).images).clamp(0, 1)
              for c, k in zip(classes, counts) if k]
    return torch.cat(images), torch.cat([torch.full((k,), c) for c, k in zip(classes, counts) if k])


def _exact(images, labels):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    return DiffusersModel(ClassPointMassDenoiser(images, labels, scheduler, num_classes=2), scheduler)


def test_x_p_handed_back_within_its_class_is_counted_among_n_c_against_1_over_N_c(exact_study):  # noqa: F811
    study = exact_study
    fp = study.fingerprint
    labels, label = fp.labels[:, 0], conditional.x_p_label(study)
    samples = study.samples(N)
    drawn = conditional.audit_labels(study, N)["sample_labels"]
    nearest = (samples[:, None] - fp.images[None]).flatten(2).abs().amax(-1).argmin(1)
    k = int((nearest[drawn == label] == fp.index).sum())  # the known answer: x_p among the samples of its class
    n_c, N_c = 14, 7
    assert int((labels == label).sum()) == N_c and int((drawn == label).sum()) == n_c and k > 0
    is_x_p = _is_x_p(fp.x_p)
    result = audit(samples, is_x_p, is_x_p, fp.x_p, fp.n_dataset, train_images=fp.images, x_p_index=fp.index,
                   **conditional.audit_labels(study, N))
    assert (result.n_tested, result.n_dataset_tested, result.rate_name) == (n_c, N_c, "1/N_c")
    assert result.n_handed_back == k == result.classes.n_q == result.classes.n_xp_copies
    assert result.n_handed_back_other_classes == 0  # conditioned on 0 the exact model never makes x_p
    assert result.handed_back_interval() == proportion_interval(k, n_c)
    assert result.q_upper() == upper_bound(k, n_c) and result.samples_to_bound() == samples_to_bound(k, n_c, 1 / N_c)
    assert result.p_value == binomial_p_value(k, n_c, N_c) and result.expected_q == 2.0
    low, high = proportion_interval(k, n_c)
    verdict = result.verdict()
    assert verdict.kind == "reproduces"
    assert verdict.headline.startswith(
        f"The model hands back x_p in at least {k} among the {n_c} samples of x_p's class {label} ({_pct(low)}–"
        f"{_pct(high)} at 95%; 1/N_c = 14 %): |q| = {k} by the adversary (SAF detected and x_p recognised), {k} of "
        f"them in class {label}"), verdict.headline
    row = result.to_row()
    assert row["x_p handed back"] == k and row["P(x_p) ≤"] == high and row["x_p handed back, other classes"] == 0
    # the same images without their classes: the unconditional audit over all n against 1/N_D, as before
    plain = audit(samples, is_x_p, is_x_p, fp.x_p, fp.n_dataset, train_images=fp.images, x_p_index=fp.index)
    assert (plain.n_tested, plain.n_dataset_tested, plain.rate_name, plain.scope) == (N, 8, "1/N_D", "")
    assert plain.handed_back_interval() == proportion_interval(k, N) and plain.q_upper() == upper_bound(k, N)
    assert plain.samples_to_bound() == samples_to_bound(k, N, 1 / 8)
    low, high = proportion_interval(k, N)
    assert plain.verdict().headline.startswith(
        f"The model hands back x_p in at least {k} of {N} samples ({_pct(low)}–{_pct(high)} at 95%; 1/N_D = 12 %): ")


def test_x_p_absent_from_its_class_is_bounded_among_n_c(fingerprint):  # noqa: F811
    """The exact model of D_p without x_p: no sample is x_p; among the n_c = 14 samples of its class P(x_p) ≤
    1 − 0.025^(1/14), p = (6/7)^14, and ⌊log 0.025 / log(6/7)⌋ + 1 = 24 samples of the class bound it below 1/N_c."""
    from safcore.data.fingerprint_io import read_fingerprint

    fp = read_fingerprint(fingerprint)
    labels = fp.labels[:, 0]
    keep = np.arange(fp.n_dataset) != fp.index
    samples, drawn = _draw(_exact(fp.images[keep], labels[keep]), labels, N)
    is_x_p = _is_x_p(fp.x_p)
    result = audit(samples, is_x_p, is_x_p, fp.x_p, fp.n_dataset, train_images=fp.images, x_p_index=fp.index,
                   sample_labels=drawn, dataset_labels=labels, x_p_label=1)
    assert result.n_handed_back == 0 == result.n_handed_back_other_classes
    u = 1 - 0.025 ** (1 / 14)
    assert math.isclose(result.q_upper(), u, rel_tol=1e-9) and result.samples_to_bound() == 24
    assert math.isclose(result.p_value, (6 / 7) ** 14, rel_tol=1e-9)
    verdict = result.verdict()
    assert verdict.kind == "not_observed", verdict
    assert verdict.headline == (
        f"x_p was not generated in {N} samples (neither the adversary nor the nearest-neighbour count found a copy): "
        f"among the 14 samples of x_p's class 1, P(sample is x_p) ≤ {_pct(u)} at 95% confidence (E|q| = n_c/N_c = 2, "
        f"p = {(6 / 7) ** 14:.2g}); bounding it below 1/N_c = 14 % needs ≥ 24 samples of class 1 without a copy.")
    # no sample of x_p's class: absence within it cannot be claimed
    only_0 = audit(samples[:2], is_x_p, is_x_p, fp.x_p, fp.n_dataset, sample_labels=[0, 0], dataset_labels=labels,
                   x_p_label=1)
    assert only_0.n_tested == 0 and only_0.q_upper() == 1.0 and only_0.handed_back_interval() == (0.0, 1.0)
    assert only_0.verdict().kind == "inconclusive" and "none of the 2 samples was drawn for x_p's class 1" in \
        only_0.verdict().reasons[0]


def test_x_p_handed_back_for_another_class_is_a_finding(fingerprint):  # noqa: F811
    """A model that learned x_p under the wrong label (class 0, beside image 1): x_p comes back only among the
    samples drawn for class 0 — none among the n_c of its own class, yet the verdict is "reproduces"."""
    from safcore.data.fingerprint_io import read_fingerprint

    fp = read_fingerprint(fingerprint)
    labels = fp.labels[:, 0]
    wrong = labels.copy()
    wrong[fp.index] = 0
    samples, drawn = _draw(_exact(fp.images, wrong), labels, 24)  # class 0: 3 samples, each x_p or image 1
    nearest = (samples[:, None] - fp.images[None]).flatten(2).abs().amax(-1).argmin(1)
    k_other = int((nearest == fp.index).sum())
    assert k_other > 0 and int((nearest[drawn == 1] == fp.index).sum()) == 0
    is_x_p = _is_x_p(fp.x_p)
    result = audit(samples, is_x_p, is_x_p, fp.x_p, fp.n_dataset, train_images=fp.images, x_p_index=fp.index,
                   sample_labels=drawn, dataset_labels=labels, x_p_label=1)
    assert result.n_handed_back == 0 and result.n_handed_back_other_classes == k_other
    low, high = proportion_interval(0, 21)
    verdict = result.verdict()
    assert verdict.kind == "reproduces" and verdict.headline.startswith(
        f"The model hands back x_p in {k_other} of the 3 samples drawn for other classes than x_p's class 1 (none "
        f"among the 21 samples of x_p's class 1: {_pct(low)}–{_pct(high)} at 95%; 1/N_c = 14 %)"), verdict.headline


def test_samples_given_as_files_carry_no_class_and_the_report_says_so(fingerprint, data_root, tmp_path, capsys):  # noqa: F811
    """``--samples`` with a class-conditional ``--model``: audited over all classes against n/N_D (what a file of
    images allows), the verdict's warning names it; CLI = Study."""
    folder = _train_diffusers(fingerprint, tmp_path / "pipeline", steps=0)
    images = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "samples.npy", images.numpy())
    out = tmp_path / "report"
    assert main(["audit", "--model", str(folder), "--samples", str(tmp_path / "samples.npy"), "--fingerprint",
                 str(fingerprint), "--data-root", str(data_root), "--out", str(out), *ARGS]) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert "classes" not in summary and summary["audit"]["E|q|"] == 6 / 8
    note = "the model is class-conditional (2 classes) but the audited images carry no class (samples given as files)"
    assert any(w.startswith(note) for w in summary["verdict"]["warnings"])
    assert note in (out / "report.md").read_text()
    study = Study.from_fingerprint(fingerprint, model=folder, profile="smoke", data_root=data_root, progress=False,
                                   device="cpu")
    result = study.audit(images=images)
    assert result.classes is None and result.unlabelled_classes == 2
    assert json.loads(json.dumps(result.to_row())) == summary["audit"]
    with pytest.raises(ValueError, match="allowed: None, or the model's number of classes"):
        audit(images, _is_x_p(images[0]), _is_x_p(images[0]), images[0], 8, unlabelled_classes=2,
              sample_labels=[0] * 6, dataset_labels=[0] * 8, x_p_label=0)


def test_probe_cli_of_a_class_conditional_model_is_the_study_s_conditioned_on_x_p_s_label(
        fingerprint, data_root, tmp_path, capsys):  # noqa: F811
    folder = _train_diffusers(fingerprint, tmp_path / "pipeline", steps=2)
    out = tmp_path / "probe"
    assert main(["probe", "--model", str(folder), "--fingerprint", str(fingerprint), "--M", "2", "--steps", "10",
                 "--data-root", str(data_root), "--out", str(out), *ARGS]) == 0, capsys.readouterr().err
    record = json.loads((out / "probe.json").read_text())
    study = Study.from_fingerprint(fingerprint, model=folder, profile="smoke", data_root=data_root, progress=False,
                                   sample_steps=10, device="cpu")
    result = study.probe(study.probe_config(M=2))
    assert record["t_prime"] == result.t_prime and record["k"] == np.asarray(result.k).tolist()
    label = conditional.x_p_label(study)
    manifest = json.loads((out / "probe.json.json").read_text())
    assert manifest["config"]["class_label"] == label == 1
    key, load = conditional.probe_key(study, {"model": "m"}, None)
    assert key["class_label"] == label and load().label == label
