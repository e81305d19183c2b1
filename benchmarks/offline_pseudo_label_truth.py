"""How good were an offline self-training run's pseudo-labels, and did its quality gate keep the better ones?

    python benchmarks/offline_pseudo_label_truth.py --runs OUT1 [OUT2 ...] --labels LABELS_FOLDER [--json FILE]

Each OUT is the `-o` folder of one `nnUNetv2_qg_self_train` run (the evidence benchmark's offline arms write
theirs to <work>/self_training/<labelled set>_r<seed>_<arm>); LABELS_FOLDER holds the true label files of the
unlabelled cases (for the shared Hippocampus copy: its labelsTr). For round 1 of each run: the true Dice of
every pseudo-label (mean over the foreground labels, METHOD.md's convention for empty structures), of the cases
the run kept and of those it dropped, and how well the gate's score (the estimated Dice of each case's worst
label) ranks the cases (Pearson against the true worst-label Dice, Spearman against the mean). Only reads; prints
a table and writes JSON.
"""
import argparse
import json
import os
import sys
from os.path import abspath, dirname, isdir, isfile, join
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk
from scipy import stats

sys.path.insert(0, dirname(abspath(__file__)))
from common import print_table, write_json  # noqa: E402

from nnunet_qg.quality.dice import dice_per_label  # noqa: E402
from nnunet_qg.self_training import case_quality, gate  # noqa: E402


def read_labels(path: str) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(path))


def judge_run(run: str, labels_folder: str) -> Dict[str, object]:
    """Round 1 of one self-training run against the true labels; the kept cases are the run's own gate's choice
    (nnunet_qg.self_training.gate with the recipe in self_training.json)."""
    with open(join(run, "self_training.json")) as f:
        recipe = json.load(f)["recipe"]
    pseudo = join(run, "round_1", "pseudo_labels")
    with open(join(pseudo, "quality.json")) as f:
        quality = json.load(f)
    estimate = case_quality(join(pseudo, "quality.json"))
    kept_cases = set(gate(estimate, recipe.get("min_quality"), recipe.get("keep_fraction")))
    ending = quality.get("file_ending", ".nii.gz")
    kept, mean_true, worst_true = [], [], []
    for case in quality["cases"]:
        truth_file = join(labels_folder, case["case"] + ending)
        if not isfile(truth_file):
            raise SystemExit(f"ERROR: no true label {truth_file} for the unlabelled case {case['case']}; pass the "
                             f"folder with the unlabelled cases' labels as --labels")
        labels = sorted(int(k) for k in case["labels"])
        dice = dice_per_label(read_labels(join(pseudo, case["case"] + ending)), read_labels(truth_file), labels)
        kept.append(case["case"] in kept_cases)
        mean_true.append(float(dice.mean()))
        worst_true.append(float(dice.min()))
    kept, mean_true, worst_true = map(np.asarray, (kept, mean_true, worst_true))
    scores = np.asarray([estimate[case["case"]] for case in quality["cases"]])
    return {"run": run, "cases": int(len(kept)), "kept": int(kept.sum()),
            "true_dice_all": float(mean_true.mean()),
            "true_dice_kept": float(mean_true[kept].mean()) if kept.any() else None,
            "true_dice_dropped": float(mean_true[~kept].mean()) if (~kept).any() else None,
            "kept_in_true_top_half": float(np.mean(mean_true[kept] >= np.median(mean_true))) if kept.any() else None,
            "pearson_gate_vs_true_worst": float(stats.pearsonr(scores, worst_true)[0]),
            "spearman_gate_vs_true_mean": float(stats.spearmanr(scores, mean_true)[0])}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="-o folders of nnUNetv2_qg_self_train runs")
    parser.add_argument("--labels", required=True, help="folder with the true labels of the unlabelled cases")
    parser.add_argument("--json", default="benchmark_results/offline_pseudo_label_truth.json")
    args = parser.parse_args(argv)
    for run in args.runs:
        if not isfile(join(run, "self_training.json")) or not isdir(join(run, "round_1", "pseudo_labels")):
            parser.error(f"{run} is not a finished nnUNetv2_qg_self_train -o folder (no self_training.json or "
                         f"round_1/pseudo_labels)")
    if not isdir(args.labels):
        parser.error(f"--labels {args.labels} is not a folder")
    rows = [judge_run(abspath(run), args.labels) for run in args.runs]
    print_table([{**r, "run": os.path.basename(r["run"])} for r in rows],
                ["run", "cases", "kept", "true_dice_all", "true_dice_kept", "true_dice_dropped",
                 "kept_in_true_top_half", "pearson_gate_vs_true_worst", "spearman_gate_vs_true_mean"])
    write_json({"labels": abspath(args.labels), "runs": rows}, args.json)


if __name__ == "__main__":
    main()
