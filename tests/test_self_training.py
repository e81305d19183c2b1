"""`nnUNetv2_qg_self_train` (offline self-training): the gate, the dataset it writes, its refusals (fast tier), and
the command end to end through stock nnU-Net, killed and continued (full tier)."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import PHANTOM_DATASET, PHANTOM_ID, REPO, kill_after_first_checkpoint, run_cli
from nnunet_qg.self_training import SOURCE_MARKER, case_quality, gate, write_self_training_dataset

TRAINER = "nnUNetTrainer_benchTiny"  # 2 epochs x 3 iterations, a checkpoint every epoch


def test_gate_keeps_all_a_threshold_or_the_best_fraction():
    quality = {"a": 0.9, "b": 0.2, "c": 0.6, "d": 0.6, "e": 0.75}
    assert gate(quality) == ["a", "b", "c", "d", "e"]
    assert gate(quality, min_quality=0.6) == ["a", "c", "d", "e"]
    assert gate(quality, min_quality=0.95) == []
    assert gate(quality, keep_fraction=0.5) == ["a", "c", "e"]  # ceil(2.5) = 3; the tie c/d goes to the first id
    assert gate(quality, keep_fraction=0.4) == ["a", "e"]  # 0.4 * 5 = 2 exactly, not 3
    assert gate(quality, keep_fraction=0.01) == ["a"]  # at least one
    assert gate(quality, keep_fraction=1.0) == sorted(quality)


def test_case_quality_is_the_worst_label(tmp_path):
    report = {"cases": [{"case": "x", "worst_predicted_dice": 0.3, "labels": {"1": {"predicted_dice": 0.3},
                                                                                "2": {"predicted_dice": 0.8}}},
                        {"case": "y", "worst_predicted_dice": 0.7, "labels": {"1": {"predicted_dice": 0.7}}}]}
    (tmp_path / "quality.json").write_text(json.dumps(report))
    assert case_quality(str(tmp_path / "quality.json")) == {"x": 0.3, "y": 0.7}


def _pseudo_labels(raw: Path, folder: Path, cases) -> None:
    """A stand-in pseudo-label per case: the first labelled case's label (the phantom's cases share a shape)."""
    folder.mkdir(parents=True)
    label = sorted((raw / "labelsTr").iterdir())[0]
    for case in cases:
        shutil.copy(label, folder / f"{case}.nii.gz")


def test_the_written_dataset_holds_labelled_and_kept_cases_and_leaves_the_source_alone(phantom_copy, tmp_path):
    raw = Path(phantom_copy["nnUNet_raw"]) / PHANTOM_DATASET
    before = sorted(str(p.relative_to(raw)) for p in raw.rglob("*"))
    unlabelled = sorted(p.name[:-len("_0000.nii.gz")] for p in (raw / "imagesUnlabeled").iterdir())
    kept = unlabelled[:2]
    _pseudo_labels(raw, tmp_path / "pl", unlabelled)
    target = Path(phantom_copy["nnUNet_raw"]) / "Dataset950_PhantomSelfTrain1"
    write_self_training_dataset(str(raw), str(target), str(tmp_path / "pl"), kept, {"round": 1})
    labelled = sorted(p.name for p in (raw / "labelsTr").iterdir())
    assert sorted(p.name for p in (target / "labelsTr").iterdir()) == sorted(labelled + [f"{c}.nii.gz" for c in kept])
    assert sorted(p.name for p in (target / "imagesTr").iterdir()) == sorted(
        [p.name for p in (raw / "imagesTr").iterdir()] + [f"{c}_0000.nii.gz" for c in kept])
    assert not (target / "imagesUnlabeled").exists()
    assert sorted(p.name for p in (target / "imagesTs").iterdir()) == sorted(p.name for p in (raw / "imagesTs").iterdir())
    dataset_json = json.loads((target / "dataset.json").read_text())
    source_json = json.loads((raw / "dataset.json").read_text())
    assert dataset_json["numTraining"] == len(labelled) + 2 and dataset_json["labels"] == source_json["labels"]
    assert json.loads((target / SOURCE_MARKER).read_text())["kept"] == kept
    image = sitk.ReadImage(str(target / "imagesTr" / f"{kept[0]}_0000.nii.gz"))
    assert sitk.GetArrayFromImage(image).shape == sitk.GetArrayFromImage(
        sitk.ReadImage(str(raw / "imagesUnlabeled" / f"{kept[0]}_0000.nii.gz"))).shape
    assert sorted(str(p.relative_to(raw)) for p in raw.rglob("*")) == before  # the source unchanged
    assert not [p for p in target.parent.iterdir() if ".tmp-" in p.name]


def test_a_missing_pseudo_label_leaves_no_dataset_behind(phantom_copy, tmp_path):
    from nnunet_qg.self_training import SelfTrainingError

    raw = Path(phantom_copy["nnUNet_raw"]) / PHANTOM_DATASET
    unlabelled = sorted(p.name[:-len("_0000.nii.gz")] for p in (raw / "imagesUnlabeled").iterdir())
    _pseudo_labels(raw, tmp_path / "pl", unlabelled[:1])
    target = Path(phantom_copy["nnUNet_raw"]) / "Dataset951_PhantomSelfTrain1"
    with pytest.raises(SelfTrainingError, match=f"{unlabelled[1]}.nii.gz is missing"):
        write_self_training_dataset(str(raw), str(target), str(tmp_path / "pl"), unlabelled[:2], {"round": 1})
    assert not [p for p in target.parent.iterdir() if p.name.startswith("Dataset951")]


def _self_train(env, out, *extra, check=True, target="961"):
    return run_cli(["nnUNetv2_qg_self_train", "-d", str(PHANTOM_ID), "-c", "3d_fullres", "-f", "0", "-t", target,
                    "-o", str(out), "-tr", TRAINER, "-device", "cpu", "-np", "1", *extra], env, check=check,
                   timeout=1200)


def _refused(proc, *needles):
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in text, text[-3000:]
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{text[-3000:]}"


def test_refusals_name_the_problem_and_the_fix(phantom_copy, tmp_path):
    raw = Path(phantom_copy["nnUNet_raw"]) / PHANTOM_DATASET
    # a taken dataset id: the source's own, then another dataset's
    _refused(_self_train(phantom_copy, tmp_path / "o1", check=False, target=str(PHANTOM_ID)), "is the source's")
    shutil.copytree(raw, Path(phantom_copy["nnUNet_raw"]) / "Dataset962_Other")
    _refused(_self_train(phantom_copy, tmp_path / "o2", check=False, target="962"), "Dataset id 962", "taken",
             "Dataset962_Other", "Choose another -t")
    # two rounds need two free ids
    _refused(_self_train(phantom_copy, tmp_path / "o3", "--rounds", "2", check=False, target="961"),
             "Dataset id 962 (round 2) is taken")
    # a bad gate
    _refused(_self_train(phantom_copy, tmp_path / "o4", "--keep-fraction", "0", check=False), "(0, 1]")
    _refused(_self_train(phantom_copy, tmp_path / "o5", "--keep-fraction", "0.5", "--min-quality", "0.5",
                         check=False), "not allowed with argument")
    # no unlabelled images
    shutil.rmtree(raw / "imagesUnlabeled")
    _refused(_self_train(phantom_copy, tmp_path / "o6", check=False), "No unlabelled images", str(raw / "imagesUnlabeled"))
    # no plans: the command to plan
    shutil.rmtree(Path(phantom_copy["nnUNet_preprocessed"]) / PHANTOM_DATASET)
    (raw / "imagesUnlabeled").mkdir()
    shutil.copy(sorted((raw / "imagesTs").iterdir())[0], raw / "imagesUnlabeled" / "extra_0000.nii.gz")
    _refused(_self_train(phantom_copy, tmp_path / "o7", check=False), "nnUNetv2_plan_and_preprocess -d 901")
    # an unknown dataset
    proc = run_cli(["nnUNetv2_qg_self_train", "-d", "977", "-c", "3d_fullres", "-f", "0", "-t", "978", "-o",
                    str(tmp_path / "o8")], phantom_copy, check=False)
    _refused(proc, "Dataset 977 is not in nnUNet_raw")


@pytest.mark.full
def test_self_training_end_to_end_killed_and_continued(phantom_copy, tmp_path):
    """The whole recipe through stock nnU-Net on the phantom (keep the best half): killed while the second model
    trains, continued by the same command (finished stages kept, the training continued with --c), run again (all
    kept); the model is a stock nnU-Net model folder that nnUNetv2_predict reads; the plans are the source's."""
    env, out = phantom_copy, tmp_path / "out"
    target = "Dataset961_PhantomSelfTrain1"
    fold = Path(env["nnUNet_results"]) / target / f"{TRAINER}__nnUNetPlans__3d_fullres" / "fold_0"
    cmd = ["nnUNetv2_qg_self_train", "-d", str(PHANTOM_ID), "-c", "3d_fullres", "-f", "0", "-t", "961", "-o", str(out),
           "-tr", TRAINER, "-device", "cpu", "-np", "1", "--keep-fraction", "0.5"]
    kill_after_first_checkpoint(cmd, env, fold, timeout=900)
    assert not (fold / "checkpoint_final.pth").is_file()
    resumed_at = time.time()
    proc = run_cli(cmd, env, timeout=1200)
    stages = [line for line in proc.stdout.splitlines() if line.startswith("[round")]
    for stage in ("predict and score", "write Dataset961", "plan with the source's plans"):
        assert any(stage in line and "done by an earlier run" in line for line in stages), (stage, proc.stdout)
    assert proc.stdout.count("trained (kept)") == 1  # the first model; the second continued (--c)
    # continued, not started again: the first epoch of the final model was trained by the killed call
    final = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    assert final["current_epoch"] == 2 and final["logging"]["epoch_start_timestamps"][0] < resumed_at
    state = json.loads((out / "self_training.json").read_text())
    assert state["rounds"]["1"]["cases"] == 6 and state["rounds"]["1"]["kept"] == 3
    quality = json.loads((out / "round_1" / "pseudo_labels" / "quality.json").read_text())
    worst = sorted(c["worst_predicted_dice"] for c in quality["cases"])
    assert state["rounds"]["1"]["kept_quality_mean"] == pytest.approx(sum(worst[3:]) / 3)
    source_plans = json.loads((Path(env["nnUNet_preprocessed"]) / PHANTOM_DATASET / "nnUNetPlans.json").read_text())
    target_plans = json.loads((Path(env["nnUNet_preprocessed"]) / target / "nnUNetPlans.json").read_text())
    assert target_plans["configurations"] == source_plans["configurations"] and target_plans["dataset_name"] == target
    again = run_cli(cmd, env, timeout=600)
    assert "trained (kept)" in again.stdout and again.stdout.count("done by an earlier run") == 3
    raw = Path(env["nnUNet_raw"]) / PHANTOM_DATASET
    pred = tmp_path / "pred"
    run_cli(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(pred), "-d", "961", "-c", "3d_fullres", "-f",
             "0", "-tr", TRAINER, "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"], env)
    assert sorted(p.name for p in pred.glob("*.nii.gz")) == sorted(p.name for p in (raw / "labelsTs").iterdir())
    # another recipe in the same -o is refused
    _refused(subprocess.run(cmd[:-2] + ["--keep-fraction", "0.25"], env=env, capture_output=True, text=True),
             "holds a self-training run with other settings")


