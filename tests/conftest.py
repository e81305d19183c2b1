"""Shared helpers: isolated nnU-Net folders, real console scripts in subprocesses, real data, the two
tiers (`pytest tests`: the fast tier; `pytest tests --full`: every test; docs/testing.md) and the models
trained once per session that many tests read."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
HIPPOCAMPUS = SHARED_DATA / "hippocampus"
requires_hippocampus = pytest.mark.skipif(
    not (HIPPOCAMPUS / "ssl_splits.json").is_file(),
    reason=f"real Hippocampus data not found at {HIPPOCAMPUS} (only on development and CI machines)")
PH2 = SHARED_DATA / "ph2"
requires_ph2 = pytest.mark.skipif(
    not (PH2 / "images").is_dir(), reason=f"real PH2 data not found at {PH2} (only on development and CI machines)")
PH2_ID = 850
PH2_DATASET = f"Dataset{PH2_ID}_PH2"

PHANTOM_ID = 901
PHANTOM_DATASET = f"Dataset{PHANTOM_ID:03d}_Phantom"

FULL_REASON = "full tier: run with `pytest tests --full`"


def pytest_addoption(parser: pytest.Parser) -> None:
    """`--full`: also run the tests marked `full` (docs/testing.md)."""
    parser.addoption("--full", action="store_true", default=False,
                     help="also run the full tier (tests marked `full`): every trainer end to end, kill/resume, "
                          "seeded pairing, the benchmark pipeline, real Hippocampus and PH2 runs, 2D end to end")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "full: in the full tier only; skipped unless `pytest tests --full`")


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    """Without --full, skip every test marked `full` (their session fixtures then never run)."""
    if config.getoption("--full"):
        return
    skip = pytest.mark.skip(reason=FULL_REASON)
    for item in items:
        if item.get_closest_marker("full") is not None:
            item.add_marker(skip)


# A `python -c` script: for each job [trainer, dataset, *args] of the JSON list in argv[1], the trainer built on
# the preprocessed dataset (configuration and fold from argv[2], CPU) and initialised as nnUNetv2_train builds it, then
# check(trainer, args); one line "CHECK-RESULT [job, 'OK' or the traceback]" per job. One interpreter (and one
# import of torch and nnU-Net) serves many trainers.
_CHECKS_HEAD = textwrap.dedent("""
    import json
    import sys
    import traceback

    import torch
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name


    FRESH_SEED = torch.initial_seed()  # torch's seed at interpreter start
    CONFIGURATION, FOLD = json.loads(sys.argv[2])


    def build_trainer(name, dataset):
        torch.manual_seed(FRESH_SEED)  # every job starts from a fresh interpreter's random state
        plans = load_json(join(nnUNet_preprocessed, dataset, "nnUNetPlans.json"))
        plans["continue_training"] = False
        trainer = recursive_find_trainer_class_by_name(name)(
            plans=plans, configuration=CONFIGURATION, fold=FOLD,
            dataset_json=load_json(join(nnUNet_preprocessed, dataset, "dataset.json")), device=torch.device("cpu"))
        trainer.initialize()
        return trainer


""")
_CHECKS_TAIL = textwrap.dedent("""


    for job in json.loads(sys.argv[1]):
        try:
            check(build_trainer(job[0], job[1]), job[2:])
            result = "OK"
        except BaseException:
            result = traceback.format_exc()
        print("CHECK-RESULT " + json.dumps([job, result]), flush=True)
