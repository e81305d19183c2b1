"""The teacher's and the student's probabilities on a BATCH, and the teacher's part of a step, in the real trainers.

nnU-Net's LabelManager.apply_inference_nonlin takes one case (C, ...): on a batch it normalised
across the batch axis and ran without gradient, so the teacher's pseudo-labels were garbage and
the Mean Teacher consistency never reached the student. Here the teacher is first set equal to the
student, so its probabilities must equal the student's softmax sample by sample. Then the teacher gets
weights of its own and sees a view that differs from the student's: its pseudo-labels and PL-QW's score must
equal what the test's own teacher calls give, scored by the voxelwise reference of test_mirror_agreement.py.
"""
import json
import sys

import numpy as np
import pytest

from conftest import PHANTOM_DATASET, PHANTOM_ID, REPO, run_cli, trainer_checks_fixture

# the body of check(trainer, args), run on the real trainers in one subprocess (conftest.run_trainer_checks);
# args[0]: the PL-QW options to set ("shipped", "skip": mirror_absent_labels "skip", "average":
# pseudo_label_mirror_average, "each" / "all_at_once": mirror_agreement_images)
CHECK = """
    import sys
    sys.path.insert(0, TESTS)
    import numpy as np
    from test_mirror_agreement import reference_agreement, reference_groups, reference_mirrored
    from nnunet_qg.networks import highest_resolution, unwrap_network
    from nnunet_qg.ssl_losses import neutral_weights, quality_weights
    torch.manual_seed(0)
    x = torch.randn(3, 1, *trainer.configuration_manager.patch_size)  # three different samples
    trainer.teacher.module.load_state_dict(unwrap_network(trainer.network).state_dict())  # teacher = student
    with torch.no_grad():
        student = torch.softmax(highest_resolution(trainer.network(x)).float(), 1)
    teacher = trainer.teacher_probabilities(x)
    assert teacher.shape == student.shape, (teacher.shape, student.shape)
    assert torch.allclose(teacher.sum(1), torch.ones_like(teacher[:, 0]), atol=1e-5), "not normalised per voxel"
    assert torch.allclose(teacher, student, atol=1e-5), "teacher != student although their weights are equal"
    quality_guided = hasattr(trainer, "plqw_weight")
    if quality_guided:
        if args[0] == "skip":
            trainer.mirror_absent_labels = "skip"
        if args[0] == "average":
            trainer.pseudo_label_mirror_average = True
        if args[0] in ("each", "all_at_once"):
            trainer.mirror_agreement_images = args[0]
        if trainer.quality is not None:
            trainer.quality.freeze()  # as after the warm-up
        trainer._weights = {"plqw": 1.0, "qar": 0.01 if trainer.qar_weight > 0 else 0.0}
    # the teacher: weights of its own (a step of noise away), a view of its own
    with torch.no_grad():
        for p in trainer.teacher.module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    view_teacher = x + 0.3 * torch.randn_like(x)
    view_student = x
    trainer.network.zero_grad(set_to_none=True)
    unlabeled = trainer.unlabeled_batch(view_student, view_teacher)
    output = trainer.network(view_student)
    loss, extras = trainer.compute_unlabeled_loss(output, unlabeled)
    if quality_guided:
        pseudo = unlabeled.targets
        axes = list(trainer.inference_allowed_mirroring_axes)
        labels = trainer.foreground_channels
        def teacher_logits(images):  # one call on the batch, as the trainer makes it: per-sample calls may
            with torch.no_grad():  # pick other CPU kernels and part near-tied voxels (seen once as a flaky argmax)
                return trainer.teacher(images).float()
        all_at_once = trainer.mirror_agreement_images == "all_at_once"
        if args[0] == "average":
            probs = [torch.softmax(teacher_logits(view_teacher), 1)] + [
                torch.softmax(teacher_logits(view_teacher.flip([a + 2 for a in g])), 1).flip([a + 2 for a in g])
                for g in reference_groups(axes, all_at_once)]
            expected_channels = torch.stack(probs).mean(0).argmax(1)
        else:
            expected_channels = teacher_logits(view_teacher).argmax(1)
        assert torch.equal(pseudo.channels[:, 0], expected_channels), "pseudo-labels are not the teacher's argmax"
        assert torch.equal(pseudo.mask, torch.stack([expected_channels == c for c in labels], 1).float())
        g = trainer.quality_predictor if trainer.quality is not None else None
        if trainer.pseudo_labels_scored_by_g():  # MTQW: g's score of the teacher's pseudo-label on its view
            with torch.no_grad():
                expected_q = g(view_teacher, pseudo.mask).float().mean(1)
        else:  # PL-QW as shipped: the teacher's mirror agreement on ITS view, by the voxelwise reference
            # the mirrored predictions against the pseudo-label (the averaged one with "average")
            mirrored = reference_mirrored(teacher_logits, view_teacher, axes, all_at_once)
            expected_q = torch.from_numpy(reference_agreement(expected_channels.numpy(), mirrored, labels,
                                                              args[0] != "skip"))
            assert len(axes) == 3  # the phantom is 3D
        expected_q = expected_q.float()
        assert torch.allclose(pseudo.quality if pseudo.quality is not None else expected_q, expected_q, atol=1e-5)
        assert torch.allclose(extras["ssl_pseudo_label_quality"], expected_q.mean(), atol=1e-5)
        weights = quality_weights(expected_q, trainer.quality_temperature, trainer.quality_threshold)
        if args[0] == "skip":  # no label in the pseudo-label nor in any mirrored prediction
            found = [np.isin(maps, labels).reshape(len(maps), -1).any(1) for maps in [expected_channels.numpy()] + mirrored]
            assert pseudo.background_only.tolist() == (~np.any(found, 0)).tolist()
            weights = neutral_weights(weights, torch.from_numpy(~np.any(found, 0)))
        else:
            assert pseudo.background_only is None
        assert torch.allclose(extras["ssl_quality_weight_mean"], weights.mean(), atol=1e-5)
        if trainer.qar_weight > 0:
            with torch.no_grad():
                qar = 1 - g(view_student, trainer.quality.foreground_softmax(highest_resolution(output))).mean()
            assert torch.allclose(extras["ssl_loss_qar"], qar, atol=1e-5)
    # the unlabelled loss alone moves the student, never g
    assert loss.requires_grad, "the unlabelled loss has no gradient"
    loss.backward()
    grads = [p.grad.abs().sum() for p in trainer.network.parameters() if p.grad is not None]
    assert grads and float(sum(grads)) > 0, "no gradient reached the student"
    if quality_guided and trainer.quality is not None:
        assert all(p.grad is None for p in trainer.quality_predictor.parameters()), "the loss reached g"
    print("OK", float(loss))
""".replace("TESTS", repr(str(REPO / "tests")))
JOBS = [("nnUNetTrainerMeanTeacher_debug", "shipped"), ("nnUNetTrainerQGSSL_debug", "shipped"),
        ("nnUNetTrainerMTQW_debug", "shipped"), ("nnUNetTrainerQGSSL_PLQW_debug", "shipped"),
        ("nnUNetTrainerQGSSL_PLQW_debug", "skip"), ("nnUNetTrainerQGSSL_PLQW_debug", "average"),
        ("nnUNetTrainerQGSSL_PLQW_debug", "each"), ("nnUNetTrainerQGSSL_PLQW_debug", "all_at_once")]


