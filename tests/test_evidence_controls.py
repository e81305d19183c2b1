"""The evidence protocol's control arms: each changes only PL-QW's weight, and withheld labels reach
nothing but that weight (and g's logged agreement), only in benchmark trainers."""
import json
import os

import numpy as np
import pytest
import torch

from conftest import HIPPOCAMPUS, PHANTOM_DATASET, REPO, nnunet_env, requires_hippocampus, run_cli, trainer_checks_fixture

# the body of check(trainer, args), run on the real trainers in one subprocess (conftest.run_trainer_checks);
# args[0]: which weight the trainer must give ("oracle", "unweighted", "shuffled", "g", "mirror", or "no_mirror_axes":
# the shipped PL-QW in plans that allow no mirroring falls back to g's weights)
CHECK = """
    import sys
    sys.path.insert(0, TESTS)
    from test_mirror_agreement import reference_of
    from nnunet_qg.quality.dice import soft_dice_per_label
    from nnunet_qg.quality.training import one_hot_foreground
    from nnunet_qg.ssl_losses import per_sample_dice_ce, quality_weights, weighted_mean
    kind = args[0]
    if kind == "no_mirror_axes":  # plans that allow no mirroring, as nnU-Net's nnUNetTrainerNoMirroring makes them
        class NoMirroring(type(trainer)):
            def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
                rotation, dummy_2d, patch, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
                self.inference_allowed_mirroring_axes = None
                return rotation, dummy_2d, patch, None
        kwargs = dict(trainer.my_init_kwargs)
        kwargs["plans"] = {**kwargs["plans"], "continue_training": False}  # nnU-Net's __init__ pops it
        trainer = NoMirroring(**kwargs)
        trainer.initialize()
        assert trainer.quality is not None, "without mirror axes PL-QW reads g: g must be trained"
        kind = "g"
    assert trainer.pseudo_labels_scored_by_g() == (kind != "mirror"), kind
    assert (trainer.quality is None) == (kind == "mirror"), "g trained where nothing reads it, or missing"
    torch.manual_seed(0)
    x = torch.randn(4, 1, *trainer.configuration_manager.patch_size)
    view_teacher = x + 0.3 * torch.randn_like(x)  # the teacher's view differs from the student's
    if trainer.quality is not None:
        trainer.quality.freeze()  # as after the warm-up
    trainer._weights = {"plqw": 1.0, "qar": 0.0}
    # "withheld" labels: the teacher's own pseudo-labels for two samples (true Dice 1), noise for the others
    with torch.no_grad():
        pseudo = trainer.teacher(view_teacher).argmax(1, keepdim=True)
    labels = torch.randint(0, 3, pseudo.shape)
    labels[:2] = pseudo[:2]
    trainer._unlabeled_target = labels
    unlabeled = trainer.unlabeled_batch(x, view_teacher)
    assert torch.equal(unlabeled.targets.channels, pseudo)
    mask = one_hot_foreground(pseudo, [1, 2])
    output = trainer.network(x)
    loss, extras = trainer.compute_unlabeled_loss(output, unlabeled)
    with torch.no_grad():
        true = soft_dice_per_label(mask, one_hot_foreground(labels, [1, 2])).mean(1)
        g_weights = quality_weights(trainer.quality_predictor(view_teacher, mask).float().mean(1)) \
            if trainer.quality is not None else None
    assert torch.allclose(extras["ssl_pseudo_label_true_dice"], true.mean()), "true Dice of the pseudo-labels"
    losses = per_sample_dice_ce(output, pseudo, trainer.loss.weight_factors)
    if kind == "shuffled":  # g's weights in the permutation the trainer's fresh private generator draws first
        weights = g_weights[torch.randperm(4, generator=torch.Generator().manual_seed(trainer.quality_seed))]
    elif kind == "mirror":  # the voxelwise reference from separate teacher calls on the teacher's view
        teacher_logits = lambda images: trainer.teacher(images).detach()
        mirror = torch.from_numpy(reference_of(teacher_logits, view_teacher, trainer.inference_allowed_mirroring_axes,
                                               [1, 2], all_at_once=trainer.mirror_agreement_images == "all_at_once")
                                  ).float()
        assert len(trainer.inference_allowed_mirroring_axes) == 3  # the phantom is 3D: three axes
        weights = quality_weights(mirror)
    else:
        weights = {"oracle": quality_weights(true), "unweighted": torch.ones(4), "g": g_weights}[kind]
    if kind == "oracle":
        assert weights[:2].eq(1).all() and weights[2:].eq(0).all(), weights  # perfect pseudo-labels kept only
    expected = weighted_mean(losses, weights)
    assert torch.allclose(loss, expected, atol=1e-6), (float(loss), float(expected))
    # the labels carry no gradient; the loss's gradient is that of the same loss with the weights as constants
    assert not labels.requires_grad and not true.requires_grad
    out0 = output[0]
    got = torch.autograd.grad(loss, out0, retain_graph=True)[0]
    want = torch.autograd.grad(weighted_mean(losses, weights.detach()), out0)[0]
    assert torch.allclose(got, want, atol=1e-7)
    print("OK", kind, [round(float(w), 3) for w in weights])
""".replace("TESTS", repr(str(REPO / "tests")))
# the evidence arms' trainers (WithheldLabels: the true Dice of the pseudo-labels); the shipped PL-QW's weight is
# that of its evidence arm pl_mirror
ARMS = [("nnUNetTrainerOraclePL_evidence", "oracle"), ("nnUNetTrainerUnweightedPL_evidence", "unweighted"),
        ("nnUNetTrainerShuffledPL_evidence", "shuffled"), ("nnUNetTrainerQGSSL_PLQW_gWeights_evidence", "g"),
        ("nnUNetTrainerQGSSL_PLQW_evidence", "mirror"), ("nnUNetTrainerQGSSL_PLQW_evidence", "no_mirror_axes")]


