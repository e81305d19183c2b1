"""Two spatially aligned views of each unlabelled patch, from nnU-Net's own augmentation pipeline.

nnU-Net's training pipeline is split into its spatial part (SpatialTransform, mirroring, the
pseudo-2D conversions) and its per-view part: the intensity transforms (noise, blur, brightness,
contrast, low resolution, gamma) and, for datasets normalised within a mask (`use_mask_for_norm`),
MaskImageTransform, which nnU-Net runs after the intensity transforms (so the image is 0 outside the
mask whatever they did). The spatial part runs once; the student view then gets the per-view part,
the teacher view only its masking (weak view, as in FixMatch) or an independent draw of all of it.
Label-only transforms are dropped (an unlabelled case has no label); any other transform is an
error, never silently dropped. Both views are returned stacked along the channel axis in 'image'
(student first), so nnU-Net's data loader and background workers carry them unchanged.
"""
from typing import List, Tuple

import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform
from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform, Convert3DTo2DTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTransform
from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform

# moves voxels: run once, so that both views stay aligned
SPATIAL_TYPES: Tuple[type, ...] = (SpatialTransform, MirrorTransform, Convert3DTo2DTransform, Convert2DTo3DTransform)
# per-voxel or isotropic intensity changes: they commute with flips, so mirroring may run first
INTENSITY_MODULE_PREFIXES = ("batchgeneratorsv2.transforms.intensity", "batchgeneratorsv2.transforms.noise",
                             "batchgeneratorsv2.transforms.spatial.low_resolution")
INTENSITY_TYPES: Tuple[type, ...] = ()  # intensity transforms from elsewhere (add your own)
# sets the image outside nnU-Net's mask (segmentation < 0) to a value: per view, where the pipeline has it
MASKING_TYPES: Tuple[type, ...] = (MaskImageTransform,)
# change only the segmentation (nnU-Net 2.8's get_training_transforms: -1 -> 0, regions, deep-supervision
# targets); its cascade transforms (MoveSegAsOneHotToDataTransform and the two on the moved one-hot
# channels) change the image and are errors here (the semi-supervised trainers refuse cascades)
LABEL_ONLY_TYPES: Tuple[type, ...] = (RemoveLabelTransform, ConvertSegmentationToRegionsTransform,
                                      DownsampleSegForDSTransform)


def _inner(t: BasicTransform) -> BasicTransform:
    return t.transform if isinstance(t, RandomTransform) else t


def is_masking(t: BasicTransform) -> bool:
    return isinstance(_inner(t), MASKING_TYPES)


def split_spatial_and_intensity(pipeline: ComposeTransforms) -> Tuple[List[BasicTransform], List[BasicTransform]]:
    """nnU-Net's training transforms -> (spatial part, per-view part: intensity and masking transforms in the
    pipeline's order); label-only transforms are dropped, any other transform raises a RuntimeError."""
    spatial, per_view = [], []
    for t in pipeline.transforms:
        inner = _inner(t)
        if isinstance(inner, SPATIAL_TYPES):
            spatial.append(t)
        elif isinstance(inner, INTENSITY_TYPES + MASKING_TYPES) or \
                type(inner).__module__.startswith(INTENSITY_MODULE_PREFIXES):
            per_view.append(t)
        elif not isinstance(inner, LABEL_ONLY_TYPES):
            name = f"{type(inner).__module__}.{type(inner).__qualname__}"
            raise RuntimeError(
                f"The training augmentation has a transform that the two views of unlabelled patches cannot place: "
                f"{name}. nnunet_qg.unlabeled.two_views applies spatial transforms once for both views, intensity "
                f"transforms per view and drops label-only ones; it drops nothing else. Add the class to "
                f"SPATIAL_TYPES (it moves voxels), INTENSITY_TYPES (it changes intensities voxel by voxel) or "
                f"LABEL_ONLY_TYPES (it changes only the segmentation) of nnunet_qg.unlabeled.two_views (e.g. "
                f"`two_views.INTENSITY_TYPES += (MyTransform,)` in your trainer's module), or override "
                f"get_training_transforms of your trainer so that it leaves the transform out.")
    return spatial, per_view


class TwoViewTransform(BasicTransform):
    """One spatial draw, two intensity draws: image -> cat(student view, teacher view) along channels.
    `keep_segmentation` (benchmarks with withheld labels): the segmentation comes back spatially transformed with
    the views (full resolution; nnU-Net's -1 outside its crop mask kept), else as a token."""

    def __init__(self, pipeline: ComposeTransforms, augment_teacher_intensity: bool = False,
                 keep_segmentation: bool = False):
        super().__init__()
        spatial, per_view = split_spatial_and_intensity(pipeline)
        self.spatial = ComposeTransforms(spatial)
        self.student = ComposeTransforms(per_view)
        self.teacher = ComposeTransforms(per_view if augment_teacher_intensity else
                                         [t for t in per_view if is_masking(t)])
        self.augment_teacher_intensity = augment_teacher_intensity
        self.keep_segmentation = keep_segmentation

    @staticmethod
    def _view(transforms: ComposeTransforms, shared: dict) -> torch.Tensor:
        """One view of the shared spatial draw (masking reads the shared segmentation, never changes it)."""
        if not transforms.transforms:
            return shared["image"]
        return transforms(image=shared["image"].clone(), segmentation=shared["segmentation"])["image"]

    def apply(self, data_dict: dict, **params) -> dict:
        shared = self.spatial(**data_dict)
        student, teacher = self._view(self.student, shared), self._view(self.teacher, shared)
        # the segmentation of an unlabelled case is only nnU-Net's crop mask: return a token one
        segmentation = shared["segmentation"] if self.keep_segmentation else \
            torch.zeros((1,) * shared["image"].ndim, dtype=torch.int16)
        return {"image": torch.cat((student, teacher)), "segmentation": segmentation}


def split_views(batch_data: torch.Tensor, num_channels: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(B, 2C, ...) -> student view (B, C, ...), teacher view (B, C, ...)."""
    return batch_data[:, :num_channels], batch_data[:, num_channels:]
