"""Every semi-supervised trainer through the real nnUNetv2_train (train, --c, nnUNetv2_predict).

Each trainer's model is trained once per session (conftest.TrainedModels); the fast tier reads QG-SSL's,
the full tier every trainer's and also resumes each finished run with --c and predicts with it."""
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import PHANTOM_DATASET, PHANTOM_ID, run_cli
from nnunet_qg.quality.network import QUALITY_PREDICTOR_FILE, load_quality_predictor

DATASET = PHANTOM_DATASET
FAST = "nnUNetTrainerQGSSL_debug"  # the trainer of the fast tier
TRAINERS = ["nnUNetTrainerQGSSL_debug", "nnUNetTrainerQGSSL_PLQW_debug", "nnUNetTrainerQGSSL_QAR_debug",
            "nnUNetTrainerMTQW_debug", "nnUNetTrainerMeanTeacher_debug", "nnUNetTrainerFixMatch_debug",
            "nnUNetTrainerQGSSL_gFrozen_debug", "nnUNetTrainerQGSSL_lowMemory_debug", "nnUNetTrainerBCP_debug",
            "nnUNetTrainerBCP_QG_debug"]


def _tiered(trainers):
    """FAST in the fast tier, the others in the full tier."""
    return [pytest.param(t, marks=() if t == FAST else pytest.mark.full) for t in trainers]


@pytest.mark.parametrize("trainer", _tiered(TRAINERS))
def test_trainer_trains_every_loss(trained_models, trainer):
    """The session's model of `trainer`: its logged losses, weights and g (read only)."""
    fold = trained_models.get(trainer).fold
    final = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    assert final["current_epoch"] == 4
    log = final["logging"]
    unlabeled = log["ssl_loss_unlabeled"]
    assert np.isfinite(unlabeled).all()
    # the unlabelled path ran for real: its loss is > 0 in the last epoch (with quality weights alone, PL-QW and
    # MT-QW, in some epoch after the warm-up: a refreshed g may come to reject a late epoch's pseudo-labels)
    weights_only = trainer in ("nnUNetTrainerQGSSL_PLQW_debug", "nnUNetTrainerMTQW_debug")
    assert (max(unlabeled[1:]) if weights_only else unlabeled[-1]) > 0, unlabeled
    if trainer.startswith(("nnUNetTrainerQGSSL", "nnUNetTrainerMTQW")):
        assert log["ssl_unlabeled_weight"][0] == 0.0  # warm-up epoch
        if trainer == "nnUNetTrainerQGSSL_PLQW_debug":  # nothing reads g: none is trained, logged or saved
            assert "quality" not in final["ssl_state"] and not (fold / QUALITY_PREDICTOR_FILE).exists()
            assert np.isnan(log["qg_train_loss"]).all() and np.isnan(log["qg_val_real_mae"]).all()
            assert "No quality predictor g" in trained_models.get(trainer).stdout
        else:
            assert final["ssl_state"]["quality"]["frozen"] is True and (fold / QUALITY_PREDICTOR_FILE).is_file()
            assert np.isfinite(log["qg_val_real_mae"]).all()
        if trainer != "nnUNetTrainerQGSSL_QAR_debug":  # quality weights exist where PL-QW (or MT-QW) runs
            assert np.isfinite(log["ssl_loss_plqw"][1:]).all() and max(log["ssl_loss_plqw"][1:]) > 0
            assert np.array_equal(log["ssl_quality_nonfinite"][1:], [0.0] * 3)  # the scores are finite
        if trainer in ("nnUNetTrainerQGSSL_debug", "nnUNetTrainerQGSSL_QAR_debug", "nnUNetTrainerQGSSL_lowMemory_debug"):
            assert math.isnan(log["ssl_loss_qar"][1]) and np.isfinite(log["ssl_loss_qar"][2:]).all()
    if trainer == "nnUNetTrainerQGSSL_debug":  # g kept learning after the warm-up (every 2nd step)
        assert np.isfinite(log["qg_train_loss"]).all() and final["ssl_state"]["quality"]["frozen"] is True
        # ... and quality control gets that g, not the warm-up's
        exported = load_quality_predictor(str(fold / QUALITY_PREDICTOR_FILE)).state_dict()
        assert all(torch.equal(v, final["ssl_state"]["quality"]["model"][k]) for k, v in exported.items())
    if trainer == "nnUNetTrainerQGSSL_gFrozen_debug":  # the paper's g: no step after the warm-up epoch
        assert np.isfinite(log["qg_train_loss"][0]) and np.isnan(log["qg_train_loss"][1:]).all()
    if trainer.startswith("nnUNetTrainerBCP"):  # nnU-Net's step in epoch 0, the copy-paste step afterwards
        assert log["ssl_unlabeled_weight"][0] == 0.0 and np.isfinite(log["ssl_loss_plqw"][1:]).all()
        assert "quality" not in final["ssl_state"] and final["ssl_state"]["box_rng"] is not None
        quality = np.array(log["ssl_pseudo_label_quality"][1:])
        assert (quality == 1).all() if trainer == "nnUNetTrainerBCP_debug" else (quality < 1).all(), quality
    if trainer == "nnUNetTrainerFixMatch_debug":
        assert log["ssl_pseudo_label_kept"][-1] > 0  # the teacher is confident somewhere (its loss is > 0 above)
    assert (fold / "progress_ssl.png").is_file()


