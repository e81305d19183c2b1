"""The unlabelled losses: quality weights, per-sample Dice+CE, QAR gradients, two aligned views."""
import numpy as np
import pytest
import torch

from nnunet_qg.quality.network import QualityPredictor
from nnunet_qg.quality.training import QualityPredictorTrainer
from nnunet_qg.ssl_losses import (confidence_masked_ce, per_sample_dice_ce, quality_weights,
                                  softmax_mse_per_sample, weighted_mean)


def test_sample_below_threshold_contributes_nothing():
    quality = torch.tensor([0.9, 0.49, 0.7])
    w = quality_weights(quality, temperature=2.0, threshold=0.5)
    assert w[1] == 0 and w[0] == pytest.approx(0.81) and w[2] == pytest.approx(0.49)
    losses = torch.tensor([1.0, 100.0, 3.0])
    assert weighted_mean(losses, w) == pytest.approx((0.81 * 1 + 0.49 * 3) / (0.81 + 0.49), rel=1e-5)
    # changing the rejected sample's loss changes nothing
    assert weighted_mean(torch.tensor([1.0, -7.0, 3.0]), w) == pytest.approx(weighted_mean(losses, w))


def test_weights_normalise_and_all_rejected_gives_zero():
    losses = torch.tensor([2.0, 2.0])
    for w in (torch.tensor([0.3, 0.3]), torch.tensor([1.0, 1.0]), torch.tensor([0.9, 0.1])):
        assert weighted_mean(losses, w) == pytest.approx(2.0, rel=1e-6)  # scale-free
    zero = weighted_mean(torch.tensor([5.0, 6.0], requires_grad=True), torch.zeros(2))
    assert zero.item() == 0.0


def test_per_sample_dice_ce_with_deep_supervision():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 1, 8, 8, 8))
    perfect = torch.nn.functional.one_hot(target[:, 0], 3).movedim(-1, 1).float() * 20
    wrong = perfect.roll(1, dims=1)
    logits = torch.cat((perfect[:1], wrong[1:]))
    lower = torch.nn.functional.interpolate(logits, scale_factor=0.5)
    losses = per_sample_dice_ce([logits, lower], target, [0.6, 0.4])
    assert losses.shape == (2,) and losses[0] < 0.2 < 1.5 < losses[1]
    # one sample's loss does not depend on the other sample
    alone = per_sample_dice_ce([logits[:1], lower[:1]], target[:1], [0.6, 0.4])
    assert torch.allclose(alone, losses[:1])
    # a zero weight (nnU-Net's lowest resolution) is skipped
    assert torch.allclose(per_sample_dice_ce([logits, lower], target, [1.0, 0.0]), per_sample_dice_ce(logits, target))


def test_qar_gradients_reach_student_but_not_g():
    g = QualityPredictor(1, 2, (16, 16, 16))
    QualityPredictorTrainer(g, [1, 2], [0, 1, 2]).freeze()
    student = torch.nn.Conv3d(1, 3, 3, padding=1)
    x = torch.randn(2, 1, 16, 16, 16)
    probs = torch.softmax(student(x), 1)
    (1 - g(x, probs[:, 1:]).mean()).backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in g.parameters())


def test_confidence_mask_and_consistency():
    teacher = torch.tensor([[[0.97, 0.6]], [[0.03, 0.4]]]).permute(1, 0, 2)  # (1, 2 classes, 2 voxels)
    student = torch.zeros(1, 2, 2)
    loss, kept = confidence_masked_ce(student, teacher, 0.95)
    assert kept.item() == 0.5 and loss.item() == pytest.approx(np.log(2) / 2, rel=1e-5)
    assert softmax_mse_per_sample(torch.zeros(3, 2, 4), torch.full((3, 2, 4), 0.5)).tolist() == [0, 0, 0]
