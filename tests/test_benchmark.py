"""The semi-supervised benchmark: its whole pipeline on a tiny budget, and its summary arithmetic."""
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import PHANTOM_ID, kill_after_first_checkpoint, nnunet_env, requires_ph2, run_cli

from nnunet_qg.benchmark.profiles import PROFILES
from nnunet_qg.benchmark.report import markdown_table, plot_bars, summarise
from nnunet_qg.benchmark.runner import Job, offline_target_id, run_name


def _phantom_with_split(root, n_cases=12, n_test=2, n_labelled=6):
    env = nnunet_env(root / "unused")
    source = root / "Task902_Phantom"
    run_cli(["nnUNetv2_qg_make_phantom", "-o", str(source), "-n", str(n_cases)], env)
    cases = sorted(p.name[:-7] for p in (source / "labelsTr").iterdir())
    split = {"test": cases[:n_test], "pool": cases[n_test:], "labelled_sets": {"tiny": cases[n_test:n_test + n_labelled]}}
    (source / "ssl_splits.json").write_text(json.dumps(split))
    return source, env


@pytest.mark.full
def test_benchmark_pipeline_two_arms(tmp_path):
    source, env = _phantom_with_split(tmp_path)
    out = tmp_path / "bench"
    proc = run_cli(["nnUNetv2_qg_benchmark", "-i", str(source), "--profile", "tiny", "--fractions", "tiny",
                    "-o", str(out), "-d", "720", "--seed", "0"], env, timeout=1500)
    result = json.loads((out / "ssl_benchmark.json").read_text())
    runs = result["runs"]
    assert sorted(r["arm"] for r in runs) == ["qg_ssl", "supervised"]
    for r in runs:  # read from nnU-Net's own summary.json of the held-out cases and the final checkpoint
        assert "error" not in r and r["test_cases"] == 2 and 0.0 <= r["dice"] <= 1.0
        assert set(r["dice_per_label"]) == {"1", "2"} and r["epochs"] == 2 and r["epoch_s"] > 0
    qg = next(r for r in runs if r["arm"] == "qg_ssl")
    assert qg["trainer"] == "nnUNetTrainerQGSSL_benchTiny" and math.isfinite(qg["g_last_real_mae"])
    lines = {line["arm"]: line for line in result["summary"]}
    assert lines["supervised"]["epoch ratio"] == 1.0 and lines["qg_ssl"]["epoch ratio"] > 0
    table = (out / "ssl_benchmark.md").read_text()
    assert "| tiny | qg_ssl | 1 |" in table and "cpu" in table.lower()
    assert (out / "ssl_benchmark.png").stat().st_size > 0
    assert (out / "ssl_benchmark_curves.png").stat().st_size > 0  # per-epoch curves of every run
    for r in runs:
        assert all(len(values) == 2 for values in r["curves"].values()), r["curves"]
    assert proc.stdout.rstrip().endswith(table.rstrip().splitlines()[-1])  # the table is printed last

    # seeded (--seed 0): both arms start from the same weights and draw the same labelled patches, so
    # QG-SSL's warm-up (epoch 0: supervised loss, g trained beside it) is nnU-Net's training exactly;
    # from epoch 1 its unlabelled losses make it differ
    assert all(r["seed"] == 0 for r in runs) and "run r seeded with nnUNet_qg_seed = 0 + r" in table
    logs = {r["arm"]: torch.load(Path(r["model_folder"]) / "checkpoint_final.pth", map_location="cpu",
                                 weights_only=False)["logging"] for r in runs}
    for key in ("val_losses", "mean_fg_dice"):  # computed by nnU-Net's own code in both: bit-identical
        assert float(logs["qg_ssl"][key][0]) == float(logs["supervised"][key][0]), key
    # the epoch's mean training loss: nnU-Net averages in float32, our trainers in float64
    curves = {r["arm"]: r["curves"] for r in runs}  # the JSON's curves: the supervised part of QG-SSL's loss
    for qg_ssl in (float(logs["qg_ssl"]["train_losses"][0]), curves["qg_ssl"]["supervised training loss"][0]):
        assert qg_ssl == pytest.approx(float(logs["supervised"]["train_losses"][0]), rel=1e-6, abs=1e-7)
    assert float(logs["qg_ssl"]["train_losses"][1]) != float(logs["supervised"]["train_losses"][1])

    # --continue (a run cut off by a device's time limit): the prepared dataset and the finished arm
    # are kept; an arm with only its latest checkpoint continues from it (nnUNetv2_train --c); with --ledger,
    # every run that finishes is added to the ledger file
    folds = {r["arm"]: Path(r["model_folder"]) for r in runs}
    latest = folds["supervised"] / "checkpoint_latest.pth"
    (folds["supervised"] / "checkpoint_final.pth").rename(latest)
    # as if the call had been cut off 1000 s after it started, its last checkpoint written at the end
    record = folds["supervised"] / "benchmark_training.json"
    record.write_text(json.dumps({"calls": [{"start": latest.stat().st_mtime - 1000, "seconds": None}]}))
    ledger = tmp_path / "ledger.json"
    again = run_cli(["nnUNetv2_qg_benchmark", "-i", str(source), "--profile", "tiny", "--fractions", "tiny",
                     "-o", str(out), "-d", "720", "--seed", "0", "--continue", "--ledger", str(ledger)], env,
                    timeout=1500)
    assert "0 run(s) found in the ledger" in again.stdout
    assert "prepared by an earlier run, kept" in again.stdout
    assert "qg_ssl (tiny, run 0): trained by an earlier run, kept" in again.stdout
    rerun = {r["arm"]: r for r in json.loads((out / "ssl_benchmark.json").read_text())["runs"]}
    assert rerun["supervised"]["resumed"] and (folds["supervised"] / "checkpoint_final.pth").is_file()
    assert rerun["supervised"]["epochs"] == 2 and rerun["qg_ssl"]["dice"] == qg["dice"]
    assert rerun["supervised"]["train_wall_s"] > 1000  # the cut-off call counted to its last checkpoint
    assert rerun["qg_ssl"]["train_wall_s"] == qg["train_wall_s"]  # kept: its one finished call
    assert rerun["qg_ssl"]["resumed"] is False  # kept, trained in one call

    # --seed 1 in the same output folder: run 0 is seed 1's, which must train, not keep seed 0's model
    seed1 = run_cli(["nnUNetv2_qg_benchmark", "-i", str(source), "--profile", "tiny", "--fractions", "tiny",
                     "-o", str(out), "-d", "720", "--seed", "1", "--continue", "--ledger", str(ledger),
                     "--arms", "supervised"], env, timeout=1500)
    assert "trained by an earlier run" not in seed1.stdout
    seeds = {(r["arm"], r["seed"]): r for r in json.loads(ledger.read_text())["runs"]}
    assert "nnUNet_results_r1" in seeds[("supervised", 1)]["model_folder"]
    assert seeds[("supervised", 1)]["model_folder"] != seeds[("supervised", 0)]["model_folder"]

    # --ledger: finished runs kept in one file go on in a fresh output folder without training again
    fresh = tmp_path / "bench_fresh"
    second = run_cli(["nnUNetv2_qg_benchmark", "-i", str(source), "--profile", "tiny", "--fractions", "tiny",
                      "-o", str(fresh), "-d", "720", "--seed", "0", "--ledger", str(ledger)], env, timeout=1500)
    assert "2 run(s) found in the ledger" in second.stdout and "0 to run" in second.stdout
    from_ledger = {r["arm"]: r for r in json.loads((fresh / "ssl_benchmark.json").read_text())["runs"]}
    assert from_ledger["qg_ssl"]["dice"] == qg["dice"] and from_ledger["qg_ssl"]["from_ledger"]
    assert not list((fresh / "work").glob("nnUNet_results_r0/*/*/fold_*"))  # nothing trained there
    assert (fresh / "evidence_summary.json").is_file()


