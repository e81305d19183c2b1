"""Research options of the quality predictor g and of its training, off in every shipped trainer.

- ResearchQualityPredictor: g with `belief` (it also reads the segmentation network's foreground softmax),
  `full_resolution` (its first stage at the patch's resolution) or `self_estimate` (it starts from the
  network's own expected Dice of the mask).
- ResearchQualityPredictorTrainer: g's training with a pairwise ranking term (`ranking_weight`), several
  network predictions per step (upsampled_predictions), several steps per batch (train_steps), and the
  softmax that such a g reads.

The verdicts of the drift benchmark on each: experiments/README.md.
"""
from concurrent.futures import Future
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_qg.networks import highest_resolution
from nnunet_qg.quality.dice import soft_dice_per_label
from nnunet_qg.quality.network import QualityPredictor, encoder_strides as core_encoder_strides
from nnunet_qg.quality.training import QualityPredictorTrainer

Logits = Union[torch.Tensor, Sequence[torch.Tensor]]  # the network's logits, or several versions of them


def encoder_strides(patch_size: Sequence[int], num_stages: int, full_resolution: bool = False) -> List[List[int]]:
    """The core g's strides; with `full_resolution` a first stage at stride 1 (it sees every voxel's boundary,
    where good masks differ), then the core's strides for the other stages."""
    if not full_resolution:
        return core_encoder_strides(patch_size, num_stages)
    return [[1] * len(patch_size)] + core_encoder_strides(patch_size, num_stages - 1)


class ResearchQualityPredictor(QualityPredictor):
    """QualityPredictor with the drift benchmark's options. With `full_resolution`, the first stage runs at the
    patch's resolution (stride 1). With `belief`, g also reads the segmentation network's softmax of the
    foreground labels (one more channel per label): the mask is judged next to what the network believes, not
    only the image. With `self_estimate`, g is given that softmax too, but reads only the network's own expected
    Dice of the mask (the soft Dice of the mask against the softmax, per label): its logit enters g's output
    logit through a per-label linear map that starts as the identity, so g starts from the self-estimate and
    learns to calibrate and correct it."""

    def __init__(self, image_channels: int, num_labels: int, patch_size: Sequence[int],
                 features: Sequence[int] = (16, 32, 64, 128), hidden: int = 128, dropout: float = 0.2,
                 belief: bool = False, full_resolution: bool = False, self_estimate: bool = False):
        # read by the encoder's hooks while QualityPredictor.__init__ builds it (nn.Module takes a plain dict
        # attribute before its own __init__)
        self.options = {"belief": bool(belief), "full_resolution": bool(full_resolution),
                        "self_estimate": bool(self_estimate)}
        super().__init__(image_channels, num_labels, patch_size, features, hidden, dropout)
        self.config.update(self.options)  # the file's config, as load_quality_predictor reads it
        if self_estimate:
            self.self_estimate_map = nn.Linear(num_labels, num_labels)
            with torch.no_grad():
                self.self_estimate_map.weight.copy_(torch.eye(num_labels))
                self.self_estimate_map.bias.zero_()

    def encoder_input_channels(self) -> int:
        return super().encoder_input_channels() + (self.config["num_labels"] if self.options["belief"] else 0)

    def stage_strides(self) -> List[List[int]]:
        return encoder_strides(self.config["patch_size"], len(self.config["features"]), self.options["full_resolution"])

    @property
    def uses_belief(self) -> bool:
        """Whether forward needs the network's foreground softmax (`belief` or `self_estimate`)."""
        return self.options["belief"] or self.options["self_estimate"]

    def forward(self, image: torch.Tensor, mask: torch.Tensor, belief: Optional[torch.Tensor] = None) -> torch.Tensor:
        """image (B, C, ...), mask (B, L, ...) probabilities or one-hot, belief (B, L, ...) the network's
        foreground softmax (only for a g built with `belief` or `self_estimate`) -> (B, L) predicted Dice."""
        if self.uses_belief and belief is None:
            raise ValueError("This quality predictor was built with belief=True or self_estimate=True: pass the "
                             "segmentation network's foreground softmax as `belief`.")
        inputs = [image, mask.to(image.dtype)] + ([belief.to(image.dtype)] if self.options["belief"] else [])
        logit = self.head_logit(torch.cat(inputs, 1))
        if self.options["self_estimate"]:
            expected = soft_dice_per_label(mask.float(), belief.float()).clamp(1e-3, 1 - 1e-3)
            logit = logit + self.self_estimate_map(torch.logit(expected))
        return torch.sigmoid(logit)


def research_quality_predictor(*args, belief: bool = False, full_resolution: bool = False,
                               self_estimate: bool = False, **kwargs) -> QualityPredictor:
    """The core QualityPredictor when no option is set (its file then looks like a shipped trainer's),
    else a ResearchQualityPredictor."""
    if belief or full_resolution or self_estimate:
        return ResearchQualityPredictor(*args, belief=belief, full_resolution=full_resolution,
                                        self_estimate=self_estimate, **kwargs)
    return QualityPredictor(*args, **kwargs)


