"""A tiny synthetic 3D dataset in Medical Segmentation Decathlon layout (no download needed).

Each case is a noisy volume with two touching ellipsoids (labels 1 and 2, like the anterior and
posterior hippocampus) of random size, position and contrast. Used by the demo and by the tests
that must run without `../shared/data`.
"""
import argparse
import json
import os
from os.path import join
from typing import Tuple

import numpy as np

from nnunet_qg.dataset_conversion.input_checks import positive_count, seed


def _ellipsoid(shape: Tuple[int, ...], center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1.0


def make_phantom_case(rng: np.random.RandomState, shape: Tuple[int, int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """One (image float32, label uint8) pair."""
    shape_arr = np.array(shape, dtype=float)
    center = shape_arr / 2 + rng.uniform(-0.12, 0.12, 3) * shape_arr
    radii = rng.uniform(0.14, 0.22, 3) * shape_arr
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


def make_phantom_msd(folder: str, num_cases: int = 16, shape: Tuple[int, int, int] = (28, 32, 28),
                     seed: int = 0) -> str:
    """Write `num_cases` phantom cases as an MSD task (imagesTr, labelsTr, dataset.json)."""
    import SimpleITK as sitk

    rng = np.random.RandomState(seed)
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(join(folder, sub), exist_ok=True)
    training = []
    for i in range(num_cases):
        image, label = make_phantom_case(rng, shape)
        name = f"phantom_{i:03d}.nii.gz"
        for array, sub in ((image, "imagesTr"), (label, "labelsTr")):
            itk = sitk.GetImageFromArray(array)
            itk.SetSpacing((1.0, 1.0, 1.0))
            sitk.WriteImage(itk, join(folder, sub, name))
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
    args = parser.parse_args()
    print(make_phantom_msd(args.o, args.n, seed=args.seed))
