"""Quality signals of one case's segmentation, from the nnU-Net model that predicts it (no ground truth).

Every signal estimates the Dice of the segmentation, per foreground label, in [0, 1]:

- `self_estimate`: the network's own expected Dice of the mask: the soft Dice of the mask against the
  network's softmax (per label: 2 sum(p * m) / (sum(p) + sum(m)); both empty: 1). It needs the
  network's probabilities, in the case's original space: predicted here (nnU-Net's predictor, its
  preprocessing, sliding window and export), or read from the `CASE.npz` that
  `nnUNetv2_predict --save_probabilities` wrote beside the segmentation.
- `tta_agreement`: the mean Dice between the mask and each single prediction that nnU-Net averages
  (every fold x every mirroring of its test-time augmentation), in the preprocessed space: how much the
  network's predictions disagree with each other on this case. Needs at least two (fold, mirror) members.
- `g`: the trained quality predictor g(image, mask) of the model folder (nnunet_qg's QG trainers; see
  scoring.py: sliding window, label-volume-weighted).

and combinations of them (COMBINATIONS: the plain mean of their signals). The prediction is nnU-Net's:
the logits of every member, averaged, are what nnUNetv2_predict averages (test-time mirroring done on the
whole preprocessed case instead of each tile: the same windows, mirrored; equal up to rounding and, where a
case is smaller than the patch by an odd number of voxels, a one-voxel shift of the padding).
"""
import itertools
from os.path import isfile
from typing import Dict, List, Optional, Sequence, Set

import numpy as np
import torch

from nnunet_qg.quality_control.scoring import CaseScorer, QualityControlError

SELF_ESTIMATE = "self_estimate"
TTA_AGREEMENT = "tta_agreement"
G = "g"
BASE_SIGNALS = (SELF_ESTIMATE, TTA_AGREEMENT, G)
# estimator -> the base signals it averages
COMBINATIONS = {"self_estimate+tta_agreement": (SELF_ESTIMATE, TTA_AGREEMENT),
                "g+self_estimate": (G, SELF_ESTIMATE)}
ESTIMATORS = BASE_SIGNALS + tuple(COMBINATIONS)
# the estimator with the best measured agreement (benchmarks/quality_control_benchmark.py, docs/results.md), and
# the one used instead where a model gives a single prediction per case (one fold, --disable_tta)
DEFAULT_ESTIMATOR = "self_estimate+tta_agreement"
FALLBACK_ESTIMATOR = SELF_ESTIMATE


def components(estimator: str) -> tuple:
    """The base signals an estimator is made of."""
    if estimator in COMBINATIONS:
        return COMBINATIONS[estimator]
    if estimator in BASE_SIGNALS:
        return (estimator,)
    raise QualityControlError(f"Unknown estimator '{estimator}'; choose one of {', '.join(ESTIMATORS)}.")


def combine(signals: Dict[str, np.ndarray], estimator: str) -> np.ndarray:
    """The estimator's raw score per label from the base signals of one case."""
    return np.mean([signals[s] for s in components(estimator)], axis=0).astype(np.float32)


def expected_dice(segmentation: np.ndarray, probabilities: np.ndarray, labels: Sequence[int],
                  all_labels: Sequence[int]) -> np.ndarray:
    """The network's expected Dice of `segmentation` (any array of label values) under its softmax
    `probabilities` (one channel per label of `all_labels`, same spatial shape), per foreground label."""
    out = np.empty(len(labels), dtype=np.float32)
    for i, label in enumerate(labels):
        p = probabilities[list(all_labels).index(label)].astype(np.float32, copy=False)
        m = segmentation == label
        total = float(p.sum(dtype=np.float64)) + float(m.sum())
        out[i] = 1.0 if total <= 1e-6 else 2.0 * float(p[m].sum(dtype=np.float64)) / total
    return np.clip(out, 0.0, 1.0)


