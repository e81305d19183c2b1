"""nnUNetv2_predict_quality: CSV/JSON, estimators, calibration, probabilities from .npz, broken masks flagged,
2D RGB images, clear errors for bad arguments."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import (HIPPOCAMPUS, PH2_DATASET, PH2_ID, PHANTOM_ID, nnunet_env, plan_and_preprocess,
                      requires_hippocampus, requires_ph2, run_cli, train_on_corruptions)
from nnunet_qg.phantom import make_phantom_case
from nnunet_qg.quality.network import save_quality_predictor
from nnunet_qg.quality_control.calibration import (apply_map, calibration_key, find_entry, fit_entry, fit_map,
                                                   store_entry)
from nnunet_qg.quality_control.signals import DEFAULT_ESTIMATOR, expected_dice, mean_agreement

DATASET = f"Dataset{PHANTOM_ID:03d}_Phantom"
TRAINER = "nnUNetTrainerQGSSL_debug"  # the session's model (conftest.TrainedModels), on a copy of it


def _rows(folder: Path):
    with open(folder / "quality.csv") as f:
        return list(csv.DictReader(f))


def _write_like(array: np.ndarray, reference: Path, target: Path) -> None:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.CopyInformation(sitk.ReadImage(str(reference)))
    sitk.WriteImage(image, str(target))


def _cases_with_broken_masks(raw: Path, out: Path, other_case: bool = False):
    """Each test image with its true mask, an empty mask, a shifted mask (and another case's mask, cropped or
    padded to this image)."""
    images, segs = out / "images", out / "segs"
    images.mkdir(parents=True)
    segs.mkdir()
    label_files = sorted((raw / "labelsTs").iterdir())
    for k, label_file in enumerate(label_files):
        case = label_file.name[:-7]
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))
        variants = {"true": truth, "empty": np.zeros_like(truth),
                    "shifted": np.roll(truth, [max(4, s // 4) for s in truth.shape], (0, 1, 2))}
        if other_case:
            other = sitk.GetArrayFromImage(sitk.ReadImage(str(label_files[(k + 1) % len(label_files)])))
            fitted = np.zeros_like(truth)
            common = tuple(slice(0, min(a, b)) for a, b in zip(truth.shape, other.shape))
            fitted[common] = other[common]
            variants["other"] = fitted
        for name, array in variants.items():
            shutil.copy(raw / "imagesTs" / f"{case}_0000.nii.gz", images / f"{case}-{name}_0000.nii.gz")
            _write_like(array, label_file, segs / f"{case}-{name}.nii.gz")
    return images, segs


def _scores_by_variant(rows, column="predicted_dice"):
    score = {}
    for r in rows:
        case, variant = r["case"].rsplit("-", 1)
        score.setdefault(case, {}).setdefault(variant, []).append(float(r[column]))
    return score


def _calibration_cases(env, out: Path) -> Path:
    """The phantom generator's 14 labelled cases in nnU-Net's naming (images, labels)."""
    task = Path(env["nnUNet_raw"]).parent / "Task901_Phantom"
    (out / "images").mkdir(parents=True)
    (out / "labels").mkdir()
    for label in sorted((task / "labelsTr").iterdir()):
        shutil.copy(task / "imagesTr" / label.name, out / "images" / label.name.replace(".nii.gz", "_0000.nii.gz"))
        shutil.copy(label, out / "labels" / label.name)
    return out


def test_quality_control_end_to_end(trained_models, tmp_path):
    env = trained_models.get(TRAINER).copy_to(tmp_path)
    env["OMP_NUM_THREADS"] = "1"
    model = Path(env["nnUNet_results"]) / DATASET / f"{TRAINER}__nnUNetPlans__3d_fullres"
    fold = model / "fold_0"
    assert (fold / "quality_predictor.pth").is_file()  # exported at the end of training
    # the debug training is 12 iterations: give the model folder a g that has learned (same format)
    rng = np.random.RandomState(1)
    cases = [make_phantom_case(rng, (28, 32, 28)) for _ in range(12)]
    cases = [((img - img.mean()) / img.std(), lab.astype(np.int16)) for img, lab in cases]
    plans = json.loads((model / "plans.json").read_text())
    g, _, _ = train_on_corruptions(cases, 250, plans["configurations"]["3d_fullres"]["patch_size"])
    save_quality_predictor(g, str(fold / "quality_predictor.pth"))

    # 1. g scores given segmentations: broken masks score lower, flags, pictures, trusted export
    raw = Path(env["nnUNet_raw"]) / DATASET
    images, segs = _cases_with_broken_masks(raw, tmp_path / "broken")
    out = tmp_path / "qc"
    base = ["nnUNetv2_predict_quality", "-d", str(PHANTOM_ID), "-tr", TRAINER, "-f", "0", "-device", "cpu"]
    proc = run_cli(base + ["-i", str(images), "-s", str(segs), "-o", str(out), "--reference", str(segs),
                           "--estimator", "g", "--no-calibration", "--pictures", "--threshold", "0.5",
                           "--trusted-folder", str(tmp_path / "trusted"), "--min-quality", "0.6"], env)
    rows = _rows(out)
    n_images = len(list(images.iterdir()))
    assert len(rows) == 2 * n_images and {r["label"] for r in rows} == {"1", "2"}
    predicted = [float(r["predicted_dice"]) for r in rows]
    assert predicted == sorted(predicted)  # worst first
    assert all(r["g"] == r["predicted_dice"] == r["raw_score"] and r["self_estimate"] and r["tta_agreement"]
               for r in rows)  # every signal is reported; the network predicted the probabilities itself
    for case, variants in _scores_by_variant(rows).items():
        true, empty, shifted = (np.mean(variants[v]) for v in ("true", "empty", "shifted"))
        assert empty < true - 0.3 and shifted < true - 0.15, (case, variants)
    report = json.loads((out / "quality.json").read_text())
    assert report["estimator"] == "g" and report["calibration"] is None
    assert [c["worst_predicted_dice"] for c in report["cases"]] == sorted(c["worst_predicted_dice"] for c in report["cases"])
    flagged = {c["case"] for c in report["cases"] if c["flagged"]}
    assert {p.stem for p in (out / "quality_pictures").iterdir()} == flagged and flagged
    trusted = {p.name[:-7] for p in (tmp_path / "trusted").iterdir()}
    assert trusted == set(report["trusted"]) and all(c.endswith("-true") for c in trusted)
    assert "flagged" in proc.stdout and "Against --reference" in proc.stdout and "UNCALIBRATED" in proc.stdout
    assert not list(out.glob("*.nii.gz"))  # -s: nothing predicted into -o

    # 2. the default estimator predicts the cases first; calibration fitted on labelled cases, stored beside
    # the model with its number of cases, applied to the raw score
    calibration_cases = _calibration_cases(env, tmp_path / "calibration")
    out2 = tmp_path / "qc_predict"
    proc = run_cli(base + ["-i", str(raw / "imagesTs"), "-o", str(out2), "--calibration-cases",
                           str(calibration_cases / "images"), str(calibration_cases / "labels")], env)
    predictions = sorted(p.name for p in out2.glob("*.nii.gz"))
    assert predictions == sorted(p.name for p in (raw / "labelsTs").iterdir())
    stored = json.loads((model / "quality_calibration.json").read_text())
    entry = stored["entries"][0]
    assert entry["n_cases"] == 14 and entry["folds"] == ["0"] and entry["tta"] is True
    assert {"self_estimate", "tta_agreement", "g", "self_estimate+tta_agreement"} <= set(entry["estimators"])
    rows = _rows(out2)
    assert len(rows) == 2 * len(predictions) and all(r["volume_z"] != "" for r in rows)
    report = json.loads((out2 / "quality.json").read_text())
    assert report["estimator"] == DEFAULT_ESTIMATOR == "self_estimate+tta_agreement"
    assert report["calibration"]["n_cases"] == 14 and "calibrated on 14 cases" in proc.stdout
    for case in report["cases"]:
        for label, values in case["labels"].items():  # the mean of the two signals, through its isotonic map
            assert values["raw_score"] == pytest.approx((values["self_estimate"] + values["tta_agreement"]) / 2,
                                                        abs=1e-6)
            mapping = entry["estimators"][DEFAULT_ESTIMATOR]["labels"][label]
            assert values["predicted_dice"] == pytest.approx(float(apply_map(mapping, [values["raw_score"]])[0]),
                                                             abs=1e-5)

    # 3. the same model again: the stored calibration is used (no refit); segmentations with the .npz of
    # nnUNetv2_predict --save_probabilities are scored from those probabilities, nothing predicted
    predicted_folder = tmp_path / "nnunet_predictions"
    run_cli(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(predicted_folder), "-d", str(PHANTOM_ID),
             "-c", "3d_fullres", "-f", "0", "-tr", TRAINER, "-device", "cpu", "--save_probabilities",
             "-npp", "1", "-nps", "1"], env)
    out3 = tmp_path / "qc_npz"
    proc = run_cli(base + ["-i", str(raw / "imagesTs"), "-s", str(predicted_folder), "-o", str(out3),
                           "--estimator", "self_estimate"], env)
    assert "Fitting the calibration" not in proc.stdout and "calibrated on 14 cases" in proc.stdout
    assert not list(out3.glob("*.nii.gz"))
    from_npz = {(r["case"], r["label"]): r for r in _rows(out3)}
    assert all(from_npz[k]["tta_agreement"] == "" for k in from_npz)  # only the .npz was read
    for r in rows:  # nnU-Net's own prediction and probabilities give the same expected Dice (up to rounding)
        assert float(from_npz[(r["case"], r["label"])]["self_estimate"]) == pytest.approx(float(r["self_estimate"]),
                                                                                          abs=0.02)


def test_quality_control_without_a_quality_predictor(trained_models, tmp_path):
    env = trained_models.get(TRAINER).copy_to(tmp_path)  # a trained model folder, then without its g
    env["OMP_NUM_THREADS"] = "1"
    (Path(env["nnUNet_results"]) / DATASET / f"{TRAINER}__nnUNetPlans__3d_fullres" / "fold_0" /
     "quality_predictor.pth").unlink()
    raw = Path(env["nnUNet_raw"]) / DATASET
    base = ["nnUNetv2_predict_quality", "-i", str(raw / "imagesTs"), "-d", str(PHANTOM_ID), "-device", "cpu"]
    # any nnU-Net model: the default estimator needs no g (fold 0 has too few validation cases to calibrate)
    proc = run_cli(base + ["-o", str(tmp_path / "qc"), "-tr", TRAINER, "--disable_tta"], env)
    rows = _rows(tmp_path / "qc")
    assert len(rows) == 4 and all(r["g"] == "" and r["tta_agreement"] == "" and r["self_estimate"] for r in rows)
    assert "No automatic calibration" in proc.stdout and "UNCALIBRATED" in proc.stdout
    assert "estimator self_estimate instead of the default" in proc.stdout  # one prediction per case
    proc = run_cli(base + ["-o", str(tmp_path / "qc_g"), "-tr", TRAINER, "--estimator", "g"], env, check=False)
    assert proc.returncode != 0 and "quality_predictor.pth not found" in proc.stderr
    # the hint names the trainers that train g ("(nnUNetTrainerQGSSL": not the model folder's path)
    assert "(nnUNetTrainerQGSSL" in proc.stderr and not (tmp_path / "qc_g" / "quality.csv").exists()
    proc = run_cli(base + ["-o", str(tmp_path / "qc_t"), "-tr", TRAINER, "--estimator", "tta_agreement",
                           "--disable_tta"], env, check=False)
    assert proc.returncode != 0 and "leave out --disable_tta" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli(base + ["-o", str(tmp_path / "qc2"), "-tr", "nnUNetTrainerQGSSL"], env, check=False)
    assert proc.returncode != 0 and "Model folder" in proc.stderr and "not found" in proc.stderr


def test_quality_control_bad_arguments(tmp_path):
    env = nnunet_env(tmp_path)
    (Path(env["nnUNet_results"]) / "Dataset004_Hippocampus").mkdir()
    base = ["nnUNetv2_predict_quality", "-i", str(tmp_path), "-o", str(tmp_path / "qc"), "-device", "cpu"]
    proc = run_cli(base + ["-d", "998"], env, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "ERROR: Dataset '998' (not found)" in proc.stderr and "Dataset004_Hippocampus" in proc.stderr
    for value in ("1.5", "-0.1", "nan", "high"):
        proc = run_cli(base + ["-d", "4", "--threshold", value], env, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert f"--threshold: {value}" in proc.stderr or f"'{value}' is not allowed" in proc.stderr
        assert "give a number from 0 to 1" in proc.stderr
    proc = run_cli(base + ["-d", "4", "--min-quality", "2"], env, check=False)
    assert proc.returncode == 2 and "give a number from 0 to 1" in proc.stderr
    assert not (tmp_path / "qc").exists()


def test_calibration_is_monotone_and_stored(tmp_path):
    rng = np.random.RandomState(0)
    score = rng.rand(200, 2)
    true = np.clip(score ** 2 + 0.05 * rng.randn(200, 2), 0, 1)
    mapping = fit_map(score[:, 0], true[:, 0])
    grid = np.linspace(0, 1, 101)
    mapped = apply_map(mapping, grid)
    assert np.all(np.diff(mapped) >= 0) and mapping["n"] == 200
    assert np.abs(apply_map(mapping, score[:, 0]) - true[:, 0]).mean() < np.abs(score[:, 0] - true[:, 0]).mean()
    # beyond the calibration cases: flat above the best, falling with the score below the worst (a failure worse
    # than every calibration case is not lifted to the worst one's Dice)
    good = {"x": [0.90, 0.95], "y": [0.80, 0.90], "n": 12}
    assert apply_map(good, [0.99, 0.95, 0.90, 0.80, 0.0]) == pytest.approx([0.90, 0.90, 0.80, 0.70, 0.0])
    key = calibration_key([0, 1], "checkpoint_final.pth", True)
    entry = fit_entry({"self_estimate": score}, true, rng.rand(200, 2) * 1000 + 10, [1, 2], key, "test cases")
    path = str(tmp_path / "quality_calibration.json")
    assert store_entry(path, entry) and find_entry(path, key)["n_cases"] == 200
    assert find_entry(path, calibration_key([0], "checkpoint_final.pth", True)) is None
    with pytest.raises(Exception, match="at least 10"):
        fit_entry({"self_estimate": score[:5]}, true[:5], true[:5], [1, 2], key, "five cases")


def test_expected_dice_and_agreement():
    seg = np.zeros((1, 4, 4), np.int16)
    seg[0, :2] = 1
    probabilities = np.zeros((2, 1, 4, 4), np.float32)
    probabilities[1, 0, :2] = 1.0  # the network is sure of the mask
    probabilities[0] = 1 - probabilities[1]
    assert expected_dice(seg, probabilities, [1], [0, 1]) == pytest.approx([1.0])
    assert expected_dice(np.zeros_like(seg), probabilities, [1], [0, 1]) == pytest.approx([0.0])  # empty mask
    probabilities[1, 0, :2] = 0.5
    probabilities[0] = 1 - probabilities[1]
    assert expected_dice(seg, probabilities, [1], [0, 1]) == pytest.approx([2 * 4 / (4 + 8)])
    shifted = np.roll(seg, 2, axis=1)
    assert mean_agreement([seg, seg], seg, [1]) == pytest.approx([1.0])
    assert mean_agreement([seg, shifted], seg, [1]) == pytest.approx([0.5])


@pytest.mark.full
@requires_hippocampus
def test_failed_hippocampus_segmentations_are_flagged(tmp_path):
    """A real Hippocampus model (stock nnU-Net network, 2d, 50 labelled cases, a short CPU training: 600
    iterations at batch 2), calibrated automatically on its fold's 10 validation cases: an empty mask, a
    shifted mask and another case's mask of real test cases are flagged and score below the true mask (the empty
    and the shifted one well below it; Hippocampus crops are aligned, so another case's mask still overlaps:
    measured 0.39 against the true masks' 0.43 / 0.57 on this weak model)."""
    env = nnunet_env(tmp_path)
    env["OMP_NUM_THREADS"] = "1"
    run_cli(["nnUNetv2_convert_MSD_ssl", "-i", str(HIPPOCAMPUS), "-d", "4", "--split-file",
             str(HIPPOCAMPUS / "ssl_splits.json"), "--num-labelled", "50", "--max-unlabelled", "0",
             "--max-test", "3"], env)
    plan_and_preprocess(4, env, "2d", unlabelled=False)
    trainer = "nnUNetTrainer_cpuMedium"  # nnUNetTrainer, 20 x 30 iterations at batch 2
    run_cli(["nnUNetv2_train", "4", "2d", "0", "-tr", trainer, "-device", "cpu"], env, timeout=3600)
    raw = Path(env["nnUNet_raw"]) / "Dataset004_Hippocampus"
    images, segs = _cases_with_broken_masks(raw, tmp_path / "broken", other_case=True)
    out = tmp_path / "qc"
    proc = run_cli(["nnUNetv2_predict_quality", "-i", str(images), "-s", str(segs), "-o", str(out), "-d", "4",
                    "-c", "2d", "-tr", trainer, "-f", "0", "-device", "cpu", "--reference", str(segs)], env,
                   timeout=3600)
    report = json.loads((out / "quality.json").read_text())
    assert report["estimator"] == DEFAULT_ESTIMATOR and "cross-validation" in report["calibration"]["source"]
    assert report["calibration"]["n_cases"] == 10 and "Fitting the calibration" in proc.stdout
    rows = _rows(out)
    flagged = {r["case"] for r in rows if r["flagged"] == "True"}
    raw_scores = _scores_by_variant(rows, "raw_score")
    for case, variants in raw_scores.items():
        for failure in ("empty", "shifted", "other"):
            assert f"{case}-{failure}" in flagged, (case, failure, variants)
            margin = 0.0 if failure == "other" else 0.15
            assert np.mean(variants[failure]) < np.mean(variants["true"]) - margin, (case, failure, variants)


