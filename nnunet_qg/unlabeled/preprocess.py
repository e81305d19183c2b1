"""`nnUNetv2_preprocess_unlabeled`: preprocess `imagesUnlabeled/` with the dataset's own plans.

Same resampling and normalisation as the labelled cases (nnU-Net's preprocessor class from
the plans), written in nnU-Net's blosc2 format to `<data_identifier>_unlabeled/` beside the
labelled folder. Re-runs skip finished cases; each case is written under a temporary name and
renamed, so an interrupted run leaves no half-written case; changed plans trigger re-processing. Every
image is read inside the input guard of nnunet_qg.dataset_conversion.input_checks: an unreadable file
(truncated, empty, not an image) stops the run with its name and the fix.
"""
import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
from os.path import isdir, isfile, join
from typing import Dict, List, Optional, Tuple

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_json, maybe_mkdir_p
from tqdm import tqdm

from nnunet_qg.atomic import atomic_write_json
from nnunet_qg.dataset_conversion.input_checks import InputError, positive_count, reading, require_nnunet_folders
from nnunet_qg.unlabeled.errors import UnlabeledDataError
from nnunet_qg.unlabeled.paths import (PLANS_FINGERPRINT_FILE, preprocess_command,
                                       preprocessed_unlabeled_folder, raw_unlabeled_folder)
from nnunet_qg.unlabeled.raw_cases import find_unlabeled_cases, labeled_case_ids, refuse_label_leakage

# configuration entries that change what preprocessing writes
_PREPROCESSING_KEYS = ("preprocessor_name", "spacing", "normalization_schemes", "use_mask_for_norm",
                       "resampling_fn_data", "resampling_fn_data_kwargs", "resampling_fn_seg",
                       "resampling_fn_seg_kwargs")
_TMP_PREFIX = ".tmp-"


def plans_fingerprint(plans: dict, configuration: str, dataset_json: dict) -> Dict[str, object]:
    """What of the plans and dataset.json determines the preprocessed unlabelled data."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    configuration_manager = PlansManager(plans).get_configuration(configuration)
    relevant = {
        "plans_name": plans["plans_name"],
        "configuration": configuration,
        "transpose_forward": plans["transpose_forward"],
        "foreground_intensity_properties_per_channel": plans["foreground_intensity_properties_per_channel"],
        "image_reader_writer": plans.get("image_reader_writer"),
        "channel_names": dataset_json["channel_names"],
        "file_ending": dataset_json["file_ending"],
        **{k: configuration_manager.configuration.get(k) for k in _PREPROCESSING_KEYS},
    }
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()
    return {"sha256": digest, "plans": relevant}


def finished_case_ids(folder: str) -> List[str]:
    """Cases whose files are all in place (the .pkl is renamed last, so it marks completion)."""
    if not isdir(folder):
        return []
    return sorted(f[:-4] for f in os.listdir(folder)
                  if f.endswith(".pkl") and not f.startswith(".")
                  and isfile(join(folder, f[:-4] + ".b2nd")) and isfile(join(folder, f[:-4] + "_seg.b2nd")))


def _remove_stale_temporaries(folder: str) -> None:
    for name in os.listdir(folder):
        if name.startswith(_TMP_PREFIX):
            shutil.rmtree(join(folder, name), ignore_errors=True)


def _preprocess_one_case(case_id: str, image_files: List[str], output_folder: str, plans: dict,
                         configuration: str, dataset_json: dict) -> str:
    """Preprocess one case into a temporary folder, then move its files into place (pkl last). What
    nnU-Net's run_case_save does, with the reading inside the input guard."""
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    with reading(image_files, fix=f"Re-download it, or remove unlabelled case '{case_id}' from imagesUnlabeled."):
        data, properties = plans_manager.image_reader_writer_class().read_images(image_files)
    tmp_folder = join(output_folder, f"{_TMP_PREFIX}{case_id}-{os.getpid()}")
    os.makedirs(tmp_folder, exist_ok=True)
    try:
        try:
            # no segmentation: nnU-Net's preprocessor then stores the nonzero (crop) mask as seg
            data, seg, properties = preprocessor.run_case_npy(data, None, properties, plans_manager,
                                                              configuration_manager, dataset_json)
        except Exception as e:  # e.g. an image of another dimensionality than the dataset's
            raise UnlabeledDataError(
                f"Could not preprocess unlabelled case '{case_id}' from {', '.join(image_files)}: "
                f"{type(e).__name__}: {e}. Check that it is an image like those of imagesTr (dimensions, "
                f"channels), or remove the case from imagesUnlabeled.") from None
        data, seg = data.astype(np.float32, copy=False), seg.astype(np.int16, copy=False)
        patch_size = tuple(configuration_manager.patch_size)
        blocks, chunks = comp_blosc2_params(data.shape, patch_size, data.itemsize)
        blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, patch_size, seg.itemsize)
        nnUNetDatasetBlosc2.save_case(data, seg, properties, join(tmp_folder, case_id), chunks=chunks,
                                      blocks=blocks, chunks_seg=chunks_seg, blocks_seg=blocks_seg)
        for suffix in (".b2nd", "_seg.b2nd", ".pkl"):
            os.replace(join(tmp_folder, case_id + suffix), join(output_folder, case_id + suffix))
    finally:
        shutil.rmtree(tmp_folder, ignore_errors=True)
    return case_id