def pairwise_ranking_loss(predicted: torch.Tensor, true: torch.Tensor, min_gap: float = 0.01) -> torch.Tensor:
    """Per label, over every pair of samples whose true Dice differ by more than `min_gap`: the
    predicted gap should point the same way and be at least as large as the true one,
    mean of relu(|true_i - true_j| - sign(true_i - true_j) * (predicted_i - predicted_j)).
    (N, L) tensors; 0 when no pair qualifies."""
    gap_true = true[:, None, :] - true[None, :, :]
    gap_predicted = predicted[:, None, :] - predicted[None, :, :]
    pairs = (gap_true > min_gap).float()  # each unordered pair once, oriented by its true order
    violation = torch.relu(gap_true - gap_predicted) * pairs
    return violation.sum() / pairs.sum().clamp_min(1.0)


def upsampled_predictions(outputs: Sequence[torch.Tensor], scales: int) -> List[torch.Tensor]:
    """The full-resolution logits and up to `scales - 1` of the deep-supervision outputs below it,
    upsampled (linear) to full resolution: realistic predictions of lower quality, at no extra
    forward pass (the decoder computed them anyway)."""
    full = outputs[0]
    mode = "trilinear" if full.ndim == 5 else "bilinear"
    return [full] + [F.interpolate(o.float(), size=full.shape[2:], mode=mode, align_corners=False)
                     for o in outputs[1:scales]]


class ResearchQualityPredictorTrainer(QualityPredictorTrainer):
    """QualityPredictorTrainer with the research options of g's training:
    - `ranking_weight` > 0: pairwise_ranking_loss next to SmoothL1;
    - `seg_logits` may be several full-resolution versions of the network's logits (upsampled_predictions),
      taken in turn by the draws of masks;
    - train_steps(k): k steps on one batch;
    - a g that uses_belief reads the network's full-resolution softmax next to every mask, in training and in
      measurement (score_masks' `beliefs`, measurement_beliefs)."""

    def __init__(self, *args, ranking_weight: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.ranking_weight = ranking_weight  # weight of pairwise_ranking_loss next to SmoothL1

    def training_masks(self, target: torch.Tensor, seg_logits: Logits,
                       corrupted: List[Tuple[torch.Tensor, torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor]:
        logits = [seg_logits] if isinstance(seg_logits, torch.Tensor) else list(seg_logits)
        draws = [self.training_samples(target, logits[d % len(logits)], c) for d, c in enumerate(corrupted)]
        return torch.cat([d[0] for d in draws]), torch.cat([d[1] for d in draws])

    def training_inputs(self, images: torch.Tensor, mask: torch.Tensor, seg_logits: Logits) -> tuple:
        inputs = super().training_inputs(images, mask, seg_logits)
        if not self.model.uses_belief:
            return inputs
        # the network's full-resolution softmax next to every mask of the patch
        belief = self.foreground_softmax(highest_resolution(seg_logits))
        return inputs + (belief.repeat((self.masks_per_sample,) + (1,) * (belief.ndim - 1)).float(),)

    def training_loss(self, predicted: torch.Tensor, dice: torch.Tensor) -> torch.Tensor:
        loss = super().training_loss(predicted, dice)
        if self.ranking_weight > 0:
            loss = loss + self.ranking_weight * pairwise_ranking_loss(predicted, dice)
        return loss

    def train_steps(self, images: torch.Tensor, target: torch.Tensor, seg_logits: Logits, autocast_ctx,
                    steps: int = 1, corruptions: Optional[List[List[Future]]] = None) -> torch.Tensor:
        """`steps` train_steps on the same batch, each with fresh masks (new corruptions, new draws of which
        patches give the network's prediction): more learning per loaded batch, no extra loading or network
        pass. `corruptions`: start_corruptions(target, steps * masks_per_sample). Returns the mean loss."""
        draws = self.masks_per_sample
        if corruptions is None:
            corruptions = self.start_corruptions(target, steps * draws)  # all at once: the threads overlap them
        losses = [self.train_step(images, target, seg_logits, autocast_ctx, corruptions[s * draws:(s + 1) * draws])
                  for s in range(steps)]
        return torch.stack(losses).mean()

    def score_masks(self, images: torch.Tensor, masks: Dict[str, Tuple[torch.Tensor, torch.Tensor]],
                    autocast_ctx, beliefs: Optional[Dict[str, torch.Tensor]] = None
                    ) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
        """`beliefs`: per kind, the softmax that a g with `belief` reads next to the mask."""
        if not self.model.uses_belief:
            return super().score_masks(images, masks, autocast_ctx)
        return self.scores_of(lambda kind, mask: self.model(images, mask, beliefs[kind]), masks, autocast_ctx)

    def measure_batch(self, images: torch.Tensor, target: torch.Tensor, seg_logits: torch.Tensor,
                      autocast_ctx, teacher_logits: Optional[torch.Tensor] = None) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
        masks = self.measurement_masks(target, seg_logits, teacher_logits)
        beliefs = self.measurement_beliefs(seg_logits, teacher_logits) if self.model.uses_belief else None
        return self.score_masks(images, masks, autocast_ctx, beliefs)

    def measurement_beliefs(self, seg_logits: torch.Tensor, teacher_logits: Optional[torch.Tensor] = None
                            ) -> Dict[str, torch.Tensor]:
        """Per kind of measurement mask, the softmax of the network that made it (the teacher's for the
        teacher's masks, the network's for its own and for corrupted masks)."""
        own = self.foreground_softmax(seg_logits)
        beliefs = {"real": own, "corrupted": own}
        if teacher_logits is not None:
            beliefs["teacher"] = self.foreground_softmax(teacher_logits)
        return beliefs
