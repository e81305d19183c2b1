"""Pipeline stages that run nnU-Net's own console scripts, each with a log file.

Shared by `nnUNetv2_qg_demo` and the semi-supervised benchmark: convert, plan and preprocess
(labelled and unlabelled), train, predict, evaluate. Every stage is the real console script in a
subprocess; a failing stage raises with the end of its log.
"""
import json
import os
import subprocess
import time
from os.path import join
from typing import Callable, Dict, List, Optional, Sequence


class StageError(RuntimeError):
    """A console script of the pipeline failed."""


def run_logged(cmd: List[str], env: Dict[str, str], log_file: str, echo: Optional[Sequence[str]] = None,
               prefix: str = "      ", on_line: Optional[Callable[[str], None]] = None) -> float:
    """Run a console script with its output in `log_file`; echo lines starting with one of `echo`, and hand
    every line (without nnU-Net's time stamp) to `on_line`.

    Returns the wall time in seconds."""
    started = time.time()
    os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            log.flush()
            text = line.split(": ", 1)[-1].strip()
            if echo and text.startswith(tuple(echo)):
                print(f"{prefix}{text}", flush=True)
            if on_line is not None:
                on_line(text)
        proc.wait()
    if proc.returncode != 0:
        with open(log_file) as f:
            tail = f.read()[-3000:]
        raise StageError(f"{' '.join(cmd)} failed (exit {proc.returncode}); log: {log_file}\n{tail}")
    return time.time() - started


def nnunet_env(root: str, base: Optional[Dict[str, str]] = None, **settings: str) -> Dict[str, str]:
    """Environment with nnUNet_raw/_preprocessed/_results under `root` (created) plus `settings`."""
    env = dict(os.environ if base is None else base)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(join(root, name), exist_ok=True)
        env[name] = join(root, name)
    env.update(settings)
    return env


def raw_dataset_folder(env: Dict[str, str], dataset_id: int) -> str:
    prefix = f"Dataset{dataset_id:03d}_"
    matches = [d for d in os.listdir(env["nnUNet_raw"]) if d.startswith(prefix)]
    if len(matches) != 1:
        raise StageError(f"Expected one {prefix}* folder in {env['nnUNet_raw']}, found {matches}.")
    return join(env["nnUNet_raw"], matches[0])


def convert(command: str, source: str, dataset_id: int, split_args: List[str], env: Dict[str, str],
            log_file: str) -> float:
    """One of the converters (e.g. nnUNetv2_convert_MSD_ssl) with its split arguments."""
    return run_logged([command, "-i", source, "-d", str(dataset_id)] + split_args, env, log_file)


def plan_and_preprocess(dataset_id: int, env: Dict[str, str], log_dir: str, configuration: str = "3d_fullres",
                        num_processes: int = 2, unlabelled: bool = True) -> float:
    """Stock nnUNetv2_plan_and_preprocess, then nnUNetv2_preprocess_unlabeled."""
    # nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA), which must be > 0
    plan_env = {**env, "nnUNet_n_proc_DA": str(max(1, int(env.get("nnUNet_n_proc_DA", "1"))))}
    # -npfp: nnU-Net's fingerprint extraction otherwise starts 8 processes, whatever the machine has
    seconds = run_logged(["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", configuration,
                          "-np", str(num_processes), "-npfp", str(num_processes)], plan_env,
                         join(log_dir, f"plan_and_preprocess_{dataset_id}.log"))
    if unlabelled:
        seconds += run_logged(["nnUNetv2_preprocess_unlabeled", "-d", str(dataset_id), "-c", configuration,
                               "-np", str(num_processes)], env, join(log_dir, f"preprocess_unlabeled_{dataset_id}.log"))
    return seconds


def train(dataset_id: int, configuration: str, fold: str, trainer: str, env: Dict[str, str], log_file: str,
          device: str = "cpu", echo: Optional[Sequence[str]] = None, continue_training: bool = False,
          on_line: Optional[Callable[[str], None]] = None) -> float:
    """nnUNetv2_train (with --c: continue from the fold's latest checkpoint)."""
    return run_logged(["nnUNetv2_train", str(dataset_id), configuration, str(fold), "-tr", trainer, "-device", device]
                      + (["--c"] if continue_training else []), env, log_file, echo=echo, on_line=on_line)


def model_folder(env: Dict[str, str], dataset_id: int, trainer: str, configuration: str = "3d_fullres",
                 fold: str = "0", plans: str = "nnUNetPlans") -> str:
    dataset = os.path.basename(raw_dataset_folder(env, dataset_id))
    return join(env["nnUNet_results"], dataset, f"{trainer}__{plans}__{configuration}", f"fold_{fold}")


def predict(dataset_id: int, configuration: str, fold: str, trainer: str, input_folder: str, output_folder: str,
            env: Dict[str, str], log_file: str, device: str = "cpu", tta: bool = True,
            checkpoint: str = "checkpoint_final.pth", num_processes: int = 1) -> float:
    """nnUNetv2_predict with the given (by default the last) checkpoint."""
    cmd = ["nnUNetv2_predict", "-i", input_folder, "-o", output_folder, "-d", str(dataset_id), "-c", configuration,
           "-f", str(fold), "-tr", trainer, "-device", device, "-chk", checkpoint,
           "-npp", str(num_processes), "-nps", str(num_processes)]
    return run_logged(cmd + ([] if tta else ["--disable_tta"]), env, log_file)


def quality_control(dataset_id: int, configuration: str, fold: str, trainer: str, images: str, segmentations: str,
                    output_folder: str, env: Dict[str, str], log_file: str, reference: Optional[str] = None,
                    calibration_cases: Optional[Sequence[str]] = None) -> float:
    """nnUNetv2_predict_quality on the segmentations of `images` (with --reference: the true Dice beside it;
    with calibration_cases (IMAGES, LABELS): calibrated on them); its report is `output_folder`/quality.json."""
    cmd = ["nnUNetv2_predict_quality", "-i", images, "-s", segmentations, "-o", output_folder, "-d", str(dataset_id),
           "-c", configuration, "-tr", trainer, "-f", str(fold)]
    cmd += ["--reference", reference] if reference else []
    cmd += ["--calibration-cases", *calibration_cases] if calibration_cases else []
    return run_logged(cmd, env, log_file)


def evaluate(reference_folder: str, predictions: str, env: Dict[str, str], log_file: str,
             num_processes: int = 1) -> dict:
    """nnUNetv2_evaluate_folder (reads files with the dataset's own reader); returns summary.json."""
    summary_file = join(predictions, "summary.json")
    run_logged(["nnUNetv2_evaluate_folder", reference_folder, predictions, "-djfile", join(predictions, "dataset.json"),
                "-pfile", join(predictions, "plans.json"), "-o", summary_file, "-np", str(num_processes)],
               env, log_file)
    with open(summary_file) as f:
        return json.load(f)
