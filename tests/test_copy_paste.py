"""Bidirectional copy-paste (nnunet_qg/copy_paste.py) and its region loss (ssl_losses.per_sample_dice_ce with a
region), against
computations written here; the BCP trainers' step in the real trainers (nnUNetTrainerBCP, _QG)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import PHANTOM_DATASET, trainer_checks_fixture
from nnunet_qg.copy_paste import bidirectional_copy_paste, box_mask
from nnunet_qg.ssl_losses import per_sample_dice_ce


@pytest.mark.parametrize("shape", [(12, 9), (6, 9, 12)])
def test_box_covers_two_thirds_of_every_axis_inside_the_patch(shape):
    rng = np.random.default_rng(0)
    for _ in range(20):
        box = box_mask(shape, 2 / 3, rng, torch.device("cpu"))
        assert box.shape == (1, 1, *shape) and set(box.unique().tolist()) == {0.0, 1.0}
        inside = box[0, 0].nonzero()
        extent = (inside.max(0).values - inside.min(0).values + 1).tolist()
        assert extent == [int(s * 2 / 3) for s in shape]
        assert box.sum() == np.prod(extent)  # one solid box


def test_bidirectional_copy_paste_pairs_and_targets():
    torch.manual_seed(0)
    n = 3
    labelled, unlabeled = torch.randn(n, 1, 4, 5), torch.randn(n, 1, 4, 5) + 10
    labels, pseudo = torch.randint(0, 3, (n, 1, 4, 5)), torch.randint(0, 3, (n, 1, 4, 5))
    box = torch.zeros(1, 1, 4, 5)
    box[..., 1:3, 2:5] = 1
    mixed = bidirectional_copy_paste(labelled, labels, unlabeled, pseudo, box)
    assert mixed.images.shape == (2 * n, 1, 4, 5) and mixed.unlabeled_source.tolist() == [0, 1, 2, 1, 2, 0]
    inside = box[0, 0].bool()
    for i in range(n):
        j = (i + 1) % n
        # first half: unlabelled i outside the box, labelled i inside; target: pseudo-label outside, label inside
        assert torch.equal(mixed.images[i, 0][inside], labelled[i, 0][inside])
        assert torch.equal(mixed.images[i, 0][~inside], unlabeled[i, 0][~inside])
        assert torch.equal(mixed.target[i, 0][inside], labels[i, 0][inside])
        assert torch.equal(mixed.target[i, 0][~inside], pseudo[i, 0][~inside])
        assert torch.equal(mixed.labelled_region[i, 0].bool(), inside)
        # second half: labelled i outside, unlabelled i + 1 inside
        assert torch.equal(mixed.images[n + i, 0][~inside], labelled[i, 0][~inside])
        assert torch.equal(mixed.images[n + i, 0][inside], unlabeled[j, 0][inside])
        assert torch.equal(mixed.target[n + i, 0][~inside], labels[i, 0][~inside])
        assert torch.equal(mixed.target[n + i, 0][inside], pseudo[j, 0][inside])
        assert torch.equal(mixed.labelled_region[n + i, 0].bool(), ~inside)
    with pytest.raises(ValueError, match="unlabeled_batch_size"):
        bidirectional_copy_paste(labelled, labels, unlabeled[:2], pseudo[:2], box)


def _reference_region_loss(logits: torch.Tensor, target: torch.Tensor, region: torch.Tensor, smooth=1e-5):
    """Per sample: CE over the region's voxels (a loop) + 1 - mean over foreground labels of the soft Dice of the
    region's voxels alone (gathered, not masked)."""
    out = []
    for b in range(logits.shape[0]):
        keep = region[b, 0].bool()
        z = logits[b][:, keep].T  # (voxels, classes)
        t = target[b, 0][keep].long()
        ce = F.cross_entropy(z, t, reduction="mean") if len(t) else torch.zeros(())
        p = torch.softmax(z, 1)
        dices = []
        for c in range(1, logits.shape[1]):
            pc, tc = p[:, c], (t == c).float()
            dices.append((2 * (pc * tc).sum() + smooth) / (pc.sum() + tc.sum() + smooth))
        out.append(ce + 1 - torch.stack(dices).mean())
    return torch.stack(out)