checked = trainer_checks_fixture(CHECK, [(t, PHANTOM_DATASET, option) for t, option in JOBS], "teacher_checks")


@pytest.mark.parametrize("trainer,option", JOBS)
def test_teacher_probabilities_pseudo_labels_scores_and_gradient(checked, trainer, option):
    result = checked[(trainer, PHANTOM_DATASET, option)]
    assert result == "OK", result


def test_pseudo_label_check_reads_a_trained_fold_and_leaves_it_alone(trained_models, tmp_path):
    """benchmarks/pseudo_label_check.py on a QG-SSL fold: a row per kind of patch, true Dice in range,
    and the fold folder untouched (no log, no rewritten checkpoint)."""
    model = trained_models.get("nnUNetTrainerQGSSL_debug")  # the session's model, read only
    fold = model.fold
    before = {p.name: p.stat().st_mtime_ns for p in fold.iterdir()}
    out = tmp_path / "check.json"
    proc = run_cli([sys.executable, str(REPO / "benchmarks" / "pseudo_label_check.py"), "-d", str(PHANTOM_ID),
                    "-tr", "nnUNetTrainerQGSSL_debug", "--batches", "2", "--device", "cpu", "--out", str(out)],
                   model.env, cwd=tmp_path)
    report = json.loads(out.read_text())
    rows = {r["patches"]: r for r in report["rows"]}
    assert rows["labelled"]["n"] == rows["unlabelled"]["n"] == 4  # 2 batches of 2
    true, scores = np.array(report["labelled_true_dice"]), np.array(report["labelled_g"])
    assert true.shape == scores.shape == (4, 2) and np.isfinite(true).all()
    assert [rows["labelled"][f"true Dice {l}"] for l in (1, 2)] == pytest.approx(true.mean(0).tolist())
    assert rows["labelled"]["g MAE"] == pytest.approx(np.abs(scores - true).mean())
    tau, power = report["threshold"], report["temperature"]
    for patches, key in (("labelled", "labelled_g"), ("unlabelled", "unlabelled_g")):  # w = q^T 1[q >= tau] of g's q
        q = np.array(report[key]).mean(1)
        assert rows[patches]["kept"] == pytest.approx((q >= tau).mean())
        assert rows[patches]["weight mean"] == pytest.approx(np.where(q >= tau, q ** power, 0).mean(), abs=1e-6)
    assert "| unlabelled |" in proc.stdout
    after = {p.name: p.stat().st_mtime_ns for p in fold.iterdir()}
    assert after == before, sorted(set(after.items()) ^ set(before.items()))
