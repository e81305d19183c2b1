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