def _preprocess_one_case_star(args: Tuple) -> str:
    return _preprocess_one_case(*args)


def preprocess_unlabeled(dataset_name_or_id, configuration: str, plans_identifier: str = "nnUNetPlans",
                         num_processes: Optional[int] = None, show_progress: bool = True) -> str:
    """Preprocess the unlabelled cases of a dataset for one configuration; returns the output folder."""
    from nnunetv2.configuration import default_num_processes
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    require_nnunet_folders("nnUNet_raw", "nnUNet_preprocessed")
    try:
        dataset_name = maybe_convert_to_dataset_name(dataset_name_or_id)
    except (RuntimeError, ValueError) as e:  # nnU-Net's message lists every folder; ours names the fix
        problem = "not found" if "Could not find" in str(e) else str(e).split(". ")[0]
        raise UnlabeledDataError(
            f"Dataset {dataset_name_or_id}: {problem} in nnUNet_raw ({os.environ['nnUNet_raw']}) and "
            f"nnUNet_preprocessed ({os.environ['nnUNet_preprocessed']}). Check -d, or convert the dataset and "
            f"plan it first (nnUNetv2_plan_and_preprocess).") from None
    plans_file = join(nnUNet_preprocessed, dataset_name, plans_identifier + ".json")
    if not isfile(plans_file):
        raise UnlabeledDataError(
            f"Plans file {plans_file} not found. Plan the labelled dataset first: "
            f"nnUNetv2_plan_and_preprocess -d {int(dataset_name[7:10])}")
    plans = load_json(plans_file)
    if configuration not in plans["configurations"]:
        raise UnlabeledDataError(
            f"Configuration '{configuration}' is not in {plans_file} (it has: "
            f"{', '.join(plans['configurations'])}). Pick one of those with -c.")
    dataset_json = load_json(join(nnUNet_preprocessed, dataset_name, "dataset.json"))
    raw_folder = join(nnUNet_raw, dataset_name)
    cases = find_unlabeled_cases(raw_folder, dataset_json)
    refuse_label_leakage(labeled_case_ids(raw_folder, dataset_json), cases, raw_unlabeled_folder(dataset_name))

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    data_identifier = PlansManager(plans).get_configuration(configuration).data_identifier
    output_folder = preprocessed_unlabeled_folder(dataset_name, data_identifier)
    maybe_mkdir_p(output_folder)
    _remove_stale_temporaries(output_folder)

    fingerprint = plans_fingerprint(plans, configuration, dataset_json)
    fingerprint_file = join(output_folder, PLANS_FINGERPRINT_FILE)
    done = finished_case_ids(output_folder)
    if isfile(fingerprint_file) and load_json(fingerprint_file)["sha256"] != fingerprint["sha256"] and done:
        print(f"The plans changed since the unlabelled cases in {output_folder} were preprocessed: "
              f"re-processing all {len(cases)} cases.")
        shutil.rmtree(output_folder)
        maybe_mkdir_p(output_folder)
        done = []
    atomic_write_json(fingerprint, fingerprint_file)

    todo = [c for c in sorted(cases) if c not in set(done)]
    if len(todo) < len(cases):
        print(f"{len(cases) - len(todo)} of {len(cases)} unlabelled cases already preprocessed, skipping them.")
    num_processes = default_num_processes if num_processes is None else num_processes
    tasks = [(c, cases[c], output_folder, plans, configuration, dataset_json) for c in todo]
    progress = tqdm(total=len(tasks), desc=f"Preprocessing unlabelled cases ({configuration})",
                    disable=not show_progress)
    with progress:
        if num_processes <= 1 or len(tasks) <= 1:
            for t in tasks:
                _preprocess_one_case_star(t)
                progress.update()
        else:
            with multiprocessing.get_context("spawn").Pool(min(num_processes, len(tasks))) as pool:
                for _ in pool.imap_unordered(_preprocess_one_case_star, tasks):
                    progress.update()
    print(f"Unlabelled cases preprocessed: {len(finished_case_ids(output_folder))} in {output_folder}")
    return output_folder


