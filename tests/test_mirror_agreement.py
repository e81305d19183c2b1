"""PL-QW's score (nnunet_qg/mirror_agreement.py) against a computation written here, voxel by voxel in numpy:
2D and 3D, several labels, background-only patches, and predictors that break under one axis only."""
from typing import Callable, List, Sequence

import numpy as np
import pytest
import torch

from nnunet_qg.mirror_agreement import labels_present, mirror_agreement, mirror_images, mirrored_logits
from nnunet_qg.quality.training import one_hot_foreground
from nnunet_qg.ssl_losses import neutral_weights


def reference_agreement(pseudo: np.ndarray, mirrored: Sequence[np.ndarray], labels: Sequence[int],
                        absent_labels_agree: bool) -> np.ndarray:
    """Per sample: mean over mirrored label maps and labels of Dice(pseudo == l, mirrored == l), from the label
    maps (B, ...) alone. Agree: a label in neither map counts 1. Skip: only labels found in the pseudo-label or
    in any mirrored map count; none found: 1."""
    out = []
    for b in range(pseudo.shape[0]):
        counted = [l for l in labels if absent_labels_agree or (pseudo[b] == l).any()
                   or any((m[b] == l).any() for m in mirrored)]
        if not mirrored or not counted:
            out.append(1.0)
            continue
        per_map = []
        for m in mirrored:
            dices = []
            for l in counted:
                a, c = pseudo[b] == l, m[b] == l
                total = a.sum() + c.sum()
                dices.append(1.0 if total == 0 else 2.0 * np.logical_and(a, c).sum() / total)
            per_map.append(np.mean(dices))
        out.append(np.mean(per_map))
    return np.array(out)


def agreement_of(logits_of: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, axes: Sequence[int],
                 labels: List[int], absent_labels_agree: bool = True, batched: bool = True) -> torch.Tensor:
    """The module's score as the trainer computes it: one call (or one per image), argmax of the logits, one-hot of
    the labels."""
    logits, mirrored = mirrored_logits(logits_of, images, mirror_images(axes), batched)
    one_hot = lambda l: one_hot_foreground(l.argmax(1, keepdim=True), labels)  # noqa: E731
    return mirror_agreement(one_hot(logits), [one_hot(m) for m in mirrored], absent_labels_agree)


def reference_groups(axes: Sequence[int], all_at_once: bool = False) -> List[List[int]]:
    """The spatial axes each mirror image flips: one image per axis, or one flipped along every axis."""
    return [list(axes)] if all_at_once and len(axes) else [[a] for a in axes]


def reference_mirrored(logits_of, images: torch.Tensor, axes: Sequence[int], all_at_once: bool = False
                       ) -> List[np.ndarray]:
    """Label maps of the mirror images (reference_groups), each from its own call and mirrored back with numpy."""
    return [np.flip(logits_of(images.flip([a + 2 for a in g])).argmax(1).numpy(), [a + 1 for a in g])
            for g in reference_groups(axes, all_at_once)]


def reference_of(logits_of, images: torch.Tensor, axes: Sequence[int], labels: List[int],
                 absent_labels_agree: bool = True, all_at_once: bool = False) -> np.ndarray:
    """The same score from separate calls per mirror image, mirrored back with numpy."""
    pseudo = logits_of(images).argmax(1).numpy()
    mirrored = reference_mirrored(logits_of, images, axes, all_at_once)
    return reference_agreement(pseudo, mirrored, labels, absent_labels_agree)


def position_bound(axis: int, n_labels: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A predictor whose labels follow the image's sign but also the position along `axis` (label k in the k-th of
    n_labels + 1 bands of that axis where the image is positive, background in band 0): mirroring along `axis`
    moves its bands, along others not."""
    def logits_of(x: torch.Tensor) -> torch.Tensor:
        size = x.shape[axis + 2]
        band = (torch.arange(size) * (n_labels + 1) // size).view(*[1] * (axis + 2), size, *[1] * (x.ndim - axis - 3))
        label = torch.where(x[:, :1] > 0, band.expand_as(x[:, :1]), torch.zeros_like(x[:, :1], dtype=torch.long))
        return torch.nn.functional.one_hot(label[:, 0], n_labels + 1).movedim(-1, 1).float() * 5
    return logits_of


def follows_image(n_labels: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Labels from intensity bands only: equivariant to every mirroring."""
    def logits_of(x: torch.Tensor) -> torch.Tensor:
        label = torch.bucketize(x[:, 0], torch.linspace(-1, 1, n_labels))
        return torch.nn.functional.one_hot(label, n_labels + 1).movedim(-1, 1).float()
    return logits_of


