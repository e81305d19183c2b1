"""The unlabelled losses: quality weights, per-sample Dice+CE, QAR gradients, two aligned views."""
import numpy as np
import pytest
import torch

from nnunet_qg.quality.network import QualityPredictor
from nnunet_qg.quality.training import QualityPredictorTrainer
from nnunet_qg.ssl_losses import (confidence_masked_ce, nonfinite_fraction, per_sample_dice_ce, qar_loss,
                                  quality_weights, softmax_mse_per_sample, weighted_mean)


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


def test_a_non_finite_quality_is_a_rejection():
    quality = torch.tensor([0.9, float("nan"), float("inf"), -float("inf"), 0.7])
    w = quality_weights(quality, temperature=2.0, threshold=0.5)
    torch.testing.assert_close(w, torch.tensor([0.81, 0.0, 0.0, 0.0, 0.49]))
    losses = torch.tensor([1.0, 2.0, 4.0, 8.0, 3.0])
    mean = weighted_mean(losses, w)
    assert torch.isfinite(mean) and mean == pytest.approx((0.81 * 1 + 0.49 * 3) / (0.81 + 0.49), rel=1e-5)
    assert nonfinite_fraction(quality) == pytest.approx(0.6)
    assert weighted_mean(losses, quality_weights(torch.full((5,), float("nan")))) == 0  # all rejected


def test_qar_uses_only_finite_scores_and_keeps_the_students_gradient_finite():
    """A patch whose score is NaN (here: a NaN voxel in g's input) adds nothing to QAR's value, and no NaN to the
    student's gradient, though the zero gradient that the score gets meets NaN inside g."""
    torch.manual_seed(0)
    g = QualityPredictor(1, 2, (16, 16, 16))
    QualityPredictorTrainer(g, [1, 2], [0, 1, 2]).freeze()
    student = torch.nn.Conv3d(1, 3, 3, padding=1)
    x = torch.randn(3, 1, 16, 16, 16)
    g_input = x.clone()
    g_input[1, 0, 5, 5, 5] = float("nan")
    probs = torch.softmax(student(x), 1)[:, 1:]
    quality = g(g_input, probs)
    assert torch.isfinite(quality[[0, 2]]).all() and not torch.isfinite(quality[1]).any()
    loss = qar_loss(quality, probs)
    torch.testing.assert_close(loss, 1 - quality[[0, 2]].mean())
    loss.backward()
    assert torch.isfinite(student.weight.grad).all() and student.weight.grad.abs().sum() > 0
    # with every score non-finite QAR is 0
    assert qar_loss(torch.full((2, 2), float("nan"))) == 0


def test_per_sample_dice_ce_with_deep_supervision():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 1, 8, 8, 8))
    perfect = torch.nn.functional.one_hot(target[:, 0], 3).movedim(-1, 1).float() * 20
    wrong = perfect.roll(1, dims=1)
    logits = torch.cat((perfect[:1], wrong[1:]))
    lower = torch.nn.functional.interpolate(logits, scale_factor=0.5, mode="nearest-exact")  # nnU-Net's alignment
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


def _nnunet_ds_targets(target: torch.Tensor, ds_scales) -> list:
    """target (B, 1, ...) downsampled per sample by nnU-Net's own DownsampleSegForDSTransform."""
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
    transform = DownsampleSegForDSTransform(ds_scales)
    per_sample = [transform(segmentation=t)["segmentation"] for t in target]
    return [torch.stack([s[i] for s in per_sample]) for i in range(len(ds_scales))]


@pytest.mark.parametrize("weights", [(0.5, 0.3, 0.2), (2 / 3, 1 / 3, 0.0)])  # the second: nnU-Net's
def test_per_sample_dice_ce_equals_nnunet_deep_supervision_loss(weights):
    """Averaged over samples, per_sample_dice_ce is nnU-Net's training loss (+1: its Dice term is negative), on
    a real deep-supervision U-Net's outputs, with lower targets made by nnU-Net's DownsampleSegForDSTransform
    (a `nearest` downsampling would shift them against nnU-Net's `nearest-exact` alignment)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    torch.manual_seed(0)
    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 1], [2, 2, 2]]  # an anisotropic plan, as nnU-Net plans them
    network = PlainConvUNet(1, 4, (4, 8, 8, 8), torch.nn.Conv3d, 3, strides, 1, 3, 1, conv_bias=True,
                            norm_op=torch.nn.InstanceNorm3d, norm_op_kwargs={"affine": True},
                            nonlin=torch.nn.LeakyReLU, deep_supervision=True)
    with torch.no_grad():
        outputs = [o * 20 for o in network(torch.randn(3, 1, 24, 32, 16))]  # sharp enough to see misalignment
    target = torch.randint(0, 3, (3, 1, 24, 32, 16))
    ds_scales = list(list(s) for s in 1 / np.cumprod(np.vstack(strides), axis=0))[:-1]  # as nnU-Net's trainer
    targets = _nnunet_ds_targets(target, ds_scales)
    assert len(outputs) == len(weights) and [t.shape[2:] for t in targets] == [o.shape[2:] for o in outputs]
    nnunet_loss = DeepSupervisionWrapper(DC_and_CE_loss(
        {"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1, weight_dice=1,
        ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss), weights)
    expected = nnunet_loss(outputs, targets) + 1  # weights sum to 1: the -Dice terms sum to -mean Dice
    ours = per_sample_dice_ce(outputs, target, weights)
    assert ours.shape == (3,)
    torch.testing.assert_close(ours.mean(), expected, rtol=1e-5, atol=1e-5)
