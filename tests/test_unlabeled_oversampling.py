"""Unlabelled patches around likely foreground (`unlabeled_oversample_foreground_percent`): off, the trainers draw
exactly nnU-Net's uniform patches as before; on, a large field of view gives fewer background-only patches."""
import sys

import numpy as np
import pytest

from conftest import PHANTOM_DATASET, nnunet_env, plan_and_preprocess, run_cli, run_trainer_checks

# off (the default): the trainer's unlabelled loader, seeded, against nnU-Net's own loader without oversampling (what
# the unlabelled loader was before the option existed), built on the same cases, patch sizes and augmentation
OFF_IS_UNCHANGED = """
import numpy as np
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunet_qg.unlabeled.data_loader import nnUNetUnlabeledDatasetBlosc2
from nnunet_qg.unlabeled.two_views import TwoViewTransform

assert trainer.unlabeled_oversample_foreground_percent == 0
trainer.unlabeled_seed = 0
trainer.unlabeled_identifiers = trainer.check_unlabeled_data()
np.random.seed(1)
torch.manual_seed(1)
loader = trainer.get_unlabeled_dataloader()  # in the main process (nnUNet_n_proc_DA=0); draws one batch
ours = [next(loader) for _ in range(6)]
np.random.seed(1)  # the same random state again (both loaders draw from the process's global state)
torch.manual_seed(1)
transforms, initial_patch_size = trainer._training_transforms()
reference = nnUNetDataLoader(nnUNetUnlabeledDatasetBlosc2(trainer.preprocessed_unlabeled_folder,
                                                          sorted(trainer.unlabeled_identifiers)),
                             trainer.batch_size, initial_patch_size, trainer.configuration_manager.patch_size,
                             trainer.label_manager, oversample_foreground_percent=0.0,
                             transforms=TwoViewTransform(transforms))
reference.has_ignore = False
next(reference)
for a in ours:
    b = next(reference)
    assert list(a["keys"]) == list(b["keys"]), (a["keys"], b["keys"])
    assert torch.equal(a["data"], b["data"])
"""


def test_option_off_draws_the_patches_of_before(phantom_env, tmp_path):
    jobs = [("nnUNetTrainerQGSSL", PHANTOM_DATASET), ("nnUNetTrainerSSL", PHANTOM_DATASET)]
    results = run_trainer_checks(OFF_IS_UNCHANGED, jobs, phantom_env, tmp_path)
    for job in jobs:
        assert results[job] == "OK", results[job]


LARGE_FOV_ID = 902
LARGE_FOV_DATASET = f"Dataset{LARGE_FOV_ID}_PhantomLargeFOV"


@pytest.fixture(scope="module")
def large_fov_env(tmp_path_factory):
    """A small large-field-of-view phantom (48 x 64 x 64 voxels, structures scaled by 0.3; 3 labelled and 5
    unlabelled cases), planned and preprocessed for 2d, its unlabelled cases also with their withheld labels."""
    root = tmp_path_factory.mktemp("large_fov")
    env = nnunet_env(root)
    source = root / f"Task{LARGE_FOV_ID}_PhantomLargeFOV"
    run_cli(["nnUNetv2_qg_make_phantom", "-o", str(source), "-n", "8", "--shape", "48", "64", "64",
             "--structure-scale", "0.3"], env)
    run_cli(["nnUNetv2_convert_MSD_ssl", "-i", str(source), "-d", str(LARGE_FOV_ID), "--num-labelled", "3",
             "--num-test", "0", "--seed", "0", "--name", "PhantomLargeFOV"], env)
    plan_and_preprocess(LARGE_FOV_ID, env, "2d")
    run_cli([sys.executable, "-m", "nnunet_qg.benchmark.withheld", "-d", str(LARGE_FOV_ID), "-c", "2d", "-l",
             str(source / "labelsTr"), "-np", "2"], env)
    return env


