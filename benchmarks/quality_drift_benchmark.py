"""Quality predictor drift benchmark: does a g frozen after the warm-up still judge the network's
later predictions, and does a refreshed or a corruptions-only g do better?

    python benchmarks/quality_drift_benchmark.py [--profile cpu|gpu] [--data ../shared/data/hippocampus]

Converts the shared Hippocampus data with its 10 % split (20 labelled cases), plans and
preprocesses with stock nnU-Net and trains `nnUNetTrainerQGDrift_<profile>Bench` (fold 0): plain
nnU-Net training with three quality predictors side by side (frozen = the paper's and
nnUNetTrainerQGSSL_gFrozen's, refreshed = nnUNetTrainerQGSSL's, corruptions-only), each judged at every validation on the same
masks: the network's real predictions, the EMA teacher's (what PL-QW weights) and corrupted ground
truth. Prints MAE / bias / Pearson per g at the end of the warm-up and at the end of training,
writes all epochs to JSON; the curves are in the fold folder's quality_drift.png.
"""
import json
import shutil
import sys
import time
from os.path import abspath, dirname, join, splitext

import numpy as np
import torch

sys.path.insert(0, dirname(abspath(__file__)))
from nnunet_qg.quality.metrics import finite_mean  # noqa: E402
from common import (device_description, hippocampus_arguments, prepare_hippocampus, print_table,  # noqa: E402
                    train_fold0, write_json)

PROFILES = {"cpu": {"trainer": "nnUNetTrainerQGDrift_cpuBench", "device": "cpu", "max_unlabelled": 8},
            "gpu": {"trainer": "nnUNetTrainerQGDrift_gpuBench", "device": "cuda", "max_unlabelled": 16}}
VARIANTS = ("frozen", "refreshed", "corruptions_only")


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
    return [row(when, variant, records) for when, records in picked for variant in VARIANTS]


def main() -> None:
    args = hippocampus_arguments(__doc__.split("\n\n")[0], PROFILES, "quality_drift_work", "quality_drift.json")
    profile = PROFILES[args.profile]
    started = time.time()
    env = prepare_hippocampus(args.data, args.work, profile["max_unlabelled"], profile["device"])
    fold = train_fold0(profile["trainer"], profile["device"], args.work, env)
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
    write_json({"profile": args.profile, "device": device, "trainer": profile["trainer"], "table": table,
                "drift": drift, "wall_time_s": time.time() - started, "plot": plot}, args.out)


if __name__ == "__main__":
    main()
