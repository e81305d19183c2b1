"""`nnUNetv2_predict_quality`: which cases to check by hand. The predicted Dice of every segmentation, per case and label, without ground truth.

    nnUNetv2_predict_quality -i imagesTs -o qc_out -d 4 -c 3d_fullres -tr nnUNetTrainer -f 0 1 2 3 4
        [-s my_predictions] [--estimator self_estimate] [--threshold 0.8] [--pictures]
        [--calibration-cases IMAGES LABELS | --no-calibration] [--reference labelsTs]
        [--trusted-folder pseudo_labels --min-quality 0.9]

Works with any nnU-Net model (a quality predictor g is needed only for `--estimator g` and its
combinations). Without -s the cases are predicted first with nnU-Net's predictor (segmentations written
to -o, as nnUNetv2_predict writes them); with -s those segmentations are scored, with the network's
probabilities read from the CASE.npz that `nnUNetv2_predict --save_probabilities` wrote beside them, or
predicted where there is none. The default estimator is the one with the best measured agreement (see
docs/quality_control.md): the mean of the network's own expected Dice of the mask (`self_estimate`) and the
agreement of the mask with each of nnU-Net's test-time-mirrored predictions (`tta_agreement`); where a case
gets a single prediction (one fold with --disable_tta), `self_estimate` alone.

Calibration (the predicted Dice means Dice): the raw score goes through an isotonic map per label fitted
on cases with ground truth, stored in <model folder>/quality_calibration.json with the number of cases.
Without a stored map it is fitted once, automatically, on nnU-Net's cross-validation (each fold's
validation cases, predicted by that fold; images and labels from nnUNet_raw); a model of fold `all` has
no held-out cases: give labelled cases it did not train on with --calibration-cases. --no-calibration
gives the raw score.

Writes `quality.csv` (case, label, predicted Dice, raw signals, predicted volume, flag; worst first) and
`quality.json` to -o and prints the worst rows. --reference (a folder of true labels) adds the true Dice
and the agreement. --pictures draws the flagged cases. --trusted-folder copies the segmentations whose
every label reaches --min-quality (offline pseudo-labels). Every input is read inside the input guard
before anything is predicted or written: an unreadable file stops the command with its name and the fix.
"""
import argparse
import os
import shutil
import sys
from os.path import basename, dirname, isdir, isfile, join
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from nnunet_qg.dataset_conversion.input_checks import InputError, reading, require_nnunet_folders, unit_interval
from nnunet_qg.quality.dice import dice_per_label
from nnunet_qg.quality_control.calibration import (CALIBRATION_FILE, calibrate, calibration_key, find_entry, fit_entry,
                                                   store_entry, volume_z)
from nnunet_qg.quality_control.report import (agreement_with_truth, format_table, plot_case, rows_worst_first,
                                              write_csv, write_json)
from nnunet_qg.quality_control.scoring import (QualityControlError, case_ids_and_images, check_channels,
                                               label_volumes, load_fold_predictors, model_folder_of,
                                               segmentation_file_for)
from nnunet_qg.quality_control.signals import (DEFAULT_ESTIMATOR, ESTIMATORS, FALLBACK_ESTIMATOR, G, SELF_ESTIMATE,
                                               QualitySignals, combine, components, npz_beside, read_probabilities)
from nnunet_qg.quality.network import QUALITY_PREDICTOR_FILE


def read_inputs_once(cases: Dict[str, List[str]], reader, num_channels: Optional[int] = None,
                     file_ending: str = "") -> None:
    """Read every input image inside the input guard, so that a broken file is named before minutes of
    prediction and before anything is written; with `num_channels`, also count the channels read."""
    for case, files in tqdm(cases.items(), desc="Checking inputs", disable=not sys.stdout.isatty()):
        with reading(files, fix=f"Re-download it, or remove case '{case}' from the input folder."):
            data, _ = reader().read_images(files)
        if num_channels is not None:
            check_channels(case, files, data, num_channels, file_ending)


