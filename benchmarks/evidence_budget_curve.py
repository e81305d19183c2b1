"""Protocol design for the evidence profile: is the supervised arm on its plateau at the budget?

Trains nnUNetTrainer_evidenceCurve (the evidence budget, with the network kept after epochs 5, 10,
20, 30, 40, 50, 60) on a dataset an evidence run prepared, then predicts the split's test cases with
every kept network and evaluates them: test Dice against iterations, as a table, JSON and PNG.

    python benchmarks/evidence_budget_curve.py --work benchmark_results/evidence/work -d 810 \
        -o benchmarks/results/evidence_budget_curve_cpu.json
    # only judge a fold that was trained already (kept checkpoints in it):
    python benchmarks/evidence_budget_curve.py --work ... -d 810 --fold-folder PATH --trainer NAME -o ...
"""
import argparse
import glob
import json
import os
import re
from os.path import join

from common import print_table, write_json

from nnunet_qg import pipeline
from nnunet_qg.benchmark.device import describe_device
from nnunet_qg.source_commit import source_commit
from nnunet_qg.plotting import plt, save_figure

TRAINER = "nnUNetTrainer_evidenceCurve"


def kept_checkpoints(fold: str):
    """(epoch, file name) of the networks kept in a fold, and the final one, by epoch."""
    kept = [(int(re.search(r"epoch_(\d+)", f).group(1)), os.path.basename(f))
            for f in glob.glob(join(fold, "checkpoint_epoch_*.pth"))]
    return sorted(kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="an evidence run's work folder (nnUNet_raw/_preprocessed)")
    parser.add_argument("-d", type=int, default=810, help="the 1labelled dataset id of that run")
    parser.add_argument("--seed", type=int, default=0, help="nnUNet_qg_seed of the training")
    parser.add_argument("--fold-folder", default=None, help="judge this trained fold instead of training one")
    parser.add_argument("--trainer", default=TRAINER, help="the trainer of --fold-folder")
    parser.add_argument("-o", required=True, help="output JSON (the PNG beside it)")
    args = parser.parse_args()

    env = pipeline.nnunet_env(args.work, nnUNet_n_proc_DA="1", nnUNet_def_n_proc="2", nnUNet_compile="f",
                              PYTHONUNBUFFERED="1", nnUNet_qg_seed=str(args.seed))
    env["nnUNet_results"] = join(args.work, "nnUNet_results_curve")
    logs = join(args.work, "logs")
    fold = args.fold_folder
    train_s = None
    if fold is not None:  # nnUNet_results/<dataset>/<trainer>__<plans>__2d/fold_all
        env["nnUNet_results"] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(fold))))
    if fold is None:
        fold = pipeline.model_folder(env, args.d, TRAINER, "2d", "all")
        train_s = pipeline.train(args.d, "2d", "all", TRAINER, env, join(logs, "train_budget_curve.log"))
    raw = pipeline.raw_dataset_folder(env, args.d)
    rows = []
    for epoch, checkpoint in kept_checkpoints(fold):
        out = join(args.work, "predictions_curve", checkpoint[:-4])
        if os.path.isfile(join(out, "summary.json")):  # judged by an earlier call: resumable
            with open(join(out, "summary.json")) as f:
                summary = json.load(f)
        else:
            pipeline.predict(args.d, "2d", "all", args.trainer, join(raw, "imagesTs"), out, env,
                             join(logs, f"predict_curve_{epoch}.log"), tta=False, checkpoint=checkpoint)
            summary = pipeline.evaluate(join(raw, "labelsTs"), out, env, join(logs, f"evaluate_curve_{epoch}.log"))
        rows.append({"epoch": epoch + 1, "iterations": (epoch + 1) * 50, "test_dice": summary["foreground_mean"]["Dice"]})
        print(f"epoch {epoch + 1}: test Dice {rows[-1]['test_dice']:.4f}", flush=True)
    table = print_table(rows, ["epoch", "iterations", "test_dice"])
    write_json({"commit": source_commit(), "device": describe_device("cpu"), "dataset_id": args.d,
                "trainer": args.trainer, "seed": args.seed, "train_wall_s": train_s, "rows": rows, "table": table},
               args.o)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["iterations"] for r in rows], [r["test_dice"] for r in rows], marker="o")
    ax.set_xlabel("iterations (batch 4)")
    ax.set_ylabel("test Dice (60 cases)")
    ax.set_title(f"supervised, 1 labelled case, seed {args.seed}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, args.o.replace(".json", ".png"), dpi=100)


if __name__ == "__main__":
    main()
