"""Self-training inside one run (experiments: nnUNetTrainerSelfTrain*): pseudo-labelled cases as nnU-Net training
cases and the gate's record (fast tier); the trainer through the real nnUNetv2_train, --c and a resumed run
without its pseudo-labels (full tier)."""
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from conftest import PHANTOM_DATASET, PHANTOM_ID, run_cli
from nnunet_qg.experiments.pseudo_labelled_cases import (WithPseudoLabels, missing_cases, read_unlabeled_case,
                                                         write_pseudo_labelled_case)
from nnunet_qg.experiments.trainers.nnUNetTrainerSelfTrain import CASES_FILE, truth_summary

TRAINER = "nnUNetTrainerSelfTrain_QG_debug"  # 3 epochs x 3 iterations, self-training from epoch 2


def _folders(env):
    pre = Path(env["nnUNet_preprocessed"]) / PHANTOM_DATASET
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    configuration = PlansManager(plans).get_configuration("3d_fullres")
    return pre / configuration.data_identifier, pre / (configuration.data_identifier + "_unlabeled"), configuration


def test_a_pseudo_labelled_case_trains_like_a_labelled_one(phantom_env, tmp_path):
    """Its pseudo-label is what the loader's patches carry (foreground oversampled from its own locations), the
    crop mask's -1 stays, and labelled cases still load from nnU-Net's folder."""
    labelled_folder, unlabeled_folder, configuration = _folders(phantom_env)
    case = sorted(p.name[:-4] for p in unlabeled_folder.glob("*.pkl"))[0]
    data, crop_seg, properties = read_unlabeled_case(str(unlabeled_folder), case)
    label_map = np.zeros(data.shape[1:], dtype=np.int16)
    label_map[data[0] > np.percentile(data[0], 90)] = 2  # a made-up pseudo-label of label 2 only
    crop_seg = crop_seg.copy()
    crop_seg[0, 0] = -1  # a slab outside the crop mask
    write_pseudo_labelled_case(str(tmp_path), case, label_map, crop_seg, properties, [1, 2], configuration.patch_size)
    assert missing_cases(str(tmp_path), [case, "other"]) == ["other"]
    assert not list(tmp_path.glob(".tmp-*"))

    labelled = nnUNetDatasetBlosc2(str(labelled_folder))
    dataset = WithPseudoLabels(labelled, str(unlabeled_folder), str(tmp_path), [case])
    assert dataset.identifiers == sorted(labelled.identifiers + [case])
    image, seg, _, props = dataset.load_case(case)
    np.testing.assert_array_equal(image[:], data)
    assert (seg[:][0, 0] == -1).all() and np.array_equal(seg[:][0, 1:], label_map[1:])
    assert len(props["class_locations"][2]) > 0 and len(props["class_locations"][1]) == 0
    assert all(label_map[tuple(loc[1:])] == 2 for loc in props["class_locations"][2])
    _, own_seg, _, _ = dataset.load_case(labelled.identifiers[0])  # a labelled case: nnU-Net's own files
    np.testing.assert_array_equal(own_seg[:], labelled.load_case(labelled.identifiers[0])[1][:])

    only_pseudo = WithPseudoLabels(nnUNetDatasetBlosc2(str(labelled_folder), []), str(unlabeled_folder),
                                   str(tmp_path), [case])
    label_manager = PlansManager(json.loads((labelled_folder.parent / "nnUNetPlans.json").read_text())) \
        .get_label_manager(json.loads((labelled_folder.parent / "dataset.json").read_text()))
    loader = nnUNetDataLoader(only_pseudo, 2, configuration.patch_size, configuration.patch_size, label_manager,
                              oversample_foreground_percent=1.0)
    batch = loader.generate_train_batch()
    assert list(batch["keys"]) == [case, case]
    target = batch["target"].numpy() if torch.is_tensor(batch["target"]) else batch["target"]
    assert set(np.unique(target)) <= {-1, 0, 2} and (target == 2).any()


def test_the_record_summarises_the_gate_against_the_truth():
    records = {"a": {"estimated_dice": [0.9, 0.8], "true_dice": [0.85, 0.7], "kept": True},
               "b": {"estimated_dice": [0.4, 0.9], "true_dice": [0.3, 0.9], "kept": False},
               "c": {"estimated_dice": [0.7, 0.7], "true_dice": [0.6, 0.8], "kept": True}}
    summary = truth_summary(records)
    assert summary["true_worst_dice_kept"] == pytest.approx((0.7 + 0.6) / 2)
    assert summary["true_worst_dice_dropped"] == pytest.approx(0.3)
    assert summary["true_dice_kept"] == pytest.approx((0.775 + 0.7) / 2) and summary["true_dice_all"] == pytest.approx(
        (0.775 + 0.6 + 0.7) / 3)
    assert summary["estimate_true_pearson"] > 0.9
    assert truth_summary({"a": {"estimated_dice": [0.5], "kept": True}}) == {}  # no withheld labels: nothing
    everything = truth_summary({c: dict(r, kept=True) for c, r in records.items()})
    assert everything["true_worst_dice_dropped"] is None  # JSON null, not NaN


@pytest.mark.full
def test_self_training_trainer_trains_resumes_and_refuses_a_run_without_its_pseudo_labels(phantom_copy):
    env = dict(phantom_copy, nnUNet_qg_seed="0")
    command = ["nnUNetv2_train", str(PHANTOM_ID), "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"]
    proc = run_cli(command, env, timeout=1500)
    fold = Path(env["nnUNet_results"]) / PHANTOM_DATASET / f"{TRAINER}__nnUNetPlans__3d_fullres" / "fold_0"
    record = json.loads((fold / CASES_FILE).read_text())
    unlabeled = sorted(p.name[:-4] for p in _folders(env)[1].glob("*.pkl"))
    assert sorted(record["cases"]) == unlabeled and record["summary"]["epoch"] == 2
    kept = sorted(c for c, r in record["cases"].items() if r["kept"])
    assert len(kept) == math.ceil(len(unlabeled) / 2)
    scores = {c: r["score"] for c, r in record["cases"].items()}
    assert min(scores[c] for c in kept) >= max(s for c, s in scores.items() if c not in kept)
    assert all(r["score"] == min(r["estimated_dice"]) or abs(r["score"] - min(r["estimated_dice"])) < 1e-3
               for r in record["cases"].values())
    final = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    assert final["self_training_cases"] == kept and final["current_epoch"] == 3
    assert missing_cases(str(fold / "pseudo_labels"), unlabeled) == []
    assert "Self-training from epoch 2" in proc.stdout
    run_cli(command + ["--c"], env, timeout=900)  # the kept cases' loader is rebuilt from the checkpoint
    shutil.rmtree(fold / "pseudo_labels")
    failed = run_cli(command + ["--c"], env, timeout=900, check=False)
    assert failed.returncode != 0 and "pseudo-labels of this run are missing" in failed.stderr
    assert "Traceback" not in failed.stderr
