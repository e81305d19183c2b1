"""Where unlabelled images live, raw and preprocessed, following nnU-Net's folder conventions."""
from os.path import join

from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw

UNLABELED_RAW_SUBFOLDER = "imagesUnlabeled"
UNLABELED_PREPROCESSED_SUFFIX = "_unlabeled"
PLANS_FINGERPRINT_FILE = "unlabeled_plans_fingerprint.json"


def raw_unlabeled_folder(dataset_name: str) -> str:
    """`nnUNet_raw/DatasetXXX_Name/imagesUnlabeled`."""
    return join(nnUNet_raw, dataset_name, UNLABELED_RAW_SUBFOLDER)


def preprocessed_unlabeled_folder(dataset_name: str, data_identifier: str) -> str:
    """Beside nnU-Net's own `<data_identifier>` folder, so never part of its splits."""
    return join(nnUNet_preprocessed, dataset_name, data_identifier + UNLABELED_PREPROCESSED_SUFFIX)


def preprocess_command(dataset_name: str, configuration: str, plans_identifier: str) -> str:
    """The command a user runs to (re)create the preprocessed unlabelled folder."""
    dataset_id = int(dataset_name[7:10])
    cmd = f"nnUNetv2_preprocess_unlabeled -d {dataset_id} -c {configuration}"
    if plans_identifier != "nnUNetPlans":
        cmd += f" -plans_name {plans_identifier}"
    return cmd
