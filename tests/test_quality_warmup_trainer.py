"""The warm-up inside nnUNetv2_train: g trains, is checkpointed, resumes mid-warm-up, freezes, is measured."""
import json
from pathlib import Path

import numpy as np
import torch

from conftest import PHANTOM_ID, kill_after_first_checkpoint, run_cli
from nnunet_qg.quality.network import load_quality_predictor

DATASET = f"Dataset{PHANTOM_ID:03d}_Phantom"
TRAINER = "nnUNetTrainerQGWarmup_debug"  # 4 epochs x 3 iterations, warm-up = epochs 0 and 1


def test_warmup_kill_resume_freeze_and_measure(phantom_env):
    env = phantom_env
    fold = Path(env["nnUNet_results"]) / DATASET / f"{TRAINER}__nnUNetPlans__3d_fullres" / "fold_0"
    cmd = ["nnUNetv2_train", str(PHANTOM_ID), "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"]
    kill_after_first_checkpoint(cmd, env, fold)  # mid-training
    interrupted = torch.load(fold / "checkpoint_latest.pth", weights_only=False)
    assert interrupted["current_epoch"] == 1  # killed inside the warm-up (epochs 0 and 1)
    assert interrupted["ssl_state"]["quality"]["frozen"] is False

    run_cli(cmd + ["--c"], env)
    final = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    quality = final["ssl_state"]["quality"]
    assert quality["frozen"] is True
    # g's optimizer made one step per warm-up iteration over both runs: 2 epochs x 3 iterations
    steps = {int(s["step"]) for s in quality["optimizer"]["state"].values()}
    assert steps == {6}
    logged = final["logging"]
    assert np.isfinite(logged["qg_train_loss"][:2]).all() and np.isnan(logged["qg_train_loss"][2:]).all()
    assert len(logged["qg_val_real_mae"]) == 4 and np.isfinite(logged["qg_val_corrupted_mae"]).all()
    # after warm-up g is frozen: its weights in the final checkpoint are those of the exported file
    exported = load_quality_predictor(str(fold / "quality_predictor.pth"))
    for k, v in exported.state_dict().items():
        assert torch.equal(v, quality["model"][k].cpu()), k
    report = json.loads((fold / "quality_warmup_metrics.json").read_text())
    assert report["epoch"] == 1 and set(report["real"]) == {"1", "2", "mean"}
    for name in ("quality_calibration.png", "quality_calibration_warmup_end.png", "progress_ssl.png"):
        assert (fold / name).stat().st_size > 1000, name
    # the unlabelled loss starts only after the warm-up
    assert logged["ssl_unlabeled_weight"][:2] == [0.0, 0.0] and logged["ssl_unlabeled_weight"][2] > 0