@pytest.mark.full
@pytest.mark.parametrize("trainer", ["nnUNetTrainer_benchTiny", "nnUNetTrainerQGSSL_benchTiny"])
def test_seeded_run_resumed_with_c_draws_the_uninterrupted_runs_patches(phantom_env, tmp_path, trainer):
    """A seeded run killed after its first checkpoint and resumed with --c takes the random states back
    from the checkpoint: its next epoch equals the uninterrupted run's (the same labelled and validation
    patches). Seeded again instead, the resumed epoch would start the patch stream anew."""
    logs = {}
    for name in ("uninterrupted", "resumed"):
        env = {**phantom_env, "nnUNet_results": str(tmp_path / name), "nnUNet_qg_seed": "0"}
        cmd = ["nnUNetv2_train", str(PHANTOM_ID), "3d_fullres", "0", "-tr", trainer, "-device", "cpu"]
        fold = tmp_path / name / f"Dataset{PHANTOM_ID:03d}_Phantom" / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0"
        if name == "resumed":
            kill_after_first_checkpoint(cmd, env, fold)  # after epoch 0 of 2 (benchTiny saves every epoch)
            assert torch.load(fold / "checkpoint_latest.pth", weights_only=False)["current_epoch"] == 1
            cmd.append("--c")
        run_cli(cmd, env)
        logs[name] = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["logging"]
    assert "random states taken back from the checkpoint" in "".join(
        p.read_text() for p in fold.glob("training_log_*.txt"))
    for key in ("train_losses", "val_losses", "mean_fg_dice"):
        assert len(logs["resumed"][key]) == 2
        resumed, uninterrupted = [float(v) for v in logs["resumed"][key]], [float(v) for v in logs["uninterrupted"][key]]
        if trainer == "nnUNetTrainer_benchTiny":  # bit for bit
            assert resumed == uninterrupted, key
        else:  # QG-SSL: equal to float32 rounding (epoch 1's loss differed in the 8th digit, cause not found);
            # other patches would change it in the 2nd digit
            assert resumed == pytest.approx(uninterrupted, rel=1e-6, abs=1e-7), key


