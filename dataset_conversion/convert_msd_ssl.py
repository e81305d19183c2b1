"""`nnUNetv2_convert_MSD_ssl`: Medical Segmentation Decathlon folder -> nnU-Net v2 raw dataset with a
labelled / unlabelled / test split.

Labelled cases go to imagesTr/labelsTr, the other training cases to imagesUnlabeled WITHOUT their
labels, test cases to imagesTs plus labelsTs (kept for evaluation only). The split comes from a
split file (format of `ssl_splits.json`: `test`, `pool`, `labelled_sets`) or from
`--num-labelled N --seed S`. The dataset is assembled in a temporary folder and renamed at the end.
"""
import argparse
import os
import shutil
from os.path import isdir, isfile, join
from typing import Dict, List, Optional

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_json, maybe_mkdir_p
from tqdm import tqdm

from nnunet_qg.atomic import atomic_write_json

SPLIT_RECORD_FILE = "ssl_split.json"


class ConversionError(RuntimeError):
    """The source folder or split does not look as expected; the message says what was expected."""


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


def split_from_file(split_file: str, labelled_set: Optional[str], num_labelled: Optional[int]) -> Dict[str, List[str]]:
    """labelled / unlabelled / test ids from an `ssl_splits.json`-style file."""
    split = load_json(split_file)
    for key in ("test", "pool"):
        if key not in split:
            raise ConversionError(f"Split file {split_file} has no '{key}' list. Expected keys 'test', 'pool' "
                                  f"and optionally 'labelled_sets' (see ssl_splits.json).")
    pool = list(split["pool"])
    if labelled_set is not None:
        sets = split.get("labelled_sets", {})
        if labelled_set not in sets:
            raise ConversionError(f"Labelled set '{labelled_set}' not in {split_file} (it has: "
                                  f"{', '.join(sets) or 'none'}).")
        labelled = list(sets[labelled_set])
    elif num_labelled is not None:
        labelled = pool[:num_labelled]  # the file's convention: the first k cases of the pool
    else:
        raise ConversionError("With a split file, give --labelled-set NAME or --num-labelled N.")
    outside = sorted(set(labelled) - set(pool))
    if outside:
        raise ConversionError(f"Labelled cases not in the pool of {split_file}: {', '.join(outside[:5])}.")
    chosen = set(labelled)
    return {"labelled": labelled, "unlabelled": [c for c in pool if c not in chosen], "test": list(split["test"])}


def random_split(case_ids: List[str], num_labelled: int, num_test: int, seed: int) -> Dict[str, List[str]]:
    """A seeded random split: `num_test` test cases, `num_labelled` labelled, the rest unlabelled."""
    if num_labelled + num_test > len(case_ids):
        raise ConversionError(f"Cannot take {num_labelled} labelled and {num_test} test cases from "
                              f"{len(case_ids)} cases.")
    order = [case_ids[i] for i in np.random.RandomState(seed).permutation(len(case_ids))]
    return {"test": sorted(order[:num_test]), "labelled": sorted(order[num_test:num_test + num_labelled]),
            "unlabelled": sorted(order[num_test + num_labelled:])}


def _copy_image(source_image: str, target_folder: str) -> None:
    """3D: copied as <case>_0000.nii.gz (header read with nibabel); 4D: one file per channel (nnU-Net's)."""
    import nibabel

    if len(nibabel.load(source_image).shape) == 3:
        case = os.path.basename(source_image)[:-len(".nii.gz")]
        shutil.copy(source_image, join(target_folder, f"{case}_0000.nii.gz"))
        return
    from nnunetv2.dataset_conversion.convert_MSD_dataset import split_4d_nifti

    split_4d_nifti(source_image, target_folder)


