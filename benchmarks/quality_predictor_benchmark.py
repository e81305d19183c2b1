"""Quality predictor benchmark: its cost next to the segmentation network, and its accuracy after
the warm-up on the shared Hippocampus data with the 10 % split (20 labelled cases).

    python benchmarks/quality_predictor_benchmark.py [--profile cpu|gpu] [--data ../shared/data/hippocampus]

Converts (10pct split), plans and preprocesses with stock nnU-Net, measures forward+backward time
and parameters of g and of the segmentation network on the plans' patch and batch, trains the
warm-up with nnUNetv2_train (fold 0) and reports g's MAE / Pearson / Spearman per label on the
fold's validation patches, for the network's REAL predictions and for corrupted masks.
`--cost-only` stops after the cost (of g, of g with a full-resolution first stage and of the
network: time and FLOPs) and, when --work already holds the plans, prepares nothing.
"""
import json
import sys
import time
from os.path import abspath, dirname, isfile, join

import torch

sys.path.insert(0, dirname(abspath(__file__)))
from common import (device_description, hippocampus_arguments, prepare_hippocampus, print_table,  # noqa: E402
                    train_fold0, write_json)
from nnunet_qg.networks import highest_resolution  # noqa: E402

PROFILES = {"cpu": {"trainer": "nnUNetTrainerQGWarmup_cpuBench", "device": "cpu", "max_unlabelled": 8},
            "gpu": {"trainer": "nnUNetTrainerQGWarmup_gpuBench", "device": "cuda", "max_unlabelled": 16}}


def time_fwd_bwd(model, inputs, device, repeats: int = 5) -> float:
    """Median seconds of forward + backward (sum of outputs) after one warm-up call."""
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fwd_bwd(model, inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def fwd_bwd(model, inputs) -> None:
    """One forward pass and a backward pass of the sum of the (first) output."""
    out = model(*inputs)
    out = highest_resolution(out)
    out.float().sum().backward()


def count_flops(model, inputs) -> int:
    """Floating-point operations of one forward + backward pass (torch's FLOP counter: convolutions and
    matrix products; independent of the machine and of what else runs on it)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fwd_bwd(model, inputs)
    return int(counter.get_total_flops())


def measure_cost(preprocessed: str, device: torch.device, batch_size: int) -> dict:
    """Parameters, forward+backward time and FLOPs of g (default, and with a full-resolution first
    stage) and of the segmentation network, on the plans' patch and batch."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_qg.experiments.quality import research_quality_predictor

    plans = PlansManager(join(preprocessed, "nnUNetPlans.json"))
    cm = plans.get_configuration("3d_fullres")
    labels = plans.get_label_manager(json.load(open(join(preprocessed, "dataset.json"))))
    seg = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import, 1, labels.num_segmentation_heads,
                                 deep_supervision=True).to(device)
    x = torch.randn(batch_size, 1, *cm.patch_size, device=device)
    m = torch.rand(batch_size, len(labels.foreground_labels), *cm.patch_size, device=device)
    cost = {"patch_size": cm.patch_size, "batch_size": batch_size,
            "seg_params": sum(p.numel() for p in seg.parameters()), "seg_fwd_bwd_s": time_fwd_bwd(seg, (x,), device),
            "seg_fwd_bwd_gflops": count_flops(seg, (x,)) / 1e9}
    for name, full in (("g", False), ("g_full_resolution", True)):
        g = research_quality_predictor(1, len(labels.foreground_labels), cm.patch_size, full_resolution=full).to(device)
        cost[f"{name}_params"] = sum(p.numel() for p in g.parameters())
        cost[f"{name}_fwd_bwd_s"] = time_fwd_bwd(g, (x, m), device)
        cost[f"{name}_fwd_bwd_gflops"] = count_flops(g, (x, m)) / 1e9
        cost[f"{name}_to_seg_time_ratio"] = cost[f"{name}_fwd_bwd_s"] / cost["seg_fwd_bwd_s"]
        cost[f"{name}_to_seg_flops_ratio"] = cost[f"{name}_fwd_bwd_gflops"] / cost["seg_fwd_bwd_gflops"]
    return cost


def print_cost(cost: dict, device: torch.device) -> None:
    print(f"\nCost on batch {cost['batch_size']} x {cost['patch_size']}, {device_description(device)}:")
    print_table([{"network": name, "parameters": cost[f"{key}_params"], "fwd+bwd s": cost[f"{key}_fwd_bwd_s"],
                  "fwd+bwd GFLOPs": cost[f"{key}_fwd_bwd_gflops"],
                  "time ratio": cost.get(f"{key}_to_seg_time_ratio", 1.0),
                  "FLOPs ratio": cost.get(f"{key}_to_seg_flops_ratio", 1.0)}
                 for name, key in (("segmentation network", "seg"), ("g", "g"),
                                   ("g, full-resolution first stage", "g_full_resolution"))],
                ["network", "parameters", "fwd+bwd s", "fwd+bwd GFLOPs", "time ratio", "FLOPs ratio"])


def main() -> None:
    args = hippocampus_arguments(__doc__.split("\n\n")[0], PROFILES, "quality_work", "quality_predictor.json",
                                 flags={"--cost-only": "measure the cost of g and of the network, print it, write "
                                                       "the JSON and stop (no warm-up training)"})
    profile = PROFILES[args.profile]
    started = time.time()
    work = abspath(args.work)
    preprocessed = join(work, "nnUNet_preprocessed", "Dataset004_Hippocampus")
    if not (args.cost_only and isfile(join(preprocessed, "nnUNetPlans.json"))):  # the cost needs only the plans
        env = prepare_hippocampus(args.data, args.work, profile["max_unlabelled"], profile["device"], args.reader)
    device = torch.device(profile["device"])
    batch = json.load(open(join(preprocessed, "nnUNetPlans.json")))["configurations"]["3d_fullres"]["batch_size"]
    cost = measure_cost(preprocessed, device, batch)
    print_cost(cost, device)
    if args.cost_only:
        write_json({"profile": args.profile, "device": device_description(device), "cost": cost,
                    "wall_time_s": time.time() - started}, args.out)
        return
    fold = train_fold0(profile["trainer"], profile["device"], work, env)
    metrics = json.load(open(join(fold, "quality_warmup_metrics.json")))
    rows = [{"masks": kind, "label": label, "n": v["n"], "MAE": v["mae"], "bias": v.get("bias", ""),
             "Pearson": v["pearson"], "Spearman": v["spearman"]}
            for kind in ("real", "teacher", "corrupted") if kind in metrics for label, v in metrics[kind].items()]
    print(f"\nQuality predictor on Hippocampus, 10 % labelled (20 cases), fold-0 validation patches, "
          f"profile {args.profile}, {device_description(device)}")
    table = print_table(rows, ["masks", "label", "n", "MAE", "bias", "Pearson", "Spearman"])
    write_json({"profile": args.profile, "device": device_description(device), "trainer": profile["trainer"],
                "cost": cost, "metrics": metrics, "table": table, "wall_time_s": time.time() - started,
                "calibration_plot": join(fold, "quality_calibration_warmup_end.png")}, args.out)


if __name__ == "__main__":
    main()