@pytest.mark.full
@requires_ph2
def test_benchmark_ph2_2d_profile_writes_its_split(ph2_small, tmp_path):
    """On PH2's 200 cases, downscaled (conftest.ph2_small)."""
    env = nnunet_env(tmp_path / "unused")
    out = tmp_path / "bench"
    # one arm: the 2D semi-supervised trainers end to end are test_2d's (this test checks the profile's split)
    run_cli(["nnUNetv2_qg_benchmark", "-i", str(ph2_small), "--profile", "ph2-tiny", "-o", str(out),
             "-d", "725", "--arms", "supervised"], env, timeout=1800)
    split = json.loads((out / "ph2_splits.json").read_text())
    assert (len(split["test"]), len(split["pool"]), len(split["labelled_sets"]["20labelled"])) == (50, 150, 20)
    result = json.loads((out / "ssl_benchmark.json").read_text())
    assert result["configuration"] == "2d" and all("error" not in r for r in result["runs"])
    assert [r["trainer"] for r in result["runs"]] == ["nnUNetTrainer_benchTiny"]
    assert 0.0 <= result["runs"][0]["dice"] <= 1.0 and result["runs"][0]["test_cases"] == 2  # max_test


def test_benchmark_needs_a_split_file(tmp_path):
    env = nnunet_env(tmp_path)
    proc = run_cli(["nnUNetv2_qg_benchmark", "-i", str(tmp_path), "--profile", "tiny"], env, check=False)
    assert proc.returncode != 0 and "ssl_splits.json not found" in proc.stderr


def _row(arm, fraction, dice, repeat=0, epoch_s=1.0):
    return {"arm": arm, "trainer": arm, "fraction": fraction, "repeat": repeat, "dice": dice,
            "dice_per_label": {"1": dice, "2": dice}, "train_wall_s": 10.0, "epoch_s": epoch_s}


