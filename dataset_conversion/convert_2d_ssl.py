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
- CVC-ClinicDB: `Original/<N>.tif` (RGB) + `Ground Truth/<N>.tif`, read with tifffile. Its 612 frames
  come from 29 video sequences: `--sequence-table FILE` (CSV: frame id, sequence id) splits whole
  sequences, so no test sequence has frames in training.

Every file is read inside the input guard (input_checks.reading): an unreadable image or mask stops the
conversion with its name and the fix; --skip-unreadable leaves out unreadable unlabelled cases.
"""
import argparse
import csv
import os
from os.path import basename, isdir, join, splitext
from typing import Callable, Dict, Iterable, Optional, Tuple

import numpy as np

from nnunet_qg.dataset_conversion.input_checks import InputError, optional_module, reading
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


def cvc_case(frame: str) -> str:
    """Case id of a CVC-ClinicDB frame: '12', '12.tif' and 'cvc_012' all give cvc_012."""
    stem = splitext(frame.strip())[0]
    if stem.startswith("cvc_"):
        stem = stem[len("cvc_"):]
    return f"cvc_{int(stem):03d}" if stem.isdigit() else f"cvc_{stem}"


def cvc_pairs(folder: str) -> Pairs:
    return _pairs_from_folders(join(folder, "Original"), join(folder, "Ground Truth"), (".tif", ".tiff"),
                               cvc_case, lambda f: f, "CVC-ClinicDB's Original/N.tif + Ground Truth/N.tif")


def read_sequence_table(path: str, cases: Iterable[str]) -> Dict[str, str]:
    """case -> video sequence from a CSV of (frame id, sequence id) rows: frame ids as in Original/
    ('12', '12.tif') or as case ids ('cvc_012'); a first row that is not a frame (a header) is skipped.
    Every frame of the source needs its sequence; rows for other frames are ignored."""
    with reading(path, fix="Give a CSV file with one 'frame id, sequence id' row per frame."), open(path) as f:
        rows = [(i + 1, [c.strip() for c in row]) for i, row in enumerate(csv.reader(f)) if any(c.strip() for c in row)]
    if rows and not splitext(rows[0][1][0])[0].replace("cvc_", "").isdigit():
        rows = rows[1:]  # header
    sequences: Dict[str, str] = {}
    for line, row in rows:
        if len(row) < 2 or not row[0] or not row[1]:
            raise ConversionError(f"{path}, line {line}: expected 'frame id, sequence id', got {','.join(row)!r}.")
        case = cvc_case(row[0])
        if sequences.get(case, row[1]) != row[1]:
            raise ConversionError(f"{path}, line {line}: frame {row[0]} is given two sequences "
                                  f"({sequences[case]} and {row[1]}).")
        sequences[case] = row[1]
    cases = sorted(cases)
    missing = [c for c in cases if c not in sequences]
    if missing:
        raise ConversionError(f"{path} gives no sequence for {len(missing)} frame(s) of the source, e.g. "
                              f"{', '.join(missing[:5])}. Every frame needs a row 'frame id, sequence id'.")
    extra = len(set(sequences) - set(cases))
    if extra:
        print(f"{path}: {extra} row(s) name frames that are not in the source; ignored.")
    return {c: sequences[c] for c in cases}


def read_array(path: str) -> np.ndarray:
    """An image file as an array, read inside the input guard."""
    if path.lower().endswith((".tif", ".tiff")):
        tifffile = optional_module("tifffile", "Reading TIFF images (CVC-ClinicDB)")
        with reading(path):
            return np.asarray(tifffile.imread(path))
    image_module = optional_module("PIL.Image", "Reading 2D images")
    with reading(path), image_module.open(path) as img:
        return np.asarray(img)  # decodes the whole file (Pillow opens lazily)


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
                   license: Optional[str] = None, skip_unreadable: bool = False) -> str:
    """Write the raw 2D dataset (RGB PNG + 0/1 PNG masks); returns its folder."""
    Image = optional_module("PIL.Image", "Writing PNG images")

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
                               skip_unreadable=skip_unreadable, description=description, reference=reference,
                               license=license)
    if thresholded:
        print(f"{len(thresholded)} mask(s) had grey levels and were thresholded at {MASK_THRESHOLD} "
              f"(e.g. {', '.join(thresholded[:3])}).")
    return target


DATASETS = {  # name -> (reader, foreground label name, reference, licence, reader package)
    "PH2": (ph2_pairs, "lesion", "PH2 dermoscopy (Mendonca et al. 2013)", "research use with citation", "PIL.Image"),
    "Kvasir": (kvasir_pairs, "polyp", "Kvasir-SEG polyp segmentation (Jha et al. 2020)", "see the Kvasir-SEG release",
               "PIL.Image"),
    "CVC": (cvc_pairs, "polyp", "CVC-ClinicDB polyp segmentation (Bernal et al. 2015)", "see the CVC-ClinicDB release",
            "tifffile"),
}


def _entry_point(dataset: str) -> None:
    read_pairs, label_name, reference, licence, package = DATASETS[dataset]
    parser = argparse.ArgumentParser(description=f"{dataset} -> nnU-Net v2 raw 2D dataset with imagesUnlabeled/ "
                                                 f"(labelled / unlabelled / test split).")
    parser.add_argument("-i", required=True, help=f"{dataset} folder (see nnunet_qg.dataset_conversion.convert_2d_ssl)")
    add_split_arguments(parser)
    parser.add_argument("--name", default=dataset, help=f"Dataset name. Default: {dataset}")
    if dataset == "CVC":
        parser.add_argument("--sequence-table", default=None,
                            help="CSV of 'frame id, sequence id' rows (frame id as in Original/, e.g. 12 or 12.tif): "
                                 "whole sequences go to test, labelled or unlabelled, and --num-labelled and "
                                 "--num-test count sequences; with --split-file, no sequence may have frames in both "
                                 "test and training")
    args = parser.parse_args()
    try:
        optional_module(package, f"nnUNetv2_convert_{dataset}_ssl")
        pairs = read_pairs(args.i)
        table = getattr(args, "sequence_table", None)
        sequences = read_sequence_table(table, pairs) if table else None
        split = split_from_arguments(args, sorted(pairs), groups=sequences, group_name="sequence")
        convert_2d_ssl(pairs, args.d, args.name, split, label_name, args.overwrite, reference=reference,
                       license=licence, skip_unreadable=args.skip_unreadable)
    except InputError as e:
        raise SystemExit(f"ERROR: {e}")


def ph2_entry_point() -> None:
    _entry_point("PH2")


def kvasir_entry_point() -> None:
    _entry_point("Kvasir")


def cvc_entry_point() -> None:
    _entry_point("CVC")
