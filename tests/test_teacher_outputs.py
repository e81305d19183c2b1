"""The teacher's and the student's probabilities on a BATCH, in the real trainers (a regression test).

nnU-Net's LabelManager.apply_inference_nonlin takes one case (C, ...): on a batch it normalised
across the batch axis and ran without gradient, so the teacher's pseudo-labels were garbage and
the Mean Teacher consistency never reached the student. Here the teacher is set equal to the
student, so its probabilities must equal the student's softmax sample by sample.
"""
import sys
import textwrap

import pytest

from conftest import PHANTOM_ID, run_cli

CHECK = textwrap.dedent("""
    import sys
    import torch
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunet_qg.networks import highest_resolution, unwrap_network

    name, dataset = sys.argv[1], sys.argv[2]
    plans = load_json(join(nnUNet_preprocessed, dataset, "nnUNetPlans.json"))
    plans["continue_training"] = False
    trainer = recursive_find_trainer_class_by_name(name)(
        plans=plans, configuration="3d_fullres", fold=0,
        dataset_json=load_json(join(nnUNet_preprocessed, dataset, "dataset.json")), device=torch.device("cpu"))
    trainer.initialize()
    torch.manual_seed(0)
    x = torch.randn(3, 1, *trainer.configuration_manager.patch_size)  # three different samples
    trainer.teacher.module.load_state_dict(unwrap_network(trainer.network).state_dict())  # teacher = student
    with torch.no_grad():
        student = torch.softmax(highest_resolution(trainer.network(x)).float(), 1)
    teacher = trainer.teacher_probabilities(x)
    assert teacher.shape == student.shape, (teacher.shape, student.shape)
    assert torch.allclose(teacher.sum(1), torch.ones_like(teacher[:, 0]), atol=1e-5), "not normalised per voxel"
    assert torch.allclose(teacher, student, atol=1e-5), "teacher != student although their weights are equal"
    if hasattr(trainer, "pseudo_labels_and_quality"):
        pseudo, quality = trainer.pseudo_labels_and_quality(x, teacher)
        assert torch.equal(pseudo[:, 0], student.argmax(1)), "pseudo-labels are not the teacher's argmax"
        assert quality.shape == (3,)
        trainer._weights = {"plqw": 1.0, "qar": 0.01}
    # the unlabelled loss alone moves the student
    trainer.network.zero_grad(set_to_none=True)
    loss, _ = trainer.compute_unlabeled_loss(trainer.network(x), x, x + 0.3 * torch.randn_like(x))
    assert loss.requires_grad, "the unlabelled loss has no gradient"
    loss.backward()
    grads = [p.grad.abs().sum() for p in trainer.network.parameters() if p.grad is not None]
    assert grads and float(sum(grads)) > 0, "no gradient reached the student"
    print("OK", float(loss))
""")


@pytest.mark.parametrize("trainer", ["nnUNetTrainerMeanTeacher_debug", "nnUNetTrainerQGSSL_debug"])
def test_teacher_probabilities_per_sample_and_consistency_gradient(phantom_env, tmp_path, trainer):
    # run outside the source tree, so the installed package (with its trainers) is the one imported
    result = run_cli([sys.executable, "-c", CHECK, trainer, f"Dataset{PHANTOM_ID:03d}_Phantom"], phantom_env,
                     timeout=600, cwd=tmp_path)
    assert "OK" in result.stdout