def read_segmentation(path: str, reader, fix: str):
    """read_seg of a segmentation or reference file, inside the input guard."""
    with reading(path, fix=fix):
        return reader().read_seg(path)


def write_segmentation(segmentation: np.ndarray, path: str, file_ending: str, reader, properties: dict) -> None:
    """nnU-Net's reader writes it under a temporary name with the full file ending (.nii.gz), renamed."""
    tmp = join(dirname(path), f".{basename(path)[:-len(file_ending)]}.tmp-{os.getpid()}{file_ending}")
    try:
        reader().write_seg(segmentation, tmp, properties)
        os.replace(tmp, path)
    finally:
        if isfile(tmp):
            os.remove(tmp)


def image_shape(files: List[str], reader) -> tuple:
    return reader().read_images(files)[0].shape[1:]


def g_models_for(model_folder: str, folds, estimator: str, device: torch.device) -> list:
    """The folds' quality predictors: required where the estimator uses g, else loaded where present (the
    g column of the report)."""
    if G in components(estimator):
        return load_fold_predictors(model_folder, folds, device)
    if all(isfile(join(model_folder, f"fold_{f}", QUALITY_PREDICTOR_FILE)) for f in folds):
        return load_fold_predictors(model_folder, folds, device)
    return []


def signals_needed(signals: QualitySignals, estimator: str, predicting: bool) -> set:
    """The estimator's signals; when the network predicts anyway, every other signal too (for the report)."""
    need = set(components(estimator))
    if predicting or need - {SELF_ESTIMATE, G}:
        need |= signals.available()
    elif G in signals.available():
        need.add(G)
    return need


def fit_calibration(signals_by_fold: Dict[str, QualitySignals], cases: List[tuple], labels: Sequence[int],
                    reader, key: dict, source: str, estimator: str) -> dict:
    """Fit a calibration entry on labelled cases [(fold, case, image files, label file, segmentation file or
    None, npz or None)]: the fold's network predicts (or its segmentation is scored), every signal it can
    give is computed, and each estimator made of them is fitted against the true Dice."""
    scores: Dict[str, list] = {}
    true, volumes = [], []
    for fold, case, image_files, label_file, seg_file, npz in tqdm(cases, desc="Calibration cases",
                                                                    disable=not sys.stdout.isatty()):
        signals = signals_by_fold[fold]
        fix = f"Replace it, or remove case '{case}' from the calibration cases."
        with reading(image_files, fix=fix):
            reader().read_images(image_files)
        reference, properties = read_segmentation(label_file, reader, fix)
        segmentation = None if seg_file is None else read_segmentation(seg_file, reader, fix)[0]
        probabilities = None if npz is None else read_probabilities(npz, segmentation, len(signals.all_labels))
        need = signals_needed(signals, estimator, segmentation is None or npz is None)
        out = signals.case(image_files, need, segmentation, probabilities)
        for name, value in out["signals"].items():
            scores.setdefault(name, []).append(value)
        true.append(dice_per_label(out["segmentation"], reference, labels))
        volumes.append(list(label_volumes(reference, properties["spacing"], labels).values()))
    base = {name: np.stack(v) for name, v in scores.items()}
    estimators = {e: np.mean([base[s] for s in components(e)], axis=0) for e in ESTIMATORS
                  if all(s in base for s in components(e))}
    return fit_entry(estimators, np.stack(true), np.asarray(volumes, float), labels, key, source)


def calibration_from_cases(args, signals: QualitySignals, folds, key: dict) -> dict:
    images, labels_folder = args.calibration_cases
    file_ending = signals.scorer.dataset_json["file_ending"]
    cases = case_ids_and_images(images, file_ending)
    rows = []
    for case, files in cases.items():
        label_file = join(labels_folder, case + file_ending)
        if not isfile(label_file):
            raise QualityControlError(f"--calibration-cases: no label {label_file} for image case {case}. Give "
                                      f"the labels as CASE{file_ending} in {labels_folder}.")
        rows.append(("ensemble", case, files, label_file, None, None))
    print(f"Fitting the calibration on {len(rows)} labelled case(s) of {images} (predicted by folds {folds})",
          flush=True)
    return fit_calibration({"ensemble": signals}, rows, signals.labels, signals.reader, key,
                           f"--calibration-cases {os.path.abspath(images)} ({len(rows)} cases)", args.estimator)


