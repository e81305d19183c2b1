"""Monotone (isotonic) calibration of quality scores to Dice, fitted on cases with ground truth.

A raw quality score ranks cases but its level is not Dice (the network's self-estimate over-rates what
it gets wrong). Where ground truth exists for cases the model did not train on (nnU-Net's
cross-validation: `fold_k/validation/` of each fold; or any labelled cases kept out of training), the
pairs (raw score, true Dice) give, per label, the increasing map from score to Dice that fits them best
(pool-adjacent-violators). It is stored beside the model, as JSON with the number of cases it rests on:

    <model folder>/quality_calibration.json
    {"format": 1, "entries": [{"folds": [...], "checkpoint": ..., "tta": ..., "source": ..., "n_cases": N,
      "estimators": {NAME: {"labels": {"1": {"x": [...], "y": [...], "n": N}, ...}}},
      "volumes_mm3": {"1": {"n", "log_mean", "log_std", "min", "max"}, ...}}]}

One entry per (folds, checkpoint, test-time mirroring), each with a map for every estimator that could be
computed. A score maps to Dice by linear interpolation between the centres of the fitted blocks (`x`,
`y`): increasing, so the ranking is kept. Above the last centre it stays at the last value (it promises no
more than the best calibration cases earned). Below the first centre it falls with the score, slope 1
(clipped at 0): a case scored lower than every calibration case keeps its distance below the lowest of them.
A failed segmentation is often worse than every calibration case, and a map that stayed constant there would
give it the lowest calibration case's Dice and hide it from the flag. `volumes_mm3`: the distribution of each label's true volume in those cases (a predicted volume
far outside it is suspicious).
"""
import datetime
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_json

from nnunet_qg.atomic import atomic_write_json
from nnunet_qg.quality_control.scoring import QualityControlError

CALIBRATION_FILE = "quality_calibration.json"
FORMAT = 1
MIN_CASES = 10  # fewer cases give no calibration worth the name


def pool_adjacent_violators(x: np.ndarray, y: np.ndarray):
    """Isotonic (non-decreasing) least-squares fit of y on x: the fitted blocks' mean x, value and size."""
    order = np.argsort(x, kind="stable")
    x, y = np.asarray(x, float)[order], np.asarray(y, float)[order]
    blocks: List[list] = []  # [sum x, sum y, count]
    for xi, yi in zip(x, y):
        if blocks and blocks[-1][0] / blocks[-1][2] == xi:  # equal scores: one block (centres stay distinct)
            blocks[-1][0] += xi
            blocks[-1][1] += yi
            blocks[-1][2] += 1
        else:
            blocks.append([xi, yi, 1])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] >= blocks[-1][1] / blocks[-1][2]:
            sx, sy, n = blocks.pop()
            blocks[-1][0] += sx
            blocks[-1][1] += sy
            blocks[-1][2] += n
    centres = np.array([b[0] / b[2] for b in blocks])
    values = np.array([b[1] / b[2] for b in blocks])
    sizes = np.array([b[2] for b in blocks])
    return centres, values, sizes


def fit_map(scores: np.ndarray, true: np.ndarray) -> Dict:
    """The calibration map of one label: {"x", "y", "n"} (see the module docstring)."""
    scores, true = np.asarray(scores, float), np.asarray(true, float)
    keep = np.isfinite(scores) & np.isfinite(true)
    centres, values, _ = pool_adjacent_violators(scores[keep], true[keep])
    return {"x": [round(float(v), 6) for v in centres], "y": [round(float(v), 6) for v in np.clip(values, 0, 1)],
            "n": int(keep.sum())}


def apply_map(mapping: Dict, scores: np.ndarray) -> np.ndarray:
    """Calibrated Dice of raw scores through one label's map (below its first centre: slope 1, clipped at 0)."""
    scores = np.asarray(scores, float)
    calibrated = np.interp(scores, mapping["x"], mapping["y"])
    below = scores < mapping["x"][0]
    calibrated[below] = np.maximum(mapping["y"][0] - (mapping["x"][0] - scores[below]), 0.0)
    return calibrated.astype(np.float32)


def volume_statistics(volumes: np.ndarray) -> Dict[str, float]:
    """Distribution of one label's volumes (mm^3) in the calibration cases."""
    logs = np.log1p(np.asarray(volumes, float))
    return {"n": int(len(volumes)), "log_mean": float(logs.mean()), "log_std": float(logs.std()),
            "min": float(np.min(volumes)), "max": float(np.max(volumes))}


def volume_z(statistics: Dict[str, float], volume: float) -> float:
    """How many standard deviations (of log volume) a volume lies from the calibration cases' mean."""
    return float((np.log1p(volume) - statistics["log_mean"]) / max(statistics["log_std"], 1e-3))


def fit_entry(scores: Dict[str, np.ndarray], true: np.ndarray, true_volumes: np.ndarray, labels: Sequence[int],
              key: Dict, source: str) -> Dict:
    """A calibration entry from (N, L) raw scores per estimator, the (N, L) true Dice and the (N, L) true
    volumes of N cases. Refuses fewer than MIN_CASES cases."""
    n = int(len(true))
    if n < MIN_CASES:
        raise QualityControlError(f"Calibration needs at least {MIN_CASES} labelled cases, {source} gave {n}. "
                                  f"Give more cases (--calibration-cases), or run without calibration "
                                  f"(--no-calibration).")
    return {**key, "source": source, "n_cases": n, "created": datetime.date.today().isoformat(),
            "estimators": {name: {"labels": {str(l): fit_map(s[:, i], true[:, i]) for i, l in enumerate(labels)}}
                           for name, s in scores.items()},
            "volumes_mm3": {str(l): volume_statistics(true_volumes[:, i]) for i, l in enumerate(labels)}}


def calibration_key(folds: Sequence, checkpoint: str, tta: bool) -> Dict:
    return {"folds": [str(f) for f in folds], "checkpoint": checkpoint, "tta": bool(tta)}


def load_entries(path: str) -> List[Dict]:
    if not os.path.isfile(path):
        return []
    try:
        data = load_json(path)
    except Exception as e:  # a damaged file is not worth stopping for: it is fitted again
        print(f"WARNING: {path} could not be read ({type(e).__name__}: {e}); ignoring it.")
        return []
    return data.get("entries", []) if data.get("format") == FORMAT else []


def find_entry(path: str, key: Dict) -> Optional[Dict]:
    """The stored entry for (folds, checkpoint, tta), if any."""
    for entry in load_entries(path):
        if all(entry.get(k) == v for k, v in key.items()):
            return entry
    return None


def store_entry(path: str, entry: Dict) -> bool:
    """Add (or replace) an entry in the calibration file (atomic write). False where the folder is not
    writable (the calibration is then used for this run only)."""
    entries = [e for e in load_entries(path)
               if not all(e.get(k) == entry[k] for k in ("folds", "checkpoint", "tta"))] + [entry]
    try:
        atomic_write_json({"format": FORMAT, "entries": entries}, path)
        return True
    except OSError as e:
        print(f"WARNING: could not write {path} ({e}); the calibration is used for this run only.")
        return False


def calibrate(entry: Optional[Dict], estimator: str, scores: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """Calibrated scores (L,) of one case; unchanged without an entry for the estimator."""
    if entry is None or estimator not in entry["estimators"]:
        return np.asarray(scores, np.float32)
    maps = entry["estimators"][estimator]["labels"]
    return np.array([apply_map(maps[str(l)], [scores[i]])[0] for i, l in enumerate(labels)], np.float32)
