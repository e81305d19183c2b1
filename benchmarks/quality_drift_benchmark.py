"""Quality predictor drift benchmark: does a g frozen after the warm-up still judge the network's
later predictions, which g does better, and how well does each rank whole held-out cases?

    python benchmarks/quality_drift_benchmark.py [--profile cpu|gpu] [--data ../shared/data/hippocampus]
        [--reader NibabelIO] [--reuse]

Converts the shared Hippocampus data with its 10 % split (20 labelled cases), plans and
preprocesses with stock nnU-Net and trains `nnUNetTrainerQGDrift_<profile>Bench` (fold 0): plain
nnU-Net training with nine quality predictors side by side (frozen = the paper's and
nnUNetTrainerQGSSL_gFrozen's, refreshed = nnUNetTrainerQGSSL's, corruptions-only, ranked,
ranked_multiscale, belief, full_resolution, multistep, with_self_estimate; see the trainer) and the network's self-estimate, each judged at every
validation on the same masks: the network's real predictions, the EMA teacher's (what PL-QW weights) and corrupted ground
truth. Prints MAE / bias / Pearson per g at the end of the warm-up and at the end of training,
writes all epochs to JSON; the curves are in the fold folder's quality_drift.png.

Then every g as it was at the end of training, and the network's own expected Dice, are judged on
whole held-out cases: the 60 test cases, predicted by the final network (per-case MAE / bias /
Pearson / Spearman, and a predicted-vs-true scatter plot `<out>_test_cases.png`). The validation
patches come from 4 cases only; the test cases are the steadier ranking measurement. One network's
test cases lie in a narrow band of true Dice; the paper measures g on masks of many qualities
(corruptions and weak checkpoints). So the same g also judge the test cases predicted by the
networks the run kept after a few early epochs, pooled with the final network's: the wide band
(table "several stages", plot `<out>_stages.png`), and pooled over the networks that segment
something only (an early network that predicts nothing makes an easy cluster at true Dice 0).
"""
import glob
import json
import os
import re
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
                                                      label_names, pooled_agreement, true_dice_spread,
                                                      without_pairs)
from nnunet_qg.experiments.trainers.nnUNetTrainerQGDrift import (DRIFT_PREDICTORS, DRIFT_VARIANTS,  # noqa: E402
                                                                 drift_predictor_file, drift_stage_checkpoint)
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


def exported_predictors(fold: str, device: torch.device) -> dict:
    """Every g the drift run exported at the end of training, by name."""
    predictors = {name: load_quality_predictor(join(fold, drift_predictor_file(name)), device)
                  for name in DRIFT_PREDICTORS if os.path.isfile(join(fold, drift_predictor_file(name)))}
    missing = [name for name in DRIFT_PREDICTORS if name not in predictors]
    if missing:  # a fold trained before these variants existed (--reuse)
        print(f"No exported g for {', '.join(missing)} in {fold}: judged without them.")
    return predictors


def judge_network(fold: str, checkpoint: str, predictors: dict, device: torch.device) -> dict:
    """agreement_on_cases on the 60 test cases, predicted by the fold's network `checkpoint`."""
    raw = join(os.environ["nnUNet_raw"], "Dataset004_Hippocampus")
    return agreement_on_cases(dirname(fold), 0, checkpoint, join(raw, "imagesTs"), join(raw, "labelsTs"),
                              predictors, device)


def agreement_rows(results: dict, names: list) -> list:
    return [{"g": name, "label": label, **{m: results[name][label][m] for m in ("n", "mae", "bias", "pearson",
                                                                                 "spearman")}}
            for name in results for label in names + ["mean"]]


def judge_on_test_cases(fold: str, predictors: dict, device: torch.device, plot: str) -> dict:
    """Every g exported at the end of training, and the network's self-estimate, on the test cases
    predicted by the final network (a narrow band of true Dice)."""
    results = judge_network(fold, "checkpoint_final.pth", predictors, device)
    names = label_names(results)
    # does g add anything to the network's own estimate? their plain mean, no fitting
    truth = results[SELF_ESTIMATE]["pairs"][1]
    blend = 0.5 * (results["refreshed"]["pairs"][0] + results[SELF_ESTIMATE]["pairs"][0])
    results["mean of refreshed and self_estimate"] = {"pairs": (blend, truth),
                                                      **agreement_per_label(blend, truth, names)}
    summary = without_pairs(results)
    plot_calibration({k: r["pairs"] for k, r in results.items()}, names, summary, plot,
                     "Whole test cases predicted by the final network: predicted vs true Dice")
    return {"rows": agreement_rows(summary, names), "agreement": summary, "true_dice": true_dice_spread(results),
            "results": results}