def mean_agreement(members: Sequence[np.ndarray], segmentation: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """Mean over `members` (label maps) of their Dice with `segmentation`, per label (both empty: 1)."""
    out = np.zeros(len(labels), dtype=np.float64)
    masks = [segmentation == label for label in labels]
    for member in members:
        for i, label in enumerate(labels):
            a = member == label
            total = int(a.sum()) + int(masks[i].sum())
            out[i] += 1.0 if total == 0 else 2.0 * np.logical_and(a, masks[i]).sum() / total
    return (out / max(len(members), 1)).astype(np.float32)


def mirror_combinations(axes: Optional[Sequence[int]]) -> List[tuple]:
    """() and every combination of the mirroring axes (nnU-Net's test-time augmentation)."""
    axes = list(axes or [])
    return [()] + [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]


def read_probabilities(npz_file: str, segmentation: np.ndarray, num_classes: int) -> np.ndarray:
    """The `probabilities` of an .npz written by nnUNetv2_predict --save_probabilities, checked against the
    segmentation it belongs to (same spatial shape, one channel per label)."""
    from nnunet_qg.dataset_conversion.input_checks import reading

    fix = ("Write it again with nnUNetv2_predict --save_probabilities, or delete it (the probabilities are "
           "then predicted).")
    with reading(npz_file, fix=fix):
        with np.load(npz_file) as f:
            if "probabilities" not in f:
                raise ValueError(f"no 'probabilities' array (keys: {', '.join(f.files)})")
            probabilities = f["probabilities"]
    if probabilities.shape != (num_classes, *segmentation.shape[1:]):
        raise QualityControlError(
            f"{npz_file} holds probabilities of shape {probabilities.shape}, its segmentation needs "
            f"{(num_classes, *segmentation.shape[1:])} (one channel per label). {fix}")
    return probabilities


@torch.inference_mode()
def predict_members(predictor, data: np.ndarray, mirrors: Sequence[tuple], patch_ndim: int, all_labels: Sequence[int],
                    parameter_sets: Optional[Sequence[dict]] = None):
    """The mean logits of a preprocessed case over every (parameter set, mirror) member and each member's label
    map: nnU-Net's predictor (`use_mirroring=False`; the mirrors are done here, on the whole case), its
    network as it is when `parameter_sets` is None (a trainer's live network)."""
    network = getattr(predictor.network, "_orig_mod", predictor.network)
    offset = data.ndim - patch_ndim  # (C, Z, X, Y) with 2D patches: mirror X, Y
    values = np.asarray(all_labels, dtype=np.uint8 if max(all_labels) < 256 else np.int16)
    x = torch.from_numpy(data)
    total, members = None, []
    for params in (parameter_sets if parameter_sets is not None else [None]):
        if params is not None:
            network.load_state_dict(params)
        for mirror in mirrors:
            dims = [a + offset for a in mirror]
            logits = predictor.predict_sliding_window_return_logits(torch.flip(x, dims) if dims else x).float().cpu()
            if dims:
                logits = torch.flip(logits, dims)
            members.append(values[logits.argmax(0).numpy()])
            total = logits if total is None else total.add_(logits)
    return total / len(members), members


def estimate_preprocessed(logits: torch.Tensor, members: Sequence[np.ndarray], segmentation: np.ndarray,
                          labels: Sequence[int], all_labels: Sequence[int]) -> np.ndarray:
    """The default estimator's raw score per label of `segmentation` (the label map of the mean `logits`), from
    predict_members' output, in the preprocessed space (the fallback estimator with a single member)."""
    signals = {SELF_ESTIMATE: expected_dice(segmentation, torch.softmax(logits, 0).numpy(), labels, all_labels)}
    if len(members) >= 2:
        signals[TTA_AGREEMENT] = mean_agreement(members, segmentation, labels)
    return combine(signals, DEFAULT_ESTIMATOR if len(members) >= 2 else FALLBACK_ESTIMATOR)


class QualitySignals:
    """Predicts cases with a trained model folder (nnU-Net's predictor) and computes the quality signals of
    a segmentation: the model's own prediction, or one given as a label map."""

    def __init__(self, model_folder: str, folds: Sequence, checkpoint: str, device: torch.device,
                 tta: bool = True, g_models: Optional[list] = None):
        """`g_models`: the quality predictors for the `g` signal (default: none; see load_fold_predictors)."""
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        self.scorer = CaseScorer(model_folder, folds, device, models=list(g_models or []))
        if self.scorer.label_manager.has_regions:
            raise QualityControlError(f"{model_folder} was trained on regions; quality control supports label "
                                      f"maps (one label per voxel) only.")
        self.predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False, device=device,
                                         verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        self.predictor.initialize_from_trained_model_folder(model_folder, list(folds), checkpoint)
        self.mirrors = mirror_combinations(self.predictor.allowed_mirroring_axes if tta else None)
        self.labels = self.scorer.labels
        self.all_labels = [int(l) for l in self.scorer.label_manager.all_labels]
        self.device = device
        self.num_members = len(self.predictor.list_of_parameters) * len(self.mirrors)

    @property
    def reader(self):
        return self.scorer.plans_manager.image_reader_writer_class

    def available(self) -> Set[str]:
        """The base signals this model can give."""
        out = {SELF_ESTIMATE}
        if self.num_members >= 2:
            out.add(TTA_AGREEMENT)
        if self.scorer.models:
            out.add(G)
        return out

    def predict_members(self, data: np.ndarray):
        """The mean logits over every (fold, mirror) member (what nnU-Net's predictor returns) and each
        member's label map, in the preprocessed space."""
        return predict_members(self.predictor, data, self.mirrors, len(self.scorer.patch_size), self.all_labels,
                               self.predictor.list_of_parameters)

    def to_original(self, logits: torch.Tensor, properties: dict):
        """nnU-Net's export: segmentation and probabilities in the case's original space."""
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        return convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, self.scorer.plans_manager, self.scorer.configuration_manager, self.scorer.label_manager,
            properties, return_probabilities=True)

    def case(self, image_files: List[str], need: Set[str], segmentation: Optional[np.ndarray] = None,
             probabilities: Optional[np.ndarray] = None) -> dict:
        """The signals in `need` for one case. Without `segmentation` the model predicts it (returned as
        'segmentation', in the original space as the reader's read_seg gives it, with 'properties' for
        write_seg); with it (read_seg's layout), that mask is scored, and `probabilities` (original space,
        one channel per label, e.g. from an .npz) spare the prediction where no other signal needs it. Also
        returned: 'signals' {name: (L,)}, 'segmentation_preprocessed' (the mask in the preprocessed space)."""
        missing = set(need) - self.available()
        if missing:
            raise QualityControlError(f"Signal(s) {', '.join(sorted(missing))} not available for this model "
                                      f"(tta_agreement: needs test-time mirroring or several folds; g: a model "
                                      f"trained with a quality predictor).")
        image, properties = self.reader().read_images(image_files)
        data, seg_pre, properties = self.scorer.preprocessor.run_case_npy(
            image, None if segmentation is None else segmentation.copy(), properties, self.scorer.plans_manager,
            self.scorer.configuration_manager, self.scorer.dataset_json)
        data = data.astype(np.float32)
        belief_g = G in need and any(m.uses_belief for m in self.scorer.models)
        predict = segmentation is None or TTA_AGREEMENT in need or belief_g or (
            SELF_ESTIMATE in need and probabilities is None)
        out = {"properties": properties, "signals": {}}
        logits = members = None
        if predict:
            logits, members = self.predict_members(data)
            if segmentation is None or (SELF_ESTIMATE in need and probabilities is None):
                seg_orig, probabilities_orig = self.to_original(logits, properties)
                if segmentation is None:
                    segmentation = seg_orig[None]  # read_seg's layout: (1, spatial...)
                    values = np.asarray(self.all_labels, dtype=np.int16)
                    seg_pre = values[logits.argmax(0).numpy()][None]
                if probabilities is None:
                    probabilities = probabilities_orig
        seg_pre = np.maximum(seg_pre, 0)
        if SELF_ESTIMATE in need:
            out["signals"][SELF_ESTIMATE] = expected_dice(segmentation[0], probabilities, self.labels,
                                                          self.all_labels)
        if TTA_AGREEMENT in need:
            out["signals"][TTA_AGREEMENT] = mean_agreement(members, seg_pre[0], self.labels)
        if G in need:
            belief = None
            if belief_g:
                foreground = [self.all_labels.index(l) for l in self.labels]
                belief = torch.softmax(logits, 0)[foreground].numpy()
            out["signals"][G] = self.scorer.score_preprocessed(data, seg_pre, belief=belief)
        out["segmentation"] = segmentation
        out["segmentation_preprocessed"] = seg_pre
        return out


def npz_beside(segmentation_file: str, file_ending: str) -> Optional[str]:
    """The CASE.npz that nnUNetv2_predict --save_probabilities writes beside CASE<file_ending>, if there."""
    path = segmentation_file[:-len(file_ending)] + ".npz"
    return path if isfile(path) else None
