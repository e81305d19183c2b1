"""Prepare the benchmark datasets and run every arm: train -> predict the test cases -> evaluate."""
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from os.path import isfile, join
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from nnunet_qg import pipeline
from nnunet_qg.atomic import atomic_write_json
from nnunet_qg.benchmark.profiles import OFFLINE_ARMS, OFFLINE_ID_OFFSET, UPPER_BOUND, Profile
from nnunet_qg.trainers.seeded_training import SEED_ENV

CONVERTERS = {"msd": "nnUNetv2_convert_MSD_ssl", "ph2": "nnUNetv2_convert_PH2_ssl"}


@dataclass(frozen=True)
class Job:
    arm: str
    fraction: str  # key of the split file's labelled_sets
    repeat: int
    dataset_id: int


def dataset_ids(base_id: int, fractions: List[str], with_full: bool) -> Dict[str, int]:
    """One nnU-Net dataset per labelled fraction (and one with the whole pool labelled)."""
    ids = {f: base_id + i for i, f in enumerate(fractions)}
    if with_full:
        ids[UPPER_BOUND] = base_id + len(fractions)
    return ids


def prepare_datasets(source: str, split_file: str, ids: Dict[str, int], profile: Profile, env: Dict[str, str],
                     log_dir: str, reader: Optional[str] = None, resume: bool = False) -> Dict[str, float]:
    """Convert (fixed split), plan and preprocess each dataset with stock nnU-Net; seconds per dataset.

    resume: a dataset already prepared completely by an earlier run of the same output folder is kept."""
    with open(split_file) as f:
        pool = json.load(f)["pool"]
    seconds = {}
    for key, dataset_id in ids.items():
        split = ["--split-file", split_file] + (["--num-labelled", str(len(pool))] if key == UPPER_BOUND
                                                else ["--labelled-set", key])
        for option, value in (("--max-unlabelled", profile.max_unlabelled), ("--max-test", profile.max_test),
                              ("--reader", reader)):
            if value is not None:
                split += [option, str(value)]
        # what the dataset was prepared from: an earlier run's dataset is kept only if it matches
        recipe = {"source": source, "split": split, "configuration": profile.configuration}
        marker = join(log_dir, f"prepared_{dataset_id}.json")
        if resume and isfile(marker):
            with open(marker) as f:
                earlier = json.load(f)
            if earlier["recipe"] == recipe:
                seconds[key] = earlier["seconds"]
                print(f"  dataset {dataset_id} ({key}): prepared by an earlier run, kept", flush=True)
                continue
        started = time.time()
        print(f"  dataset {dataset_id} ({key}): convert, plan, preprocess", flush=True)
        pipeline.convert(CONVERTERS[profile.source_format], source, dataset_id, split + ["--overwrite"], env,
                         join(log_dir, f"convert_{dataset_id}.log"))
        pipeline.plan_and_preprocess(dataset_id, env, log_dir, profile.configuration, profile.preprocess_processes,
                                     unlabelled=key != UPPER_BOUND)
        if profile.withheld_labels and key != UPPER_BOUND:
            prepare_withheld_labels(dataset_id, source, profile, env, log_dir)
        seconds[key] = time.time() - started
        atomic_write_json({"seconds": seconds[key], "recipe": recipe}, marker)
    return seconds


def prepare_withheld_labels(dataset_id: int, source: str, profile: Profile, env: Dict[str, str], log_dir: str) -> None:
    """The unlabelled cases with their labels from the MSD source's labelsTr (nnunet_qg.benchmark.withheld)."""
    if profile.source_format != "msd":
        raise ValueError(f"Withheld labels are read from an MSD source's labelsTr; profile {profile.name} reads "
                         f"{profile.source_format}")
    pipeline.run_logged([sys.executable, "-m", "nnunet_qg.benchmark.withheld", "-d", str(dataset_id), "-c",
                         profile.configuration, "-l", join(source, "labelsTr"), "-np", str(profile.preprocess_processes)],
                        env, join(log_dir, f"withheld_labels_{dataset_id}.log"))