@pytest.mark.full
@requires_ph2
def test_quality_control_on_2d_rgb_images(ph2_model, tmp_path):
    """PH2 as nnUNetv2_convert_PH2_ssl writes it: one RGB PNG holds the three channels (NaturalImage2DIO); a copy
    of the session's PH2 QG-SSL model (conftest.ph2_model) with the g it learned."""
    env = ph2_model.copy_to(tmp_path)
    env["OMP_NUM_THREADS"] = "1"
    raw = Path(env["nnUNet_raw"]) / PH2_DATASET
    assert len(json.loads((raw / "dataset.json").read_text())["channel_names"]) == 3
    assert all(p.name.endswith("_0000.png") for p in (raw / "imagesTs").iterdir())  # one file per case
    trainer = ph2_model.trainer
    out = tmp_path / "qc"
    proc = run_cli(["nnUNetv2_predict_quality", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", str(PH2_ID),
                    "-c", "2d", "-tr", trainer, "-f", "0", "-device", "cpu", "--reference", str(raw / "labelsTs"),
                    "--threshold", "1.0", "--pictures"], env, timeout=1800)
    rows = _rows(out)
    cases = sorted(p.name[:-len("_0000.png")] for p in (raw / "imagesTs").iterdir())
    assert sorted(r["case"] for r in rows) == cases and all(r["g"] and r["self_estimate"] for r in rows)
    from skimage import io
    for case in cases:  # the predictions, written as nnUNetv2_predict writes them (PNG, image size)
        assert io.imread(out / f"{case}.png").shape == io.imread(raw / "labelsTs" / f"{case}.png").shape
    assert sorted(p.stem for p in (out / "quality_pictures").iterdir()) == cases  # threshold 1: all flagged
    assert "Against --reference" in proc.stdout
    # a case with one channel file too few for a grey model is named clearly (here: a 3-channel model
    # given a grey image)
    grey = tmp_path / "grey"
    grey.mkdir()
    image = io.imread(raw / "imagesTs" / f"{cases[0]}_0000.png")
    io.imsave(grey / f"{cases[0]}_0000.png", image[..., 0], check_contrast=False)
    proc = run_cli(["nnUNetv2_predict_quality", "-i", str(grey), "-o", str(tmp_path / "qc_grey"), "-d", str(PH2_ID),
                    "-c", "2d", "-tr", trainer, "-f", "0", "-device", "cpu"], env, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"Case {cases[0]}" in proc.stderr and "holds 1 channel(s)" in proc.stderr and "expects 3" in proc.stderr
