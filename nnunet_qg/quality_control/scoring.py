"""Whole-case quality scores from the patch-level quality predictor.

g was trained on nnU-Net patches, so a case is scored the way nnU-Net predicts it: the image and
the segmentation go through the model's own preprocessing (crop, resample, normalise), a sliding
window of the configuration's patch size (step 0.5) covers the volume (2D configurations: every
slice), g scores every window, and the case score of a label is the mean of the window scores
weighted by the label's voxel count in each window (windows without the label do not count). A
label absent from the whole segmentation gets the unweighted mean over windows (g's estimate that
"absent" is right). With several folds, the folds' quality predictors are averaged.
"""
import os
from os.path import basename, isfile, join
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from acvl_utils.cropping_and_padding.padding import pad_nd_image
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_qg.quality.network import QUALITY_PREDICTOR_FILE, QualityPredictor, load_quality_predictor
from nnunet_qg.quality.training import one_hot_foreground


class QualityControlError(RuntimeError):
    """Bad input to quality control, with the file and the fix in the message."""


def load_fold_predictors(model_folder: str, folds: Sequence, device: torch.device) -> List[QualityPredictor]:
    """The exported quality predictor of each fold (written at the end of the warm-up, and at the end of
    training when g kept learning after it)."""
    models = []
    for fold in folds:
        path = join(model_folder, f"fold_{fold}", QUALITY_PREDICTOR_FILE)
        if not isfile(path):
            raise QualityControlError(
                f"{path} not found. Quality control needs a model trained with a quality predictor "
                f"(nnUNetTrainerQGSSL, nnUNetTrainerQGSSL_PLQW_withG or another trainer that trains g; "
                f"nnUNetTrainerQGSSL_PLQW trains none) whose warm-up has ended; "
                f"check -tr/-p/-c/-f, or export g with save_quality_predictor.")
        models.append(load_quality_predictor(path, device))
    return models


def window_slicers(shape: Sequence[int], patch_size: Sequence[int], step: float = 0.5) -> List[tuple]:
    """Slicers (over the spatial axes) of nnU-Net's sliding windows; 2D patches slide over every slice."""
    if len(patch_size) == len(shape):
        steps = compute_steps_for_sliding_window(shape, patch_size, step)
        grids = np.meshgrid(*steps, indexing="ij")
        return [tuple(slice(int(s), int(s) + p) for s, p in zip(start, patch_size))
                for start in zip(*(g.ravel() for g in grids))]
    steps = compute_steps_for_sliding_window(shape[1:], patch_size, step)
    grids = np.meshgrid(*steps, indexing="ij")
    return [(z,) + tuple(slice(int(s), int(s) + p) for s, p in zip(start, patch_size))
            for z in range(shape[0]) for start in zip(*(g.ravel() for g in grids))]


class CaseScorer:
    """Scores (image, segmentation) cases with a trained model folder's quality predictor(s)."""

    def __init__(self, model_folder: str, folds: Sequence = (0,), device: torch.device = torch.device("cpu"),
                 step: float = 0.5, batch_size: int = 8, models: Optional[List[QualityPredictor]] = None):
        """`models`: the quality predictor(s) to score with; default: the folds' exported ones."""
        self.model_folder = model_folder
        self.plans_manager = PlansManager(load_json(join(model_folder, "plans.json")))
        self.dataset_json = load_json(join(model_folder, "dataset.json"))
        configuration = basename(model_folder.rstrip(os.sep)).split("__")[-1]
        self.configuration_manager = self.plans_manager.get_configuration(configuration)
        self.label_manager = self.plans_manager.get_label_manager(self.dataset_json)
        self.labels = [int(l) for l in self.label_manager.foreground_labels]
        self.patch_size = list(self.configuration_manager.patch_size)
        self.preprocessor = self.configuration_manager.preprocessor_class(verbose=False)
        self.models = load_fold_predictors(model_folder, folds, device) if models is None else list(models)
        self.device, self.step, self.batch_size = device, step, batch_size

    def preprocess(self, image_files: List[str], seg: np.ndarray):
        """Image and segmentation in the model's preprocessed space: nnU-Net's own preprocessing (what
        its run_case does) of the images, read here, and of `seg` as the reader's read_seg gives it
        (left unchanged: the preprocessing works on a copy)."""
        data, properties = self.plans_manager.image_reader_writer_class().read_images(image_files)
        data, seg, _ = self.preprocessor.run_case_npy(data, seg.copy(), properties, self.plans_manager,
                                                      self.configuration_manager, self.dataset_json)
        return data.astype(np.float32), seg

    @torch.no_grad()
    def window_scores(self, data: np.ndarray, seg: np.ndarray, models: Optional[Sequence[QualityPredictor]] = None,
                      belief: Optional[np.ndarray] = None):
        """g's predicted Dice (windows x labels; the mean of `models`, default self.models) and each
        label's voxel count per window; `belief`: the network's foreground softmax (L, ...) in the
        same space, for a g that reads it."""
        models = self.models if models is None else models
        if belief is None and any(m.uses_belief for m in models):
            raise QualityControlError(
                f"The quality predictor of {self.model_folder} reads the segmentation network's softmax "
                f"(built with belief=True or self_estimate=True): pass `belief`, as nnUNetv2_predict_quality "
                f"(quality_control.signals) and case_agreement do, which predict that softmax.")
        # pads the trailing (spatial) axes up to the patch size where the case is smaller
        data = pad_nd_image(data, self.patch_size, "constant", {"constant_values": 0})
        seg = pad_nd_image(np.maximum(seg, 0), self.patch_size, "constant", {"constant_values": 0})
        if belief is not None:
            belief = pad_nd_image(belief, self.patch_size, "constant", {"constant_values": 0})
        slicers = window_slicers(data.shape[1:], self.patch_size, self.step)
        scores, counts = [], []
        for start in range(0, len(slicers), self.batch_size):
            chunk = slicers[start:start + self.batch_size]
            images = torch.from_numpy(np.stack([data[(slice(None),) + s] for s in chunk])).to(self.device)
            label_maps = torch.from_numpy(np.stack([seg[(slice(None),) + s] for s in chunk]).astype(np.int16))
            masks = one_hot_foreground(label_maps.to(self.device), self.labels)
            counts.append(masks.flatten(2).sum(2).cpu().numpy())
            beliefs = None if belief is None else \
                torch.from_numpy(np.stack([belief[(slice(None),) + s] for s in chunk])).to(self.device)
            with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
                predicted = torch.stack([m(images, masks, beliefs if m.uses_belief else None).float()
                                         for m in models]).mean(0)
            scores.append(predicted.cpu().numpy())
        return np.concatenate(scores), np.concatenate(counts)

    def score(self, image_files: List[str], seg: np.ndarray) -> np.ndarray:
        """Predicted Dice of each foreground label of one case (see the module docstring); `seg` as
        read_seg of the model's reader gives it."""
        return self.score_preprocessed(*self.preprocess(image_files, seg))

    def score_preprocessed(self, data: np.ndarray, seg: np.ndarray, models: Optional[Sequence[QualityPredictor]] = None,
                           belief: Optional[np.ndarray] = None) -> np.ndarray:
        """`score` of an image and a label map already in the model's preprocessed space (with
        `models` instead of self.models if given; `belief` as in window_scores)."""
        scores, counts = self.window_scores(data, seg, models, belief)
        total = counts.sum(0)
        weighted = (scores * counts).sum(0) / np.maximum(total, 1)
        return np.where(total > 0, weighted, scores.mean(0)).astype(np.float32)


