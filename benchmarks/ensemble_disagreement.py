"""Does disagreement between independently trained networks rank their failed predictions? (issue #23)

Command used for benchmarks/results/ensemble_disagreement_hippocampus2d_2026-12-06.json:

    nice -n 19 python benchmarks/ensemble_disagreement.py --predictions /work/evidence_run/work/predictions --labels /work/evidence_run/work/nnUNet_raw/Dataset810_Hippocampus/labelsTs --teacher-predictions /work/evidence_run/work/predictions_teacher

(the teacher folders: each pl_mirror seed's EMA teacher, `nnUNetv2_qg_export_teacher <fold_all>/checkpoint_final.pth`,
then the benchmark's own nnUNetv2_predict command (-device cpu --disable_tta -npp 1 -nps 1) with
-chk checkpoint_final_teacher.pth.)

Reads test-set predictions of networks that differ only in their training seed (folders
<prefix>_r<SEED>_<ARM>, e.g. 1labelled_r3_pl_qw) and the ground truth. Only folders that hold a
prediction for every ground-truth case are used, and only arms with at least --min-seeds such folders.
For each arm, seed k and test case it computes
  * the true Dice of seed k's prediction (mean over the foreground labels of dice_per_label; both empty -> 1),
  * the leave-one-out pairwise agreement: mean over the other seeds j of Dice(pred_k, pred_j),
  * the agreement of pred_k with the per-voxel majority vote of the other seeds (ties go to the lowest
    label, i.e. background first),
and judges each agreement as an estimate of the true Dice with nnunet_qg.quality.metrics: per network
(seed) Pearson, Spearman, MAE, mean bias (agreement - true Dice) and AUROC for flagging cases with true
Dice < --fail-below (low agreement = flagged; null when one class is empty), and the same pooled over the
arm's seeds. With --teacher-predictions (folders named like those of --predictions, e.g. 1labelled_r3_pl_mirror, holding
the predictions of that network's own EMA teacher) it adds, for every seed whose teacher folder is complete, the
signal student_teacher = Dice(pred_k, teacher_k's prediction), judged the same way over those seeds, and the
teacher's own true Dice. Prints a table and writes JSON atomically (benchmarks/common.write_json).
"""
import argparse
import glob
import re
import sys
from os.path import abspath, basename, dirname, isdir, join
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, dirname(abspath(__file__)))
from common import device_description, print_table, write_json  # noqa: E402

from nnunet_qg.source_commit import source_commit  # noqa: E402
from nnunet_qg.quality.dice import dice_per_label  # noqa: E402
from nnunet_qg.quality.metrics import agreement, detection_auroc, finite_mean  # noqa: E402

FOLDER_RE = re.compile(r"^(?P<prefix>.+)_r(?P<seed>\d+)_(?P<arm>.+)$")
SIGNALS = ("pairwise_loo", "majority_vote_loo")
TEACHER_SIGNAL = "student_teacher"
FIGURES = ("pearson", "spearman", "mae", "bias", "auroc_fail")


def case_name(path: str) -> str:
    """Case identifier of a .nii.gz file ('hippocampus_019')."""
    return basename(path)[: -len(".nii.gz")]


def load_mask(path: str) -> np.ndarray:
    """Label map of a NIfTI file as a uint8 array."""
    return sitk.GetArrayFromImage(sitk.ReadImage(path)).astype(np.uint8)


def mean_dice(a: np.ndarray, b: np.ndarray, labels: Sequence[int]) -> float:
    """Mean over `labels` of dice_per_label(a, b)."""
    return float(np.mean(dice_per_label(a, b, labels).astype(float)))


def majority_vote(masks: Sequence[np.ndarray], n_labels: int) -> np.ndarray:
    """Per-voxel mode of `masks`; ties go to the lowest label."""
    counts = np.stack([sum((m == lab).astype(np.int16) for m in masks) for lab in range(n_labels)])
    return np.argmax(counts, axis=0).astype(np.uint8)  # argmax returns the first (lowest) label on ties


def defined(x: float) -> Optional[float]:
    """x, or None where it is nan (strict JSON)."""
    return None if np.isnan(x) else float(x)


def judge(signal: np.ndarray, true: np.ndarray, fail_below: float) -> Dict:
    """agreement() and detection_auroc() of `signal` as an estimate of `true`; None where undefined."""
    fig = {**agreement(signal, true), "auroc_fail": detection_auroc(signal, true, fail_below)}
    return {"n_cases": fig["n"], "n_failed": int((true < fail_below).sum()),
            **{k: defined(fig[k]) for k in FIGURES}}