def test_summary_gap_closed_and_spread():
    rows = [_row("supervised", "10pct", 0.80), _row("supervised", "10pct", 0.82, 1),
            _row("qg_ssl", "10pct", 0.85, epoch_s=2.0), _row("qg_ssl", "10pct", 0.87, 1, epoch_s=2.0),
            _row("full_supervision", "full_supervision", 0.91)]
    lines = {(l["labelled"], l["arm"]): l for l in summarise(rows)}
    qg = lines[("10pct", "qg_ssl")]
    assert math.isclose(qg["Dice"], 0.86) and math.isclose(qg["spread"], math.sqrt(2) * 0.01)
    assert math.isclose(qg["gap closed"], (0.86 - 0.81) / (0.91 - 0.81)) and qg["epoch ratio"] == 2.0
    assert ("all", "full_supervision") in lines and "gap closed" not in lines[("10pct", "supervised")]
    assert "| 10pct | qg_ssl | 2 | 0.8600 |" in markdown_table(list(lines.values()))


def test_summary_skips_failed_runs():
    rows = [_row("supervised", "10pct", 0.80), {"arm": "qg_ssl", "fraction": "10pct", "repeat": 0, "error": "x"}]
    assert [l["arm"] for l in summarise(rows)] == ["supervised"]


def test_bar_plot_of_the_upper_bound_alone_has_its_bar(tmp_path):
    """`--arms full_supervision` alone: the upper bound has no labelled fraction of its own, and its bar once
    went missing (an empty plot)."""
    alone = summarise([_row("full_supervision", "full_supervision", 0.91)])
    assert plot_bars(alone, str(tmp_path / "alone.png"), "t") == [("full_supervision", 0.91)]
    both = summarise([_row("supervised", "10pct", 0.80), _row("full_supervision", "full_supervision", 0.91)])
    assert plot_bars(both, str(tmp_path / "both.png"), "t") == [("supervised", 0.80), ("full_supervision", 0.91)]
    assert (tmp_path / "alone.png").is_file()


def test_runs_of_different_seeds_never_share_folders():
    """`--seed 3 --continue` once kept seed 0's finished models as seed 3's (run 0 of each): a seeded run's
    folders are named by its seed."""
    evidence = PROFILES["evidence"]
    assert run_name(evidence, 0) == "r0" and run_name(evidence, 2) == "r2"
    shifted = type(evidence)(**{**evidence.__dict__, "seed": 3})
    assert [run_name(shifted, r) for r in range(3)] == ["r3", "r4", "r5"]
    assert run_name(PROFILES["tiny"], 1) == "r1"  # unseeded: by run


def test_offline_arms_datasets_never_collide():
    """Every offline arm's run writes datasets of its own: one id per round, none shared between arms or seeds
    (ids that the evidence ledger's rows name stay as they were for one-round arms)."""
    evidence = PROFILES["evidence"]
    ids = {}
    for arm, rounds in (("offline_pl", 1), ("offline_pl_gated", 1), ("offline_pl_gated_2rounds", 2),
                        ("offline_pl_gated_from_bcp", 1), ("offline_pl_gated_from_bcp_qg", 1),
                        ("offline_pl_from_bcp", 1)):
        for seed in range(10 // rounds):
            first = offline_target_id(Job(arm, "1labelled", seed, 810), evidence)
            for r in range(rounds):
                assert first + r not in ids, (arm, seed, r, ids.get(first + r))
                ids[first + r] = (arm, seed, r)
    assert offline_target_id(Job("offline_pl", "1labelled", 0, 810), evidence) == 830
    assert offline_target_id(Job("offline_pl_gated", "1labelled", 2, 810), evidence) == 842
    assert offline_target_id(Job("offline_pl_gated_2rounds", "1labelled", 1, 810), evidence) == 852
    assert offline_target_id(Job("offline_pl_gated_from_bcp", "1labelled", 0, 810), evidence) == 860
    with pytest.raises(ValueError, match="seeds 0-4"):
        offline_target_id(Job("offline_pl_gated_2rounds", "1labelled", 5, 810), evidence)
