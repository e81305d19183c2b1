"""Unlabelled losses of the semi-supervised trainers, per sample where the quality weights need it."""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

Outputs = Union[torch.Tensor, Sequence[torch.Tensor]]


def per_sample_dice_ce(outputs: Outputs, target: torch.Tensor, ds_weights: Optional[Sequence[float]] = None,
                       smooth: float = 1e-5) -> torch.Tensor:
    """nnU-Net's Dice + CE (Dice without background, as nnU-Net does), one value per sample.

    outputs: logits (B, C, ...) or a deep-supervision list (highest resolution first);
    target: (B, 1, ...) channel indices at full resolution, downsampled by nearest neighbour
    for the lower outputs; ds_weights: nnU-Net's deep-supervision weights (they sum to 1).
    """
    outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    ds_weights = [1.0] if ds_weights is None else list(ds_weights)
    total = torch.zeros(outputs[0].shape[0], device=outputs[0].device)
    for logits, weight in zip(outputs, ds_weights):
        if weight == 0:
            continue
        t = target if target.shape[2:] == logits.shape[2:] else \
            F.interpolate(target.float(), size=logits.shape[2:], mode="nearest").long()
        logits = logits.float()
        ce = F.cross_entropy(logits, t[:, 0].long(), reduction="none").flatten(1).mean(1)
        probs = torch.softmax(logits, 1)[:, 1:]
        onehot = F.one_hot(t[:, 0].long(), logits.shape[1]).movedim(-1, 1)[:, 1:].float()
        axes = tuple(range(2, probs.ndim))
        intersection = (probs * onehot).sum(axes)
        dice = (2 * intersection + smooth) / (probs.sum(axes) + onehot.sum(axes) + smooth).clamp_min(1e-8)
        total = total + weight * (ce + 1 - dice.mean(1))
    return total


def quality_weights(quality: torch.Tensor, temperature: float = 2.0, threshold: float = 0.5) -> torch.Tensor:
    """w = q^T * 1[q >= tau] (METHOD.md section 4)."""
    return quality.clamp(0, 1).pow(temperature) * (quality >= threshold).to(quality.dtype)


def weighted_mean(losses: torch.Tensor, weights: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """sum_j w_j l_j / (sum_j w_j + eps): 0 when every weight is 0."""
    weights = weights.detach().to(losses.dtype)
    return (weights * losses).sum() / (weights.sum() + eps)


def softmax_mse_per_sample(student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """Mean Teacher consistency per sample: mean squared difference of softmax maps."""
    probs = torch.softmax(student_logits.float(), 1)
    return (probs - teacher_probs).pow(2).flatten(1).mean(1)


def confidence_masked_ce(student_logits: torch.Tensor, teacher_probs: torch.Tensor,
                         threshold: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """FixMatch-style: CE against the teacher's hard label where its confidence >= threshold.

    Returns the loss (mean over all voxels, so confident regions count as they occur) and the
    fraction of voxels kept."""
    confidence, pseudo = teacher_probs.max(1)
    keep = (confidence >= threshold).float()
    ce = F.cross_entropy(student_logits.float(), pseudo, reduction="none")
    return (ce * keep).mean(), keep.mean()
