"""Unlabelled losses of the semi-supervised trainers, per sample where the quality weights need it."""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

Outputs = Union[torch.Tensor, Sequence[torch.Tensor]]


def ds_target(target: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A label map (B, 1, ...) at `shape`, aligned as batchgeneratorsv2's DownsampleSegForDSTransform
    aligns nnU-Net's deep-supervision targets: `nearest-exact` interpolation to the output's shape
    (that transform's shape, round(size * scale), is the output's for patches nnU-Net plans)."""
    if tuple(target.shape[2:]) == tuple(shape):
        return target
    return F.interpolate(target.float(), size=tuple(shape), mode="nearest-exact").to(target.dtype)


def per_sample_dice_ce(outputs: Outputs, target: torch.Tensor, ds_weights: Optional[Sequence[float]] = None,
                       smooth: float = 1e-5, region: Optional[torch.Tensor] = None) -> torch.Tensor:
    """nnU-Net's Dice + CE (Dice without background, as nnU-Net does), one value per sample.

    outputs: logits (B, C, ...) or a deep-supervision list (highest resolution first);
    target: (B, 1, ...) channel indices at full resolution, downsampled for the lower outputs as
    nnU-Net's targets are (ds_target); ds_weights: nnU-Net's deep-supervision weights (they sum to 1).
    Averaged over samples this equals nnU-Net's DeepSupervisionWrapper(DC_and_CE_loss) with
    MemoryEfficientSoftDiceLoss(batch_dice=False, do_bg=False) + 1 (its Dice term is negative).
    region: (B, 1, ...; 1 inside, 0 outside, full resolution, downsampled as the target), or None for every
    voxel: the loss of the region's voxels alone (CE averaged over them, the soft Dice of them only), e.g. each
    part of a copy-paste image against its own target.
    """
    outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    ds_weights = [1.0] if ds_weights is None else list(ds_weights)
    total = torch.zeros(outputs[0].shape[0], device=outputs[0].device)
    for logits, weight in zip(outputs, ds_weights):
        if weight == 0:
            continue
        t = ds_target(target, logits.shape[2:])
        logits = logits.float()
        ce = F.cross_entropy(logits, t[:, 0].long(), reduction="none").flatten(1)
        probs = torch.softmax(logits, 1)[:, 1:]
        onehot = F.one_hot(t[:, 0].long(), logits.shape[1]).movedim(-1, 1)[:, 1:].float()
        if region is None:
            ce = ce.mean(1)
        else:
            r = ds_target(region, logits.shape[2:]).float()
            ce = (ce * r.flatten(1)).sum(1) / r.flatten(1).sum(1).clamp_min(1)
            probs, onehot = probs * r, onehot * r
        axes = tuple(range(2, probs.ndim))
        intersection = (probs * onehot).sum(axes)
        dice = (2 * intersection + smooth) / (probs.sum(axes) + onehot.sum(axes) + smooth).clamp_min(1e-8)
        total = total + weight * (ce + 1 - dice.mean(1))
    return total


def quality_weights(quality: torch.Tensor, temperature: float = 2.0, threshold: float = 0.5) -> torch.Tensor:
    """w = q^T * 1[q >= tau] (METHOD.md section 4); a non-finite q is a rejection (w = 0), never a NaN weight."""
    finite = torch.isfinite(quality)
    q = torch.where(finite, quality, torch.zeros_like(quality)).clamp(0, 1)
    return q.pow(temperature) * (finite & (quality >= threshold)).to(quality.dtype)


def nonfinite_fraction(quality: torch.Tensor) -> torch.Tensor:
    """The share of scores that are not finite (rejected by quality_weights, left out of qar_loss)."""
    return (~torch.isfinite(quality)).float().mean()


def qar_loss(quality: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """QAR's 1 - mean g(x, softmax(f(x))) (METHOD.md section 3) over the finite scores only; 0 if none is.
    quality: (B, L) scores of `mask` (B, L, ...), the soft mask g read: a sample with a non-finite score gets no
    gradient through it (masking the score alone would not do: its zero gradient meets NaN inside g)."""
    finite = torch.isfinite(quality)
    loss = torch.where(finite, 1 - quality, torch.zeros_like(quality)).sum() / finite.sum().clamp_min(1)
    if mask is not None and mask.requires_grad:
        keep = finite.all(1).view(-1, *(1,) * (mask.ndim - 1))
        mask.register_hook(lambda grad: torch.where(keep, grad, torch.zeros_like(grad)))
    return loss


def weighted_mean(losses: torch.Tensor, weights: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """sum_j w_j l_j / (sum_j w_j + eps): 0 when every weight is 0."""
    weights = weights.detach().to(losses.dtype)
    return (weights * losses).sum() / (weights.sum() + eps)


def neutral_weights(weights: torch.Tensor, neutral: torch.Tensor) -> torch.Tensor:
    """`weights` (B,) with the samples marked in `neutral` (B, bool) set to the mean weight of the others (1 where
    every sample is marked): such samples then neither dominate nor vanish under weighted_mean's sum_j w_j."""
    others = ~neutral
    mean = (weights * others).sum() / others.sum().clamp_min(1)
    fill = torch.where(others.any(), mean, torch.ones_like(mean))
    return torch.where(neutral, fill.to(weights.dtype), weights)


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


def batch_size_weighted_mean(losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_j w_j l_j / B: an absolute normalisation (a pseudo-label of weight 0.5 counts half, whatever its
    batch neighbours' weights), where weighted_mean's sum_j w_j makes the weights relative to each other."""
    return (weights.detach().to(losses.dtype) * losses).sum() / losses.shape[0]


def effective_sample_size(weights: torch.Tensor) -> torch.Tensor:
    """(sum w)^2 / sum w^2: how many samples a batch's weights count as (0 when every weight is 0)."""
    weights = weights.detach().float()
    return weights.sum().pow(2) / weights.pow(2).sum().clamp_min(1e-12)
