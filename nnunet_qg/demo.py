"""`nnUNetv2_qg_demo`: the whole semi-supervised pipeline on a small built-in default, on a CPU.

Generates a synthetic phantom (or takes an MSD folder with --data), converts it with a labelled /
unlabelled / test split, plans and preprocesses with stock nnU-Net, preprocesses the unlabelled
images, trains the semi-supervised trainer, predicts the held-out test cases with
`nnUNetv2_predict`, evaluates them with nnU-Net's evaluation and prints a table. Every stage runs
the real console scripts; their logs go to `<output>/logs/`.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from os.path import abspath, join
from typing import Dict, List, Optional

STAGES = 6


def _stage(i: int, text: str) -> None:
    print(f"[{i}/{STAGES}] {text}", flush=True)


def _run(cmd: List[str], env: Dict[str, str], log_file: str, echo: Optional[tuple] = None) -> None:
    """Run a console script, log everything, echo lines that start with one of `echo`."""
    started = time.time()
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            text = line.split(": ", 1)[-1].strip()
            if echo and text.startswith(echo):
                print(f"      {text}", flush=True)
        proc.wait()
    if proc.returncode != 0:
        with open(log_file) as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"ERROR: {' '.join(cmd)} failed (exit {proc.returncode}); log: {log_file}\n{tail}")
    print(f"      done in {time.time() - started:.0f} s (log: {log_file})", flush=True)


def run_demo(output: str, data: Optional[str], dataset_id: int, num_labelled: int, max_unlabelled: Optional[int],
             max_test: int, trainer: str, num_phantom_cases: int) -> dict:
    """Run all stages; returns the evaluation summary (nnU-Net's summary.json content)."""
    output = abspath(output)
    env = dict(os.environ)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        shutil.rmtree(join(output, name), ignore_errors=True)
        os.makedirs(join(output, name))
        env[name] = join(output, name)
    env.setdefault("nnUNet_n_proc_DA", "0")
    env.setdefault("nnUNet_def_n_proc", "2")
    env.setdefault("nnUNet_compile", "f")
    logs = join(output, "logs")
    os.makedirs(logs, exist_ok=True)

    if data is None:
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
    _run(["nnUNetv2_convert_MSD_ssl", "-i", data, "-d", str(dataset_id)] + split_args, env, join(logs, "convert.log"))
    _stage(3, "Planning and preprocessing (stock nnUNetv2_plan_and_preprocess)")
    # nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA), which must be > 0
    _run(["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", "3d_fullres", "-np", env["nnUNet_def_n_proc"]],
         {**env, "nnUNet_n_proc_DA": str(max(1, int(env["nnUNet_n_proc_DA"])))}, join(logs, "plan_and_preprocess.log"))
    _stage(4, "Preprocessing the unlabelled images (nnUNetv2_preprocess_unlabeled)")
    _run(["nnUNetv2_preprocess_unlabeled", "-d", str(dataset_id), "-c", "3d_fullres", "-np", env["nnUNet_def_n_proc"]],
         env, join(logs, "preprocess_unlabeled.log"))
    _stage(5, f"Training {trainer} on the CPU (nnUNetv2_train)")
    _run(["nnUNetv2_train", str(dataset_id), "3d_fullres", "0", "-tr", trainer, "-device", "cpu"], env,
         join(logs, "train.log"), echo=("Epoch ", "SSL:", "Pseudo dice", "Quality predictor", "Mean Validation Dice"))
    _stage(6, "Predicting and evaluating the held-out test cases (nnUNetv2_predict, nnUNetv2_evaluate_simple)")
    raw = join(output, "nnUNet_raw", [d for d in os.listdir(env["nnUNet_raw"]) if d.startswith(f"Dataset{dataset_id:03d}_")][0])
    predictions = join(output, "predictions")
    shutil.rmtree(predictions, ignore_errors=True)
    _run(["nnUNetv2_predict", "-i", join(raw, "imagesTs"), "-o", predictions, "-d", str(dataset_id), "-c", "3d_fullres",
          "-f", "0", "-tr", trainer, "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"], env,
         join(logs, "predict.log"))
    labels = sorted(v for v in json.load(open(join(raw, "dataset.json")))["labels"].values() if v > 0)
    summary_file = join(predictions, "summary.json")
    _run(["nnUNetv2_evaluate_simple", join(raw, "labelsTs"), predictions, "-l", *map(str, labels), "-o", summary_file,
          "-np", "1"], env, join(logs, "evaluate.log"))
    summary = json.load(open(summary_file))
    model_folder = join(env["nnUNet_results"], os.path.basename(raw), f"{trainer}__nnUNetPlans__3d_fullres", "fold_0")
    _print_table(summary, labels, model_folder, predictions)
    return summary


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


def entry_point() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="demo_output", help="Working folder. Default: ./demo_output")
    parser.add_argument("--data", default=None, help="An MSD-style folder (e.g. ../shared/data/hippocampus); "
                                                     "default: a generated phantom")
    parser.add_argument("-d", "--dataset-id", type=int, default=901)
    parser.add_argument("--num-labelled", type=int, default=6)
    parser.add_argument("--max-unlabelled", type=int, default=None)
    parser.add_argument("--max-test", type=int, default=4)
    parser.add_argument("--trainer", default="nnUNetTrainerQGSSL_demo")
    parser.add_argument("--smoke", action="store_true", help="Smallest setting (for CI): debug trainer, 12 cases")
    args = parser.parse_args()
    started = time.time()
    if args.smoke:
        args.trainer, num_cases, args.max_test = "nnUNetTrainerQGSSL_debug", 12, 2
    else:
        num_cases = 20
    run_demo(args.output, args.data, args.dataset_id, args.num_labelled, args.max_unlabelled, args.max_test,
             args.trainer, num_cases)
    print(f"Demo finished in {time.time() - started:.0f} s.")


if __name__ == "__main__":
    sys.exit(entry_point())
