"""Cost of one training iteration of each semi-supervised trainer, as ratios to nnUNetTrainer.

    python benchmarks/trainer_speed_benchmark.py -d 4 [-c 3d_fullres] [--device cuda] [--iterations 20] \
        [--summary benchmarks/results/trainer_speed_cpu.json]

Needs a dataset planned and preprocessed with stock nnU-Net and `nnUNetv2_preprocess_unlabeled`
(e.g. the one benchmarks/quality_predictor_benchmark.py prepares). Every trainer is built on the
same plans and batch size, with every unlabelled loss active (the state after warm-up and ramps),
and timed over the same number of iterations in one process: time per iteration, split into
waiting for labelled batches, waiting for unlabelled batches and the step itself, plus peak GPU
memory (on CUDA) or, on the CPU, the peak tensor memory of two profiled steps (the profiler's memory
timeline: parameters, gradients, optimizer state and activations; the process's resident memory is
also kept, but the interpreter and libraries dwarf a small patch's activations there; each trainer
runs in a fresh process), and the number of leaf operators per iteration (each at least one
kernel launch on a GPU: the cost of a step when the GPU is mostly idle, as at small patches and
batches). Writes JSON and prints the table. `--summary FILE` also keeps this configuration's ratios in FILE
(configuration -> {dataset, device, date, commit, iterations, trainers: trainer -> {time_ratio, s_per_iter,
ratio_to_mean_teacher}}), beside the other configurations already there.
"""
import argparse
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from os.path import abspath, dirname, join

import torch

sys.path.insert(0, dirname(abspath(__file__)))
from common import device_description, print_table, write_json  # noqa: E402

DEFAULT_TRAINERS = ["nnUNetTrainer", "nnUNetTrainerMeanTeacher", "nnUNetTrainerFixMatch", "nnUNetTrainerMTQW",
                    "nnUNetTrainerQGSSL_PLQW", "nnUNetTrainerQGSSL_QAR", "nnUNetTrainerQGSSL",
                    "nnUNetTrainerQGSSL_lowMemory"]


class TimedLoader:
    """Wraps a batch generator and adds up the time spent waiting for batches."""

    def __init__(self, loader):
        self.loader, self.seconds = loader, 0.0

    def __next__(self):
        started = time.perf_counter()
        batch = next(self.loader)
        self.seconds += time.perf_counter() - started
        return batch

    def __getattr__(self, name):
        return getattr(self.loader, name)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def trainer_and_settings(spec: str) -> tuple:
    """'TRAINER' or 'TRAINER:attribute=value[,attribute=value]' (values as Python literals, else strings): the
    trainer's class name and the attributes to set after its __init__ (to time an option beside its default)."""
    import ast

    name, _, rest = spec.partition(":")
    settings = {}
    for item in filter(None, rest.split(",")):
        attribute, _, text = item.partition("=")
        try:
            settings[attribute] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            settings[attribute] = text
    return name, settings


