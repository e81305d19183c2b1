"""Teacher and student see spatially aligned views of the same unlabelled patch."""
import numpy as np
import torch
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from scipy import ndimage

from nnunet_qg.unlabeled.two_views import TwoViewTransform, split_spatial_and_intensity, split_views

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
