"""Shared helpers: isolated nnU-Net folders, real console scripts in subprocesses, real data."""
import os
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Dict, List

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
HIPPOCAMPUS = SHARED_DATA / "hippocampus"
requires_hippocampus = pytest.mark.skipif(
    not (HIPPOCAMPUS / "ssl_splits.json").is_file(),
    reason=f"real Hippocampus data not found at {HIPPOCAMPUS} (only on development and CI machines)")

PHANTOM_ID = 901

# start of a `python -c` check script: the trainer named by argv[1], built on the preprocessed dataset
# argv[2] (3d_fullres, fold 0, CPU) and initialised, as nnUNetv2_train would build it
TRAINER_FROM_ARGV = textwrap.dedent("""
    import sys
    import torch
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    name, dataset = sys.argv[1], sys.argv[2]
    plans = load_json(join(nnUNet_preprocessed, dataset, "nnUNetPlans.json"))
    plans["continue_training"] = False
    trainer = recursive_find_trainer_class_by_name(name)(
        plans=plans, configuration="3d_fullres", fold=0,
        dataset_json=load_json(join(nnUNet_preprocessed, dataset, "dataset.json")), device=torch.device("cpu"))
    trainer.initialize()
""")


def nnunet_env(root: Path) -> Dict[str, str]:
    """Environment with nnU-Net folders under `root` and settings for a 2-core CPU machine."""
    env = dict(os.environ)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / name).mkdir(parents=True, exist_ok=True)
        env[name] = str(root / name)
    env.update(nnUNet_n_proc_DA="0", nnUNet_def_n_proc="2", nnUNet_compile="f", PYTHONUNBUFFERED="1")
    return env


def run_cli(args: List[str], env: Dict[str, str], timeout: int = 900, check: bool = True,
            cwd: Path = None) -> subprocess.CompletedProcess:
    """Run a console script; on failure show its output."""
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\nSTDOUT:\n{proc.stdout[-6000:]}\n"
                             f"STDERR:\n{proc.stderr[-6000:]}")
    return proc


def kill_after_first_checkpoint(cmd: List[str], env: Dict[str, str], fold: Path, timeout: int = 600) -> None:
    """Start a training and kill it (SIGKILL, whole process group) once checkpoint_latest.pth exists."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.time() + timeout
    while not (fold / "checkpoint_latest.pth").is_file():
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def plan_and_preprocess(dataset_id: int, env: Dict[str, str]) -> None:
    """Stock planning + preprocessing, then the unlabelled images (3d_fullres)."""
    # nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA), which must be > 0
    run_cli(["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", "3d_fullres", "-np", "2"],
            {**env, "nnUNet_n_proc_DA": "2"})
    run_cli(["nnUNetv2_preprocess_unlabeled", "-d", str(dataset_id), "-c", "3d_fullres", "-np", "2"], env)


@pytest.fixture(scope="session")
def phantom_env(tmp_path_factory) -> Dict[str, str]:
    """A converted, planned and preprocessed phantom dataset (generated, no download)."""
    root = tmp_path_factory.mktemp("phantom")
    env = nnunet_env(root)
    run_cli(["nnUNetv2_qg_make_phantom", "-o", str(root / "Task901_Phantom"), "-n", "14"], env)
    run_cli(["nnUNetv2_convert_MSD_ssl", "-i", str(root / "Task901_Phantom"), "-d", str(PHANTOM_ID),
             "--num-labelled", "6", "--num-test", "2", "--seed", "0"], env)
    plan_and_preprocess(PHANTOM_ID, env)
    return env


@pytest.fixture
def phantom_copy(phantom_env, tmp_path) -> Dict[str, str]:
    """A private copy of the phantom dataset's raw and preprocessed folders, free to break."""
    env = nnunet_env(tmp_path)
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        shutil.rmtree(env[name])
        shutil.copytree(phantom_env[name], env[name])
    return env


def train_on_corruptions(cases, steps: int, patch_size=None, seed: int = 0):
    """A quality predictor trained on corrupted ground truth of `cases` [(image, label map)]; also
    returns its QualityPredictorTrainer and the Dice targets it saw."""
    import numpy as np
    import torch

    from nnunet_qg.quality.network import QualityPredictor
    from nnunet_qg.quality.training import QualityPredictorTrainer

    torch.manual_seed(seed)
    g = QualityPredictor(1, 2, patch_size or cases[0][0].shape)
    trainer = QualityPredictorTrainer(g, [1, 2], [0, 1, 2], lr=2e-3, real_fraction=0.0, seed=seed)
    images = torch.from_numpy(np.stack([c[0] for c in cases])[:, None])
    targets = torch.from_numpy(np.stack([c[1] for c in cases])[:, None])
    seen = []
    for _ in range(steps):
        idx = torch.randperm(len(cases))[:6]
        mask, dice = trainer.corrupted_samples(targets[idx])
        seen.append(dice.numpy())
        trainer.optimizer.zero_grad()
        loss = torch.nn.functional.smooth_l1_loss(g.train()(images[idx], mask), dice, beta=0.1)
        loss.backward()
        trainer.optimizer.step()
    return g.eval(), trainer, seen
