"""`nnUNetv2_qg_benchmark`: every arm on a fixed semi-supervised split, same budget, held-out test Dice.

    nnUNetv2_qg_benchmark -i ../shared/data/hippocampus --profile gpu -o benchmark_results/ssl_gpu

Converts the MSD-style folder once per labelled fraction of its `ssl_splits.json` (and once with
the whole pool labelled for the upper bound), plans and preprocesses with stock nnU-Net, trains
every arm (`<trainer>_<budget>` variants, fold 0, the profile's budget), predicts the split's test
cases with the LAST checkpoint and evaluates them with nnU-Net's evaluation. Writes
`ssl_benchmark.json`, `ssl_benchmark.md`, `ssl_benchmark.png` (test Dice) and `ssl_benchmark_curves.png`
(per-epoch curves of every run) to the output folder, updating
them as arms finish, and prints the table last.
"""
import argparse
import json
import os
import re
import sys
import time
from datetime import date
from os.path import abspath, isfile, join
from typing import Dict, List

from nnunet_qg import pipeline
from nnunet_qg.atomic import atomic_write_json, atomic_write_text
from nnunet_qg.benchmark.device import describe_device
from nnunet_qg.benchmark.ledger import add_to_ledger, ledger_key, ledger_rows
from nnunet_qg.benchmark.profiles import ARMS, GENERATED_SPLITS, PROFILES, UPPER_BOUND, Profile
from nnunet_qg.benchmark.paired import diagnostics, diagnostics_table, paired_summary, paired_table, plot_paired
from nnunet_qg.benchmark.report import markdown_table, plot_bars, plot_curves, summarise
from nnunet_qg.benchmark.runner import Job, dataset_ids, prepare_datasets, read_training_log, run_jobs
from nnunet_qg.dataset_conversion.input_checks import count, dataset_id, positive_count, seed
from nnunet_qg.dataset_conversion.ssl_dataset import write_split_file
from nnunet_qg.source_commit import source_commit


def source_case_ids(source_format: str, folder: str) -> List[str]:
    from nnunet_qg.dataset_conversion.convert_2d_ssl import ph2_pairs

    return sorted({"ph2": ph2_pairs}[source_format](folder))


def with_first_k_sets(split_file: str, fractions: List[str], out: str) -> str:
    """The split file, or where it lacks a labelled set named '<k>labelled', a copy in `out` with that set
    as the first k cases of its pool (the split's fixed random order), like the 2D splits' sets."""
    with open(split_file) as f:
        split = json.load(f)
    derived = {}
    for fraction in fractions:
        if fraction in split["labelled_sets"]:
            continue
        match = re.fullmatch(r"(\d+)labelled", fraction)
        if not match or not 0 < int(match.group(1)) <= len(split["pool"]):
            raise SystemExit(f"ERROR: labelled set '{fraction}' is not in {split_file}. Use one of "
                             f"{sorted(split['labelled_sets'])}, or 'Klabelled' for the first K (1 to "
                             f"{len(split['pool'])}) cases of the pool.")
        derived[fraction] = split["pool"][:int(match.group(1))]
    if not derived:
        return split_file
    split["labelled_sets"] = {**split["labelled_sets"], **derived}
    path = join(out, os.path.basename(split_file).replace(".json", "_first_k.json"))
    os.makedirs(out, exist_ok=True)
    atomic_write_json(split, path)
    print(f"Labelled sets {', '.join(derived)}: the first cases of the pool of {split_file} (written to {path})",
          flush=True)
    return path


