"""Agreement between predicted and true Dice: MAE, bias, Pearson, Spearman (per label)."""
from typing import Dict, Sequence, Tuple

import numpy as np
from scipy import stats


def agreement(predicted: np.ndarray, true: np.ndarray) -> Dict[str, float]:
    """MAE, bias (mean of predicted - true: < 0 means g under-rates), Pearson and Spearman of two
    1-D arrays (correlations are nan when undefined)."""
    predicted, true = np.asarray(predicted, float), np.asarray(true, float)
    empty = not len(true)
    out = {"n": int(len(true)), "mae": float("nan") if empty else float(np.mean(np.abs(predicted - true))),
           "bias": float("nan") if empty else float(np.mean(predicted - true)),
           "pearson": float("nan"), "spearman": float("nan")}
    if len(true) >= 3 and np.std(true) > 0 and np.std(predicted) > 0:
        out["pearson"] = float(stats.pearsonr(predicted, true)[0])
        out["spearman"] = float(stats.spearmanr(predicted, true)[0])
    return out


def agreement_per_label(predicted: np.ndarray, true: np.ndarray, label_names) -> Dict[str, Dict[str, float]]:
    """`agreement` for each column of (N, L) arrays, plus 'mean' over labels."""
    per_label = {str(name): agreement(predicted[:, i], true[:, i]) for i, name in enumerate(label_names)}
    keys = ("mae", "bias", "pearson", "spearman")
    per_label["mean"] = {k: finite_mean([v[k] for v in per_label.values()]) for k in keys}
    per_label["mean"]["n"] = int(len(true))
    return per_label


def pooled_agreement_per_label(groups: Sequence[Dict[str, Tuple[np.ndarray, np.ndarray]]], label_names
                               ) -> Dict[str, Dict]:
    """Per key of `groups` (e.g. a kind of mask, or a predictor): its (predicted, true) (N, L) pairs of every
    group (batch, network) concatenated, as "pairs", with agreement_per_label's figures on them."""
    pooled = {}
    for key in groups[0]:
        predicted = np.concatenate([group[key][0] for group in groups])
        true = np.concatenate([group[key][1] for group in groups])
        pooled[key] = {"pairs": (predicted, true), **agreement_per_label(predicted, true, label_names)}
    return pooled


def finite_mean(values) -> float:
    """Mean of the finite values (nan marks 'does not apply' or 'undefined'); nan if there are none."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def detection_auroc(predicted: np.ndarray, true: np.ndarray, below: float) -> float:
    """How well low predicted Dice finds the cases whose true Dice is below `below`: the probability that
    such a case scores lower than a case at or above it (ties count half; the area under the ROC curve of
    -predicted as a detector). nan when either group is empty."""
    predicted, true = np.asarray(predicted, float), np.asarray(true, float)
    failed, fine = predicted[true < below], predicted[true >= below]
    if not len(failed) or not len(fine):
        return float("nan")
    ranks = stats.rankdata(np.concatenate([failed, fine]))
    # Mann-Whitney U of the failed cases' scores being lower: count pairs where failed < fine
    u_fine_higher = ranks[len(failed):].sum() - len(fine) * (len(fine) + 1) / 2
    return float(u_fine_higher / (len(failed) * len(fine)))
