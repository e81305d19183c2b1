"""The teacher's and the student's probabilities on a BATCH, in the real trainers (a regression test).

nnU-Net's LabelManager.apply_inference_nonlin takes one case (C, ...): on a batch it normalised
across the batch axis and ran without gradient, so the teacher's pseudo-labels were garbage and
the Mean Teacher consistency never reached the student. Here the teacher is set equal to the
student, so its probabilities must equal the student's softmax sample by sample.
"""
import json
import sys

import numpy as np
import pytest

from conftest import PHANTOM_DATASET, PHANTOM_ID, REPO, run_cli, trainer_checks_fixture

# the body of check(trainer, args), run on the real trainers in one subprocess (conftest.run_trainer_checks)
CHECK = """
    from nnunet_qg.mirror_agreement import mirror_agreement
    from nnunet_qg.networks import highest_resolution, unwrap_network
    trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()  # the mirror axes, as training sets them
    torch.manual_seed(0)
    x = torch.randn(3, 1, *trainer.configuration_manager.patch_size)  # three different samples
    trainer.teacher.module.load_state_dict(unwrap_network(trainer.network).state_dict())  # teacher = student
    with torch.no_grad():
        student = torch.softmax(highest_resolution(trainer.network(x)).float(), 1)
    teacher = trainer.teacher_probabilities(x)
    assert teacher.shape == student.shape, (teacher.shape, student.shape)
    assert torch.allclose(teacher.sum(1), torch.ones_like(teacher[:, 0]), atol=1e-5), "not normalised per voxel"
    assert torch.allclose(teacher, student, atol=1e-5), "teacher != student although their weights are equal"
    quality_guided = hasattr(trainer, "pseudo_labels")
    if quality_guided:
        pseudo, mask = trainer.pseudo_labels(teacher)
        assert torch.equal(pseudo[:, 0], student.argmax(1)), "pseudo-labels are not the teacher's argmax"
        channels = trainer.quality.foreground_channels
        assert torch.equal(mask, torch.stack([student.argmax(1) == c for c in channels], 1).float())
        trainer.quality.freeze()  # as after the warm-up
        trainer._weights = {"plqw": 1.0, "qar": 0.01}
    # the unlabelled loss alone moves the student
    trainer.network.zero_grad(set_to_none=True)
    view_teacher = x + 0.3 * torch.randn_like(x)
    output = trainer.network(x)
    loss, extras = trainer.compute_unlabeled_loss(output, x, view_teacher)
    if quality_guided:  # where g scores the pseudo-labels, PL-QW and QAR share one pass of g: a pass's values each
        g = trainer.quality_predictor
        with torch.no_grad():
            pseudo_mask = trainer.pseudo_labels(trainer.teacher_probabilities(view_teacher))[1]
            if trainer.pseudo_labels_scored_by_g():  # MTQW: g's weights
                plqw_quality = g(view_teacher, pseudo_mask).float().mean(1)
            else:  # QG-SSL as shipped: the teacher's mirror agreement on ITS view
                plqw_quality = mirror_agreement(trainer.teacher_probabilities, view_teacher, pseudo_mask,
                                                trainer.inference_allowed_mirroring_axes, trainer.quality.channel_one_hot)
            qar = 1 - g(x, trainer.quality.foreground_softmax(highest_resolution(output))).mean()
        assert trainer.pseudo_labels_scored_by_g() == ("MTQW" in trainer.__class__.__name__)
        assert torch.allclose(extras["ssl_pseudo_label_quality"], plqw_quality.mean(), atol=1e-5)
        assert torch.allclose(extras["ssl_loss_qar"], qar, atol=1e-5)
    assert loss.requires_grad, "the unlabelled loss has no gradient"
    loss.backward()
    grads = [p.grad.abs().sum() for p in trainer.network.parameters() if p.grad is not None]
    assert grads and float(sum(grads)) > 0, "no gradient reached the student"
    if quality_guided:
        assert all(p.grad is None for p in g.parameters()), "the unlabelled loss reached g's parameters"
    print("OK", float(loss))
"""
TRAINERS = ["nnUNetTrainerMeanTeacher_debug", "nnUNetTrainerQGSSL_debug", "nnUNetTrainerMTQW_debug"]


checked = trainer_checks_fixture(CHECK, [(t, PHANTOM_DATASET) for t in TRAINERS], "teacher_checks")


@pytest.mark.parametrize("trainer", TRAINERS)
def test_teacher_probabilities_per_sample_and_consistency_gradient(checked, trainer):
    result = checked[(trainer, PHANTOM_DATASET)]
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
    for row in rows.values():  # w = q^T 1[q >= tau]: a kept pseudo-label weighs between tau^T and 1, a rejected one 0
        lowest = report["threshold"] ** report["temperature"]
        assert lowest * row["kept"] - 1e-6 <= row["weight mean"] <= row["kept"] + 1e-6, row
    assert "| unlabelled |" in proc.stdout
    after = {p.name: p.stat().st_mtime_ns for p in fold.iterdir()}
    assert after == before, sorted(set(after.items()) ^ set(before.items()))
