"""PL-QW's quality score of a pseudo-label: the EMA teacher's agreement with its own mirrored predictions.

The mean Dice between the teacher's pseudo-label and the teacher's predictions of the same patch mirrored
along each of nnU-Net's mirror axes (and mirrored back): the test-time-augmentation agreement that quality
control uses on whole cases (nnunet_qg.quality_control.signals, `tta_agreement`), per patch and inside the
training step. On the evidence protocol it ranked the teacher's pseudo-labels at Pearson 0.69 against their
true Dice where g ranked them at 0.30, and PL-QW weighted with it beat unweighted pseudo-labels where g's
weights did not (docs/results.md).

The teacher sees the patch and its mirror images before the student's pass, in ONE call stacked on the batch
axis on a GPU (nnU-Net's networks normalise per instance, so each sample's logits are those of a call of its
own; a step at small patches is bound by kernel launches there), in one call per mirror image on the CPU
(measured faster there: docs/results.md), and the agreement is computed from the argmax of the logits (no
softmax). The mirror images are one image mirrored along every axis at once (`mirror_images(axes, "all_at_once")`:
one teacher pass; the trainers' default since issue #33), or one per axis ("each": one teacher pass per axis).
"""
from typing import Callable, List, Sequence, Tuple

import torch

from nnunet_qg.quality.dice import soft_dice_per_label


MIRROR_MODES = ("each", "all_at_once")


def mirror_images(mirror_axes: Sequence[int], mode: str = "each") -> List[List[int]]:
    """The tensor dims (of a B, C, ... batch) each mirror image flips: one image per axis ("each"), or one image
    flipped along every axis at once ("all_at_once"); none without axes. `mirror_axes` are spatial, 0-based as
    nnU-Net gives them."""
    if mode not in MIRROR_MODES:
        raise ValueError(f"mirror mode must be one of {MIRROR_MODES}, not {mode!r}")
    dims = [axis + 2 for axis in mirror_axes]
    if not dims:
        return []
    return [[dim] for dim in dims] if mode == "each" else [dims]


def mirrored_logits(logits_of: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                    flips: Sequence[Sequence[int]], batched: bool = True) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """`logits_of` on `images` (B, C, ...) and on each of their mirror images (`flips`: the dims each one flips,
    from `mirror_images`): one call with all of them stacked on the batch axis (`batched`), or one call each.
    Returns the logits of the images as given, and for each mirror image its logits mirrored back (so every map
    is in the images' orientation)."""
    inputs = [images] + [images.flip(list(dims)) for dims in flips]
    logits = list(logits_of(torch.cat(inputs)).split(images.shape[0])) if batched else [logits_of(x) for x in inputs]
    return logits[0], [mirrored.flip(list(dims)) for mirrored, dims in zip(logits[1:], flips)]


def labels_present(pseudo_mask: torch.Tensor, mirrored_masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, L) bool: whether each foreground label occurs in the pseudo-label or in one of the mirrored
    predictions (all (B, L, ...) one-hot masks)."""
    axes = tuple(range(2, pseudo_mask.ndim))
    present = pseudo_mask.amax(axes) > 0
    for mask in mirrored_masks:
        present = present | (mask.amax(axes) > 0)
    return present


def mirror_agreement(pseudo_mask: torch.Tensor, mirrored_masks: Sequence[torch.Tensor],
                     absent_labels_agree: bool = True) -> torch.Tensor:
    """Per sample (B,): the mean over the mirrored predictions and the foreground labels of the Dice between
    `pseudo_mask` (B, L, ...; one-hot of the foreground labels) and each of `mirrored_masks` (the same layout).
    No mirrored prediction: ones (no evidence against the mask).

    absent_labels_agree: True (METHOD.md's convention): a label that neither mask holds counts as Dice 1.
    False: a label absent from the pseudo-label and from every mirrored prediction is left out of the mean
    (it says nothing about this patch); a sample where every label is absent everywhere (a background-only
    patch) scores 1, as it does with True (see `labels_present` to treat such patches apart)."""
    if not mirrored_masks:
        return torch.ones(pseudo_mask.shape[0], device=pseudo_mask.device)
    dice = torch.stack([soft_dice_per_label(mask, pseudo_mask) for mask in mirrored_masks]).mean(0)  # (B, L)
    if absent_labels_agree:
        return dice.mean(1)
    present = labels_present(pseudo_mask, mirrored_masks).to(dice.dtype)
    counted = present.sum(1)
    return torch.where(counted > 0, (dice * present).sum(1) / counted.clamp_min(1), torch.ones_like(counted))
