"""Find and check the unlabelled cases of a raw nnU-Net dataset (`imagesUnlabeled/`)."""
import os
import re
from os.path import isdir, join
from typing import Dict, Iterable, List

from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

from nnunet_qg.unlabeled.errors import UnlabeledDataError
from nnunet_qg.unlabeled.paths import UNLABELED_RAW_SUBFOLDER

NATURAL_IMAGE_ENDINGS = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")


def find_unlabeled_cases(raw_dataset_folder: str, dataset_json: dict) -> Dict[str, List[str]]:
    """Map case id -> channel files (sorted by channel) for `imagesUnlabeled/`.

    Files follow `imagesTr`: `<case>_<XXXX><file_ending>`, one file per channel of
    `channel_names`. Anything else raises UnlabeledDataError naming the file and the fix.
    """
    folder = join(raw_dataset_folder, UNLABELED_RAW_SUBFOLDER)
    if not isdir(folder):
        raise UnlabeledDataError(
            f"No unlabelled images: the folder {folder} does not exist. Put the unlabelled images there, "
            f"named like imagesTr (<case>_0000{dataset_json['file_ending']}), or convert a dataset with "
            f"nnUNetv2_convert_MSD_ssl.")
    ending = dataset_json["file_ending"]
    num_channels = len(dataset_json["channel_names"])
    pattern = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})" + re.escape(ending) + "$")
    channels: Dict[str, Dict[int, str]] = {}
    for name in sorted(os.listdir(folder)):
        if name.startswith("."):
            continue
        match = pattern.match(name)
        if match is None:
            raise UnlabeledDataError(
                f"Unexpected file {join(folder, name)}: unlabelled images must be named "
                f"<case>_<XXXX>{ending} (XXXX = 4-digit channel index, file ending from dataset.json). "
                f"Rename or remove it.")
        channels.setdefault(match["case"], {})[int(match["channel"])] = join(folder, name)
    if not channels:
        raise UnlabeledDataError(
            f"Zero unlabelled cases: {folder} holds no <case>_0000{ending} files. Add unlabelled images "
            f"there (same naming and file ending as imagesTr).")
    expected = set(range(num_channels))
    # nnU-Net's natural-image reader takes an RGB(A) image as its channels from a single _0000 file
    one_file_holds_channels = ending.lower() in NATURAL_IMAGE_ENDINGS and num_channels in (3, 4)
    for case, files in channels.items():
        if set(files) != expected and not (one_file_holds_channels and set(files) == {0}):
            found = ", ".join(f"_{c:04d}" for c in sorted(files))
            want = ", ".join(f"_{c:04d}" for c in sorted(expected))
            missing = [join(folder, f"{case}_{c:04d}{ending}") for c in sorted(expected - set(files))]
            extra = [files[c] for c in sorted(set(files) - expected)]
            fix = "; ".join(part for part in (
                f"provide {', '.join(missing)}" if missing else "",
                f"remove or rename {', '.join(extra)}" if extra else "") if part)
            raise UnlabeledDataError(
                f"Wrong channels for unlabelled case '{case}' in {folder}: found {found}, but dataset.json "
                f"declares {num_channels} channel(s) ({want}). To fix it, {fix}.")
    return {case: [files[c] for c in sorted(files)] for case, files in channels.items()}


def labeled_case_ids(raw_dataset_folder: str, dataset_json: dict) -> List[str]:
    """Ids of the labelled training cases, as nnU-Net itself lists them."""
    return list(get_filenames_of_train_images_and_targets(raw_dataset_folder, dataset_json).keys())


def refuse_label_leakage(labeled_ids: Iterable[str], unlabeled_ids: Iterable[str], where: str) -> None:
    """Refuse case ids that are both labelled and unlabelled: that would leak labels."""
    overlap = sorted(set(labeled_ids) & set(unlabeled_ids))
    if overlap:
        shown = ", ".join(overlap[:5]) + (" ..." if len(overlap) > 5 else "")
        raise UnlabeledDataError(
            f"Label leakage: {len(overlap)} case id(s) are both labelled (imagesTr) and unlabelled ({where}): "
            f"{shown}. A case must be in exactly one of the two sets; remove these from {where}.")
