"""Volume I/O shared by the 3D converters (MSD, LA, ACDC): read h5 image + label or a NIfTI header inside
the input guard, check labels, write NIfTI."""
from os.path import join
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from nnunet_qg.dataset_conversion.input_checks import UnreadableFileError, optional_module, reading
from nnunet_qg.dataset_conversion.ssl_dataset import ConversionError


def read_h5_image_label(path: str):
    """`image` (float32) and `label` datasets of an h5 file; an UnreadableFileError when the file cannot
    be read or one of them is missing."""
    h5py = optional_module("h5py", "Reading h5 files")
    with reading(path), h5py.File(path, "r") as f:
        missing = [key for key in ("image", "label") if key not in f]
        if missing:
            raise UnreadableFileError([path], f"it has no '{missing[0]}' dataset (it has: "
                                              f"{', '.join(f.keys()) or 'none'}; expected 'image' and 'label')")
        return np.asarray(f["image"], dtype=np.float32), np.asarray(f["label"])


def nifti_ndim(path: str) -> int:
    """Number of dimensions of a NIfTI image, after the input guard has checked the file is complete
    (a file that is copied, not decoded, is checked all the same)."""
    import nibabel

    with reading(path):
        return len(nibabel.load(path).shape)


def checked_label(image: np.ndarray, label: np.ndarray, labels: Dict[str, int], where: str) -> np.ndarray:
    """The label map as uint8 after checking its shape against the image and its values against `labels`."""
    if image.shape != label.shape:
        raise ConversionError(f"{where}: image {image.shape} and label {label.shape} differ in shape.")
    outside = sorted(set(np.unique(label).tolist()) - set(labels.values()))
    if outside:
        raise ConversionError(f"{where}: labels {outside} outside the declared set "
                              f"{sorted(labels.values())} ({', '.join(labels)}).")
    return label.astype(np.uint8)


def write_nifti_zyx(array: np.ndarray, spacing_zyx: Sequence[float], path: str) -> None:
    """Write a z-y-x array (SimpleITK's order) with its spacing given in the same order."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))
    sitk.WriteImage(image, path)


def nifti_case_writer(read_case: Callable[[str], Tuple[np.ndarray, np.ndarray]], spacing_zyx: Sequence[float]
                      ) -> Callable[[str, str, Optional[str]], None]:
    """`write_case` for write_ssl_dataset: `read_case(case)` gives the z-y-x image and label; the image
    is written as CASE_0000.nii.gz, the label (labelled and test cases only) as CASE.nii.gz."""
    def write_case(case: str, image_folder: str, label_folder: Optional[str]) -> None:
        image, label = read_case(case)
        write_nifti_zyx(image, spacing_zyx, join(image_folder, f"{case}_0000.nii.gz"))
        if label_folder is not None:
            write_nifti_zyx(label, spacing_zyx, join(label_folder, f"{case}.nii.gz"))
    return write_case