def test_region_loss_equals_the_loss_of_the_regions_voxels():
    torch.manual_seed(0)
    logits, target = torch.randn(4, 3, 6, 7, 5), torch.randint(0, 3, (4, 1, 6, 7, 5))
    region = (torch.rand(4, 1, 6, 7, 5) > 0.4).float()
    torch.testing.assert_close(per_sample_dice_ce(logits, target, region=region),
                               _reference_region_loss(logits, target, region))
    # a region of ones: nnU-Net's per-sample loss; deep supervision: downsampled regions and targets, weighted
    ones = torch.ones_like(region)
    torch.testing.assert_close(per_sample_dice_ce(logits, target, region=ones), per_sample_dice_ce(logits, target))
    low = torch.randn(4, 3, 3, 4, 3)
    torch.testing.assert_close(per_sample_dice_ce([logits, low], target, [0.6, 0.4], region=ones),
                               per_sample_dice_ce([logits, low], target, [0.6, 0.4]))
    from nnunet_qg.ssl_losses import ds_target
    expected = 0.6 * _reference_region_loss(logits, target, region) + 0.4 * _reference_region_loss(
        low, ds_target(target, (3, 4, 3)), ds_target(region, (3, 4, 3)))
    torch.testing.assert_close(per_sample_dice_ce([logits, low], target, [0.6, 0.4], region=region), expected)


# the BCP step in the real trainers: the loss is the labelled part + u_weight x the weighted pseudo-labelled part,
# computed here from the trainer's own mixed batch; the gradient reaches the student; quality weights where _QG
CHECK = """
    import numpy as np
    from nnunet_qg.copy_paste import bidirectional_copy_paste, box_mask
    from nnunet_qg.networks import highest_resolution
    from nnunet_qg.ssl_losses import per_sample_dice_ce, quality_weights, weighted_mean
    trainer.unlabeled_seed = 5
    trainer._box_rng = np.random.default_rng(6)
    trainer._weights = trainer.component_weights_at(trainer.num_epochs - 1)
    assert trainer._weights == {"plqw": 1.0, "qar": 0.0} and trainer.quality is None
    torch.manual_seed(0)
    patch = trainer.configuration_manager.patch_size
    data = torch.randn(2, 1, *patch)
    with torch.no_grad():
        seg = highest_resolution(trainer.network(data)).argmax(1, keepdim=True)
    target = [seg] + [torch.nn.functional.interpolate(seg.float(), size=o.shape[2:]).long()
                      for o in trainer.network(data)[1:]]
    unlabeled = trainer.unlabeled_batch(torch.randn(2, 1, *patch), torch.randn(2, 1, *patch))
    pseudo = unlabeled.targets
    plain = args[0].endswith("+labelled")  # the plain labelled batch's loss in the same pass (research option)
    trainer.copy_paste_plain_labelled_weight = 1.0 if plain else 0.0
    trainer.network.zero_grad(set_to_none=True)
    loss, labelled_part, pseudo_part, _, extras = trainer.forward_backward(data, target, unlabeled)
    box = box_mask(patch, 2 / 3, np.random.default_rng(6), data.device)  # the trainer's first box
    mixed = bidirectional_copy_paste(data, seg, unlabeled.view_student, pseudo.channels, box)
    with torch.no_grad():
        output = trainer.network(mixed.images)
        w = torch.ones(2) if args[0] == "none" else quality_weights(pseudo.quality, 2.0, trainer.quality_threshold)
        expected_plain = trainer.loss(trainer.network(data), target) if plain else 0.0
        expected_pl = weighted_mean(per_sample_dice_ce(output, mixed.target, trainer.loss.weight_factors,
                                                       region=1 - mixed.labelled_region), w[mixed.unlabeled_source])
        expected_l = per_sample_dice_ce(output, mixed.target, trainer.loss.weight_factors,
                                        region=mixed.labelled_region).mean()
    if args[0] != "none":
        assert not torch.equal(pseudo.quality, torch.ones(2)), pseudo.quality
    assert torch.allclose(pseudo_part, expected_pl, atol=1e-5), (float(pseudo_part), float(expected_pl))
    assert torch.allclose(labelled_part, expected_l, atol=1e-5)
    assert torch.allclose(loss, expected_l + 0.5 * expected_pl + expected_plain, atol=1e-5)
    if plain:
        assert float(expected_plain) > 0
    grads = [p.grad.abs().sum() for p in trainer.network.parameters() if p.grad is not None]
    assert grads and float(sum(grads)) > 0
    print("OK")
"""
JOBS = [("nnUNetTrainerBCP_debug", PHANTOM_DATASET, "none"), ("nnUNetTrainerBCP_QG_debug", PHANTOM_DATASET, "mirror"),
        ("nnUNetTrainerBCP_QG_debug", PHANTOM_DATASET, "mirror+labelled")]
checked = trainer_checks_fixture(CHECK, JOBS, "bcp_checks")


@pytest.mark.parametrize("job", JOBS, ids=[f"{j[0]}-{j[2]}" for j in JOBS])
def test_bcp_step_is_the_mixed_loss_with_its_weights(checked, job):
    assert checked[tuple(job)] == "OK", checked[tuple(job)]