# the oracle control reads the withheld labels of its unlabelled patches (spatially augmented with them): the share
# of patches whose label has no foreground, uniform and with the option, in the main process; then the option
# in a background worker (the prior travels to it)
OVERSAMPLING_RAISES_FOREGROUND = """
import numpy as np

def draw(percent, batches, workers=0):
    trainer.unlabeled_oversample_foreground_percent = percent
    trainer.unlabeled_num_processes = workers
    trainer.unlabeled_seed = 0
    trainer.unlabeled_identifiers = trainer.check_unlabeled_data()
    np.random.seed(0)
    torch.manual_seed(0)
    loader = trainer.get_unlabeled_dataloader()
    empty = np.stack([~(next(loader)["target"] > 0).flatten(1).any(1).numpy() for _ in range(batches)])
    if workers:
        loader._finish()
    return empty

uniform, oversampled = draw(0.0, 60), draw(0.33, 60)
# the samples nnU-Net's rule forces (the last ones of each batch)
forced = [j for j in range(trainer.batch_size) if j >= round(trainer.batch_size * (1 - 0.33))]
assert forced, trainer.batch_size
assert uniform.mean() > 0.6, f"not a large field of view: {uniform.mean():.2f} of uniform patches empty"
assert oversampled[:, forced].mean() < uniform.mean() - 0.2, (uniform.mean(), oversampled[:, forced].mean())
assert oversampled.mean() < uniform.mean() - 0.05, (uniform.mean(), oversampled.mean())
# centred by the prior, not by the withheld labels the oracle loads (patches centred on a case's own foreground
# are never empty)
assert oversampled[:, forced].mean() > 0.1, oversampled[:, forced].mean()
assert draw(0.33, 2, workers=1).shape == (2, trainer.batch_size)
print(f"empty share: uniform {uniform.mean():.3f}, oversampled {oversampled.mean():.3f} "
      f"(forced patches {oversampled[:, forced].mean():.3f})", flush=True)
"""


@pytest.mark.full  # prepares a dataset of its own (48 s on 2 cores; the check 7 s)
def test_option_raises_foreground_share_on_large_field_of_view(large_fov_env, tmp_path):
    job = ("nnUNetTrainerOraclePL", LARGE_FOV_DATASET)
    results = run_trainer_checks(OVERSAMPLING_RAISES_FOREGROUND, [job], large_fov_env, tmp_path, "2d", "all")
    assert results[job] == "OK", results[job]


def test_foreground_prior_maps_relative_locations():
    from nnunet_qg.unlabeled.foreground_prior import RelativeForegroundPrior

    prior = RelativeForegroundPrior({1: np.array([[0.0, 0.5, 0.999]]), 2: np.zeros((0, 3))})
    assert list(prior.fractions) == [1]  # labels without foreground are left out
    assert prior.class_locations((10, 20, 4))[1].tolist() == [[0, 0, 10, 3]]
    with pytest.raises(ValueError, match="3D"):
        prior.class_locations((10, 20))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        RelativeForegroundPrior({1: np.array([[0.0, 1.0, 0.5]])})
    with pytest.raises(ValueError, match="no foreground"):
        RelativeForegroundPrior({1: np.zeros((0, 3))})


def test_phantom_large_field_of_view_options(tmp_path):
    from nnunet_qg.phantom import make_phantom_case, make_phantom_msd

    default = make_phantom_case(np.random.RandomState(0), (28, 32, 28))
    same = make_phantom_case(np.random.RandomState(0), (28, 32, 28), structure_scale=1.0)
    assert all(np.array_equal(a, b) for a, b in zip(default, same))  # the demo's and tests' phantom unchanged
    small = make_phantom_case(np.random.RandomState(0), (28, 32, 28), structure_scale=0.3)[1]
    assert 0 < (small > 0).sum() < 0.1 * (default[1] > 0).sum()
    for bad in ({"structure_scale": 0.0}, {"shape": (3, 32, 28)}):
        with pytest.raises(ValueError):
            make_phantom_msd(str(tmp_path / "bad"), 1, **bad)
        assert not (tmp_path / "bad").exists()  # nothing written
