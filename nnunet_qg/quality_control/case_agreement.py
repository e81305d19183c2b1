"""How well quality predictors rank whole held-out cases: predicted vs true per-case Dice.

The patch-level measurements inside the trainers use the fold's few validation cases (Hippocampus
10 %: 4 cases, so 50 validation patches are near-duplicates). This judges g where it is used, on
whole labelled cases that no network trained on (e.g. the 60 test cases): the model predicts each
case in its preprocessed space (nnU-Net's preprocessing and sliding window, no mirroring), every
quality predictor scores the prediction as nnUNetv2_predict_quality does, and the network's own
expected Dice (soft Dice between its hard prediction and its softmax) is scored next to them as the
baseline that needs no g. True Dice is computed in the preprocessed space.
"""
from typing import Dict, List

import numpy as np
import torch
from tqdm import tqdm

from nnunet_qg.quality.dice import dice_per_label, soft_dice_per_label
from nnunet_qg.quality.metrics import agreement_per_label, pooled_agreement_per_label
from nnunet_qg.quality.network import QualityPredictor
from nnunet_qg.quality.training import one_hot_foreground
from nnunet_qg.quality_control.scoring import CaseScorer, case_ids_and_images, segmentation_file_for

SELF_ESTIMATE = "self_estimate"


def agreement_on_cases(model_folder: str, fold: int, checkpoint: str, images_folder: str, labels_folder: str,
                       predictors: Dict[str, QualityPredictor], device: torch.device) -> Dict[str, dict]:
    """Per quality predictor (and SELF_ESTIMATE): the (predicted, true) per-case Dice pairs and
    MAE / bias / Pearson / Spearman per label, over every case of `images_folder`."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False, device=device,
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_folder, [fold], checkpoint)
    scorer = CaseScorer(model_folder, [fold], device, models=list(predictors.values()))
    file_ending = scorer.dataset_json["file_ending"]
    cases = case_ids_and_images(images_folder, file_ending, len(scorer.dataset_json["channel_names"]))
    reader = scorer.plans_manager.image_reader_writer_class
    labels, all_labels = scorer.labels, [int(l) for l in scorer.label_manager.all_labels]
    foreground = [all_labels.index(l) for l in labels]
    scores: Dict[str, List[np.ndarray]] = {name: [] for name in list(predictors) + [SELF_ESTIMATE]}
    true: List[np.ndarray] = []
    for case, image_files in tqdm(cases.items(), desc="Judging quality predictors on cases"):
        reference, _ = reader().read_seg(segmentation_file_for(case, labels_folder, file_ending))
        data, seg = scorer.preprocess(image_files, reference)
        logits = predictor.predict_sliding_window_return_logits(torch.from_numpy(data)).float().cpu()
        probs = torch.softmax(logits, 0)
        label_map = np.asarray(all_labels, dtype=np.int16)[probs.argmax(0).numpy()][None]
        true.append(dice_per_label(label_map, np.maximum(seg, 0), labels))
        hard = one_hot_foreground(torch.from_numpy(label_map)[None], labels)
        belief = probs[foreground]
        scores[SELF_ESTIMATE].append(soft_dice_per_label(hard, belief[None])[0].numpy())
        belief = belief.numpy()
        for name, model in predictors.items():  # a g with `belief` reads the network's softmax too
            scores[name].append(scorer.score_preprocessed(data, label_map, [model], belief))
    truth = np.stack(true)
    names = [str(l) for l in labels]
    return {name: {"pairs": (np.stack(s), truth), **agreement_per_label(np.stack(s), truth, names)}
            for name, s in scores.items()}


def pooled_agreement(per_network: Dict[str, Dict[str, dict]]) -> Dict[str, dict]:
    """agreement_on_cases' results for several networks (e.g. the stages of one training) pooled per
    predictor: every case predicted by every network, one (predicted, true) pair each. Networks of
    different quality spread the true Dice over a wide band, like the test sets of the paper's figures;
    one network's cases lie in a narrow band, the harder ranking task."""
    results = list(per_network.values())
    return pooled_agreement_per_label([{name: r["pairs"] for name, r in result.items()} for result in results],
                                      label_names(results[0]))


def without_pairs(results: Dict[str, dict]) -> Dict[str, dict]:
    """The figures of agreement_on_cases without the raw pairs (for JSON and tables)."""
    return {name: {k: v for k, v in r.items() if k != "pairs"} for name, r in results.items()}


def label_names(results: Dict[str, dict]) -> List[str]:
    """The foreground label names of agreement_on_cases' results, in the order of the pairs' columns."""
    return [k for k in next(iter(results.values())) if k not in ("pairs", "mean")]


def true_dice_spread(results: Dict[str, dict]) -> Dict[str, Dict[str, float]]:
    """Mean, standard deviation and range of the true per-case Dice, per label (how wide the band is
    that the predictors have to rank)."""
    truth = next(iter(results.values()))["pairs"][1]
    return {name: {"mean": float(truth[:, i].mean()), "std": float(truth[:, i].std()),
                   "min": float(truth[:, i].min()), "max": float(truth[:, i].max())}
            for i, name in enumerate(label_names(results))}
