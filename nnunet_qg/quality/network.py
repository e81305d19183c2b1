"""The quality predictor network g(image, mask) -> predicted Dice per foreground label.

A compact residual encoder built from dynamic_network_architectures' blocks (the library nnU-Net's
own networks come from), global average pooling and the paper's small head
(Dropout -> Linear -> ReLU -> Dropout -> Linear -> sigmoid). Dimension follows the patch size.
"""
from typing import Dict, List, Optional, Sequence

import torch
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from torch import nn

from nnunet_qg.atomic import atomic_path
from nnunet_qg.quality.dice import soft_dice_per_label

# g's own file in a fold folder: written at the end of the warm-up, and again at the end of training
# when g kept learning after the warm-up (nnUNetTrainerQGSSL's default)
QUALITY_PREDICTOR_FILE = "quality_predictor.pth"


def encoder_strides(patch_size: Sequence[int], num_stages: int, full_resolution: bool = False) -> List[List[int]]:
    """Stride 2 along every axis still at least 8 voxels long, from the first stage on (from the second
    with `full_resolution`).

    g only needs a global judgement, so by default nothing runs at full resolution: this keeps it a
    small fraction of the segmentation network's cost. A full-resolution first stage sees every
    voxel's boundary, where good masks differ."""
    size = list(patch_size)
    strides = []
    for stage in range(num_stages):
        s = [1] * len(size) if full_resolution and stage == 0 else [2 if x >= 8 else 1 for x in size]
        size = [x // st for x, st in zip(size, s)]
        strides.append(s)
    return strides


class QualityPredictor(nn.Module):
    """g: (image channels + one channel per foreground label) -> sigmoid Dice per label.

    With `full_resolution`, the first stage runs at the patch's resolution (stride 1; an experiment of the
    drift benchmark). With `belief`, g also reads the segmentation network's softmax of the foreground labels (one more
    channel per label): the mask is judged next to what the network believes, not only the image. With
    `self_estimate`, g is given that softmax too, but reads only the network's own expected Dice of the mask
    (the soft Dice of the mask against the softmax, per label): its logit enters g's output logit through a
    per-label linear map that starts as the identity, so g starts from the self-estimate and learns to
    calibrate and correct it."""

    def __init__(self, image_channels: int, num_labels: int, patch_size: Sequence[int],
                 features: Sequence[int] = (16, 32, 64, 128), hidden: int = 128, dropout: float = 0.2,
                 belief: bool = False, full_resolution: bool = False, self_estimate: bool = False):
        super().__init__()
        self.config: Dict = {"image_channels": int(image_channels), "num_labels": int(num_labels),
                             "patch_size": [int(p) for p in patch_size], "features": [int(f) for f in features],
                             "hidden": int(hidden), "dropout": float(dropout), "belief": bool(belief),
                             "full_resolution": bool(full_resolution), "self_estimate": bool(self_estimate)}
        dim = len(patch_size)
        self.encoder = ResidualEncoder(
            input_channels=image_channels + num_labels * (2 if belief else 1), n_stages=len(features), features_per_stage=list(features),
            conv_op=nn.Conv3d if dim == 3 else nn.Conv2d, kernel_sizes=3,
            strides=encoder_strides(patch_size, len(features), full_resolution), n_blocks_per_stage=1, conv_bias=True,
            norm_op=nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d, norm_op_kwargs={"eps": 1e-5, "affine": True},
            nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, return_skips=False,
            disable_default_stem=True)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(features[-1], hidden), nn.ReLU(inplace=True),
                                  nn.Dropout(dropout), nn.Linear(hidden, num_labels))
        if self_estimate:
            self.self_estimate_map = nn.Linear(num_labels, num_labels)
            with torch.no_grad():
                self.self_estimate_map.weight.copy_(torch.eye(num_labels))
                self.self_estimate_map.bias.zero_()

    @property
    def uses_belief(self) -> bool:
        """Whether forward needs the network's foreground softmax (`belief` or `self_estimate`)."""
        return self.config["belief"] or self.config["self_estimate"]

    def forward(self, image: torch.Tensor, mask: torch.Tensor, belief: Optional[torch.Tensor] = None) -> torch.Tensor:
        """image (B, C, ...), mask (B, L, ...) probabilities or one-hot, belief (B, L, ...) the network's
        foreground softmax (only for a g built with `belief` or `self_estimate`) -> (B, L) predicted Dice."""
        inputs = [image, mask.to(image.dtype)]
        if self.uses_belief and belief is None:
            raise ValueError("This quality predictor was built with belief=True or self_estimate=True: pass the "
                             "segmentation network's foreground softmax as `belief`.")
        if self.config["belief"]:
            inputs.append(belief.to(image.dtype))
        features = self.encoder(torch.cat(inputs, 1))
        logit = self.head(features.flatten(2).mean(2)).float()
        if self.config["self_estimate"]:
            expected = soft_dice_per_label(mask.float(), belief.float()).clamp(1e-3, 1 - 1e-3)
            logit = logit + self.self_estimate_map(torch.logit(expected))
        return torch.sigmoid(logit)


def save_quality_predictor(model: QualityPredictor, path: str) -> None:
    """Weights and config in a file of their own (loadable with weights_only=True); atomic write."""
    with atomic_path(path) as tmp:
        torch.save({"config": model.config, "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}}, tmp)


def load_quality_predictor(path: str, device: torch.device = torch.device("cpu")) -> QualityPredictor:
    """Load a file written by save_quality_predictor; safe loading (weights only), eval mode."""
    saved = torch.load(path, map_location=device, weights_only=True)
    model = QualityPredictor(**saved["config"])
    model.load_state_dict(saved["state_dict"])
    return model.to(device).eval()
