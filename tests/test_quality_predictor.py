"""The quality predictor network: shapes, freezing, saving, and that it learns (beats a constant)."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import HIPPOCAMPUS, requires_hippocampus, train_on_corruptions
from nnunet_qg.phantom import make_phantom_case
from nnunet_qg.experiments.quality import (ResearchQualityPredictor, ResearchQualityPredictorTrainer,
                                           encoder_strides, pairwise_ranking_loss, upsampled_predictions)
from nnunet_qg.quality.network import QualityPredictor, load_quality_predictor, save_quality_predictor
from nnunet_qg.quality.training import QualityPredictorTrainer, one_hot_foreground
from nnunet_qg.quality.dice import soft_dice_per_label
from nnunet_qg.quality.metrics import agreement


@pytest.mark.parametrize("patch,channels", [((24, 32, 24), 1), ((64, 48), 3)])
def test_output_shape_range_and_size(patch, channels):
    g = QualityPredictor(channels, 2, patch)
    q = g(torch.randn(3, channels, *patch), torch.rand(3, 2, *patch))
    assert q.shape == (3, 2) and bool(((q >= 0) & (q <= 1)).all())
    assert sum(p.numel() for p in g.parameters()) < 2_000_000


def test_full_resolution_first_stage_keeps_the_patch_size_and_round_trips(tmp_path):
    assert encoder_strides((40, 56, 40), 4)[0] == [2, 2, 2]
    strides = encoder_strides((40, 56, 40), 4, full_resolution=True)
    assert strides[0] == [1, 1, 1] and strides[1:] == encoder_strides((40, 56, 40), 3)
    g = ResearchQualityPredictor(1, 2, (16, 24, 16), full_resolution=True).eval()
    first = g.encoder.stages[0].blocks[0].conv1.conv
    assert tuple(first.stride) == (1, 1, 1)
    save_quality_predictor(g, str(tmp_path / "g.pth"))
    loaded = load_quality_predictor(str(tmp_path / "g.pth"))
    assert isinstance(loaded, ResearchQualityPredictor) and loaded.config["full_resolution"]
    x, m = torch.randn(2, 1, 16, 24, 16), torch.rand(2, 2, 16, 24, 16)
    assert torch.allclose(g(x, m), loaded(x, m))


def test_frozen_predictor_passes_gradients_but_is_not_updated():
    g = QualityPredictor(1, 2, (16, 16, 16))
    trainer = QualityPredictorTrainer(g, [1, 2], [0, 1, 2])
    trainer.freeze()
    before = {k: v.clone() for k, v in g.state_dict().items()}
    mask = torch.rand(2, 2, 16, 16, 16, requires_grad=True)
    (1 - g(torch.randn(2, 1, 16, 16, 16), mask).mean()).backward()
    assert mask.grad is not None and mask.grad.abs().sum() > 0
    assert all(p.grad is None for p in g.parameters()) and not g.training
    trainer.optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in g.state_dict().items())


def test_refresh_step_updates_a_frozen_predictor_and_freezes_it_again():
    g = QualityPredictor(1, 2, (16, 16, 16))
    trainer = QualityPredictorTrainer(g, [1, 2], [0, 1, 2], real_fraction=0.2, num_threads=1)
    trainer.freeze()
    before = {k: v.clone() for k, v in g.state_dict().items()}
    target = torch.zeros(2, 1, 16, 16, 16, dtype=torch.long)
    target[:, :, 4:10, 4:10, 4:10] = 1
    target[:, :, 10:14, 4:10, 4:10] = 2
    loss = trainer.refresh_step(torch.randn(2, 1, 16, 16, 16), target, torch.randn(2, 3, 16, 16, 16),
                                torch.autocast("cpu", enabled=False), real_fraction=1.0)
    assert loss > 0 and not all(torch.equal(before[k], v) for k, v in g.state_dict().items())
    assert trainer.frozen and not g.training and not any(p.requires_grad for p in g.parameters())
    assert trainer.real_fraction == 0.2  # the override applied to that step only


def test_save_and_safe_load_round_trip(tmp_path):
    g = QualityPredictor(1, 2, (16, 24, 16)).eval()
    path = tmp_path / "g.pth"
    save_quality_predictor(g, str(path))
    torch.load(path, weights_only=True)  # safe loading works on the file itself
    loaded = load_quality_predictor(str(path))
    x, m = torch.randn(2, 1, 16, 24, 16), torch.rand(2, 2, 16, 24, 16)
    assert torch.allclose(g(x, m), loaded(x, m))


def test_files_of_earlier_versions_load(tmp_path):
    """Before the research options moved to nnunet_qg.experiments, every g's config carried `belief`,
    `full_resolution` and `self_estimate` (False for the shipped trainers): such a file loads as the core g, and one
    with an option set as the research g."""
    g = QualityPredictor(1, 2, (16, 24, 16)).eval()
    assert not g.uses_belief and set(g.config) == {"image_channels", "num_labels", "patch_size", "features",
                                                   "hidden", "dropout"}
    old_config = {**g.config, "belief": False, "full_resolution": False, "self_estimate": False}
    torch.save({"config": old_config, "state_dict": g.state_dict()}, tmp_path / "old.pth")
    loaded = load_quality_predictor(str(tmp_path / "old.pth"))
    assert type(loaded) is QualityPredictor and loaded.config == g.config and not loaded.training
    x, m = torch.randn(2, 1, 16, 24, 16), torch.rand(2, 2, 16, 24, 16)
    assert torch.allclose(g(x, m), loaded(x, m))
    research = ResearchQualityPredictor(1, 2, (16, 24, 16), belief=True).eval()
    assert research.config == {**old_config, "belief": True}  # the same layout as the files of earlier versions
    torch.save({"config": research.config, "state_dict": research.state_dict()}, tmp_path / "belief.pth")
    loaded = load_quality_predictor(str(tmp_path / "belief.pth"))
    assert isinstance(loaded, ResearchQualityPredictor) and loaded.uses_belief
    assert torch.allclose(research(x, m, m), loaded(x, m, m))


def _phantom_cases(n):
    rng = np.random.RandomState(0)
    cases = [make_phantom_case(rng, (24, 32, 24)) for _ in range(n)]
    return [((img - img.mean()) / img.std(), lab.astype(np.int16)) for img, lab in cases]


def _hippocampus_cases(n):
    cases = []
    for f in sorted((HIPPOCAMPUS / "imagesTr").glob("*.nii.gz"))[:n]:
        img = sitk.GetArrayFromImage(sitk.ReadImage(str(f))).astype(np.float32)
        lab = sitk.GetArrayFromImage(sitk.ReadImage(str(HIPPOCAMPUS / "labelsTr" / f.name))).astype(np.int16)
        pad = [(0, max(0, s - d)) for s, d in zip((40, 48, 40), img.shape)]
        img, lab = np.pad(img, pad)[:40, :48, :40], np.pad(lab, pad)[:40, :48, :40]
        cases.append(((img - img.mean()) / (img.std() + 1e-8), lab))
    return cases


def _learns(cases, steps: int):
    train, held_out = cases[:-4], cases[-4:]
    g, trainer, seen = train_on_corruptions(train, steps)
    # held-out cases, fresh corruptions
    trainer.rng = np.random.default_rng(99)
    images_h = torch.from_numpy(np.stack([c[0] for c in held_out])[:, None])
    targets_h = torch.from_numpy(np.stack([c[1] for c in held_out])[:, None])
    predicted, true = [], []
    g.eval()
    with torch.no_grad():
        for _ in range(10):
            mask, dice = trainer.corrupted_samples(targets_h)
            predicted.append(g(images_h, mask).numpy())
            true.append(dice.numpy())
    predicted, true = np.concatenate(predicted).ravel(), np.concatenate(true).ravel()
    constant = np.full_like(true, np.concatenate(seen).mean())
    return agreement(predicted, true), agreement(constant, true)


def test_predictor_learns_on_phantom():
    # 300 steps were enough with the dependencies of 2026-11-26; with those of 2026-11-27 the same seed sat on
    # a plateau at 300 steps (MAE 0.315 against the constant's 0.354) and learned by 600 (0.163, Pearson 0.73)
    learned, constant = _learns(_phantom_cases(14), steps=600)
    assert learned["mae"] < 0.8 * constant["mae"], (learned, constant)
    assert learned["pearson"] > 0.5, learned


@pytest.mark.full
@requires_hippocampus
def test_predictor_learns_on_real_hippocampus():
    learned, constant = _learns(_hippocampus_cases(14), steps=300)
    assert learned["mae"] < 0.8 * constant["mae"], (learned, constant)
    assert learned["pearson"] > 0.5, learned


def test_one_hot_foreground():
    lm = torch.tensor([[[0, 1, 2, 2]]])
    assert one_hot_foreground(lm, [1, 2]).tolist() == [[[0, 1, 0, 0], [0, 0, 1, 1]]]


def test_corrupted_samples_do_not_depend_on_thread_count():
    targets = torch.from_numpy(np.stack([c[1] for c in _phantom_cases(4)])[:, None])
    results = []
    for threads in (1, 3):
        trainer = QualityPredictorTrainer(QualityPredictor(1, 2, (24, 32, 24)), [1, 2], [0, 1, 2], seed=4,
                                          num_threads=threads)
        results.append(trainer.corrupted_samples(targets))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_pairwise_ranking_loss_penalises_wrong_order_and_too_small_gaps_only():
    true = torch.tensor([[0.9], [0.5], [0.1]])
    assert pairwise_ranking_loss(torch.tensor([[0.95], [0.5], [0.05]]), true) == 0  # right order, wider gaps
    assert pairwise_ranking_loss(torch.tensor([[0.9], [0.5], [0.1]]), true) == 0  # exact
    too_flat = pairwise_ranking_loss(torch.tensor([[0.6], [0.5], [0.4]]), true)
    reversed_order = pairwise_ranking_loss(torch.tensor([[0.1], [0.5], [0.9]]), true)
    assert 0 < too_flat < reversed_order
    assert pairwise_ranking_loss(torch.tensor([[0.2], [0.7]]), torch.tensor([[0.8], [0.805]])) == 0  # gap < min_gap
    predicted = torch.tensor([[0.5], [0.5]], requires_grad=True)
    pairwise_ranking_loss(predicted, torch.tensor([[0.9], [0.1]])).backward()
    assert predicted.grad[0, 0] < 0 < predicted.grad[1, 0]  # descent raises the better mask, lowers the worse


def test_upsampled_predictions_and_a_ranked_step_on_several_scales():
    outputs = [torch.randn(2, 3, 16, 16, 16), torch.randn(2, 3, 8, 8, 8), torch.randn(2, 3, 4, 4, 4),
               torch.randn(2, 3, 2, 2, 2)]
    scaled = upsampled_predictions(outputs, 3)
    assert len(scaled) == 3 and scaled[0] is outputs[0]
    assert all(s.shape == outputs[0].shape for s in scaled)
    assert len(upsampled_predictions(outputs[:2], 3)) == 2
    g = QualityPredictor(1, 2, (16, 16, 16))
    trainer = ResearchQualityPredictorTrainer(g, [1, 2], [0, 1, 2], real_fraction=1.0, num_threads=1,
                                              masks_per_sample=3, ranking_weight=1.0)
    target = torch.zeros(2, 1, 16, 16, 16, dtype=torch.long)
    target[:, :, 4:10, 4:10, 4:10] = 1
    target[:, :, 10:14, 4:10, 4:10] = 2
    before = {k: v.clone() for k, v in g.state_dict().items()}
    loss = trainer.train_step(torch.randn(2, 1, 16, 16, 16), target, scaled, torch.autocast("cpu", enabled=False))
    assert torch.isfinite(loss) and loss > 0
    assert not all(torch.equal(before[k], v) for k, v in g.state_dict().items())


def test_a_belief_predictor_reads_the_softmax_and_refuses_to_run_without_it(tmp_path):
    g = ResearchQualityPredictor(1, 2, (16, 16, 16), belief=True).eval()
    image, mask = torch.randn(2, 1, 16, 16, 16), torch.rand(2, 2, 16, 16, 16)
    with pytest.raises(ValueError, match="belief"):
        g(image, mask)
    assert not torch.allclose(g(image, mask, torch.zeros_like(mask)), g(image, mask, torch.ones_like(mask)))
    save_quality_predictor(g, str(tmp_path / "g.pth"))
    loaded = load_quality_predictor(str(tmp_path / "g.pth"))
    assert loaded.uses_belief and torch.allclose(loaded(image, mask, mask), g(image, mask, mask))
    trainer = ResearchQualityPredictorTrainer(g, [1, 2], [0, 1, 2], real_fraction=0.5, num_threads=1,
                                              masks_per_sample=2)
    target = torch.zeros(2, 1, 16, 16, 16, dtype=torch.long)
    target[:, :, 4:10, 4:10, 4:10] = 1
    logits = torch.randn(2, 3, 16, 16, 16)
    assert torch.isfinite(trainer.train_step(image, target, logits, torch.autocast("cpu", enabled=False)))
    scored = trainer.measure_batch(image, target, logits, torch.autocast("cpu", enabled=False), logits)
    assert set(scored) == {"real", "teacher", "corrupted"} and scored["real"][0].shape == (2, 2)


def test_a_self_estimate_predictor_starts_from_the_networks_expected_dice(tmp_path):
    """With self_estimate=True, g's output logit is its head's plus (at the start) the logit of the soft Dice
    of the mask against the network's softmax: with the head silenced, g is exactly that expected Dice."""
    g = ResearchQualityPredictor(1, 2, (16, 16, 16), self_estimate=True).eval()
    image, mask, belief = torch.randn(2, 1, 16, 16, 16), torch.rand(2, 2, 16, 16, 16), torch.rand(2, 2, 16, 16, 16)
    with pytest.raises(ValueError, match="softmax"):
        g(image, mask)
    with torch.no_grad():
        g.head[-1].weight.zero_()
        g.head[-1].bias.zero_()
    assert torch.allclose(g(image, mask, belief), soft_dice_per_label(mask, belief), atol=1e-5)
    save_quality_predictor(g, str(tmp_path / "g.pth"))
    loaded = load_quality_predictor(str(tmp_path / "g.pth"))
    assert loaded.uses_belief and loaded.config["self_estimate"] and not loaded.config["belief"]
    assert torch.allclose(loaded(image, mask, belief), g(image, mask, belief))


