"""The 2D path end to end: RGB images through NaturalImage2DIO (real PH2, downscaled), and the 2d configuration
of a 3D dataset (slices), each trained with QG-SSL, predicted and evaluated."""
import json
from pathlib import Path

import numpy as np
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
    # each prediction has its reference's geometry, and nnU-Net's Dice is the Dice of the files (numpy, here)
    reader = _reader(out / "plans.json")
    for case in summary["metric_per_case"]:
        pred, _ = reader.read_seg(case["prediction_file"])
        ref, _ = reader.read_seg(case["reference_file"])
        assert pred.shape == ref.shape, (case["prediction_file"], pred.shape, ref.shape)
        for label, metrics in case["metrics"].items():
            a, b = pred == int(label), ref == int(label)
            total = int(a.sum() + b.sum())
            if total:
                assert metrics["Dice"] == pytest.approx(2 * np.logical_and(a, b).sum() / total, abs=1e-6)
    return summary


def _reader(plans_file: Path):
    """The dataset's image reader, as nnU-Net's evaluation picks it from the plans."""
    from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name

    return recursive_find_reader_writer_by_name(json.loads(plans_file.read_text())["image_reader_writer"])()


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
