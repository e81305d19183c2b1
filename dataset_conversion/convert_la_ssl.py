"""`nnUNetv2_convert_LA_ssl`: Left Atrium 2018 (the widely shared h5 form) -> nnU-Net v2 raw dataset.

Source layout (as used by UA-MT / SSL4MIS): a folder with `2018LA_Seg_Training Set/<id>/mri_norm2.h5`
(datasets `image`, float32 normalised MRI, x-y-z order, and `label`, uint8 0/1), and beside it
`train.list` (80 ids) and `test.list` (20 ids). The standard protocols take the first 4 (5 %) or 8
(10 %) ids of train.list as labelled (`--num-labelled 4|8`), the rest of train.list as unlabelled and
test.list for testing. h5 carries no spacing: `--spacing` (default 0.625 mm isotropic, the LA MRI's
resolution). Images are written as NIfTI (CASE_0000.nii.gz), labels as CASE.nii.gz. An h5 file that
cannot be read (truncated, empty, without `image` or `label`) stops the conversion with its name and the
fix; --skip-unreadable leaves out unreadable unlabelled cases.
"""
import argparse
import os
from os.path import isdir, isfile, join
from typing import Dict, List

import numpy as np

from nnunet_qg.dataset_conversion.input_checks import InputError, optional_module, positive_count, positive_number
from nnunet_qg.dataset_conversion.ssl_dataset import (ConversionError, add_output_arguments, check_split, read_id_list,
                                                      split_from_file, write_ssl_dataset)
from nnunet_qg.dataset_conversion.volume_io import checked_label, nifti_case_writer, read_h5_image_label

CASES_FOLDER = "2018LA_Seg_Training Set"
DEFAULT_SPACING = (0.625, 0.625, 0.625)


def read_list(path: str) -> List[str]:
    return read_id_list(path, f"The LA h5 release has train.list and test.list beside '{CASES_FOLDER}/'.")


def la_cases(folder: str) -> Dict[str, List[str]]:
    """train / test ids of the LA folder, each with its h5 file present."""
    cases = join(folder, CASES_FOLDER)
    if not isdir(cases):
        raise ConversionError(f"{folder} does not look like the LA 2018 h5 release: expected "
                              f"'{CASES_FOLDER}/<id>/mri_norm2.h5' with train.list and test.list beside it.")
    lists = {"train": read_list(join(folder, "train.list")), "test": read_list(join(folder, "test.list"))}
    for ids in lists.values():
        for case in ids:
            if not isfile(join(cases, case, "mri_norm2.h5")):
                raise ConversionError(f"Case {case} is listed but {join(cases, case, 'mri_norm2.h5')} is missing.")
    return lists


LABELS = {"background": 0, "left_atrium": 1}
# written into dataset.json (nnU-Net's own default there is a placeholder)
CITATION = ("Xiong Z, Xia Q, Hu Z, et al. A global benchmark of algorithms for segmenting the left atrium from "
            "late gadolinium-enhanced cardiac magnetic resonance imaging. Medical Image Analysis 67:101832, 2021 "
            "(the 2018 Atrial Segmentation Challenge). doi:10.1016/j.media.2020.101832")
TERMS = ("2018 Atrial Segmentation Challenge data (STACOM 2018): research use under the challenge's terms of use; "
         "publications must cite Xiong et al. 2021")


def read_h5_case(path: str):
    """Image and label of one case in z-y-x order (stored x-y-z)."""
    image, label = read_h5_image_label(path)
    label = checked_label(image, label, LABELS, path)
    return np.transpose(image, (2, 1, 0)), np.transpose(label, (2, 1, 0))


def convert_la_ssl(folder: str, dataset_id: int, split: Dict[str, List[str]], spacing=DEFAULT_SPACING,
                   name: str = "LeftAtrium", overwrite: bool = False, skip_unreadable: bool = False) -> str:
    optional_module("h5py", "nnUNetv2_convert_LA_ssl")
    lists = la_cases(folder)
    check_split(split, lists["train"] + lists["test"], join(folder, CASES_FOLDER))

    write_case = nifti_case_writer(lambda case: read_h5_case(join(folder, CASES_FOLDER, case, "mri_norm2.h5")),
                                   list(spacing)[::-1])  # spacing is given x y z
    return write_ssl_dataset(dataset_id, name, split, write_case, channel_names={0: "MRI"},
                             labels=LABELS, file_ending=".nii.gz",
                             overwrite=overwrite, skip_unreadable=skip_unreadable,
                             reference=CITATION, license=TERMS,
                             description=f"LA 2018 in the h5 form of UA-MT; spacing {list(spacing)} mm given at "
                                         f"conversion (h5 has none)")


def entry_point() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-i", required=True, help=f"folder with '{CASES_FOLDER}/', train.list and test.list")
    add_output_arguments(parser)
    parser.add_argument("--num-labelled", type=positive_count, default=None,
                        help="labelled cases from the start of train.list, >= 1 (4 = 5 %%, 8 = 10 %%)")
    parser.add_argument("--split-file", default=None, help="a converter's ssl_split.json instead of the lists")
    parser.add_argument("--spacing", type=positive_number, nargs=3, default=list(DEFAULT_SPACING),
                        help="voxel spacing in mm, each > 0 (h5 has none). Default: 0.625 0.625 0.625")
    parser.add_argument("--name", default="LeftAtrium")
    args = parser.parse_args()
    try:
        if args.split_file:
            split = split_from_file(args.split_file)
        else:
            if args.num_labelled is None:
                raise ConversionError("Give --num-labelled (4 or 8 in the standard protocols) or --split-file.")
            lists = la_cases(args.i)
            if args.num_labelled > len(lists["train"]):
                raise ConversionError(f"{args.num_labelled} labelled cases requested, but train.list has only "
                                      f"{len(lists['train'])}.")
            split = {"labelled": lists["train"][:args.num_labelled],
                     "unlabelled": lists["train"][args.num_labelled:], "test": lists["test"]}
        convert_la_ssl(os.path.abspath(args.i), args.d, split, args.spacing, args.name, args.overwrite,
                       args.skip_unreadable)
    except InputError as e:
        raise SystemExit(f"ERROR: {e}")
