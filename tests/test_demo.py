"""The README's first command, in its smallest setting (full tier: `pytest tests --full`)."""
import json

import pytest

from conftest import nnunet_env, run_cli


@pytest.mark.full  # the phantom pipeline is in the fast tier through test_pipeline_phantom.py
def test_demo_smoke(tmp_path):
    env = nnunet_env(tmp_path / "unused")  # the demo sets its own nnU-Net folders under --output
    out = tmp_path / "demo"
    proc = run_cli(["nnUNetv2_qg_demo", "--smoke", "--output", str(out)], env, timeout=1200)
    for stage in range(1, 8):
        assert f"[{stage}/7]" in proc.stdout
    # one progress line per epoch of the 4-epoch debug trainer, the SSL phase named; details only in the log
    epoch_lines = [line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("epoch ")]
    assert [line.split()[1] for line in epoch_lines] == ["1/4", "2/4", "3/4", "4/4"], proc.stdout
    assert "warm-up" in epoch_lines[0] and "PL-QW weight" in epoch_lines[-1] and "pseudo Dice" in epoch_lines[-1]
    assert "SSL:" not in proc.stdout and "SSL:" in (out / "logs" / "train.log").read_text()
    summary = json.loads((out / "predictions" / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == 2
    mean_dice = summary["foreground_mean"]["Dice"]
    assert f"{mean_dice:>8.4f}" in proc.stdout and 0.0 <= mean_dice <= 1.0
    model = out / "nnUNet_results" / "Dataset901_Phantom" / "nnUNetTrainerQGSSL_PLQW_debug__nnUNetPlans__3d_fullres"
    assert (model / "fold_0" / "progress_ssl.png").is_file()
    # stage 7: quality control of both test cases, calibrated on the held-out phantom cases, beside the true Dice
    report = json.loads((out / "quality_control" / "quality.json").read_text())
    assert report["calibration"]["n_cases"] == 12 and "calibrated on 12 cases" in proc.stdout
    assert sorted(c["case"] for c in report["cases"]) == sorted(c["reference_file"].split("/")[-1][:-7]
                                                               for c in summary["metric_per_case"])
    flagged = sum(c["flagged"] for c in report["cases"])
    assert f"{flagged} of 2 case(s) flagged" in proc.stdout
    assert (model / "quality_calibration.json").is_file()
