"""`nnUNetv2_qg_export`: a trained model folder that stock nnU-Net predicts with, without nnunet-qg.

A checkpoint of our semi-supervised trainers names our trainer (`trainer_name`), and nnU-Net's predictor
looks that class up to build the network, so predicting needs nnunet-qg installed. Our trainers build
nnU-Net's own network (they do not override `build_network_architecture`), so the same weights load into
the network that stock `nnUNetTrainer` builds. This writes a copy of the model folder
(`<trainer>__<plans>__<configuration>`: dataset.json, plans.json, fold_X/checkpoint_final.pth) whose
checkpoints name `nnUNetTrainer`, hold the student's weights (or with --teacher the EMA teacher's) and
keep only the entries of stock nnU-Net's checkpoint that are not training state: no optimizer or
grad-scaler state, and none of our entries (ssl_state, qg_rng_state, ...).

nnUNetPredictor.initialize_from_trained_model_folder (nnunetv2 2.8) reads from a checkpoint:
`trainer_name` (the class whose build_network_architecture builds the network), `init_args['configuration']`,
`inference_allowed_mirroring_axes` and `network_weights`; from the folder dataset.json and plans.json.
"""
import argparse
import io
import json
import os
import re
import shutil
from contextlib import redirect_stdout
from os.path import abspath, isdir, isfile, join
from typing import Dict, List, Optional, Sequence

import torch

from nnunet_qg.atomic import atomic_path
from nnunet_qg.dataset_conversion.input_checks import InputError, reading
from nnunet_qg.export_teacher import load_checkpoint, teacher_weights

STOCK_TRAINER = "nnUNetTrainer"
# what stock nnUNetTrainer.save_checkpoint writes, less the optimizer and grad-scaler states (training only)
KEPT_KEYS = ("network_weights", "init_args", "trainer_name", "inference_allowed_mirroring_axes", "current_epoch",
             "logging", "_best_ema")
NEEDED_KEYS = ("network_weights", "init_args", "trainer_name")  # what the predictor cannot do without
EXPORT_INFO_KEY = "nnunet_qg_export"  # plain strings: where the weights came from
OUTPUT_CHECKPOINT = "checkpoint_final.pth"  # the name stock nnU-Net predicts with by default
MODEL_FILES = ("dataset.json", "plans.json")
OWN_PACKAGE = "nnunet_qg"


def _fold_key(name: str):
    suffix = name[len("fold_"):]
    return (0, int(suffix), "") if suffix.isdigit() else (1, 0, suffix)


def find_folds(model_folder: str, folds: Optional[Sequence[str]], checkpoint_name: str) -> List[str]:
    """The fold folder names to export: those asked for (each must hold the checkpoint), or every fold_* that
    holds it."""
    present = sorted((d for d in os.listdir(model_folder) if re.fullmatch(r"fold_(\d+|all)", d)
                      and isdir(join(model_folder, d))), key=_fold_key)
    with_checkpoint = [d for d in present if isfile(join(model_folder, d, checkpoint_name))]
    if not folds:
        if not with_checkpoint:
            raise InputError(f"no fold of {model_folder} holds {checkpoint_name} (fold folders: "
                             f"{', '.join(present) or 'none'}). Finish the training (nnUNetv2_train ... --c), or "
                             f"name another checkpoint with -chk (e.g. checkpoint_best.pth).")
        return with_checkpoint
    names = list(dict.fromkeys(f"fold_{f}" for f in folds))
    lacking = [n for n in names if n not in with_checkpoint]
    if lacking:
        raise InputError(f"{', '.join(join(model_folder, n, checkpoint_name) for n in lacking)} not found; the "
                         f"folds of {model_folder} with {checkpoint_name}: "
                         f"{', '.join(f[len('fold_'):] for f in with_checkpoint) or 'none'}.")
    return names


def check_model_folder(model_folder: str) -> dict:
    """Refuse what is not a trained model folder; returns its plans."""
    if not isdir(model_folder):
        raise InputError(f"the model folder {model_folder} does not exist (or is not a folder). Give the trained "
                         f"model folder nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration>.")
    for name in MODEL_FILES:
        if not isfile(join(model_folder, name)):
            hint = (f" It looks like a fold folder: give its parent, {os.path.dirname(abspath(model_folder))}."
                    if os.path.basename(abspath(model_folder)).startswith("fold_") else "")
            raise InputError(f"{model_folder} is not a trained model folder: it has no {name} (a model folder "
                             f"<trainer>__<plans>__<configuration> holds dataset.json, plans.json and "
                             f"fold_X/).{hint}")
    plans_file = join(model_folder, "plans.json")
    with reading(plans_file, fix="Restore the model folder's plans.json (a copy of nnUNet_preprocessed's plans)."):
        with open(plans_file) as f:
            return json.load(f)