@pytest.mark.full
def test_first_model_from_a_semi_supervised_trainer(phantom_copy, tmp_path):
    """--first-trainer: the first model is that trainer's (here the copy-paste base, which reads the source's
    imagesUnlabeled/ itself), its predictions are round 1's pseudo-labels, the retrained model is -tr's; the recipe
    records it, so the same -o with another first trainer is refused."""
    env, out, first = phantom_copy, tmp_path / "out", "nnUNetTrainerBCP_debug"
    proc = _self_train(env, out, "--first-trainer", first, "--keep-fraction", "0.5", target="963")
    results = Path(env["nnUNet_results"])
    first_fold = results / PHANTOM_DATASET / f"{first}__nnUNetPlans__3d_fullres" / "fold_0"
    assert (first_fold / "checkpoint_final.pth").is_file()
    assert not (results / PHANTOM_DATASET / f"{TRAINER}__nnUNetPlans__3d_fullres").exists()
    final = results / "Dataset963_PhantomSelfTrain1" / f"{TRAINER}__nnUNetPlans__3d_fullres" / "fold_0"
    assert (final / "checkpoint_final.pth").is_file()
    assert f"({first})" in proc.stdout
    state = json.loads((out / "self_training.json").read_text())
    assert state["recipe"]["first_trainer"] == first and state["rounds"]["1"]["kept"] == 3
    quality = json.loads((out / "round_1" / "pseudo_labels" / "quality.json").read_text())
    assert Path(quality["model_folder"]).name == f"{first}__nnUNetPlans__3d_fullres"
    _refused(_self_train(env, out, "--keep-fraction", "0.5", check=False, target="963"),
             "holds a self-training run with other settings")


