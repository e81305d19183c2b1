"""Converters of the public semi-supervised benchmarks, on tiny fixtures in their exact formats
(and on the real PH2 copy in ../shared/data/ph2 where present)."""
import json
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


def test_kvasir_grey_masks_are_thresholded(tmp_path):
    env = nnunet_env(tmp_path)
    rng = np.random.default_rng(1)
    for sub in ("images", "masks"):
        (tmp_path / "kvasir" / sub).mkdir(parents=True)
    for i in range(7):
        image, lesion = _rgb_with_lesion(rng)
        Image.fromarray(image).save(tmp_path / "kvasir" / "images" / f"cju{i}.jpg")
        Image.fromarray((lesion * 255).astype(np.uint8)).save(tmp_path / "kvasir" / "masks" / f"cju{i}.jpg",
                                                              quality=70)  # JPEG: grey levels at the edges
    proc = run_cli(["nnUNetv2_convert_Kvasir_ssl", "-i", str(tmp_path / "kvasir"), "-d", "833", "--num-labelled",
                    "3", "--num-test", "2"], env)
    assert "thresholded at 128" in proc.stdout
    raw = _raw(env, "Dataset833_Kvasir")
    _check_layout(raw, 3, 2, 2, ".png")
    for f in (raw / "labelsTr").iterdir():
        assert set(np.unique(np.asarray(Image.open(f)))) <= {0, 1}


def test_cvc_tif(tmp_path):
    env = nnunet_env(tmp_path)
    rng = np.random.default_rng(2)
    for sub in ("Original", "Ground Truth"):
        (tmp_path / "cvc" / sub).mkdir(parents=True)
    for i in range(1, 7):
        image, lesion = _rgb_with_lesion(rng)
        tifffile.imwrite(tmp_path / "cvc" / "Original" / f"{i}.tif", image)
        tifffile.imwrite(tmp_path / "cvc" / "Ground Truth" / f"{i}.tif", (lesion * 255).astype(np.uint8))
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
    split, _ = _check_layout(raw, 2, 4, 2, ".nii.gz")
    assert split["labelled"] == train[:2] and split["test"] == test  # the start of train.list
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


def test_acdc_ssl4mis_h5(tmp_path):
    env = nnunet_env(tmp_path)
    root = tmp_path / "ACDC"
    (root / "data" / "slices").mkdir(parents=True)
    rng = np.random.default_rng(4)
    volumes = {}
    train = [f"patient{p:03d}_frame{f:02d}" for p in range(1, 5) for f in (1, 12)]
    lines = []
    for volume in train:
        label = rng.integers(0, 4, (12, 16, 16)).astype(np.uint8)  # 12 slices: Z must sort numerically
        volumes[volume] = label
        for z in range(12):
            with h5py.File(root / "data" / "slices" / f"{volume}_slice_{z}.h5", "w") as f:
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
    run_cli(["nnUNetv2_convert_ACDC_ssl", "-i", str(root), "-d", "836", "--labelled-lines", "24"], env)
    raw = _raw(env, "Dataset836_ACDC")
    split, dataset_json = _check_layout(raw, 2, 6, 2, ".nii.gz")
    assert split["labelled"] == ["patient001_frame01", "patient001_frame12"]  # the patient of the first 24 lines
    assert dataset_json["labels"] == {"background": 0, "RV": 1, "myocardium": 2, "LV": 3}
    rebuilt = sitk.ReadImage(str(raw / "labelsTr" / "patient001_frame12.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(rebuilt), volumes["patient001_frame12"])
    assert rebuilt.GetSpacing() == (1.5, 1.5, 5.0)
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "imagesTs" / "patient090_frame01_0000.nii.gz"))).shape == (5, 16, 14)


def test_acdc_original_release_splits_patients(tmp_path):
    env = nnunet_env(tmp_path)
    rng = np.random.default_rng(5)
    for group, patients in (("training", range(1, 6)), ("testing", range(101, 103))):
        for p in patients:
            folder = tmp_path / "acdc" / group / f"patient{p:03d}"
            folder.mkdir(parents=True)
            for frame in (1, 12):
                image = sitk.GetImageFromArray(rng.normal(size=(6, 12, 12)).astype(np.float32))
                image.SetSpacing((1.4, 1.4, 10.0))
                sitk.WriteImage(image, str(folder / f"patient{p:03d}_frame{frame:02d}.nii.gz"))
                sitk.WriteImage(sitk.GetImageFromArray(rng.integers(0, 4, (6, 12, 12)).astype(np.uint8)),
                                str(folder / f"patient{p:03d}_frame{frame:02d}_gt.nii.gz"))
    run_cli(["nnUNetv2_convert_ACDC_ssl", "-i", str(tmp_path / "acdc"), "-d", "837", "--num-labelled-patients", "2"],
            env)
    raw = _raw(env, "Dataset837_ACDC")
    split, _ = _check_layout(raw, 4, 6, 4, ".nii.gz")
    patients = {k: {c.split("_")[0] for c in v} for k, v in split.items()}
    assert len(patients["labelled"]) == 2 and patients["test"] == {"patient101", "patient102"}
    assert not patients["labelled"] & patients["unlabelled"]  # both frames of a patient stay together
    assert np.allclose(sitk.ReadImage(str(raw / "imagesTs" / "patient101_frame01_0000.nii.gz")).GetSpacing(), (1.4, 1.4, 10))
