"""nnUNetv2_predict_quality on a tiny trained model: CSV/JSON, broken masks score lower, export, errors."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from conftest import PHANTOM_ID, run_cli, train_on_corruptions
from nnunet_qg.phantom import make_phantom_case
from nnunet_qg.quality.network import save_quality_predictor

DATASET = f"Dataset{PHANTOM_ID:03d}_Phantom"
TRAINER = "nnUNetTrainerQGWarmup_debug"


def _write_like(array: np.ndarray, reference: Path, target: Path) -> None:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.CopyInformation(sitk.ReadImage(str(reference)))
    sitk.WriteImage(image, str(target))


def _cases_with_broken_masks(raw: Path, out: Path):
    """Each test image three times: with its true mask, an empty mask and a shifted mask."""
    images, segs = out / "images", out / "segs"
    images.mkdir(parents=True)
    segs.mkdir()
    for label_file in sorted((raw / "labelsTs").iterdir()):
        case = label_file.name[:-7]
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))
        variants = {"true": truth, "empty": np.zeros_like(truth), "shifted": np.roll(truth, (5, 6, 5), (0, 1, 2))}
        for name, array in variants.items():
            shutil.copy(raw / "imagesTs" / f"{case}_0000.nii.gz", images / f"{case}-{name}_0000.nii.gz")
            _write_like(array, label_file, segs / f"{case}-{name}.nii.gz")
    return images, segs


def test_quality_control_end_to_end(phantom_copy, tmp_path):
    env = phantom_copy
    run_cli(["nnUNetv2_train", str(PHANTOM_ID), "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"], env)
    fold = Path(env["nnUNet_results"]) / DATASET / f"{TRAINER}__nnUNetPlans__3d_fullres" / "fold_0"
    assert (fold / "quality_predictor.pth").is_file()  # exported by the warm-up
    # the debug warm-up is 6 iterations: give the model folder a g that has learned (same format)
    rng = np.random.RandomState(1)
    cases = [make_phantom_case(rng, (28, 32, 28)) for _ in range(12)]
    cases = [((img - img.mean()) / img.std(), lab.astype(np.int16)) for img, lab in cases]
    plans = json.loads((fold.parent / "plans.json").read_text())
    g, _, _ = train_on_corruptions(cases, 250, plans["configurations"]["3d_fullres"]["patch_size"])
    save_quality_predictor(g, str(fold / "quality_predictor.pth"))

    raw = Path(env["nnUNet_raw"]) / DATASET
    images, segs = _cases_with_broken_masks(raw, tmp_path / "broken")
    out = tmp_path / "qc"
    base = ["nnUNetv2_predict_quality", "-d", str(PHANTOM_ID), "-tr", TRAINER, "-f", "0", "-device", "cpu"]
    proc = run_cli(base + ["-i", str(images), "-s", str(segs), "-o", str(out), "--reference", str(segs),
                           "--pictures", "--threshold", "0.5", "--trusted-folder", str(tmp_path / "trusted"),
                           "--min-quality", "0.6"], env)
    with open(out / "quality.csv") as f:
        rows = list(csv.DictReader(f))
    n_images = len(list(images.iterdir()))
    assert len(rows) == 2 * n_images and {r["label"] for r in rows} == {"1", "2"}
    predicted = [float(r["predicted_dice"]) for r in rows]
    assert predicted == sorted(predicted)  # worst first
    score = {}
    for r in rows:
        case, variant = r["case"].rsplit("-", 1)
        score.setdefault(case, {}).setdefault(variant, []).append(float(r["predicted_dice"]))
    for case, variants in score.items():
        true, empty, shifted = (np.mean(variants[v]) for v in ("true", "empty", "shifted"))
        assert empty < true - 0.3 and shifted < true - 0.15, (case, variants)
    report = json.loads((out / "quality.json").read_text())
    assert [c["worst_predicted_dice"] for c in report["cases"]] == sorted(c["worst_predicted_dice"] for c in report["cases"])
    flagged = {c["case"] for c in report["cases"] if c["flagged"]}
    assert {p.stem for p in (out / "quality_pictures").iterdir()} == flagged and flagged
    trusted = {p.name[:-7] for p in (tmp_path / "trusted").iterdir()}
    assert trusted == set(report["trusted"]) and all(c.endswith("-true") for c in trusted)
    assert "flagged" in proc.stdout and "Against --reference" in proc.stdout

    # without -s the command predicts with nnU-Net's predictor first
    out2 = tmp_path / "qc_predict"
    run_cli(base + ["-i", str(raw / "imagesTs"), "-o", str(out2), "--disable_tta"], env)
    predictions = sorted(p.name for p in out2.glob("*.nii.gz"))
    assert predictions == sorted(p.name for p in (raw / "labelsTs").iterdir())
    with open(out2 / "quality.csv") as f:
        assert len(list(csv.DictReader(f))) == 2 * len(predictions)


def test_quality_control_needs_a_quality_predictor(phantom_copy, tmp_path):
    env = phantom_copy
    trainer = "nnUNetTrainerSSL_debug"
    run_cli(["nnUNetv2_train", str(PHANTOM_ID), "3d_fullres", "0", "-tr", trainer, "-device", "cpu"], env)
    raw = Path(env["nnUNet_raw"]) / DATASET
    proc = run_cli(["nnUNetv2_predict_quality", "-i", str(raw / "imagesTs"), "-o", str(tmp_path / "qc"), "-d",
                    str(PHANTOM_ID), "-tr", trainer, "-device", "cpu"], env, check=False)
    assert proc.returncode != 0 and "quality_predictor.pth not found" in proc.stderr
    assert "nnUNetTrainerQGSSL" in proc.stderr and not (tmp_path / "qc" / "quality.csv").exists()
    proc = run_cli(["nnUNetv2_predict_quality", "-i", str(raw / "imagesTs"), "-o", str(tmp_path / "qc"), "-d",
                    str(PHANTOM_ID), "-tr", "nnUNetTrainerQGSSL", "-device", "cpu"], env, check=False)
    assert proc.returncode != 0 and "Model folder" in proc.stderr and "not found" in proc.stderr
