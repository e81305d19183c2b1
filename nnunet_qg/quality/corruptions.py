"""Masks of variable quality for training the quality predictor (METHOD.md section 2), 2D and 3D.

Every family takes an integer label map and a `numpy.random.Generator` and returns a new label
map of the same shape and dtype. `MaskCorruptor` draws a category with the paper's
probabilities (identity, one corruption, a chain, another case's mask, heavy, catastrophic,
blobs) and returns the corrupted mask with its exact Dice per label. Same seed, same output.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from nnunet_qg.quality.dice import dice_per_label

# the paper's category probabilities (METHOD.md section 2)
DEFAULT_CATEGORY_PROBABILITIES: Dict[str, float] = {
    "identity": 0.20, "single": 0.28, "chain": 0.18, "other_case": 0.10,
    "heavy": 0.12, "catastrophic": 0.05, "blobs": 0.07,
}

BinaryFn = Callable[[np.ndarray, np.random.Generator, bool], np.ndarray]
LabelMapFn = Callable[[np.ndarray, np.random.Generator, bool, Sequence[int]], np.ndarray]


# ---------------------------------------------------------------- helpers
def _radius(rng: np.random.Generator, heavy: bool) -> int:
    return int(rng.integers(3, 6) if heavy else rng.integers(1, 3))


def _struct(ndim: int) -> np.ndarray:
    return ndimage.generate_binary_structure(ndim, 1)


def _grid(shape: Sequence[int]) -> np.ndarray:
    return np.indices(shape, dtype=np.float32)


def _present(mask: np.ndarray, labels: Sequence[int]) -> List[int]:
    counts = np.bincount(mask.ravel().astype(np.int64), minlength=max(labels) + 1)
    return [l for l in labels if counts[l] > 0]


def _replace_label(mask: np.ndarray, label: int, new_binary: np.ndarray) -> np.ndarray:
    """Voxels that leave `label` become background; voxels that join it take it over."""
    out = mask.copy()
    out[(mask == label) & ~new_binary] = 0
    out[new_binary] = label
    return out


def _warp(mask: np.ndarray, coordinates: np.ndarray) -> np.ndarray:
    return ndimage.map_coordinates(mask, coordinates, order=0, mode="constant", cval=0).astype(mask.dtype)


def _affine_about_centroid(mask: np.ndarray, matrix: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """out(x) = mask(matrix @ (x - c) + c - shift): nearest-neighbour, about the foreground centroid."""
    fg = np.argwhere(mask > 0)
    c = fg.mean(0) if len(fg) else (np.array(mask.shape) - 1) / 2
    offset = c - matrix @ c - shift
    return ndimage.affine_transform(mask, matrix, offset=offset, order=0, mode="constant", cval=0).astype(mask.dtype)


def _random_rotation(ndim: int, max_degrees: float, rng: np.random.Generator) -> np.ndarray:
    matrix = np.eye(ndim)
    axes = [(0, 1)] if ndim == 2 else [(0, 1), (0, 2), (1, 2)]
    for a, b in axes:
        angle = np.deg2rad(rng.uniform(-max_degrees, max_degrees))
        r = np.eye(ndim)
        r[a, a] = r[b, b] = np.cos(angle)
        r[a, b], r[b, a] = -np.sin(angle), np.sin(angle)
        matrix = matrix @ r
    return matrix


def _extent(mask: np.ndarray) -> np.ndarray:
    fg = np.argwhere(mask > 0)
    return (fg.max(0) - fg.min(0) + 1).astype(float) if len(fg) else np.array(mask.shape, float) / 4


def _ball_mask(shape: Sequence[int], center: np.ndarray, radius: float) -> Tuple[Tuple[slice, ...], np.ndarray]:
    lo = np.maximum(np.floor(center - radius).astype(int), 0)
    hi = np.minimum(np.ceil(center + radius).astype(int) + 1, shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    grid = np.indices(hi - lo) + lo.reshape((-1,) + (1,) * len(shape))
    d2 = sum((g - c) ** 2 for g, c in zip(grid, center))
    return sl, d2 <= radius ** 2


# ---------------------------------------------------------------- binary families (one structure)
def erosion(b, rng, heavy):
    return ndimage.binary_erosion(b, _struct(b.ndim), iterations=_radius(rng, heavy))


def dilation(b, rng, heavy):
    return ndimage.binary_dilation(b, _struct(b.ndim), iterations=_radius(rng, heavy))


def opening(b, rng, heavy):
    return ndimage.binary_opening(b, _struct(b.ndim), iterations=_radius(rng, heavy))


def closing(b, rng, heavy):
    return ndimage.binary_closing(b, _struct(b.ndim), iterations=_radius(rng, heavy))


def ellipsoid_fit(b, rng, heavy):
    """The ellipse/ellipsoid with the structure's mean and second moments."""
    pts = np.argwhere(b).astype(np.float64)
    if len(pts) <= b.ndim + 1:
        return b
    cov = np.cov(pts.T) + 1e-3 * np.eye(b.ndim)
    d = _grid(b.shape).reshape(b.ndim, -1).T - pts.mean(0)
    m2 = np.einsum("ij,jk,ik->i", d, np.linalg.inv(cov), d)
    return (m2 <= b.ndim + 2).reshape(b.shape)


