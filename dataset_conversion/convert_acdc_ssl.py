"""`nnUNetv2_convert_ACDC_ssl`: ACDC in the SSL4MIS h5 form -> nnU-Net v2 raw 3D dataset.

Source layout (-i): `train_slices.list`, `train.list` (140 volumes = 70 patients x 2 frames),
`val.list` (20) and `test.list` (40) beside a `data/` folder holding the training slices
`patientXXX_frameYY_slice_Z.h5` (in `data/slices/` or directly in `data/`; datasets `image` float32
and `label` uint8, H x W) and the validation/test volumes `data/patientXXX_frameYY.h5` (Z x H x W).
Labels 0 background, 1 RV, 2 myocardium, 3 LV.

Training volumes are rebuilt from their slices (ordered by Z) for the 3D configurations (the 2d
configuration then trains on the same slices). The SSL4MIS labelled sets are reproduced:
`--labelled-patients 3` (7) = the patients of the first 68 (136) lines of train_slices.list; all
training volumes of those patients are labelled, the other training volumes unlabelled, and the
test.list volumes are the test set (val.list is not used: nnU-Net validates on its own fold).
h5 carries no spacing: `--spacing z y x` (default 5 1.5 1.5 mm, ACDC's typical slice thickness and
in-plane resolution).
"""
import argparse
import os
import re
from collections import defaultdict
from os.path import isdir, isfile, join
from typing import Dict, List, Optional

import numpy as np

from nnunet_qg.dataset_conversion.ssl_dataset import (ConversionError, check_split, read_id_list, split_from_file,
                                                      write_ssl_dataset)

SSL4MIS_LABELLED_LINES = {3: 68, 7: 136}  # patients -> lines of train_slices.list
DEFAULT_SPACING = (5.0, 1.5, 1.5)  # z, y, x
LABELS = {"background": 0, "RV": 1, "myocardium": 2, "LV": 3}
SLICE_NAME = re.compile(r"^(?P<volume>patient\d+_frame\d+)_slice_(?P<z>\d+)$")


def _h5_arrays(path: str):
    import h5py

    with h5py.File(path, "r") as f:
        for key in ("image", "label"):
            if key not in f:
                raise ConversionError(f"{path} has no '{key}' dataset (it has: {', '.join(f.keys())}).")
        return np.asarray(f["image"], dtype=np.float32), np.asarray(f["label"])


class ACDCSource:
    """Lists, slices and volumes of an SSL4MIS ACDC folder."""

    def __init__(self, folder: str):
        self.folder = folder
        data = join(folder, "data")
        if not isdir(data) or not isfile(join(folder, "train_slices.list")):
            raise ConversionError(f"{folder} does not look like ACDC in the SSL4MIS form: expected train_slices.list, "
                                  f"train.list, val.list, test.list and data/ with patientXXX_frameYY[_slice_Z].h5.")
        self.slices_folder = join(data, "slices") if isdir(join(data, "slices")) else data
        self.volumes_folder = data
        expected = "ACDC in the SSL4MIS form has train_slices.list, train.list, val.list and test.list beside data/."
        self.slice_lines = read_id_list(join(folder, "train_slices.list"), expected)
        self.train = read_id_list(join(folder, "train.list"), expected)
        self.test = read_id_list(join(folder, "test.list"), expected)
        self.slices: Dict[str, Dict[int, str]] = defaultdict(dict)
        for name in os.listdir(self.slices_folder):
            match = SLICE_NAME.match(name[:-3]) if name.endswith(".h5") else None
            if match:
                self.slices[match["volume"]][int(match["z"])] = join(self.slices_folder, name)
        for volume in self.train:
            if volume not in self.slices:
                raise ConversionError(f"Training volume {volume} (train.list) has no slices "
                                      f"{volume}_slice_Z.h5 in {self.slices_folder}.")
        for volume in self.test:
            if not isfile(join(self.volumes_folder, volume + ".h5")):
                raise ConversionError(f"Test volume {volume} (test.list) is missing: {join(self.volumes_folder, volume)}.h5")

    def labelled_volumes(self, lines: int) -> List[str]:
        if lines > len(self.slice_lines):
            raise ConversionError(f"{lines} lines of train_slices.list requested, it has {len(self.slice_lines)}.")
        patients = {SLICE_NAME.match(l.replace(".h5", ""))["volume"].split("_")[0] for l in self.slice_lines[:lines]}
        return [v for v in self.train if v.split("_")[0] in patients]

    def volume(self, case: str):
        """(image, label) Z x H x W: a test volume as stored, a training volume stacked from its slices."""
        if case in self.slices and case in self.train:
            parts = [_h5_arrays(self.slices[case][z]) for z in sorted(self.slices[case])]
            shapes = {p[0].shape for p in parts} | {p[1].shape for p in parts}
            if len(shapes) != 1:
                raise ConversionError(f"Slices of {case} in {self.slices_folder} differ in size: {sorted(shapes)}.")
            image, label = np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts])
        else:
            image, label = _h5_arrays(join(self.volumes_folder, case + ".h5"))
        if image.shape != label.shape:
            raise ConversionError(f"{case}: image {image.shape} and label {label.shape} differ in shape.")
        outside = sorted(set(np.unique(label).tolist()) - set(LABELS.values()))
        if outside:
            raise ConversionError(f"{case}: labels {outside} outside the declared set 0-3 (background, RV, "
                                  f"myocardium, LV).")
        return image, label.astype(np.uint8)