def test_offline_pseudo_label_truth_judges_kept_and_dropped(tmp_path):
    """benchmarks/offline_pseudo_label_truth.py on a run laid out as nnUNetv2_qg_self_train writes it: the two
    pseudo-labels its gate keeps equal to the truth, the two it drops empty, the gate's score ordered like the truth; a missing
    true label is refused with the file named."""
    run = tmp_path / "run"
    pseudo, truth = run / "round_1" / "pseudo_labels", tmp_path / "truth"
    for folder in (pseudo, truth):
        folder.mkdir(parents=True)
    label = np.zeros((4, 8, 8), np.uint8)
    label[1:3, 2:5, 2:5], label[1:3, 5:7, 5:7] = 1, 2
    cases = []
    for i, (kept, score) in enumerate([(True, 0.9), (True, 0.8), (False, 0.4), (False, 0.3)]):
        name = f"case_{i}"
        sitk.WriteImage(sitk.GetImageFromArray(label), str(truth / f"{name}.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(label if kept else np.zeros_like(label)), str(pseudo / f"{name}.nii.gz"))
        cases.append({"case": name, "labels": {"1": {}, "2": {}}, "worst_predicted_dice": score})
    (pseudo / "quality.json").write_text(json.dumps({"cases": cases}))
    # the gate keeps the better half: the two scored highest
    (run / "self_training.json").write_text(json.dumps({"recipe": {"min_quality": None, "keep_fraction": 0.5}}))
    script = [sys.executable, str(REPO / "benchmarks" / "offline_pseudo_label_truth.py"), "--runs", str(run)]
    out = tmp_path / "truth.json"
    run_cli(script + ["--labels", str(truth), "--json", str(out)], dict(os.environ))
    row = json.loads(out.read_text())["runs"][0]
    assert (row["cases"], row["kept"]) == (4, 2)
    assert row["true_dice_kept"] == 1.0 and row["true_dice_dropped"] == 0.0 and row["true_dice_all"] == 0.5
    assert row["kept_in_true_top_half"] == 1.0 and row["pearson_gate_vs_true_worst"] > 0.8
    (truth / "case_3.nii.gz").unlink()
    proc = run_cli(script + ["--labels", str(truth), "--json", str(out)], dict(os.environ), check=False)
    assert proc.returncode != 0 and "case_3.nii.gz" in proc.stderr and "Traceback" not in proc.stderr