def _hull_of(points: np.ndarray, shape: Sequence[int]) -> Optional[np.ndarray]:
    """Voxels inside the convex hull of `points`: half-space test over the points' bounding box.

    At most 96 points (evenly taken) and, for large boxes, a test on a coarser grid that is then
    repeated: a corruption needs no sub-voxel hull, and this keeps 128^3 masks fast."""
    points = points[:: max(1, len(points) // 96)]
    try:
        equations = ConvexHull(points).equations.astype(np.float32)
    except (QhullError, ValueError):
        return None
    lo, hi = points.min(0).astype(int), points.max(0).astype(int) + 1
    step = 1
    while np.prod(-(-(hi - lo) // step)) > 2 ** 15:
        step += 1
    coarse = -(-(hi - lo) // step)
    grid = np.indices(coarse, dtype=np.float32).reshape(len(shape), -1).T * step + lo
    inside = np.all(grid @ equations[:, :-1].T + equations[:, -1] <= 1e-6, axis=1).reshape(coarse)
    for axis in range(len(shape)):
        inside = np.repeat(inside, step, axis=axis)
    out = np.zeros(shape, dtype=bool)
    out[tuple(slice(a, b) for a, b in zip(lo, hi))] = inside[tuple(slice(0, b - a) for a, b in zip(lo, hi))]
    return out


def _smooth_field(shape: Sequence[int], rng: np.random.Generator, sigma: float, factor: int = 4) -> np.ndarray:
    """Smooth random field in [-1, 1]: drawn and blurred at 1/factor resolution, then upsampled."""
    coarse = [max(2, -(-s // factor)) for s in shape]
    field = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), sigma / factor)
    return _upsample(field / (np.abs(field).max() + 1e-8), shape)


def _upsample(field: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Linear upsampling of a coarse field to `shape` (torch: much faster than ndimage.zoom)."""
    mode = "trilinear" if len(shape) == 3 else "bilinear"
    with torch.no_grad():
        up = F.interpolate(torch.from_numpy(np.ascontiguousarray(field))[None, None], size=tuple(shape),
                           mode=mode, align_corners=True)
    return up[0, 0].numpy()


def convex_hull(b, rng, heavy):
    pts = np.argwhere(b & ~ndimage.binary_erosion(b, _struct(b.ndim)))  # the surface suffices
    out = _hull_of(pts, b.shape) if len(pts) > b.ndim + 1 else None
    return b if out is None else out | b


def bounding_box(b, rng, heavy):
    objects = ndimage.find_objects(b.astype(np.int8))
    out = np.zeros_like(b)
    if objects and objects[0] is not None:
        out[objects[0]] = True
    return out


def polygon_approximation(b, rng, heavy):
    """Polygon / polyhedron through a few surface points (coarser when heavy)."""
    pts = np.argwhere(b & ~ndimage.binary_erosion(b, _struct(b.ndim)))
    k = int(rng.integers(b.ndim + 2, 7 if heavy else 14))
    if len(pts) <= k:
        return b
    out = _hull_of(pts[rng.choice(len(pts), k, replace=False)], b.shape)
    return b if out is None else out


def jagged_band(b, rng, heavy):
    r = _radius(rng, heavy)
    band = ndimage.binary_dilation(b, _struct(b.ndim), r) & ~ndimage.binary_erosion(b, _struct(b.ndim), r)
    noise = ndimage.gaussian_filter(rng.random(b.shape, dtype=np.float32), 1.0) > 0.5
    return (b & ~band) | (band & noise)


def blur_threshold(b, rng, heavy):
    sigma = rng.uniform(3, 6) if heavy else rng.uniform(1, 3)
    return ndimage.gaussian_filter(b.astype(np.float32), sigma) > rng.uniform(0.3, 0.7)


def _stamp_balls(b: np.ndarray, centers: np.ndarray, count: int, radii: Tuple[float, float],
                 value: bool, rng: np.random.Generator) -> np.ndarray:
    """Set `count` balls (random radius in `radii`) around random `centers` to `value`."""
    out = b.copy()
    for _ in range(count if len(centers) else 0):
        sl, ball = _ball_mask(b.shape, centers[rng.integers(len(centers))], rng.uniform(*radii))
        out[sl][ball] = value
    return out


def holes(b, rng, heavy):
    count = int(rng.integers(5, 11) if heavy else rng.integers(1, 4))
    return _stamp_balls(b, np.argwhere(b), count, (1, 3.5), False, rng)


def islands(b, rng, heavy):
    count = int(rng.integers(4, 9) if heavy else rng.integers(1, 4))
    near = np.argwhere(ndimage.binary_dilation(b, _struct(b.ndim), 6) & ~b)
    return _stamp_balls(b, near, count, (1, 3), True, rng)


def keep_largest_component(b, rng, heavy):
    components, n = ndimage.label(b)
    if n <= 1:
        return b
    return components == (np.argmax(np.bincount(components.ravel())[1:]) + 1)


def drop_component(b, rng, heavy):
    """Remove one connected component; a single component loses the part beyond a random plane."""
    components, n = ndimage.label(b)
    if n > 1:
        return b & (components != rng.integers(1, n + 1))
    pts = np.argwhere(b)
    if len(pts) == 0:
        return b
    normal = rng.standard_normal(b.ndim)
    proj = (_grid(b.shape).reshape(b.ndim, -1).T @ normal).reshape(b.shape)
    cut = np.quantile(pts @ normal, rng.uniform(0.5, 0.85))
    return b & (proj <= cut)


def box_dropout(b, rng, heavy):
    pts = np.argwhere(b)
    if len(pts) == 0:
        return b
    size = _extent(b) * (rng.uniform(0.4, 0.7) if heavy else rng.uniform(0.2, 0.45))
    lo = np.maximum((pts[rng.integers(len(pts))] - size / 2).astype(int), 0)
    out = b.copy()
    out[tuple(slice(a, a + max(1, int(s))) for a, s in zip(lo, size))] = False
    return out


BINARY_FAMILIES: Dict[str, BinaryFn] = {
    "erosion": erosion, "dilation": dilation, "opening": opening, "closing": closing,
    "ellipsoid_fit": ellipsoid_fit, "convex_hull": convex_hull, "bounding_box": bounding_box,
    "polygon_approximation": polygon_approximation, "jagged_band": jagged_band,
    "blur_threshold": blur_threshold, "holes": holes, "islands": islands, "keep_largest_component": keep_largest_component,
    "drop_component": drop_component, "box_dropout": box_dropout,
}


# ---------------------------------------------------------------- label-map families
def shift(mask, rng, heavy, labels):
    direction = rng.standard_normal(mask.ndim)
    fraction = rng.uniform(0.35, 0.45) if heavy else rng.uniform(0.1, 0.3)
    return _affine_about_centroid(mask, np.eye(mask.ndim), direction / np.linalg.norm(direction) * fraction * _extent(mask))


def scale(mask, rng, heavy, labels):
    factor = (rng.uniform(0.5, 0.7) if rng.random() < 0.5 else rng.uniform(1.4, 1.6)) if heavy else rng.uniform(0.75, 1.25)
    return _affine_about_centroid(mask, np.eye(mask.ndim) / factor, np.zeros(mask.ndim))


def rotation(mask, rng, heavy, labels):
    return _affine_about_centroid(mask, _random_rotation(mask.ndim, 60 if heavy else 30, rng), np.zeros(mask.ndim))


def small_affine(mask, rng, heavy, labels):
    matrix = np.eye(mask.ndim) + rng.uniform(-1, 1, (mask.ndim, mask.ndim)) * (0.25 if heavy else 0.1)
    return _affine_about_centroid(mask, matrix, rng.uniform(-2, 2, mask.ndim))


def elastic(mask, rng, heavy, labels):
    """Smooth random displacement of the whole label map (all structures move together)."""
    sigma, alpha = rng.uniform(3, 5), rng.uniform(4, 8) * (2.5 if heavy else 1)
    disp = np.stack([alpha * _smooth_field(mask.shape, rng, sigma) for _ in range(mask.ndim)])
    return _warp(mask, _grid(mask.shape) + disp)


def grid_distortion(mask, rng, heavy, labels):
    """Random displacements on a coarse 4-cell grid, interpolated linearly."""
    cells = 4
    magnitude = np.array(mask.shape) / cells * (0.5 if heavy else 0.2)
    disp = np.stack([_upsample(rng.uniform(-1, 1, (cells + 1,) * mask.ndim).astype(np.float32) * magnitude[a],
                               mask.shape) for a in range(mask.ndim)])
    return _warp(mask, _grid(mask.shape) + disp)


def blobs(mask, rng, heavy, labels):
    """Smooth random blobs around the structures, each taking a random label."""
    region = ndimage.binary_dilation(mask > 0, _struct(mask.ndim), 4) if mask.any() else np.ones(mask.shape, bool)
    field = ndimage.gaussian_filter(rng.standard_normal(mask.shape).astype(np.float32), rng.uniform(1.5, 3))
    blob = (field > np.quantile(field, rng.uniform(0.6, 0.9))) & region
    components, n = ndimage.label(blob)
    label_of = np.concatenate([[0], rng.choice(np.asarray(labels), n)]) if n else np.zeros(1, int)
    out = mask.copy() if rng.random() < 0.5 else np.zeros_like(mask)
    out[blob] = label_of[components[blob]]
    return out


def empty(mask, rng, heavy, labels):
    return np.zeros_like(mask)


def full(mask, rng, heavy, labels):
    return np.full_like(mask, rng.choice(np.asarray(labels)))


def inverted(mask, rng, heavy, labels):
    return np.where(mask > 0, 0, rng.choice(np.asarray(labels))).astype(mask.dtype)


def random_noise(mask, rng, heavy, labels):
    field = ndimage.gaussian_filter(rng.random(mask.shape, dtype=np.float32), 1.0)
    edges = np.quantile(field, np.linspace(0, 1, len(labels) + 2)[1:-1])
    return np.asarray([0, *labels])[np.digitize(field, edges)].astype(mask.dtype)


GEOMETRIC_FAMILIES: Dict[str, LabelMapFn] = {"shift": shift, "scale": scale, "rotation": rotation,
                                             "small_affine": small_affine, "elastic": elastic,
                                             "grid_distortion": grid_distortion}
CATASTROPHIC_FAMILIES: Dict[str, LabelMapFn] = {"empty": empty, "full": full, "inverted": inverted,
                                                "random": random_noise}


# ---------------------------------------------------------------- multi-label errors
def erode_one_grow_neighbour(mask, rng, heavy, labels):
    present = _present(mask, labels)
    if len(present) < 2:
        return mask
    a, b = rng.choice(present, 2, replace=False)
    r = _radius(rng, heavy)
    shrunk = ndimage.binary_erosion(mask == a, _struct(mask.ndim), r)
    grown = ndimage.binary_dilation(mask == b, _struct(mask.ndim), r) & ((mask == a) | (mask == b) | (mask == 0))
    return _replace_label(_replace_label(mask, a, shrunk), b, grown & ~shrunk)


def swap_labels(mask, rng, heavy, labels):
    present = _present(mask, labels)
    if len(present) < 2:
        return mask
    a, b = rng.choice(present, 2, replace=False)
    out = mask.copy()
    out[mask == a], out[mask == b] = b, a
    return out


def merge_labels(mask, rng, heavy, labels):
    present = _present(mask, labels)
    if len(present) < 2:
        return mask
    a, b = rng.choice(present, 2, replace=False)
    return np.where(mask == b, a, mask).astype(mask.dtype)


def missing_structure(mask, rng, heavy, labels):
    present = _present(mask, labels)
    if not present:
        return mask
    return np.where(mask == rng.choice(present), 0, mask).astype(mask.dtype)


MULTI_LABEL_FAMILIES: Dict[str, LabelMapFn] = {
    "erode_one_grow_neighbour": erode_one_grow_neighbour, "swap_labels": swap_labels,
    "merge_labels": merge_labels, "missing_structure": missing_structure,
}


def apply_binary_family(mask: np.ndarray, fn: BinaryFn, rng: np.random.Generator, heavy: bool,
                        labels: Sequence[int]) -> np.ndarray:
    """Apply a one-structure family to one random present label, or to each of them."""
    present = _present(mask, labels)
    if not present:
        return mask
    targets = [int(rng.choice(present))] if rng.random() < 0.5 else present
    out = mask
    for label in targets:
        out = _replace_label(out, label, fn(mask == label, rng, heavy))
    return out


def apply_family(name: str, mask: np.ndarray, rng: np.random.Generator, heavy: bool,
                 labels: Sequence[int]) -> np.ndarray:
    """Apply the family `name` (any of `ALL_FAMILIES`)."""
    if name in BINARY_FAMILIES:
        return apply_binary_family(mask, BINARY_FAMILIES[name], rng, heavy, labels)
    return LABEL_MAP_FAMILIES[name](mask, rng, heavy, labels)


LABEL_MAP_FAMILIES: Dict[str, LabelMapFn] = {**GEOMETRIC_FAMILIES, **CATASTROPHIC_FAMILIES,
                                             **MULTI_LABEL_FAMILIES, "blobs": blobs}
ALL_FAMILIES: Tuple[str, ...] = tuple(BINARY_FAMILIES) + tuple(LABEL_MAP_FAMILIES)
# families for the 'single', 'chain' and 'heavy' categories (catastrophic and blobs have their own)
EVERYDAY_FAMILIES: Tuple[str, ...] = tuple(BINARY_FAMILIES) + tuple(GEOMETRIC_FAMILIES) + tuple(MULTI_LABEL_FAMILIES)


def mask_of_similar_volume(mask: np.ndarray, others: Sequence[np.ndarray], rng: np.random.Generator) -> Optional[np.ndarray]:
    """Among `others` (same shape), one of the two closest in foreground volume that differs from `mask`."""
    candidates = [o for o in others if o.shape == mask.shape and not np.array_equal(o, mask)]
    if not candidates:
        return None
    volume = (mask > 0).sum()
    order = np.argsort([abs(int((o > 0).sum()) - volume) for o in candidates])
    return candidates[int(order[rng.integers(min(2, len(order)))])].astype(mask.dtype)


@dataclass
class CorruptedMask:
    mask: np.ndarray
    dice: np.ndarray  # per foreground label, exact
    category: str
    families: List[str] = field(default_factory=list)


class MaskCorruptor:
    """Draws corrupted masks with the paper's mixture; every probability is a parameter."""

    def __init__(self, labels: Sequence[int], category_probabilities: Optional[Dict[str, float]] = None):
        self.labels = [int(l) for l in labels]
        probabilities = dict(DEFAULT_CATEGORY_PROBABILITIES if category_probabilities is None else category_probabilities)
        unknown = set(probabilities) - set(DEFAULT_CATEGORY_PROBABILITIES)
        if unknown:
            raise ValueError(f"Unknown corruption categories {sorted(unknown)}; known: {list(DEFAULT_CATEGORY_PROBABILITIES)}")
        total = sum(probabilities.values())
        self.categories = list(probabilities)
        self.probabilities = np.array([probabilities[c] / total for c in self.categories])

    def _everyday(self, multi_label: bool) -> List[str]:
        return [f for f in EVERYDAY_FAMILIES if multi_label or f not in MULTI_LABEL_FAMILIES]

    def corrupt(self, mask: np.ndarray, rng: np.random.Generator,
                others: Sequence[np.ndarray] = ()) -> CorruptedMask:
        """One corrupted version of `mask` (an integer label map, 2D or 3D) with its Dice per label."""
        category = self.categories[rng.choice(len(self.categories), p=self.probabilities)]
        everyday = self._everyday(len(self.labels) > 1)
        families: List[str] = []
        out = mask
        if category == "other_case":
            other = mask_of_similar_volume(mask, others, rng)
            if other is not None:
                out, families = other, ["other_case"]
            else:
                category = "single"
        if category in ("single", "chain", "heavy"):
            n = int(rng.integers(2, 4)) if category == "chain" else 1
            families = [everyday[i] for i in rng.choice(len(everyday), n, replace=False)]
            for name in families:
                out = apply_family(name, out, rng, category == "heavy", self.labels)
        elif category == "catastrophic":
            families = [list(CATASTROPHIC_FAMILIES)[rng.integers(len(CATASTROPHIC_FAMILIES))]]
            out = apply_family(families[0], mask, rng, False, self.labels)
        elif category == "blobs":
            families = ["blobs"]
            out = blobs(mask, rng, False, self.labels)
        out = out.astype(mask.dtype, copy=False)
        return CorruptedMask(out, dice_per_label(out, mask, self.labels), category, families)
