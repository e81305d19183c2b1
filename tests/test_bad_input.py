"""Every bad unlabelled input gets a clear message naming the file or folder and the fix."""
import shutil
from pathlib import Path

from conftest import PHANTOM_ID, run_cli

DATASET = f"Dataset{PHANTOM_ID:03d}_Phantom"
PREPROCESS = ["nnUNetv2_preprocess_unlabeled", "-d", str(PHANTOM_ID), "-c", "3d_fullres", "-np", "1"]


def _unlabeled(env) -> Path:
    return Path(env["nnUNet_raw"]) / DATASET / "imagesUnlabeled"


def _fails_with(env, *needles, cmd=PREPROCESS):
    proc = run_cli(cmd, env, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-3000:]
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]


def test_missing_folder(phantom_copy):
    shutil.rmtree(_unlabeled(phantom_copy))
    _fails_with(phantom_copy, "No unlabelled images", str(_unlabeled(phantom_copy)), "imagesUnlabeled")


def test_zero_cases(phantom_copy):
    for f in _unlabeled(phantom_copy).iterdir():
        f.unlink()
    _fails_with(phantom_copy, "Zero unlabelled cases", str(_unlabeled(phantom_copy)))


def test_wrong_number_of_channels(phantom_copy):
    first = sorted(_unlabeled(phantom_copy).iterdir())[0]
    shutil.copy(first, first.with_name(first.name.replace("_0000", "_0001")))
    _fails_with(phantom_copy, "Wrong number of channels", first.name[:-12], "declares 1 channel")


def test_badly_named_file(phantom_copy):
    (_unlabeled(phantom_copy) / "scan.nii.gz").write_bytes(b"")
    _fails_with(phantom_copy, "Unexpected file", "scan.nii.gz", "<case>_<XXXX>.nii.gz")


def test_unreadable_image(phantom_copy):
    bad = _unlabeled(phantom_copy) / "broken_0000.nii.gz"
    bad.write_bytes(b"this is not a nifti file")
    _fails_with(phantom_copy, "Could not read", str(bad), "remove the case")
    folder = Path(phantom_copy["nnUNet_preprocessed"]) / DATASET / "nnUNetPlans_3d_fullres_unlabeled"
    assert not (folder / "broken.pkl").exists() and not (folder / "broken.b2nd").exists()
    assert not list(folder.glob(".tmp-*"))


def test_label_leakage(phantom_copy):
    raw = Path(phantom_copy["nnUNet_raw"]) / DATASET
    labelled = sorted((raw / "imagesTr").iterdir())[0]
    shutil.copy(labelled, _unlabeled(phantom_copy) / labelled.name)
    _fails_with(phantom_copy, "Label leakage", labelled.name[:-12], "imagesUnlabeled")


def test_trainer_without_preprocessed_unlabelled(phantom_copy):
    shutil.rmtree(Path(phantom_copy["nnUNet_preprocessed"]) / DATASET / "nnUNetPlans_3d_fullres_unlabeled")
    cmd = ["nnUNetv2_train", str(PHANTOM_ID), "3d_fullres", "0", "-tr", "nnUNetTrainerSSL_debug", "-device", "cpu"]
    proc = run_cli(cmd, phantom_copy, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "No preprocessed unlabelled cases" in text
    assert f"nnUNetv2_preprocess_unlabeled -d {PHANTOM_ID} -c 3d_fullres" in text
