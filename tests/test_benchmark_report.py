"""The benchmark's bookkeeping without training: trainer names, job order, paired report and diagnostics."""
import inspect
import json

import numpy as np
import pytest
from scipy import stats

from conftest import nnunet_env, run_cli
from nnunet_qg.benchmark.cli import ordered_jobs
from nnunet_qg.benchmark.profiles import PROFILES, UPPER_BOUND
import nnunet_qg.experiments.trainers as research_trainers
import nnunet_qg.trainers as trainers
from nnunet_qg.trainers import nnUNetTrainer_benchmark


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_trainer_is_an_explicit_class(profile):
    """`grep class <trainer>` finds every trainer a profile runs (no generated names), shipped or research."""
    for arm in PROFILES[profile].arms:
        name = PROFILES[profile].trainer(arm)
        cls = getattr(trainers, name, None) or getattr(research_trainers, name, None)
        assert cls is not None, f"{profile}/{arm}: {name} is in neither nnunet_qg.trainers nor its experiments"
        assert f"class {name}(" in inspect.getsource(inspect.getmodule(cls)), name


def test_budget_variants_keep_their_budget_and_seeding():
    cls = nnUNetTrainer_benchmark.nnUNetTrainerQGSSL_cpuMedium
    assert (cls.short_num_epochs, cls.short_iterations_per_epoch, cls.short_max_batch_size) == (20, 30, 2)
    names = [c.__name__ for c in cls.__mro__]
    assert names.index("ShortSchedule") < names.index("SeededTraining") < names.index("nnUNetTrainerQGSSL")


def test_evidence_jobs_give_the_main_arms_their_seeds_first():
    profile = PROFILES["evidence"]
    jobs = ordered_jobs(profile, {"1labelled": 810, UPPER_BOUND: 811})
    assert len(jobs) == sum(profile.runs_of(a) for a in profile.arms)
    main = [a for a in profile.arms if profile.runs_of(a) == profile.repeats]
    first_secondary = next(i for i, j in enumerate(jobs) if j.arm not in main and
                           not (j.arm == UPPER_BOUND and j.repeat == 0))
    assert all(j.arm not in main for j in jobs[first_secondary:])
    assert [(j.arm, j.repeat) for j in jobs[:2]] == [("supervised", 0), (UPPER_BOUND, 0)]
    repeats = [j.repeat for j in jobs[:first_secondary]]
    assert repeats == sorted(repeats) and repeats[-1] == profile.repeats - 1  # run by run: pairs finish early


def _row(arm: str, seed: int, dice: float, curves: dict) -> dict:
    return {"arm": arm, "trainer": f"T_{arm}", "fraction": "1labelled", "repeat": seed, "seed": seed,
            "dice": dice, "dice_per_label": {"1": dice, "2": dice}, "train_wall_s": 1.0, "epoch_s": 1.0,
            "model_folder": "/nonexistent", "curves": curves}


def test_report_rewrites_paired_differences_and_diagnostics(tmp_path):
    supervised = [0.60, 0.62, 0.65]
    pl_qw = [0.63, 0.62, 0.70]
    rows = [_row("supervised", s, d, {"validation pseudo-Dice": [0.5, 0.9, 0.9]}) for s, d in enumerate(supervised)]
    rows += [_row("pl_qw", s, d, {"validation pseudo-Dice": [0.1, 0.8, 0.8],
                                  "g vs true Dice of pseudo-labels: Pearson": [float("nan"), 0.2, 0.4, float("nan")]})
             for s, d in enumerate(pl_qw)]
    meta = {"date": "2026-12-02", "profile": "evidence", "budget": "evidence", "device": "test", "dataset": "x",
            "fractions": ["1labelled"], "arms": ["supervised", "pl_qw"], "repeats": 3, "configuration": "2d",
            "seed": 0, "test_cases": 60, "fold": "all", "commit": "abc1234"}
    (tmp_path / "ssl_benchmark.json").write_text(json.dumps({**meta, "summary": [], "runs": rows}))
    proc = run_cli(["nnUNetv2_qg_benchmark", "--report", "-o", str(tmp_path)], nnunet_env(tmp_path / "nn"))
    summary = json.loads((tmp_path / "evidence_summary.json").read_text())
    d = np.subtract(pl_qw, supervised)
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    got = summary["arms"]["pl_qw"]["minus_supervised"]
    assert got["mean"] == pytest.approx(d.mean()) and got["ci95"] == pytest.approx([d.mean() - half, d.mean() + half])
    assert summary["commit"] == "abc1234"  # the run's commit, not the report's
    diag = summary["diagnostics"]
    assert diag["pl_qw"]["student val Dice"] == pytest.approx(0.8)  # last half of the epochs
    assert diag["pl_qw"]["q-truth Pearson"] == pytest.approx(0.4)  # non-finite values left out
    assert diag["supervised"]["q-truth Pearson"] is None
    assert "q-truth Pearson" in proc.stdout and (tmp_path / "evidence_paired.png").is_file()