def test_several_steps_per_batch_each_on_fresh_masks():
    """train_steps(k): k optimizer steps on one batch, drawing k x masks_per_sample corruptions."""
    g = ResearchQualityPredictor(1, 2, (16, 16, 16), self_estimate=True)
    trainer = ResearchQualityPredictorTrainer(g, [1, 2], [0, 1, 2], real_fraction=0.5, num_threads=1,
                                              masks_per_sample=2)
    target = torch.zeros(2, 1, 16, 16, 16, dtype=torch.long)
    target[:, :, 4:10, 4:10, 4:10] = 1
    target[:, :, 10:14, 4:10, 4:10] = 2
    started = trainer.start_corruptions(target, 3 * 2)
    loss = trainer.train_steps(torch.randn(2, 1, 16, 16, 16), target, torch.randn(2, 3, 16, 16, 16),
                               torch.autocast("cpu", enabled=False), steps=3, corruptions=started)
    assert torch.isfinite(loss) and loss > 0
    assert {int(s["step"]) for s in trainer.optimizer.state.values()} == {3}
    assert all(f.done() for draw in started for f in draw)  # every started corruption was used


def _two_label_target() -> torch.Tensor:
    target = torch.zeros(2, 1, 16, 16, 16, dtype=torch.long)
    target[:, :, 4:10, 4:10, 4:10] = 1
    target[:, :, 10:14, 4:10, 4:10] = 2
    return target


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("refresh", [False, True])
def test_g_trains_in_float32_under_the_trainers_autocast(dtype, refresh):
    """The trainer passes its autocast; g's training (no loss scaling of its own) must not run in it: in float16
    the gradients of its small SmoothL1 losses underflow. Every convolution of g computes in float32."""
    g = QualityPredictor(1, 2, (16, 16, 16))
    trainer = QualityPredictorTrainer(g, [1, 2], [0, 1, 2], real_fraction=0.5, num_threads=1)
    if refresh:
        trainer.freeze()
    seen = []
    handles = [m.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
               for m in g.modules() if isinstance(m, torch.nn.Conv3d)]
    step = trainer.refresh_step if refresh else trainer.train_step
    loss = step(torch.randn(2, 1, 16, 16, 16), _two_label_target(), torch.randn(2, 3, 16, 16, 16),
                torch.autocast("cpu", dtype=dtype))
    for h in handles:
        h.remove()
    assert seen and set(seen) == {torch.float32} and loss.dtype == torch.float32
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in g.parameters())


