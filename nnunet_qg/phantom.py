"""A tiny synthetic 3D dataset in Medical Segmentation Decathlon layout (no download needed).

Each case is a noisy volume with two touching ellipsoids (labels 1 and 2, like the anterior and
posterior hippocampus) of random size, position and contrast. Used by the demo and by the tests
that must run without `../shared/data`. With a larger `shape` and a `structure_scale` below 1 it becomes a
large field of view with small structures (as in LA, liver or pancreas scans), where most random patches
hold background only (benchmarks/unlabeled_patch_content.py).
"""
import argparse
import json
import os
from os.path import join
from typing import Tuple

import numpy as np

from nnunet_qg.dataset_conversion.input_checks import positive_count, seed
from nnunet_qg.dataset_conversion.volume_io import write_nifti_zyx

PHANTOM_SPACING = (1.0, 1.0, 1.0)  # mm, z-y-x


def _ellipsoid(shape: Tuple[int, ...], center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1.0


def _check_structure_scale(structure_scale: float) -> None:
    if not 0 < structure_scale <= 1:
        raise ValueError(f"structure_scale must be in (0, 1], got {structure_scale}")


def make_phantom_case(rng: np.random.RandomState, shape: Tuple[int, int, int],
                      structure_scale: float = 1.0) -> Tuple[np.ndarray, np.ndarray]:
    """One (image float32, label uint8) pair; `structure_scale` scales the structures' radii (1: the
    default phantom, whose radii are 14-22 % of the shape)."""
    _check_structure_scale(structure_scale)
    shape_arr = np.array(shape, dtype=float)
    center = shape_arr / 2 + rng.uniform(-0.12, 0.12, 3) * shape_arr
    radii = rng.uniform(0.14, 0.22, 3) * shape_arr * structure_scale
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    offset = direction * radii * 0.9
    label = np.zeros(shape, dtype=np.uint8)
    label[_ellipsoid(shape, center - offset / 2, radii)] = 1
    label[_ellipsoid(shape, center + offset / 2, radii * rng.uniform(0.6, 0.85))] = 2
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    bias = 1.0 + 0.2 * sum(g * rng.uniform(-1, 1) for g in grid)
    image = 60.0 + 15.0 * rng.normal(size=shape)
    image[label == 1] += rng.uniform(50, 80)
    image[label == 2] += rng.uniform(80, 110)
    return (image * bias).astype(np.float32), label


def make_phantom_labelled_cases(folder: str, num_cases: int, seed: int,
                                shape: Tuple[int, int, int] = (28, 32, 28)) -> Tuple[str, str]:
    """Write `num_cases` phantom cases in nnU-Net's naming, `folder`/images/phantom_cal_XXX_0000.nii.gz and
    `folder`/labels/phantom_cal_XXX.nii.gz (labelled cases to calibrate quality control with); returns the two
    folders. Use a `seed` other than the training data's, so that no case repeats one of it."""
    images, labels = join(folder, "images"), join(folder, "labels")
    os.makedirs(images, exist_ok=True)
    os.makedirs(labels, exist_ok=True)
    rng = np.random.RandomState(seed)
    for i in range(num_cases):
        image, label = make_phantom_case(rng, shape)
        write_nifti_zyx(image, PHANTOM_SPACING, join(images, f"phantom_cal_{i:03d}_0000.nii.gz"))
        write_nifti_zyx(label, PHANTOM_SPACING, join(labels, f"phantom_cal_{i:03d}.nii.gz"))
    return images, labels


def make_phantom_msd(folder: str, num_cases: int = 16, shape: Tuple[int, int, int] = (28, 32, 28),
                     seed: int = 0, structure_scale: float = 1.0) -> str:
    """Write `num_cases` phantom cases as an MSD task (imagesTr, labelsTr, dataset.json)."""
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"shape must be 3 sizes of at least 4 voxels, got {tuple(shape)}")
    _check_structure_scale(structure_scale)  # before anything is written
    rng = np.random.RandomState(seed)
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(join(folder, sub), exist_ok=True)
    training = []
    for i in range(num_cases):
        image, label = make_phantom_case(rng, shape, structure_scale)
        name = f"phantom_{i:03d}.nii.gz"
        for array, sub in ((image, "imagesTr"), (label, "labelsTr")):
            write_nifti_zyx(array, PHANTOM_SPACING, join(folder, sub, name))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    dataset_json = {"name": "Phantom", "description": "Synthetic two-structure phantom (nnunet-qg)",
                    "tensorImageSize": "3D", "modality": {"0": "MRI"},
                    "labels": {"0": "background", "1": "structureA", "2": "structureB"},
                    "numTraining": num_cases, "numTest": 0, "training": training, "test": []}
    with open(join(folder, "dataset.json"), "w") as f:
        json.dump(dataset_json, f, indent=2)
    return folder


def entry_point() -> None:
    parser = argparse.ArgumentParser(description="Write a tiny synthetic MSD-style dataset (nnunet-qg phantom).")
    parser.add_argument("-o", required=True, help="Output folder (becomes an MSD task folder)")
    parser.add_argument("-n", type=positive_count, default=16, help="Number of cases, >= 1. Default: 16")
    parser.add_argument("--seed", type=seed, default=0, help="0 to 2**32-1. Default: 0")
    parser.add_argument("--shape", type=int, nargs=3, default=(28, 32, 28), metavar=("Z", "Y", "X"),
                        help="Volume shape in voxels (1 mm). Default: 28 32 28")
    parser.add_argument("--structure-scale", type=float, default=1.0,
                        help="Scale of the structures' radii, in (0, 1]; below 1 with a larger --shape: a large "
                             "field of view with small structures. Default: 1")
    args = parser.parse_args()
    try:
        print(make_phantom_msd(args.o, args.n, tuple(args.shape), args.seed, args.structure_scale))
    except ValueError as error:
        parser.error(str(error))