""")


def run_trainer_checks(body: str, jobs: Sequence[Sequence[str]], env: Dict[str, str],
                       cwd: Path, configuration: str = "3d_fullres", fold=0) -> Dict[tuple, str]:
    """Run `body` (the code of `check(trainer, args)`) on every job in one subprocess, outside the source tree
    so that the installed package is imported, each trainer built for `configuration` and `fold` (an int or
    "all"); returns job -> "OK" or the traceback (or the process's output where a job gave no result)."""
    script = _CHECKS_HEAD + "def check(trainer, args):\n" + textwrap.indent(textwrap.dedent(body), "    ")
    script += _CHECKS_TAIL
    try:
        proc = run_cli([sys.executable, "-c", script, json.dumps([list(j) for j in jobs]),
                        json.dumps([configuration, fold])], env, timeout=1800,
                       check=False, cwd=cwd)
    except subprocess.TimeoutExpired as timeout:  # the jobs that finished keep their result
        out, err = (t.decode(errors="replace") if isinstance(t, bytes) else t or ""
                    for t in (timeout.output, timeout.stderr))
        proc = subprocess.CompletedProcess(timeout.cmd, "timed out after 1800 s", out, err)
    results = {tuple(job): result for job, result in (json.loads(line[len("CHECK-RESULT "):])
                                                     for line in proc.stdout.splitlines()
                                                     if line.startswith("CHECK-RESULT "))}
    missing = f"no result (exit {proc.returncode})\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}"
    return {tuple(job): results.get(tuple(job), missing) for job in jobs}


def trainer_checks_fixture(body: str, jobs: Sequence[Sequence[str]], folder: str):
    """A module-scoped fixture: job -> run_trainer_checks' result of `body` on every job (trainer, dataset,
    *args) of the phantom, in one subprocess (working folder `folder` under pytest's temporary root)."""
    @pytest.fixture(scope="module")
    def checked(phantom_env, tmp_path_factory) -> Dict[tuple, str]:
        return run_trainer_checks(body, jobs, phantom_env, tmp_path_factory.mktemp(folder))
    return checked


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


def plan_and_preprocess(dataset_id: int, env: Dict[str, str], configuration: str = "3d_fullres",
                        unlabelled: bool = True) -> None:
    """The pipeline's stock planning + preprocessing of the labelled cases (one configuration, 2 processes for
    each step, as the demo and the benchmark run it), then, with `unlabelled`, the unlabelled images; the logs
    go beside the nnU-Net folders (logs/)."""
    from nnunet_qg.pipeline import StageError, plan_and_preprocess as pipeline_plan_and_preprocess

    log_dir = os.path.join(os.path.dirname(env["nnUNet_raw"]), "logs")
    os.makedirs(log_dir, exist_ok=True)
    try:
        pipeline_plan_and_preprocess(dataset_id, env, log_dir, configuration, num_processes=2, unlabelled=unlabelled)
    except StageError as error:
        pytest.fail(str(error))


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


# models trained killed after their first checkpoint and resumed with --c (the interrupted checkpoint kept);
# every other trainer's model trains in one nnUNetv2_train call
KILLED_AND_RESUMED = ("nnUNetTrainerQGSSL_debug", "nnUNetTrainerSSL_debug", "nnUNetTrainerQGWarmup_debug")


@dataclass
class TrainedModel:
    """A model (fold 0) trained through nnUNetv2_train, most of them once per session. Read it, never change
    it: a test that writes into a model folder works on `copy_to`."""

    trainer: str
    env: Dict[str, str]  # the dataset's nnU-Net folders (phantom_env with the session's results folder)
    fold: Path
    stdout: str  # of the (last) nnUNetv2_train call
    interrupted: Optional[Path] = None  # checkpoint_latest.pth as the killed call left it (copied out of the fold)

    def copy_to(self, root: Path) -> Dict[str, str]:
        """self.env with a results folder of its own under `root` that holds a copy of this model."""
        env = {**self.env, "nnUNet_results": str(root / "nnUNet_results")}
        model = self.fold.parent
        shutil.copytree(model, Path(env["nnUNet_results"]) / model.parent.name / model.name)
        return env


def model_fold(env: Dict[str, str], dataset: str, trainer: str, configuration: str) -> Path:
    """Fold 0 of `trainer`'s model of `dataset` (nnUNetPlans, `configuration`) in env's results folder."""
    return Path(env["nnUNet_results"]) / dataset / f"{trainer}__nnUNetPlans__{configuration}" / "fold_0"


def train_command(dataset_id: int, configuration: str, trainer: str) -> List[str]:
    """nnUNetv2_train of fold 0 on the CPU."""
    return ["nnUNetv2_train", str(dataset_id), configuration, "0", "-tr", trainer, "-device", "cpu"]


def train_model(env: Dict[str, str], dataset_id: int, dataset: str, configuration: str, trainer: str,
                timeout: int = 1500) -> TrainedModel:
    """`trainer`'s model of the preprocessed dataset (fold 0), trained in one nnUNetv2_train call."""
    proc = run_cli(train_command(dataset_id, configuration, trainer), env, timeout=timeout)
    return TrainedModel(trainer, env, model_fold(env, dataset, trainer, configuration), proc.stdout)


class TrainedModels:
    """Trains each trainer's phantom model through nnUNetv2_train at most once per session, when first asked."""

    def __init__(self, env: Dict[str, str], root: Path):
        self.root = root
        self.env = {**env, "nnUNet_results": str(root)}
        self._models: Dict[str, object] = {}

    def get(self, trainer: str) -> TrainedModel:
        if trainer not in self._models:
            try:
                self._models[trainer] = self._train(trainer)
            except (AssertionError, subprocess.SubprocessError) as error:  # not retried by every later test
                self._models[trainer] = f"training {trainer} failed (once per session): {error}"
        model = self._models[trainer]
        if isinstance(model, str):
            raise AssertionError(model)
        return model

    def _train(self, trainer: str) -> TrainedModel:
        if trainer not in KILLED_AND_RESUMED:
            return train_model(self.env, PHANTOM_ID, PHANTOM_DATASET, "3d_fullres", trainer, timeout=900)
        fold = model_fold(self.env, PHANTOM_DATASET, trainer, "3d_fullres")
        cmd = train_command(PHANTOM_ID, "3d_fullres", trainer)
        kill_after_first_checkpoint(cmd, self.env, fold)  # mid-training
        assert not (fold / "checkpoint_final.pth").is_file(), "killed after the training had finished"
        interrupted = self.root / "interrupted" / f"{trainer}.pth"
        interrupted.parent.mkdir(exist_ok=True)
        shutil.copy(fold / "checkpoint_latest.pth", interrupted)
        return TrainedModel(trainer, self.env, fold, run_cli(cmd + ["--c"], self.env).stdout, interrupted)


@pytest.fixture(scope="session")
def trained_models(phantom_env, tmp_path_factory) -> TrainedModels:
    """The session's phantom models (`trained_models.get(trainer)`), in a results folder of their own."""
    return TrainedModels(phantom_env, tmp_path_factory.mktemp("trained"))


def downscaled_copy(source: Path, target: Path, resample: int) -> None:
    """Every PNG of `source` at half its width and height in `target` (created)."""
    from PIL import Image

    target.mkdir(parents=True)
    for path in sorted(source.glob("*.png")):
        with Image.open(path) as image:
            image.resize((image.width // 2, image.height // 2), resample).save(target / path.name)


@pytest.fixture(scope="session")
def ph2_small(tmp_path_factory) -> Path:
    """The real PH2 (all 200 cases, its PNG layout) at half the shared copy's width and height: a quarter of
    the pixels, so about a quarter of the networks' work in the 2D runs (full tier). The shared copy itself is
    converted by test_conversion.py."""
    from PIL import Image

    root = tmp_path_factory.mktemp("ph2_small")
    downscaled_copy(PH2 / "images", root / "images", Image.LANCZOS)
    downscaled_copy(PH2 / "masks", root / "masks", Image.NEAREST)  # stays 0 / 255
    return root


@pytest.fixture(scope="session")
def ph2_model(ph2_small, tmp_path_factory) -> TrainedModel:
    """QG-SSL (debug schedule) trained once per session on a PH2 subset (2d, RGB through NaturalImage2DIO):
    6 labelled, 4 unlabelled and 3 test cases converted, planned and preprocessed (full tier: test_2d.py,
    test_quality_control.py)."""
    env = nnunet_env(tmp_path_factory.mktemp("ph2"))
    run_cli(["nnUNetv2_convert_PH2_ssl", "-i", str(ph2_small), "-d", str(PH2_ID), "--num-labelled", "6",
             "--num-test", "3", "--max-unlabelled", "4"], env)
    plan_and_preprocess(PH2_ID, env, "2d")
    return train_model(env, PH2_ID, PH2_DATASET, "2d", "nnUNetTrainerQGSSL_debug")


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
