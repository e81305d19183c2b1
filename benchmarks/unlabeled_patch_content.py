"""How many unlabelled patches hold background only, as the trainers draw them (issue #20 item 7).

    python benchmarks/unlabeled_patch_content.py --work /tmp/patch_content [--patches 240]

PL-QW learns from the teacher's pseudo-label of each unlabelled patch, and g rates an empty pseudo-label of
an empty patch 1. This measures the share of unlabelled patches whose withheld label has no foreground (a
good teacher's pseudo-label would be empty) on two datasets, each prepared once in --work with nnU-Net's own
commands (convert, plan and preprocess 2d and 3d_fullres, `nnUNetv2_preprocess_unlabeled`, the withheld
labels of nnunet_qg.benchmark.withheld):
- a large field of view: the phantom at 160 x 384 x 384 voxels with structures scaled by 0.3 (4 labelled,
  8 unlabelled cases; nnU-Net's 3d_fullres patch then covers 42-50 % of each axis);
- the shared Hippocampus data with the evidence protocol's split (1 labelled case, 199 unlabelled).
Patches come from the trainer's own unlabelled loader (nnUNetTrainerSSL.get_unlabeled_dataloader: the plans'
patch and batch size (Hippocampus: the evidence protocol's 4), nnU-Net's augmentation, fold all, seed 0, in
the main process), whose spatially augmented withheld labels are read. Settings: uniform patches (the default), then
`unlabeled_oversample_foreground_percent` 0.33 (nnU-Net's labelled share) and 1 with the foreground prior of
the labelled cases, and 0.33 with that prior's bounding box instead of its points. No network is trained.
Prints a table and writes JSON.
"""
import argparse
import os
import sys
import time
from os.path import abspath, dirname, isdir, isfile, join
from typing import Dict, List, Optional

import numpy as np

sys.path.insert(0, dirname(abspath(__file__)))
from common import print_table, run, write_json  # noqa: E402

LARGE_FOV_ID, HIPPOCAMPUS_ID = 950, 951
LARGE_FOV = {"shape": (160, 384, 384), "structure_scale": 0.3, "cases": 12, "labelled": 4}
CONFIGURATIONS = ("2d", "3d_fullres")
# unlabelled batch size where the plans' is not what training uses: the evidence protocol's batch of 4 (its
# plans, made for 1 labelled case, say 2)
BATCH_SIZE = {HIPPOCAMPUS_ID: 4}
# setting -> (unlabeled_oversample_foreground_percent, the prior's bounding box instead of its points)
SETTINGS = {"uniform (default)": (0.0, False), "prior 0.33": (0.33, False), "prior 1.0": (1.0, False),
            "prior box 0.33": (0.33, True)}


def nnunet_environment(work: str) -> Dict[str, str]:
    """nnU-Net's folders under `work`, also set in this process (before nnU-Net is imported)."""
    env = dict(os.environ)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(join(work, name), exist_ok=True)
        env[name] = os.environ[name] = join(work, name)
    for key, value in (("nnUNet_n_proc_DA", "0"), ("nnUNet_def_n_proc", "2"), ("nnUNet_compile", "f")):
        env[key] = os.environ[key] = os.environ.get(key, value)
    return env


def prepare(dataset_id: int, source: str, split: List[str], env: Dict[str, str], work: str) -> None:
    """Convert, plan and preprocess (2d, 3d_fullres), unlabelled cases, withheld labels; once per --work."""
    done = join(work, f"prepared_{dataset_id}")
    if isfile(done):
        return
    run(["nnUNetv2_convert_MSD_ssl", "-i", source, "-d", str(dataset_id), "--overwrite"] + split, env)
    # nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA), which must be > 0
    run(["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", *CONFIGURATIONS, "-np", "2"],
        {**env, "nnUNet_n_proc_DA": "1"})
    for configuration in CONFIGURATIONS:
        run(["nnUNetv2_preprocess_unlabeled", "-d", str(dataset_id), "-c", configuration, "-np", "2"], env)
        run([sys.executable, "-m", "nnunet_qg.benchmark.withheld", "-d", str(dataset_id), "-c", configuration,
             "-l", join(source, "labelsTr"), "-np", "2"], env)
    open(done, "w").close()


def prepare_large_fov(env: Dict[str, str], work: str) -> None:
    source = join(work, "source", f"Task{LARGE_FOV_ID}_PhantomLargeFOV")
    if not isdir(source):
        run(["nnUNetv2_qg_make_phantom", "-o", source, "-n", str(LARGE_FOV["cases"]), "--shape",
             *map(str, LARGE_FOV["shape"]), "--structure-scale", str(LARGE_FOV["structure_scale"])], env)
    prepare(LARGE_FOV_ID, source, ["--num-labelled", str(LARGE_FOV["labelled"]), "--num-test", "0", "--seed", "0",
                                   "--name", "PhantomLargeFOV"], env, work)


def prepare_hippocampus(data: str, env: Dict[str, str], work: str) -> None:
    # the evidence protocol's split: the first case of the pool labelled, the rest of the pool unlabelled
    prepare(HIPPOCAMPUS_ID, data, ["--split-file", join(data, "ssl_splits.json"), "--num-labelled", "1",
                                   "--max-test", "0"], env, work)