def calibration_from_cross_validation(model_folder: str, folds, args, key: dict, g_models: list,
                                      device: torch.device, dataset_json: dict, reader) -> Optional[dict]:
    """The folds' own validation cases (nnU-Net's cross-validation) with their true labels; None (and a
    printed reason) where they are not there."""
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

    if any(str(f) == "all" for f in folds):
        print("No automatic calibration: fold 'all' trained on every labelled case, so its validation/ holds "
              "training cases. Give labelled cases it did not train on with --calibration-cases IMAGES LABELS.")
        return None
    file_ending = dataset_json["file_ending"]
    raw = os.environ.get("nnUNet_raw")
    dataset = basename(dirname(model_folder.rstrip(os.sep)))
    if not raw or not isdir(join(raw, dataset, "imagesTr")) or not isdir(join(raw, dataset, "labelsTr")):
        print(f"No automatic calibration: the cross-validation cases' images and labels are read from "
              f"nnUNet_raw/{dataset}/imagesTr and labelsTr, which are not there. Give labelled cases with "
              f"--calibration-cases IMAGES LABELS, or set nnUNet_raw.")
        return None
    rows = []
    for fold in folds:
        validation = join(model_folder, f"fold_{fold}", "validation")
        if not isdir(validation):
            print(f"No automatic calibration: {validation} does not exist (train the fold to its end, or run "
                  f"nnUNetv2_train ... --val). Give labelled cases with --calibration-cases IMAGES LABELS.")
            return None
        cases = sorted(f[:-len(file_ending)] for f in os.listdir(validation) if f.endswith(file_ending))
        images = create_lists_from_splitted_dataset_folder(join(raw, dataset, "imagesTr"), file_ending, cases)
        for case, files in zip(cases, images):
            if not files:
                print(f"No automatic calibration: no image of validation case {case} in "
                      f"{join(raw, dataset, 'imagesTr')}.")
                return None
            rows.append((str(fold), case, files, join(raw, dataset, "labelsTr", case + file_ending),
                         join(validation, case + file_ending), npz_beside(join(validation, case + file_ending),
                                                                          file_ending)))
    print(f"Fitting the calibration on nnU-Net's cross-validation: {len(rows)} validation case(s) of folds "
          f"{list(folds)}, each predicted by its own fold (once; stored beside the model)", flush=True)
    signals_by_fold = {}
    for fold in folds:
        signals_by_fold[str(fold)] = QualitySignals(model_folder, [fold], args.chk, device, not args.disable_tta,
                                                    [m for m, f in zip(g_models, folds) if f == fold])
    return fit_calibration(signals_by_fold, rows, signals_by_fold[str(folds[0])].labels, reader, key,
                           f"cross-validation: validation/ of folds {list(folds)} ({len(rows)} cases)",
                           args.estimator)


def resolve_calibration(args, model_folder: str, folds, signals: QualitySignals, g_models: list,
                        device: torch.device) -> Optional[dict]:
    if args.no_calibration:
        return None
    path = args.calibration_file or join(model_folder, CALIBRATION_FILE)
    key = calibration_key(folds, args.chk, not args.disable_tta)
    if args.calibration_cases:
        entry = calibration_from_cases(args, signals, folds, key)
    else:
        entry = find_entry(path, key)
        if entry is not None and args.estimator in entry["estimators"]:
            return {**entry, "file": path}
        try:
            entry = calibration_from_cross_validation(model_folder, folds, args, key, g_models, device,
                                                      signals.scorer.dataset_json, signals.reader)
        except QualityControlError as e:  # too few validation cases: go on uncalibrated
            print(f"No automatic calibration: {e}")
            entry = None
        if entry is None:
            return None
    if args.estimator not in entry["estimators"]:
        print(f"WARNING: the calibration cases gave no '{args.estimator}' signal; it stays uncalibrated.")
    stored = store_entry(path, entry)
    return {**entry, "file": path if stored else None}


