"""How well nnUNetv2_predict_quality's estimators predict the true Dice of whole held-out cases.

    python benchmarks/quality_control_benchmark.py --model <results>/DatasetXXX/<trainer>__<plans>__2d --fold all \
        --stages checkpoint_epoch_4.pth checkpoint_epoch_9.pth ... checkpoint_final.pth \
        --test-images <raw>/imagesTs --test-labels <raw>/labelsTs \
        --calibration-images <dir> --calibration-labels <dir> [--g quality_predictor.pth] \
        --work benchmark_results/qc --out benchmarks/results/quality_control_summary.json

Every network (`--stages`, the last one is "the final network") predicts the test cases and the
calibration cases (labelled cases it did not train on: the stand-in for nnU-Net's cross-validation
predictions) with the command's own code (nnunet_qg.quality_control.signals: nnU-Net's predictor, its
test-time mirroring, every signal). For every estimator:
- (a) within one network: the final network's test cases, after the isotonic calibration fitted on its
  calibration cases (what the command does by default), and raw;
- (b) pooled: every network's test cases, each calibrated with its own network's calibration cases,
  pooled (predictions of very different quality, the paper's kind of test set);
MAE, bias, Pearson, Spearman per label and their mean, and the AUROC of the calibrated score for finding
cases with true Dice below 0.7 (and for (a) below the label's median - 0.1). Also the volume signal: the
AUROC of -|z| of the predicted volume against the calibration cases' true volumes. The per-case results
of each network are cached in --work (`--reuse` re-judges from them; `--g` adds the g signal later).
"""
import argparse
import os
from os.path import abspath, basename, dirname, isfile, join
from typing import Dict, List

import numpy as np
import torch


from nnunet_qg.atomic import atomic_path, atomic_write_json  # noqa: E402
from nnunet_qg.benchmark.device import describe_device  # noqa: E402
from nnunet_qg.source_commit import source_commit  # noqa: E402
from nnunet_qg.plotting import plt, save_figure  # noqa: E402
from nnunet_qg.quality.dice import dice_per_label  # noqa: E402
from nnunet_qg.quality.metrics import agreement_per_label, detection_auroc, finite_mean  # noqa: E402
from nnunet_qg.quality.network import load_quality_predictor  # noqa: E402
from nnunet_qg.quality_control.calibration import fit_map, apply_map, volume_statistics, volume_z  # noqa: E402
from nnunet_qg.quality_control.scoring import case_ids_and_images, label_volumes  # noqa: E402
from nnunet_qg.quality_control.signals import DEFAULT_ESTIMATOR, ESTIMATORS, G, QualitySignals, components  # noqa: E402

FAILURE_BELOW = 0.7


def judge_network(model: str, fold: str, checkpoint: str, sets: Dict[str, tuple], device: torch.device,
                  cache: str, g_file: str = None, reuse: bool = False) -> Dict[str, dict]:
    """Per set of cases ('test', 'calibration'): case ids, every base signal (N, L), true Dice (N, L), true and
    predicted volumes (N, L). Cached in `cache` (.npz); with `g_file` the g signal is added to a cached result."""
    if reuse and isfile(cache):
        result = load_cache(cache)
        if g_file is None or G in result["test"]["signals"]:
            return result
    else:
        result = None
    g_models = [load_quality_predictor(g_file, device)] if g_file else []
    signals = QualitySignals(model, [fold], checkpoint, device, tta=True, g_models=g_models)
    reader = signals.reader
    if result is not None:  # only the g signal is missing: score the stored masks
        for name, (images, _) in sets.items():
            r = result[name]
            files = case_ids_and_images(images, signals.scorer.dataset_json["file_ending"], None)
            scores = []
            for case, seg_pre in zip(r["cases"], r["segmentations_preprocessed"]):
                image, properties = reader().read_images(files[case])
                data, _, _ = signals.scorer.preprocessor.run_case_npy(
                    image, None, properties, signals.scorer.plans_manager, signals.scorer.configuration_manager,
                    signals.scorer.dataset_json)
                scores.append(signals.scorer.score_preprocessed(data.astype(np.float32), seg_pre))
            r["signals"][G] = np.stack(scores)
        save_cache(result, cache)
        return result
    need = signals.available()
    file_ending = signals.scorer.dataset_json["file_ending"]
    result = {}
    for name, (images, labels) in sets.items():
        files = case_ids_and_images(images, file_ending, None)
        r = {"cases": [], "signals": {s: [] for s in need}, "true": [], "true_volumes": [], "predicted_volumes": [],
             "segmentations_preprocessed": []}
        for i, (case, image_files) in enumerate(files.items()):
            out = signals.case(image_files, need)
            reference, ref_properties = reader().read_seg(join(labels, case + file_ending))
            r["cases"].append(case)
            for s in need:
                r["signals"][s].append(out["signals"][s])
            r["true"].append(dice_per_label(out["segmentation"], reference, signals.labels))
            spacing = ref_properties["spacing"]
            r["true_volumes"].append(list(label_volumes(reference, spacing, signals.labels).values()))
            r["predicted_volumes"].append(list(label_volumes(out["segmentation"], spacing, signals.labels).values()))
            r["segmentations_preprocessed"].append(out["segmentation_preprocessed"].astype(np.int8))
            print(f"  {basename(checkpoint)} {name} {i + 1}/{len(files)} {case}: true "
                  f"{np.round(r['true'][-1], 3)}, " + ", ".join(f"{s} {np.round(v[-1], 3)}"
                                                                for s, v in r["signals"].items()), flush=True)
        r["signals"] = {s: np.stack(v) for s, v in r["signals"].items()}
        for k in ("true", "true_volumes", "predicted_volumes"):
            r[k] = np.asarray(r[k], dtype=np.float64)
        result[name] = r
    save_cache(result, cache)
    return result