def stage_epochs(fold: str) -> list:
    """The epochs whose networks the drift run kept (drift_stage_checkpoint), in order."""
    found = glob.glob(join(fold, drift_stage_checkpoint(0).replace("0", "*")))
    return sorted(int(re.search(r"_(\d+)\.pth$", f).group(1)) for f in found)


def judge_on_stages(fold: str, epochs: list, predictors: dict, device: torch.device, final: dict, plot: str) -> dict:
    """The same g on the test cases predicted by the networks kept after `epochs` (stage_epochs) and by the
    final one, pooled: a wide band of true Dice, like the paper's test sets (masks of weak checkpoints)."""
    per_network = {f"epoch {e}": judge_network(fold, drift_stage_checkpoint(e), predictors, device)
                   for e in epochs}
    per_network["final"] = {k: v for k, v in final["results"].items() if k in per_network[next(iter(per_network))]}
    # an early network that predicts nothing gives every case true Dice 0: an easy cluster for any g that
    # knows an empty mask is bad, so the networks that segment something are also pooled on their own
    segmenting = {stage: r for stage, r in per_network.items() if next(iter(r.values()))["pairs"][1].max() > 0}
    pooled, pooled_segmenting = pooled_agreement(per_network), pooled_agreement(segmenting)
    names = label_names(pooled)
    summary, summary_segmenting = without_pairs(pooled), without_pairs(pooled_segmenting)
    plot_calibration({k: r["pairs"] for k, r in pooled.items()}, names, summary, plot,
                     "Test cases predicted by networks of several stages (" + ", ".join(per_network) +
                     "): predicted vs true Dice")
    rows = [{"g": name, "n": summary[name]["mean"]["n"],
             **{m: summary[name]["mean"][m] for m in ("mae", "bias", "pearson", "spearman")},
             "n segmenting": summary_segmenting[name]["mean"]["n"],
             **{f"{m} segmenting": summary_segmenting[name]["mean"][m] for m in ("mae", "pearson", "spearman")},
             **{f"r {stage}": per_network[stage][name]["mean"]["pearson"] for stage in per_network}}
            for name in pooled]
    spread = {stage: true_dice_spread(r) for stage, r in per_network.items()}
    return {"rows": rows, "agreement": summary, "agreement_segmenting": summary_segmenting,
            "segmenting_stages": list(segmenting), "true_dice": spread,
            "true_dice_pooled": true_dice_spread(pooled), "stages": list(per_network)}


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
    predictors = exported_predictors(fold, torch.device(profile["device"]))
    cases = judge_on_test_cases(fold, predictors, torch.device(profile["device"]), cases_plot)
    stages_plot = splitext(abspath(args.out))[0] + "_stages.png"
    epochs = stage_epochs(fold)
    stages = judge_on_stages(fold, epochs, predictors, torch.device(profile["device"]), cases, stages_plot) \
        if epochs else None
    cases.pop("results")
    spread = ", ".join(f"label {k}: {v['mean']:.3f} +- {v['std']:.3f} ({v['min']:.3f}-{v['max']:.3f})"
                       for k, v in cases["true_dice"].items())
    print(f"\nThe same g at the end of training, and the network's own expected Dice (self_estimate), on the "
          f"{cases['rows'][0]['n']} test cases predicted by the final network (true Dice {spread}):")
    cases_table = print_table(cases["rows"], ["g", "label", "n", "mae", "bias", "pearson", "spearman"])
    stages_table = None
    if stages:
        band = ", ".join(f"{stage}: {np.mean([v['mean'] for v in spread.values()]):.3f}"
                         for stage, spread in stages["true_dice"].items())
        print(f"\nThe same g on the test cases predicted by the networks of several stages, pooled "
              f"(n = {stages['rows'][0]['n']} case predictions; mean true Dice per network: {band}); "
              f"MAE / bias / Pearson / Spearman: mean over labels; '... segmenting': pooled over the networks "
              f"that segment something ({', '.join(stages['segmenting_stages'])}); 'r <stage>': Pearson within "
              f"one network:")
        stages_table = print_table(stages["rows"], list(stages["rows"][0]))
    print("\nDrift on the validation patches (above the test cases):\n" + table)
    write_json({"profile": args.profile, "device": device, "trainer": profile["trainer"], "table": table,
                "drift": drift, "test_cases": cases, "test_cases_table": cases_table,
                "stages": stages, "stages_table": stages_table, "stages_plot": stages_plot if stages else None,
                "reused_trained_fold": args.reuse, "wall_time_s": time.time() - started, "plot": plot, "test_cases_plot": cases_plot}, args.out)


if __name__ == "__main__":
    main()