def run_quality_control(args) -> List[dict]:
    require_nnunet_folders("nnUNet_results")
    device = torch.device(args.device)
    folds = [f if f == "all" else int(f) for f in args.f]
    model_folder = model_folder_of(args.d, args.tr, args.p, args.c)
    for fold in folds:
        if not isfile(join(model_folder, f"fold_{fold}", args.chk)):
            raise QualityControlError(f"{join(model_folder, f'fold_{fold}', args.chk)} not found: check -f and -chk "
                                      f"(train the fold to its end, or pass -chk checkpoint_best.pth).")
    if args.estimator is None:  # the default, or its fallback where a case gets a single prediction
        single = args.disable_tta and len(folds) == 1
        args.estimator = FALLBACK_ESTIMATOR if single else DEFAULT_ESTIMATOR
        if single:
            print(f"One prediction per case (one fold, --disable_tta): estimator {FALLBACK_ESTIMATOR} instead of "
                  f"the default {DEFAULT_ESTIMATOR}.")
    components(args.estimator)  # a clear error for an unknown estimator
    g_models = g_models_for(model_folder, folds, args.estimator, device)
    signals = QualitySignals(model_folder, folds, args.chk, device, not args.disable_tta, g_models)
    missing = set(components(args.estimator)) - signals.available()
    if missing:
        raise QualityControlError(f"--estimator {args.estimator} needs tta_agreement, which needs several "
                                  f"predictions per case: leave out --disable_tta, or give several folds.")
    dataset_json = signals.scorer.dataset_json
    file_ending = dataset_json["file_ending"]
    reader = signals.reader
    cases = case_ids_and_images(args.i, file_ending)
    read_inputs_once(cases, reader, len(dataset_json["channel_names"]), file_ending)
    given: Dict[str, str] = {}
    if args.s:
        for case in cases:
            given[case] = segmentation_file_for(case, args.s, file_ending)
    calibration = resolve_calibration(args, model_folder, folds, signals, g_models, device)
    os.makedirs(args.o, exist_ok=True)
    labels = signals.labels
    names = {v: k for k, v in dataset_json["labels"].items() if isinstance(v, int)}
    scores, raw_scores, extra, volumes = {}, {}, {}, {}
    truth = {} if args.reference else None
    predicting = args.s is None
    print(f"Scoring {len(cases)} case(s) with {model_folder} (folds {folds}), estimator {args.estimator}"
          + ("; predicting them into " + args.o if predicting else ""), flush=True)
    for case, image_files in tqdm(cases.items(), desc="Scoring", disable=not sys.stdout.isatty()):
        segmentation = probabilities = None
        if not predicting:
            segmentation, _ = read_segmentation(given[case], reader, f"Replace it, or remove case '{case}' from -i.")
            if segmentation.shape[1:] != image_shape(image_files, reader):
                raise QualityControlError(
                    f"{given[case]} has shape {segmentation.shape[1:]}, its image {image_files[0]} "
                    f"{image_shape(image_files, reader)}: give the segmentation of this image.")
            npz = npz_beside(given[case], file_ending)
            if npz is not None and not args.ignore_npz:
                probabilities = read_probabilities(npz, segmentation, len(signals.all_labels))
        need = signals_needed(signals, args.estimator, predicting or probabilities is None)
        out = signals.case(image_files, need, segmentation, probabilities)
        if predicting:
            write_segmentation(out["segmentation"][0], join(args.o, case + file_ending), file_ending, reader,
                               out["properties"])
        raw_scores[case] = combine(out["signals"], args.estimator)
        scores[case] = calibrate(calibration, args.estimator, raw_scores[case], labels)
        extra[case] = out["signals"]
        properties = out["properties"]
        volumes[case] = label_volumes(out["segmentation"], properties["spacing"], labels)
        if truth is not None:
            ref_file = join(args.reference, case + file_ending)
            if not isfile(ref_file):
                raise QualityControlError(f"--reference has no {ref_file} for case {case}.")
            ref = read_segmentation(ref_file, reader, f"Replace it, or remove case '{case}' from -i.")[0]
            truth[case] = dice_per_label(out["segmentation"], ref, labels)
    z = None
    if calibration is not None and calibration.get("volumes_mm3"):
        z = {c: {l: volume_z(calibration["volumes_mm3"][str(l)], v) for l, v in vol.items()}
             for c, vol in volumes.items()}
    rows = rows_worst_first(scores, volumes, labels, names, args.threshold, truth, raw_scores, extra, z)
    segmentations = args.o if predicting else args.s
    meta = {"model_folder": model_folder, "folds": folds, "checkpoint": args.chk, "tta": not args.disable_tta,
            "segmentations": os.path.abspath(segmentations), "estimator": args.estimator,
            "threshold": args.threshold,
            "calibration": None if calibration is None else {
                k: calibration.get(k) for k in ("file", "source", "n_cases", "created")},
            "signals": "self_estimate: the network's expected Dice of the mask (soft Dice against its softmax); "
                       "tta_agreement: mean Dice of the mask with each fold x mirror prediction; g: the "
                       "quality predictor (sliding window, label-volume-weighted)"}
    if truth is not None:
        meta["agreement_with_reference"] = agreement_with_truth(rows, labels, args.threshold)
    if args.trusted_folder:
        meta["trusted"] = export_trusted(rows, segmentations, args.trusted_folder, args.min_quality, file_ending)
    write_csv(rows, join(args.o, "quality.csv"))
    write_json(rows, join(args.o, "quality.json"), meta)
    if args.pictures:
        draw_flagged(rows, cases, segmentations, file_ending, reader, labels, join(args.o, "quality_pictures"))
    print_summary(rows, meta, args.o)
    return rows


