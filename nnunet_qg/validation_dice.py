"""nnU-Net's online validation Dice ("pseudo-Dice") for any network's logits, e.g. the EMA teacher's."""
from typing import Dict, List

import numpy as np
import torch
from nnunetv2.training.loss.dice import get_tp_fp_fn_tn


def hard_dice_counts(logits: torch.Tensor, target: torch.Tensor, label_manager) -> Dict[str, np.ndarray]:
    """True/false positives and false negatives per foreground class of one validation batch, computed as
    nnUNetTrainer.validation_step does for the student (argmax or sigmoid > 0.5, ignore label masked).

    logits: (B, C, ...) at full resolution; target: (B, 1, ...) label map (or regions' targets)."""
    axes = [0] + list(range(2, logits.ndim))
    if label_manager.has_regions:
        onehot = (torch.sigmoid(logits) > 0.5).long()
    else:
        onehot = torch.zeros(logits.shape, device=logits.device, dtype=torch.float16)
        onehot.scatter_(1, logits.argmax(1)[:, None], 1)
    mask = None
    if label_manager.has_ignore_label:
        if label_manager.has_regions:
            mask = ~target[:, -1:] if target.dtype == torch.bool else 1 - target[:, -1:]
            target = target[:, :-1]
        else:
            mask = (target != label_manager.ignore_label).float()
            target = torch.where(target == label_manager.ignore_label, torch.zeros_like(target), target)
    tp, fp, fn, _ = get_tp_fp_fn_tn(onehot, target, axes=axes, mask=mask)
    first = 0 if label_manager.has_regions else 1  # no background Dice
    return {k: v.detach().cpu().numpy()[first:] for k, v in (("tp", tp), ("fp", fp), ("fn", fn))}


def mean_foreground_dice(counts: List[Dict[str, np.ndarray]]) -> float:
    """nnU-Net's mean_fg_dice over the batches of one validation: counts summed, Dice per class, mean."""
    tp, fp, fn = (np.sum([c[k] for c in counts], 0) for k in ("tp", "fp", "fn"))
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.nanmean(2 * tp / (2 * tp + fp + fn)))