def label_volumes(seg: np.ndarray, spacing: Sequence[float], labels: Sequence[int]) -> Dict[int, float]:
    """Volume of each label of a segmentation (mm^3, or pixel area x spacing for 2D)."""
    voxel = float(np.prod(spacing))
    return {l: float((seg == l).sum()) * voxel for l in labels}


def case_ids_and_images(folder: str, file_ending: str, num_channels: Optional[int] = None) -> Dict[str, List[str]]:
    """nnU-Net's naming: case_XXXX<ending>; a clear error for a folder without such files.

    The number of files per case is not checked here: one file may hold several channels (an RGB PNG holds
    the three channels of nnU-Net's NaturalImage2DIO), so the channels are counted when the images are read
    (check_channels). `num_channels` is kept for callers that passed it."""
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder, \
        get_identifiers_from_splitted_dataset_folder

    if not os.path.isdir(folder):
        raise QualityControlError(f"Input folder {folder} does not exist.")
    ids = [str(i) for i in get_identifiers_from_splitted_dataset_folder(folder, file_ending)]
    if not ids:
        raise QualityControlError(f"No images named CASE_0000{file_ending} in {folder} (nnU-Net's naming).")
    files = create_lists_from_splitted_dataset_folder(folder, file_ending, ids)
    return dict(zip(ids, files))


def check_channels(case: str, files: Sequence[str], data: np.ndarray, expected: int, file_ending: str) -> None:
    """The images of a case, as the model's reader read them, must hold the model's channels."""
    if data.shape[0] != expected:
        raise QualityControlError(
            f"Case {case} ({', '.join(files)}) holds {data.shape[0]} channel(s) as read by the model's image reader, "
            f"the model expects {expected} (dataset.json's channel_names): give one file per channel "
            f"(CASE_0000{file_ending}, CASE_0001{file_ending}, ...) or one file holding them all (an RGB image).")


def segmentation_file_for(case: str, folder: str, file_ending: str) -> str:
    path = join(folder, case + file_ending)
    if not isfile(path):
        raise QualityControlError(f"No segmentation for case {case}: {path} is missing. Give -s a folder with "
                                  f"one CASE{file_ending} per input case, or leave -s out to predict them.")
    return path


def model_folder_of(dataset: str, trainer: str, plans: str, configuration: str) -> str:
    """The trained model's folder; a clear error for a dataset nnU-Net does not know and a missing model."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    results = os.environ.get("nnUNet_results", "")
    try:
        name = maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError, AssertionError) as e:
        known = sorted(d for d in os.listdir(results) if d.startswith("Dataset")) if os.path.isdir(results) else []
        reason = "more than one dataset has this id" if "More than one" in str(e) else "not found"
        raise QualityControlError(
            f"Dataset '{dataset}' ({reason}): -d takes a dataset id (e.g. 4) or name (Dataset004_Hippocampus) "
            f"of a trained model in nnUNet_results ({results}); there: {', '.join(known) or 'none'}.") from None
    folder = get_output_folder(name, trainer, plans, configuration)
    if not os.path.isdir(folder):
        raise QualityControlError(f"Model folder {folder} not found: check -d/-tr/-p/-c and nnUNet_results.")
    return folder
