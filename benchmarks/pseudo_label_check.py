"""What PL-QW sees in a trained fold: the teacher's pseudo-labels and g's quality weights.

    python benchmarks/pseudo_label_check.py -d 4 -tr nnUNetTrainerQGSSL [-c 3d_fullres] [--batches 10]

Needs nnUNet_raw / nnUNet_preprocessed / nnUNet_results of a fold trained with a quality-guided
trainer (it reads checkpoint_final.pth: student, EMA teacher and g). On labelled training patches
(nnU-Net's augmentation) it compares the teacher's hard pseudo-labels with the labels (true Dice
per label) and with g's prediction; on unlabelled patches (the teacher's view) it reports g's
predictions, the quality weights w = q^T 1[q >= tau] and the share of pseudo-labels kept. If g
rates the pseudo-labels of unlabelled patches far below those of labelled ones, PL-QW is not
learning from the unlabelled data. Prints a table and writes JSON; the fold folder is only read.

With a benchmark trainer whose unlabelled patches carry their withheld labels (the evidence protocol's
arms, e.g. nnUNetTrainerUnweightedPL_evidence), it also judges every candidate quality signal of a
pseudo-label against its true Dice (`--signal-batches` unlabelled batches): g, the teacher's
self-estimate (its expected Dice of its own hard mask under its softmax), the agreement of the teacher's
mirrored predictions with the pseudo-label, and the student's agreement with it. For each signal: MAE,
bias, Pearson and Spearman against the true Dice, and what PL-QW would train on with it as the weight
(the paper's w = q^T 1[q >= tau] at the trainer's tau and at `--thresholds`, normalised within batches of
the training batch size): the weighted mean true Dice of the pseudo-labels and the weights' effective
sample size, next to uniform weights and the oracle (the true Dice as q).
"""
import argparse
import os
import shutil
import sys
import tempfile
from os.path import abspath, dirname, join
from typing import Sequence

import numpy as np
import torch

