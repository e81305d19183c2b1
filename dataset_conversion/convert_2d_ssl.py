"""2D natural-image datasets -> nnU-Net v2 raw datasets for the 2d configuration, with imagesUnlabeled/.

`nnUNetv2_convert_PH2_ssl`, `nnUNetv2_convert_Kvasir_ssl`, `nnUNetv2_convert_CVC_ssl`. Images are
written as RGB PNG (`CASE_0000.png`, read by nnU-Net's NaturalImage2DIO as three channels R, G, B),
masks as PNG with labels 0 (background) and 1 (lesion / polyp). Masks stored with grey levels
(JPEG, resampled images) are thresholded at 128 and the converter says how many were.

Source layouts:
- PH2, original release: `PH2 Dataset images/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp` with
  `IMDxxx/IMDxxx_lesion/IMDxxx_lesion.bmp` (-i is that folder or the folder containing it);
  or the PNG layout `images/IMDxxx.png` + `masks/IMDxxx.png` (e.g. ../shared/data/ph2).
- Kvasir-SEG: `images/<name>.jpg` + `masks/<name>.jpg` (grey-level masks).
- CVC-ClinicDB: `Original/<N>.tif` (RGB) + `Ground Truth/<N>.tif`, read with tifffile.
"""
import argparse
import os
from os.path import basename, isdir, join, splitext
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from nnunet_qg.dataset_conversion.ssl_dataset import (ConversionError, add_split_arguments, check_split,
                                                      check_unique, split_from_arguments, write_ssl_dataset)

Pairs = Dict[str, Tuple[str, str]]  # case -> (image file, mask file)
MASK_THRESHOLD = 128


def _pairs_from_folders(images: str, masks: str, endings: Tuple[str, ...], case_of: Callable[[str], str],
                        mask_name: Callable[[str], str], expected: str) -> Pairs:
    if not (isdir(images) and isdir(masks)):
        raise ConversionError(f"Expected {expected}; {images if not isdir(images) else masks} is missing.")
    files = sorted(f for f in os.listdir(images) if f.lower().endswith(endings) and not f.startswith("."))
    if not files:
        raise ConversionError(f"No {'/'.join(endings)} images in {images}. Expected {expected}.")
    pairs, cases = {}, []
    for f in files:
        mask = join(masks, mask_name(f))
        if not os.path.isfile(mask):
            raise ConversionError(f"Image {join(images, f)} has no mask {mask}. Expected {expected}.")
        case = case_of(f)
        cases.append(case)
        pairs[case] = (join(images, f), mask)
    check_unique(cases, images)
    return pairs


def ph2_pairs(folder: str) -> Pairs:
    """PH2 in its original layout or in the PNG layout."""
    if isdir(join(folder, "images")) and isdir(join(folder, "masks")):
        return _pairs_from_folders(join(folder, "images"), join(folder, "masks"), (".png", ".bmp"),
                                   lambda f: splitext(f)[0], lambda f: f,
                                   "PH2's PNG layout images/IMDxxx.png + masks/IMDxxx.png")
    root = join(folder, "PH2 Dataset images") if isdir(join(folder, "PH2 Dataset images")) else folder
    cases = sorted(d for d in os.listdir(root) if d.startswith("IMD") and isdir(join(root, d))) if isdir(root) else []
    if not cases:
        raise ConversionError(f"{folder} does not look like PH2: expected 'PH2 Dataset images/IMDxxx/"
                              f"IMDxxx_Dermoscopic_Image/IMDxxx.bmp' (original release) or images/ + masks/ "
                              f"with IMDxxx.png (PNG layout).")
    pairs = {}
    for case in cases:
        image = join(root, case, f"{case}_Dermoscopic_Image", f"{case}.bmp")
        mask = join(root, case, f"{case}_lesion", f"{case}_lesion.bmp")
        for path in (image, mask):
            if not os.path.isfile(path):
                raise ConversionError(f"PH2 case {case} lacks {path} (original layout: IMDxxx_Dermoscopic_Image/"
                                      f"IMDxxx.bmp and IMDxxx_lesion/IMDxxx_lesion.bmp).")
        pairs[case] = (image, mask)
    return pairs


def kvasir_pairs(folder: str) -> Pairs:
    return _pairs_from_folders(join(folder, "images"), join(folder, "masks"), (".jpg", ".jpeg", ".png"),
                               lambda f: splitext(f)[0], lambda f: f, "Kvasir-SEG's images/*.jpg + masks/*.jpg")


def cvc_pairs(folder: str) -> Pairs:
    def case_of(f: str) -> str:
        stem = splitext(f)[0]
        return f"cvc_{int(stem):03d}" if stem.isdigit() else f"cvc_{stem}"
    return _pairs_from_folders(join(folder, "Original"), join(folder, "Ground Truth"), (".tif", ".tiff"),
                               case_of, lambda f: f, "CVC-ClinicDB's Original/N.tif + Ground Truth/N.tif")