def network_owner(trainer_name: str) -> type:
    """The class (in the trainer's MRO) that defines `build_network_architecture` for `trainer_name`."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        with redirect_stdout(io.StringIO()):  # it narrates its search of nnUNet_extTrainer
            trainer_class = recursive_find_trainer_class_by_name(trainer_name)
    except (RuntimeError, AssertionError) as e:
        raise InputError(f"the checkpoint's trainer {trainer_name} cannot be found ({' '.join(str(e).split())[:300]})."
                         f" Install the package that defines it.") from None
    return next(c for c in trainer_class.__mro__ if "build_network_architecture" in vars(c))


def check_stock_network(trainer_name: str, plans: dict, configuration: str, source: str) -> None:
    """Refuse a checkpoint whose network stock nnU-Net would not build the same way."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    owner = network_owner(trainer_name)
    if owner is not nnUNetTrainer:
        raise InputError(f"{source} was trained with {trainer_name}, whose network is built by "
                         f"{owner.__module__}.{owner.__name__}.build_network_architecture, not by nnU-Net's "
                         f"nnUNetTrainer: stock nnU-Net would build another network. This model cannot be exported "
                         f"for stock nnU-Net; predict with the package that defines {trainer_name} installed.")
    try:
        config = PlansManager(plans).get_configuration(configuration)
        names = [config.network_arch_class_name] + list(config.network_arch_init_kwargs_req_import or [])
    except Exception as e:  # a configuration missing from plans.json, a damaged plans.json
        raise InputError(f"plans.json of the model folder does not describe the configuration {configuration!r} of "
                         f"{source} ({type(e).__name__}: {' '.join(str(e).split())[:200]}).") from None
    ours = [n for n in names if isinstance(n, str) and n.split(".")[0] == OWN_PACKAGE]
    if ours:
        raise InputError(f"the network of {source} needs {ours[0]} (plans.json): stock nnU-Net cannot build it.")


def own_objects(obj, path: str = "checkpoint") -> List[str]:
    """Where in a checkpoint's (nested) containers an object of one of our classes sits: stock nnU-Net could not
    unpickle it."""
    found = []
    if type(obj).__module__.split(".")[0] == OWN_PACKAGE:
        found.append(f"{path} ({type(obj).__module__}.{type(obj).__qualname__})")
    if isinstance(obj, dict):
        for k, v in obj.items():
            found += own_objects(k, f"{path} key {k!r}") + own_objects(v, f"{path}[{k!r}]")
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for i, v in enumerate(obj):
            found += own_objects(v, f"{path}[{i}]")
    return found


def stock_checkpoint(checkpoint: dict, source: str, teacher: bool, plans: dict,
                     checked: Dict[str, None]) -> dict:
    """The checkpoint that stock nnU-Net predicts with (see the module's doc). `checked`: trainer names whose
    network was already checked."""
    absent = [k for k in NEEDED_KEYS if k not in checkpoint]
    if absent or "configuration" not in (checkpoint.get("init_args") or {}):
        raise InputError(f"{source} is not a checkpoint of nnU-Net's trainers (no "
                         f"{absent[0] if absent else 'init_args.configuration'}).")
    trainer_name = checkpoint["trainer_name"]
    if trainer_name not in checked:
        check_stock_network(trainer_name, plans, checkpoint["init_args"]["configuration"], source)
        checked[trainer_name] = None
    weights = teacher_weights(checkpoint, source) if teacher else checkpoint["network_weights"]
    exported = {k: checkpoint[k] for k in KEPT_KEYS if k in checkpoint}
    exported.update(network_weights=weights, trainer_name=STOCK_TRAINER)
    foreign = own_objects(exported)
    if foreign:
        raise InputError(f"{source} holds objects of nnunet-qg's classes that stock nnU-Net cannot read: "
                         f"{'; '.join(foreign[:3])}.")
    exported[EXPORT_INFO_KEY] = {"trainer_name": str(trainer_name), "weights": "EMA teacher" if teacher else "student",
                                 "checkpoint": os.path.basename(source)}
    return exported


