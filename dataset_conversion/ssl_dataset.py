"""What every semi-supervised converter shares: the labelled / unlabelled / test split and the
atomic writing of an nnU-Net v2 raw dataset with imagesUnlabeled/.

Labelled cases go to imagesTr/labelsTr, the other training cases to imagesUnlabeled WITHOUT their
labels, test cases to imagesTs plus labelsTs (kept for evaluation only). The dataset is assembled
in a temporary folder next to its target and renamed at the end; `ssl_split.json` in it records
the split (and is itself a split file for --split-file). An input file that cannot be read stops the
conversion with its name and the fix; with --skip-unreadable an unreadable UNLABELLED case is left out
(warned and counted), never a labelled or test case.
"""
import argparse
import os
import re
import shutil
import sys
from os.path import isdir, join
from typing import Callable, Dict, List, Optional

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_json, maybe_mkdir_p
from tqdm import tqdm

from nnunet_qg.atomic import atomic_write_json
from nnunet_qg.dataset_conversion.input_checks import (InputError, UnreadableFileError, count, dataset_id,
                                                       positive_count, reading, require_nnunet_folders, seed)

SPLIT_RECORD_FILE = "ssl_split.json"
Split = Dict[str, List[str]]


class ConversionError(InputError):
    """The source folder or split does not look as expected; the message says what was expected."""


def split_from_file(split_file: str, labelled_set: Optional[str] = None, num_labelled: Optional[int] = None) -> Split:
    """labelled / unlabelled / test ids from a split file: the `ssl_splits.json` format (test, pool,
    labelled_sets; the labelled set for k labels is the first k of the pool) or a converter's own
    `ssl_split.json` record (labelled, unlabelled, test)."""
    with reading(split_file, fix="Give a split file in the ssl_splits.json or ssl_split.json format."):
        split = load_json(split_file)
    if all(k in split for k in ("labelled", "unlabelled", "test")) and labelled_set is None and num_labelled is None:
        return {k: list(split[k]) for k in ("labelled", "unlabelled", "test")}
    for key in ("test", "pool"):
        if key not in split:
            raise ConversionError(f"Split file {split_file} has no '{key}' list. Expected 'test', 'pool' and "
                                  f"optionally 'labelled_sets' (see ssl_splits.json), or a converter's record "
                                  f"with 'labelled', 'unlabelled' and 'test'.")
    pool = list(split["pool"])
    if labelled_set is not None:
        sets = split.get("labelled_sets", {})
        if labelled_set not in sets:
            raise ConversionError(f"Labelled set '{labelled_set}' not in {split_file} (it has: "
                                  f"{', '.join(sets) or 'none'}).")
        labelled = list(sets[labelled_set])
    elif num_labelled is not None:
        if num_labelled > len(pool):
            raise ConversionError(f"{num_labelled} labelled cases requested, but the pool of {split_file} has "
                                  f"only {len(pool)}.")
        labelled = pool[:num_labelled]
    else:
        raise ConversionError("With a split file, give --labelled-set NAME or --num-labelled N.")
    outside = sorted(set(labelled) - set(pool))
    if outside:
        raise ConversionError(f"Labelled cases not in the pool of {split_file}: {', '.join(outside[:5])}.")
    chosen = set(labelled)
    return {"labelled": labelled, "unlabelled": [c for c in pool if c not in chosen], "test": list(split["test"])}


def seeded_order(case_ids: List[str], seed: int) -> List[str]:
    """The cases in a fixed random order (numpy's RandomState(seed) permutation)."""
    return [case_ids[i] for i in np.random.RandomState(seed).permutation(len(case_ids))]


def random_split(case_ids: List[str], num_labelled: int, num_test: int, seed: int, what: str = "cases") -> Split:
    """A seeded random split: `num_test` test cases, `num_labelled` labelled, the rest unlabelled."""
    if num_labelled < 1 or num_test < 0:
        raise ConversionError(f"{num_labelled} labelled and {num_test} test {what}: give at least 1 labelled "
                              f"and 0 or more test {what}.")
    if num_labelled + num_test > len(case_ids):
        raise ConversionError(f"Cannot take {num_labelled} labelled and {num_test} test {what} from "
                              f"{len(case_ids)} {what}.")
    order = seeded_order(case_ids, seed)
    return {"test": sorted(order[:num_test]), "labelled": sorted(order[num_test:num_test + num_labelled]),
            "unlabelled": sorted(order[num_test + num_labelled:])}


def grouped_split(groups: Dict[str, str], num_labelled: int, num_test: int, seed: int,
                  group_name: str = "group") -> Split:
    """A seeded random split of whole groups (patients, video sequences): `groups` maps case -> group, the
    counts are groups, and every case goes where its group goes."""
    split = random_split(sorted(set(groups.values())), num_labelled, num_test, seed, f"{group_name}s")
    return {k: sorted(c for c in groups if groups[c] in set(chosen)) for k, chosen in split.items()}


