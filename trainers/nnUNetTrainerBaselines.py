"""Semi-supervised baselines in the same code and data path as QG-SSL."""
import torch

from nnunet_qg.networks import highest_resolution
from nnunet_qg.ssl_losses import confidence_masked_ce
from nnunet_qg.trainers.nnUNetTrainerSSL import nnUNetTrainerSSL


class nnUNetTrainerMeanTeacher(nnUNetTrainerSSL):
    """Mean Teacher: EMA teacher, softmax-MSE consistency, sigmoid ramp (nnUNetTrainerSSL's loss)."""


class nnUNetTrainerFixMatch(nnUNetTrainerSSL):
    """Confidence-thresholded pseudo-labels (FixMatch-style): CE where the teacher is confident."""

    ssl_log_keys = nnUNetTrainerSSL.ssl_log_keys + ("ssl_pseudo_label_kept",)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.confidence_threshold = 0.95

    def initialize(self):
        if self.label_manager.has_regions:
            raise RuntimeError(f"{self.__class__.__name__} takes hard pseudo-labels from a softmax and does not "
                               f"support region-based training (dataset.json of {self.plans_manager.dataset_name} "
                               f"defines regions). Use nnUNetTrainerMeanTeacher.")
        super().initialize()

    def compute_unlabeled_loss(self, output_unlabeled, unlabeled):
        """CE against the teacher's hard label where its probability (`unlabeled.targets`) is confident."""
        logits = highest_resolution(output_unlabeled)
        loss, kept = confidence_masked_ce(logits, unlabeled.targets, self.confidence_threshold)
        return loss, {"ssl_pseudo_label_kept": kept}
