"""Real data: the shared MSD Hippocampus with its fixed semi-supervised split."""
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import HIPPOCAMPUS, nnunet_env, plan_and_preprocess, requires_hippocampus, run_cli

pytestmark = requires_hippocampus


def test_convert_10pct_split(tmp_path):
    env = nnunet_env(tmp_path)
    run_cli(["nnUNetv2_convert_MSD_ssl", "-i", str(HIPPOCAMPUS), "-d", "4", "--split-file",
             str(HIPPOCAMPUS / "ssl_splits.json"), "--labelled-set", "10pct"], env)
    raw = Path(env["nnUNet_raw"]) / "Dataset004_Hippocampus"
    splits = json.loads((HIPPOCAMPUS / "ssl_splits.json").read_text())
    labelled = sorted(p.name[:-7] for p in (raw / "labelsTr").iterdir())
    assert labelled == sorted(splits["labelled_sets"]["10pct"]) and len(labelled) == 20
    unlabelled = sorted(p.name[:-12] for p in (raw / "imagesUnlabeled").iterdir())
    assert unlabelled == sorted(set(splits["pool"]) - set(labelled)) and len(unlabelled) == 180
    assert sorted(p.name[:-7] for p in (raw / "labelsTs").iterdir()) == sorted(splits["test"])
    assert len(list((raw / "imagesTs").iterdir())) == 60
    # no label of an unlabelled case anywhere in the dataset
    all_labels = {p.name[:-7] for p in raw.rglob("labels*/*.nii.gz")}
    assert not all_labels & set(unlabelled)
    dataset_json = json.loads((raw / "dataset.json").read_text())
    assert (dataset_json["numTraining"], dataset_json["numUnlabeled"], dataset_json["numTest"]) == (20, 180, 60)
    assert dataset_json["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2}


@pytest.mark.full
def test_hippocampus_subset_end_to_end(tmp_path):
    env = nnunet_env(tmp_path)
    run_cli(["nnUNetv2_convert_MSD_ssl", "-i", str(HIPPOCAMPUS), "-d", "4", "--split-file",
             str(HIPPOCAMPUS / "ssl_splits.json"), "--labelled-set", "5pct", "--max-unlabelled", "4",
             "--max-test", "2"], env)
    plan_and_preprocess(4, env)
    trainer = "nnUNetTrainerSSL_debug"
    train = run_cli(["nnUNetv2_train", "4", "3d_fullres", "0", "-tr", trainer, "-device", "cpu"], env)
    assert "Unlabelled data: 4 of 4 cases" in train.stdout
    fold = Path(env["nnUNet_results"]) / "Dataset004_Hippocampus" / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    raw = Path(env["nnUNet_raw"]) / "Dataset004_Hippocampus"
    out = tmp_path / "pred"
    run_cli(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", "4", "-c", "3d_fullres",
             "-f", "0", "-tr", trainer, "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"], env)
    predicted = sorted(p.name for p in out.glob("*.nii.gz"))
    assert predicted == sorted(p.name for p in (raw / "labelsTs").iterdir()) and len(predicted) == 2
    for name in predicted:
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(out / name)))
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTs" / name)))
        assert pred.shape == ref.shape and set(np.unique(pred)) <= {0, 1, 2}
