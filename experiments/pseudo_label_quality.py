"""Research: quality scores of the teacher's pseudo-labels that need no g (issue #19).

`mirror_agreement`: the mean Dice between the teacher's pseudo-label and the teacher's predictions of the
same patch mirrored along each of nnU-Net's mirror axes (and mirrored back): the test-time-augmentation
agreement that quality control uses on whole cases (nnunet_qg.quality_control.signals, `tta_agreement`),
per patch and in the training step. `benchmarks/pseudo_label_check.py` measures it against the true Dice of
pseudo-labels; the evidence arms `pl_mirror*` weight PL-QW with it (experiments/trainers/pseudo_label_quality.py).
`expected_dice_per_label`: the teacher's self-estimate of a patch's mask, measured beside it (it ranked worse).
"""
from typing import Callable, Sequence

import torch

from nnunet_qg.quality.dice import soft_dice_per_label


def mirror_agreement(probabilities_of: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                     pseudo_mask: torch.Tensor, mirror_axes: Sequence[int],
                     one_hot: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Per sample (B,): the mean over `mirror_axes` (spatial axes, 0-based as nnU-Net gives them) and over the
    foreground labels of the Dice between `pseudo_mask` (B, L, ...; one-hot of the foreground labels) and the
    hard prediction of `probabilities_of` on `images` mirrored along that axis, mirrored back. `one_hot` turns
    channel indices (B, 1, ...) into that one-hot. With no mirror axis: ones (no evidence against the mask)."""
    if not mirror_axes:
        return torch.ones(images.shape[0], device=images.device)
    agreements = []
    with torch.no_grad():
        for axis in mirror_axes:
            dim = axis + 2
            probabilities = probabilities_of(images.flip([dim])).flip([dim])
            agreements.append(soft_dice_per_label(one_hot(probabilities.argmax(1, keepdim=True)), pseudo_mask).mean(1))
    return torch.stack(agreements).mean(0)


def expected_dice_per_label(onehot_mask: torch.Tensor, probabilities: torch.Tensor, smooth: float = 1.0
                            ) -> torch.Tensor:
    """The network's own expected Dice of a hard one-hot mask (B, C, ...) under its probabilities (B, C, ...) of
    the same channels, per sample and channel: (2 sum(p m) + s) / (sum p + sum m + s). Quality control's
    `expected_dice` (nnunet_qg.quality_control.signals) is the same idea per whole case in NumPy, where a
    structure is rarely absent; here, per training patch, it often is. The smoothing `s` (in
    voxels) makes an empty mask's score s / (sum p + s): near 1 where the network puts almost no probability on
    the label (both likely empty), near 0 where it puts many voxels' worth (the label likely present), as
    Dice's convention for empty structures asks; without it any probability mass would score an empty mask 0."""
    axes = tuple(range(2, onehot_mask.ndim))
    probabilities = probabilities.float()
    intersection = (probabilities * onehot_mask).sum(axes)
    total = probabilities.sum(axes) + onehot_mask.sum(axes)
    return ((2 * intersection + smooth) / (total + smooth)).clamp(0, 1)
