"""Every bad unlabelled input gets a clear message naming the file or folder and the fix."""
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import PHANTOM_ID, nnunet_env, run_cli

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
    """An extra channel file: the message says which file to remove."""
    first = sorted(_unlabeled(phantom_copy).iterdir())[0]
    extra = first.with_name(first.name.replace("_0000", "_0001"))
    shutil.copy(first, extra)
    _fails_with(phantom_copy, "Wrong channels", first.name[:-12], "declares 1 channel", f"remove or rename {extra}")


def test_wrong_channel_index_names_the_file_to_provide(phantom_copy):
    """CASE_0001 in a 1-channel dataset: the example is the file expected (CASE_0000), not the one found."""
    first = sorted(_unlabeled(phantom_copy).iterdir())[0]
    wrong = first.with_name(first.name.replace("_0000", "_0001"))
    first.rename(wrong)
    proc = run_cli(PREPROCESS, phantom_copy, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stdout + proc.stderr
    message = next(line for line in (proc.stdout + proc.stderr).splitlines() if "Wrong channels" in line)
    assert f"provide {first}" in message and f"remove or rename {wrong}" in message, message


def test_badly_named_file(phantom_copy):
    (_unlabeled(phantom_copy) / "scan.nii.gz").write_bytes(b"")
    _fails_with(phantom_copy, "Unexpected file", "scan.nii.gz", "<case>_<XXXX>.nii.gz")


def _damage(bad: Path, how: str, like: Path) -> str:
    """Write a damaged NIfTI at `bad`; returns what the message must say is wrong."""
    if how == "not_nifti":
        bad.write_bytes(b"this is not a nifti file")
        return "not a NIfTI image"
    if how == "empty":
        bad.write_bytes(b"")
        return "empty (0 bytes)"
    data = like.read_bytes()  # a real case cut in half: SimpleITK alone would read it as zeros
    bad.write_bytes(data[:len(data) // 2])
    return "truncated"


@pytest.mark.parametrize("how", ["not_nifti", "empty", "cut_in_half"])
def test_unreadable_image(phantom_copy, how):
    bad = _unlabeled(phantom_copy) / "broken_0000.nii.gz"
    problem = _damage(bad, how, sorted(_unlabeled(phantom_copy).iterdir())[-1])
    _fails_with(phantom_copy, "ERROR: Could not read", str(bad), problem, "remove unlabelled case 'broken'")
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
    assert proc.returncode != 0
    # one line on stderr: the message and the command to run, no traceback through nnU-Net's run_training
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]  # (torch warns on import)
    assert len(errors) == 1 and errors[0].startswith("ERROR: No preprocessed unlabelled cases"), proc.stderr
    assert f"nnUNetv2_preprocess_unlabeled -d {PHANTOM_ID} -c 3d_fullres" in errors[0]
    assert proc.stderr.rstrip().endswith(errors[0]), proc.stderr  # the last line: nothing printed after it


@pytest.mark.parametrize("variable", ["nnUNet_raw", "nnUNet_preprocessed"])
def test_unset_folder_variable_is_named(tmp_path, variable):
    env = nnunet_env(tmp_path)
    del env[variable]
    _fails_with(env, f"ERROR: {variable} is not set", f"export {variable}=")


def test_unknown_dataset_is_named(tmp_path):
    _fails_with(nnunet_env(tmp_path), f"Dataset {PHANTOM_ID}: not found in nnUNet_raw", "nnUNetv2_plan_and_preprocess")


def test_quality_control_names_unset_results_folder(tmp_path):
    env = nnunet_env(tmp_path)
    del env["nnUNet_results"]
    cmd = ["nnUNetv2_predict_quality", "-i", str(tmp_path), "-o", str(tmp_path / "qc"), "-d", str(PHANTOM_ID)]
    _fails_with(env, "ERROR: nnUNet_results is not set", cmd=cmd)


def test_quality_control_reads_every_input_inside_the_guard(tmp_path):
    """nnUNetv2_predict_quality reads each input image once, inside the guard, before predicting."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunet_qg.dataset_conversion.input_checks import UnreadableFileError
    from nnunet_qg.quality_control.cli import read_inputs_once

    good = tmp_path / "good_0000.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(12, 10, 8).astype(np.float32)), str(good))
    read_inputs_once({"good": [str(good)]}, SimpleITKIO)
    bad = tmp_path / "bad_0000.nii.gz"
    _damage(bad, "cut_in_half", good)
    with pytest.raises(UnreadableFileError) as caught:
        read_inputs_once({"good": [str(good)], "bad": [str(bad)]}, SimpleITKIO)
    assert caught.value.paths == [str(bad)] and "truncated" in str(caught.value)
    assert "remove case 'bad'" in str(caught.value)
    assert str(pickle.loads(pickle.dumps(caught.value))) == str(caught.value)  # crosses worker processes
