"""Two spatially aligned views of each unlabelled patch, from nnU-Net's own augmentation pipeline.

nnU-Net's training pipeline is split into its spatial part (SpatialTransform, mirroring, the
pseudo-2D conversions, image masking) and its intensity part (noise, blur, brightness, contrast,
low resolution, gamma). The spatial part runs once; the student view then gets the intensity
part, the teacher view none (weak view, as in FixMatch) or an independent draw of it. Both views
are returned stacked along the channel axis in 'image' (student first), so nnU-Net's data loader
and background workers carry them unchanged.
"""
from typing import List, Tuple

import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform
from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform, Convert3DTo2DTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform

SPATIAL_TYPES = (SpatialTransform, MirrorTransform, Convert3DTo2DTransform, Convert2DTo3DTransform,
                 MaskImageTransform)
# per-voxel or isotropic intensity changes: they commute with flips, so mirroring may run first
INTENSITY_MODULE_PREFIXES = ("batchgeneratorsv2.transforms.intensity", "batchgeneratorsv2.transforms.noise",
                             "batchgeneratorsv2.transforms.spatial.low_resolution")


def split_spatial_and_intensity(pipeline: ComposeTransforms) -> Tuple[List[BasicTransform], List[BasicTransform]]:
    """nnU-Net's training transforms -> (spatial part, intensity part); label-only transforms are dropped."""
    spatial, intensity = [], []
    for t in pipeline.transforms:
        inner = t.transform if isinstance(t, RandomTransform) else t
        if isinstance(inner, SPATIAL_TYPES):
            spatial.append(t)
        elif type(inner).__module__.startswith(INTENSITY_MODULE_PREFIXES):
            intensity.append(t)
    return spatial, intensity


class TwoViewTransform(BasicTransform):
    """One spatial draw, two intensity draws: image -> cat(student view, teacher view) along channels."""

    def __init__(self, pipeline: ComposeTransforms, augment_teacher_intensity: bool = False):
        super().__init__()
        spatial, intensity = split_spatial_and_intensity(pipeline)
        self.spatial = ComposeTransforms(spatial)
        self.intensity = ComposeTransforms(intensity)
        self.augment_teacher_intensity = augment_teacher_intensity

    def apply(self, data_dict: dict, **params) -> dict:
        shared = self.spatial(**data_dict)
        student = self.intensity(image=shared["image"].clone())["image"]
        teacher = self.intensity(image=shared["image"].clone())["image"] if self.augment_teacher_intensity \
            else shared["image"]
        # the segmentation of an unlabelled case is only nnU-Net's crop mask: return a token one
        return {"image": torch.cat((student, teacher)), "segmentation": torch.zeros((1,) * shared["image"].ndim,
                                                                                      dtype=torch.int16)}


def split_views(batch_data: torch.Tensor, num_channels: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(B, 2C, ...) -> student view (B, C, ...), teacher view (B, C, ...)."""
    return batch_data[:, :num_channels], batch_data[:, num_channels:]
