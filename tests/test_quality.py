"""The sample-quality gate: known answers on real BreastMNIST (grey) and RetinaMNIST (RGB) images.

Passes: an exact memorizer (its samples are the training images) and a good model (its samples are other
real images of the dataset it never saw). Fails: uniform noise, all-black images, a model whose colour
channels are swapped. The verdict leads with a failed gate.
"""

from __future__ import annotations

import pytest
import torch

from safcore.audit.sample_audit import AuditResult
from safcore.measures.control import held_out
from safcore.data.datasets import load_dataset, to_unit_tensor
from safcore.measures.extractor_training import DomainExtractorConfig, domain_extractor
from safcore.measures.quality import MIN_CONTROL, SampleQuality, pixel_statistics, sample_quality

N = 128  # samples per known-answer case
FAST = DomainExtractorConfig(max_steps=120)  # a shorter-trained extractor keeps the module at a few seconds


def _setup(flag: str, data_root, cache) -> dict:
    data = load_dataset(flag, root=data_root)
    train = to_unit_tensor(data.split("train"))
    training = train[:16]  # the "model's" training set D_p
    control = held_out(torch.cat([to_unit_tensor(data.split("val")), to_unit_tensor(data.split("test"))]), training)
    g = torch.Generator().manual_seed(0)
    return {
        "data": data,
        "training": training,
        "control": control.images,
        "extractor": domain_extractor(data, cache, config=FAST),
        "memorizer": training[torch.randint(len(training), (N,), generator=g)],
        "good model": train[16 : 16 + N],  # real images of the dataset that neither the model nor the control holds
        "noise": torch.rand(N, *training.shape[1:], generator=g),
        "all black": torch.zeros(N, *training.shape[1:]),
    }


@pytest.fixture(scope="module")
def breast(data_root, tmp_path_factory):
    torch.manual_seed(0)
    return _setup("breastmnist", data_root, tmp_path_factory.mktemp("extractors"))


@pytest.fixture(scope="module")
def retina(data_root, tmp_path_factory):
    torch.manual_seed(0)
    return _setup("retinamnist", data_root, tmp_path_factory.mktemp("extractors"))


def _judge(case: dict, samples: torch.Tensor) -> SampleQuality:
    return sample_quality(samples, case["control"], case["extractor"], training=case["training"])


@pytest.mark.parametrize("flag", ["breast", "retina"])
@pytest.mark.parametrize("kind", ["memorizer", "good model"])
def test_real_images_pass_the_gate(flag, kind, request):
    case = request.getfixturevalue(flag)
    quality = _judge(case, case[kind])
    assert quality.passed, quality.describe()
    assert quality.unlike_fraction <= 0.1 and quality.training_unlike[0] <= 1
    assert quality.describe().startswith("The samples are like real images of the dataset")


@pytest.mark.parametrize("flag", ["breast", "retina"])
@pytest.mark.parametrize("kind", ["noise", "all black"])
def test_noise_and_black_frames_fail_the_gate(flag, kind, request):
    case = request.getfixturevalue(flag)
    quality = _judge(case, case[kind])
    assert not quality.passed
    assert quality.n_unlike == N  # every one of them lies outside the range of real images
    assert quality.describe().startswith("The model under audit does not generate images like its training data: "
                                         f"{N} of {N} samples (100%) lie outside the range of real held-out images")
    if kind == "all black":
        assert quality.too_saturated and quality.saturated == 1.0


def test_a_model_whose_colour_channels_are_swapped_fails(retina):
    swapped = retina["good model"][:, [2, 1, 0]]  # RGB → BGR: real fundus images in the wrong channels
    quality = _judge(retina, swapped)
    assert not quality.passed and quality.unlike_fraction > 0.9
    # the red channel dominates real fundus images; the swapped samples put it in blue
    assert quality.reference_mean[0] > quality.reference_mean[2] and quality.channel_mean[2] > quality.channel_mean[0]


def test_held_out_images_are_called_unlike_at_most_at_alpha(breast):
    quality = _judge(breast, breast["control"])  # the control judged by its own rule (half of it set the threshold)
    assert quality.passed and quality.n_unlike <= 0.02 * quality.n
    assert quality.n_calibration + quality.n_fit == len(breast["control"])


def test_pixel_statistics_are_means_spreads_and_saturation():
    x = torch.zeros(2, 3, 4, 4)
    x[0, 0] = 1.0  # red channel white
    x[1, 1, :2] = 0.5  # half of the green channel grey
    stats = pixel_statistics(x)
    assert stats.shape == (2, 9)
    assert stats[0, :3].tolist() == [1.0, 0.0, 0.0] and stats[0, 6:].tolist() == [1.0, 1.0, 1.0]
    assert stats[1, 1] == pytest.approx(0.25) and stats[1, 7] == pytest.approx(0.5)


def _quality(passed: bool) -> SampleQuality:
    unlike = () if passed else tuple(range(200))
    return SampleQuality(n=256, unlike_indices=unlike, threshold=100.0, n_fit=115, n_calibration=116, alpha=0.01,
                         training_unlike=(0, 16), fid=4000.0, fid_control=0.8, fid_n=115, extractor_name="domain",
                         channel_mean=(0.5,), channel_std=(0.29,), saturated=0.01, reference_mean=(0.34,),
                         reference_std=(0.18,), reference_saturated=0.01)


def _result(n_q: int, quality: SampleQuality) -> AuditResult:
    return AuditResult(n=256, n_dataset=16, expected_q=16.0, n_cp=n_q, n_cid=n_q, n_q=n_q, p_value=0.5,
                       q_indices=tuple(range(n_q)), cp_indices=tuple(range(n_q)), cid_indices=tuple(range(n_q)),
                       mae=0.0, mse=0.0, quality=quality)


def test_a_failed_gate_leads_the_verdict():
    verdict = _result(0, _quality(False)).verdict()
    assert verdict.kind == "unlike_data"
    assert verdict.headline.startswith("The model under audit does not generate images like its training data: 200 of 256")
    assert "says nothing about x_p's privacy" in verdict.headline
    # a copy found is never hidden behind the gate: it still reproduces, the gate's finding comes first
    found = _result(3, _quality(False)).verdict()
    assert found.kind == "reproduces" and found.headline.startswith("The model under audit does not generate")
    assert "Even so: the model hands back x_p in at least 3 of 256" in found.headline
    # a passed gate changes nothing
    assert _result(0, _quality(True)).verdict().kind == "not_observed"
    assert _result(0, _quality(True)).to_row()["samples unlike data"] == "0/256"


def test_bad_input_is_named(breast):
    with pytest.raises(ValueError, match=f"at least {MIN_CONTROL} held-out images; got 5"):
        sample_quality(breast["noise"], breast["control"][:5], breast["extractor"])
    with pytest.raises(ValueError, match=r"samples are \(3, 28, 28\).*\(1, 28, 28\)"):
        sample_quality(torch.rand(4, 3, 28, 28), breast["control"], breast["extractor"])
    with pytest.raises(ValueError, match="alpha = 1.5; allowed"):
        sample_quality(breast["noise"], breast["control"], breast["extractor"], alpha=1.5)
