"""`nnUNetv2_qg_demo`: the whole semi-supervised pipeline on a small built-in default, on a CPU.

Generates a synthetic phantom (or takes an MSD folder with --data), converts it with a labelled /
unlabelled / test split, plans and preprocesses with stock nnU-Net, preprocesses the unlabelled
images, trains the semi-supervised trainer, predicts the held-out test cases with
`nnUNetv2_predict`, evaluates them with nnU-Net's evaluation, prints a table, and checks the predictions'
quality with `nnUNetv2_predict_quality` (calibrated on labelled phantom cases that took no part in
training; with --data uncalibrated). Every stage runs the real console scripts; their logs go to
`<output>/logs/`.
"""
import argparse
import json
import os
import shutil
import sys
import time
from os.path import abspath, join
from typing import List, Optional

from nnunet_qg import pipeline
from nnunet_qg.epoch_progress import EpochProgress
from nnunet_qg.pipeline import StageError

STAGE_NAMES = ("Data (a generated phantom, or --data)", "Conversion to an nnU-Net raw dataset with imagesUnlabeled/",
               "Planning and preprocessing, labelled and unlabelled", "Training (one line per epoch)",
               "Prediction of the held-out test cases", "Evaluation", "Quality control of the predictions")
STAGES = len(STAGE_NAMES)
CALIBRATION_CASES = 12  # labelled phantom cases (another seed than the training data's) for quality control


def _stage(i: int, text: str) -> None:
    print(f"[{i}/{STAGES}] {text}", flush=True)


def _run(stage, *args, **kwargs):
    """Run a pipeline stage; a failure ends the demo with the stage's log."""
    try:
        seconds = stage(*args, **kwargs)
    except StageError as e:
        raise SystemExit(f"ERROR: {e}")
    print(f"      done in {seconds:.0f} s", flush=True)
    return seconds


def run_demo(output: str, data: Optional[str], dataset_id: int, num_labelled: int, max_unlabelled: Optional[int],
             max_test: int, trainer: str, num_phantom_cases: int) -> dict:
    """Run all stages; returns the evaluation summary (nnU-Net's summary.json content)."""
    output = abspath(output)
    print("Stages: " + "; ".join(f"{i}. {name}" for i, name in enumerate(STAGE_NAMES, 1)), flush=True)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        shutil.rmtree(join(output, name), ignore_errors=True)
    env = pipeline.nnunet_env(output)
    env.setdefault("nnUNet_n_proc_DA", "0")
    env.setdefault("nnUNet_def_n_proc", "2")
    env.setdefault("nnUNet_compile", "f")
    logs = join(output, "logs")
    n_proc = int(env["nnUNet_def_n_proc"])

    generated = data is None
    if generated:
        from nnunet_qg.phantom import make_phantom_msd

        _stage(1, f"Generating a synthetic phantom dataset ({num_phantom_cases} cases)")
        data = make_phantom_msd(join(output, "source", "Task901_Phantom"), num_phantom_cases)
    else:
        _stage(1, f"Using the MSD dataset in {data}")
    data = abspath(data)
    split_args = ["--num-labelled", str(num_labelled), "--max-test", str(max_test)]
    if os.path.isfile(join(data, "ssl_splits.json")):
        split_args += ["--split-file", join(data, "ssl_splits.json")]
    else:
        split_args += ["--num-test", str(max_test)]
    if max_unlabelled is not None:
        split_args += ["--max-unlabelled", str(max_unlabelled)]
    _stage(2, "Converting to an nnU-Net raw dataset with imagesUnlabeled/")
    _run(pipeline.convert, "nnUNetv2_convert_MSD_ssl", data, dataset_id, split_args, env, join(logs, "convert.log"))
    _stage(3, "Planning and preprocessing (stock nnUNetv2_plan_and_preprocess, then nnUNetv2_preprocess_unlabeled)")
    _run(pipeline.plan_and_preprocess, dataset_id, env, logs, num_processes=n_proc)
    train_log = join(logs, "train.log")
    _stage(4, f"Training {trainer} on the CPU (nnUNetv2_train; every figure of every epoch: {train_log})")
    _run(pipeline.train, dataset_id, "3d_fullres", "0", trainer, env, train_log,
         on_line=EpochProgress(_num_epochs(trainer)))
    _stage(5, "Predicting the held-out test cases (nnUNetv2_predict)")
    raw = pipeline.raw_dataset_folder(env, dataset_id)
    predictions = join(output, "predictions")
    shutil.rmtree(predictions, ignore_errors=True)
    _run(pipeline.predict, dataset_id, "3d_fullres", "0", trainer, join(raw, "imagesTs"), predictions, env,
         join(logs, "predict.log"), tta=False)
    _stage(6, "Evaluating them (nnUNetv2_evaluate_folder)")
    try:
        summary = pipeline.evaluate(join(raw, "labelsTs"), predictions, env, join(logs, "evaluate.log"))
    except StageError as e:
        raise SystemExit(f"ERROR: {e}")
    labels = sorted(v for v in json.load(open(join(raw, "dataset.json")))["labels"].values() if v > 0)
    _print_table(summary, labels, pipeline.model_folder(env, dataset_id, trainer), predictions)
    _stage(7, "Quality control: which test predictions to check by hand (nnUNetv2_predict_quality)")
    calibration = None
    if generated:
        from nnunet_qg.phantom import make_phantom_labelled_cases

        shutil.rmtree(join(output, "source", "calibration"), ignore_errors=True)
        calibration = make_phantom_labelled_cases(join(output, "source", "calibration"), CALIBRATION_CASES, seed=1)
        print(f"      calibrated on {CALIBRATION_CASES} labelled phantom cases that took no part in training "
              f"({join(output, 'source', 'calibration')})", flush=True)
    quality = join(output, "quality_control")
    _run(pipeline.quality_control, dataset_id, "3d_fullres", "0", trainer, join(raw, "imagesTs"), predictions,
         quality, env, join(logs, "quality_control.log"), reference=join(raw, "labelsTs"), calibration_cases=calibration)
    _print_command_summary(join(logs, "quality_control.log"), "Predicted Dice (")
    return summary