def test_report_without_a_run_names_the_missing_file(tmp_path):
    proc = run_cli(["nnUNetv2_qg_benchmark", "--report", "-o", str(tmp_path)], nnunet_env(tmp_path / "nn"),
                   check=False)
    assert proc.returncode != 0 and "ssl_benchmark.json not found" in proc.stderr and "Traceback" not in proc.stderr


def test_ledger_keeps_finished_runs_by_profile_arm_fraction_seed(tmp_path):
    """--ledger: a finished run is kept once per (profile, arm, labelled set, seed), with its commit; a rerun
    replaces it; failed runs and other profiles are not taken."""
    from nnunet_qg.benchmark.ledger import add_to_ledger, ledger_rows

    path = str(tmp_path / "results" / "ledger.json")
    assert ledger_rows(path, "evidence") == {}  # no file yet: nothing finished
    row = {"arm": "pl_qw", "fraction": "1labelled", "seed": 3, "dice": 0.61}
    add_to_ledger(path, "evidence", row, "abc1234")
    add_to_ledger(path, "evidence", {**row, "arm": "supervised", "dice": 0.60}, "abc1234")
    add_to_ledger(path, "evidence", {**row, "dice": 0.65}, "def5678")  # the same run again: replaced
    add_to_ledger(path, "evidence", {**row, "seed": 4, "error": "train failed"}, "def5678")  # not kept
    add_to_ledger(path, "tiny", {**row, "dice": 0.1}, "def5678")
    kept = ledger_rows(path, "evidence")
    assert set(kept) == {("evidence", "pl_qw", "1labelled", 3), ("evidence", "supervised", "1labelled", 3)}
    assert kept[("evidence", "pl_qw", "1labelled", 3)]["dice"] == 0.65
    assert kept[("evidence", "pl_qw", "1labelled", 3)]["commit"] == "def5678"
    assert ledger_rows(path, "tiny")[("tiny", "pl_qw", "1labelled", 3)]["dice"] == 0.1


def test_damaged_ledger_stops_with_its_name(tmp_path):
    from nnunet_qg.benchmark.ledger import ledger_rows

    path = tmp_path / "ledger.json"
    path.write_text('{"runs": [')
    with pytest.raises(SystemExit, match="ledger.json cannot be read"):
        ledger_rows(str(path), "evidence")


def test_report_from_the_ledger_alone(tmp_path):
    """--report --ledger: the paired summary of the ledger's runs of a profile, without their output folder
    (another session's), with every commit and device the rows come from."""
    from nnunet_qg.benchmark.ledger import add_to_ledger

    ledger = str(tmp_path / "ledger.json")
    for seed, (sup, unw) in enumerate([(0.60, 0.64), (0.62, 0.63)]):
        add_to_ledger(ledger, "evidence", {**_row("supervised", seed, sup, {}), "device": "cpu A"}, "abc1234")
        add_to_ledger(ledger, "evidence", {**_row("unweighted_pl", seed, unw, {}), "device": "cpu B"}, "def5678")
    add_to_ledger(ledger, "tiny", _row("unweighted_pl", 2, 0.1, {}), "def5678")  # another profile: left out
    out = tmp_path / "report"
    run_cli(["nnUNetv2_qg_benchmark", "--report", "--ledger", ledger, "--profile", "evidence", "-o", str(out)],
            nnunet_env(tmp_path / "nn"))
    summary = json.loads((out / "evidence_summary.json").read_text())
    got = summary["arms"]["unweighted_pl"]["minus_supervised"]
    assert summary["arms"]["unweighted_pl"]["seeds"] == [0, 1] and got["differences"] == pytest.approx([0.04, 0.01])
    assert summary["run_commits"] == ["abc1234", "def5678"] and "cpu A" in summary["device"]
    empty = run_cli(["nnUNetv2_qg_benchmark", "--report", "--ledger", ledger, "--profile", "cpu-small", "-o",
                     str(out)], nnunet_env(tmp_path / "nn"), check=False)
    assert empty.returncode != 0 and "holds no finished run" in empty.stderr and "Traceback" not in empty.stderr