checked = trainer_checks_fixture(CHECK, [(t, PHANTOM_DATASET, kind) for t, kind in ARMS], "control_checks")


@pytest.mark.parametrize("trainer,kind", ARMS)
def test_control_arm_changes_only_the_weight(checked, trainer, kind):
    result = checked[(trainer, PHANTOM_DATASET, kind)]
    assert result == "OK", result


def test_withheld_labels_only_in_benchmark_trainers():
    """Every trainer that reads withheld labels is a benchmark control (or its budget variant), and the
    shipped trainers' unlabelled views carry only a token segmentation."""
    from nnunet_qg import trainers
    from nnunet_qg.trainers.nnUNetTrainerPLControls import WithheldLabels, nnUNetTrainerOraclePL

    readers = sorted(n for n in trainers.__all__ if issubclass(getattr(trainers, n), WithheldLabels))
    assert "nnUNetTrainerOraclePL" in readers and "nnUNetTrainerQGSSL_PLQW_evidence" in readers
    assert all(n.endswith(("_evidence", "_evidenceTiny")) or n == "nnUNetTrainerOraclePL" for n in readers), readers
    for shipped in ("nnUNetTrainerQGSSL", "nnUNetTrainerQGSSL_PLQW", "nnUNetTrainerQGSSL_PLQW_gWeights",
                    "nnUNetTrainerQGSSL_gWeights", "nnUNetTrainerMeanTeacher", "nnUNetTrainerMTQW"):
        assert not issubclass(getattr(trainers, shipped), WithheldLabels), shipped
    assert issubclass(nnUNetTrainerOraclePL, WithheldLabels)


def test_two_view_transform_keeps_the_withheld_segmentation_aligned():
    from nnunet_qg.unlabeled.two_views import TwoViewTransform
    from test_two_views import _image, _pipeline

    torch.manual_seed(0)
    np.random.seed(0)
    image = _image()
    seg = (image > 0.5).to(torch.int16)  # a segmentation that follows the image
    kept = TwoViewTransform(_pipeline(), keep_segmentation=True)(image=image.clone(), segmentation=seg.clone())
    token = TwoViewTransform(_pipeline())(image=image.clone(), segmentation=seg.clone())
    assert token["segmentation"].numel() == 1
    teacher_view, warped = kept["image"][1], kept["segmentation"][0]
    assert warped.shape == teacher_view.shape
    inside, outside = teacher_view[warped == 1], teacher_view[warped == 0]
    assert inside.numel() and inside.mean() > outside.mean() + 1.0, "segmentation not warped with the image"


