"""Where foreground usually lies in a case, for drawing unlabelled patches around it.

An unlabelled case has no labels to oversample from. The prior stands in for them: the foreground voxels of
the labelled training cases (nnU-Net's `class_locations`, sampled by its preprocessing), as fractions of each
case's preprocessed (cropped) shape, per label. `class_locations(shape)` maps them into an unlabelled case's
own shape, in the form nnU-Net's loader reads, so a forced-foreground patch is centred on one of them exactly
as nnU-Net centres a labelled case's patch on one of its own foreground voxels (a random label, then a random
location of it). Small (a few thousand points) and picklable: it travels to nnU-Net's background workers.
"""
from typing import Dict, Hashable, Sequence

import numpy as np
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetBaseDataset

# foreground locations taken from each labelled case and label: every case counts about the same
POINTS_PER_CASE = 100


def _spread(locations: np.ndarray, k: int) -> np.ndarray:
    """At most `k` rows of `locations`, evenly spaced (nnU-Net stores them in random order; no random draw)."""
    if len(locations) <= k:
        return locations
    return locations[np.linspace(0, len(locations) - 1, k).round().astype(int)]


class RelativeForegroundPrior:
    """Foreground locations per label (or region) as fractions in [0, 1) of a case's spatial shape."""

    def __init__(self, fractions: Dict[Hashable, np.ndarray]):
        fractions = {k: np.asarray(v, dtype=np.float64) for k, v in fractions.items() if len(v) > 0}
        if not fractions:
            raise ValueError("The foreground prior has no foreground location: the labelled cases it was built from "
                             "contain no foreground")
        dims = {v.shape[1] if v.ndim == 2 else -1 for v in fractions.values()}
        if len(dims) != 1 or -1 in dims:
            raise ValueError(f"Foreground fractions must be arrays (N, dim) of one dim, got shapes "
                             f"{[v.shape for v in fractions.values()]}")
        if any(((v < 0) | (v >= 1)).any() for v in fractions.values()):
            raise ValueError("Foreground fractions must lie in [0, 1)")
        self.fractions = fractions
        self.dim = dims.pop()

    @classmethod
    def from_dataset(cls, dataset: nnUNetBaseDataset, identifiers: Sequence[str],
                     points_per_case: int = POINTS_PER_CASE) -> "RelativeForegroundPrior":
        """The prior of preprocessed labelled cases (their `class_locations`, up to `points_per_case` per label)."""
        if not identifiers:
            raise ValueError("The foreground prior needs at least one labelled case")
        collected: Dict[Hashable, list] = {}
        for identifier in identifiers:
            data, _, _, properties = dataset.load_case(identifier)
            shape = np.array(data.shape[1:], dtype=np.float64)
            for key, locations in (properties.get("class_locations") or {}).items():
                if isinstance(key, tuple) and -1 in key:  # nnU-Net's "any annotated voxel" key (ignore label)
                    continue
                locations = np.asarray(locations)
                if len(locations):
                    collected.setdefault(key, []).append((_spread(locations, points_per_case)[:, 1:] + 0.5) / shape)
        return cls({k: np.concatenate(v) for k, v in collected.items()})

    def class_locations(self, shape: Sequence[int]) -> Dict[Hashable, np.ndarray]:
        """The prior's locations in a case of spatial `shape`, as nnU-Net's `class_locations` (rows
        (channel 0, *voxel))."""
        if len(shape) != self.dim:
            raise ValueError(f"The foreground prior is {self.dim}D, the case's shape is {tuple(shape)}")
        size = np.asarray(shape, dtype=np.int64)
        out = {}
        for key, fractions in self.fractions.items():
            voxels = np.minimum(np.floor(fractions * size).astype(np.int64), size - 1)
            out[key] = np.concatenate((np.zeros((len(voxels), 1), dtype=np.int64), voxels), axis=1)
        return out
