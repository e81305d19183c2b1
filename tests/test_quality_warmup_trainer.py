"""The warm-up inside nnUNetv2_train: g trains, is checkpointed, resumes mid-warm-up, freezes, is measured."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import PHANTOM_ID
from nnunet_qg.experiments.trainers.nnUNetTrainerQGDrift import (DRIFT_PREDICTORS, DRIFT_VARIANTS,
                                                                 drift_predictor_file, drift_stage_checkpoint)
from nnunet_qg.quality.network import load_quality_predictor
from nnunet_qg.quality_control.case_agreement import SELF_ESTIMATE, agreement_on_cases, pooled_agreement
from nnunet_qg.quality_control.scoring import CaseScorer, QualityControlError

DATASET = f"Dataset{PHANTOM_ID:03d}_Phantom"
TRAINER = "nnUNetTrainerQGWarmup_debug"  # 4 epochs x 3 iterations, warm-up = epochs 0 and 1
pytestmark = pytest.mark.full  # trainings of their own; the fast tier's g is checked in test_quality_predictor.py


def test_warmup_kill_resume_freeze_and_measure(trained_models):
    """The session's model: nnUNetv2_train killed after its first checkpoint, resumed with --c."""
    model = trained_models.get(TRAINER)
    fold = model.fold
    interrupted = torch.load(model.interrupted, weights_only=False)
    assert interrupted["current_epoch"] == 1  # killed inside the warm-up (epochs 0 and 1)
    assert interrupted["ssl_state"]["quality"]["frozen"] is False

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


def test_several_quality_steps_per_warmup_iteration(trained_models):
    """quality_steps_per_iteration = 2: g's optimizer steps twice per warm-up iteration, then g is frozen."""
    fold = trained_models.get("nnUNetTrainerQGWarmup_debug2gSteps").fold
    final = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    quality = final["ssl_state"]["quality"]
    assert quality["frozen"] is True
    assert {int(s["step"]) for s in quality["optimizer"]["state"].values()} == {12}  # 2 epochs x 3 iterations x 2
    assert np.isfinite(final["logging"]["qg_train_loss"][:2]).all()


def test_warmup_measures_the_teacher_and_the_bias(trained_models):
    """g is judged on the EMA teacher's predictions too (what PL-QW weights), with the bias logged."""
    fold = trained_models.get(TRAINER).fold
    logged = torch.load(fold / "checkpoint_final.pth", weights_only=False)["logging"]
    for kind in ("real", "teacher", "corrupted"):
        for metric in ("mae", "bias"):
            values = np.array(logged[f"qg_val_{kind}_{metric}"])
            assert len(values) == 4 and np.isfinite(values).all(), (kind, metric)
    # the bias is signed: on corrupted masks (identities score Dice 1, catastrophic ones 0) g errs both ways, so
    # |bias| < MAE in some epoch (an unsigned "bias" would equal the MAE in every epoch)
    assert (np.abs(logged["qg_val_corrupted_bias"]) < np.array(logged["qg_val_corrupted_mae"]) - 1e-6).any()
    # the teacher's masks are the teacher's: its figures differ from the student's in some epoch (they would be
    # equal in every epoch if the student's logits were measured twice)
    assert (np.array(logged["qg_val_teacher_mae"]) != np.array(logged["qg_val_real_mae"])).any()
    report = json.loads((fold / "quality_warmup_metrics.json").read_text())
    assert set(report) == {"real", "teacher", "corrupted", "epoch"}


