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

The original release is accepted too: per-patient folders `patientXXX/` with
`patientXXX_frameYY.nii.gz` and `patientXXX_frameYY_gt.nii.gz` (in -i, or in -i/training and
-i/testing). Patients are split, never frames: `--num-labelled-patients N` (seeded, `--seed`),
testing/ as the test set where present, else `--num-test-patients M`. NIfTI files are checked to be
complete and copied with their own spacing.

An input file that cannot be read (truncated or empty h5 or NIfTI, h5 without `image` or `label`) stops
the conversion with its name and the fix; --skip-unreadable leaves out unreadable unlabelled volumes.
"""
import argparse
import os
import re
import shutil
from collections import defaultdict
from os.path import isdir, isfile, join
from typing import Dict, List, Optional

import numpy as np

from nnunet_qg.dataset_conversion.input_checks import (InputError, count, optional_module, positive_count,
                                                       positive_number, seed)
from nnunet_qg.dataset_conversion.ssl_dataset import (ConversionError, add_output_arguments, check_split,
                                                      grouped_split, read_id_list, split_from_file, write_ssl_dataset)
from nnunet_qg.dataset_conversion.volume_io import (checked_label, nifti_case_writer, nifti_ndim,
                                                    read_h5_image_label)

SSL4MIS_LABELLED_LINES = {3: 68, 7: 136}  # patients -> lines of train_slices.list
DEFAULT_SPACING = (5.0, 1.5, 1.5)  # z, y, x
LABELS = {"background": 0, "RV": 1, "myocardium": 2, "LV": 3}
# written into dataset.json (nnU-Net's own default there is a placeholder)
CITATION = ("Bernard O, Lalande A, Zotti C, et al. Deep Learning Techniques for Automatic MRI Cardiac "
            "Multi-structures Segmentation and Diagnosis: Is the Problem Solved? IEEE Transactions on Medical "
            "Imaging 37(11):2514-2525, 2018. doi:10.1109/TMI.2018.2837502")
TERMS = ("ACDC challenge data (Creatis, Universite de Lyon): research use under the challenge's terms of use "
         "(https://www.creatis.insa-lyon.fr/Challenge/acdc/); publications must cite Bernard et al. 2018")
SLICE_NAME = re.compile(r"^(?P<volume>patient\d+_frame\d+)_slice_(?P<z>\d+)$")


class ACDCSource:
    """Lists, slices and volumes of an SSL4MIS ACDC folder."""

    def __init__(self, folder: str):
        optional_module("h5py", "ACDC in the SSL4MIS form (h5 files)")
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
            parts = [read_h5_image_label(self.slices[case][z]) for z in sorted(self.slices[case])]
            shapes = {p[0].shape for p in parts} | {p[1].shape for p in parts}
            if len(shapes) != 1:
                raise ConversionError(f"Slices of {case} in {self.slices_folder} differ in size: {sorted(shapes)}.")
            image, label = np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts])
        else:
            image, label = read_h5_image_label(join(self.volumes_folder, case + ".h5"))
        return image, checked_label(image, label, LABELS, case)


def original_release_frames(folder: str) -> Dict[str, Dict[str, str]]:
    """'training' / 'testing' -> {case: patient folder} of the original release (frames with a _gt file)."""
    groups = {g: join(folder, g) for g in ("training", "testing") if isdir(join(folder, g))} or {"training": folder}
    out: Dict[str, Dict[str, str]] = {}
    for group, root in groups.items():
        out[group] = {}
        for patient in sorted(d for d in os.listdir(root) if re.fullmatch(r"patient\d+", d)):
            for f in sorted(os.listdir(join(root, patient))):
                match = re.fullmatch(r"(patient\d+_frame\d+)_gt\.nii\.gz", f)
                if match and isfile(join(root, patient, match[1] + ".nii.gz")):
                    out[group][match[1]] = join(root, patient)
    if not any(out.values()):
        raise ConversionError(f"{folder} does not look like ACDC: expected the SSL4MIS form (train_slices.list and "
                              f"data/) or the original release (patientXXX/patientXXX_frameYY[_gt].nii.gz).")
    return out


def original_release_split(frames: Dict[str, Dict[str, str]], num_labelled: int, num_test: int, seed: int):
    """Split patients (all frames of a patient go together)."""
    testing = sorted(frames.get("testing", {}))
    split = grouped_split({c: c.split("_")[0] for c in frames["training"]}, num_labelled,
                          0 if testing else num_test, seed, "patient")
    return {**split, "test": testing} if testing else split


def convert_acdc_original(frames: Dict[str, Dict[str, str]], dataset_id: int, split, name: str = "ACDC",
                          overwrite: bool = False, skip_unreadable: bool = False) -> str:
    cases = {**frames["training"], **frames.get("testing", {})}
    check_split(split, cases, "the ACDC folders")

    def write_case(case: str, image_folder: str, label_folder: Optional[str]) -> None:
        image = join(cases[case], case + ".nii.gz")
        nifti_ndim(image)  # checked complete before it is copied
        shutil.copy(image, join(image_folder, f"{case}_0000.nii.gz"))
        if label_folder is not None:
            label = join(cases[case], case + "_gt.nii.gz")
            nifti_ndim(label)
            shutil.copy(label, join(label_folder, f"{case}.nii.gz"))

    return write_ssl_dataset(dataset_id, name, split, write_case, channel_names={0: "cineMRI"}, labels=LABELS,
                             file_ending=".nii.gz", overwrite=overwrite, skip_unreadable=skip_unreadable,
                             reference=CITATION, license=TERMS)


def convert_acdc_ssl(folder: str, dataset_id: int, split: Dict[str, List[str]], spacing=DEFAULT_SPACING,
                     name: str = "ACDC", overwrite: bool = False, source: Optional[ACDCSource] = None,
                     skip_unreadable: bool = False) -> str:
    source = source or ACDCSource(folder)
    check_split(split, source.train + source.test, folder)

    return write_ssl_dataset(dataset_id, name, split, nifti_case_writer(source.volume, spacing),
                             channel_names={0: "cineMRI"}, labels=LABELS,
                             file_ending=".nii.gz", overwrite=overwrite, skip_unreadable=skip_unreadable,
                             reference=CITATION, license=TERMS,
                             description=f"ACDC in the SSL4MIS h5 form; spacing {list(spacing)} mm (z, y, x) given at "
                                         f"conversion (h5 has none)")


def entry_point() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-i", required=True, help="SSL4MIS ACDC folder (lists + data/)")
    add_output_arguments(parser)
    parser.add_argument("--labelled-patients", type=int, choices=sorted(SSL4MIS_LABELLED_LINES), default=None,
                        help="SSL4MIS labelled sets: 3 or 7 patients (first 68 / 136 lines of train_slices.list)")
    parser.add_argument("--labelled-lines", type=positive_count, default=None,
                        help="or any number (>= 1) of train_slices.list lines")
    parser.add_argument("--split-file", default=None, help="a converter's ssl_split.json instead")
    parser.add_argument("--num-labelled-patients", type=positive_count, default=None,
                        help="original release: labelled patients, >= 1")
    parser.add_argument("--num-test-patients", type=count, default=0,
                        help="original release without testing/: test patients, >= 0. Default: 0")
    parser.add_argument("--seed", type=seed, default=0,
                        help="original release: seed of the patient split, 0 to 2**32-1. Default: 0")
    parser.add_argument("--spacing", type=positive_number, nargs=3, default=list(DEFAULT_SPACING),
                        help="z y x spacing in mm, each > 0 (h5 has none). Default: 5 1.5 1.5")
    parser.add_argument("--name", default="ACDC")
    args = parser.parse_args()
    try:
        folder = os.path.abspath(args.i)
        if not isfile(join(folder, "train_slices.list")):  # the original release
            frames = original_release_frames(folder)
            if args.split_file:
                split = split_from_file(args.split_file)
            elif args.num_labelled_patients is None:
                raise ConversionError("Original ACDC release: give --num-labelled-patients N (and "
                                      "--num-test-patients M without a testing/ folder) or --split-file.")
            else:
                split = original_release_split(frames, args.num_labelled_patients, args.num_test_patients, args.seed)
            convert_acdc_original(frames, args.d, split, args.name, args.overwrite, args.skip_unreadable)
            return
        source = ACDCSource(folder)
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
        convert_acdc_ssl(source.folder, args.d, split, args.spacing, args.name, args.overwrite, source,
                         args.skip_unreadable)
    except InputError as e:
        raise SystemExit(f"ERROR: {e}")