def _remove(path: str) -> None:
    if isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def export_model_folder(model_folder: str, output_folder: str, folds: Optional[Sequence[str]] = None,
                        checkpoint_name: str = "checkpoint_final.pth", teacher: bool = False,
                        overwrite: bool = False) -> List[str]:
    """Write the stock model folder (see the module's doc); returns the checkpoints written. The folder is
    built beside `output_folder` under a temporary name (each file through atomic_path) and renamed into place
    at the end, so a failed or interrupted export leaves no partial model folder."""
    if os.sep in checkpoint_name or checkpoint_name in ("", ".", ".."):
        raise InputError(f"-chk takes the checkpoint's file name in fold_X/ (e.g. checkpoint_final.pth), not "
                         f"{checkpoint_name!r}.")
    plans = check_model_folder(model_folder)
    fold_names = find_folds(model_folder, folds, checkpoint_name)
    source, target = os.path.realpath(model_folder), os.path.realpath(output_folder)
    if source == target or source.startswith(target + os.sep):
        raise InputError(f"the output folder {output_folder} is (or holds) the model folder: choose another one.")
    if os.path.lexists(output_folder) and not overwrite:
        raise InputError(f"the output folder {output_folder} exists: choose another one, or replace it with "
                         f"--overwrite.")
    parent = os.path.dirname(abspath(output_folder))
    os.makedirs(parent, exist_ok=True)
    staging = join(parent, f".{os.path.basename(abspath(output_folder))}.tmp-{os.getpid()}")
    old = join(parent, f".{os.path.basename(abspath(output_folder))}.old-{os.getpid()}")
    for leftover in (staging, old):
        _remove(leftover)
    written, checked = [], {}
    try:
        os.makedirs(staging)
        for name in MODEL_FILES:
            with atomic_path(join(staging, name)) as tmp:
                shutil.copyfile(join(model_folder, name), tmp)
        for fold in fold_names:
            source_file = join(model_folder, fold, checkpoint_name)
            exported = stock_checkpoint(load_checkpoint(source_file), source_file, teacher, plans, checked)
            os.makedirs(join(staging, fold))
            with atomic_path(join(staging, fold, OUTPUT_CHECKPOINT)) as tmp:
                torch.save(exported, tmp)
            written.append(join(output_folder, fold, OUTPUT_CHECKPOINT))
        if os.path.lexists(output_folder):  # --overwrite: the old folder goes only once the new one is complete
            os.replace(output_folder, old)
        os.replace(staging, output_folder)
    except BaseException:
        if os.path.lexists(old) and not os.path.lexists(output_folder):
            os.replace(old, output_folder)
        _remove(staging)
        raise
    _remove(old)
    return written


def entry_point() -> None:
    parser = argparse.ArgumentParser(
        description="Write a copy of a trained model folder of nnunet-qg's trainers that stock nnU-Net predicts "
        "with, without nnunet-qg installed: the checkpoints name nnUNetTrainer and hold the student's weights (or "
        "the EMA teacher's), without training state. The output folder holds dataset.json, "
        "plans.json and fold_X/checkpoint_final.pth; predict with stock nnUNetv2_predict_from_modelfolder -m "
        "OUTPUT_FOLDER, or name it nnUNetTrainer__<plans>__<configuration> under nnUNet_results/DatasetXXX_Name "
        "and use nnUNetv2_predict -tr nnUNetTrainer.")
    parser.add_argument("-i", required=True, metavar="MODEL_FOLDER",
                        help="trained model folder: nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration>")
    parser.add_argument("-o", required=True, metavar="OUTPUT_FOLDER", help="the model folder to write (must not "
                        "exist, unless --overwrite)")
    parser.add_argument("-f", nargs="+", default=None, metavar="FOLD",
                        help="folds to export, e.g. -f 0 1 2 (or 'all' for fold_all); default: every fold_* that "
                             "holds the checkpoint")
    parser.add_argument("-chk", default="checkpoint_final.pth",
                        help="checkpoint file in fold_X/ to export (default: %(default)s); it is written as "
                             "checkpoint_final.pth, the name stock nnU-Net predicts with")
    parser.add_argument("--teacher", action="store_true",
                        help="export the EMA teacher's weights (ssl_state.teacher) instead of the student's")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args()
    bad = [f for f in args.f or [] if not (f.isdigit() or f == "all")]
    if bad:
        parser.error(f"-f takes fold numbers or 'all', not {bad[0]!r}")
    try:
        written = export_model_folder(args.i, args.o, args.f, args.chk, args.teacher, args.overwrite)
    except InputError as e:
        raise SystemExit(f"ERROR: {e}")
    for path in written:
        print(path)
    folds = " ".join(re.sub(r"^fold_", "", os.path.basename(os.path.dirname(p))) for p in written)
    print(f"Exported the {'EMA teacher' if args.teacher else 'student'} of {len(written)} fold(s) for stock nnU-Net: "
          f"nnUNetv2_predict_from_modelfolder -i INPUT -o OUTPUT -m {args.o} -f {folds}")
