"""The demo command end to end at the smoke profile (the README's main job, scaled down).

It uses the default run store (``runs/``), so the notebooks that nbval runs afterwards reuse the
smoke models instead of training them again.
"""

import json

from safcore.__main__ import main


def test_demo_command_writes_a_report(tmp_path, data_root, capsys):
    out = tmp_path / "report"
    assert main(["demo", "--profile", "smoke", "--data-root", str(data_root), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "E|q|" in printed and "t' = " in printed
    for name in ("report.md", "report.md.json", "summary.json", "q_curve.png", "q_positives.png", "samples.png",
                 "copies_per_image.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["audit"]["N_D"] == 8 and summary["audit"]["n"] == 32
    assert summary["audit"]["|q|"] <= min(summary["audit"]["|c_p+|"], summary["audit"]["|c_id+|"])
    assert 0.0 <= summary["id_accuracy"] <= 1.0 and summary["nfe"] > 0
    # the verdict, the bound and the independent copy count are in the report, not only |q|
    assert summary["verdict"]["kind"] in ("inconclusive", "reproduces", "not_observed", "unlike_data")
    assert summary["q_upper_95"] >= summary["audit"]["|q|"] / 32
    check = summary["copy_check"]
    assert len(check["per_image"]) == 8 and sum(check["per_image"]) == check["copies"]
    assert check["caught"] <= check["x_p_copies"] and summary["c_p_on_x_p"] in (True, False)
    assert len(summary["t_prime_runs"]) == 3 and summary["eq9_indicator"] > 0
    report = (out / "report.md").read_text()
    assert summary["verdict"]["headline"] in report and "independent copy count" in report
    assert "Eq. 9 indicator" in report and "Darboux" not in report
    manifest = json.loads((out / "report.md.json").read_text())
    assert manifest["config"]["profile"] == "smoke" and manifest["seed"] == 0 and manifest["revision"]


def test_demo_rejects_unknown_profile(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["demo", "--profile", "huge"])
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_study_reuses_the_stored_models(data_root):
    """After the demo, a new Study of the same experiment loads every stage from the run store."""
    from safcore.study import Study

    Study("breastmnist", profile="smoke", data_root=data_root, progress=False).audit()  # made by the demo test
    study = Study("breastmnist", profile="smoke", data_root=data_root, progress=False)
    kinds = ("score_model", "c_p", "c_id", "samples")
    before = {kind: sorted(p.name for p in (study.store.root / kind).iterdir()) for kind in kinds}
    result = study.audit()
    assert {kind: sorted(p.name for p in (study.store.root / kind).iterdir()) for kind in kinds} == before
    manifest = study.store.find("score_model", study.model_config()).manifest
    assert manifest["config"]["train"]["steps"] == study.profile.train.steps and manifest["revision"]
    assert result.n == study.profile.n_samples and result.n_dataset == 8
