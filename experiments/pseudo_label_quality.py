"""Research: a quality score of the teacher's pseudo-labels that needs no g (issue #19).

`expected_dice_per_label`: the teacher's self-estimate of a patch's mask. `benchmarks/pseudo_label_check.py`
measures it against the true Dice of pseudo-labels beside g and the teacher's mirror agreement (which ranked
best and is PL-QW's score in the core: nnunet_qg/mirror_agreement.py); it ranked worse than the mirror agreement.
"""
import torch


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