@pytest.mark.parametrize("shape,axes", [((7, 9), (0, 1)), ((5, 6, 7), (0, 1, 2)), ((5, 6, 7), (1,))])
@pytest.mark.parametrize("n_labels", [1, 3])
def test_mirror_agreement_equals_the_voxelwise_reference(shape, axes, n_labels):
    torch.manual_seed(0)
    images = torch.randn(4, 1, *shape)
    images[3] = -1  # a background-only patch
    labels = list(range(1, n_labels + 1))
    for axis in range(len(shape)):
        predictor = position_bound(axis, n_labels)
        for agree in (True, False):
            want = reference_of(predictor, images, axes, labels, agree)
            for batched in (True, False):
                got = agreement_of(predictor, images, axes, labels, agree, batched).numpy()
                np.testing.assert_allclose(got, want, atol=1e-6)
        # the axis that moves the bands costs agreement, the others do not
        moved = agreement_of(predictor, images[:3], (axis,), labels).numpy()
        kept = [agreement_of(predictor, images[:3], (a,), labels).numpy() for a in range(len(shape)) if a != axis]
        assert (moved < 0.9).all() and all(np.allclose(k, 1) for k in kept), (axis, moved, kept)
    assert torch.allclose(agreement_of(follows_image(n_labels), images, axes, labels), torch.ones(4))


def test_mirrored_logits_is_one_call_and_maps_each_mirror_back():
    torch.manual_seed(0)
    images = torch.randn(2, 1, 4, 5, 6)
    calls = []

    def logits_of(x):
        calls.append(x.shape[0])
        return torch.cat([x, x * torch.arange(x.shape[-1]).float()], 1)  # position-bound along the last axis

    assert mirror_images((0, 2)) == [[2], [4]] and mirror_images((0, 2), "all_at_once") == [[2, 4]]
    assert mirror_images(()) == [] and mirror_images((), "all_at_once") == []
    for batched, expected_calls in ((True, [6]), (False, [2, 2, 2])):
        calls.clear()
        logits, mirrored = mirrored_logits(logits_of, images, mirror_images((0, 2)), batched)
        assert calls == expected_calls
        assert torch.equal(logits, logits_of(images))
        for got, axis in zip(mirrored, (0, 2)):
            assert torch.equal(got, logits_of(images.flip([axis + 2])).flip([axis + 2]))
        assert not torch.equal(mirrored[1], logits)  # the last axis moves the position term: mirrored back, not equal
        assert torch.equal(mirrored[0], logits)  # axis 0 does not
    calls.clear()
    _, (both,) = mirrored_logits(logits_of, images, mirror_images((0, 2), "all_at_once"))
    assert calls == [4] and torch.equal(both, logits_of(images.flip([2, 4])).flip([2, 4]))


def test_all_at_once_mirror_image_scores_the_reflection_through_every_axis():
    """One mirror image flipped along every axis: the voxelwise reference of that single map."""
    torch.manual_seed(1)
    images = torch.randn(3, 1, 6, 7, 5)
    predictor = position_bound(1, 2)
    logits, mirrored = mirrored_logits(predictor, images, mirror_images((0, 1, 2), "all_at_once"))
    one_hot = lambda l: one_hot_foreground(l.argmax(1, keepdim=True), [1, 2])  # noqa: E731
    got = mirror_agreement(one_hot(logits), [one_hot(m) for m in mirrored]).numpy()
    pseudo = predictor(images).argmax(1).numpy()
    reflected = np.flip(predictor(images.flip([2, 3, 4])).argmax(1).numpy(), (1, 2, 3))
    np.testing.assert_allclose(got, reference_agreement(pseudo, [reflected], [1, 2], True), atol=1e-6)
    assert (got < 0.9).all()  # the reflection moves the bands of axis 1


def test_background_only_patches_and_their_neutral_weight():
    """Background-only patches score 1 under either convention; with "skip" a patch with one label found
    scores that label's Dice, not the mean with the absent labels' 1; labels_present marks the empty patch."""
    pseudo = torch.zeros(3, 2, 4, 4)
    pseudo[0, 0, :2] = 1  # label 1 in the top half
    pseudo[1, 1, :, :2] = 1  # label 2 in the left half
    mirrored = pseudo.clone()
    mirrored[0, 0] = 0
    mirrored[0, 0, 1:3] = 1  # half of label 1 moved: Dice 0.5
    present = labels_present(pseudo, [mirrored])
    assert present.tolist() == [[True, False], [False, True], [False, False]]
    assert mirror_agreement(pseudo, [mirrored], True).tolist() == [0.75, 1.0, 1.0]
    assert mirror_agreement(pseudo, [mirrored], False).tolist() == [0.5, 1.0, 1.0]
    weights = torch.tensor([0.25, 1.0, 1.0])
    assert neutral_weights(weights, ~present.any(1)).tolist() == [0.25, 1.0, 0.625]
    assert neutral_weights(weights, torch.ones(3, dtype=torch.bool)).tolist() == [1.0, 1.0, 1.0]
