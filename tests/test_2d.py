"""The 2D path end to end: RGB images through NaturalImage2DIO (real PH2), and the 2d configuration
of a 3D dataset (slices), each trained with QG-SSL, predicted and evaluated."""
import json
from pathlib import Path

import pytest

from conftest import PHANTOM_ID, SHARED_DATA, nnunet_env, run_cli

PH2_REAL = SHARED_DATA / "ph2"


def _train_predict_evaluate(env, dataset_id: int, dataset: str, tmp_path: Path) -> dict:
    trainer = "nnUNetTrainerQGSSL_debug"
    train = run_cli(["nnUNetv2_train", str(dataset_id), "2d", "0", "-tr", trainer, "-device", "cpu"], env, timeout=1500)
    assert "Quality predictor after warm-up" in train.stdout and "Quality predictor frozen" in train.stdout
    fold = Path(env["nnUNet_results"]) / dataset / f"{trainer}__nnUNetPlans__2d" / "fold_0"
    assert (fold / "quality_predictor.pth").is_file() and (fold / "progress_ssl.png").is_file()
    raw = Path(env["nnUNet_raw"]) / dataset
    out = tmp_path / "pred"
    run_cli(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", str(dataset_id), "-c", "2d",
             "-f", "0", "-tr", trainer, "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"], env)
    run_cli(["nnUNetv2_evaluate_folder", str(raw / "labelsTs"), str(out), "-djfile", str(out / "dataset.json"),
             "-pfile", str(out / "plans.json"), "-np", "1"], env)
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == len(list((raw / "labelsTs").iterdir()))
    assert 0.0 <= summary["foreground_mean"]["Dice"] <= 1.0
    return summary


@pytest.mark.full
def test_ph2_rgb_2d_end_to_end(tmp_path):
    if not (PH2_REAL / "images").is_dir():
        pytest.skip(f"real PH2 data not found at {PH2_REAL} (only on development and CI machines)")
    env = nnunet_env(tmp_path)
    run_cli(["nnUNetv2_convert_PH2_ssl", "-i", str(PH2_REAL), "-d", "850", "--num-labelled", "6", "--num-test", "2",
             "--max-unlabelled", "4"], env)
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", "850", "-c", "2d", "-np", "2"], {**env, "nnUNet_n_proc_DA": "2"})
    plans = json.loads((Path(env["nnUNet_preprocessed"]) / "Dataset850_PH2" / "nnUNetPlans.json").read_text())
    assert plans["image_reader_writer"] == "NaturalImage2DIO"
    run_cli(["nnUNetv2_preprocess_unlabeled", "-d", "850", "-c", "2d", "-np", "2"], env)
    _train_predict_evaluate(env, 850, "Dataset850_PH2", tmp_path)


@pytest.mark.full
def test_2d_configuration_of_a_3d_dataset(phantom_copy, tmp_path):
    env = phantom_copy
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", str(PHANTOM_ID), "-c", "2d", "-np", "2"],
            {**env, "nnUNet_n_proc_DA": "2"})
    run_cli(["nnUNetv2_preprocess_unlabeled", "-d", str(PHANTOM_ID), "-c", "2d", "-np", "2"], env)
    _train_predict_evaluate(env, PHANTOM_ID, f"Dataset{PHANTOM_ID:03d}_Phantom", tmp_path)