def complete_arms(predictions: str, cases: Sequence[str], prefix: str, min_seeds: int) -> Dict[str, Dict[int, str]]:
    """{arm: {seed: folder}} for folders holding every case, keeping arms with >= min_seeds of them."""
    arms: Dict[str, Dict[int, str]] = {}
    for folder in sorted(glob.glob(join(predictions, f"{prefix}_r*_*"))):
        m = FOLDER_RE.match(basename(folder))
        if not isdir(folder) or m is None or m.group("prefix") != prefix:
            continue
        present = {case_name(p) for p in glob.glob(join(folder, "*.nii.gz"))}
        if all(c in present for c in cases):
            arms.setdefault(m.group("arm"), {})[int(m.group("seed"))] = folder
    return {arm: dict(sorted(seeds.items())) for arm, seeds in sorted(arms.items()) if len(seeds) >= min_seeds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--predictions", required=True, help="folder of <prefix>_r<SEED>_<ARM> prediction folders")
    parser.add_argument("--labels", required=True, help="ground-truth label maps (*.nii.gz)")
    parser.add_argument("--prefix", default="1labelled", help="prediction folder prefix before _r<SEED>_")
    parser.add_argument("--labels-fg", type=int, nargs="+", default=[1, 2], help="foreground labels")
    parser.add_argument("--min-seeds", type=int, default=4, help="arms need this many complete seeds")
    parser.add_argument("--teacher-predictions", default=None,
                        help="folder of <prefix>_r<SEED>_<ARM> folders predicted by each network's EMA teacher")
    parser.add_argument("--fail-below", type=float, default=0.7, help="true Dice below this = failed case")
    parser.add_argument("--device-note", default="shared with a training run",
                        help="appended to the device line")
    parser.add_argument("--out", default=join(dirname(abspath(__file__)), "results",
                                              "ensemble_disagreement_hippocampus2d_2026-12-06.json"))
    args = parser.parse_args()

    gt_files = sorted(glob.glob(join(args.labels, "*.nii.gz")))
    if not gt_files:
        raise SystemExit(f"ERROR: no ground truth in {args.labels}")
    cases = [case_name(p) for p in gt_files]
    arms = complete_arms(args.predictions, cases, args.prefix, args.min_seeds)
    if not arms:
        raise SystemExit(f"ERROR: no arm with >= {args.min_seeds} complete seeds in {args.predictions}")
    teachers = ({arm: {s: f for s, f in seeds.items() if s in arms.get(arm, {})}
                 for arm, seeds in complete_arms(args.teacher_predictions, cases, args.prefix, 1).items()}
                if args.teacher_predictions else {})
    teachers = {arm: seeds for arm, seeds in teachers.items() if seeds}
    n_labels = max(args.labels_fg) + 1
    gts = {c: load_mask(p) for c, p in zip(cases, gt_files)}

    rows: List[Dict] = []
    per_network: List[Dict] = []
    pooled: List[Dict] = []
    table: List[Dict] = []
    for arm, seeds in arms.items():
        seed_list = list(seeds)
        arm_teachers = teachers.get(arm, {})
        print(f"{arm}: seeds {seed_list}" + (f", teachers {list(arm_teachers)}" if arm_teachers else ""), flush=True)
        arm_rows = []
        for case in cases:
            gt = gts[case]
            preds = {s: load_mask(join(seeds[s], case + ".nii.gz")) for s in seed_list}
            teacher_preds = {s: load_mask(join(f, case + ".nii.gz")) for s, f in arm_teachers.items()}
            for s, p in [*preds.items(), *teacher_preds.items()]:
                if p.shape != gt.shape:
                    raise SystemExit(f"ERROR: {arm} r{s} {case}: shape {p.shape} != ground truth {gt.shape}")
            pair = {}
            for i, a in enumerate(seed_list):
                for b in seed_list[i + 1:]:
                    pair[(a, b)] = pair[(b, a)] = mean_dice(preds[a], preds[b], args.labels_fg)
            for k in seed_list:
                others = [j for j in seed_list if j != k]
                true_per_label = dice_per_label(preds[k], gt, args.labels_fg).astype(float)
                mv = majority_vote([preds[j] for j in others], n_labels)
                arm_rows.append({
                    "arm": arm, "seed": k, "case": case, "true_dice": float(np.mean(true_per_label)),
                    "true_dice_per_label": dict(zip(map(str, args.labels_fg), map(float, true_per_label))),
                    "pairwise_loo": float(np.mean([pair[(k, j)] for j in others])),
                    "pairwise_dice": {str(j): pair[(k, j)] for j in others},
                    "majority_vote_loo": mean_dice(preds[k], mv, args.labels_fg),
                })
                if k in teacher_preds:
                    arm_rows[-1][TEACHER_SIGNAL] = mean_dice(preds[k], teacher_preds[k], args.labels_fg)
                    arm_rows[-1]["teacher_true_dice"] = mean_dice(teacher_preds[k], gt, args.labels_fg)
        rows += arm_rows
        for signal in SIGNALS + ((TEACHER_SIGNAL,) if arm_teachers else ()):
            sig_seeds = list(arm_teachers) if signal == TEACHER_SIGNAL else seed_list
            sig_rows = [x for x in arm_rows if x["seed"] in sig_seeds]
            nets = []
            for k in sig_seeds:
                r = [x for x in sig_rows if x["seed"] == k]
                true = np.array([x["true_dice"] for x in r])
                fig = judge(np.array([x[signal] for x in r]), true, args.fail_below)
                fig.update(arm=arm, seed=k, signal=signal, mean_true_dice=float(true.mean()),
                           mean_signal=float(np.mean([x[signal] for x in r])))
                if signal == TEACHER_SIGNAL:
                    fig["mean_teacher_true_dice"] = float(np.mean([x["teacher_true_dice"] for x in r]))
                    print(f"  r{k}: mean test Dice student {fig['mean_true_dice']:.4f}, "
                          f"teacher {fig['mean_teacher_true_dice']:.4f}", flush=True)
                nets.append(fig)
            per_network += nets
            true_all = np.array([x["true_dice"] for x in sig_rows])
            pool = judge(np.array([x[signal] for x in sig_rows]), true_all, args.fail_below)
            pool.update(arm=arm, signal=signal, seeds=sig_seeds)
            pooled.append(pool)
            line = {"arm": arm, "signal": signal, "n_seeds": len(sig_seeds)}
            for key in FIGURES:
                values = np.array([n[key] for n in nets], dtype=float)  # None -> nan
                line[f"within_{key}"] = defined(finite_mean(values))
                line[f"within_{key}_n"] = int(np.isfinite(values).sum())
            line["within_n_failed"] = [n["n_failed"] for n in nets]
            line["pooled_pearson"], line["pooled_spearman"] = pool["pearson"], pool["spearman"]
            line["pooled_auroc_fail"] = pool["auroc_fail"]
            table.append(line)

    print("\nW = within-network mean over seeds; P = pooled over the arm's seeds; "
          f"AUROC flags true Dice < {args.fail_below} by low agreement")
    cells = {"W Pearson": "within_pearson", "W Spearman": "within_spearman", "W MAE": "within_mae",
             "W bias": "within_bias", "P Pearson": "pooled_pearson", "P Spearman": "pooled_spearman",
             "P AUROC": "pooled_auroc_fail"}
    print_table([{"arm": t["arm"], "signal": t["signal"], "seeds": t["n_seeds"],
                  **{c: "-" if t[k] is None else t[k] for c, k in cells.items()},
                  "W AUROC (n)": ("-" if t["within_auroc_fail"] is None else f"{t['within_auroc_fail']:.4g}")
                  + f" ({t['within_auroc_fail_n']})",
                  "failed/seed": ",".join(map(str, t["within_n_failed"]))} for t in table],
                ["arm", "signal", "seeds", "W Pearson", "W Spearman", "W MAE", "W bias", "W AUROC (n)",
                 "failed/seed", "P Pearson", "P Spearman", "P AUROC"])

    write_json({
        "commit": source_commit(),
        "device": f"{device_description(torch.device('cpu'))}, {args.device_note}",
        "question": "issue #23: does disagreement between independently trained networks rank failed predictions?",
        "inputs": {
            "predictions": abspath(args.predictions), "labels": abspath(args.labels), "prefix": args.prefix,
            "cases": cases, "foreground_labels": args.labels_fg, "min_seeds": args.min_seeds,
            "fail_below": args.fail_below,
            "arms": {arm: {str(s): f for s, f in seeds.items()} for arm, seeds in arms.items()},
            "teacher_predictions": abspath(args.teacher_predictions) if args.teacher_predictions else None,
            "teachers": {arm: {str(s): f for s, f in seeds.items()} for arm, seeds in teachers.items()},
        },
        "definitions": {
            "true_dice": "mean over foreground labels of Dice(pred_k, ground truth); label empty in both = 1",
            "pairwise_loo": "mean over the other seeds j of Dice(pred_k, pred_j), same per-label mean",
            "majority_vote_loo": "Dice(pred_k, per-voxel mode of the other seeds' predictions); ties -> lowest label",
            "student_teacher": "Dice(pred_k, prediction of network k's own EMA teacher), same per-label mean",
            "teacher_true_dice": "Dice(teacher_k's prediction, ground truth), same per-label mean",
            "bias": "mean(agreement - true Dice)",
            "auroc_fail": "AUROC of -agreement for cases with true Dice < fail_below (Mann-Whitney, ties 1/2); "
                          "null when one class is empty",
            "within": "figures per network (seed), then mean over the networks where defined (n given)",
        },
        "summary": table,
        "pooled": pooled,
        "per_network": per_network,
        "per_case": rows,
    }, args.out)


if __name__ == "__main__":
    main()