sys.path.insert(0, dirname(abspath(__file__)))
from common import device_description, print_table, trainer_from_plans, write_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", required=True, help="dataset name or id")
    parser.add_argument("-tr", required=True, help="trainer class of the fold (a quality-guided one)")
    parser.add_argument("-c", default="3d_fullres")
    parser.add_argument("-f", default="0", help="fold (a number or all)")
    parser.add_argument("--batches", type=int, default=10, help="labelled and unlabelled batches each")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--signal-batches", type=int, default=50,
                        help="unlabelled batches for the signal comparison (trainers with withheld labels only)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.8],
                        help="PL-QW thresholds tau of the signal comparison, besides the trainer's own")
    parser.add_argument("--out", default="benchmark_results/pseudo_label_check.json")
    args = parser.parse_args()
    os.environ.setdefault("nnUNet_n_proc_DA", "0")
    if not os.environ.get("nnUNet_results"):
        raise SystemExit("ERROR: set nnUNet_results to the results folder of the trained fold.")
    # the fold is only read: the trainer built here writes its own files (log, debug.json, plans copies)
    # into a scratch results folder, set before nnU-Net reads its paths
    results = os.environ["nnUNet_results"]
    os.environ["nnUNet_results"] = scratch = tempfile.mkdtemp(prefix="pseudo_label_check_")
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunet_qg.networks import highest_resolution
    from nnunet_qg.quality.dice import dice_per_label
    from nnunet_qg.quality.training import one_hot_foreground
    from nnunet_qg.ssl_losses import quality_weights
    from nnunet_qg.unlabeled.two_views import split_views

    dataset = maybe_convert_to_dataset_name(args.d)
    fold_folder = join(results, dataset, f"{args.tr}__nnUNetPlans__{args.c}", f"fold_{args.f}")
    if not os.path.isfile(join(fold_folder, "checkpoint_final.pth")):
        shutil.rmtree(scratch, ignore_errors=True)
        raise SystemExit(f"ERROR: {join(fold_folder, 'checkpoint_final.pth')} not found: train the fold first "
                         f"(nnUNetv2_train {args.d} {args.c} {args.f} -tr {args.tr}).")
    device = torch.device(args.device)
    trainer = trainer_from_plans(recursive_find_trainer_class_by_name(args.tr), dataset, args.c,
                                 args.f if args.f == "all" else int(args.f), device)
    trainer.load_checkpoint(join(fold_folder, "checkpoint_final.pth"))
    if trainer.quality_predictor is None and not trainer.unlabeled_keeps_segmentation:
        shutil.rmtree(scratch, ignore_errors=True)
        raise SystemExit(f"ERROR: {args.tr} trains no quality predictor g and reads no withheld labels: nothing to "
                         f"judge. Use a trainer that trains g (e.g. nnUNetTrainerQGSSL_PLQW_withG) or an evidence "
                         f"arm (withheld labels: the signal comparison).")
    if trainer.quality_predictor is None:  # the signal comparison alone
        signals = judge_signals(trainer, args.signal_batches, getattr(trainer, "quality_temperature", 2.0),
                                sorted({getattr(trainer, "quality_threshold", 0.5), *args.thresholds}))
        finish_loaders(trainer)
        shutil.rmtree(scratch, ignore_errors=True)
        print(f"\nQuality signals of the teacher's pseudo-labels of unlabelled patches against their withheld labels "
              f"({signals['rows'][0]['n']} patches, batches of {signals['batch_size']}; no g in {args.tr})")
        table = print_table(signals["rows"], list(dict.fromkeys(k for r in signals["rows"] for k in r)))
        write_json({"signals": signals, "signal_table": table, "dataset": dataset, "trainer": args.tr,
                    "fold": args.f, "device": device_description(device)}, args.out)
        return
    g = trainer.quality_predictor.eval()
    labels = trainer.label_manager.foreground_labels
    temperature = getattr(trainer, "quality_temperature", 2.0)
    threshold = getattr(trainer, "quality_threshold", 0.5)

    def judge(images: torch.Tensor):
        """Teacher's hard pseudo-label (label values) and g's predicted Dice per label."""
        label_map = trainer.quality.predicted_label_map(trainer.teacher_probabilities(images))
        with torch.no_grad(), trainer._autocast():
            return label_map, g(images, one_hot_foreground(label_map, labels)).float()

    torch.manual_seed(0)
    np.random.seed(0)
    true_l, q_l, q_u = [], [], []
    for _ in range(args.batches):
        batch = next(trainer.dataloader_train)
        data = batch["data"].to(device)
        target = highest_resolution(batch["target"]).to(device)
        label_map, quality = judge(data)
        q_l.append(quality.cpu().numpy())
        true_l += [dice_per_label(label_map[i].cpu().numpy(), target[i].cpu().numpy(), labels)
                   for i in range(data.shape[0])]
        _, view_teacher = split_views(next(trainer.dataloader_unlabeled)["data"].to(device), data.shape[1])
        q_u.append(judge(view_teacher)[1].cpu().numpy())
    signals = judge_signals(trainer, args.signal_batches, temperature, sorted({threshold, *args.thresholds})) \
        if trainer.unlabeled_keeps_segmentation else None
    finish_loaders(trainer)
    shutil.rmtree(scratch, ignore_errors=True)
    true_l, q_l, q_u = np.array(true_l), np.concatenate(q_l), np.concatenate(q_u)
    weights = quality_weights(torch.from_numpy(q_u.mean(1)), temperature, threshold).numpy()
    rows = [{"patches": "labelled", "n": len(q_l), **{f"true Dice {l}": float(true_l[:, i].mean())
                                                       for i, l in enumerate(labels)},
             **{f"g {l}": float(q_l[:, i].mean()) for i, l in enumerate(labels)},
             "g MAE": float(np.abs(q_l - true_l).mean()),
             "weight mean": float(quality_weights(torch.from_numpy(q_l.mean(1)), temperature, threshold).mean()),
             "kept": float((q_l.mean(1) >= threshold).mean())},
            {"patches": "unlabelled", "n": len(q_u), **{f"true Dice {l}": "" for l in labels},
             **{f"g {l}": float(q_u[:, i].mean()) for i, l in enumerate(labels)}, "g MAE": "",
             "weight mean": float(weights.mean()), "kept": float((q_u.mean(1) >= threshold).mean())}]
    print(f"\nTeacher pseudo-labels and g's quality weights, {dataset} {args.tr} fold {args.f}, "
          f"{device_description(device)} (T={temperature}, tau={threshold})")
    table = print_table(rows, list(rows[0]))
    signal_table = None
    if signals is not None:
        print(f"\nQuality signals of the teacher's pseudo-labels of unlabelled patches against their withheld "
              f"labels ({signals['rows'][0]['n']} patches, batches of {signals['batch_size']})")
        signal_table = print_table(signals["rows"], list(dict.fromkeys(k for r in signals["rows"] for k in r)))
    write_json({"signals": signals, "signal_table": signal_table, "dataset": dataset, "trainer": args.tr, "fold": args.f, "device": device_description(device),
                "temperature": temperature, "threshold": threshold, "rows": rows, "table": table,
                "labelled_true_dice": true_l.tolist(), "labelled_g": q_l.tolist(), "unlabelled_g": q_u.tolist()},
               args.out)


def finish_loaders(trainer) -> None:
    """Stop the trainer's loader workers (not on_train_end: that would write a checkpoint)."""
    for loader in (trainer.dataloader_train, trainer.dataloader_val, trainer.dataloader_unlabeled):
        if hasattr(loader, "_finish"):
            loader._finish()