def check_preprocessed_unlabeled(dataset_name: str, configuration: str, plans: dict, dataset_json: dict,
                                 data_identifier: str, labeled_ids: List[str]) -> List[str]:
    """For trainers: the preprocessed unlabelled case ids, or an error that names the command to run."""
    folder = preprocessed_unlabeled_folder(dataset_name, data_identifier)
    command = preprocess_command(dataset_name, configuration, plans["plans_name"])
    cases = finished_case_ids(folder)
    if not cases:
        raise UnlabeledDataError(
            f"No preprocessed unlabelled cases in {folder}. Put unlabelled images in "
            f"{raw_unlabeled_folder(dataset_name)} and run: {command}")
    fingerprint_file = join(folder, PLANS_FINGERPRINT_FILE)
    if not isfile(fingerprint_file) or \
            load_json(fingerprint_file)["sha256"] != plans_fingerprint(plans, configuration, dataset_json)["sha256"]:
        raise UnlabeledDataError(
            f"The unlabelled cases in {folder} were preprocessed with other plans than {plans['plans_name']} "
            f"now has for '{configuration}'. Re-run: {command}")
    refuse_label_leakage(labeled_ids, cases, folder)
    return cases


def entry_point() -> None:
    from nnunetv2.configuration import default_num_processes

    parser = argparse.ArgumentParser(
        description="Preprocess the unlabelled images (nnUNet_raw/DatasetXXX/imagesUnlabeled) of a dataset "
                    "with its nnU-Net plans, for the semi-supervised trainers of nnunet-qg.")
    parser.add_argument("-d", nargs="+", required=True, help="Dataset name(s) or id(s)")
    parser.add_argument("-c", nargs="+", default=["3d_fullres"],
                        help="Configuration(s) to preprocess for. Default: 3d_fullres")
    parser.add_argument("-plans_name", default="nnUNetPlans", help="Plans identifier. Default: nnUNetPlans")
    parser.add_argument("-np", type=positive_count, default=default_num_processes,
                        help=f"Number of processes, >= 1. Default: {default_num_processes} (nnUNet_def_n_proc)")
    args = parser.parse_args()
    try:
        for d in args.d:
            for c in args.c:
                preprocess_unlabeled(d, c, args.plans_name, args.np)
    except (UnlabeledDataError, InputError) as e:
        raise SystemExit(f"ERROR: {e}")
