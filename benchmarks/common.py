"""Shared bits of the benchmark scripts: data preparation, device description and result writing."""
import argparse
import json
import os
import subprocess
from datetime import date
from os.path import abspath, dirname, join
from typing import Dict, List, Optional

import torch

from nnunet_qg.atomic import atomic_path
from nnunet_qg.benchmark.device import describe_device


def device_description(device: torch.device) -> str:
    return describe_device(device.type)


def print_table(rows: List[Dict], columns: List[str]) -> str:
    """Markdown table of `rows` (dicts) with `columns`; printed and returned."""
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    text = "\n".join(lines)
    print(text)
    return text


def write_json(result: Dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    result = {"date": date.today().isoformat(), **result}
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(result, f, indent=2, default=float)
    print(f"wrote {path}")


def trainer_from_plans(trainer_class: type, dataset: str, configuration: str, fold: int, device: torch.device):
    """`trainer_class` built as nnUNetv2_train builds it, from nnUNet_preprocessed/<dataset>'s plans and
    dataset.json, and started (data loaders ready), not trained. Set nnUNet_results first: the trainer
    writes its log and plans copies there."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed

    folder = join(nnUNet_preprocessed, dataset)
    plans = load_json(join(folder, "nnUNetPlans.json"))
    plans["continue_training"] = False  # what nnUNetv2_train adds
    trainer = trainer_class(plans=plans, configuration=configuration, fold=fold, device=device,
                            dataset_json=load_json(join(folder, "dataset.json")))
    trainer.on_train_start()
    return trainer


def run(cmd: List[str], env: Dict[str, str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, env=env, check=True)


def hippocampus_environment(work: str, device_type: str) -> Dict[str, str]:
    """The nnU-Net environment of a benchmark's work folder (also set in this process; on a CPU:
    in-process data augmentation, 2 processes, no compilation, unless set already)."""
    work = abspath(work)
    env = dict(os.environ)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(join(work, name), exist_ok=True)
        env[name] = os.environ[name] = join(work, name)
    if device_type == "cpu":
        env.update({k: env.get(k, v) for k, v in (("nnUNet_n_proc_DA", "0"), ("nnUNet_def_n_proc", "2"),
                                                  ("nnUNet_compile", "f"))})
    return env


def prepare_hippocampus(data: str, work: str, max_unlabelled: int, device_type: str,
                        reader: Optional[str] = None) -> Dict[str, str]:
    """Convert the shared Hippocampus data with its 10 % split (20 labelled cases) as Dataset004 under
    `work` (`reader`: dataset.json's image reader, e.g. NibabelIO), plan and preprocess it, preprocess
    the unlabelled cases; returns the nnU-Net environment (hippocampus_environment)."""
    env = hippocampus_environment(work, device_type)
    run(["nnUNetv2_convert_MSD_ssl", "-i", data, "-d", "4", "--split-file", join(data, "ssl_splits.json"),
         "--labelled-set", "10pct", "--max-unlabelled", str(max_unlabelled), "--overwrite"]
        + (["--reader", reader] if reader else []), env)
    run(["nnUNetv2_plan_and_preprocess", "-d", "4", "-c", "3d_fullres", "-np", env.get("nnUNet_def_n_proc", "8")],
        {**env, "nnUNet_n_proc_DA": str(max(1, int(env.get("nnUNet_n_proc_DA", "1"))))})
    run(["nnUNetv2_preprocess_unlabeled", "-d", "4", "-c", "3d_fullres"], env)
    return env


def hippocampus_arguments(description: str, profiles: Dict[str, dict], work: str, out: str,
                          reuse: bool = False, flags: Optional[Dict[str, str]] = None) -> argparse.Namespace:
    """--profile (a key of `profiles`), --data (the shared Hippocampus data), --work and --out
    (defaults benchmark_results/<work> and benchmark_results/<out>); with `reuse`, --reuse (measure
    the fold already trained in --work again: no conversion, no training); `flags`: further
    on/off options of the script, {"--name": help}."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--profile", choices=profiles, default="cpu")
    parser.add_argument("--data", default=join(dirname(dirname(abspath(__file__))), "..", "shared", "data", "hippocampus"))
    parser.add_argument("--work", default=f"benchmark_results/{work}")
    parser.add_argument("--out", default=f"benchmark_results/{out}")
    parser.add_argument("--reader", default=None,
                        help="image reader for dataset.json, e.g. NibabelIO (the lent GPU machine has no SimpleITK)")
    if reuse:
        parser.add_argument("--reuse", action="store_true",
                            help="measure the fold already trained in --work again (no conversion, no training)")
    for flag, text in (flags or {}).items():
        parser.add_argument(flag, action="store_true", help=text)
    return parser.parse_args()


def train_fold0(trainer: str, device_type: str, work: str, env: Dict[str, str], train: bool = True) -> str:
    """nnUNetv2_train Dataset004 3d_fullres fold 0 with `trainer` (unless not `train`); returns the fold folder."""
    if train:
        run(["nnUNetv2_train", "4", "3d_fullres", "0", "-tr", trainer, "-device", device_type], env)
    return join(abspath(work), "nnUNet_results", "Dataset004_Hippocampus", f"{trainer}__nnUNetPlans__3d_fullres",
                "fold_0")
