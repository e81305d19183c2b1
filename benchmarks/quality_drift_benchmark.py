"""Quality predictor drift benchmark: does a g frozen after the warm-up still judge the network's
later predictions, which g does better, and how well does each rank whole held-out cases?

    python benchmarks/quality_drift_benchmark.py [--profile cpu|gpu] [--data ../shared/data/hippocampus]
        [--reader NibabelIO] [--reuse]

Converts the shared Hippocampus data with its 10 % split (20 labelled cases), plans and
preprocesses with stock nnU-Net and trains `nnUNetTrainerQGDrift_<profile>Bench` (fold 0): plain
nnU-Net training with six quality predictors side by side (frozen = the paper's and
nnUNetTrainerQGSSL_gFrozen's, refreshed = nnUNetTrainerQGSSL's, corruptions-only, ranked,
ranked_multiscale, belief; see the trainer) and the network's self-estimate, each judged at every
validation on the same masks: the network's real predictions, the EMA teacher's (what PL-QW weights) and corrupted ground
truth. Prints MAE / bias / Pearson per g at the end of the warm-up and at the end of training,
writes all epochs to JSON; the curves are in the fold folder's quality_drift.png.

Then every g as it was at the end of training, and the network's own expected Dice, are judged on
whole held-out cases: the 60 test cases, predicted by the final network (per-case MAE / bias /
Pearson / Spearman, and a predicted-vs-true scatter plot `<out>_test_cases.png`). The validation
patches come from 4 cases only; the test cases are the steadier ranking measurement.
"""
import json
import os
import shutil
import sys
import time
from os.path import abspath, dirname, join, splitext

import numpy as np
import torch

sys.path.insert(0, dirname(abspath(__file__)))
from nnunet_qg.plotting import plot_calibration  # noqa: E402
from nnunet_qg.quality.metrics import agreement_per_label, finite_mean  # noqa: E402
from nnunet_qg.quality.network import load_quality_predictor  # noqa: E402
from nnunet_qg.quality_control.case_agreement import (SELF_ESTIMATE, agreement_on_cases,  # noqa: E402
                                                      label_names, true_dice_spread, without_pairs)
from nnunet_qg.trainers.nnUNetTrainerQGDrift import DRIFT_PREDICTORS, DRIFT_VARIANTS, drift_predictor_file  # noqa: E402
from common import (device_description, hippocampus_arguments, hippocampus_environment,  # noqa: E402
                    prepare_hippocampus, print_table, train_fold0, write_json)

PROFILES = {"cpu": {"trainer": "nnUNetTrainerQGDrift_cpuBench", "device": "cpu", "max_unlabelled": 8},
            "gpu": {"trainer": "nnUNetTrainerQGDrift_gpuBench", "device": "cuda", "max_unlabelled": 16}}


def row(when: str, variant: str, records: list) -> dict:
    """One g's figures, averaged over `records` (epochs; nan-aware for undefined correlations)."""
    out = {"when": when, "g": variant, "network val Dice": float(np.mean([r["val_pseudo_dice"] for r in records]))}
    for kind in ("real", "teacher", "corrupted"):
        for metric, column in (("mae", "MAE"), ("bias", "bias"), ("pearson", "r")):
            out[f"{kind} {column}"] = finite_mean([r[variant][kind]["mean"][metric] for r in records])
    return out


def table_rows(drift: dict) -> list:
    """Per g: at the end of the warm-up, at the last epoch, and averaged over all epochs after the
    warm-up (one validation is only 2 x 25 patches: the average is the steadier figure)."""
    epochs, w = drift["epochs"], drift["warmup_epochs"]
    picked = [(f"end of warm-up (epoch {w - 1})", epochs[w - 1:w]),
              (f"last epoch ({epochs[-1]['epoch']})", epochs[-1:]),
              (f"mean of epochs {w}-{epochs[-1]['epoch']}", epochs[w:])]
    variants = [v for v in DRIFT_VARIANTS if v in epochs[0]]  # a fold trained before a variant existed lacks it
    return [row(when, variant, records) for when, records in picked for variant in variants]