def convert_msd_ssl(source_folder: str, dataset_id: int, split: Dict[str, List[str]],
                    dataset_name: Optional[str] = None, max_unlabelled: Optional[int] = None,
                    max_test: Optional[int] = None, image_reader_writer: Optional[str] = None,
                    overwrite: bool = False) -> str:
    """Write the raw dataset; returns its folder under nnUNet_raw."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import find_candidate_datasets

    source_folder = os.path.abspath(source_folder)
    ids = set(msd_case_ids(source_folder))
    msd_json = load_json(join(source_folder, "dataset.json"))
    if "modality" not in msd_json or "labels" not in msd_json:
        raise ConversionError(f"{join(source_folder, 'dataset.json')} is not an MSD dataset.json: it needs "
                              f"'modality' and 'labels'.")
    split = {"labelled": list(split["labelled"]),
             "unlabelled": list(split["unlabelled"])[:max_unlabelled],
             "test": list(split["test"])[:max_test]}
    unknown = sorted(set(sum(split.values(), [])) - ids)
    if unknown:
        raise ConversionError(f"Split names cases that are not in {join(source_folder, 'imagesTr')}: "
                              f"{', '.join(unknown[:5])}.")
    for a, b in (("labelled", "unlabelled"), ("labelled", "test"), ("unlabelled", "test")):
        both = set(split[a]) & set(split[b])
        if both:
            raise ConversionError(f"Cases both {a} and {b}: {', '.join(sorted(both)[:5])}. The sets must be disjoint.")
    if not split["labelled"]:
        raise ConversionError("The split has no labelled case.")

    name = dataset_name or "".join(ch for ch in msd_json.get("name", "MSD") if ch.isalnum())
    target_name = f"Dataset{dataset_id:03d}_{name}"
    existing = list(find_candidate_datasets(dataset_id))
    target = join(nnUNet_raw, target_name)
    if existing and not overwrite:
        raise ConversionError(f"Dataset id {dataset_id} is taken ({', '.join(existing)}). Choose another id "
                              f"or pass --overwrite to replace {target}.")
    tmp = join(nnUNet_raw, f".tmp-{target_name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    folders = {k: join(tmp, k) for k in ("imagesTr", "labelsTr", "imagesUnlabeled", "imagesTs", "labelsTs")}
    for f in folders.values():
        maybe_mkdir_p(f)
    try:
        jobs = [(c, "imagesTr", "labelsTr") for c in split["labelled"]] + \
               [(c, "imagesUnlabeled", None) for c in split["unlabelled"]] + \
               [(c, "imagesTs", "labelsTs") for c in split["test"]]
        for case, image_folder, label_folder in tqdm(jobs, desc=f"Converting to {target_name}"):
            _copy_image(join(source_folder, "imagesTr", case + ".nii.gz"), folders[image_folder])
            if label_folder is not None:
                shutil.copy(join(source_folder, "labelsTr", case + ".nii.gz"), join(folders[label_folder], case + ".nii.gz"))
        extra = {"numUnlabeled": len(split["unlabelled"]), "numTest": len(split["test"])}
        if image_reader_writer:
            extra["overwrite_image_reader_writer"] = image_reader_writer
        generate_dataset_json(tmp, channel_names={int(k): v for k, v in msd_json["modality"].items()},
                              labels={v: int(k) for k, v in msd_json["labels"].items()},
                              num_training_cases=len(split["labelled"]), file_ending=".nii.gz",
                              dataset_name=target_name, reference=msd_json.get("reference"),
                              license=msd_json.get("licence", msd_json.get("license", "see source")),
                              description=msd_json.get("description"), converted_by="nnunet-qg", **extra)
        atomic_write_json(split, join(tmp, SPLIT_RECORD_FILE))
        if isdir(target):
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"Wrote {target}: {len(split['labelled'])} labelled, {len(split['unlabelled'])} unlabelled, "
          f"{len(split['test'])} test cases.")
    return target


def entry_point() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-i", required=True, help="MSD task folder (imagesTr, labelsTr, dataset.json)")
    parser.add_argument("-d", type=int, required=True, help="Target dataset id (DatasetXXX)")
    parser.add_argument("--name", default=None, help="Dataset name (default: 'name' from the MSD dataset.json)")
    parser.add_argument("--split-file", default=None, help="ssl_splits.json-style file (test, pool, labelled_sets)")
    parser.add_argument("--labelled-set", default=None, help="Key of labelled_sets in the split file, e.g. 10pct")
    parser.add_argument("--num-labelled", type=int, default=None,
                        help="Number of labelled cases (first N of the pool with a split file, else random)")
    parser.add_argument("--num-test", type=int, default=None,
                        help="Test cases for a random split (default: 20%% of the cases)")
    parser.add_argument("--seed", type=int, default=0, help="Seed of a random split. Default: 0")
    parser.add_argument("--max-unlabelled", type=int, default=None, help="Keep only the first K unlabelled cases")
    parser.add_argument("--max-test", type=int, default=None, help="Keep only the first K test cases")
    parser.add_argument("--reader", default=None, help="overwrite_image_reader_writer for dataset.json, e.g. NibabelIO")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing dataset with this id")
    args = parser.parse_args()
    try:
        if args.split_file:
            split = split_from_file(args.split_file, args.labelled_set, args.num_labelled)
        else:
            if args.num_labelled is None:
                raise ConversionError("Give --split-file (with --labelled-set or --num-labelled) or --num-labelled N.")
            ids = msd_case_ids(args.i)
            num_test = round(0.2 * len(ids)) if args.num_test is None else args.num_test
            split = random_split(ids, args.num_labelled, num_test, args.seed)
        convert_msd_ssl(args.i, args.d, split, args.name, args.max_unlabelled, args.max_test, args.reader,
                        args.overwrite)
    except ConversionError as e:
        raise SystemExit(f"ERROR: {e}")