def test_paired_summary_pairs_by_seed_with_a_t_interval():
    from scipy import stats

    from nnunet_qg.benchmark.paired import paired_summary

    rows = [{"arm": a, "trainer": a, "seed": s, "repeat": s, "dice": d} for a, s, d in (
        ("supervised", 0, 0.60), ("supervised", 1, 0.70), ("supervised", 2, 0.65),
        ("unweighted_pl", 0, 0.62), ("unweighted_pl", 1, 0.71), ("unweighted_pl", 2, 0.69),
        ("oracle_pl", 0, 0.64), ("oracle_pl", 1, 0.74))]  # seed 2 not finished: paired on 0 and 1 only
    rows.append({"arm": "oracle_pl", "trainer": "x", "seed": 2, "repeat": 2, "error": "killed"})
    arms = paired_summary(rows, "p", "cpu", "abc")["arms"]
    d = arms["unweighted_pl"]["minus_supervised"]
    diffs = np.array([0.02, 0.01, 0.04])
    half = stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / np.sqrt(3)
    assert d["n"] == 3 and d["mean"] == pytest.approx(diffs.mean())
    assert d["ci95"] == pytest.approx([diffs.mean() - half, diffs.mean() + half])
    assert arms["oracle_pl"]["seeds"] == [0, 1] and arms["oracle_pl"]["minus_unweighted"]["differences"] == \
        pytest.approx([0.02, 0.03])
    assert "minus_supervised" not in arms["supervised"] and "minus_unweighted" not in arms["unweighted_pl"]


@pytest.mark.full
@requires_hippocampus
def test_evidence_tiny_profile_end_to_end(tmp_path):
    """The protocol's pipeline on real Hippocampus: 1 labelled case (fold all), withheld labels prepared,
    paired runs of supervised, unweighted and oracle pseudo-labels and gated offline self-training (its first model
    the supervised arm's), the paired summary written."""
    out = tmp_path / "evidence"
    run_cli(["nnUNetv2_qg_benchmark", "-i", str(HIPPOCAMPUS), "--profile", "evidence-tiny", "-o", str(out), "-d", "760"],
            nnunet_env(tmp_path), timeout=1800)
    summary = json.loads((out / "evidence_summary.json").read_text())
    assert summary["profile"] == "evidence-tiny" and set(summary["arms"]) == {"supervised", "unweighted_pl", "oracle_pl",
                                                                            "offline_pl_gated"}
    for arm in ("unweighted_pl", "oracle_pl", "offline_pl_gated"):
        assert summary["arms"][arm]["seeds"] == [0, 1]
        assert summary["arms"][arm]["minus_supervised"]["n"] == 2 and len(summary["arms"][arm]["minus_supervised"]["ci95"]) == 2
    assert summary["arms"]["oracle_pl"]["minus_unweighted"]["n"] == 2
    assert (out / "evidence_paired.png").is_file()
    runs = json.loads((out / "ssl_benchmark.json").read_text())["runs"]
    for run in runs:
        checkpoint = torch.load(f"{run['model_folder']}/checkpoint_final.pth", map_location="cpu", weights_only=False)
        log = checkpoint["logging"]
        # nnU-Net's final validation of fold all (the run's own training cases) is skipped: the test cases score it
        assert not os.path.exists(f"{run['model_folder']}/validation"), run["model_folder"]
        if run["arm"] == "offline_pl_gated":  # retrained on the labelled case + the better half of the 4 unlabelled
            assert f"Dataset{760 + 20 + 10 + run['seed']}_HippocampusSelfTrain1" in run["model_folder"]
            assert run["offline"]["kept"] == 2 and run["offline"]["cases"] == 4
            log_text = (out / "work" / "logs" / f"self_train_1labelled_r{run['seed']}_offline_pl_gated.log").read_text()
            assert "trained (kept)" in log_text  # the first model is the supervised arm's of the same seed
            continue
        if run["arm"] == "supervised":
            continue
        pl_epochs = [e for e, w in enumerate(log["ssl_weight_plqw"]) if w > 0]
        assert pl_epochs, "no epoch with pseudo-labels"
        true_dice = [log["ssl_pseudo_label_true_dice"][e] for e in pl_epochs]
        assert all(0 <= v <= 1 for v in true_dice), true_dice  # judged against the withheld labels
        ess = [log["ssl_quality_weight_ess"][e] for e in pl_epochs]
        if run["arm"] == "unweighted_pl":  # weight 1 for every pseudo-label: the whole batch counts
            assert ess == pytest.approx([2.0] * len(ess)), ess
        assert all(np.isfinite(log["ssl_teacher_val_dice"])), "EMA teacher's validation pseudo-Dice not logged"