def write_nifti_zyx(array: np.ndarray, spacing_zyx, path: str) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))
    sitk.WriteImage(image, path)


def convert_acdc_ssl(folder: str, dataset_id: int, split: Dict[str, List[str]], spacing=DEFAULT_SPACING,
                     name: str = "ACDC", overwrite: bool = False, source: Optional[ACDCSource] = None) -> str:
    source = source or ACDCSource(folder)
    check_split(split, source.train + source.test, folder)

    def write_case(case: str, image_folder: str, label_folder: Optional[str]) -> None:
        image, label = source.volume(case)
        write_nifti_zyx(image, spacing, join(image_folder, f"{case}_0000.nii.gz"))
        if label_folder is not None:
            write_nifti_zyx(label, spacing, join(label_folder, f"{case}.nii.gz"))

    return write_ssl_dataset(dataset_id, name, split, write_case, channel_names={0: "cineMRI"}, labels=LABELS,
                             file_ending=".nii.gz", overwrite=overwrite,
                             reference="ACDC (Bernard et al. 2018), SSL4MIS h5 form",
                             description=f"spacing {list(spacing)} mm (z, y, x) given at conversion (h5 has none)")


def entry_point() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-i", required=True, help="SSL4MIS ACDC folder (lists + data/)")
    parser.add_argument("-d", type=int, required=True, help="Target dataset id (DatasetXXX)")
    parser.add_argument("--labelled-patients", type=int, choices=sorted(SSL4MIS_LABELLED_LINES), default=None,
                        help="SSL4MIS labelled sets: 3 or 7 patients (first 68 / 136 lines of train_slices.list)")
    parser.add_argument("--labelled-lines", type=int, default=None, help="or any number of train_slices.list lines")
    parser.add_argument("--split-file", default=None, help="a converter's ssl_split.json instead")
    parser.add_argument("--spacing", type=float, nargs=3, default=list(DEFAULT_SPACING),
                        help="z y x spacing in mm (h5 has none). Default: 5 1.5 1.5")
    parser.add_argument("--name", default="ACDC")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing dataset with this id")
    args = parser.parse_args()
    try:
        source = ACDCSource(os.path.abspath(args.i))
        if args.split_file:
            split = split_from_file(args.split_file)
        else:
            lines = args.labelled_lines or SSL4MIS_LABELLED_LINES.get(args.labelled_patients)
            if lines is None:
                raise ConversionError("Give --labelled-patients 3|7 (the SSL4MIS sets), --labelled-lines N or "
                                      "--split-file.")
            labelled = source.labelled_volumes(lines)
            split = {"labelled": labelled, "unlabelled": [v for v in source.train if v not in labelled],
                     "test": source.test}
        convert_acdc_ssl(source.folder, args.d, split, args.spacing, args.name, args.overwrite, source)
    except ConversionError as e:
        raise SystemExit(f"ERROR: {e}")
