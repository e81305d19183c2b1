"""Teacher and student see spatially aligned views of the same unlabelled patch."""
import numpy as np
import torch
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
import pytest
from scipy import ndimage

from nnunet_qg.unlabeled.two_views import (INTENSITY_MODULE_PREFIXES, TwoViewTransform,
                                             split_spatial_and_intensity, split_views)

PATCH = (24, 32, 24)


def _pipeline():
    rotation = (-30 / 360 * 2 * np.pi, 30 / 360 * 2 * np.pi)
    return nnUNetTrainer.get_training_transforms(PATCH, rotation, [[1, 1, 1], [0.5, 0.5, 0.5]], (0, 1, 2), False,
                                                 use_mask_for_norm=[False], foreground_labels=[1, 2])


def _image(seed=0):
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((36, 44, 36)), 2.0)
    return torch.from_numpy((field / field.std()).astype(np.float32))[None]


def _pearson(a, b):
    return float(np.corrcoef(a.ravel().numpy(), b.ravel().numpy())[0, 1])


def test_pipeline_split():
    spatial, intensity = split_spatial_and_intensity(_pipeline())
    assert any(isinstance(t, SpatialTransform) for t in spatial) and any(isinstance(t, MirrorTransform) for t in spatial)
    assert len(intensity) == 7 and all(isinstance(t, RandomTransform) for t in intensity)


def test_views_are_aligned_and_differ_only_in_intensity():
    torch.manual_seed(0)
    np.random.seed(0)
    image, seg = _image(), torch.zeros((1, 36, 44, 36), dtype=torch.int16)
    transform = TwoViewTransform(_pipeline())
    aligned, independent = [], []
    for _ in range(8):
        out = transform(image=image.clone(), segmentation=seg.clone())["image"]
        student, teacher = split_views(out[None], 1)
        assert student.shape == teacher.shape == (1, 1, *PATCH)
        aligned.append(_pearson(student, teacher))
        other = transform(image=image.clone(), segmentation=seg.clone())["image"][1]  # another spatial draw
        independent.append(_pearson(teacher[0, 0], other))
    assert np.median(aligned) > 0.7, aligned
    assert np.median(aligned) > np.median(independent) + 0.3, (aligned, independent)


def test_without_intensity_part_views_are_identical():
    pipeline = _pipeline()
    spatial, _ = split_spatial_and_intensity(pipeline)
    pipeline.transforms = spatial
    out = TwoViewTransform(pipeline, augment_teacher_intensity=True)(
        image=_image(), segmentation=torch.zeros((1, 36, 44, 36), dtype=torch.int16))["image"]
    assert torch.equal(out[0], out[1])


def test_only_label_only_transforms_are_dropped_anything_unknown_is_an_error():
    """nnU-Net's label-only transforms (-1 -> 0, regions, deep-supervision targets) are dropped; a transform the
    split does not know (here one that moves voxels, which a silent drop would leave out of both views; and
    nnU-Net's cascade transforms, which change the image) raises, naming it."""
    from batchgeneratorsv2.transforms.nnunet.seg_to_onehot import MoveSegAsOneHotToDataTransform
    from batchgeneratorsv2.transforms.spatial.rot90 import Rot90Transform

    rotation = (-30 / 360 * 2 * np.pi, 30 / 360 * 2 * np.pi)
    with_regions = nnUNetTrainer.get_training_transforms(
        PATCH, rotation, [[1, 1, 1], [0.5, 0.5, 0.5]], (0, 1, 2), False, use_mask_for_norm=[True],
        foreground_labels=[1, 2], regions=[[1, 2], [2]])
    spatial, per_view = split_spatial_and_intensity(with_regions)
    assert len(spatial) + len(per_view) == len(with_regions.transforms) - 3  # RemoveLabel, regions, DS targets
    for unknown in (Rot90Transform(1), MoveSegAsOneHotToDataTransform(1, [1, 2])):
        pipeline = _pipeline()
        pipeline.transforms.insert(2, unknown)
        with pytest.raises(RuntimeError, match=type(unknown).__name__):
            TwoViewTransform(pipeline)


@pytest.mark.parametrize("augment_teacher_intensity", [False, True])
def test_masked_views_are_what_nnunets_pipeline_makes(augment_teacher_intensity):
    """With use_mask_for_norm nnU-Net masks the image AFTER its intensity transforms (0 outside the mask whatever
    they did). With the same random draws the student view is exactly nnU-Net's augmented image, and the weak
    teacher view nnU-Net's pipeline without its intensity transforms. (Without mirroring: the split mirrors
    before the intensity transforms, nnU-Net after them, which changes the order of the draws, not what they do.)"""
    rotation = (-30 / 360 * 2 * np.pi, 30 / 360 * 2 * np.pi)

    def pipeline(intensity: bool = True):
        transforms = nnUNetTrainer.get_training_transforms(PATCH, rotation, None, (), False, use_mask_for_norm=[True],
                                                           foreground_labels=[1, 2])
        if not intensity:
            transforms.transforms = [t for t in transforms.transforms
                                     if not type(getattr(t, "transform", t)).__module__.startswith(INTENSITY_MODULE_PREFIXES)]
        return transforms

    def drawn(seed: int, transform, key: str = "image") -> torch.Tensor:
        torch.manual_seed(seed)
        np.random.seed(seed)
        return transform(image=image.clone(), segmentation=seg.clone())[key]

    seg = torch.zeros((1, 36, 44, 36), dtype=torch.int16)
    seg[:, :12] = -1  # outside nnU-Net's crop mask
    image = _image() * (seg >= 0)
    two_views = TwoViewTransform(pipeline(), augment_teacher_intensity)
    changed = []
    for seed in range(6):
        nnunet, nnunet_weak = drawn(seed, pipeline()), drawn(seed, pipeline(intensity=False))
        student, teacher = drawn(seed, two_views)
        # equal up to float rounding: nnU-Net's GaussianBlurTransform(benchmark=True) picks its implementation by timing
        torch.testing.assert_close(student, nnunet[0], rtol=1e-5, atol=1e-5)
        if not augment_teacher_intensity:
            assert torch.equal(teacher, nnunet_weak[0])
        outside = drawn(seed, two_views.spatial, "segmentation")[0] < 0  # the spatial draw both views share
        assert outside.any() and (teacher[outside] == 0).all()
        changed.append(not torch.equal(nnunet, nnunet_weak))
    assert any(changed)  # the intensity transforms acted
