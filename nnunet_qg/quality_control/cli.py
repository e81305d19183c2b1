"""`nnUNetv2_predict_quality`: predicted Dice of every prediction, per case and label, no ground truth.

    nnUNetv2_predict_quality -i imagesTs -o qc_out -d 4 -c 3d_fullres -tr nnUNetTrainerQGSSL -f 0
        [-s my_predictions] [--reference labelsTs] [--threshold 0.8] [--pictures]
        [--trusted-folder pseudo_labels --min-quality 0.9]

Without -s the segmentations are predicted first with nnU-Net's predictor (written to -o). Writes
`quality.csv` (case, label, predicted Dice, predicted volume, flag; worst first) and
`quality.json` to -o and prints the worst rows. With --reference (a folder of true labels) the true
Dice is added and the agreement (MAE, Pearson, Spearman) is reported: that is how the predictor is
validated. --trusted-folder copies the segmentations whose every label reaches --min-quality
(offline pseudo-labelling of unlabelled images). Every input image is read once inside the input guard
before anything is predicted or written, and segmentations and references are read inside it too: an
unreadable file stops the command with its name and the fix.
"""
import argparse
import os
import shutil
import sys
from os.path import join
from typing import Dict, List

import numpy as np
import torch
from tqdm import tqdm

from nnunet_qg.dataset_conversion.input_checks import InputError, reading, require_nnunet_folders
from nnunet_qg.quality.dice import dice_per_label
from nnunet_qg.quality_control.report import (agreement_with_truth, format_table, plot_case, rows_worst_first,
                                              write_csv, write_json)
from nnunet_qg.quality_control.scoring import (CaseScorer, QualityControlError, case_ids_and_images,
                                               label_volumes, model_folder_of, segmentation_file_for)


def predict_segmentations(model_folder: str, folds, checkpoint: str, input_folder: str, output_folder: str,
                          device: torch.device, tta: bool) -> None:
    """nnU-Net's own predictor (what nnUNetv2_predict runs)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta, device=device,
                                verbose=False, verbose_preprocessing=False, allow_tqdm=True)
    predictor.initialize_from_trained_model_folder(model_folder, folds, checkpoint)
    predictor.predict_from_files(input_folder, output_folder, save_probabilities=False, overwrite=True,
                                 num_processes_preprocessing=1, num_processes_segmentation_export=1)


def read_inputs_once(cases: Dict[str, List[str]], reader) -> None:
    """Read every input image inside the input guard, so that a broken file is named before minutes of
    prediction (nnU-Net's predictor reads in worker processes) and before anything is written."""
    for case, files in tqdm(cases.items(), desc="Checking inputs", disable=not sys.stdout.isatty()):
        with reading(files, fix=f"Re-download it, or remove case '{case}' from the input folder."):
            reader().read_images(files)


def read_segmentation(path: str, reader, fix: str):
    """read_seg of a segmentation or reference file, inside the input guard."""
    with reading(path, fix=fix):
        return reader().read_seg(path)


def run_quality_control(args) -> List[dict]:
    require_nnunet_folders("nnUNet_results")
    device = torch.device(args.device)
    folds = [f if f == "all" else int(f) for f in args.f]
    model_folder = model_folder_of(args.d, args.tr, args.p, args.c)
    scorer = CaseScorer(model_folder, folds, device)  # fails early if g is missing
    file_ending = scorer.dataset_json["file_ending"]
    cases = case_ids_and_images(args.i, file_ending, len(scorer.dataset_json["channel_names"]))
    reader = scorer.plans_manager.image_reader_writer_class
    read_inputs_once(cases, reader)
    os.makedirs(args.o, exist_ok=True)
    segmentations = args.s
    if segmentations is None:
        print(f"Predicting {len(cases)} case(s) with {model_folder} (folds {folds}) into {args.o}", flush=True)
        predict_segmentations(model_folder, folds, args.chk, args.i, args.o, device, not args.disable_tta)
        segmentations = args.o
    labels = scorer.labels
    names = {v: k for k, v in scorer.dataset_json["labels"].items() if isinstance(v, int)}
    scores: Dict[str, np.ndarray] = {}
    volumes, truth = {}, ({} if args.reference else None)
    for case, image_files in tqdm(cases.items(), desc="Scoring", disable=not sys.stdout.isatty()):
        seg, properties = read_segmentation(
            segmentation_file_for(case, segmentations, file_ending), reader,
            f"Replace it, or remove case '{case}' from -i." if args.s else "Run the command again to predict it anew.")
        scores[case] = scorer.score(image_files, seg)
        volumes[case] = label_volumes(seg, properties["spacing"], labels)
        if truth is not None:
            ref_file = join(args.reference, case + file_ending)
            if not os.path.isfile(ref_file):
                raise QualityControlError(f"--reference has no {ref_file} for case {case}.")
            ref = read_segmentation(ref_file, reader, f"Replace it, or remove case '{case}' from -i.")[0]
            truth[case] = dice_per_label(seg, ref, labels)
    rows = rows_worst_first(scores, volumes, labels, names, args.threshold, truth)
    meta = {"model_folder": model_folder, "folds": folds, "segmentations": os.path.abspath(segmentations),
            "threshold": args.threshold, "aggregation": "sliding window (step 0.5), label-volume-weighted mean"}
    if truth is not None:
        meta["agreement_with_reference"] = agreement_with_truth(rows, labels)
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
        shutil.copy(join(segmentations, case + file_ending), target + ".tmp")
        os.replace(target + ".tmp", target)
    return trusted


def draw_flagged(rows, cases, segmentations, file_ending, reader, labels, folder) -> None:
    flagged = sorted({r["case"] for r in rows if r["flagged"]})
    os.makedirs(folder, exist_ok=True)
    for case in flagged:
        image, _ = reader().read_images(cases[case])
        seg, _ = reader().read_seg(join(segmentations, case + file_ending))
        worst = min(r["predicted_dice"] for r in rows if r["case"] == case)
        plot_case(image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1), seg[0], labels,
                  f"{case}: worst predicted Dice {worst:.3f}", join(folder, f"{case}.png"))


