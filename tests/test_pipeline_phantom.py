"""End to end on the generated phantom: convert, plan, preprocess unlabelled, train, resume, predict."""
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import PHANTOM_ID, run_cli

DATASET = f"Dataset{PHANTOM_ID:03d}_Phantom"
TRAINER = "nnUNetTrainerSSL_debug"


def test_converter_writes_split_without_unlabelled_labels(phantom_env):
    raw = Path(phantom_env["nnUNet_raw"]) / DATASET
    split = json.loads((raw / "ssl_split.json").read_text())
    assert (len(split["labelled"]), len(split["unlabelled"]), len(split["test"])) == (6, 6, 2)
    labels = {p.name[:-7] for p in (raw / "labelsTr").iterdir()} | {p.name[:-7] for p in (raw / "labelsTs").iterdir()}
    assert not labels & set(split["unlabelled"])
    assert sorted(p.name for p in (raw / "imagesUnlabeled").iterdir()) == sorted(f"{c}_0000.nii.gz" for c in split["unlabelled"])
    dataset_json = json.loads((raw / "dataset.json").read_text())
    assert dataset_json["numTraining"] == 6 and dataset_json["numUnlabeled"] == 6


def test_unlabelled_preprocessed_beside_labelled_and_never_in_splits(phantom_env):
    pre = Path(phantom_env["nnUNet_preprocessed"]) / DATASET
    unlabeled = sorted(p.name[:-4] for p in (pre / "nnUNetPlans_3d_fullres_unlabeled").glob("*.pkl"))
    labelled = sorted(p.name[:-4] for p in (pre / "nnUNetPlans_3d_fullres").glob("*.pkl"))
    assert len(unlabeled) == 6 and not set(unlabeled) & set(labelled)
    assert (pre / "nnUNetPlans_3d_fullres_unlabeled" / "unlabeled_plans_fingerprint.json").is_file()


def test_rerun_skips_finished_and_repairs_interrupted_cases(phantom_copy):
    env = phantom_copy
    folder = Path(env["nnUNet_preprocessed"]) / DATASET / "nnUNetPlans_3d_fullres_unlabeled"
    victim, kept = [p.name[:-4] for p in sorted(folder.glob("*.pkl"))[:2]]
    kept_mtime = (folder / f"{kept}.pkl").stat().st_mtime_ns
    # what an interrupted run can leave: a temporary folder and a case without its .pkl
    (folder / ".tmp-crashed-123").mkdir()
    (folder / f"{victim}.pkl").unlink()
    proc = run_cli(["nnUNetv2_preprocess_unlabeled", "-d", str(PHANTOM_ID), "-c", "3d_fullres", "-np", "1"], env)
    assert "5 of 6 unlabelled cases already preprocessed" in proc.stdout
    assert (folder / f"{victim}.pkl").is_file()
    assert (folder / f"{kept}.pkl").stat().st_mtime_ns == kept_mtime  # finished cases are not redone
    assert not list(folder.glob(".tmp-*"))


def test_changed_plans_are_detected_and_reprocessed(phantom_copy):
    env = phantom_copy
    plans_file = Path(env["nnUNet_preprocessed"]) / DATASET / "nnUNetPlans.json"
    plans = json.loads(plans_file.read_text())
    plans["configurations"]["3d_fullres"]["resampling_fn_data_kwargs"]["order"] = 1
    plans_file.write_text(json.dumps(plans))
    proc = run_cli(["nnUNetv2_train", str(PHANTOM_ID), "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"], env,
                   check=False)
    assert proc.returncode != 0
    assert "preprocessed with other plans" in proc.stdout + proc.stderr
    assert f"nnUNetv2_preprocess_unlabeled -d {PHANTOM_ID} -c 3d_fullres" in proc.stdout + proc.stderr
    proc = run_cli(["nnUNetv2_preprocess_unlabeled", "-d", str(PHANTOM_ID), "-c", "3d_fullres", "-np", "1"], env)
    assert "The plans changed" in proc.stdout and "re-processing all 6 cases" in proc.stdout


# (trainer, epochs): QG-SSL in the fast tier, the plain semi-supervised trainer in the full tier
KILLED_AND_RESUMED = [pytest.param("nnUNetTrainerQGSSL_debug", 4),
                      pytest.param("nnUNetTrainerSSL_debug", 3, marks=pytest.mark.full)]


@pytest.mark.parametrize("trainer, epochs", KILLED_AND_RESUMED)
def test_train_kill_resume_predict(trained_models, tmp_path, trainer, epochs):
    """The session's model of `trainer`: nnUNetv2_train killed after its first checkpoint, resumed with --c;
    then nnUNetv2_predict."""
    model = trained_models.get(trainer)
    env, fold = model.env, model.fold
    interrupted = torch.load(model.interrupted, weights_only=False)
    assert interrupted["current_epoch"] < epochs  # killed mid-training

    assert not list(fold.glob("*.tmp-*"))
    assert "Unlabelled data: 6 of 6 cases" in model.stdout
    final = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    assert final["current_epoch"] == epochs
    # the teacher's step count survives the resume: epochs x 3 iterations in total
    assert int(final["ssl_state"]["teacher"]["num_updates"]) == 3 * epochs
    logged = final["logging"]
    assert len(logged["ssl_loss_unlabeled"]) == epochs and all(np.isfinite(logged["ssl_loss_unlabeled"]))
    assert (fold / "progress_ssl.png").is_file() and (fold / "progress.png").is_file()
    assert (fold / "validation" / "summary.json").is_file()

    raw = Path(env["nnUNet_raw"]) / DATASET
    out = tmp_path / "pred"
    run_cli(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", str(PHANTOM_ID),
             "-c", "3d_fullres", "-f", "0", "-tr", trainer, "-device", "cpu", "--disable_tta",
             "-npp", "1", "-nps", "1"], env)
    for label_file in (raw / "labelsTs").iterdir():
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(out / label_file.name)))
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))
        assert pred.shape == ref.shape and set(np.unique(pred)) <= {0, 1, 2}
