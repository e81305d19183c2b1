"""Benchmarks only: the unlabelled cases preprocessed WITH their withheld labels.

A benchmark split keeps the labels of its unlabelled cases. The control arms of the evidence
protocol need them for two things that never reach a loss: the oracle weight of a pseudo-label
(its true Dice) and judging g's scores. They are preprocessed with the dataset's own plans (nnU-Net's
preprocessor, the same images as the ordinary unlabelled folder) into a folder of their own,
`<data_identifier>_unlabeled_withheld`, that only benchmark trainers (trainers/nnUNetTrainerPLControls.py,
WithheldLabels) read. The shipped trainers read `<data_identifier>_unlabeled`, whose segmentation is
nnU-Net's crop mask and nothing else.
"""
import multiprocessing
import os
import shutil
from os.path import isfile, join
from typing import List, Tuple

from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_qg.unlabeled.errors import UnlabeledDataError
from nnunet_qg.unlabeled.paths import UNLABELED_PREPROCESSED_SUFFIX
from nnunet_qg.unlabeled.raw_cases import find_unlabeled_cases

WITHHELD_SUFFIX = UNLABELED_PREPROCESSED_SUFFIX + "_withheld"


def withheld_folder(dataset_name: str, data_identifier: str) -> str:
    """`nnUNet_preprocessed/DatasetXXX/<data_identifier>_unlabeled_withheld`."""
    return join(nnUNet_preprocessed, dataset_name, data_identifier + WITHHELD_SUFFIX)


def require_withheld_cases(trainer_name: str, folder: str, identifiers: List[str]) -> None:
    """For benchmark trainers: every unlabelled case in the withheld folder (its .pkl is written last), or an
    error that names the command to run."""
    missing = [i for i in identifiers if not isfile(join(folder, i + ".pkl"))]
    if missing:
        raise UnlabeledDataError(f"{trainer_name} needs the unlabelled cases with their withheld labels in {folder}; "
                                 f"{len(missing)} are missing (e.g. {missing[0]}). Run: python -m "
                                 f"nnunet_qg.benchmark.withheld -d DATASET -c CONFIGURATION -l LABELS_FOLDER")


def _preprocess_case(args: Tuple[str, List[str], str, str, dict, str, dict]) -> str:
    case_id, image_files, label_file, output_folder, plans, configuration, dataset_json = args
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    tmp = join(output_folder, f".tmp-{case_id}-{os.getpid()}")
    os.makedirs(tmp, exist_ok=True)
    try:
        preprocessor.run_case_save(join(tmp, case_id), image_files, label_file, plans_manager, configuration_manager,
                                   dataset_json)
        for suffix in (".b2nd", "_seg.b2nd", ".pkl"):  # the .pkl last: a case is complete once it exists
            os.replace(join(tmp, case_id + suffix), join(output_folder, case_id + suffix))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return case_id


def preprocess_withheld(dataset_id: int, configuration: str, labels_folder: str, num_processes: int = 2,
                        plans_identifier: str = "nnUNetPlans") -> str:
    """Preprocess every unlabelled case of a dataset with its label `<labels_folder>/<case><file_ending>`
    (e.g. the MSD source's labelsTr); returns the output folder. Finished cases are skipped."""
    dataset_name = maybe_convert_to_dataset_name(dataset_id)
    plans = load_json(join(nnUNet_preprocessed, dataset_name, plans_identifier + ".json"))
    dataset_json = load_json(join(nnUNet_preprocessed, dataset_name, "dataset.json"))
    data_identifier = PlansManager(plans).get_configuration(configuration).data_identifier
    output_folder = withheld_folder(dataset_name, data_identifier)
    os.makedirs(output_folder, exist_ok=True)
    cases = find_unlabeled_cases(join(nnUNet_raw, dataset_name), dataset_json)
    tasks = []
    for case_id, image_files in sorted(cases.items()):
        label_file = join(labels_folder, case_id + dataset_json["file_ending"])
        if not isfile(label_file):
            raise FileNotFoundError(f"Withheld label of unlabelled case '{case_id}' not found: {label_file}. The "
                                    f"oracle arms need the benchmark source's labels of every unlabelled case.")
        if not isfile(join(output_folder, case_id + ".pkl")):
            tasks.append((case_id, image_files, label_file, output_folder, plans, configuration, dataset_json))
    if tasks:
        with multiprocessing.get_context("spawn").Pool(max(1, min(num_processes, len(tasks)))) as pool:
            pool.map(_preprocess_case, tasks)
    return output_folder


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Benchmarks only: preprocess a dataset's unlabelled cases with "
                                                 "their withheld labels (for oracle weights and judging g)")
    parser.add_argument("-d", type=int, required=True, help="dataset id")
    parser.add_argument("-c", required=True, help="configuration, e.g. 2d")
    parser.add_argument("-l", required=True, help="folder with the withheld labels, <case><file_ending>")
    parser.add_argument("-np", type=int, default=2, help="processes")
    args = parser.parse_args()
    print(f"Withheld labels preprocessed into {preprocess_withheld(args.d, args.c, args.l, args.np)}")


if __name__ == "__main__":
    main()
