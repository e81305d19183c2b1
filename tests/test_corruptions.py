"""Mask corruptions: every family in 2D and 3D, exact Dice targets, determinism, empty structures."""
import numpy as np
import pytest

from nnunet_qg.phantom import make_phantom_case
from nnunet_qg.quality.corruptions import (ALL_FAMILIES, DEFAULT_CATEGORY_PROBABILITIES, MULTI_LABEL_FAMILIES,
                                           MaskCorruptor, apply_family)
from nnunet_qg.quality.dice import dice_per_label

LABELS = [1, 2]


def _mask(ndim: int) -> np.ndarray:
    _, label = make_phantom_case(np.random.RandomState(3), (24, 28, 24))
    return label if ndim == 3 else np.ascontiguousarray(label[12])


def _reference_dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    """Dice from voxel index sets, independent of the implementation under test."""
    sa, sb = set(map(tuple, np.argwhere(a == label))), set(map(tuple, np.argwhere(b == label)))
    return 1.0 if not sa and not sb else 2 * len(sa & sb) / (len(sa) + len(sb))


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_family_shape_dtype_labels_determinism(family, ndim):
    mask = _mask(ndim)
    for heavy in (False, True):
        out = apply_family(family, mask, np.random.default_rng(7), heavy, LABELS)
        again = apply_family(family, mask, np.random.default_rng(7), heavy, LABELS)
        assert out.shape == mask.shape and out.dtype == mask.dtype
        assert set(np.unique(out)) <= {0, *LABELS}
        np.testing.assert_array_equal(out, again)
        assert mask.sum() > 0  # the input is never modified in place
    np.testing.assert_array_equal(mask, _mask(ndim))


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_family_on_empty_mask(family, ndim):
    empty = np.zeros_like(_mask(ndim))
    out = apply_family(family, empty, np.random.default_rng(0), False, LABELS)
    assert out.shape == empty.shape
    dice = dice_per_label(out, empty, LABELS)
    for label, d in zip(LABELS, dice):
        assert d == (1.0 if not (out == label).any() else 0.0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_mixture_dice_targets_are_exact(ndim):
    mask = _mask(ndim)
    corruptor = MaskCorruptor(LABELS)
    rng = np.random.default_rng(1)
    others = [np.roll(mask, 3, axis=0), np.roll(mask, -4, axis=1)]
    spread = []
    for _ in range(40):
        result = corruptor.corrupt(mask, rng, others)
        for i, label in enumerate(LABELS):
            assert result.dice[i] == pytest.approx(_reference_dice(result.mask, mask, label), abs=1e-6)
        spread.extend(result.dice)
    # the mixture spans the whole quality range
    assert min(spread) < 0.3 and max(spread) == 1.0 and 0.3 < np.mean(spread) < 0.95


def test_mixture_is_deterministic_and_follows_probabilities():
    mask = _mask(3)
    a = [MaskCorruptor(LABELS).corrupt(mask, np.random.default_rng(5)) for _ in range(2)]
    np.testing.assert_array_equal(a[0].mask, a[1].mask)
    only_catastrophic = MaskCorruptor(LABELS, {"catastrophic": 1.0})
    rng = np.random.default_rng(0)
    assert {only_catastrophic.corrupt(mask, rng).category for _ in range(10)} == {"catastrophic"}
    counts = {c: 0 for c in DEFAULT_CATEGORY_PROBABILITIES}
    rng, corruptor = np.random.default_rng(2), MaskCorruptor(LABELS, {"identity": 0.5, "blobs": 0.5})
    for _ in range(200):
        counts[corruptor.corrupt(mask, rng).category] += 1
    assert 70 < counts["identity"] < 130 and counts["identity"] + counts["blobs"] == 200
    with pytest.raises(ValueError, match="Unknown corruption categories"):
        MaskCorruptor(LABELS, {"nonsense": 1.0})


def test_multi_label_errors_change_the_right_structures():
    mask = _mask(3)
    rng = np.random.default_rng(0)
    swapped = apply_family("swap_labels", mask, rng, False, LABELS)
    assert list(dice_per_label(swapped, mask, LABELS)) == [0.0, 0.0]
    merged = apply_family("merge_labels", mask, rng, False, LABELS)
    assert len(set(np.unique(merged)) - {0}) == 1
    missing = apply_family("missing_structure", mask, rng, False, LABELS)
    assert sorted(dice_per_label(missing, mask, LABELS)) == [0.0, 1.0]
    grown = apply_family("erode_one_grow_neighbour", mask, rng, False, LABELS)
    assert all(d < 1.0 for d in dice_per_label(grown, mask, LABELS))
    single_label = np.where(mask > 0, 1, 0).astype(mask.dtype)
    for family in MULTI_LABEL_FAMILIES:  # nothing to swap or merge with one structure
        if family != "missing_structure":
            np.testing.assert_array_equal(apply_family(family, single_label, rng, False, [1]), single_label)


def test_dice_convention():
    a = np.zeros((4, 4), np.uint8)
    assert list(dice_per_label(a, a, [1])) == [1.0]
    b = a.copy()
    b[0, 0] = 1
    assert list(dice_per_label(b, a, [1])) == [0.0] and list(dice_per_label(a, b, [1])) == [0.0]