def test_a_non_finite_loss_skips_gs_step_and_is_logged():
    g = QualityPredictor(1, 2, (16, 16, 16))
    logged = []
    trainer = QualityPredictorTrainer(g, [1, 2], [0, 1, 2], real_fraction=0.5, num_threads=1, log=logged.append)
    before = {k: v.clone() for k, v in g.state_dict().items()}
    image = torch.randn(2, 1, 16, 16, 16)
    image[0, 0, 3, 3, 3] = float("nan")  # g's score of that patch, and with it the loss, is NaN
    loss = trainer.train_step(image, _two_label_target(), torch.randn(2, 3, 16, 16, 16),
                              torch.autocast("cpu", enabled=False))
    assert not torch.isfinite(loss)
    assert all(torch.equal(before[k], v) for k, v in g.state_dict().items())
    assert not trainer.optimizer.state and trainer.skipped_steps == 1 and "skipped" in logged[0]
    # the next finite step trains as usual
    loss = trainer.train_step(torch.randn(2, 1, 16, 16, 16), _two_label_target(), torch.randn(2, 3, 16, 16, 16),
                              torch.autocast("cpu", enabled=False))
    assert torch.isfinite(loss) and not all(torch.equal(before[k], v) for k, v in g.state_dict().items())
    assert all(torch.isfinite(v).all() for v in g.state_dict().values() if v.is_floating_point())
    assert trainer.skipped_steps == 1 and len(logged) == 1


def test_close_shuts_the_corruption_threads_down_and_may_be_called_twice():
    trainer = QualityPredictorTrainer(QualityPredictor(1, 2, (16, 16, 16)), [1, 2], [0, 1, 2], num_threads=2)
    trainer.corrupted_draws(_two_label_target(), 2)
    pool = trainer._pool
    assert pool is not None and len(pool._threads) > 0
    trainer.close()
    assert trainer._pool is None and pool._shutdown and not any(t.is_alive() for t in pool._threads)
    trainer.close()  # a second call does nothing
    assert len(trainer.corrupted_draws(_two_label_target(), 2)) == 2  # later corruptions start new threads
    trainer.close()