def _num_epochs(trainer: str) -> Optional[int]:
    """The epochs of one of our short-schedule trainers (None for another trainer)."""
    import nnunet_qg.trainers

    return getattr(getattr(nnunet_qg.trainers, trainer, None), "short_num_epochs", None)


def _print_table(summary: dict, labels: List[int], model_folder: str, predictions: str) -> None:
    cases = summary["metric_per_case"]
    print(f"\nResult on {len(cases)} held-out test cases (Dice, nnU-Net evaluation):")
    print(f"  {'label':<8}{'Dice':>8}")
    for label in labels:
        print(f"  {label:<8}{summary['mean'][str(label)]['Dice']:>8.4f}")
    print(f"  {'mean':<8}{summary['foreground_mean']['Dice']:>8.4f}")
    metrics_file = join(model_folder, "quality_warmup_metrics.json")
    if os.path.isfile(metrics_file):
        metrics = json.load(open(metrics_file))
        print("\nQuality predictor after warm-up (validation patches, predicted vs true Dice):")
        for kind in ("real", "corrupted"):
            m = metrics[kind]["mean"]
            print(f"  {kind + ' masks':<16} MAE {m['mae']:.3f}  Pearson {m['pearson']:.3f}  (n={m['n']})")
    print(f"\nModel folder: {model_folder}\n  (progress.png, progress_ssl.png, quality_calibration*.png, "
          f"checkpoint_final.pth)")
    print(f"Predictions and summary.json: {predictions}")


def _print_command_summary(log_file: str, first_words: str) -> None:
    """A command's own summary, as its user would see it: its log from the last line that starts with
    `first_words` on (the last 20 lines if none does)."""
    with open(log_file) as f:
        lines = f.read().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(first_words)]
    print("\n".join(lines[starts[-1]:] if starts else lines[-20:]))


def entry_point() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="demo_output", help="Working folder. Default: ./demo_output")
    parser.add_argument("--data", default=None, help="An MSD-style folder (e.g. ../shared/data/hippocampus); "
                                                     "default: a generated phantom")
    parser.add_argument("-d", "--dataset-id", type=int, default=901)
    parser.add_argument("--num-labelled", type=int, default=6)
    parser.add_argument("--max-unlabelled", type=int, default=None)
    parser.add_argument("--max-test", type=int, default=4)
    parser.add_argument("--trainer", default="nnUNetTrainerQGSSL_PLQW_demo")
    parser.add_argument("--smoke", action="store_true", help="Smallest setting (for CI): debug trainer, 12 cases")
    args = parser.parse_args()
    started = time.time()
    if args.smoke:
        args.trainer, num_cases, args.max_test = "nnUNetTrainerQGSSL_PLQW_debug", 12, 2
    else:
        num_cases = 20
    run_demo(args.output, args.data, args.dataset_id, args.num_labelled, args.max_unlabelled, args.max_test,
             args.trainer, num_cases)
    print(f"Demo finished in {time.time() - started:.0f} s.")


if __name__ == "__main__":
    sys.exit(entry_point())