@pytest.mark.full
def test_the_shipped_threshold_keeps_pseudo_labels_of_a_trained_model(trained_models):
    """The demo's PL-QW (the README's trainer, its shipped tau = 0.5, 16 epochs on the phantom): once the teacher
    segments, its mirror agreement keeps pseudo-labels (a score that rejects everything would leave PL-QW's loss
    at 0), and weighs them unequally (a score that is 1 everywhere would not)."""
    model = trained_models.get("nnUNetTrainerQGSSL_PLQW_demo")
    final = torch.load(model.fold / "checkpoint_final.pth", weights_only=False)
    log = final["logging"]
    trainer = __import__("nnunet_qg.trainers", fromlist=["x"]).nnUNetTrainerQGSSL_PLQW_demo
    assert trainer.short_overrides.get("quality_threshold", 0.5) == 0.5
    late = slice(-4, None)
    assert np.nanmin(log["ssl_teacher_val_dice"][late]) > 0.5, log["ssl_teacher_val_dice"]
    kept = np.array(log["ssl_pseudo_label_kept"][late])
    assert (kept > 0.2).all(), kept
    assert (np.array(log["ssl_loss_plqw"][late]) > 0).all()
    quality, weight = np.array(log["ssl_pseudo_label_quality"][late]), np.array(log["ssl_quality_weight_mean"][late])
    assert (quality < 0.999).all(), quality  # the teacher disagrees with its mirror images somewhere
    ess = np.array(log["ssl_quality_weight_ess"][late])  # of batches of 2 (ShortSchedule's cap): 2 = equal weights
    assert (ess < 2 - 1e-3).any() and (weight > 0).all(), (ess, weight)


@pytest.mark.full
@pytest.mark.parametrize("trainer", TRAINERS)
def test_trainer_resumes_a_finished_run_and_predicts(trained_models, tmp_path, trainer):
    """--c on a finished run (a copy of the session's model) loads every state and re-validates; then
    nnUNetv2_predict (and for QG-SSL the EMA teacher exported as a network)."""
    env = trained_models.get(trainer).copy_to(tmp_path)
    fold = Path(env["nnUNet_results"]) / DATASET / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0"
    first = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    cmd = ["nnUNetv2_train", str(PHANTOM_ID), "3d_fullres", "0", "-tr", trainer, "-device", "cpu", "--c"]
    resumed = run_cli(cmd, env)  # finished run: loads every state and re-validates
    assert "Training done." in resumed.stdout
    final = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    assert final["current_epoch"] == first["current_epoch"] == 4
    assert torch.equal(final["ssl_state"]["teacher"]["num_updates"], first["ssl_state"]["teacher"]["num_updates"])

    raw = Path(env["nnUNet_raw"]) / DATASET
    checkpoints = ["checkpoint_final.pth"]
    if trainer == "nnUNetTrainerQGSSL_debug":  # the EMA teacher as the exported network
        run_cli(["nnUNetv2_qg_export_teacher", str(fold / "checkpoint_final.pth")], env)
        teacher = torch.load(fold / "checkpoint_final_teacher.pth", weights_only=False)["network_weights"]
        assert all(torch.equal(v, final["ssl_state"]["teacher"]["module." + k]) for k, v in teacher.items())
        assert not all(torch.equal(v, final["network_weights"][k]) for k, v in teacher.items())
        checkpoints.append("checkpoint_final_teacher.pth")
    for checkpoint in checkpoints:
        out = tmp_path / checkpoint
        run_cli(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", str(PHANTOM_ID), "-c",
                 "3d_fullres", "-f", "0", "-tr", trainer, "-device", "cpu", "--disable_tta", "-npp", "1", "-nps",
                 "1", "-chk", checkpoint], env)
        for ref in (raw / "labelsTs").iterdir():
            pred = sitk.GetArrayFromImage(sitk.ReadImage(str(out / ref.name)))
            assert pred.shape == sitk.GetArrayFromImage(sitk.ReadImage(str(ref))).shape