def check_groups_kept_whole(split: Split, groups: Dict[str, str], group_name: str) -> None:
    """Refuse a split that puts cases of one group (e.g. a video sequence) both in test and in training."""
    test_groups = {groups[c] for c in split["test"] if c in groups}
    training = [c for c in split["labelled"] + split["unlabelled"] if groups.get(c) in test_groups]
    if training:
        g = groups[training[0]]
        raise ConversionError(f"The split puts cases of {group_name} '{g}' in test ("
                              f"{', '.join(c for c in split['test'] if groups.get(c) == g)[:200]}) and in training "
                              f"({', '.join(c for c in training if groups[c] == g)[:200]}): the test Dice would be "
                              f"inflated. Keep every {group_name} whole on one side of the split.")


def write_split_file(case_ids: List[str], num_test: int, labelled_sets: Dict[str, int], seed: int, path: str) -> dict:
    """A fixed split in the `ssl_splits.json` format: `num_test` test cases and the rest as the pool,
    both in a seeded random order; labelled set NAME = the first k cases of the pool."""
    order = seeded_order(sorted(case_ids), seed)
    pool = order[num_test:]
    too_big = {k: n for k, n in labelled_sets.items() if n > len(pool)}
    if too_big:
        raise ConversionError(f"Labelled sets {too_big} are larger than the pool ({len(pool)} cases).")
    split = {"description": f"seed {seed}: {num_test} test cases, the pool in a fixed random order; the labelled "
                            f"set for k labels is the first k cases of the pool",
             "seed": seed, "test": sorted(order[:num_test]), "pool": pool,
             "labelled_sets": {k: pool[:n] for k, n in labelled_sets.items()}}
    atomic_write_json(split, path)
    return split


def check_split(split: Split, known_ids, where: str) -> None:
    """Every id known, the three sets disjoint, at least one labelled case."""
    unknown = sorted(set(sum(split.values(), [])) - set(known_ids))
    if unknown:
        raise ConversionError(f"Split names cases that are not in {where}: {', '.join(unknown[:5])}.")
    for a, b in (("labelled", "unlabelled"), ("labelled", "test"), ("unlabelled", "test")):
        both = set(split[a]) & set(split[b])
        if both:
            raise ConversionError(f"Cases both {a} and {b}: {', '.join(sorted(both)[:5])}. The sets must be disjoint.")
    if not split["labelled"]:
        raise ConversionError("The split has no labelled case.")


def read_id_list(path: str, expected: str) -> List[str]:
    """Non-empty stripped lines of a list file (e.g. train.list), each id once."""
    if not os.path.isfile(path):
        raise ConversionError(f"{path} is missing. {expected}")
    if os.path.getsize(path) == 0:
        return []
    with reading(path, fix=f"Give a text file with one case id per line. {expected}"), open(path) as f:
        ids = [line.strip() for line in f if line.strip()]
    check_unique(ids, path)
    return ids


def check_unique(case_ids: List[str], where: str) -> None:
    seen, duplicates = set(), set()
    for c in case_ids:
        (duplicates if c in seen else seen).add(c)
    if duplicates:
        raise ConversionError(f"Duplicate case ids in {where}: {', '.join(sorted(duplicates)[:5])}. Each case may "
                              f"appear once.")


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """-d, --overwrite and --skip-unreadable: what every converter takes."""
    parser.add_argument("-d", type=dataset_id, required=True, help="Target dataset id (DatasetXXX), 1 to 999")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing dataset with this id")
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="Leave out unlabelled cases whose files cannot be read (warned, counted at the end). "
                             "An unreadable labelled or test file always stops the conversion.")


def add_split_arguments(parser: argparse.ArgumentParser, default_test_fraction: float = 0.2) -> None:
    add_output_arguments(parser)
    parser.add_argument("--split-file", default=None,
                        help="ssl_splits.json-style file (test, pool, labelled_sets) or a converter's ssl_split.json")
    parser.add_argument("--labelled-set", default=None, help="Key of labelled_sets in the split file, e.g. 10pct")
    parser.add_argument("--num-labelled", type=positive_count, default=None,
                        help="Number of labelled cases, >= 1 (first N of the pool with a split file, else random)")
    parser.add_argument("--num-test", type=count, default=None,
                        help=f"Test cases of a random split, >= 0 (default: {round(100 * default_test_fraction)}%% "
                             f"of the cases)")
    parser.add_argument("--seed", type=seed, default=0, help="Seed of a random split, 0 to 2**32-1. Default: 0")
    parser.add_argument("--max-unlabelled", type=count, default=None,
                        help="Keep only the first K unlabelled cases (K >= 0)")
    parser.add_argument("--max-test", type=count, default=None, help="Keep only the first K test cases (K >= 0)")


