"""nnUNetv2_qg_export: a model folder of our trainers that stock nnU-Net predicts with, in a process where
nnunet-qg's trainers cannot be imported (a stub nnunet_qg package shadows the installed one, so its .pth
start-up hook registers nothing, and nnUNet_extTrainer is unset)."""
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import PHANTOM_ID, run_cli

DATASET = f"Dataset{PHANTOM_ID:03d}_Phantom"
TRAINER = "nnUNetTrainerQGSSL_debug"
OUR_ENTRIES = ("ssl_state", "qg_rng_state", "optimizer_state", "grad_scaler_state")  # qg_rng_state: seeded trainers
PREDICT_ARGS = ["-f", "0", "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"]
STUB_CHECK = """
import os, sys
try:
    import nnunet_qg.trainers
except ModuleNotFoundError as e:
    print("ModuleNotFoundError:", e)
else:
    sys.exit("nnunet_qg.trainers is importable from " + nnunet_qg.trainers.__file__)
assert "nnUNet_extTrainer" not in os.environ, os.environ["nnUNet_extTrainer"]
"""


@pytest.fixture
def trained(trained_models):
    """The session's fold-0 model folder of nnUNetTrainerQGSSL_debug (read only) and its environment."""
    model = trained_models.get(TRAINER)
    return model.env, model.fold.parent


def stock_env(env: dict, root: Path) -> dict:
    """`env` where our trainers are unimportable: a stub nnunet_qg (its register_ext_trainer_path does
    nothing) first on PYTHONPATH, and no nnUNet_extTrainer."""
    stub = root / "stub" / "nnunet_qg"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("")
    (stub / "ext_trainer_path.py").write_text("def register_ext_trainer_path():\n    return ''\n")
    stock = {k: v for k, v in env.items() if k != "nnUNet_extTrainer"}
    stock["PYTHONPATH"] = os.pathsep.join([str(stub.parent)] + [p for p in [env.get("PYTHONPATH")] if p])
    return stock


def segmentations(folder: Path) -> dict:
    return {p.name: sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in folder.glob("*.nii.gz")}


@pytest.mark.full
def test_stock_nnunet_predicts_the_export(trained, tmp_path):
    env, model = trained
    exported = tmp_path / "exported"
    run_cli(["nnUNetv2_qg_export", "-i", str(model), "-o", str(exported)], env)
    assert sorted(p.name for p in exported.iterdir()) == ["dataset.json", "fold_0", "plans.json"]
    original = torch.load(model / "fold_0" / "checkpoint_final.pth", weights_only=False)
    checkpoint = torch.load(exported / "fold_0" / "checkpoint_final.pth", weights_only=False)
    assert checkpoint["trainer_name"] == "nnUNetTrainer" and original["trainer_name"] == TRAINER
    assert not set(OUR_ENTRIES) & set(checkpoint) and {"ssl_state", "optimizer_state"} <= set(original)
    for key in ("init_args", "inference_allowed_mirroring_axes"):  # what nnU-Net's predictor reads, unchanged
        assert key in checkpoint and repr(checkpoint[key]) == repr(original[key]), key
    assert checkpoint["network_weights"].keys() == original["network_weights"].keys()
    assert all(torch.equal(v, original["network_weights"][k]) for k, v in checkpoint["network_weights"].items())

    images = Path(env["nnUNet_raw"]) / DATASET / "imagesTs"
    stock = stock_env(env, tmp_path)
    proof = run_cli([sys.executable, "-c", STUB_CHECK], stock)  # the stub shadows the installed package
    assert "ModuleNotFoundError" in proof.stdout, proof.stdout
    run_cli(["nnUNetv2_predict_from_modelfolder", "-i", str(images), "-o", str(tmp_path / "stock"), "-m",
             str(exported)] + PREDICT_ARGS, stock)
    run_cli(["nnUNetv2_predict", "-i", str(images), "-o", str(tmp_path / "ours"), "-d", str(PHANTOM_ID), "-c",
             "3d_fullres", "-tr", TRAINER] + PREDICT_ARGS, env)
    stock_seg, our_seg = segmentations(tmp_path / "stock"), segmentations(tmp_path / "ours")
    cases = {re.sub(r"_\d{4}\.nii\.gz$", ".nii.gz", p.name) for p in images.glob("*.nii.gz")}
    assert len(cases) >= 2 and set(stock_seg) == set(our_seg) == cases
    for name, seg in stock_seg.items():
        assert np.array_equal(seg, our_seg[name]), name


def test_teacher_export_and_refusals(trained, tmp_path):
    env, model = trained
    from nnunet_qg.dataset_conversion.input_checks import InputError
    from nnunet_qg.export_stock import export_model_folder

    teacher = tmp_path / "teacher"
    run_cli(["nnUNetv2_qg_export", "-i", str(model), "-o", str(teacher), "--teacher", "-f", "0"], env)
    original = torch.load(model / "fold_0" / "checkpoint_final.pth", weights_only=False)
    weights = torch.load(teacher / "fold_0" / "checkpoint_final.pth", weights_only=False)["network_weights"]
    assert weights.keys() == original["network_weights"].keys()
    assert all(torch.equal(v, original["ssl_state"]["teacher"]["module." + k]) for k, v in weights.items())
    assert not all(torch.equal(v, original["network_weights"][k]) for k, v in weights.items())

    # clear errors, no traceback, nothing written
    def refused(args, message):
        proc = run_cli(["nnUNetv2_qg_export"] + args, env, check=False)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert message in proc.stderr, proc.stderr[-3000:]

    refused(["-i", str(tmp_path / "missing"), "-o", str(tmp_path / "x")], "does not exist")
    refused(["-i", str(teacher), "-o", str(tmp_path / "x"), "--teacher"], "has no EMA teacher")
    with pytest.raises(InputError, match="exists: choose another one, or replace it with --overwrite"):
        export_model_folder(str(model), str(teacher))
    with pytest.raises(InputError, match="not found"):
        export_model_folder(str(model), str(tmp_path / "x"), folds=["1"])
    with pytest.raises(InputError, match="no fold .* holds checkpoint_best_missing.pth"):
        export_model_folder(str(model), str(tmp_path / "x"), checkpoint_name="checkpoint_best_missing.pth")
    with pytest.raises(InputError, match="not a trained model folder"):
        export_model_folder(str(model / "fold_0"), str(tmp_path / "x"))
    assert not (tmp_path / "x").exists() and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]

    # --overwrite replaces the folder (student weights now)
    export_model_folder(str(model), str(teacher), overwrite=True)
    weights = torch.load(teacher / "fold_0" / "checkpoint_final.pth", weights_only=False)["network_weights"]
    assert all(torch.equal(v, original["network_weights"][k]) for k, v in weights.items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]

    # a trainer that builds its own network is refused (stock nnU-Net's nnUNetTrainerBN here)
    other = tmp_path / "bn_model"
    (other / "fold_0").mkdir(parents=True)
    for name in ("dataset.json", "plans.json"):
        shutil.copy(model / name, other / name)
    torch.save({**original, "trainer_name": "nnUNetTrainerBN"}, other / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(InputError, match="nnUNetTrainerBN.build_network_architecture"):
        export_model_folder(str(other), str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()
