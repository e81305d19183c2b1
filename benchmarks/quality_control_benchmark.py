"""How well nnUNetv2_predict_quality's case scores match the true per-case Dice.

    python benchmarks/quality_control_benchmark.py -d 4 -tr nnUNetTrainerQGSSL [-device cuda]

Scores (1) the fold-0 validation predictions that nnU-Net wrote at the end of training
(fold_0/validation, against labelsTr) and (2) the held-out test cases (imagesTs, predicted by the
command itself, against labelsTs), each with --reference so the true Dice is known. Prints MAE,
Pearson and Spearman per label and writes JSON (with the device).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from os.path import abspath, dirname, join

sys.path.insert(0, dirname(abspath(__file__)))
from common import print_table, write_json  # noqa: E402


def score(args, images: str, output: str, segmentations: str = None, reference: str = None) -> dict:
    cmd = ["nnUNetv2_predict_quality", "-i", images, "-o", output, "-d", args.d, "-tr", args.tr, "-c", args.c,
           "-f", "0", "-device", args.device, "--reference", reference]
    if segmentations:
        cmd += ["-s", segmentations]
    if args.disable_tta:
        cmd.append("--disable_tta")
    subprocess.run(cmd, check=True)
    with open(join(output, "quality.json")) as f:
        return json.load(f)["agreement_with_reference"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", required=True)
    parser.add_argument("-tr", default="nnUNetTrainerQGSSL")
    parser.add_argument("-c", default="3d_fullres")
    parser.add_argument("-device", default="cpu")
    parser.add_argument("--disable_tta", action="store_true")
    parser.add_argument("--out", default="benchmark_results/quality_control.json")
    args = parser.parse_args()
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    dataset = maybe_convert_to_dataset_name(args.d)
    raw = join(nnUNet_raw, dataset)
    fold = join(get_output_folder(dataset, args.tr, "nnUNetPlans", args.c), "fold_0")
    work = tempfile.mkdtemp(prefix="qc_bench_")
    # (1) the validation cases: their images, linked into a folder of their own
    val_images = join(work, "validation_images")
    os.makedirs(val_images)
    validation = join(fold, "validation")
    cases = sorted(f[:-7] for f in os.listdir(validation) if f.endswith(".nii.gz"))
    for case in cases:
        for f in os.listdir(join(raw, "imagesTr")):
            if f.startswith(case + "_"):
                os.symlink(join(raw, "imagesTr", f), join(val_images, f))
    results = {"validation (fold 0)": score(args, val_images, join(work, "qc_val"), validation, join(raw, "labelsTr"))}
    if os.path.isdir(join(raw, "labelsTs")):
        results["test (imagesTs)"] = score(args, join(raw, "imagesTs"), join(work, "qc_test"), None,
                                           join(raw, "labelsTs"))
    rows = [{"cases": name, "label": label, **{k: v for k, v in m.items()}}
            for name, agreement in results.items() for label, m in agreement.items()]
    print(f"\nPredicted vs true per-case Dice, {dataset} {args.tr} fold 0, device {args.device}")
    table = print_table(rows, ["cases", "label", "n", "mae", "pearson", "spearman"])
    write_json({"dataset": dataset, "trainer": args.tr, "device": args.device, "results": results, "table": table},
               args.out)


if __name__ == "__main__":
    main()