def probe_trainer_class():
    """nnUNetTrainerSSL whose unlabelled patches carry their withheld labels; optionally the prior's box."""
    import torch
    from nnunet_qg.trainers.nnUNetTrainerPLControls import WithheldLabels
    from nnunet_qg.trainers.nnUNetTrainerSSL import nnUNetTrainerSSL
    from nnunet_qg.unlabeled.foreground_prior import RelativeForegroundPrior

    class PatchContentProbe(WithheldLabels, nnUNetTrainerSSL):
        prior_box = False

        def __init__(self, plans: dict, configuration: str, fold, dataset_json: dict,
                     device: torch.device = torch.device("cpu")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.unlabeled_seed = 0

        def unlabeled_foreground_prior(self) -> RelativeForegroundPrior:
            prior = super().unlabeled_foreground_prior()
            if not self.prior_box:
                return prior
            rng = np.random.default_rng(0)  # as many points, uniform in the box of each label's points
            return RelativeForegroundPrior({k: rng.uniform(v.min(0), v.max(0), v.shape)
                                            for k, v in prior.fractions.items()})
    return PatchContentProbe


def measure(dataset_id: int, configuration: str, setting: str, patches: int) -> Dict:
    """Draw about `patches` unlabelled patches with the trainer's loader under `setting`; their content."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    from nnunet_qg.networks import highest_resolution

    dataset = maybe_convert_to_dataset_name(dataset_id)
    plans = load_json(join(nnUNet_preprocessed, dataset, "nnUNetPlans.json"))
    plans["continue_training"] = False
    trainer = probe_trainer_class()(plans, configuration, "all", load_json(join(nnUNet_preprocessed, dataset,
                                                                                 "dataset.json")))
    trainer.unlabeled_oversample_foreground_percent, trainer.prior_box = SETTINGS[setting]
    trainer.unlabeled_batch_size = BATCH_SIZE.get(dataset_id)
    trainer.initialize()
    trainer.unlabeled_identifiers = trainer.check_unlabeled_data()
    np.random.seed(0)
    torch.manual_seed(0)
    started = time.time()
    loader = trainer.get_unlabeled_dataloader()  # in the main process (nnUNet_n_proc_DA=0); draws one batch
    batch_size = loader.data_loader.batch_size
    forced = np.array([loader.data_loader.get_do_oversample(j) for j in range(batch_size)])
    empty, share = [], []
    for _ in range(max(1, round(patches / batch_size))):
        target = highest_resolution(next(loader)["target"])
        foreground = (target > 0).flatten(1)
        empty.append(~foreground.any(1).numpy())
        share.append(foreground.float().mean(1).numpy())
    empty, share = np.stack(empty), np.stack(share)  # (batches, batch size)
    n = empty.size
    return {"dataset": dataset, "configuration": configuration, "setting": setting,
            "patch_size": "x".join(map(str, trainer.configuration_manager.patch_size)),
            "batch_size": batch_size, "forced_per_batch": int(forced.sum()), "unlabelled_cases":
                len(trainer.unlabeled_identifiers), "patches": n,
            "empty_share": float(empty.mean()), "empty_share_se": float(np.sqrt(empty.mean() * (1 - empty.mean()) / n)),
            "empty_share_forced": float(empty[:, forced].mean()) if forced.any() else None,
            "foreground_voxel_share": float(share.mean()),
            "seconds": round(time.time() - started, 1)}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="folder for the prepared datasets (kept and reused)")
    parser.add_argument("--data", default=join(dirname(dirname(abspath(__file__))), "..", "shared", "data",
                                               "hippocampus"), help="the shared Hippocampus data (skipped if absent)")
    parser.add_argument("--patches", type=int, default=240, help="unlabelled patches per row (rounded to batches)")
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--out", default="benchmark_results/unlabeled_patch_content.json")
    args = parser.parse_args(argv)
    if args.patches < 1:
        parser.error("--patches must be >= 1")
    work = abspath(args.work)
    env = nnunet_environment(work)
    from nnunet_qg.benchmark.device import describe_device
    from nnunet_qg.source_commit import source_commit

    datasets = [LARGE_FOV_ID]
    prepare_large_fov(env, work)
    if isfile(join(args.data, "ssl_splits.json")):
        prepare_hippocampus(abspath(args.data), env, work)
        datasets.append(HIPPOCAMPUS_ID)
    else:
        print(f"Hippocampus data not found at {args.data}: measured on the large field of view only")
    rows = [measure(d, c, s, args.patches) for d in datasets for c in CONFIGURATIONS for s in args.settings]
    columns = ["dataset", "configuration", "patch_size", "batch_size", "setting", "forced_per_batch", "patches",
               "empty_share", "empty_share_se", "empty_share_forced", "foreground_voxel_share", "seconds"]
    device = describe_device("cpu")
    print(f"Unlabelled patches without foreground in their withheld label ({device}):")
    table = print_table(rows, columns)
    write_json({"device": device, "commit": source_commit(), "command": " ".join(["python"] + sys.argv),
                "large_fov_phantom": LARGE_FOV, "rows": rows, "table": table}, args.out)


if __name__ == "__main__":
    main()
