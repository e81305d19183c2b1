"""One joint pass over labelled + unlabelled patches and two separate passes give the same step.

`unlabeled_separate_backward` (nnUNetTrainerQGSSL_lowMemory) backpropagates the labelled pass before
the unlabelled pass runs. nnU-Net normalises per instance, so the gradients must equal the joint
pass's, with every unlabelled loss active; and the separate passes must need less memory. Under DDP the
choice is made at the start by a trial joint pass (choose_backward_mode), which must leave training as it was.
"""
import pytest

from conftest import PHANTOM_DATASET, trainer_checks_fixture

# the body of check(trainer, args), run on the real trainers in one subprocess (conftest.run_trainer_checks)
CHECK = """
    from nnunet_qg.networks import highest_resolution
    from nnunet_qg.profiling import peak_tensor_bytes, profile_memory
    if hasattr(trainer, "quality"):  # as after the warm-up, every unlabelled loss on
        trainer.quality.freeze()
        trainer._weights = {"plqw": 1.0, "qar": 0.5}
        trainer.quality_threshold = 0.0  # every pseudo-label of the untrained teacher weighs (its loss has a gradient)
    trainer._current_unlabeled_weight = 1.0
    torch.manual_seed(0)
    patch = trainer.configuration_manager.patch_size
    data = torch.randn(2, 1, *patch)
    with torch.no_grad():  # labels the network partly agrees with, so that every loss has a gradient
        seg = highest_resolution(trainer.network(data)).argmax(1, keepdim=True)
    target = [seg] + [torch.nn.functional.interpolate(seg.float(), size=o.shape[2:]).long()
                      for o in trainer.network(data)[1:]]
    views = trainer.unlabeled_batch(torch.randn(2, 1, *patch), torch.randn(2, 1, *patch))  # with the teacher's targets

    def step(separate):
        trainer.unlabeled_separate_backward = separate
        trainer.network.zero_grad(set_to_none=True)
        with profile_memory() as prof:
            loss, loss_sup, loss_u, _, extras = trainer.forward_backward(data, target, views)
        grads = [p.grad.clone() for p in trainer.network.parameters() if p.grad is not None]
        return float(loss), float(loss_u), grads, extras, peak_tensor_bytes(prof)

    joint, separate = step(False), step(True)
    assert abs(joint[0] - separate[0]) <= 1e-5 * max(1.0, abs(joint[0])), (joint[0], separate[0])
    assert joint[1] > 0 and abs(joint[1] - separate[1]) <= 1e-5 * max(1.0, joint[1]), (joint[1], separate[1])
    assert len(joint[2]) == len(separate[2]) > 0  # the same parameters get a gradient
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in joint[2]))
    diff = torch.sqrt(sum(((a.double() - b.double()) ** 2).sum() for a, b in zip(joint[2], separate[2])))
    assert norm > 0 and diff <= 1e-4 * norm, (float(diff), float(norm))
    if "ssl_loss_qar" in joint[3]:
        assert abs(float(joint[3]["ssl_loss_qar"]) - float(separate[3]["ssl_loss_qar"])) < 1e-5
    assert separate[4] < joint[4], (separate[4], joint[4])

    # a joint pass that runs out of GPU memory: the step is redone in separate passes, and so are the next
    def out_of_memory_for_the_joint_batch(module, args):
        if args[0].shape[0] > data.shape[0]:
            raise torch.OutOfMemoryError("simulated: the joint batch does not fit")
    hook = trainer.network.register_forward_pre_hook(out_of_memory_for_the_joint_batch)
    trainer.unlabeled_separate_backward = False
    trainer.network.zero_grad(set_to_none=True)
    loss = float(trainer.forward_backward(data, target, views)[0])
    hook.remove()
    assert trainer.unlabeled_separate_backward is True
    assert abs(loss - separate[0]) <= 1e-6 * max(1.0, abs(loss)), (loss, separate[0])
    fallback = [p.grad for p in trainer.network.parameters() if p.grad is not None]
    assert all(torch.equal(a, b) for a, b in zip(fallback, separate[2])), "not the separate passes' gradients"
    with open(trainer.log_file) as f:
        assert "Out of GPU memory in the joint" in f.read()

    # the trial of the joint pass at the start of training (choose_backward_mode; it decides under DDP on a GPU):
    # on the real network it runs and leaves no gradient, the weights and the random state as they were; on a
    # network that cannot take the joint batch it says no
    trainer.network.zero_grad(set_to_none=True)
    weights = [p.detach().clone() for p in trainer.network.parameters()]
    rng = torch.get_rng_state()
    assert trainer.joint_pass_fits() is True
    assert all(p.grad is None for p in trainer.network.parameters())
    assert all(torch.equal(a, p) for a, p in zip(weights, trainer.network.parameters()))
    assert torch.equal(rng, torch.get_rng_state())

    def out_of_memory_beyond_one_batch(module, args):
        if args[0].shape[0] > trainer.batch_size:
            raise torch.OutOfMemoryError("simulated: the joint batch does not fit")
    hook = trainer.network.register_forward_pre_hook(out_of_memory_beyond_one_batch)
    assert trainer.joint_pass_fits() is False
    hook.remove()
    assert all(p.grad is None for p in trainer.network.parameters())
    trainer.unlabeled_separate_backward = False
    trainer.choose_backward_mode()  # not DDP: nothing decided at the start (the first failing joint pass does)
    assert trainer.unlabeled_separate_backward is False
    print("OK", joint[4], separate[4], float(diff / norm))
"""
TRAINERS = ["nnUNetTrainerQGSSL_debug", "nnUNetTrainerMeanTeacher_debug"]


checked = trainer_checks_fixture(CHECK, [(t, PHANTOM_DATASET) for t in TRAINERS], "separate_checks")


@pytest.mark.parametrize("trainer", TRAINERS)
def test_separate_passes_give_the_joint_gradients_with_less_memory(checked, trainer):
    result = checked[(trainer, PHANTOM_DATASET)]
    assert result == "OK", result