def export_trusted(rows: List[dict], segmentations: str, folder: str, min_quality: float,
                   file_ending: str) -> List[str]:
    """Copy the segmentations whose every label reaches min_quality (write to a temporary name, rename)."""
    worst: Dict[str, float] = {}
    for r in rows:
        worst[r["case"]] = min(worst.get(r["case"], 1.0), r["predicted_dice"])
    trusted = sorted(c for c, q in worst.items() if q >= min_quality)
    os.makedirs(folder, exist_ok=True)
    for case in trusted:
        target = join(folder, case + file_ending)
        tmp = join(folder, f".{case}.tmp-{os.getpid()}{file_ending}")
        shutil.copy(join(segmentations, case + file_ending), tmp)
        os.replace(tmp, target)
    return trusted


def draw_flagged(rows, cases, segmentations, file_ending, reader, labels, folder) -> None:
    flagged = sorted({r["case"] for r in rows if r["flagged"]})
    os.makedirs(folder, exist_ok=True)
    for case in flagged:
        image, _ = reader().read_images(cases[case])
        seg = reader().read_seg(join(segmentations, case + file_ending))[0][0]
        image = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)  # channels last (RGB)
        if seg.shape[0] == 1 and seg.ndim == 3:  # a 2D image stored as one slice (NaturalImage2DIO)
            seg, image = seg[0], image[0]
        if image.ndim == seg.ndim + 1:  # colour: to [0, 1] for imshow
            image = (image - image.min()) / max(float(image.max() - image.min()), 1e-6)
        worst = min(r["predicted_dice"] for r in rows if r["case"] == case)
        plot_case(image, seg, labels, f"{case}: worst predicted Dice {worst:.3f}", join(folder, f"{case}.png"))