def write_paired_results(rows: List[dict], out: str, meta: dict) -> str:
    """Seeded runs: each arm's paired differences to the supervised arm and to unweighted pseudo-labels,
    with 95 % t-intervals (evidence_summary.json, evidence_paired.md/.png)."""
    summary = paired_summary(rows, meta["profile"], meta["device"], meta["commit"])
    summary.update(date=meta["date"], dataset=meta["dataset"], fractions=meta["fractions"],
                   configuration=meta["configuration"], fold=meta["fold"], seed=meta["seed"])
    summary["diagnostics"] = diagnostics(rows)
    summary["run_commits"] = sorted({r.get("commit", meta["commit"]) for r in rows if "error" not in r})
    atomic_write_json(summary, join(out, "evidence_summary.json"))
    table = (paired_table(summary) + "\n\nWhich link holds (each figure: mean over the second half of the epochs, "
             "then over runs; q: the score PL-QW weights with, the teacher's mirror agreement in pl_mirror* and "
             "qg_ssl, g's in the others):\n\n" + diagnostics_table(summary["diagnostics"]))
    atomic_write_text(f"Profile `{meta['profile']}`, {meta['device']}, {meta['date']}, commit {meta['commit']}; "
                      f"test Dice on {meta['test_cases']} held-out cases, last checkpoint; differences paired "
                      f"by seed.\n\n{table}\n", join(out, "evidence_paired.md"))
    if summary["arms"]:
        plot_paired(summary, join(out, "evidence_paired.png"),
                    f"{meta['dataset']}: profile {meta['profile']}, {meta['device']}, commit {meta['commit']}")
    return table


def write_results(rows: List[dict], out: str, meta: dict) -> str:
    lines = summarise(rows)
    table = markdown_table(lines)
    if meta.get("seed") is not None:  # paired runs: the paired differences too (printed and in the .md)
        table += "\n\nPaired by seed:\n\n" + write_paired_results(rows, out, meta)
    atomic_write_json({**meta, "summary": lines, "runs": rows}, join(out, "ssl_benchmark.json"))
    seeding = "unseeded" if meta.get("seed") is None else f"run r seeded with nnUNet_qg_seed = {meta['seed']} + r"
    header = (f"Profile `{meta['profile']}` ({meta['budget']} budget), {meta['device']}, {meta['date']}; "
              f"{meta['configuration']}, test Dice on {meta['test_cases']} held-out cases, last checkpoint, fold "
              f"{meta['fold']}; "
              f"spread = sample std over runs; {seeding}.\n\n")
    atomic_write_text(header + table + "\n", join(out, "ssl_benchmark.md"))
    if lines:
        title = f"{meta['dataset']}: profile {meta['profile']} ({meta['budget']}), {meta['device']}"
        plot_bars(lines, join(out, "ssl_benchmark.png"), title)
        plot_curves(rows, join(out, "ssl_benchmark_curves.png"), title)
    return table


def rewrite_report(out: str) -> None:
    """`--report`: the tables, plots and summaries of an earlier run of `out` again, with today's code (each
    finished run's training figures re-read from its model folder)."""
    results = join(out, "ssl_benchmark.json")
    if not isfile(results):
        raise SystemExit(f"ERROR: {results} not found. --report rewrites the report of a run that wrote it; "
                         f"check -o.")
    with open(results) as f:
        saved = json.load(f)
    rows = saved.pop("runs")
    saved.pop("summary", None)
    for row in rows:
        if "error" not in row and isfile(join(row.get("model_folder", ""), "checkpoint_final.pth")):
            row.update(read_training_log(row["model_folder"]))
    print(write_results(rows, out, saved))


def profile_meta(profile: Profile, device: str, dataset: str, test_cases, commit: str) -> dict:
    """What a report says of its run: the profile's settings, device, data and commit."""
    return {"date": date.today().isoformat(), "profile": profile.name, "budget": profile.budget, "device": device,
            "dataset": dataset, "fractions": list(profile.fractions), "arms": list(profile.arms),
            "repeats": profile.repeats, "configuration": profile.configuration, "fold": profile.fold,
            "seed": profile.seed, "test_cases": test_cases, "commit": commit}


def report_from_ledger(ledger: str, profile: Profile, out: str, dataset: str) -> None:
    """`--report --ledger`: the tables, plots and summaries of every finished run of `profile` in the ledger,
    without the output folder that trained them (another session's)."""
    rows = [r for r in ledger_rows(ledger, profile.name).values() if r["arm"] in profile.arms]
    if not rows:
        raise SystemExit(f"ERROR: the ledger {ledger} holds no finished run of profile {profile.name}.")
    commits = sorted({r["commit"] for r in rows})
    devices = sorted({r.get("device", "device not recorded") for r in rows})
    meta = {**profile_meta(profile, "; ".join(devices), dataset, rows[0].get("test_cases"), ", ".join(commits)),
            "ledger": ledger}
    os.makedirs(out, exist_ok=True)
    print(write_results(rows, out, meta))


