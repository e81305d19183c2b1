"""Converters of the public semi-supervised benchmarks, on tiny fixtures in their exact formats
(and on the real PH2 copy in ../shared/data/ph2 where present); damaged inputs, bad arguments, a
missing optional package or nnUNet_raw end in one clear message with nothing written."""
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image

from conftest import SHARED_DATA, nnunet_env, run_cli

PH2_REAL = SHARED_DATA / "ph2"


def _disk(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2


def _rgb_with_lesion(rng, h=40, w=48):
    lesion = _disk(h, w, h // 2 + rng.integers(-4, 5), w // 2 + rng.integers(-4, 5), rng.integers(8, 13))
    image = rng.integers(150, 230, (h, w, 3)).astype(np.uint8)
    image[lesion] = rng.integers(40, 90, (int(lesion.sum()), 3))
    return image, lesion


def _ph2_original(root: Path, n: int = 8, bad_size_case: str = None) -> Path:
    rng = np.random.default_rng(0)
    base = root / "PH2 Dataset images"
    for i in range(n):
        case = f"IMD{i:03d}"
        image, lesion = _rgb_with_lesion(rng)
        (base / case / f"{case}_Dermoscopic_Image").mkdir(parents=True)
        (base / case / f"{case}_lesion").mkdir()
        Image.fromarray(image).save(base / case / f"{case}_Dermoscopic_Image" / f"{case}.bmp")
        if case == bad_size_case:
            lesion = lesion[:-2]
        Image.fromarray(lesion).convert("1").save(base / case / f"{case}_lesion" / f"{case}_lesion.bmp")
    return root


def _raw(env, dataset):
    return Path(env["nnUNet_raw"]) / dataset


def _check_layout(raw: Path, n_labelled: int, n_unlabelled: int, n_test: int, ending: str):
    split = json.loads((raw / "ssl_split.json").read_text())
    assert [len(split[k]) for k in ("labelled", "unlabelled", "test")] == [n_labelled, n_unlabelled, n_test]
    assert sorted(p.name for p in (raw / "labelsTr").iterdir()) == sorted(c + ending for c in split["labelled"])
    assert sorted(p.name for p in (raw / "imagesUnlabeled").iterdir()) == sorted(
        c + "_0000" + ending for c in split["unlabelled"])
    assert sorted(p.name for p in (raw / "labelsTs").iterdir()) == sorted(c + ending for c in split["test"])
    labelled_anywhere = {p.name[:-len(ending)] for p in raw.glob(f"labels*/*{ending}")}
    assert not labelled_anywhere & set(split["unlabelled"])  # no label of an unlabelled case is copied
    dataset_json = json.loads((raw / "dataset.json").read_text())
    assert (dataset_json["numTraining"], dataset_json["numUnlabeled"], dataset_json["numTest"]) == (
        n_labelled, n_unlabelled, n_test)
    return split, dataset_json


def test_ph2_original_layout(tmp_path):
    env = nnunet_env(tmp_path)
    source = _ph2_original(tmp_path / "src")
    run_cli(["nnUNetv2_convert_PH2_ssl", "-i", str(source), "-d", "830", "--num-labelled", "3", "--num-test", "2"], env)
    raw = _raw(env, "Dataset830_PH2")
    split, dataset_json = _check_layout(raw, 3, 3, 2, ".png")
    assert dataset_json["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert dataset_json["labels"] == {"background": 0, "lesion": 1}
    case = split["labelled"][0]
    image = np.asarray(Image.open(raw / "imagesTr" / f"{case}_0000.png"))
    mask = np.asarray(Image.open(raw / "labelsTr" / f"{case}.png"))
    assert image.shape == (40, 48, 3) and mask.shape == (40, 48) and set(np.unique(mask)) == {0, 1}


@pytest.mark.full
def test_ph2_real_png_layout_and_split_file_round_trip(tmp_path):
    if not (PH2_REAL / "images").is_dir():
        pytest.skip(f"real PH2 data not found at {PH2_REAL} (only on development and CI machines)")
    env = nnunet_env(tmp_path)
    run_cli(["nnUNetv2_convert_PH2_ssl", "-i", str(PH2_REAL), "-d", "831", "--num-labelled", "20",
             "--num-test", "50", "--seed", "0"], env)
    split, _ = _check_layout(_raw(env, "Dataset831_PH2"), 20, 130, 50, ".png")
    record = _raw(env, "Dataset831_PH2") / "ssl_split.json"
    run_cli(["nnUNetv2_convert_PH2_ssl", "-i", str(PH2_REAL), "-d", "832", "--split-file", str(record)], env)
    assert json.loads((_raw(env, "Dataset832_PH2") / "ssl_split.json").read_text()) == split


def _kvasir(root: Path, n: int = 7) -> Path:
    rng = np.random.default_rng(1)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        image, lesion = _rgb_with_lesion(rng)
        Image.fromarray(image).save(root / "images" / f"cju{i}.jpg")
        Image.fromarray((lesion * 255).astype(np.uint8)).save(root / "masks" / f"cju{i}.jpg",
                                                              quality=70)  # JPEG: grey levels at the edges
    return root


def _cvc(root: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(2)
    for sub in ("Original", "Ground Truth"):
        (root / sub).mkdir(parents=True)
    for i in range(1, n + 1):
        image, lesion = _rgb_with_lesion(rng)
        tifffile.imwrite(root / "Original" / f"{i}.tif", image)
        tifffile.imwrite(root / "Ground Truth" / f"{i}.tif", (lesion * 255).astype(np.uint8))
    return root


def test_kvasir_grey_masks_are_thresholded(tmp_path):
    env = nnunet_env(tmp_path)
    _kvasir(tmp_path / "kvasir")
    proc = run_cli(["nnUNetv2_convert_Kvasir_ssl", "-i", str(tmp_path / "kvasir"), "-d", "833", "--num-labelled",
                    "3", "--num-test", "2"], env)
    assert "thresholded at 128" in proc.stdout
    raw = _raw(env, "Dataset833_Kvasir")
    _check_layout(raw, 3, 2, 2, ".png")
    for f in (raw / "labelsTr").iterdir():
        assert set(np.unique(np.asarray(Image.open(f)))) <= {0, 1}


def test_cvc_tif(tmp_path):
    env = nnunet_env(tmp_path)
    _cvc(tmp_path / "cvc")
    run_cli(["nnUNetv2_convert_CVC_ssl", "-i", str(tmp_path / "cvc"), "-d", "834", "--num-labelled", "2",
             "--num-test", "2"], env)
    split, _ = _check_layout(_raw(env, "Dataset834_CVC"), 2, 2, 2, ".png")
    assert all(c.startswith("cvc_00") for c in sum(split.values(), []))


def _la_source(root: Path, ids, shape=(20, 16, 12), bad_label_case=None) -> Path:
    rng = np.random.default_rng(3)
    for case in ids:
        (root / "2018LA_Seg_Training Set" / case).mkdir(parents=True)
        label = np.zeros(shape, np.uint8)
        label[5:12, 4:10, 3:8] = 1
        if case == bad_label_case:
            label[0, 0, 0] = 3
        with h5py.File(root / "2018LA_Seg_Training Set" / case / "mri_norm2.h5", "w") as f:
            f["image"] = rng.normal(size=shape).astype(np.float32)
            f["label"] = label
    return root


def test_left_atrium_h5(tmp_path):
    env = nnunet_env(tmp_path)
    train, test = [f"LA{i:02d}" for i in range(6)], ["LA90", "LA91"]
    source = _la_source(tmp_path / "la", train + test)
    (source / "train.list").write_text("\n".join(train) + "\n")
    (source / "test.list").write_text("\n".join(test) + "\n")
    run_cli(["nnUNetv2_convert_LA_ssl", "-i", str(source), "-d", "835", "--num-labelled", "2"], env)
    raw = _raw(env, "Dataset835_LeftAtrium")
    split, dataset_json = _check_layout(raw, 2, 4, 2, ".nii.gz")
    assert split["labelled"] == train[:2] and split["test"] == test  # the start of train.list
    _check_terms(dataset_json, "Xiong", "Medical Image Analysis", "Atrial Segmentation Challenge")
    image = sitk.ReadImage(str(raw / "imagesTr" / "LA00_0000.nii.gz"))
    assert image.GetSize() == (20, 16, 12) and image.GetSpacing() == (0.625, 0.625, 0.625)
    with h5py.File(source / "2018LA_Seg_Training Set" / "LA00" / "mri_norm2.h5") as f:
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTr" / "LA00.nii.gz"))),
                              np.transpose(f["label"][:], (2, 1, 0)))


@pytest.mark.parametrize("problem", ["size", "label", "duplicate", "too_many", "not_the_dataset"])
def test_bad_input_is_refused_and_nothing_is_written(tmp_path, problem):
    env = nnunet_env(tmp_path)
    if problem == "size":
        source = _ph2_original(tmp_path / "src", bad_size_case="IMD001")
        cmd = ["nnUNetv2_convert_PH2_ssl", "-i", str(source), "-d", "840", "--split-file"]
        split_file = tmp_path / "split.json"
        split_file.write_text(json.dumps({"labelled": ["IMD001", "IMD002"], "unlabelled": ["IMD003"],
                                          "test": ["IMD004"]}))
        cmd.append(str(split_file))
        expected = ["IMD001.bmp", "IMD001_lesion.bmp", "sizes differ"]
    elif problem in ("label", "duplicate"):
        train = ["LA00", "LA01", "LA02", "LA00" if problem == "duplicate" else "LA03"]
        source = _la_source(tmp_path / "la", sorted(set(train)) + ["LA90"], bad_label_case="LA01")
        (source / "train.list").write_text("\n".join(train))
        (source / "test.list").write_text("LA90")
        cmd = ["nnUNetv2_convert_LA_ssl", "-i", str(source), "-d", "840", "--num-labelled", "2"]
        expected = ["LA01", "outside the declared set"] if problem == "label" else ["Duplicate", "LA00", "train.list"]
    elif problem == "too_many":
        source = _ph2_original(tmp_path / "src")
        cmd = ["nnUNetv2_convert_PH2_ssl", "-i", str(source), "-d", "840", "--num-labelled", "20"]
        expected = ["Cannot take 20 labelled"]
    else:
        (tmp_path / "empty").mkdir()
        cmd = ["nnUNetv2_convert_Kvasir_ssl", "-i", str(tmp_path / "empty"), "-d", "840", "--num-labelled", "2"]
        expected = ["Kvasir-SEG's images/*.jpg + masks/*.jpg"]
    proc = run_cli(cmd, env, check=False)
    assert proc.returncode != 0
    for text in expected:
        assert text in proc.stderr, proc.stderr
    assert not list(Path(env["nnUNet_raw"]).iterdir())  # no dataset and no temporary folder left behind


def _check_terms(dataset_json: dict, author: str, journal: str, terms: str) -> None:
    """dataset.json carries the dataset's citation and terms of use, not nnU-Net's placeholder licence."""
    assert "lazy" not in json.dumps(dataset_json), dataset_json
    assert author in dataset_json["reference"] and journal in dataset_json["reference"], dataset_json["reference"]
    assert terms in dataset_json["licence"], dataset_json["licence"]


def _acdc_ssl4mis(root: Path, patients: int = 4, slices: int = 12, slices_folder: str = "data/slices"):
    """The SSL4MIS form: training volumes as slices (in data/slices/ or directly in data/), two test volumes.
    Returns the training label volumes."""
    (root / slices_folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(4)
    volumes = {}
    train = [f"patient{p:03d}_frame{f:02d}" for p in range(1, patients + 1) for f in (1, 12)]
    lines = []
    for volume in train:
        label = rng.integers(0, 4, (slices, 16, 16)).astype(np.uint8)  # 12 slices: Z must sort numerically
        volumes[volume] = label
        for z in range(slices):
            with h5py.File(root / slices_folder / f"{volume}_slice_{z}.h5", "w") as f:
                f["image"] = rng.normal(size=(16, 16)).astype(np.float32)
                f["label"] = label[z]
            lines.append(f"{volume}_slice_{z}")
    test = ["patient090_frame01", "patient090_frame11"]
    for volume in test:
        with h5py.File(root / "data" / f"{volume}.h5", "w") as f:
            f["image"] = rng.normal(size=(5, 16, 14)).astype(np.float32)
            f["label"] = rng.integers(0, 4, (5, 16, 14)).astype(np.uint8)
    (root / "train_slices.list").write_text("\n".join(lines))
    (root / "train.list").write_text("\n".join(train))
    (root / "val.list").write_text("")
    (root / "test.list").write_text("\n".join(test))
    return volumes


def test_acdc_ssl4mis_h5(tmp_path):
    env = nnunet_env(tmp_path)
    root = tmp_path / "ACDC"
    volumes = _acdc_ssl4mis(root)
    run_cli(["nnUNetv2_convert_ACDC_ssl", "-i", str(root), "-d", "836", "--labelled-lines", "24"], env)
    raw = _raw(env, "Dataset836_ACDC")
    split, dataset_json = _check_layout(raw, 2, 6, 2, ".nii.gz")
    assert split["labelled"] == ["patient001_frame01", "patient001_frame12"]  # the patient of the first 24 lines
    assert dataset_json["labels"] == {"background": 0, "RV": 1, "myocardium": 2, "LV": 3}
    _check_terms(dataset_json, "Bernard", "IEEE Transactions on Medical Imaging", "ACDC")
    rebuilt = sitk.ReadImage(str(raw / "labelsTr" / "patient001_frame12.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(rebuilt), volumes["patient001_frame12"])
    assert rebuilt.GetSpacing() == (1.5, 1.5, 5.0)
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "imagesTs" / "patient090_frame01_0000.nii.gz"))).shape == (5, 16, 14)


def _acdc_original(root: Path, training=range(1, 6), testing=range(101, 103)) -> Path:
    rng = np.random.default_rng(5)
    for group, patients in (("training", training), ("testing", testing)):
        for p in patients:
            folder = root / group / f"patient{p:03d}"
            folder.mkdir(parents=True)
            for frame in (1, 12):
                image = sitk.GetImageFromArray(rng.normal(size=(6, 12, 12)).astype(np.float32))
                image.SetSpacing((1.4, 1.4, 10.0))
                sitk.WriteImage(image, str(folder / f"patient{p:03d}_frame{frame:02d}.nii.gz"))
                sitk.WriteImage(sitk.GetImageFromArray(rng.integers(0, 4, (6, 12, 12)).astype(np.uint8)),
                                str(folder / f"patient{p:03d}_frame{frame:02d}_gt.nii.gz"))
    return root


def test_acdc_original_release_splits_patients(tmp_path):
    env = nnunet_env(tmp_path)
    _acdc_original(tmp_path / "acdc")
    run_cli(["nnUNetv2_convert_ACDC_ssl", "-i", str(tmp_path / "acdc"), "-d", "837", "--num-labelled-patients", "2"],
            env)
    raw = _raw(env, "Dataset837_ACDC")
    split, dataset_json = _check_layout(raw, 4, 6, 4, ".nii.gz")
    _check_terms(dataset_json, "Bernard", "IEEE Transactions on Medical Imaging", "ACDC")
    patients = {k: {c.split("_")[0] for c in v} for k, v in split.items()}
    assert len(patients["labelled"]) == 2 and patients["test"] == {"patient101", "patient102"}
    assert not patients["labelled"] & patients["unlabelled"]  # both frames of a patient stay together
    assert np.allclose(sitk.ReadImage(str(raw / "imagesTs" / "patient101_frame01_0000.nii.gz")).GetSpacing(), (1.4, 1.4, 10))


# ---- damaged inputs, bad arguments, missing packages and folders: one clear message, nothing written ----

def _truncate(path: Path) -> Path:
    """Cut a file written by a test in half (what an interrupted download leaves)."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def _split_record(tmp_path: Path, labelled, unlabelled, test) -> str:
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"labelled": labelled, "unlabelled": unlabelled, "test": test}))
    return str(path)


def _msd(root: Path) -> Path:
    from nnunet_qg.phantom import make_phantom_msd

    return Path(make_phantom_msd(str(root), num_cases=5, shape=(8, 10, 8)))


def _h5_without_image(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        f["label"] = np.zeros((20, 16, 12), np.uint8)
    return path


def _damaged_ph2(tmp_path):  # a truncated BMP image of a labelled case
    src = _ph2_original(tmp_path / "src", n=4)
    bad = _truncate(src / "PH2 Dataset images" / "IMD001" / "IMD001_Dermoscopic_Image" / "IMD001.bmp")
    return ["nnUNetv2_convert_PH2_ssl", "-i", str(src), "--split-file",
            _split_record(tmp_path, ["IMD001", "IMD002"], ["IMD003"], ["IMD000"])], bad


def _damaged_kvasir_mask(tmp_path):  # a truncated JPEG mask of a labelled case, even with --skip-unreadable
    src = _kvasir(tmp_path / "kvasir", n=4)
    bad = _truncate(src / "masks" / "cju1.jpg")
    return ["nnUNetv2_convert_Kvasir_ssl", "-i", str(src), "--skip-unreadable", "--split-file",
            _split_record(tmp_path, ["cju1"], ["cju2"], ["cju3"])], bad


def _empty_kvasir_image(tmp_path):  # an empty (0-byte) JPEG image of a test case, even with --skip-unreadable
    src = _kvasir(tmp_path / "kvasir", n=4)
    bad = src / "images" / "cju3.jpg"
    bad.write_bytes(b"")
    return ["nnUNetv2_convert_Kvasir_ssl", "-i", str(src), "--skip-unreadable", "--split-file",
            _split_record(tmp_path, ["cju1"], ["cju2"], ["cju3"])], bad


def _damaged_cvc(tmp_path):  # a truncated TIFF of an unlabelled case, without --skip-unreadable
    src = _cvc(tmp_path / "cvc", n=4)
    bad = _truncate(src / "Original" / "2.tif")
    return ["nnUNetv2_convert_CVC_ssl", "-i", str(src), "--split-file",
            _split_record(tmp_path, ["cvc_001"], ["cvc_002"], ["cvc_003"])], bad


def _la(tmp_path):
    train, test = ["LA00", "LA01", "LA02"], ["LA90"]
    src = _la_source(tmp_path / "la", train + test)
    (src / "train.list").write_text("\n".join(train))
    (src / "test.list").write_text("\n".join(test))
    return src


def _damaged_la(tmp_path):  # a truncated h5 of the test case
    src = _la(tmp_path)
    bad = _truncate(src / "2018LA_Seg_Training Set" / "LA90" / "mri_norm2.h5")
    return ["nnUNetv2_convert_LA_ssl", "-i", str(src), "--num-labelled", "1"], bad


def _la_without_image(tmp_path):  # an h5 without 'image', labelled case
    src = _la(tmp_path)
    bad = _h5_without_image(src / "2018LA_Seg_Training Set" / "LA00" / "mri_norm2.h5")
    return ["nnUNetv2_convert_LA_ssl", "-i", str(src), "--num-labelled", "1"], bad


def _damaged_acdc_slice(tmp_path):  # a truncated slice of a labelled volume, slices directly in data/
    _acdc_ssl4mis(tmp_path / "ACDC", patients=2, slices=3, slices_folder="data")
    bad = _truncate(tmp_path / "ACDC" / "data" / "patient001_frame12_slice_1.h5")
    return ["nnUNetv2_convert_ACDC_ssl", "-i", str(tmp_path / "ACDC"), "--labelled-lines", "3"], bad


def _damaged_acdc_nifti(tmp_path):  # original release: a ground truth NIfTI cut in half, labelled
    src = _acdc_original(tmp_path / "acdc", training=range(1, 3), testing=range(101, 102))
    bad = _truncate(src / "training" / "patient001" / "patient001_frame12_gt.nii.gz")
    return ["nnUNetv2_convert_ACDC_ssl", "-i", str(src), "--split-file",
            _split_record(tmp_path, ["patient001_frame01", "patient001_frame12"], ["patient002_frame01"],
                          ["patient101_frame01"])], bad


def _damaged_msd_image(tmp_path):  # a NIfTI image cut in half (SimpleITK would read it as zeros)
    src = _msd(tmp_path / "Task901_Phantom")
    bad = _truncate(src / "imagesTr" / "phantom_001.nii.gz")
    return ["nnUNetv2_convert_MSD_ssl", "-i", str(src), "--split-file",
            _split_record(tmp_path, ["phantom_001"], ["phantom_002"], ["phantom_003"])], bad


def _msd_label_not_nifti(tmp_path):  # a label that is not a NIfTI at all, test case
    src = _msd(tmp_path / "Task901_Phantom")
    bad = src / "labelsTr" / "phantom_003.nii.gz"
    bad.write_bytes(b"<html>404 Not Found</html>")
    return ["nnUNetv2_convert_MSD_ssl", "-i", str(src), "--split-file",
            _split_record(tmp_path, ["phantom_001"], ["phantom_002"], ["phantom_003"])], bad


DAMAGED = {"ph2_truncated_bmp": (_damaged_ph2, "truncated"),
           "kvasir_truncated_mask": (_damaged_kvasir_mask, "never skipped"),
           "kvasir_empty_jpeg": (_empty_kvasir_image, "empty (0 bytes)"),
           "cvc_truncated_tif": (_damaged_cvc, "--skip-unreadable"),
           "la_truncated_h5": (_damaged_la, "truncated"),
           "la_h5_without_image": (_la_without_image, "no 'image' dataset"),
           "acdc_truncated_slice": (_damaged_acdc_slice, "truncated"),
           "acdc_nifti_cut_in_half": (_damaged_acdc_nifti, "truncated"),
           "msd_nifti_cut_in_half": (_damaged_msd_image, "truncated"),
           "msd_label_not_nifti": (_msd_label_not_nifti, "not a NIfTI image")}


def _refused_cleanly(proc, env, *needles) -> None:
    """Non-zero exit, no traceback, every needle in stderr, nothing under nnUNet_raw."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    for needle in needles:
        assert needle in proc.stderr, f"{needle!r} not in:\n{proc.stderr[-3000:]}"
    leftovers = list(Path(env["nnUNet_raw"]).iterdir()) if os.path.isdir(env.get("nnUNet_raw", "")) else []
    assert not leftovers, leftovers  # no dataset and no temporary folder


@pytest.mark.parametrize("damage", sorted(DAMAGED))
def test_unreadable_input_file_is_named_and_nothing_is_written(tmp_path, damage):
    build, problem = DAMAGED[damage]
    env = nnunet_env(tmp_path)
    cmd, bad = build(tmp_path)
    proc = run_cli(cmd + ["-d", "860"], env, check=False)
    _refused_cleanly(proc, env, "ERROR: Could not read", str(bad), problem, "re-download")


@pytest.mark.parametrize("converter", ["Kvasir", "LA"])
def test_skip_unreadable_leaves_out_broken_unlabelled_cases(tmp_path, converter):
    env = nnunet_env(tmp_path)
    if converter == "Kvasir":
        src = _kvasir(tmp_path / "kvasir", n=5)
        _truncate(src / "images" / "cju2.jpg")
        cmd = ["nnUNetv2_convert_Kvasir_ssl", "-i", str(src), "--split-file",
               _split_record(tmp_path, ["cju1"], ["cju2", "cju4"], ["cju3"])]
        broken, kept, raw = "cju2", "cju4", _raw(env, "Dataset861_Kvasir")
    else:
        src = _la(tmp_path)
        _h5_without_image(src / "2018LA_Seg_Training Set" / "LA01" / "mri_norm2.h5")
        cmd = ["nnUNetv2_convert_LA_ssl", "-i", str(src), "--num-labelled", "1"]
        broken, kept, raw = "LA01", "LA02", _raw(env, "Dataset861_LeftAtrium")
    proc = run_cli(cmd + ["-d", "861", "--skip-unreadable"], env)
    assert f"left out unlabelled case {broken}" in proc.stderr and "Traceback" not in proc.stderr
    assert "Skipped 1 unreadable unlabelled case(s)" in proc.stdout
    split = json.loads((raw / "ssl_split.json").read_text())
    assert split["unlabelled"] == [kept]
    assert [p.name.split("_0000")[0] for p in (raw / "imagesUnlabeled").iterdir()] == [kept]
    assert json.loads((raw / "dataset.json").read_text())["numUnlabeled"] == 1


@pytest.mark.parametrize("cmd, option, allowed", [  # the cases of issue #24, and a few more
    (["nnUNetv2_convert_LA_ssl", "--num-labelled", "-3"], "--num-labelled", ">= 1"),
    (["nnUNetv2_convert_ACDC_ssl", "--labelled-lines", "-5"], "--labelled-lines", ">= 1"),
    (["nnUNetv2_convert_CVC_ssl", "--num-labelled", "2", "--max-unlabelled", "-1"], "--max-unlabelled", ">= 0"),
    (["nnUNetv2_convert_Kvasir_ssl", "--num-labelled", "2", "--num-test", "-1"], "--num-test", ">= 0"),
    (["nnUNetv2_convert_MSD_ssl", "--num-labelled", "0"], "--num-labelled", ">= 1"),
    (["nnUNetv2_convert_PH2_ssl", "--num-labelled", "2", "--seed", "-1"], "--seed", "from 0 to 4294967295"),
    (["nnUNetv2_convert_ACDC_ssl", "--spacing", "5", "0", "1.5"], "--spacing", "> 0"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_counts_are_checked_at_parse_time(tmp_path, cmd, option, allowed):
    env = nnunet_env(tmp_path)
    proc = run_cli([cmd[0], "-i", str(tmp_path), "-d", "862"] + cmd[1:], env, check=False)
    assert proc.returncode == 2
    _refused_cleanly(proc, env, f"argument {option}: ", "is not allowed: give a", allowed)


@pytest.mark.parametrize("package", ["h5py", "tifffile"])
def test_missing_optional_package_says_what_to_install(tmp_path, package):
    shadow = tmp_path / "shadow" / package
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(f"raise ImportError('No module named {package}')\n")
    env = nnunet_env(tmp_path)
    env["PYTHONPATH"] = str(tmp_path / "shadow")
    if package == "h5py":
        cmd = ["nnUNetv2_convert_LA_ssl", "-i", str(_la(tmp_path)), "--num-labelled", "1"]
    else:
        cmd = ["nnUNetv2_convert_CVC_ssl", "-i", str(_cvc(tmp_path / "cvc", n=3)), "--num-labelled", "1"]
    proc = run_cli(cmd + ["-d", "863"], env, check=False)
    _refused_cleanly(proc, env, f"needs the Python package {package}", 'pip install "nnunet-qg[conversion]"')


def test_unset_nnunet_raw_is_named(tmp_path):
    env = nnunet_env(tmp_path)
    del env["nnUNet_raw"]
    proc = run_cli(["nnUNetv2_convert_PH2_ssl", "-i", str(_ph2_original(tmp_path / "src", n=3)), "-d", "864",
                    "--num-labelled", "1"], env, check=False)
    _refused_cleanly(proc, env, "ERROR: nnUNet_raw is not set", "export nnUNet_raw=")


def test_cvc_sequence_table_splits_whole_sequences(tmp_path):
    env = nnunet_env(tmp_path)
    src = _cvc(tmp_path / "cvc", n=8)
    table = tmp_path / "sequences.csv"  # frames 1-2 in sequence 1, 3-4 in 2, ...; header row; ids as in Original/
    table.write_text("frame,sequence\n" + "".join(f"{i}.tif,{(i + 1) // 2}\n" for i in range(1, 9)) + "99,9\n")
    proc = run_cli(["nnUNetv2_convert_CVC_ssl", "-i", str(src), "-d", "865", "--sequence-table", str(table),
                    "--num-labelled", "1", "--num-test", "1"], env)
    split, _ = _check_layout(_raw(env, "Dataset865_CVC"), 2, 4, 2, ".png")
    sequence = {f"cvc_{i:03d}": (i + 1) // 2 for i in range(1, 9)}
    sides = {k: {sequence[c] for c in v} for k, v in split.items()}
    assert len(sides["test"]) == 1 and len(sides["labelled"]) == 1 and len(sides["unlabelled"]) == 2
    assert not (sides["test"] & (sides["labelled"] | sides["unlabelled"]))
    assert "1 row(s) name frames that are not in the source" in proc.stdout

    leaking = _split_record(tmp_path, ["cvc_001", "cvc_003"], ["cvc_005"], ["cvc_002"])  # 1 and 2: sequence 1
    proc = run_cli(["nnUNetv2_convert_CVC_ssl", "-i", str(src), "-d", "866", "--sequence-table", str(table),
                    "--split-file", leaking], env, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "sequence '1' in test (cvc_002) and in training (cvc_001)" in proc.stderr
    assert not _raw(env, "Dataset866_CVC").exists()


def test_acdc_ssl4mis_slices_directly_in_data(tmp_path):
    env = nnunet_env(tmp_path)
    _acdc_ssl4mis(tmp_path / "ACDC", patients=2, slices=3, slices_folder="data")
    run_cli(["nnUNetv2_convert_ACDC_ssl", "-i", str(tmp_path / "ACDC"), "-d", "867", "--labelled-lines", "3"], env)
    _check_layout(_raw(env, "Dataset867_ACDC"), 2, 2, 2, ".nii.gz")
