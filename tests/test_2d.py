"""The 2D path end to end: RGB images through NaturalImage2DIO (real PH2, downscaled), and the 2d configuration
of a 3D dataset (slices), each trained with QG-SSL, predicted and evaluated."""
import json
from pathlib import Path

import pytest

from conftest import (PH2_DATASET, PH2_ID, PHANTOM_DATASET, PHANTOM_ID, TrainedModel, plan_and_preprocess,
                      requires_ph2, run_cli, train_model)

TRAINER = "nnUNetTrainerQGSSL_debug"


def _check_training(model: TrainedModel) -> None:
    """The QG-SSL phases ran and the model folder holds g and the SSL curves."""
    assert model.trainer == TRAINER
    assert "Quality predictor after warm-up" in model.stdout and "Quality predictor frozen" in model.stdout
    assert (model.fold / "quality_predictor.pth").is_file() and (model.fold / "progress_ssl.png").is_file()


def _predict_and_evaluate(env, dataset_id: int, dataset: str, tmp_path: Path) -> dict:
    """The test cases predicted with stock nnUNetv2_predict (2d, fold 0) and evaluated against labelsTs."""
    raw = Path(env["nnUNet_raw"]) / dataset
    out = tmp_path / "pred"
    run_cli(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", str(dataset_id), "-c", "2d",
             "-f", "0", "-tr", TRAINER, "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"], env)
    run_cli(["nnUNetv2_evaluate_folder", str(raw / "labelsTs"), str(out), "-djfile", str(out / "dataset.json"),
             "-pfile", str(out / "plans.json"), "-np", "1"], env)
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == len(list((raw / "labelsTs").iterdir()))
    assert 0.0 <= summary["foreground_mean"]["Dice"] <= 1.0
    return summary


@pytest.mark.full
@requires_ph2
def test_ph2_rgb_2d_end_to_end(ph2_model, tmp_path):
    """The session's PH2 model (conftest.ph2_model: converted, planned, preprocessed, trained once)."""
    env = ph2_model.env
    plans = json.loads((Path(env["nnUNet_preprocessed"]) / PH2_DATASET / "nnUNetPlans.json").read_text())
    assert plans["image_reader_writer"] == "NaturalImage2DIO"
    _check_training(ph2_model)
    _predict_and_evaluate(env, PH2_ID, PH2_DATASET, tmp_path)


@pytest.mark.full
def test_2d_configuration_of_a_3d_dataset(phantom_copy, tmp_path):
    plan_and_preprocess(PHANTOM_ID, phantom_copy, "2d")
    model = train_model(phantom_copy, PHANTOM_ID, PHANTOM_DATASET, "2d", TRAINER)
    _check_training(model)
    _predict_and_evaluate(phantom_copy, PHANTOM_ID, PHANTOM_DATASET, tmp_path)
