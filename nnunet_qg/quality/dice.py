"""Exact Dice per foreground label, with METHOD.md's convention for empty structures."""
from typing import Sequence

import numpy as np
import torch


def dice_per_label(mask: np.ndarray, reference: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """Dice of `mask` against `reference` for each label: both empty -> 1, one empty -> 0."""
    out = np.empty(len(labels), dtype=np.float32)
    for i, label in enumerate(labels):
        a, b = mask == label, reference == label
        total = int(a.sum()) + int(b.sum())
        out[i] = 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total
    return out


def soft_dice_per_label(onehot_pred: torch.Tensor, onehot_ref: torch.Tensor) -> torch.Tensor:
    """Dice per sample and channel of two (B, C, ...) tensors of hard one-hot masks; both empty -> 1."""
    axes = tuple(range(2, onehot_pred.ndim))
    intersection = (onehot_pred * onehot_ref).sum(axes)
    total = onehot_pred.sum(axes) + onehot_ref.sum(axes)
    return torch.where(total > 0, 2 * intersection / total.clamp_min(1e-8), torch.ones_like(total))


def expected_dice_per_label(onehot_mask: torch.Tensor, probabilities: torch.Tensor, smooth: float = 1.0
                            ) -> torch.Tensor:
    """The network's own expected Dice of a hard one-hot mask (B, C, ...) under its probabilities (B, C, ...) of
    the same channels, per sample and channel: (2 sum(p m) + s) / (sum p + sum m + s). The smoothing `s` (in
    voxels) makes an empty mask's score s / (sum p + s): near 1 where the network puts almost no probability on
    the label (both likely empty), near 0 where it puts many voxels' worth (the label likely present), as
    Dice's convention for empty structures asks; without it any probability mass would score an empty mask 0."""
    axes = tuple(range(2, onehot_mask.ndim))
    probabilities = probabilities.float()
    intersection = (probabilities * onehot_mask).sum(axes)
    total = probabilities.sum(axes) + onehot_mask.sum(axes)
    return ((2 * intersection + smooth) / (total + smooth)).clamp(0, 1)
