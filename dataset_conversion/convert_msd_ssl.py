"""`nnUNetv2_convert_MSD_ssl`: Medical Segmentation Decathlon folder -> nnU-Net v2 raw dataset with a
labelled / unlabelled / test split.

Labelled cases go to imagesTr/labelsTr, the other training cases to imagesUnlabeled WITHOUT their
labels, test cases to imagesTs plus labelsTs (kept for evaluation only). The split comes from a
split file (format of `ssl_splits.json`: `test`, `pool`, `labelled_sets`) or from
`--num-labelled N --seed S`. The dataset is assembled in a temporary folder and renamed at the end.
Every NIfTI file is checked to be complete before it is copied (an unreadable unlabelled case is left
out with --skip-unreadable; an unreadable labelled or test case always stops the conversion).
"""
import argparse
import os
import shutil
from os.path import isfile, join
from typing import List, Optional

from batchgenerators.utilities.file_and_folder_operations import load_json

from nnunet_qg.dataset_conversion.input_checks import InputError, reading
from nnunet_qg.dataset_conversion.ssl_dataset import (ConversionError, Split,
                                                      add_split_arguments, check_split, split_from_arguments,
                                                      write_ssl_dataset)
from nnunet_qg.dataset_conversion.volume_io import nifti_ndim


def msd_case_ids(source_folder: str) -> List[str]:
    """Case ids of an MSD folder (imagesTr/<case>.nii.gz with a label in labelsTr)."""
    for required in ("imagesTr", "labelsTr", "dataset.json"):
        if not os.path.exists(join(source_folder, required)):
            raise ConversionError(
                f"{source_folder} does not look like a Medical Segmentation Decathlon task: {required} is "
                f"missing. Expected imagesTr/<case>.nii.gz, labelsTr/<case>.nii.gz and an MSD dataset.json "
                f"(with 'modality' and 'labels').")
    ids = sorted(f[:-7] for f in os.listdir(join(source_folder, "imagesTr"))
                 if f.endswith(".nii.gz") and not f.startswith((".", "_")))
    missing = [i for i in ids if not isfile(join(source_folder, "labelsTr", i + ".nii.gz"))]
    if missing:
        raise ConversionError(f"Training images without a label in {join(source_folder, 'labelsTr')}: "
                              f"{', '.join(missing[:5])}. Every MSD training image needs its label.")
    if not ids:
        raise ConversionError(f"No <case>.nii.gz images in {join(source_folder, 'imagesTr')}.")
    return ids


def _copy_image(source_image: str, target_folder: str) -> None:
    """3D: copied as <case>_0000.nii.gz (checked complete, header read with nibabel); 4D: one file per
    channel (nnU-Net's)."""
    if nifti_ndim(source_image) == 3:
        case = os.path.basename(source_image)[:-len(".nii.gz")]
        shutil.copy(source_image, join(target_folder, f"{case}_0000.nii.gz"))
        return
    from nnunetv2.dataset_conversion.convert_MSD_dataset import split_4d_nifti

    with reading(source_image):
        split_4d_nifti(source_image, target_folder)


def convert_msd_ssl(source_folder: str, dataset_id: int, split: Split, dataset_name: Optional[str] = None,
                    max_unlabelled: Optional[int] = None, max_test: Optional[int] = None,
                    image_reader_writer: Optional[str] = None, overwrite: bool = False,
                    skip_unreadable: bool = False) -> str:
    """Write the raw dataset; returns its folder under nnUNet_raw."""
    source_folder = os.path.abspath(source_folder)
    ids = msd_case_ids(source_folder)
    with reading(join(source_folder, "dataset.json"), fix="Re-download the MSD task (its dataset.json)."):
        msd_json = load_json(join(source_folder, "dataset.json"))
    if "modality" not in msd_json or "labels" not in msd_json:
        raise ConversionError(f"{join(source_folder, 'dataset.json')} is not an MSD dataset.json: it needs "
                              f"'modality' and 'labels'.")
    split = {"labelled": list(split["labelled"]), "unlabelled": list(split["unlabelled"])[:max_unlabelled],
             "test": list(split["test"])[:max_test]}
    check_split(split, ids, join(source_folder, "imagesTr"))

    def write_case(case: str, image_folder: str, label_folder: Optional[str]) -> None:
        _copy_image(join(source_folder, "imagesTr", case + ".nii.gz"), image_folder)
        if label_folder is not None:
            label = join(source_folder, "labelsTr", case + ".nii.gz")
            nifti_ndim(label)  # checked complete before it is copied
            shutil.copy(label, join(label_folder, case + ".nii.gz"))

    name = dataset_name or "".join(ch for ch in msd_json.get("name", "MSD") if ch.isalnum())
    return write_ssl_dataset(dataset_id, name, split, write_case,
                             channel_names={int(k): v for k, v in msd_json["modality"].items()},
                             labels={v: int(k) for k, v in msd_json["labels"].items()}, file_ending=".nii.gz",
                             overwrite=overwrite, skip_unreadable=skip_unreadable,
                             reference=msd_json.get("reference"),
                             license=msd_json.get("licence", msd_json.get("license", "see source")),
                             description=msd_json.get("description"),
                             overwrite_image_reader_writer=image_reader_writer)


def entry_point() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-i", required=True, help="MSD task folder (imagesTr, labelsTr, dataset.json)")
    add_split_arguments(parser)
    parser.add_argument("--name", default=None, help="Dataset name (default: 'name' from the MSD dataset.json)")
    parser.add_argument("--reader", default=None, help="overwrite_image_reader_writer for dataset.json, e.g. NibabelIO")
    args = parser.parse_args()
    try:
        split = split_from_arguments(args, msd_case_ids(args.i))
        convert_msd_ssl(args.i, args.d, split, args.name, image_reader_writer=args.reader, overwrite=args.overwrite,
                        skip_unreadable=args.skip_unreadable)
    except InputError as e:
        raise SystemExit(f"ERROR: {e}")
