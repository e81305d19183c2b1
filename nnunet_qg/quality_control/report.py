"""Quality-control outputs: rows per case and label, CSV/JSON, a printed table, pictures."""
import csv
import io
from typing import Dict, List, Optional

import numpy as np

from nnunet_qg.atomic import atomic_write_json, atomic_write_text
from nnunet_qg.plotting import plt, save_figure
from nnunet_qg.quality.metrics import agreement_per_label, detection_auroc, finite_mean

CSV_COLUMNS = ["case", "label", "label_name", "predicted_dice", "flagged", "raw_score", "self_estimate",
               "tta_agreement", "g", "predicted_volume_mm3", "volume_z", "true_dice"]
SIGNAL_COLUMNS = ("self_estimate", "tta_agreement", "g")


def rows_worst_first(scores: Dict[str, np.ndarray], volumes: Dict[str, Dict[int, float]], labels: List[int],
                     label_names: Dict[int, str], threshold: float,
                     true_dice: Optional[Dict[str, np.ndarray]] = None,
                     raw_scores: Optional[Dict[str, np.ndarray]] = None,
                     signals: Optional[Dict[str, Dict[str, np.ndarray]]] = None,
                     volume_z: Optional[Dict[str, Dict[int, float]]] = None) -> List[dict]:
    """One row per case and label, sorted by predicted Dice (worst first). `raw_scores`: the estimator's
    score before calibration; `signals`: every signal computed ({case: {name: (L,)}}); `volume_z`: the
    predicted volume's distance from the calibration cases' volumes. Missing values are ''."""
    rows = []
    for case, predicted in scores.items():
        for i, label in enumerate(labels):
            row = {"case": case, "label": label, "label_name": label_names.get(label, str(label)),
                   "predicted_dice": float(predicted[i]), "predicted_volume_mm3": volumes[case][label],
                   "flagged": bool(predicted[i] < threshold),
                   "true_dice": float(true_dice[case][i]) if true_dice is not None else "",
                   "raw_score": float(raw_scores[case][i]) if raw_scores is not None else "",
                   "volume_z": float(volume_z[case][label]) if volume_z is not None else ""}
            for name in SIGNAL_COLUMNS:
                value = (signals or {}).get(case, {}).get(name)
                row[name] = float(value[i]) if value is not None else ""
            rows.append(row)
    return sorted(rows, key=lambda r: (r["predicted_dice"], r["case"], r["label"]))


def agreement_with_truth(rows: List[dict], labels: List[int], threshold: Optional[float] = None
                         ) -> Dict[str, Dict[str, float]]:
    """MAE / bias / Pearson / Spearman between predicted and true per-case Dice, per label and mean; with
    `threshold`, also the AUROC of the predicted Dice for finding the cases whose true Dice is below it."""
    cases = sorted({r["case"] for r in rows})
    lookup = {(r["case"], r["label"]): r for r in rows}
    predicted = np.array([[lookup[(c, l)]["predicted_dice"] for l in labels] for c in cases])
    true = np.array([[lookup[(c, l)]["true_dice"] for l in labels] for c in cases])
    out = agreement_per_label(predicted, true, [str(l) for l in labels])
    if threshold is not None:
        for i, l in enumerate(labels):
            out[str(l)]["auroc_below_threshold"] = detection_auroc(predicted[:, i], true[:, i], threshold)
            out[str(l)]["n_below_threshold"] = int((true[:, i] < threshold).sum())
        out["mean"]["auroc_below_threshold"] = finite_mean([out[str(l)]["auroc_below_threshold"] for l in labels])
    return out


def _cell(value, digits: int) -> str:
    return "" if value == "" else f"{value:.{digits}f}"


def write_csv(rows: List[dict], path: str) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, **{k: _cell(r[k], 4) for k in ("predicted_dice", "raw_score", "true_dice", "volume_z")
                                 + SIGNAL_COLUMNS},
                         "predicted_volume_mm3": _cell(r["predicted_volume_mm3"], 1)})
    atomic_write_text(buffer.getvalue(), path)


def write_json(rows: List[dict], path: str, meta: dict) -> None:
    cases: Dict[str, dict] = {}
    for r in rows:
        case = cases.setdefault(r["case"], {"case": r["case"], "labels": {}, "flagged": False})
        case["labels"][str(r["label"])] = {k: r[k] for k in CSV_COLUMNS[2:] if r[k] != ""}
        case["flagged"] = case["flagged"] or r["flagged"]
    for case in cases.values():
        case["worst_predicted_dice"] = min(v["predicted_dice"] for v in case["labels"].values())
    ordered = sorted(cases.values(), key=lambda c: c["worst_predicted_dice"])
    atomic_write_json({**meta, "cases": ordered}, path)


def format_table(rows: List[dict], limit: int = 20) -> str:
    lines = [f"{'case':<24}{'label':<14}{'pred. Dice':>11}{'volume mm3':>12}{'true Dice':>11}  flag"]
    for r in rows[:limit]:
        true = f"{r['true_dice']:.4f}" if r["true_dice"] != "" else "-"
        lines.append(f"{r['case']:<24}{r['label_name'][:13]:<14}{r['predicted_dice']:>11.4f}"
                     f"{r['predicted_volume_mm3']:>12.1f}{true:>11}  {'FLAG' if r['flagged'] else ''}")
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more rows in the CSV")
    return "\n".join(lines)


def plot_case(image: np.ndarray, segmentation: np.ndarray, labels: List[int], title: str, path: str) -> None:
    """Three slices (through the segmented structures, else the middle) with the mask outlines."""
    image = image[0] if image.ndim == segmentation.ndim + 1 else image
    if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4) and segmentation.ndim == 2):
        slices = [None]
    else:
        z = np.nonzero(np.isin(segmentation, labels).any(axis=tuple(range(1, segmentation.ndim))))[0]
        lo, hi = (z.min(), z.max()) if len(z) else (0, segmentation.shape[0] - 1)
        slices = sorted({int(lo + (hi - lo) * q) for q in (0.25, 0.5, 0.75)})
    fig, axes = plt.subplots(1, len(slices), figsize=(4 * len(slices), 4), squeeze=False)
    for ax, z in zip(axes[0], slices):
        img, seg = (image, segmentation) if z is None else (image[z], segmentation[z])
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        for i, label in enumerate(labels):
            if (seg == label).any():
                ax.contour(seg == label, levels=[0.5], colors=[plt.cm.tab10(i % 10)], linewidths=1)
        ax.set_title("2D" if z is None else f"slice {z}", fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