def print_summary(rows: List[dict], meta: dict, output: str) -> None:
    n_cases = len({r["case"] for r in rows})
    flagged = sorted({r["case"] for r in rows if r["flagged"]})
    print(f"\nPredicted Dice of {n_cases} case(s), worst first (flag: below {meta['threshold']}):")
    print(format_table(rows))
    print(f"\n{len(flagged)} of {n_cases} case(s) flagged.")
    if "agreement_with_reference" in meta:
        m = meta["agreement_with_reference"]["mean"]
        print(f"Against --reference: MAE {m['mae']:.4f}, Pearson {m['pearson']:.4f}, Spearman {m['spearman']:.4f} "
              f"(mean over labels, n={m['n']} cases)")
    if "trusted" in meta:
        print(f"{len(meta['trusted'])} segmentation(s) copied to the trusted folder.")
    print(f"Written: {join(output, 'quality.csv')}, {join(output, 'quality.json')}")


def entry_point() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-i", required=True, help="input images (nnU-Net naming: CASE_0000.ext)")
    parser.add_argument("-o", required=True, help="output folder (quality.csv/json; predictions without -s)")
    parser.add_argument("-d", required=True, help="dataset name or id")
    parser.add_argument("-c", default="3d_fullres", help="configuration. Default: 3d_fullres")
    parser.add_argument("-tr", default="nnUNetTrainerQGSSL", help="trainer. Default: nnUNetTrainerQGSSL")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier. Default: nnUNetPlans")
    parser.add_argument("-f", nargs="+", default=["0"], help="fold(s); their quality predictors are averaged")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint for predicting (without -s)")
    parser.add_argument("-s", default=None, help="existing segmentations to score (CASE.ext); default: predict")
    parser.add_argument("--reference", default=None, help="true labels (CASE.ext): adds true Dice and agreement")
    parser.add_argument("--threshold", type=float, default=0.8, help="flag below this predicted Dice. Default 0.8")
    parser.add_argument("--pictures", action="store_true", help="a PNG of a few slices per flagged case")
    parser.add_argument("--trusted-folder", default=None, help="copy trusted segmentations here (pseudo-labels)")
    parser.add_argument("--min-quality", type=float, default=0.9, help="trust: every label at least this. Default 0.9")
    parser.add_argument("-device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--disable_tta", action="store_true", help="no mirroring when predicting")
    args = parser.parse_args()
    try:
        run_quality_control(args)
    except (QualityControlError, InputError) as e:
        raise SystemExit(f"ERROR: {e}")


if __name__ == "__main__":
    entry_point()