def judge_on_test_cases(fold: str, device: torch.device, plot: str) -> dict:
    """Every g exported at the end of training, and the network's self-estimate, on the test cases."""
    raw = join(os.environ["nnUNet_raw"], "Dataset004_Hippocampus")
    predictors = {name: load_quality_predictor(join(fold, drift_predictor_file(name)), device)
                  for name in DRIFT_PREDICTORS if os.path.isfile(join(fold, drift_predictor_file(name)))}
    missing = [name for name in DRIFT_PREDICTORS if name not in predictors]
    if missing:  # a fold trained before these variants existed (--reuse)
        print(f"No exported g for {', '.join(missing)} in {fold}: judged without them.")
    results = agreement_on_cases(dirname(fold), 0, "checkpoint_final.pth", join(raw, "imagesTs"),
                                 join(raw, "labelsTs"), predictors, device)
    names = label_names(results)
    # does g add anything to the network's own estimate? their plain mean, no fitting
    truth = results[SELF_ESTIMATE]["pairs"][1]
    blend = 0.5 * (results["refreshed"]["pairs"][0] + results[SELF_ESTIMATE]["pairs"][0])
    results["mean of refreshed and self_estimate"] = {"pairs": (blend, truth),
                                                      **agreement_per_label(blend, truth, names)}
    summary = without_pairs(results)
    plot_calibration({k: r["pairs"] for k, r in results.items()}, names, summary, plot,
                     "Whole test cases predicted by the final network: predicted vs true Dice")
    rows = [{"g": name, "label": label, **{m: summary[name][label][m] for m in ("n", "mae", "bias", "pearson",
                                                                               "spearman")}}
            for name in results for label in names + ["mean"]]
    return {"rows": rows, "agreement": summary, "true_dice": true_dice_spread(results)}


def main() -> None:
    args = hippocampus_arguments(__doc__.split("\n\n")[0], PROFILES, "quality_drift_work", "quality_drift.json",
                                 reuse=True)
    profile = PROFILES[args.profile]
    started = time.time()
    env = hippocampus_environment(args.work, profile["device"]) if args.reuse else \
        prepare_hippocampus(args.data, args.work, profile["max_unlabelled"], profile["device"],
                            args.reader)
    fold = train_fold0(profile["trainer"], profile["device"], args.work, env, train=not args.reuse)
    with open(join(fold, "quality_drift.json")) as f:
        drift = json.load(f)
    device = device_description(torch.device(profile["device"]))
    print(f"\nQuality predictor drift on Hippocampus, 10 % labelled (20 cases), fold-0 validation patches, "
          f"{profile['trainer']}, {device}; warm-up {drift['warmup_epochs']} of {len(drift['epochs'])} epochs, "
          f"refreshed g: one step every {drift['refresh_every']} iterations after it. r = Pearson; "
          f"bias = mean(predicted - true), < 0: g under-rates.")
    columns = ["when", "g", "network val Dice"] + [f"{k} {m}" for k in ("real", "teacher", "corrupted")
                                                   for m in ("MAE", "bias", "r")]
    table = print_table(table_rows(drift), columns)
    plot = splitext(abspath(args.out))[0] + ".png"
    shutil.copyfile(join(fold, "quality_drift.png"), plot)
    cases_plot = splitext(abspath(args.out))[0] + "_test_cases.png"
    cases = judge_on_test_cases(fold, torch.device(profile["device"]), cases_plot)
    spread = ", ".join(f"label {k}: {v['mean']:.3f} +- {v['std']:.3f} ({v['min']:.3f}-{v['max']:.3f})"
                       for k, v in cases["true_dice"].items())
    print(f"\nThe same g at the end of training, and the network's own expected Dice (self_estimate), on the "
          f"{cases['rows'][0]['n']} test cases predicted by the final network (true Dice {spread}):")
    cases_table = print_table(cases["rows"], ["g", "label", "n", "mae", "bias", "pearson", "spearman"])
    print("\nDrift on the validation patches (above the test cases):\n" + table)
    write_json({"profile": args.profile, "device": device, "trainer": profile["trainer"], "table": table,
                "drift": drift, "test_cases": cases, "test_cases_table": cases_table,
                "reused_trained_fold": args.reuse, "wall_time_s": time.time() - started, "plot": plot, "test_cases_plot": cases_plot}, args.out)


if __name__ == "__main__":
    main()
