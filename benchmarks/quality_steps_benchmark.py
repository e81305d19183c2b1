"""How many steps does g need on corrupted masks? g's accuracy on held-out corrupted masks when it takes
k steps (fresh corruptions each) on every labelled batch of the warm-up, instead of one.

    python benchmarks/quality_steps_benchmark.py --work benchmark_results/drift_run5 [--batches 120]
        [--steps-per-batch 1 2 4 8] [--device cpu]

Needs a work folder of the Hippocampus benchmarks (nnUNet_preprocessed with the 10 % split, e.g.
the drift benchmark's). Takes `--batches` labelled training batches of fold 0 from nnU-Net's own
training loader (its augmentation; the drift benchmark's CPU warm-up is 4 x 30 = 120 batches) and
25 validation batches, then trains a fresh g per k on corrupted ground truth only (cycling k times
through the same batches: no extra data loading, which is what limits nnU-Net on a GPU), and
measures it every pass on the same 2 x 25 x 4 held-out corrupted masks: MAE / bias / Pearson /
Spearman per label and their mean. The paper reports Pearson > 0.92 and MAE 0.043-0.088 on its
(2D) held-out masks. Prints a table and writes JSON; the training folders are only read.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
from os.path import abspath, dirname

import torch

sys.path.insert(0, dirname(abspath(__file__)))
from common import (device_description, hippocampus_environment, print_table, trainer_from_plans,  # noqa: E402
                    write_json)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="work folder of a Hippocampus benchmark (nnUNet_preprocessed)")
    parser.add_argument("--batches", type=int, default=120, help="labelled training batches (the warm-up's)")
    parser.add_argument("--val-batches", type=int, default=25)
    parser.add_argument("--steps-per-batch", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="benchmark_results/quality_steps.json")
    args = parser.parse_args()
    hippocampus_environment(args.work, args.device)
    os.environ["nnUNet_results"] = scratch = tempfile.mkdtemp(prefix="quality_steps_")  # nothing is written there
    from nnunet_qg.networks import highest_resolution
    from nnunet_qg.quality.metrics import pooled_agreement_per_label
    from nnunet_qg.quality.training import one_hot_foreground
    from nnunet_qg.trainers.nnUNetTrainerQGWarmup_short import nnUNetTrainerQGWarmup_cpuBench

    started = time.time()
    device = torch.device(args.device)
    trainer = trainer_from_plans(nnUNetTrainerQGWarmup_cpuBench, "Dataset004_Hippocampus", "3d_fullres", 0, device)
    all_labels = trainer.label_manager.all_labels

    def batches(loader, n: int):
        out = []
        for _ in range(n):
            batch = next(loader)
            out.append((batch["data"].to(device), highest_resolution(batch["target"]).to(device)))
        return out

    train, val = batches(trainer.dataloader_train, args.batches), batches(trainer.dataloader_val, args.val_batches)
    judge = trainer.new_quality_trainer(0.0, seed_offset=99)  # only its corruptor: the same held-out masks for all
    held_out = [(images, judge.corrupted_draws(target, trainer.quality_masks_per_sample)) for images, target in val]
    names = [str(l) for l in trainer.label_manager.foreground_labels]
    rows, curves = [], {}
    for k in args.steps_per_batch:
        q = trainer.new_quality_trainer(0.0, seed_offset=k)
        curves[k] = []
        for sweep in range(k):
            for images, target in train:
                # confident logits of the labels themselves: g is never given them (real_fraction 0), but its
                # step computes the `real` masks from logits
                q.train_step(images, target, one_hot_foreground(target, all_labels) * 10, trainer._autocast())
            scored = [q.score_masks(images, {"corrupted": draw}, trainer._autocast())
                      for images, draws in held_out for draw in draws]
            figures = pooled_agreement_per_label(scored, names)["corrupted"]
            figures.pop("pairs")
            curves[k].append({"steps": (sweep + 1) * len(train), **figures})
            print(f"k={k}: {(sweep + 1) * len(train)} steps, held-out corrupted masks: MAE "
                  f"{figures['mean']['mae']:.3f}, Pearson {figures['mean']['pearson']:.3f}", flush=True)
        last = curves[k][-1]
        rows.append({"g steps per batch": k, "steps": last["steps"], "n": last["mean"]["n"],
                     **{f"{m} (mean)": last["mean"][m] for m in ("mae", "bias", "pearson", "spearman")},
                     **{f"r label {n}": last[n]["pearson"] for n in names}})
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"\ng on held-out corrupted masks (fold-0 validation patches of the 10 % Hippocampus split), trained on "
          f"corrupted ground truth of {args.batches} augmented training batches, k steps per batch; "
          f"{device_description(device)}")
    table = print_table(rows, list(rows[0]))
    write_json({"device": device_description(device), "batches": args.batches, "table": table, "rows": rows,
                "curves": {str(k): v for k, v in curves.items()}, "wall_time_s": time.time() - started}, args.out)


if __name__ == "__main__":
    main()
