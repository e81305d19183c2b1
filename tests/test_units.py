"""Small pieces: loader, seeds (workers, nnUNet_qg_seed, g's private generator), sharding, EMA teacher, ramp, split files."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import PHANTOM_ID


def test_unlabelled_loader_gives_random_patches(phantom_env, monkeypatch):
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, phantom_env[k])
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_qg.unlabeled.data_loader import nnUNetUnlabeledDataLoader, nnUNetUnlabeledDatasetBlosc2

    pre = Path(phantom_env["nnUNet_preprocessed"]) / f"Dataset{PHANTOM_ID:03d}_Phantom"
    plans = PlansManager(str(pre / "nnUNetPlans.json"))
    label_manager = plans.get_label_manager(json.loads((pre / "dataset.json").read_text()))
    folder = str(pre / "nnUNetPlans_3d_fullres_unlabeled")
    ids = nnUNetUnlabeledDatasetBlosc2.get_identifiers(folder)
    loader = nnUNetUnlabeledDataLoader(nnUNetUnlabeledDatasetBlosc2(folder, ids), 3, (20, 20, 20), (20, 20, 20),
                                       label_manager)
    np.random.seed(0)
    a, b = next(loader), next(loader)
    assert a["data"].shape == (3, 1, 20, 20, 20)
    assert set(a["keys"]) <= set(ids)
    assert not torch.equal(a["data"], b["data"])


def test_worker_seeds_distinct_per_worker_and_rank():
    from nnunet_qg.unlabeled.data_loader import worker_seeds

    seeds = [s for rank in range(4) for s in worker_seeds(12345, rank, 8)]
    assert len(set(seeds)) == len(seeds) == 32
    assert worker_seeds(12345, 1, 8) == worker_seeds(12345, 1, 8)


def test_unlabelled_loader_takes_half_of_nnunets_workers():
    """Both loaders share the cores: half of nnUNet_n_proc_DA, at least one, none when nnU-Net runs in-process."""
    from nnunet_qg.unlabeled.data_loader import unlabeled_workers

    assert [unlabeled_workers(n) for n in (0, 1, 2, 3, 8, 12)] == [0, 1, 1, 1, 4, 6]


def test_training_seed_from_environment(monkeypatch):
    from nnunet_qg.trainers.seeded_training import SEED_ENV, single_threaded_data_loading, training_seed

    monkeypatch.delenv(SEED_ENV, raising=False)
    assert training_seed() is None
    monkeypatch.setenv(SEED_ENV, " 7 ")
    assert training_seed() == 7
    monkeypatch.setenv(SEED_ENV, "seven")
    with pytest.raises(RuntimeError, match="nnUNet_qg_seed='seven' is not an integer"):
        training_seed()
    monkeypatch.setenv("nnUNet_n_proc_DA", "1")
    with single_threaded_data_loading():
        from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
        assert get_allowed_n_proc_DA() == 0
    assert get_allowed_n_proc_DA() == 1


def test_private_torch_rng_leaves_the_global_generator_alone():
    from nnunet_qg.quality.training import private_torch_rng

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    with private_torch_rng(torch.device("cpu"), 123):
        inside = torch.rand(3)
    assert torch.equal(torch.rand(3), expected)  # the global stream goes on as if nothing was drawn
    with private_torch_rng(torch.device("cpu"), 123):
        assert torch.equal(torch.rand(3), inside)  # the same seed, the same draws
    with private_torch_rng(torch.device("cpu"), 124):
        assert not torch.equal(torch.rand(3), inside)


def test_shard_for_rank_covers_all_cases_once():
    from nnunet_qg.unlabeled.data_loader import shard_for_rank

    ids = [f"c{i}" for i in range(10)]
    shards = [shard_for_rank(ids, r, 3) for r in range(3)]
    assert sorted(sum(shards, [])) == sorted(ids)
    assert shard_for_rank(["only"], 2, 4) == ["only"]


def test_ema_teacher_follows_student_and_is_frozen():
    from nnunet_qg.ema import EMATeacher

    student = torch.nn.Linear(2, 1)
    teacher = EMATeacher(student, decay=0.9)
    assert all(not p.requires_grad for p in teacher.parameters())
    w0 = teacher.module.weight.clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    teacher.update(student)  # first step: decay min(0.9, 1 - 1/1) = 0 -> copy
    assert torch.allclose(teacher.module.weight, student.weight)
    with torch.no_grad():
        student.weight.add_(1.0)
    teacher.update(student)  # second step: decay 0.5
    assert torch.allclose(teacher.module.weight, w0 + 1.5)
    teacher.train()
    assert not teacher.module.training
    # the update count survives a checkpoint round trip: the third step uses decay 1 - 1/3
    resumed = EMATeacher(student, decay=0.9)
    resumed.load_state_dict(teacher.state_dict())
    assert int(resumed.num_updates) == 2 and resumed.current_decay() == pytest.approx(2 / 3)


def test_ema_teacher_copies_buffers():
    from nnunet_qg.ema import EMATeacher

    student = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    teacher = EMATeacher(student)
    student.train()
    student(torch.randn(8, 2))  # moves the running statistics
    teacher.update(student)
    assert torch.equal(teacher.module[1].running_mean, student[1].running_mean)
    assert int(teacher.module[1].num_batches_tracked) == 1


def test_sigmoid_rampup():
    from nnunet_qg.ramps import sigmoid_rampup

    assert sigmoid_rampup(0, 10) == pytest.approx(np.exp(-5))
    assert sigmoid_rampup(10, 10) == 1.0 and sigmoid_rampup(50, 10) == 1.0 and sigmoid_rampup(3, 0) == 1.0


def test_split_file_first_k_of_pool(tmp_path):
    from nnunet_qg.dataset_conversion.ssl_dataset import ConversionError, split_from_file

    f = tmp_path / "s.json"
    f.write_text(json.dumps({"test": ["t1"], "pool": ["a", "b", "c"], "labelled_sets": {"x": ["c"]}}))
    assert split_from_file(str(f), None, 2) == {"labelled": ["a", "b"], "unlabelled": ["c"], "test": ["t1"]}
    assert split_from_file(str(f), "x", None)["unlabelled"] == ["a", "b"]
    with pytest.raises(ConversionError, match="not in"):
        split_from_file(str(f), "y", None)


def test_atomic_path_renames_on_success_and_leaves_nothing_on_failure(tmp_path):
    from nnunet_qg.atomic import atomic_path

    target = tmp_path / "plot.png"
    with atomic_path(str(target)) as tmp:
        assert tmp.endswith(".png") and tmp != str(target)  # writers that pick the format by extension
        Path(tmp).write_text("new")
    assert target.read_text() == "new"
    with pytest.raises(RuntimeError):
        with atomic_path(str(target)) as tmp:
            Path(tmp).write_text("half")
            raise RuntimeError("crashed mid-write")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["plot.png"]
    with atomic_path(str(tmp_path / "never.json")):
        pass  # a writer that writes nothing leaves no file
    assert not (tmp_path / "never.json").exists()