def ordered_jobs(profile: Profile, ids: Dict[str, int]) -> List[Job]:
    """Run by run, so that the runs finished so far are paired. The arms with every run (and the first run
    of the upper bound) come before the arms with fewer runs, so that the main comparison gets its seeds
    first."""
    jobs = [Job(arm, UPPER_BOUND if arm == UPPER_BOUND else fraction, r,
                ids[UPPER_BOUND if arm == UPPER_BOUND else fraction])
            for r in range(profile.repeats) for fraction in profile.fractions for arm in profile.arms
            if r < profile.runs_of(arm) and (arm != UPPER_BOUND or fraction == profile.fractions[0])]
    secondary = [j for j in jobs if profile.runs_of(j.arm) < profile.repeats
                 and not (j.arm == UPPER_BOUND and j.repeat == 0)]
    return [j for j in jobs if j not in secondary] + secondary


def entry_point() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-i", help="MSD-style folder with ssl_splits.json (e.g. ../shared/data/hippocampus); "
                                   "required unless --report")
    parser.add_argument("-o", default="benchmark_results/ssl", help="output folder (results, logs, nnU-Net folders)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu-small")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=None, help="default: the profile's arms")
    parser.add_argument("--fractions", nargs="+", default=None, help="labelled sets of the split file, e.g. 10pct")
    parser.add_argument("--repeats", type=positive_count, default=None, help="runs per arm, >= 1")
    parser.add_argument("--seed", type=seed, default=None,
                        help="seed run r of every arm with nnUNet_qg_seed = SEED + r: the arms of a run start "
                             "from the same weights and draw the same labelled patches (nnU-Net's labelled "
                             "loader then runs in the main process). Default: unseeded, as nnU-Net")
    parser.add_argument("--concurrency", type=positive_count, default=None, help="arms trained at once, >= 1")
    parser.add_argument("--n-proc-da", type=count, default=None, help="nnUNet_n_proc_DA per training, >= 0")
    parser.add_argument("--split-file", default=None, help="default: <-i>/ssl_splits.json (2D profiles: written)")
    parser.add_argument("--reader", default=None, help="image reader for dataset.json (e.g. NibabelIO)")
    parser.add_argument("-d", "--base-id", type=dataset_id, default=700, help="first nnU-Net dataset id to use")
    parser.add_argument("--continue", dest="resume", action="store_true",
                        help="go on with an earlier run of the same -o (e.g. one cut off by a time limit): "
                             "prepared datasets and finished arms are kept, interrupted arms continue from "
                             "their latest checkpoint (nnUNetv2_train --c), every arm is predicted and evaluated")
    parser.add_argument("--ledger", default=None,
                        help="seeded profiles: a JSON file of finished runs (e.g. benchmarks/results/"
                             "evidence_ledger.json). A run (profile, arm, labelled set, seed) found there is not "
                             "trained again; each run that finishes is added. Commit it to go on in another session")
    parser.add_argument("--report", action="store_true",
                        help="only rewrite the report of the run in -o (tables, plots, evidence_summary.json) "
                             "with today's code; trains nothing. With --ledger (and --profile): the report of "
                             "the ledger's finished runs of that profile, written to -o")
    args = parser.parse_args()
    if args.report and args.ledger:
        return report_from_ledger(abspath(args.ledger), PROFILES[args.profile], abspath(args.o),
                                  os.path.basename(abspath(args.i)) if args.i else PROFILES[args.profile].name)
    if args.report:
        return rewrite_report(abspath(args.o))
    if args.i is None:
        parser.error("the following arguments are required: -i (unless --report)")

    profile = PROFILES[args.profile]
    overrides = {k: v for k, v in (("arms", tuple(args.arms) if args.arms else None),
                                   ("fractions", tuple(args.fractions) if args.fractions else None),
                                   ("repeats", args.repeats), ("concurrency", args.concurrency),
                                   ("n_proc_DA", args.n_proc_da), ("seed", args.seed)) if v is not None}
    profile = Profile(**{**profile.__dict__, **overrides})
    out = abspath(args.o)
    split_file = args.split_file or join(abspath(args.i), "ssl_splits.json")
    if not isfile(split_file) and profile.source_format in GENERATED_SPLITS:
        split_file = join(out, f"{profile.source_format}_splits.json")
        os.makedirs(out, exist_ok=True)
        write_split_file(source_case_ids(profile.source_format, args.i), path=split_file,
                         **GENERATED_SPLITS[profile.source_format])
        print(f"Wrote the fixed split {split_file}", flush=True)
    if not isfile(split_file):
        raise SystemExit(f"ERROR: {split_file} not found. The benchmark needs a fixed split: a JSON file with "
                         f"'test', 'pool' and 'labelled_sets' (see ../shared/data/hippocampus/ssl_splits.json).")
    split_file = with_first_k_sets(split_file, list(profile.fractions), out)
    work = join(out, "work")
    env = pipeline.nnunet_env(work, nnUNet_n_proc_DA=str(profile.n_proc_DA), nnUNet_compile="f",
                              nnUNet_def_n_proc=str(profile.preprocess_processes), PYTHONUNBUFFERED="1")
    env["nnUNet_results"] = join(work, "nnUNet_results_r0")
    started = time.time()
    ids = dataset_ids(args.base_id, list(profile.fractions), UPPER_BOUND in profile.arms)
    print(f"[1/3] Preparing {len(ids)} dataset(s) from {args.i} (profile {profile.name})", flush=True)
    prep_s = prepare_datasets(abspath(args.i), split_file, ids, profile, env, join(work, "logs"), args.reader,
                              args.resume)
    jobs = ordered_jobs(profile, ids)
    test_cases = len(os.listdir(join(pipeline.raw_dataset_folder(env, next(iter(ids.values()))), "labelsTs")))
    meta = {**profile_meta(profile, describe_device(profile.device), os.path.basename(abspath(args.i)), test_cases,
                           source_commit()),
            "concurrency": profile.concurrency, "nnUNet_n_proc_DA": profile.n_proc_DA, "tta": profile.tta,
            "preparation_s": prep_s, "arm_repeats": {a: profile.runs_of(a) for a in profile.arms}}
    print(f"[2/3] Training, predicting and evaluating {len(jobs)} run(s), {profile.concurrency} at a time "
          f"({profile.budget} budget, {profile.device})", flush=True)
    known: List[dict] = []
    if args.ledger:
        if profile.seed is None:
            parser.error("--ledger needs a seeded profile (or --seed): runs are kept by their seed")
        in_ledger = ledger_rows(abspath(args.ledger), profile.name)
        keys = {j: ledger_key(profile.name, {"arm": j.arm, "fraction": j.fraction, "seed": profile.seed_of(j.repeat)})
                for j in jobs}
        known = [{**in_ledger[keys[j]], "from_ledger": True} for j in jobs if keys[j] in in_ledger]
        jobs = [j for j in jobs if keys[j] not in in_ledger]
        print(f"  {len(known)} run(s) found in the ledger {args.ledger}, {len(jobs)} to run", flush=True)

    def on_result(new_rows: List[dict]) -> None:
        if args.ledger:
            add_to_ledger(abspath(args.ledger), profile.name, {**new_rows[-1], "device": meta["device"]},
                          meta["commit"])
        write_results(known + new_rows, out, meta)

    rows = known + run_jobs(jobs, profile, env, work, on_result, args.resume)
    meta["total_s"] = time.time() - started
    print(f"[3/3] Results in {out} (ssl_benchmark.json/.md/.png), {meta['total_s']:.0f} s in all\n", flush=True)
    print(write_results(rows, out, meta))
    if any("error" in r for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    entry_point()