def split_from_arguments(args, case_ids: List[str], default_test_fraction: float = 0.2,
                         groups: Optional[Dict[str, str]] = None, group_name: str = "group") -> Split:
    """The split the arguments ask for; with `groups` (case -> group, e.g. video sequence) a random split
    takes whole groups (--num-labelled and --num-test count groups) and a split file must keep them whole."""
    if args.split_file:
        split = split_from_file(args.split_file, args.labelled_set, args.num_labelled)
        if groups is not None:
            check_groups_kept_whole(split, groups, group_name)
    else:
        if args.num_labelled is None:
            raise ConversionError("Give --split-file (with --labelled-set or --num-labelled) or --num-labelled N.")
        units = case_ids if groups is None else sorted(set(groups.values()))
        num_test = round(default_test_fraction * len(units)) if args.num_test is None else args.num_test
        split = random_split(case_ids, args.num_labelled, num_test, args.seed) if groups is None else \
            grouped_split(groups, args.num_labelled, num_test, args.seed, group_name)
    return {"labelled": split["labelled"], "unlabelled": split["unlabelled"][:args.max_unlabelled],
            "test": split["test"][:args.max_test]}


def _unreadable_case(error: UnreadableFileError, case: str, role: str) -> UnreadableFileError:
    """The reader's error with the fix for a case of this role (labelled, unlabelled, test)."""
    if role == "unlabelled":
        return error.with_fix(f"It belongs to unlabelled case '{case}': re-download the file, remove it, or pass "
                              f"--skip-unreadable to leave out unreadable unlabelled cases.")
    return error.with_fix(f"It belongs to {role} case '{case}' (never skipped, not even with --skip-unreadable): "
                          f"re-download the file, or remove the case from the source folder (and from the split "
                          f"file, if you give one).")


def _remove_case_files(case: str, folder: str) -> None:
    """Whatever a failed write_case left of `case` in `folder` (CASE_XXXX.ext)."""
    for name in os.listdir(folder):
        if re.fullmatch(re.escape(case) + r"_\d{4}\..+", name):
            os.remove(join(folder, name))


def write_ssl_dataset(dataset_id: int, name: str, split: Split, write_case: Callable[[str, str, Optional[str]], None],
                      channel_names: Dict[int, str], labels: Dict[str, int], file_ending: str,
                      overwrite: bool = False, skip_unreadable: bool = False, **dataset_json_extra) -> str:
    """Write the raw dataset under nnUNet_raw atomically; `write_case(case, image_folder, label_folder)`
    writes one case (label_folder None: unlabelled) and reads its files inside the input guard
    (input_checks.reading). An unreadable file stops the conversion, naming the file, its case and the
    fix; with `skip_unreadable` an unreadable unlabelled case is left out (warned; counted at the end).
    Returns the dataset folder."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    from nnunetv2.utilities.dataset_name_id_conversion import find_candidate_datasets

    require_nnunet_folders("nnUNet_raw")
    nnUNet_raw = os.environ["nnUNet_raw"]
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
    skipped: Dict[str, UnreadableFileError] = {}
    try:
        jobs = [(c, "labelled", "imagesTr", "labelsTr") for c in split["labelled"]] + \
               [(c, "unlabelled", "imagesUnlabeled", None) for c in split["unlabelled"]] + \
               [(c, "test", "imagesTs", "labelsTs") for c in split["test"]]
        for case, role, image_folder, label_folder in tqdm(jobs, desc=f"Converting to {target_name}"):
            try:
                write_case(case, folders[image_folder], folders[label_folder] if label_folder else None)
            except UnreadableFileError as e:
                if role != "unlabelled" or not skip_unreadable:
                    raise _unreadable_case(e, case, role) from None
                _remove_case_files(case, folders[image_folder])
                skipped[case] = e
                tqdm.write(f"WARNING: left out unlabelled case {case} (--skip-unreadable): could not read "
                           f"{', '.join(e.paths)}: {e.problem}.", file=sys.stderr)
        split = {**split, "unlabelled": [c for c in split["unlabelled"] if c not in skipped]}
        generate_dataset_json(tmp, channel_names=channel_names, labels=labels,
                              num_training_cases=len(split["labelled"]), file_ending=file_ending,
                              dataset_name=target_name, converted_by="nnunet-qg",
                              numUnlabeled=len(split["unlabelled"]), numTest=len(split["test"]),
                              **{k: v for k, v in dataset_json_extra.items() if v is not None})
        atomic_write_json(split, join(tmp, SPLIT_RECORD_FILE))
        for stale in existing:
            if isdir(join(nnUNet_raw, stale)):
                shutil.rmtree(join(nnUNet_raw, stale))
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"Wrote {target}: {len(split['labelled'])} labelled, {len(split['unlabelled'])} unlabelled, "
          f"{len(split['test'])} test cases.")
    if skipped:
        print(f"Skipped {len(skipped)} unreadable unlabelled case(s) (--skip-unreadable): "
              f"{', '.join(sorted(skipped)[:10])}{' ...' if len(skipped) > 10 else ''}. ssl_split.json and "
              f"dataset.json list only the cases written.")
    return target
