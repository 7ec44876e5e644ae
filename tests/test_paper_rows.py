"""The paper's Tab. 2 rows, the projection of a paper-profile row and the printed comparison."""

from __future__ import annotations

import pytest

from safcore.study.paper_rows import PAPER_TAB2, PAPER_TAB2_SAMPLES, projection, row_beside_paper


def test_retinamnist_row_is_the_papers():
    row = PAPER_TAB2["retinamnist"]
    assert (row.n_dataset, row.expected_q, row.n_q, row.t_prime) == (1080, 46.3, 52, 0.998)
    assert PAPER_TAB2_SAMPLES / row.n_dataset == pytest.approx(row.expected_q, abs=0.05)  # E|q| = n / N_D


@pytest.fixture(scope="module")
def timed():
    return projection("retinamnist", timed_steps=1, batch=2)  # the paper U-Net, built and timed once


def test_projection_scales_timed_steps_to_the_paper_profile(timed):
    p = timed
    from safcore.study.profiles import PAPER

    assert p.train_s == pytest.approx(p.train_step_s * PAPER.train.steps)
    assert p.sample_s == pytest.approx(p.nfe_image_s * PAPER_TAB2_SAMPLES * PAPER.sample_steps)
    # M = 16 reverse runs from each t = 0.01 … 0.99 with the profile's dpm2m_sde_t at 100 steps per full run (a grid
    # uniform in t): a run from t takes ⌈100 (t − ε)/(1 − ε)⌉ = 100 t steps, a tenth of Euler–Maruyama 1000's
    assert PAPER.probe.method == "dpm2m_sde_t" and PAPER.probe.steps_full == 100
    assert p.probe_nfe == 16 * sum(range(1, 100)) == 79_200
    assert p.total_s > 3600 and "≈" in p.describe() and "training" in p.describe()
    with pytest.raises(ValueError, match="has no row in the paper's Tab. 2; allowed: retinamnist"):
        projection("dermamnist")


def test_row_beside_paper_prints_both_rows():
    record = {"n_dataset": 1080, "saf_accuracy": 0.99, "id_accuracy": 1.0, "fid_train": 3.0, "fid_test": 9.5,
              "fid_extractor": "domain-resnet8[retinamnist]", "expected_q": 46.3, "n_q": 40, "t_prime": 0.95,
              "t_prime_count": "3/16", "xp_copies_nn": 44, "verdict": "reproduces"}
    text = row_beside_paper("retinamnist", record).splitlines()
    assert len(text) == 3 and "paper (Inception FID)" in text[1] and "0.998" in text[1] and "52" in text[1]
    assert "0.950 (3/16)" in text[2] and "reproduces" in text[2] and "99.0" in text[2]


def test_tab2_command_without_a_gpu_says_how_long_and_stops(capsys, monkeypatch, timed):
    from safcore.study import paper_rows
    from safcore.__main__ import main

    monkeypatch.setattr(paper_rows, "projection", lambda *a, **k: timed)  # timed once above

    assert main(["tab2", "--dataset", "retinamnist", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("retinamnist at the paper profile, 50,000 samples: ≈ ") and " h on cpu (training " in out
    assert "No GPU here: stopped." in out
    assert main(["tab2", "--n", "0"]) == 2 and "--n = 0; allowed: an integer ≥ 1" in capsys.readouterr().err
