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

# g's own file in a fold folder: written at the end of the warm-up, and again at the end of training
# when g kept learning after the warm-up (nnUNetTrainerQGSSL's default)
QUALITY_PREDICTOR_FILE = "quality_predictor.pth"


def encoder_strides(patch_size: Sequence[int], num_stages: int) -> List[List[int]]:
    """Stride 2 along every axis still at least 8 voxels long, from the first stage on.

    g only needs a global judgement, so nothing runs at full resolution: this keeps it a small fraction
    of the segmentation network's cost."""
    size = list(patch_size)
    strides = []
    for _ in range(num_stages):
        s = [2 if x >= 8 else 1 for x in size]
        size = [x // st for x, st in zip(size, s)]
        strides.append(s)
    return strides


class QualityPredictor(nn.Module):
    """g: (image channels + one channel per foreground label) -> sigmoid Dice per label.

    The research variants (g that also reads the network's softmax, a full-resolution first stage) are
    subclasses in nnunet_qg.experiments; no shipped trainer builds them."""

    def __init__(self, image_channels: int, num_labels: int, patch_size: Sequence[int],
                 features: Sequence[int] = (16, 32, 64, 128), hidden: int = 128, dropout: float = 0.2):
        super().__init__()
        self.config: Dict = {"image_channels": int(image_channels), "num_labels": int(num_labels),
                             "patch_size": [int(p) for p in patch_size], "features": [int(f) for f in features],
                             "hidden": int(hidden), "dropout": float(dropout)}
        dim = len(patch_size)
        self.encoder = ResidualEncoder(
            input_channels=self.encoder_input_channels(), n_stages=len(features), features_per_stage=list(features),
            conv_op=nn.Conv3d if dim == 3 else nn.Conv2d, kernel_sizes=3,
            strides=self.stage_strides(), n_blocks_per_stage=1, conv_bias=True,
            norm_op=nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d, norm_op_kwargs={"eps": 1e-5, "affine": True},
            nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, return_skips=False,
            disable_default_stem=True)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(features[-1], hidden), nn.ReLU(inplace=True),
                                  nn.Dropout(dropout), nn.Linear(hidden, num_labels))

    def encoder_input_channels(self) -> int:
        """The image's channels and one mask channel per foreground label."""
        return self.config["image_channels"] + self.config["num_labels"]

    def stage_strides(self) -> List[List[int]]:
        """The encoder's stride per stage (encoder_strides)."""
        return encoder_strides(self.config["patch_size"], len(self.config["features"]))

    @property
    def uses_belief(self) -> bool:
        """Whether forward needs the network's foreground softmax: never for this g (quality control and
        QualityPredictorTrainer ask every g, so that a research g of nnunet_qg.experiments works there too)."""
        return False

    def head_logit(self, inputs: torch.Tensor) -> torch.Tensor:
        """The encoder and the head on g's input channels -> (B, L) logits in float32."""
        return self.head(self.encoder(inputs).flatten(2).mean(2)).float()

    def forward(self, image: torch.Tensor, mask: torch.Tensor, belief: Optional[torch.Tensor] = None) -> torch.Tensor:
        """image (B, C, ...), mask (B, L, ...) probabilities or one-hot -> (B, L) predicted Dice. `belief` (the
        network's foreground softmax) is read only by a g that uses_belief; this one ignores it."""
        return torch.sigmoid(self.head_logit(torch.cat([image, mask.to(image.dtype)], 1)))


def save_quality_predictor(model: QualityPredictor, path: str) -> None:
    """Weights and config in a file of their own (loadable with weights_only=True); atomic write."""
    with atomic_path(path) as tmp:
        torch.save({"config": model.config, "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}}, tmp)


# config keys of the research options (nnunet_qg.experiments.quality); files written before they moved there
# carry all three, False for every shipped trainer's g
RESEARCH_OPTIONS = ("belief", "full_resolution", "self_estimate")


def load_quality_predictor(path: str, device: torch.device = torch.device("cpu")) -> QualityPredictor:
    """Load a file written by save_quality_predictor; safe loading (weights only), eval mode. A g built with a
    research option is rebuilt by nnunet_qg.experiments.quality; those options set to False are dropped."""
    saved = torch.load(path, map_location=device, weights_only=True)
    config = dict(saved["config"])
    options = {name: bool(config.pop(name)) for name in RESEARCH_OPTIONS if name in config}
    if any(options.values()):
        from nnunet_qg.experiments.quality import ResearchQualityPredictor  # research code: only when needed

        model = ResearchQualityPredictor(**config, **options)
    else:
        model = QualityPredictor(**config)
    model.load_state_dict(saved["state_dict"])
    return model.to(device).eval()