def judge_signals(trainer, batches: int, temperature: float, thresholds: Sequence[float]) -> dict:
    """Every candidate quality signal of the teacher's pseudo-labels on `batches` unlabelled batches, against
    their true Dice from the withheld labels (module docstring)."""
    from nnunet_qg.experiments.pseudo_label_quality import expected_dice_per_label
    from nnunet_qg.mirror_agreement import mirror_agreement, mirror_images, mirrored_logits
    from nnunet_qg.networks import highest_resolution
    from nnunet_qg.quality.dice import soft_dice_per_label
    from nnunet_qg.quality.metrics import agreement
    from nnunet_qg.quality.training import one_hot_foreground
    from nnunet_qg.ssl_losses import effective_sample_size, quality_weights
    from nnunet_qg.unlabeled.two_views import split_views

    g = trainer.quality_predictor
    labels = trainer.label_manager.foreground_labels
    foreground = trainer.foreground_channels
    columns = {k: [] for k in ("true Dice", "g", "self_estimate", "mirror_agreement", "mirror_agreement_all_at_once",
                               "student_agreement") if k != "g" or g is not None}
    batch_size = None
    network = trainer.network.eval()
    for _ in range(batches):
        batch = next(trainer.dataloader_unlabeled)
        data = batch["data"].to(trainer.device)
        view_student, view_teacher = split_views(data, trainer.num_input_channels)
        truth = one_hot_foreground(batch["target"].to(trainer.device), labels)
        batch_size = view_teacher.shape[0]
        probs = trainer.teacher_probabilities(view_teacher)
        pseudo = trainer.channel_one_hot(probs.argmax(1, keepdim=True))
        columns["true Dice"].append(soft_dice_per_label(pseudo, truth).mean(1))
        with torch.no_grad(), trainer._autocast():
            if g is not None:
                columns["g"].append(g(view_teacher, pseudo).float().mean(1))
            student = highest_resolution(network(view_teacher)).float()
        columns["self_estimate"].append(expected_dice_per_label(pseudo, probs[:, foreground]).mean(1))
        columns["student_agreement"].append(
            soft_dice_per_label(trainer.channel_one_hot(student.argmax(1, keepdim=True)), pseudo).mean(1))
        for name, mode in (("mirror_agreement", "each"), ("mirror_agreement_all_at_once", "all_at_once")):
            with torch.no_grad(), trainer._autocast():
                _, mirrored = mirrored_logits(trainer.teacher, view_teacher,
                                              mirror_images(trainer.inference_allowed_mirroring_axes or (), mode))
            columns[name].append(mirror_agreement(pseudo, [trainer.channel_one_hot(m.argmax(1, keepdim=True))
                                                           for m in mirrored]))
    values = {k: torch.cat(v).float().cpu() for k, v in columns.items()}
    truth = values["true Dice"]
    n_batches = len(truth) // batch_size

    def weighting(q: torch.Tensor) -> dict:
        """PL-QW with q as the score, in the drawn batches, at each threshold: the true Dice of the pseudo-labels
        it trains on (weighted mean within a batch, mean over the batches with a weight) and the weights' mean
        effective sample size."""
        out = {}
        d = truth[:n_batches * batch_size].view(n_batches, batch_size)
        for tau in thresholds:
            w = quality_weights(q, temperature, tau)[:n_batches * batch_size].view(n_batches, batch_size)
            used = w.sum(1) > 0
            out[f"trains on (tau {tau})"] = float(((w * d).sum(1)[used] / w.sum(1)[used]).mean())
            out[f"ESS (tau {tau})"] = float(torch.stack([effective_sample_size(row) for row in w]).mean())
        return out

    rows = [{"signal": "uniform (unweighted PL)", "n": len(truth), **weighting(torch.ones_like(truth))},
            {"signal": "oracle (true Dice)", "n": len(truth), **weighting(truth)}]
    for first, second in (("g", "mirror_agreement"), ("self_estimate", "mirror_agreement"), ("g", "self_estimate")):
        if first in values and second in values:
            values[f"{first}+{second}"] = (values[first] + values[second]) / 2
    for name in [k for k in values if k != "true Dice"]:
        figures = agreement(values[name].numpy(), truth.numpy())
        rows.append({"signal": name, "n": figures["n"], "mean": float(values[name].mean()),
                     **{k: figures[k] for k in ("mae", "bias", "pearson", "spearman")}, **weighting(values[name])})
    for row in rows[:2]:
        row["mean"] = float(truth.mean())
    return {"batch_size": batch_size, "rows": rows, "values": {k: v.tolist() for k, v in values.items()}}


if __name__ == "__main__":
    main()
