"""Every figure builds with the expected panels and saves as a PNG (Agg backend, no display)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from safcore.study import plotting  # noqa: E402
from safcore.adversary.classifiers import AugmentedExamples  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(12, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def _frames(ax) -> int:
    return sum(isinstance(p, Rectangle) and p.get_edgecolor()[:3] == matplotlib.colors.to_rgb(plotting.HIGHLIGHT_COLOUR)
               for p in ax.patches)


def test_save_figure_writes_a_png_atomically(tmp_path, images):
    figure = plotting.image_grid(images[:3], ncols=3)
    path = plotting.save_figure(figure, tmp_path / "sub" / "grid.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in path.parent.iterdir()) == ["grid.png"]  # no temporary file left
    with pytest.raises(ValueError, match=r"\.png"):
        plotting.save_figure(figure, tmp_path / "grid.pdf")


def test_image_grid_frames_the_highlighted_images(images):
    figure = plotting.image_grid(images, ncols=5, highlight={2, 7}, highlight_label="q")
    assert len(figure.axes) == 12
    assert [i for i, ax in enumerate(figure.axes) if _frames(ax)] == [2, 7]
    assert any(t.get_text() == "q" for t in figure.axes[2].texts)
    colour = plotting.image_grid(images[:4].repeat(1, 3, 1, 1), ncols=8, titles=list("abcd"))
    assert len(colour.axes) == 4 and colour.axes[3].get_title() == "d"
    assert colour.axes[0].images[0].get_array().shape == (28, 28, 3)  # C=3 shown as HWC
    grey = figure.axes[0].images[0]
    assert grey.get_cmap().name == "gray" and grey.get_clim() == (0.0, 1.0)
    with pytest.raises(ValueError, match="titles"):
        plotting.image_grid(images[:3], titles=["a"])


def test_saf_construction_has_three_panels_and_eq10(images):
    mask = torch.zeros(28, 28)
    mask[10:14, 10:14] = 1
    figure = plotting.saf_construction(images[0], mask, images[1])
    assert len(figure.axes) == 3
    assert "Eq. 10" in figure._suptitle.get_text()


def test_samples_vs_nearest_pairs_each_sample_with_its_neighbour(images):
    indices = torch.arange(5)[:, None].repeat(1, 3)
    distances = torch.linspace(0, 1, 15).reshape(5, 3)
    figure = plotting.samples_vs_nearest(images[:5], images, indices, distances, pairs_per_row=2)
    assert len(figure.axes) == 10
    assert "train 4" in figure.axes[9].get_title()


def test_samples_by_group_and_augmented_examples(images):
    figure = plotting.samples_by_group({"N_D = 32": images[:4], "N_D = 546": images[4:6]}, highlight={"N_D = 32": {1}})
    assert len(figure.axes) == 6
    assert [i for i, ax in enumerate(figure.axes) if _frames(ax)] == [1]
    examples = AugmentedExamples(
        saf_images=images[:4], saf_labels=torch.tensor([1, 0, 1, 0]).bool(),
        id_images=images[4:7], id_labels=torch.tensor([0, 1, 0]).bool(),
    )
    figure = plotting.augmented_examples(examples)
    assert len(figure.axes) == 7
    assert [i for i, ax in enumerate(figure.axes) if _frames(ax)] == [0, 2, 5]


def test_training_curves_single_and_several_histories():
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "train_acc": 0.5 + e / 10, "val_acc": 0.4 + e / 10}
               for e in (1, 2, 3)]
    figure = plotting.training_curves(history)
    assert len(figure.axes) == 2
    assert len(figure.axes[0].lines) == 2 and len(figure.axes[1].lines) == 2
    several = plotting.training_curves({"c_p": history, "c_id": history[:2]})
    assert len(several.axes[0].lines) == 4
    columns = plotting.training_curves({"train_loss": [1.0, 0.5], "val_loss": [1.1, 0.7]})
    assert len(columns.axes[0].lines) == 2 and len(columns.axes[1].lines) == 0
    with pytest.raises(ValueError, match="train_loss"):
        plotting.training_curves([{"epoch": 1}])


def test_loss_curve():
    figure = plotting.loss_curve(np.linspace(2, 1, 100), smooth=10)
    assert len(figure.axes) == 1 and len(figure.axes[0].lines) == 2


def test_q_curve_one_or_several_curves_with_t_prime():
    ts = np.linspace(0, 0.5, 11)
    q = np.clip(1 - 2 * ts, 0, 1)
    figure = plotting.q_curve(ts, q, q * 0.8, np.minimum(q * 1.2, 1), 0.45, "N_D = 32")
    ax = figure.axes[0]
    assert len(figure.axes) == 1
    assert len(ax.lines) == 2  # the curve and the t' line
    curve = ax.lines[0]
    assert curve.get_xdata().max() == pytest.approx(0.45)  # stops at t' like the paper
    several = plotting.q_curve([ts, ts], [q, q / 2], [q * 0.8] * 2, [q] * 2, [0.45, None], ["a", "b"])
    assert len(several.axes[0].lines) == 3  # two curves, one t' line (None draws none)
    with pytest.raises(ValueError, match="differ in length"):
        plotting.q_curve(ts, q[:-1], q, q, 0.4, "x")


def test_q_curve_says_what_it_shows():
    ts = np.array([0.05, 0.1, 0.15, 0.2])
    k, n = np.array([8, 8, 1, 0]), np.array([8, 8, 8, 8])
    q = k / n
    figure = plotting.q_curve(ts, q, q * 0.5, np.minimum(q + 0.3, 1), 0.15, "N_D = 16", k=k, n=n)
    ax = figure.axes[0]
    assert ax.get_xlabel() == "diffusion time t (0 = image, 1 = noise)"
    assert "$q_M(t)$" in ax.get_ylabel() and "reverse samples" in ax.get_ylabel() and "SAF" in ax.get_ylabel()
    assert ax.get_title() == "$x_p$ comes back from t' = 0.15 (1/8)"  # the finding, with its count
    assert [t.get_text() for t in ax.texts] == ["t' = 0.15 (1/8)"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["N_D = 16", "95 % Clopper–Pearson"]
    # several curves: each t' with its count and its label; no t' is said as such
    pair = plotting.q_curve([ts, ts], [q, q * 0], [q, q * 0], [q, q * 0 + 0.3], [0.15, None], ["N_D = 16", "N_D = 64"],
                            k=[k, k * 0], n=[n, n])  # fmt: skip
    assert pair.axes[0].get_title() == "$x_p$ comes back from t' = 0.15 (1/8) for N_D = 16, none ≥ 0.05 for N_D = 64"
    none = plotting.q_curve(ts, q * 0, q * 0, q * 0 + 0.3, None)
    assert none.axes[0].get_title() == "$x_p$ did not come back from any probed t (t ≥ 0.05)"
    assert plotting.q_curve(ts, q, q, q, 0.15, title="mine").axes[0].get_title() == "mine"
    with pytest.raises(ValueError, match="k and n together"):
        plotting.q_curve(ts, q, q, q, 0.15, k=k)
    with pytest.raises(ValueError, match="not one of the probed t"):
        plotting.q_curve(ts, q, q, q, 0.3, k=k, n=n)


def test_reverse_examples_two_rows_per_t(images):
    figure = plotting.reverse_examples({0.5: images[:2], 0.1: images[2]}, {0.1: images[3], 0.5: images[4:6]}, per_t=2)
    assert len(figure.axes) == 2 * 3  # t = 0.1 (one image) + t = 0.5 (two), queries above samples
    assert figure.axes[0].get_title() == "t = 0.10"
    with pytest.raises(ValueError, match="samples"):
        plotting.reverse_examples({0.1: images[0]}, {0.2: images[0]})


def test_audit_gallery_shows_x_p_and_each_group(images):
    groups = {"q-positives": [1, 2, 3], "c_p+ only": [], "c_id+ only": torch.tensor([4])}
    figure = plotting.audit_gallery(images, groups, images[0], title="|q| = 3")
    shown = [ax for ax in figure.axes if ax.images]
    assert len(shown) == 3 + 3 + 1  # x_p in every row, then the group's images
    assert sum("x" in ax.get_title() and "training image" in ax.get_title() for ax in shown) == 3
    assert any("none" == t.get_text() for ax in figure.axes for t in ax.texts)
    assert figure._suptitle.get_text() == "|q| = 3"
    headings = [t.get_text() for ax in figure.axes for t in ax.texts]
    assert "q-positives (3)" in headings and "c_p+ only (0)" in headings
    capped = plotting.audit_gallery(images, {"q": list(range(12))}, images[0], max_per_group=4)
    assert len([ax for ax in capped.axes if ax.images]) == 5
    assert any("12, first 4 shown" in t.get_text() for ax in capped.axes for t in ax.texts)
    with pytest.raises(ValueError, match="outside"):
        plotting.audit_gallery(images, {"q": [12]}, images[0])


def test_samples_overview_frames_every_grouped_sample_wherever_it_is():
    array = torch.rand(300, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    q, missed = [89, 96, 208, 299], [150]
    figure = plotting.samples_overview(array, {"q": q, "missed x_p copy": missed}, n_show=16, ncols=8, title="t")
    titles = [ax.get_title() for ax in figure.axes]
    assert len(figure.axes) == 16
    for i in q + missed:  # all beyond the first 64, all shown and tagged
        assert f"#{i}" in titles
    tags = {t.get_text() for ax in figure.axes for t in ax.texts}
    assert tags == {"q", "missed x_p copy"}
    assert sum(len(ax.patches) for ax in figure.axes) == 5  # one frame per grouped sample
    assert titles[:3] == ["#0", "#1", "#2"]  # filled with the others in order
    over = plotting.samples_overview(array, {"q": list(range(20))}, n_show=8)
    assert "12 grouped samples beyond the 8 panels" in over._suptitle.get_text()
    with pytest.raises(ValueError, match="outside"):
        plotting.samples_overview(array, {"q": [300]})


def test_copies_per_image_marks_x_p():
    figure = plotting.copies_per_image([3, 0, 8, 42], 2, n_samples=64)
    (ax,) = figure.axes
    heights = [bar.get_height() for bar in ax.patches]
    assert heights == [42, 8, 3, 0]  # ranked
    assert ax.patches[1].get_facecolor()[:3] != ax.patches[0].get_facecolor()[:3]  # x_p in its own colour
    assert "x_p is copied in 8 samples (rank 2 of 4)" in ax.get_title()
    assert "training image" in ax.get_xlabel() and "samples" in ax.get_ylabel()
    with pytest.raises(ValueError, match="outside"):
        plotting.copies_per_image([1, 2], 5)


def test_memorization_vs_steps_and_error_map(images):
    figure = plotting.memorization_vs_steps([1000, 2000, 3000], [0, 3, 10], [np.nan, 1e-2, 1e-3], [np.nan, 1e-3, 1e-5])
    assert len(figure.axes) == 2
    assert figure.axes[1].get_yscale() == "log"
    with pytest.raises(ValueError, match="equally long"):
        plotting.memorization_vs_steps([1], [1, 2], [0.1], [0.1])
    x_p = torch.zeros(1, 28, 28)
    sample = x_p.clone()
    sample[0, 5, 5] = 1.0
    figure = plotting.error_map(x_p, sample[None])
    assert len(figure.axes) == 4  # x_p, sample, error, colour bar
    assert "pixel value" in figure.axes[3].get_ylabel()
    error = figure.axes[2].images[0].get_array()
    assert error[5, 5] == 1.0 and error.sum() == 1.0


def test_samples_by_group_tags_each_framed_panel_in_its_own_colour(images):
    figure = plotting.samples_by_group({"a": images[:4], "b": images[4:8]},
                                       {"a": {1: "q", 2: "missed"}, "b": [0]}, title="x_p and its copies")
    tags = {(t.get_text(), t.get_bbox_patch().get_facecolor()[:3]) for ax in figure.axes for t in ax.texts}
    assert {tag for tag, _ in tags} == {"q", "missed"} and len(tags) == 2  # "q" in row b has q's colour
    assert figure._suptitle.get_text() == "x_p and its copies"


# ---------------------------------------------------------------- the notebooks' tables and figures (07, 09, 10)


def _audit(n_q: int, xp_copies: tuple[int, ...], *, n: int = 8, n_dataset: int = 4, copies: int = 3):
    """A real AuditResult of ``n`` samples: q-positives 0..n_q-1, ``xp_copies`` copying x_p, ``copies`` copies in all."""
    from safcore.audit.sample_audit import AuditResult, CopyCheck

    check = CopyCheck(
        x_p_index=0, threshold=0.5, k=50, nearest=(0,) * n, ratio=(0.4,) * n, copy_indices=tuple(range(copies)),
        xp_copy_indices=xp_copies, per_image=(copies, 0, 0, 0), cp_hits=0, cid_hits=0, q_hits=min(n_q, len(xp_copies)),
        q_not_copies=(), cp_others=1, cid_others=0, evenness_p=1.0, xp_copies_with_saf=xp_copies[:1],
        q_hits_with_saf=min(n_q, 1),
        control={"copies": 1, "xp_copies": 0, "n": 200},
    )
    q = tuple(range(n_q))
    return AuditResult(n=n, n_dataset=n_dataset, expected_q=n / n_dataset, n_cp=n_q + 1, n_cid=n_q, n_q=n_q,
                       p_value=0.5, q_indices=q, cp_indices=q, cid_indices=q, mae=float("nan"), mse=float("nan"),
                       copies=check, cp_on_x_p=True, cid_on_x_p=True, saf_accuracy=1.0)


def _probe(t_prime: float, count: str = "1/8"):
    return SimpleNamespace(t_prime_or_zero=t_prime, t_prime_count=count)


def _fid(value: float):
    from safcore.measures.fid import FIDResult

    return FIDResult(value=value, extractor_name="domain-resnet8[breastmnist]", n_real=4, n_fake=4)


def _study(name: str = "breastmnist", *, seed: int = 0, n: int = 8, privatized_mean: float = 0.5):
    generator = torch.Generator().manual_seed(seed)
    samples = torch.rand(n, 1, 8, 8, generator=generator)
    images = torch.rand(4, 1, 8, 8, generator=generator)
    return SimpleNamespace(
        data=SimpleNamespace(name=name), n_dataset=4, control=SimpleNamespace(n_removed=2),
        classifier_accuracies=lambda: {"saf_accuracy": 1.0, "id_accuracy": 0.95},
        samples=lambda: samples, private=SimpleNamespace(x_p=images[1], index=1, images=images),
        privatized=lambda: SimpleNamespace(images=torch.full_like(images, privatized_mean)),
        training_record=lambda: {"epsilon": 0.98},
    )


def test_medmnist_table_and_xp_and_samples():
    from safcore.study import tables

    results = [tables.DatasetResults(_study("breastmnist"), _audit(2, (0, 5)), _probe(0.3), _fid(12.0), _fid(30.0)),
               tables.DatasetResults(_study("pneumoniamnist", seed=1), _audit(0, ()), _probe(0.0, "-"), _fid(5.0),
                                     _fid(6.0))]
    table = tables.medmnist_table(results)
    assert list(table.index) == ["breastmnist", "pneumoniamnist"]
    row = table.loc["breastmnist"]
    assert (row["|N_D|"], row["saf_accuracy"], row["FID_train"], row["FID_test"], row["FID n"]) == (4, 1.0, 12.0, 30.0, 4)
    assert (row["E|q|"], row["|q|"], row["t'"], row["t' k/n"]) == (2.0, 2, 0.3, "1/8")
    assert (row["x_p copies (NN)"], row["with SAF"], row["caught"], row["copies"]) == (2, 1, 2, 3)
    assert (row["copies, held-out"], row["near-duplicates removed"], row["samples unlike data"]) == ("1/200", 2, "—")
    assert row["verdict"] == "reproduces" and row["P(x_p) ≤"] == pytest.approx(results[0].audit.handed_back_interval()[1])
    assert table.loc["pneumoniamnist", "t' k/n"] == "-"
    figure = plotting.xp_and_samples(results)
    assert figure._suptitle.get_text() == "x_p (first column), its q-positives (q) and the x_p copies the adversary missed"
    assert len(figure.axes) == 2 * (1 + 8)  # x_p and the 8 samples per dataset
    first = figure.axes[0].get_ylabel()
    assert first.startswith("breastmnist\n|q| = 2 (E|q| = 2)") and "NN copies 2" in first
    tags = [t.get_text() for ax in figure.axes[:9] for t in ax.texts]
    assert tags == ["q", "q", "missed x_p copy"]  # samples 0, 1 (q) then 5 (missed), right after x_p
    assert not any(ax.texts for ax in figure.axes[9:])


def _defence_results():
    from safcore.defences import CADP, DPSGD
    from safcore.study import tables

    defences = [None, CADP(epsilon=math.inf), CADP(epsilon=1.0), DPSGD(epsilon=1.0)]
    audits = [_audit(2, (0, 1)), _audit(2, (0, 1)), _audit(0, ()), _audit(0, ())]
    utilities = [{"real": 0.8, "samples": 0.7}, {"real": 0.8, "samples": 0.6, "privatized": 0.65},
                 {"real": 0.8, "samples": 0.5, "privatized": 0.5}, {"real": 0.8, "samples": 0.55}]
    probes = [_probe(0.4), _probe(0.4), _probe(0.05), _probe(0.0, "-")]
    return [tables.DefenceResults(d, _study(seed=i), a, p, _fid(f), u, c)
            for i, (d, a, p, f, u, c) in enumerate(zip(defences, audits, probes, [10.0, 11.0, 200.0, 150.0], utilities,
                                                        [3, 3, 0, 0]))]


def test_defences_table_and_figures():
    from safcore.study import tables

    results = _defence_results()
    table = tables.defences_table(results)
    assert list(table["defence"]) == ["none", "CADP", "CADP", "DPSGD"] and list(table["ε"]) == ["—", "∞", "1", "1"]
    assert list(table["|q|"]) == [2, 2, 0, 0] and list(table["copies"]) == [3, 3, 0, 0]
    assert list(table["t' (k/M)"]) == ["0.40 (1/8)", "0.40 (1/8)", "0.05 (1/8)", "0.00 (-)"]
    assert table["utility: privatized"].isna().tolist() == [True, False, False, True]
    assert table["ε spent (DP-SGD)"].tolist()[3] == 0.98 and table["ε spent (DP-SGD)"].isna().tolist()[:3] == [True] * 3
    figure = plotting.defences_vs_epsilon(results, setting="breastmnist, N_D = 4 (smoke)")
    left, middle, right = figure.axes
    assert [ax.get_title() for ax in figure.axes] == ["x_p handed back", "Algorithm 1: t'", "image quality (lower = closer)"]
    assert [ax.get_ylabel() for ax in figure.axes] == ["samples (of n)", "t' (diffusion time)", "FID_train (domain features)"]
    assert left.get_xlabel() == "ε per image (CADP) / per model (DP-SGD); ∞ at the right"
    assert [t.get_text() for t in left.get_xticklabels()] == ["1", "∞"] and right.get_yscale() == "log"
    assert figure._suptitle.get_text() == (
        "breastmnist, N_D = 4 (smoke): undefended, x_p comes back 2× in 8 samples;\nit stops with CADP at ε ≤ 1 "
        "(there 0/8 samples still copy a training image) and DPSGD at ε ≤ 1 (there 0/8 samples still copy a training "
        "image); FID 10.0 → up to 200.0")
    images = plotting.defence_images(results)
    assert len(images.axes) == 8
    assert [ax.get_title() for ax in images.axes[:4]] == ["x_p (with SAF)", "CADP ε=∞", "CADP ε=1", "DP-SGD ε=1: x_p"]
    assert [ax.get_title() for ax in images.axes[4:]] == ["q-positive (|q|=2)"] * 2 + ["nearest, no q"] * 2
    assert images.axes[1].images[0].get_array().mean() == pytest.approx(0.5)  # CADP's privatized x_p
    with pytest.raises(ValueError, match="undefended"):
        plotting.defences_vs_epsilon(results[1:], setting="x")


def _peer(auc: float, interval: tuple[float, float]) -> dict:
    return {"auc": auc, "auc_interval": list(interval), "tprs": [None, None], "tpr_intervals": [None, None]}


def _peers(samples: int, control: int) -> dict:
    def criterion(k):
        return {"samples": k, "n": 8, "control": control, "n_control": 100}

    return {"copy_criteria": {"audit": criterion(samples), "carlini_0.5": criterion(samples // 2), "dar_pixel": criterion(1),
                              "gu": criterion(0), "control_set": {"n_removed": 3}},
            "distinct_extracted": samples // 2, "mia_loss": _peer(0.9, (0.7, 0.97)), "mia_secmi": _peer(0.6, (0.4, 0.8)),
            "mia_pia": _peer(0.55, (0.3, 0.75)), "n_nonmembers": 8, "nonmember_pool": {"n_removed": 1}}


def test_peers_table_and_figure():
    from safcore.measures.canaries import CanaryAudit
    from safcore.study import tables

    canary = CanaryAudit(m=4, k_plus=2, k_minus=2, r=4, v=3, epsilon=0.25, delta=1e-5, confidence=0.95)
    results = [tables.PeerResults(8, _audit(2, (0, 1)), _probe(0.4), _peers(6, 1), canary),
               tables.PeerResults(16, _audit(0, (), n_dataset=16), _probe(0.0, "-"), _peers(0, 0), canary)]
    table = tables.peers_table(results)
    assert list(table.index) == [8, 16]
    row = table.loc[8]
    assert (row["copies (audit rule)"], row["Carlini 0.5"], row["distinct extracted"]) == ("6/8 | 1/100", "3/8 | 1/100", 3)
    assert (row["MIA loss AUC"], row["loss TPR@1%"], row["canary ε ≥"], row["canary v/r (m)"]) == (
        "0.90 [0.70, 0.97]", "—", 0.25, "3/4 (4)")
    assert row["near-duplicates removed (non-members | control)"] == "1 | 3" and table.loc[16, "E|q|"] == 0.5
    assert tables.tpr_text({"tprs": [0.5], "tpr_intervals": [(0.25, 0.75)]}) == "0.50 [0.25, 0.75]"
    figure = plotting.peers_vs_n_d(results, setting="breastmnist (smoke)")
    assert [ax.get_title() for ax in figure.axes] == ["memorization in samples", "MIA (loss attack), 95 % CI",
                                                      "SAF indicators"]
    assert all(ax.get_xlabel() == "N_D (training images)" for ax in figure.axes)
    assert [ax.get_ylabel() for ax in figure.axes] == ["fraction of samples", "AUC", "t' / ε"]
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["8", "16"]
    assert figure.axes[0].lines[0].get_ydata().tolist() == [0.75, 0.0]
    assert figure._suptitle.get_text() == (
        "breastmnist (smoke): from N_D = 8 to 16, samples copying training images fall from 75% to 0% "
        "(held-out control ≤ 1.0%), MIA AUC from 0.90 to 0.90, t' from 0.40 to 0.00")
