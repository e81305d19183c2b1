"""PL-QW's quality score of a pseudo-label: the EMA teacher's agreement with its own mirrored predictions.

The mean Dice between the teacher's pseudo-label and the teacher's predictions of the same patch mirrored
along each of nnU-Net's mirror axes (and mirrored back): the test-time-augmentation agreement that quality
control uses on whole cases (nnunet_qg.quality_control.signals, `tta_agreement`), per patch and inside the
training step. On the evidence protocol it ranked the teacher's pseudo-labels at Pearson 0.69 against their
true Dice where g ranked them at 0.30, and PL-QW weighted with it beat unweighted pseudo-labels where g's
weights did not (docs/results.md).
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
