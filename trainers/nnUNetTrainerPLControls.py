"""Control arms of the evidence benchmark (docs/benchmarks.md): what isolates the quality weight.

Not for users. Each changes only the weight the paper's PL-QW gives a pseudo-label; g is trained,
scores the pseudo-labels and is logged as in nnUNetTrainerQGSSL_PLQW_gWeights, so compute, schedule and
random draws stay those of the paper's PL-QW:

- nnUNetTrainerUnweightedPL: every pseudo-label of the EMA teacher kept with weight 1 (the control
  that separates "pseudo-labelling" from "quality guidance");
- nnUNetTrainerShuffledPL: g's weights permuted across the samples of each batch (same
  distribution, no information about which pseudo-label is good);
- nnUNetTrainerOraclePL: the weight of a perfect g, w(true Dice of the pseudo-label against the
  withheld label of its patch): the ceiling of quality weighting.

WithheldLabels lets a benchmark trainer read the unlabelled patches' withheld labels
(nnunet_qg.benchmark.withheld). They reach only the weight (oracle) and g's logged agreement with
the truth, under no_grad; nothing a shipped trainer does reads them.
"""
from typing import List, Optional

import torch

from nnunet_qg.benchmark.withheld import require_withheld_cases, withheld_folder
from nnunet_qg.quality.dice import soft_dice_per_label
from nnunet_qg.quality.training import one_hot_foreground
from nnunet_qg.trainers.nnUNetTrainerQGSSL import nnUNetTrainerQGSSL_PLQW_gWeights


class WithheldLabels:
    """Put before a semi-supervised trainer in the bases: its unlabelled patches come with their withheld
    labels (the same preprocessed images, from the benchmark's withheld folder)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.unlabeled_keeps_segmentation = True

    @property
    def preprocessed_unlabeled_folder(self) -> str:
        return withheld_folder(self.plans_manager.dataset_name, self.configuration_manager.data_identifier)

    def pseudo_label_true_dice(self, pseudo_mask: torch.Tensor) -> Optional[torch.Tensor]:
        """The Dice (mean over foreground labels, both empty = 1, as g is trained) of each pseudo-label (B, L, ...)
        against the withheld label of its patch (None while no unlabelled batch carries them)."""
        if self._unlabeled_target is None:
            return None
        truth = one_hot_foreground(self._unlabeled_target, self.label_manager.foreground_labels)
        return soft_dice_per_label(pseudo_mask, truth).mean(1)

    def check_unlabeled_data(self) -> List[str]:
        """The ordinary unlabelled folder's checks (plans, no leak), then every case in the withheld folder."""
        identifiers = super().check_unlabeled_data()
        require_withheld_cases(self.__class__.__name__, self.preprocessed_unlabeled_folder, identifiers)
        return identifiers


class nnUNetTrainerUnweightedPL(nnUNetTrainerQGSSL_PLQW_gWeights):
    """Control: the EMA teacher's pseudo-labels, every one kept with weight 1 (g trained, logged, unused)."""

    def pseudo_label_weights(self, quality: torch.Tensor, true_dice: Optional[torch.Tensor]) -> torch.Tensor:
        return torch.ones_like(quality)


class nnUNetTrainerShuffledPL(nnUNetTrainerQGSSL_PLQW_gWeights):
    """Control: g's weights, permuted across the samples of each batch (a private generator, so the
    training's other random draws are the paper's PL-QW's)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.shuffle_generator = torch.Generator().manual_seed(self.quality_seed)

    def pseudo_label_weights(self, quality: torch.Tensor, true_dice: Optional[torch.Tensor]) -> torch.Tensor:
        weights = super().pseudo_label_weights(quality, true_dice)
        return weights[torch.randperm(len(weights), generator=self.shuffle_generator).to(weights.device)]


class OracleWeights:
    """Put before a quality-guided trainer (with WithheldLabels): the weight a perfect score would give,
    w(true Dice of the pseudo-label), the same w as PL-QW's."""

    def pseudo_label_weights(self, quality: torch.Tensor, true_dice: Optional[torch.Tensor]) -> torch.Tensor:
        if true_dice is None:
            raise RuntimeError(f"{self.__class__.__name__}: the unlabelled batch carries no withheld labels")
        return self.quality_weight(true_dice)


class nnUNetTrainerOraclePL(OracleWeights, WithheldLabels, nnUNetTrainerQGSSL_PLQW_gWeights):
    """Ceiling: the weight a perfect g would give, w(true Dice of the pseudo-label), same w as PL-QW."""
