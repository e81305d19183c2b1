"""The research options of g's training as attributes of a quality-guided trainer, and a smoke test of one.

`ResearchQualityOptions` goes before nnUNetTrainerQGWarmup (or a subclass) in the bases, after ShortSchedule:
- `quality_ranking_weight` (0): > 0 adds a pairwise ranking term to g's SmoothL1 loss;
- `quality_prediction_scales` (1): real predictions g learns from; k > 1 also the next k - 1 deep-supervision
  outputs, upsampled (realistic predictions of lower quality, no extra pass);
- `quality_steps_per_iteration` (1): g's optimizer steps per warm-up iteration, each on fresh masks of the same
  batch (g learns more per loaded batch; its learning curve on corrupted masks was still rising when a short
  warm-up stopped it);
and new_quality_trainer builds the research g (belief, full_resolution, self_estimate) on request.
"""
from typing import Optional

import torch

from nnunet_qg.experiments.quality import (Logits, ResearchQualityPredictorTrainer, research_quality_predictor,
                                           upsampled_predictions)
from nnunet_qg.networks import highest_resolution
from nnunet_qg.trainers.nnUNetTrainerQGSSL import nnUNetTrainerQGWarmup
from nnunet_qg.trainers.short_schedule import ShortSchedule


class ResearchQualityOptions:
    """Mixin for nnUNetTrainerQGWarmup: the research quality_* attributes (all off by default)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.quality_ranking_weight = 0.0
        self.quality_prediction_scales = 1
        self.quality_steps_per_iteration = 1

    def new_quality_trainer(self, real_fraction: float, seed_offset: int = 0, ranking_weight: Optional[float] = None,
                            belief: bool = False, full_resolution: bool = False,
                            self_estimate: bool = False) -> ResearchQualityPredictorTrainer:
        """nnUNetTrainerQGWarmup's, with the research options: `ranking_weight` overrides
        quality_ranking_weight; `belief`, `full_resolution`, `self_estimate`: ResearchQualityPredictor's."""
        model = research_quality_predictor(
            self.num_input_channels, len(self.label_manager.foreground_labels), self.configuration_manager.patch_size,
            self.quality_features, belief=belief, full_resolution=full_resolution,
            self_estimate=self_estimate).to(self.device)
        return ResearchQualityPredictorTrainer(
            model, **self.quality_trainer_settings(model, real_fraction, seed_offset),
            ranking_weight=self.quality_ranking_weight if ranking_weight is None else ranking_weight)

    def quality_masks_this_step(self) -> int:
        steps = 1 if self.quality.frozen else self.quality_steps_per_iteration
        return steps * self.quality.masks_per_sample

    def quality_training_logits(self, output_labeled, scales: Optional[int] = None) -> Logits:
        """The full-resolution logits, and with `scales` (default quality_prediction_scales) > 1 the upsampled
        deep-supervision outputs below them."""
        scales = self.quality_prediction_scales if scales is None else scales
        if isinstance(output_labeled, list) and scales > 1:
            return upsampled_predictions(output_labeled, scales)
        return highest_resolution(output_labeled)

    def quality_warmup_step(self, data, target, logits, corruptions) -> torch.Tensor:
        return self.quality.train_steps(data, target, logits, self._autocast(), self.quality_steps_per_iteration,
                                        corruptions)


class nnUNetTrainerQGWarmup_debug2gSteps(ShortSchedule, ResearchQualityOptions, nnUNetTrainerQGWarmup):
    """nnUNetTrainerQGWarmup_debug (4 epochs x 3 iterations, the first 2 warm-up) with two optimizer steps of g
    per warm-up iteration (quality_steps_per_iteration)."""

    short_num_epochs = 4
    short_overrides = {"quality_warmup_fraction": 0.5, "quality_steps_per_iteration": 2}