# per-epoch curves kept from nnU-Net's log: name -> logged keys, the first one present is taken
# (the semi-supervised trainers' train_losses include the unlabelled loss; their supervised part is logged apart)
CURVES = {"supervised training loss": ("ssl_loss_supervised", "train_losses"),
          "validation loss": ("val_losses",), "validation pseudo-Dice": ("mean_fg_dice",),
          # the semi-supervised arms only (a run without the key has no such curve)
          "EMA teacher validation pseudo-Dice": ("ssl_teacher_val_dice",),
          "quality weights: effective sample size": ("ssl_quality_weight_ess",),
          "pseudo-labels: true Dice (withheld labels)": ("ssl_pseudo_label_true_dice",),
          "g vs true Dice of pseudo-labels: Pearson": ("ssl_quality_true_pearson",),
          "g minus true Dice of pseudo-labels (bias)": ("ssl_quality_true_bias",)}


def read_training_log(fold_folder: str) -> dict:
    """Epoch times, per-epoch curves and the quality predictor's last validation figures from the final
    checkpoint."""
    checkpoint = torch.load(join(fold_folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    logging = checkpoint["logging"]
    epoch_s = np.array(logging["epoch_end_timestamps"]) - np.array(logging["epoch_start_timestamps"])
    out = {"epochs": len(epoch_s), "epoch_s": float(np.mean(epoch_s))}
    out["curves"] = {name: [float(v) for v in logging[next(k for k in keys if k in logging)]]
                     for name, keys in CURVES.items() if any(k in logging for k in keys)}
    for key in ("qg_val_real_mae", "qg_val_real_pearson", "qg_val_real_spearman",
                "qg_val_corrupted_mae", "qg_val_corrupted_pearson", "ssl_teacher_val_dice"):
        values = [v for v in logging.get(key, []) if v is not None and np.isfinite(v)]
        if values:
            out[key.replace("qg_val_", "g_last_")] = float(values[-1])
    self_training = join(fold_folder, "self_training_cases.json")  # the in-run self-training trainers' record
    if isfile(self_training):
        with open(self_training) as f:
            out["self_training"] = json.load(f)["summary"]
    warmup = join(fold_folder, "quality_warmup_metrics.json")
    if isfile(warmup):
        with open(warmup) as f:
            metrics = json.load(f)
        out["g_warmup_real_mae"] = metrics["real"]["mean"]["mae"]
        out["g_warmup_real_pearson"] = metrics["real"]["mean"]["pearson"]
    return out


def train_arm(job: Job, trainer: str, profile: Profile, env: Dict[str, str], fold: str, log_file: str,
              resume: bool) -> dict:
    """nnUNetv2_train for one arm. resume: a finished fold is kept, an interrupted one continues (--c)
    from its latest checkpoint. Training wall time adds up over the calls; a call that was cut off
    counts until its last checkpoint (the work after it is redone by the next call)."""
    record = join(fold, "benchmark_training.json")
    calls: List[dict] = []  # per call: start time and seconds (None while it runs)
    if resume and isfile(record):
        with open(record) as f:
            calls = json.load(f)["calls"]
    checkpoints = [join(fold, c) for c in ("checkpoint_latest.pth", "checkpoint_final.pth") if isfile(join(fold, c))]
    for call in calls:
        if call["seconds"] is None:
            last = max((os.path.getmtime(c) for c in checkpoints), default=call["start"])
            call["seconds"] = max(0.0, last - call["start"])
    if resume and isfile(join(fold, "checkpoint_final.pth")):
        print(f"  {job.arm} ({job.fraction}, run {job.repeat}): trained by an earlier run, kept", flush=True)
        # no records (trained before they were kept): time and resumption unknown
        return {"train_wall_s": sum(c["seconds"] for c in calls) if calls else float("nan"),
                "resumed": len(calls) > 1 if calls else None}
    continuing = resume and isfile(join(fold, "checkpoint_latest.pth"))
    calls.append({"start": time.time(), "seconds": None})
    os.makedirs(fold, exist_ok=True)
    atomic_write_json({"calls": calls}, record)  # written first, so a call that is cut off is known
    calls[-1]["seconds"] = pipeline.train(job.dataset_id, profile.configuration, profile.fold, trainer, env, log_file,
                                          device=profile.device, continue_training=continuing)
    atomic_write_json({"calls": calls}, record)
    return {"train_wall_s": sum(c["seconds"] for c in calls), "resumed": len(calls) > 1}


def run_name(profile: Profile, repeat: int) -> str:
    """The name of run `repeat`'s folders: `r<seed>` in a seeded profile, so that `--seed 3` never resumes or
    keeps the models that seed 0 trained in the same output folder; `r<repeat>` in an unseeded one."""
    seed = profile.seed_of(repeat)
    return f"r{repeat if seed is None else seed}"


def offline_rounds(arm: str) -> int:
    return int(OFFLINE_ARMS[arm].get("rounds", 1))


def offline_target_id(job: Job, profile: Profile) -> int:
    """The dataset id of an offline arm's first pseudo-labelled dataset; round r writes this id + r - 1
    (profiles.OFFLINE_ID_OFFSET)."""
    run = profile.seed_of(job.repeat)
    index, rounds = job.repeat if run is None else run, offline_rounds(job.arm)
    target = job.dataset_id + OFFLINE_ID_OFFSET + 10 * list(OFFLINE_ARMS).index(job.arm) + rounds * index
    if target + rounds - 1 > 999 or rounds * (index + 1) > 10:
        raise ValueError(f"{job.arm}, run {job.repeat}: its dataset ids {target}-{target + rounds - 1} are out of "
                         f"nnU-Net's range or the next arm's; use a lower --base-id or seeds 0-{10 // rounds - 1}")
    return target


def self_train_arm(job: Job, trainer: str, profile: Profile, env: Dict[str, str], work: str, tag: str,
                   resume: bool) -> dict:
    """An offline arm: nnUNetv2_qg_self_train (one round) from the labelled dataset to a pseudo-labelled one,
    every model with `trainer` (the first model is the supervised arm's of the same seed, or its `first_arm`'s:
    kept where that arm trained it). Without `resume` an earlier run's work and datasets are removed first."""
    target, rounds = offline_target_id(job, profile), offline_rounds(job.arm)
    out = join(work, "self_training", tag)
    if not resume:
        shutil.rmtree(out, ignore_errors=True)
        for folder in (env["nnUNet_raw"], env["nnUNet_preprocessed"], env["nnUNet_results"]):
            for name in os.listdir(folder) if os.path.isdir(folder) else []:
                if any(name.startswith(f"Dataset{target + r:03d}_") for r in range(rounds)):
                    shutil.rmtree(join(folder, name))
    options = OFFLINE_ARMS[job.arm]
    cmd = ["nnUNetv2_qg_self_train", "-d", str(job.dataset_id), "-c", profile.configuration, "-f", profile.fold,
           "-t", str(target), "-o", out, "-tr", trainer, "-device", profile.device,
           "-np", str(profile.preprocess_processes)]
    cmd += ["--keep-fraction", str(options["keep_fraction"])] if "keep_fraction" in options else []
    cmd += ["--rounds", str(rounds)] if rounds > 1 else []
    cmd += ["--first-trainer", profile.trainer(str(options["first_arm"]))] if "first_arm" in options else []
    seconds = pipeline.run_logged(cmd, env, join(work, "logs", f"self_train_{tag}.log"))
    with open(join(out, "self_training.json")) as f:
        state = json.load(f)
    later = {r: state["rounds"][r] for r in sorted(state["rounds"], key=int) if r != "1"}
    offline = {"stage_seconds": state.get("stage_seconds", {}), **state["rounds"]["1"]}
    if later:
        offline["later_rounds"] = later
    return {"target": target + rounds - 1, "train_wall_s": seconds, "offline": offline}


def run_job(job: Job, profile: Profile, env: Dict[str, str], work: str, resume: bool = False) -> dict:
    """Train one arm, predict the held-out test cases with the last checkpoint, evaluate them."""
    trainer = profile.trainer(job.arm)
    run = run_name(profile, job.repeat)
    env = {**env, "nnUNet_results": join(work, f"nnUNet_results_{run}")}
    seed = profile.seed_of(job.repeat)
    if seed is not None:
        env[SEED_ENV] = str(seed)
    os.makedirs(env["nnUNet_results"], exist_ok=True)
    tag = f"{job.fraction}_{run}_{job.arm}"
    logs = join(work, "logs")
    raw = pipeline.raw_dataset_folder(env, job.dataset_id)
    model_dataset = job.dataset_id
    row = {"arm": job.arm, "trainer": trainer, "fraction": job.fraction, "repeat": job.repeat,
           "dataset_id": job.dataset_id, "seed": seed}
    if job.arm in OFFLINE_ARMS:
        training = self_train_arm(job, trainer, profile, env, work, tag, resume)
        model_dataset = training["target"]
        row.update(offline=training["offline"], resumed=None)
    else:
        fold = pipeline.model_folder(env, job.dataset_id, trainer, profile.configuration, profile.fold)
        training = train_arm(job, trainer, profile, env, fold, join(logs, f"train_{tag}.log"), resume)
        row["resumed"] = training["resumed"]
    fold = pipeline.model_folder(env, model_dataset, trainer, profile.configuration, profile.fold)
    predictions = join(work, "predictions", tag)
    shutil.rmtree(predictions, ignore_errors=True)
    row["model_folder"], row["train_wall_s"] = fold, training["train_wall_s"]
    row["predict_wall_s"] = pipeline.predict(model_dataset, profile.configuration, profile.fold, trainer, join(raw, "imagesTs"),
                                             predictions, env, join(logs, f"predict_{tag}.log"), device=profile.device,
                                             tta=profile.tta, num_processes=max(1, profile.n_proc_DA))
    summary = pipeline.evaluate(join(raw, "labelsTs"), predictions, env, join(logs, f"evaluate_{tag}.log"),
                                num_processes=max(1, profile.n_proc_DA))
    row["test_cases"] = len(summary["metric_per_case"])
    row["dice"] = summary["foreground_mean"]["Dice"]
    row["dice_per_label"] = {k: v["Dice"] for k, v in summary["mean"].items()}
    row.update(read_training_log(fold))
    return row


def run_jobs(jobs: List[Job], profile: Profile, env: Dict[str, str], work: str,
             on_result: Callable[[dict], None], resume: bool = False) -> List[dict]:
    """Run the jobs, `profile.concurrency` at a time; each result is handed to on_result as it arrives."""
    rows = []
    with ThreadPoolExecutor(max(1, profile.concurrency)) as pool:
        futures = {pool.submit(run_job, job, profile, env, work, resume): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            try:
                row = future.result()
            except pipeline.StageError as e:
                print(f"  FAILED {job.arm} ({job.fraction}, run {job.repeat}): {str(e).splitlines()[0]}", flush=True)
                row = {"arm": job.arm, "fraction": job.fraction, "repeat": job.repeat, "error": str(e)[-2000:]}
            else:
                print(f"  done {job.arm} ({job.fraction}, run {job.repeat}): test Dice {row['dice']:.4f}, "
                      f"training {row['train_wall_s']:.0f} s", flush=True)
            rows.append(row)
            on_result(rows)
    return rows