def read_array(path: str) -> np.ndarray:
    if path.lower().endswith((".tif", ".tiff")):
        import tifffile
        return np.asarray(tifffile.imread(path))
    from PIL import Image
    with Image.open(path) as img:
        return np.asarray(img)


def rgb_image(path: str) -> np.ndarray:
    image = read_array(path)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, -1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ConversionError(f"{path}: expected an RGB image (H x W x 3), got shape {image.shape}.")
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def binary_mask(path: str) -> Tuple[np.ndarray, bool]:
    """0/1 mask and whether it had to be thresholded (values other than 0 and the maximum)."""
    mask = read_array(path)
    if mask.ndim == 3:
        mask = mask[..., :3].max(-1)  # RGB(A) masks: any channel
    if mask.dtype == bool:
        return mask.astype(np.uint8), False
    values = np.unique(mask)
    if len(values) <= 2 and (values.max() in (1, 255) or len(values) == 1):
        return (mask > 0).astype(np.uint8), False
    if values.max() <= 1:
        raise ConversionError(f"{path}: a binary mask was expected, found values {values[:10].tolist()}.")
    return (mask >= MASK_THRESHOLD).astype(np.uint8), True


def convert_2d_ssl(pairs: Pairs, dataset_id: int, name: str, split, label_name: str, overwrite: bool = False,
                   description: Optional[str] = None, reference: Optional[str] = None,
                   license: Optional[str] = None) -> str:
    """Write the raw 2D dataset (RGB PNG + 0/1 PNG masks); returns its folder."""
    from PIL import Image

    check_split(split, pairs, "the source folder")
    thresholded = []

    def write_case(case: str, image_folder: str, label_folder: Optional[str]) -> None:
        image_file, mask_file = pairs[case]
        image = rgb_image(image_file)
        Image.fromarray(image).save(join(image_folder, f"{case}_0000.png"))
        if label_folder is None:
            return
        mask, was_thresholded = binary_mask(mask_file)
        if mask.shape != image.shape[:2]:
            raise ConversionError(f"Image and mask sizes differ for case {case}: {image_file} is "
                                  f"{image.shape[1]} x {image.shape[0]}, {mask_file} is {mask.shape[1]} x "
                                  f"{mask.shape[0]}. Resize one of them (masks with nearest neighbour).")
        if was_thresholded:
            thresholded.append(basename(mask_file))
        Image.fromarray(mask).save(join(label_folder, f"{case}.png"))

    target = write_ssl_dataset(dataset_id, name, split, write_case, channel_names={0: "R", 1: "G", 2: "B"},
                               labels={"background": 0, label_name: 1}, file_ending=".png", overwrite=overwrite,
                               description=description, reference=reference, license=license)
    if thresholded:
        print(f"{len(thresholded)} mask(s) had grey levels and were thresholded at {MASK_THRESHOLD} "
              f"(e.g. {', '.join(thresholded[:3])}).")
    return target


DATASETS = {  # name -> (reader, foreground label name, reference, licence)
    "PH2": (ph2_pairs, "lesion", "PH2 dermoscopy (Mendonca et al. 2013)", "research use with citation"),
    "Kvasir": (kvasir_pairs, "polyp", "Kvasir-SEG polyp segmentation (Jha et al. 2020)", "see the Kvasir-SEG release"),
    "CVC": (cvc_pairs, "polyp", "CVC-ClinicDB polyp segmentation (Bernal et al. 2015)", "see the CVC-ClinicDB release"),
}


def _entry_point(dataset: str) -> None:
    read_pairs, label_name, reference, licence = DATASETS[dataset]
    parser = argparse.ArgumentParser(description=f"{dataset} -> nnU-Net v2 raw 2D dataset with imagesUnlabeled/ "
                                                 f"(labelled / unlabelled / test split).")
    parser.add_argument("-i", required=True, help=f"{dataset} folder (see nnunet_qg.dataset_conversion.convert_2d_ssl)")
    add_split_arguments(parser)
    parser.add_argument("--name", default=dataset, help=f"Dataset name. Default: {dataset}")
    args = parser.parse_args()
    try:
        pairs = read_pairs(args.i)
        split = split_from_arguments(args, sorted(pairs))
        convert_2d_ssl(pairs, args.d, args.name, split, label_name, args.overwrite, reference=reference,
                       license=licence)
    except ConversionError as e:
        raise SystemExit(f"ERROR: {e}")


def ph2_entry_point() -> None:
    _entry_point("PH2")


def kvasir_entry_point() -> None:
    _entry_point("Kvasir")


def cvc_entry_point() -> None:
    _entry_point("CVC")
