"""Bidirectional copy-paste (BCP; Bai et al., CVPR 2023, github.com/DeepMed-Lab-ECNU/BCP): a box of a labelled
patch pasted into an unlabelled one, and a box of an unlabelled patch into a labelled one; each mixed image's
target is the label in the labelled part and the teacher's pseudo-label in the unlabelled part.

The box covers `fraction` (BCP: 2/3) of every spatial axis at a random place, one box per step for the whole
batch (as BCP's `generate_mask`), in 2D and 3D.
"""
from typing import NamedTuple, Sequence

import numpy as np
import torch


def box_mask(shape: Sequence[int], fraction: float, rng: np.random.Generator, device: torch.device) -> torch.Tensor:
    """(1, 1, *shape) float mask: 1 inside one box of int(fraction * size) voxels along every axis at a random
    place (drawn from `rng`), 0 outside."""
    mask = torch.zeros((1, 1, *shape), device=device)
    box = []
    for size in shape:
        length = max(1, int(size * fraction))
        start = int(rng.integers(0, size - length + 1))
        box.append(slice(start, start + length))
    mask[(slice(None), slice(None), *box)] = 1
    return mask


class MixedBatch(NamedTuple):
    """The student's input of a BCP step (2B samples), its target, where the labelled part is, and which
    unlabelled patch each sample's other part comes from."""

    images: torch.Tensor  # (2B, C, ...)
    target: torch.Tensor  # (2B, 1, ...) label in the labelled part, pseudo-label in the other
    labelled_region: torch.Tensor  # (2B, 1, ...) 1 where the voxel comes from a labelled patch
    unlabeled_source: torch.Tensor  # (2B,) index of the unlabelled patch in each sample


def bidirectional_copy_paste(labelled: torch.Tensor, labels: torch.Tensor, unlabeled: torch.Tensor,
                             pseudo_labels: torch.Tensor, box: torch.Tensor) -> MixedBatch:
    """BCP's two mixed batches from B labelled and B unlabelled patches and a box (1, 1, ...):
    first B samples: unlabelled patch i outside the box, labelled patch i inside (BCP's `net_input_unl`);
    last B samples: labelled patch i outside, unlabelled patch (i + 1) mod B inside (BCP's `net_input_l`, which
    pairs other halves of its batch: here every patch is used twice, in other pairs)."""
    n = labelled.shape[0]
    if unlabeled.shape[0] != n:
        raise ValueError(f"bidirectional copy-paste pairs labelled and unlabelled patches: {n} labelled, "
                         f"{unlabeled.shape[0]} unlabelled (set unlabeled_batch_size to the batch size)")
    shifted = torch.roll(torch.arange(n, device=labelled.device), -1)
    outside = 1 - box
    images = torch.cat((unlabeled * outside + labelled * box, labelled * outside + unlabeled[shifted] * box))
    target = torch.cat((pseudo_labels * outside + labels * box, labels * outside + pseudo_labels[shifted] * box))
    region = torch.cat((box.expand(n, *box.shape[1:]), outside.expand(n, *box.shape[1:])))
    source = torch.cat((torch.arange(n, device=labelled.device), shifted))
    return MixedBatch(images, target.round().long(), region, source)
