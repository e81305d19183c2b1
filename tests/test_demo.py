"""The README's first command, in its smallest setting (what CI runs)."""
import json

from conftest import nnunet_env, run_cli


def test_demo_smoke(tmp_path):
    env = nnunet_env(tmp_path / "unused")  # the demo sets its own nnU-Net folders under --output
    out = tmp_path / "demo"
    proc = run_cli(["nnUNetv2_qg_demo", "--smoke", "--output", str(out)], env, timeout=1200)
    for stage in range(1, 7):
        assert f"[{stage}/6]" in proc.stdout
    summary = json.loads((out / "predictions" / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == 2
    mean_dice = summary["foreground_mean"]["Dice"]
    assert f"{mean_dice:>8.4f}" in proc.stdout and 0.0 <= mean_dice <= 1.0
    assert (out / "nnUNet_results" / "Dataset901_Phantom" / "nnUNetTrainerQGSSL_debug__nnUNetPlans__3d_fullres"
            / "fold_0" / "progress_ssl.png").is_file()