def measure(trainer_name: str, dataset: str, configuration: str, device: torch.device, iterations: int,
            profiled_steps: int = 4) -> dict:
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    name, settings = trainer_and_settings(trainer_name)
    cls = recursive_find_trainer_class_by_name(name)
    plans = load_json(join(nnUNet_preprocessed, dataset, "nnUNetPlans.json"))
    plans["continue_training"] = False
    trainer = cls(plans=plans, configuration=configuration, fold=0,
                  dataset_json=load_json(join(nnUNet_preprocessed, dataset, "dataset.json")), device=device)
    for attribute, value in settings.items():
        if not hasattr(trainer, attribute):
            raise SystemExit(f"ERROR: {name} has no attribute {attribute} ({trainer_name})")
        setattr(trainer, attribute, value)
    trainer.on_train_start()
    trainer.network.train()
    if getattr(trainer, "quality", None) is not None:
        trainer.quality.freeze()
    trainer.current_epoch = trainer.num_epochs - 1  # every unlabelled loss at full weight
    if hasattr(trainer, "unlabeled_weight_at"):
        trainer._current_unlabeled_weight = trainer.unlabeled_weight_at(trainer.current_epoch)
    if hasattr(trainer, "component_weights_at"):
        trainer._weights = trainer.component_weights_at(trainer.current_epoch)
    labelled = TimedLoader(trainer.dataloader_train)
    if getattr(trainer, "dataloader_unlabeled", None) is not None:
        trainer.dataloader_unlabeled = TimedLoader(trainer.dataloader_unlabeled)
    for _ in range(2):  # warm-up iterations, not timed
        trainer.train_step(next(labelled))
    labelled.seconds = 0.0
    unlabelled = trainer.dataloader_unlabeled if isinstance(getattr(trainer, "dataloader_unlabeled", None), TimedLoader) else None
    if unlabelled is not None:
        unlabelled.seconds = 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    started = time.perf_counter()
    for _ in range(iterations):
        trainer.train_step(next(labelled))
    sync(device)
    total = (time.perf_counter() - started) / iterations
    wait_l = labelled.seconds / iterations
    wait_u = unlabelled.seconds / iterations if unlabelled is not None else 0.0
    row = {"trainer": trainer_name, "s_per_iter": total, "wait_labelled_s": wait_l, "wait_unlabelled_s": wait_u,
           "step_s": total - wait_l - wait_u, "batch": trainer.batch_size,
           "peak_rss_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}
    row["peak_mem_GiB"] = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" \
        else step_peak_tensor_bytes(trainer, labelled) / 2 ** 30
    row["ops_per_iter"] = count_ops(trainer, labelled, profiled_steps)
    for loader in (trainer.dataloader_train, trainer.dataloader_val, getattr(unlabelled, "loader", None)):
        if hasattr(loader, "_finish"):
            loader._finish()
    del trainer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def step_peak_tensor_bytes(trainer, labelled, steps: int = 2) -> int:
    """Peak tensor memory over `steps` consecutive training iterations (so that g's refresh step, every
    2nd iteration, is among them), from the profiler's memory timeline (CPU)."""
    from nnunet_qg.profiling import peak_tensor_bytes, profile_memory

    batches = [next(labelled) for _ in range(steps)]
    with profile_memory() as prof:
        for batch in batches:
            trainer.train_step(batch)
    return peak_tensor_bytes(prof)


def count_ops(trainer, labelled, steps: int) -> float:
    """Mean number of leaf aten operators per training iteration over `steps` iterations (consecutive, so
    g's refresh steps are included at their rate): each is at least one kernel launch on a GPU, which
    is what a step costs when the GPU is mostly idle."""
    counts = []
    for _ in range(steps):
        batch = next(labelled)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            trainer.train_step(batch)
        counts.append(sum(1 for e in prof.events() if not e.cpu_children and e.name.startswith("aten::")))
    return sum(counts) / len(counts)


def _measure_in_child(queue, *args) -> None:
    queue.put(measure(*args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", required=True, help="dataset name or id (preprocessed, with unlabelled data)")
    parser.add_argument("-c", default="3d_fullres")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--trainers", nargs="+", default=DEFAULT_TRAINERS,
                        help="trainer class names; TRAINER:attribute=value[,...] times a trainer with attributes set")
    parser.add_argument("--out", default="benchmark_results/trainer_speed.json")
    parser.add_argument("--summary", default=None, help="JSON file of every configuration's ratios (updated)")
    args = parser.parse_args()
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    os.environ.setdefault("nnUNet_results", tempfile.mkdtemp(prefix="qg_speed_"))
    dataset = maybe_convert_to_dataset_name(args.d)
    device = torch.device(args.device)
    rows = []
    context = multiprocessing.get_context("spawn")
    for t in args.trainers:  # a fresh (non-daemonic: it starts loader workers) process per trainer
        queue = context.Queue()
        process = context.Process(target=_measure_in_child, args=(queue, t, dataset, args.c, device, args.iterations))
        process.start()
        rows.append(queue.get())
        process.join()
        print(f"{t}: {rows[-1]}", flush=True)  # a run cut short by a time limit still leaves its rows
    base = rows[0]
    for r in rows:
        r["time_ratio"] = r["s_per_iter"] / base["s_per_iter"]
        r["mem_ratio"] = r["peak_mem_GiB"] / base["peak_mem_GiB"]
        r["ops_ratio"] = r["ops_per_iter"] / base["ops_per_iter"]
    print(f"\nOne training iteration, {dataset} {args.c}, {args.iterations} iterations each, "
          f"{device_description(device)}, nnUNet_n_proc_DA={os.environ.get('nnUNet_n_proc_DA', 'default')}; "
          f"memory: {'peak GPU memory' if device.type == 'cuda' else 'peak tensor memory of two profiled steps'}")
    table = print_table(rows, ["trainer", "batch", "s_per_iter", "time_ratio", "wait_labelled_s",
                               "wait_unlabelled_s", "step_s", "peak_mem_GiB", "mem_ratio", "ops_per_iter",
                               "ops_ratio"])
    write_json({"dataset": dataset, "configuration": args.c, "device": device_description(device),
                "iterations": args.iterations, "rows": rows, "table": table}, args.out)
    if args.summary:
        update_summary(args.summary, args.c, dataset, device_description(device), args.iterations, rows)


def update_summary(path: str, configuration: str, dataset: str, device: str, iterations: int, rows: list) -> None:
    """This configuration's ratios in the summary file (configuration -> ...; module docstring), the others kept."""
    from datetime import date

    from nnunet_qg.atomic import atomic_write_json
    from nnunet_qg.source_commit import source_commit

    summary = {}
    if os.path.isfile(path):
        with open(path) as f:
            summary = json.load(f)
    teacher = next((r for r in rows if r["trainer"] == "nnUNetTrainerMeanTeacher"), None)
    summary[configuration] = {
        "dataset": dataset, "device": device, "date": date.today().isoformat(), "commit": source_commit(),
        "iterations": iterations,
        "trainers": {r["trainer"]: {"time_ratio": r["time_ratio"], "s_per_iter": r["s_per_iter"],
                                    "ratio_to_mean_teacher": r["s_per_iter"] / teacher["s_per_iter"] if teacher
                                    else None} for r in rows}}
    atomic_write_json(summary, path)
    print(f"wrote {path} ({configuration})")


if __name__ == "__main__":
    main()