def test_drift_trainer_judges_quality_predictors_side_by_side(trained_models):
    """Nine g and the network's self-estimate on one network run; state survives in the checkpoint;
    every g is exported at the end and judged on whole held-out cases."""
    model = trained_models.get("nnUNetTrainerQGDrift_debug")  # 4 epochs x 3 iterations, warm-up = epochs 0 and 1
    fold = model.fold
    drift = json.loads((fold / "quality_drift.json").read_text())
    assert [e["epoch"] for e in drift["epochs"]] == [0, 1, 2, 3] and drift["warmup_epochs"] == 2
    for epoch in drift["epochs"]:
        for variant in DRIFT_VARIANTS:
            assert set(epoch[variant]) == {"real", "teacher", "corrupted"}
        if epoch["warmup"]:  # until the warm-up ends the refreshed g is the paper's g itself
            assert epoch["refreshed"] == epoch["frozen"]
        # the network's self-estimate is its own figure, no g's (a MAE in [0, 1] would be true by arithmetic)
        self_mae = epoch["self_estimate"]["real"]["mean"]["mae"]
        assert np.isfinite(self_mae) and all(self_mae != epoch[v]["real"]["mean"]["mae"] for v in DRIFT_PREDICTORS)
    assert drift["epochs"][-1]["refreshed"] != drift["epochs"][-1]["frozen"]
    assert drift["epochs"][-1]["ranked"] != drift["epochs"][-1]["frozen"]
    assert (fold / "quality_drift.png").stat().st_size > 1000

    state = torch.load(fold / "checkpoint_final.pth", weights_only=False)["ssl_state"]
    trainers = {"frozen": state["quality"], "refreshed": state["refreshed"], **state["drift_extra"]}
    steps = {name: {int(s["step"]) for s in t["optimizer"]["state"].values()} for name, t in trainers.items()}
    # warm-up: 2 epochs x 3 iterations for every g (x 4 steps for multistep); afterwards the refreshed ones
    # learn every 2nd of 6 steps
    assert steps == {"frozen": {6}, "corruptions_only": {6}, "refreshed": {9}, "ranked": {9},
                     "ranked_multiscale": {9}, "belief": {9}, "full_resolution": {9}, "multistep": {27},
                     "with_self_estimate": {9}}
    assert all(t["frozen"] for t in trainers.values())
    assert len(state["drift_history"]) == 4
    for name, t in trainers.items():  # exported at the end of training, as they were then
        exported = load_quality_predictor(str(fold / drift_predictor_file(name))).state_dict()
        assert all(torch.equal(v, t["model"][k]) for k, v in exported.items())

    raw = Path(model.env["nnUNet_raw"]) / DATASET
    predictors = {name: load_quality_predictor(str(fold / drift_predictor_file(name))) for name in ("frozen", "belief")}
    assert predictors["belief"].uses_belief and not predictors["frozen"].uses_belief
    cases = agreement_on_cases(str(fold.parent), 0, "checkpoint_final.pth", str(raw / "imagesTs"),
                               str(raw / "labelsTs"), predictors, torch.device("cpu"))
    assert set(cases) == {"frozen", "belief", SELF_ESTIMATE}
    for name, result in cases.items():
        predicted, true = result["pairs"]
        assert predicted.shape == true.shape == (2, 2)  # 2 test cases x 2 labels
        assert ((0 <= predicted) & (predicted <= 1)).all() and ((0 <= true) & (true <= 1)).all()
        assert result["mean"]["n"] == 2 and np.isfinite(result["mean"]["mae"])
    assert not np.allclose(cases["frozen"]["pairs"][0], cases["belief"]["pairs"][0])
    # the networks kept after early epochs (5-40 % of 4 epochs: after epochs 0 and 1) predict the same cases,
    # pooled with the final network's: the wide band of qualities
    assert sorted(p.name for p in fold.glob("checkpoint_epoch_*.pth")) == [drift_stage_checkpoint(0),
                                                                            drift_stage_checkpoint(1)]
    early = agreement_on_cases(str(fold.parent), 0, drift_stage_checkpoint(0), str(raw / "imagesTs"),
                               str(raw / "labelsTs"), predictors, torch.device("cpu"))
    pooled = pooled_agreement({"epoch 0": early, "final": cases})
    for name in cases:
        predicted, true = pooled[name]["pairs"]
        assert predicted.shape == true.shape == (4, 2) and pooled[name]["mean"]["n"] == 4
        assert np.array_equal(true, np.concatenate([early[name]["pairs"][1], cases[name]["pairs"][1]]))
    kept = torch.load(fold / drift_stage_checkpoint(0), weights_only=False)
    final = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    assert kept["current_epoch"] == 1 and final["current_epoch"] == 4  # epochs done when written
    assert "ssl_state" not in kept and "ssl_state" in final  # nnU-Net's own checkpoint: the network, no g
    assert any(not torch.equal(v, final["network_weights"][k]) for k, v in kept["network_weights"].items())
    # quality control scores segmentations without the network's softmax: a belief g is refused clearly
    scorer = CaseScorer(str(fold.parent), [0], models=[predictors["belief"]])
    label = next((raw / "labelsTs").iterdir())
    image = raw / "imagesTs" / label.name.replace(".nii.gz", "_0000.nii.gz")
    seg, _ = scorer.plans_manager.image_reader_writer_class().read_seg(str(label))
    with pytest.raises(QualityControlError, match="belief=True"):
        scorer.score([str(image)], seg)