def print_summary(rows: List[dict], meta: dict, output: str) -> None:
    n_cases = len({r["case"] for r in rows})
    flagged = sorted({r["case"] for r in rows if r["flagged"]})
    calibration = meta["calibration"]
    print(f"\nPredicted Dice ({meta['estimator']}, "
          + (f"calibrated on {calibration['n_cases']} cases: {calibration['source']}" if calibration else
             "UNCALIBRATED: raw scores, not Dice; see --calibration-cases") + f") of {n_cases} case(s), worst "
          f"first (flag: below {meta['threshold']}):")
    print(format_table(rows))
    print(f"\n{len(flagged)} of {n_cases} case(s) flagged.")
    if "agreement_with_reference" in meta:
        m = meta["agreement_with_reference"]["mean"]
        print(f"Against --reference: MAE {m['mae']:.4f}, Pearson {m['pearson']:.4f}, Spearman {m['spearman']:.4f}, "
              f"AUROC for true Dice below {meta['threshold']} {m['auroc_below_threshold']:.4f} "
              f"(mean over labels, n={m['n']} cases)")
    if "trusted" in meta:
        print(f"{len(meta['trusted'])} segmentation(s) copied to the trusted folder.")
    print(f"Written: {join(output, 'quality.csv')}, {join(output, 'quality.json')}")


def entry_point() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-i", required=True, help="input images (nnU-Net naming: CASE_0000.ext; one RGB file "
                                                  "holds three channels)")
    parser.add_argument("-o", required=True, help="output folder (quality.csv/json; predictions without -s)")
    parser.add_argument("-d", required=True, help="dataset name or id")
    parser.add_argument("-c", default="3d_fullres", help="configuration. Default: 3d_fullres")
    parser.add_argument("-tr", default="nnUNetTrainerQGSSL", help="trainer. Default: nnUNetTrainerQGSSL")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier. Default: nnUNetPlans")
    parser.add_argument("-f", nargs="+", default=["0"], help="fold(s): their predictions are averaged (and "
                                                             "their quality predictors)")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint. Default: checkpoint_final.pth")
    parser.add_argument("-s", default=None, help="existing segmentations to score (CASE.ext, optionally with "
                                                 "CASE.npz from --save_probabilities); default: predict")
    parser.add_argument("--estimator", default=None, choices=ESTIMATORS,
                        help=f"quality estimator. Default: {DEFAULT_ESTIMATOR} (the best measured; "
                             f"{FALLBACK_ESTIMATOR} where a case gets one prediction: one fold and --disable_tta)")
    parser.add_argument("--threshold", type=unit_interval, default=0.8,
                        help="flag below this predicted Dice, 0-1. Default 0.8")
    parser.add_argument("--calibration-cases", nargs=2, metavar=("IMAGES", "LABELS"), default=None,
                        help="fit (and store) the calibration on these labelled cases, which the model did not "
                             "train on. Default: the stored calibration, else nnU-Net's cross-validation")
    parser.add_argument("--no-calibration", action="store_true", help="raw scores: no calibration fitted or used")
    parser.add_argument("--calibration-file", default=None,
                        help=f"default: <model folder>/{CALIBRATION_FILE}")
    parser.add_argument("--ignore-npz", action="store_true", help="with -s: predict the probabilities even where a "
                                                                  "CASE.npz is there")
    parser.add_argument("--reference", default=None, help="true labels (CASE.ext): adds true Dice and agreement")
    parser.add_argument("--pictures", action="store_true", help="a PNG of a few slices per flagged case")
    parser.add_argument("--trusted-folder", default=None, help="copy trusted segmentations here (pseudo-labels)")
    parser.add_argument("--min-quality", type=unit_interval, default=0.9,
                        help="trust: every label at least this, 0-1. Default 0.9")
    parser.add_argument("-device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--disable_tta", action="store_true", help="no mirroring when predicting")
    args = parser.parse_args()
    if args.calibration_cases and args.no_calibration:
        parser.error("--calibration-cases and --no-calibration exclude each other")
    try:
        run_quality_control(args)
    except (QualityControlError, InputError) as e:
        raise SystemExit(f"ERROR: {e}")


if __name__ == "__main__":
    entry_point()