def save_cache(result: Dict[str, dict], path: str) -> None:
    arrays = {}
    for name, r in result.items():
        arrays[f"{name}/cases"] = np.array(r["cases"])
        for k in ("true", "true_volumes", "predicted_volumes"):
            arrays[f"{name}/{k}"] = r[k]
        for s, v in r["signals"].items():
            arrays[f"{name}/signal/{s}"] = v
        for i, seg in enumerate(r["segmentations_preprocessed"]):
            arrays[f"{name}/seg/{i}"] = seg
    os.makedirs(dirname(abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)


def load_cache(path: str) -> Dict[str, dict]:
    result: Dict[str, dict] = {}
    with np.load(path) as f:
        for key in f.files:
            name, rest = key.split("/", 1)
            r = result.setdefault(name, {"signals": {}, "segmentations_preprocessed": {}})
            if rest.startswith("signal/"):
                r["signals"][rest[len("signal/"):]] = f[key]
            elif rest.startswith("seg/"):
                r["segmentations_preprocessed"][int(rest[4:])] = f[key]
            else:
                r[rest] = list(f[key]) if rest == "cases" else f[key]
    for r in result.values():
        r["segmentations_preprocessed"] = [r["segmentations_preprocessed"][i] for i in range(len(r["cases"]))]
    return result


def estimator_scores(r: dict, estimator: str) -> np.ndarray:
    return np.mean([r["signals"][s] for s in components(estimator)], axis=0)


def calibrated(network: Dict[str, dict], estimator: str) -> np.ndarray:
    """The test scores of one network through the isotonic map fitted on its calibration cases (per label)."""
    cal, test = network["calibration"], network["test"]
    cal_scores, test_scores = estimator_scores(cal, estimator), estimator_scores(test, estimator)
    return np.stack([apply_map(fit_map(cal_scores[:, i], cal["true"][:, i]), test_scores[:, i])
                     for i in range(test_scores.shape[1])], 1)


def figures(predicted: np.ndarray, true: np.ndarray, names: List[str], median_minus: bool = False) -> dict:
    """agreement_per_label + AUROC (< 0.7, and < median - 0.1 per label) with their means over labels."""
    out = agreement_per_label(predicted, true, names)
    for i, name in enumerate(names):
        out[name][f"auroc_below_{FAILURE_BELOW}"] = detection_auroc(predicted[:, i], true[:, i], FAILURE_BELOW)
        out[name][f"n_below_{FAILURE_BELOW}"] = int((true[:, i] < FAILURE_BELOW).sum())
        if median_minus:
            below = float(np.median(true[:, i])) - 0.1
            out[name]["auroc_below_median-0.1"] = detection_auroc(predicted[:, i], true[:, i], below)
            out[name]["median-0.1"] = below
    for key in [f"auroc_below_{FAILURE_BELOW}"] + (["auroc_below_median-0.1"] if median_minus else []):
        out["mean"][key] = finite_mean([out[n][key] for n in names])
    return out


def volume_detection(networks: Dict[str, Dict[str, dict]], names: List[str]) -> Dict[str, float]:
    """AUROC of -|z| (predicted volume vs the calibration cases' true volumes) for true Dice < 0.7."""
    final = networks[list(networks)[-1]]
    out = {}
    for scope, items in (("within_network", [final]), ("pooled", list(networks.values()))):
        aurocs = []
        for i in range(len(names)):
            z, t = [], []
            for n in items:
                stats = volume_statistics(n["calibration"]["true_volumes"][:, i])
                z += [-abs(volume_z(stats, v)) for v in n["test"]["predicted_volumes"][:, i]]
                t += list(n["test"]["true"][:, i])
            aurocs.append(detection_auroc(np.array(z), np.array(t), FAILURE_BELOW))
        out[scope] = finite_mean(aurocs)
    return out


def plot(networks: Dict[str, Dict[str, dict]], estimators: List[str], names: List[str], path: str,
         default: str) -> None:
    """Calibrated predicted vs true Dice: a row per estimator, (a) the final network, (b) every network pooled."""
    final = list(networks)[-1]
    with plt.style.context("default"):
        fig, axes = plt.subplots(len(estimators), 2, figsize=(10, 4.6 * len(estimators)), squeeze=False)
        colours = plt.cm.viridis(np.linspace(0, 0.9, len(networks)))
        for row, estimator in zip(axes, estimators):
            for ax, scope in zip(row, ("a", "b")):
                items = [final] if scope == "a" else list(networks)
                pred = np.concatenate([calibrated(networks[n], estimator) for n in items])
                true = np.concatenate([networks[n]["test"]["true"] for n in items])
                for k, n in enumerate(items):
                    p, t = calibrated(networks[n], estimator), networks[n]["test"]["true"]
                    for i, marker in zip(range(len(names)), "o^sv"):
                        ax.scatter(t[:, i], p[:, i], s=10, alpha=0.6, marker=marker,
                                   color=colours[list(networks).index(n)],
                                   label=f"{n}, label {names[i]}" if scope == "b" or k == 0 else None)
                ax.plot([0, 1], [0, 1], "k--", linewidth=1)
                ax.axvline(FAILURE_BELOW, color="r", linewidth=0.6, alpha=0.5)
                m = figures(pred, true, names)["mean"]
                ax.set_title(f"{estimator}{' (default)' if estimator == default else ''}: "
                             f"{'(a) final network' if scope == 'a' else '(b) all networks pooled'}\n"
                             f"MAE {m['mae']:.3f}, bias {m['bias']:+.3f}, r {m['pearson']:.3f}, "
                             f"rho {m['spearman']:.3f}, AUROC<0.7 {m['auroc_below_0.7']:.3f}", fontsize=9)
                ax.set_xlabel("true Dice")
                ax.set_ylabel("predicted Dice (calibrated)")
                ax.set_xlim(-0.02, 1.02)
                ax.set_ylim(-0.02, 1.02)
                ax.grid(alpha=0.3)
                if scope == "b":
                    ax.legend(fontsize=6, loc="upper left", ncol=2)
        fig.tight_layout()
        save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="trained model folder (<trainer>__<plans>__<configuration>)")
    parser.add_argument("--fold", default="all")
    parser.add_argument("--stages", nargs="+", required=True, help="checkpoints, the final network last")
    parser.add_argument("--test-images", required=True)
    parser.add_argument("--test-labels", required=True)
    parser.add_argument("--calibration-images", required=True)
    parser.add_argument("--calibration-labels", required=True)
    parser.add_argument("--g", default=None, help="a quality_predictor.pth for the g signal (same plans)")
    parser.add_argument("--work", default="benchmark_results/quality_control")
    parser.add_argument("--reuse", action="store_true", help="judge from the cached per-case results")
    parser.add_argument("--out", default="benchmarks/results/quality_control_summary.json")
    parser.add_argument("--plot", default=None, help="default: --out with .png")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--note", default="", help="stored with the results (e.g. where g comes from)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sets = {"test": (args.test_images, args.test_labels), "calibration": (args.calibration_images, args.calibration_labels)}
    networks = {}
    for checkpoint in args.stages:
        name = "final" if checkpoint == args.stages[-1] else checkpoint.replace("checkpoint_", "").replace(".pth", "")
        print(f"Network {name} ({checkpoint})", flush=True)
        networks[name] = judge_network(args.model, args.fold, checkpoint, sets, device,
                                       join(args.work, f"{checkpoint.replace('.pth', '')}.npz"), args.g, args.reuse)
    names = ["1", "2"] if networks["final"]["test"]["true"].shape[1] == 2 else \
        [str(i + 1) for i in range(networks["final"]["test"]["true"].shape[1])]
    available = [e for e in ESTIMATORS if all(s in networks["final"]["test"]["signals"] for s in components(e))]
    results, summary = {}, {}
    for estimator in available:
        final = networks["final"]
        within = figures(calibrated(final, estimator), final["test"]["true"], names, median_minus=True)
        within_raw = figures(estimator_scores(final["test"], estimator), final["test"]["true"], names, median_minus=True)
        pooled_pred = np.concatenate([calibrated(n, estimator) for n in networks.values()])
        pooled_raw = np.concatenate([estimator_scores(n["test"], estimator) for n in networks.values()])
        pooled_true = np.concatenate([n["test"]["true"] for n in networks.values()])
        pooled = figures(pooled_pred, pooled_true, names)
        results[estimator] = {"within_network": within, "within_network_uncalibrated": within_raw,
                              "pooled": pooled, "pooled_uncalibrated": figures(pooled_raw, pooled_true, names)}
        keys = ("mae", "bias", "pearson", "spearman", f"auroc_below_{FAILURE_BELOW}")
        summary[estimator] = {
            "within_network": {**{k: within["mean"][k] for k in keys}, "n": within["mean"]["n"],
                               "auroc_below_median-0.1": within["mean"]["auroc_below_median-0.1"]},
            "pooled": {**{k: pooled["mean"][k] for k in keys}, "n": pooled["mean"]["n"]},
            "within_network_uncalibrated": {**{k: within_raw["mean"][k] for k in keys}, "n": within_raw["mean"]["n"]},
            "pooled_uncalibrated": {**{k: results[estimator]["pooled_uncalibrated"]["mean"][k] for k in keys},
                                    "n": pooled["mean"]["n"]}}
    true_dice = {n: {"mean": [round(float(v), 4) for v in r["test"]["true"].mean(0)],
                     "min": [round(float(v), 4) for v in r["test"]["true"].min(0)],
                     "max": [round(float(v), 4) for v in r["test"]["true"].max(0)],
                     "n_below_0.7": [int(v) for v in (r["test"]["true"] < FAILURE_BELOW).sum(0)]}
                 for n, r in networks.items()}
    out = {"commit": source_commit(), "device": describe_device(args.device), "default": DEFAULT_ESTIMATOR,
           "estimators": summary,
           "volume_signal_auroc_below_0.7": volume_detection(networks, names),
           "setup": {"model": args.model, "fold": args.fold, "stages": args.stages, "g": args.g, "note": args.note,
                     "test_cases": len(networks["final"]["test"]["cases"]),
                     "calibration_cases": len(networks["final"]["calibration"]["cases"]),
                     "calibration": "isotonic per label, fitted on each network's own calibration cases",
                     "true_test_dice_per_network": true_dice},
           "per_label": results}
    atomic_write_json(out, args.out)
    plot_path = args.plot or args.out.replace(".json", ".png")
    shown = [e for e in (G, "self_estimate", "tta_agreement", "self_estimate+tta_agreement", "g+self_estimate")
             if e in available]
    plot(networks, shown, names, plot_path, DEFAULT_ESTIMATOR)
    print(f"\n{'estimator':<30}{'(a) MAE':>9}{'bias':>8}{'r':>7}{'rho':>7}{'AUC.7':>7}{'AUCmed':>8}"
          f"{'(b) MAE':>10}{'bias':>8}{'r':>7}{'rho':>7}{'AUC.7':>7}")
    for e, s in summary.items():
        a, b = s["within_network"], s["pooled"]
        print(f"{e:<30}{a['mae']:>9.3f}{a['bias']:>+8.3f}{a['pearson']:>7.3f}{a['spearman']:>7.3f}"
              f"{a['auroc_below_0.7']:>7.3f}{a['auroc_below_median-0.1']:>8.3f}{b['mae']:>10.3f}{b['bias']:>+8.3f}"
              f"{b['pearson']:>7.3f}{b['spearman']:>7.3f}{b['auroc_below_0.7']:>7.3f}")
    print("uncalibrated:")
    for e, s in summary.items():
        a, b = s["within_network_uncalibrated"], s["pooled_uncalibrated"]
        print(f"{e:<30}{a['mae']:>9.3f}{a['bias']:>+8.3f}{a['pearson']:>7.3f}{a['spearman']:>7.3f}"
              f"{a['auroc_below_0.7']:>7.3f}{'':>8}{b['mae']:>10.3f}{b['bias']:>+8.3f}"
              f"{b['pearson']:>7.3f}{b['spearman']:>7.3f}{b['auroc_below_0.7']:>7.3f}")
    print(f"volume signal AUROC (<0.7): {out['volume_signal_auroc_below_0.7']}")
    print(f"Written: {args.out}, {plot_path}")


if __name__ == "__main__":
    main()
