"""Quality predictor benchmark: its cost next to the segmentation network, and its accuracy after
the warm-up on the shared Hippocampus data with the 10 % split (20 labelled cases).

    python benchmarks/quality_predictor_benchmark.py [--profile cpu|gpu] [--data ../shared/data/hippocampus]

Converts (10pct split), plans and preprocesses with stock nnU-Net, measures forward+backward time
and parameters of g and of the segmentation network on the plans' patch and batch, trains the
warm-up with nnUNetv2_train (fold 0) and reports g's MAE / Pearson / Spearman per label on the
fold's validation patches, for the network's REAL predictions and for corrupted masks.
"""
import json
import sys
import time
from os.path import abspath, dirname, join

import torch

sys.path.insert(0, dirname(abspath(__file__)))
from common import (device_description, hippocampus_arguments, prepare_hippocampus, print_table,  # noqa: E402
                    train_fold0, write_json)

PROFILES = {"cpu": {"trainer": "nnUNetTrainerQGWarmup_cpuBench", "device": "cpu", "max_unlabelled": 8},
            "gpu": {"trainer": "nnUNetTrainerQGWarmup_gpuBench", "device": "cuda", "max_unlabelled": 16}}


def time_fwd_bwd(model, inputs, device, repeats: int = 5) -> float:
    """Median seconds of forward + backward (sum of outputs) after one warm-up call."""
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = model(*inputs)
        out = out[0] if isinstance(out, (list, tuple)) else out
        out.float().sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def measure_cost(preprocessed: str, device: torch.device, batch_size: int) -> dict:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_qg.quality.network import QualityPredictor

    plans = PlansManager(join(preprocessed, "nnUNetPlans.json"))
    cm = plans.get_configuration("3d_fullres")
    labels = plans.get_label_manager(json.load(open(join(preprocessed, "dataset.json"))))
    seg = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import, 1, labels.num_segmentation_heads,
                                 deep_supervision=True).to(device)
    g = QualityPredictor(1, len(labels.foreground_labels), cm.patch_size).to(device)
    x = torch.randn(batch_size, 1, *cm.patch_size, device=device)
    m = torch.rand(batch_size, len(labels.foreground_labels), *cm.patch_size, device=device)
    t_seg, t_g = time_fwd_bwd(seg, (x,), device), time_fwd_bwd(g, (x, m), device)
    return {"patch_size": cm.patch_size, "batch_size": batch_size,
            "seg_params": sum(p.numel() for p in seg.parameters()), "g_params": sum(p.numel() for p in g.parameters()),
            "seg_fwd_bwd_s": t_seg, "g_fwd_bwd_s": t_g, "g_to_seg_time_ratio": t_g / t_seg}


def main() -> None:
    args = hippocampus_arguments(__doc__.split("\n\n")[0], PROFILES, "quality_work", "quality_predictor.json")
    profile = PROFILES[args.profile]
    started = time.time()
    env = prepare_hippocampus(args.data, args.work, profile["max_unlabelled"], profile["device"],
                            args.reader)
    work = abspath(args.work)
    preprocessed = join(work, "nnUNet_preprocessed", "Dataset004_Hippocampus")
    device = torch.device(profile["device"])
    batch = json.load(open(join(preprocessed, "nnUNetPlans.json")))["configurations"]["3d_fullres"]["batch_size"]
    cost = measure_cost(preprocessed, device, batch)
    fold = train_fold0(profile["trainer"], profile["device"], work, env)
    metrics = json.load(open(join(fold, "quality_warmup_metrics.json")))
    rows = [{"masks": kind, "label": label, "n": v["n"], "MAE": v["mae"], "bias": v.get("bias", ""),
             "Pearson": v["pearson"], "Spearman": v["spearman"]}
            for kind in ("real", "teacher", "corrupted") if kind in metrics for label, v in metrics[kind].items()]
    print(f"\nQuality predictor on Hippocampus, 10 % labelled (20 cases), fold-0 validation patches, "
          f"profile {args.profile}, {device_description(device)}")
    print(f"g: {cost['g_params']:,} parameters; segmentation network: {cost['seg_params']:,}; forward+backward on "
          f"batch {cost['batch_size']} x {cost['patch_size']}: g {cost['g_fwd_bwd_s']:.3f} s, "
          f"network {cost['seg_fwd_bwd_s']:.3f} s, ratio {cost['g_to_seg_time_ratio']:.3f}")
    table = print_table(rows, ["masks", "label", "n", "MAE", "bias", "Pearson", "Spearman"])
    write_json({"profile": args.profile, "device": device_description(device), "trainer": profile["trainer"],
                "cost": cost, "metrics": metrics, "table": table, "wall_time_s": time.time() - started,
                "calibration_plot": join(fold, "quality_calibration_warmup_end.png")}, args.out)


if __name__ == "__main__":
    main()
