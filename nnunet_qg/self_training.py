"""`nnUNetv2_qg_self_train`: offline self-training, the recipe nnU-Net's maintainers give for unlabelled data
(MIC-DKFZ/nnUNet #2233, #2338: train on the labelled cases, predict the unlabelled ones, train again on both),
as one resumable command with stock nnU-Net pieces, optionally gated by quality control.

    nnUNetv2_qg_self_train -d 4 -c 3d_fullres -f 0 -t 104 -o self_training_004 [-tr nnUNetTrainer]
        [--first-trainer nnUNetTrainerBCP] [--rounds 1] [--min-quality 0.8 | --keep-fraction 0.5]

Round r = 1 ... N:
  1. the model of round r-1: round 0 is `--first-trainer`'s model of dataset D (default `-tr`; e.g. a
     semi-supervised trainer of this package, which reads D's imagesUnlabeled/ itself; nnUNetv2_train D C F: a
     finished fold is kept, an interrupted one continues with --c); later rounds use the previous round's model;
  2. nnUNetv2_predict_quality predicts D's imagesUnlabeled/ with it and estimates each prediction's Dice;
  3. the gate keeps every case (default), those whose worst label reaches --min-quality, or the best
     --keep-fraction of them (ranked by that worst label);
  4. a new raw dataset T + r - 1 (`Dataset<T>_<name>SelfTrain<r>`): D's labelled cases and the kept cases with
     their pseudo-labels in imagesTr/labelsTr, D's dataset.json, imagesTs/labelsTs; nothing of D changes;
  5. D's plans, not new ones (nnUNetv2_extract_fingerprint, nnUNetv2_move_plans_between_datasets,
     nnUNetv2_preprocess): the same network, patch, spacing and normalisation;
  6. nnUNetv2_train T+r-1 C F -tr TRAINER: a stock nnU-Net model folder.
Every stage is skipped when a killed or finished earlier run in the same -o finished it, so the same command
goes on where it stopped. Logs, predictions, quality reports and `self_training.json` (stage times) go to -o.
"""
import argparse
import json
import math
import os
import shutil
import sys
import time
from os.path import basename, isdir, isfile, join
from typing import Dict, List, Optional, Sequence

from nnunet_qg import pipeline
from nnunet_qg.atomic import atomic_write_json
from nnunet_qg.dataset_conversion.input_checks import (InputError, dataset_id, positive_count,
                                                       require_nnunet_folders, unit_interval)
from nnunet_qg.unlabeled.errors import UnlabeledDataError
from nnunet_qg.unlabeled.paths import UNLABELED_RAW_SUBFOLDER
from nnunet_qg.unlabeled.raw_cases import find_unlabeled_cases

STATE_FILE = "self_training.json"
SOURCE_MARKER = "self_training_source.json"  # in the raw folder of a dataset this command wrote


class SelfTrainingError(RuntimeError):
    """Bad input to self-training, with the fix in the message."""


def gate(quality: Dict[str, float], min_quality: Optional[float] = None,
         keep_fraction: Optional[float] = None) -> List[str]:
    """The kept cases (sorted): all, those with quality >= min_quality, or the ceil(keep_fraction * n) best
    (ties by case id, so the choice is reproducible)."""
    if min_quality is not None:
        return sorted(c for c, q in quality.items() if q >= min_quality)
    if keep_fraction is not None:
        ranked = sorted(quality, key=lambda c: (-quality[c], c))
        return sorted(ranked[:max(1, math.ceil(round(keep_fraction * len(ranked), 9)))])
    return sorted(quality)


def case_quality(quality_json: str) -> Dict[str, float]:
    """Per case, the predicted Dice of its worst label (`worst_predicted_dice` of nnUNetv2_predict_quality's
    quality.json)."""
    with open(quality_json) as f:
        return {case["case"]: float(case["worst_predicted_dice"]) for case in json.load(f)["cases"]}


def target_name(source_name: str, target_id: int, round_: int) -> str:
    """`Dataset<T>_<name of the source>SelfTrain<r>` (the source's name without its DatasetXXX_ prefix)."""
    return f"Dataset{target_id:03d}_{source_name.split('_', 1)[1]}SelfTrain{round_}"


def write_self_training_dataset(source_raw: str, target_raw: str, pseudo_labels: str, kept: Sequence[str],
                                recipe: dict) -> None:
    """The round's raw dataset at `target_raw`, written under a temporary name and renamed: the source's
    labelled cases, the kept unlabelled cases with their pseudo-labels (from `pseudo_labels`) as labelled
    cases, imagesTs/labelsTs where the source has them, and the source's dataset.json (numTraining updated).
    Files are hard links where the file system allows (nothing is copied twice), else copies."""
    with open(join(source_raw, "dataset.json")) as f:
        dataset_json = json.load(f)
    ending = dataset_json["file_ending"]
    unlabeled = find_unlabeled_cases(source_raw, dataset_json)
    tmp = f"{target_raw}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            if isdir(join(source_raw, sub)):
                shutil.copytree(join(source_raw, sub), join(tmp, sub), copy_function=_link_or_copy)
        for case in kept:
            if case not in unlabeled:
                raise SelfTrainingError(f"{case} is not an unlabelled case of {source_raw}.")
            for image in unlabeled[case]:
                _link_or_copy(image, join(tmp, "imagesTr", basename(image)))
            label = join(pseudo_labels, case + ending)
            if not isfile(label):
                raise SelfTrainingError(f"The pseudo-label {label} is missing. Delete {pseudo_labels} and run the "
                                        f"command again: it predicts the unlabelled cases again.")
            shutil.copy(label, join(tmp, "labelsTr", case + ending))
        labelled = len([n for n in os.listdir(join(tmp, "labelsTr")) if n.endswith(ending)])
        dataset_json.update(numTraining=labelled, numUnlabeled=0, name=basename(target_raw),
                            description=f"{dataset_json.get('description', '')} Self-training: "
                                        f"{len(kept)} pseudo-labelled cases of {basename(source_raw)} added "
                                        f"(nnUNetv2_qg_self_train).".strip())
        atomic_write_json(dataset_json, join(tmp, "dataset.json"))
        atomic_write_json({**recipe, "kept": list(kept)}, join(tmp, SOURCE_MARKER))
        os.replace(tmp, target_raw)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _link_or_copy(source: str, target: str) -> str:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    return target


class SelfTraining:
    """The command's stages for parsed arguments (see the module docstring)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        require_nnunet_folders("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

        try:
            self.source = maybe_convert_to_dataset_name(args.d)
        except RuntimeError:
            raise SelfTrainingError(f"Dataset {args.d} is not in nnUNet_raw ({os.environ['nnUNet_raw']}). Give the "
                                    f"id or name of a raw dataset with imagesUnlabeled/.") from None
        self.source_id = int(self.source[len("Dataset"):len("Dataset") + 3])
        self.source_raw = join(os.environ["nnUNet_raw"], self.source)
        self.env = dict(os.environ)
        self.log_dir = join(args.o, "logs")
        self.state_file = join(args.o, STATE_FILE)
        self.first_trainer = args.first_trainer or args.tr
        self.recipe = {"source": self.source, "configuration": args.c, "fold": args.f, "trainer": args.tr,
                       "plans": args.p, "min_quality": args.min_quality, "keep_fraction": args.keep_fraction,
                       "tta": not args.disable_tta}
        if self.first_trainer != args.tr:  # absent otherwise: runs written before the option continue unchanged
            self.recipe["first_trainer"] = self.first_trainer
        self.state = {"recipe": self.recipe, "rounds": {}}

    # ------------------------------------------------------------------ checks
    def check_inputs(self) -> None:
        """Everything that can be refused before any work: cascades, no unlabelled images, no plans, a taken
        dataset id, an -o of another recipe."""
        if isfile(self.state_file):
            with open(self.state_file) as f:
                earlier = json.load(f)
            if earlier["recipe"] != self.recipe:
                raise SelfTrainingError(
                    f"{self.args.o} holds a self-training run with other settings ({earlier['recipe']}). Give "
                    f"another -o, or the same settings to continue it.")
            self.state = earlier
        if self.args.c.endswith("cascade_fullres"):
            raise SelfTrainingError(f"-c {self.args.c}: cascades need a previous stage for every case; use 2d, "
                                    f"3d_fullres or 3d_lowres.")
        with open(join(self.source_raw, "dataset.json")) as f:
            find_unlabeled_cases(self.source_raw, json.load(f))  # names the folder and the fix
        plans = join(os.environ["nnUNet_preprocessed"], self.source, self.args.p + ".json")
        if not isfile(plans):
            raise SelfTrainingError(f"{plans} not found. Plan and preprocess {self.source} first: "
                                    f"nnUNetv2_plan_and_preprocess -d {self.source_id} -c {self.args.c}")
        with open(plans) as f:
            if self.args.c not in json.load(f)["configurations"]:
                raise SelfTrainingError(f"The plans {plans} have no configuration '{self.args.c}'.")
        for r in range(1, self.args.rounds + 1):
            target = self.target_id(r)
            if target == self.source_id:
                raise SelfTrainingError(f"-t {self.args.t}: round {r}'s dataset id {target} is the source's. Choose "
                                        f"another -t (rounds use -t, -t + 1, ...).")
            if not self.ours(r) and self.taken(target):
                raise SelfTrainingError(
                    f"Dataset id {target} (round {r}) is taken: {', '.join(self.taken(target))}. Choose another "
                    f"-t (rounds use -t, -t + 1, ...), or delete that dataset.")

    def target_id(self, round_: int) -> int:
        return self.args.t + round_ - 1

    def target(self, round_: int) -> str:
        return target_name(self.source, self.target_id(round_), round_)

    def taken(self, target: int) -> List[str]:
        from nnunetv2.utilities.dataset_name_id_conversion import find_candidate_datasets

        return sorted(find_candidate_datasets(target))

    def ours(self, round_: int) -> bool:
        """Whether the round's raw dataset exists and was written by this recipe (a run to continue)."""
        marker = join(os.environ["nnUNet_raw"], self.target(round_), SOURCE_MARKER)
        if not isfile(marker):
            return False
        with open(marker) as f:
            written = json.load(f)
        return {k: written.get(k) for k in self.recipe} == self.recipe and written.get("round") == round_

    # ------------------------------------------------------------------ stages
    def run(self) -> dict:
        self.check_inputs()
        os.makedirs(self.log_dir, exist_ok=True)
        model_dataset = self.source_id
        self.stage(0, "train the first model", lambda: self.train(self.source_id, self.first_trainer),
                   f"{self.source} fold {self.args.f} ({self.first_trainer})")
        for r in range(1, self.args.rounds + 1):
            self.round(r, model_dataset)
            model_dataset = self.target_id(r)
        self.state["seconds"] = sum(t for stages in self.state.get("stage_seconds", {}).values() for t in stages.values())
        self.save()
        final = pipeline.model_folder(self.env, model_dataset, self.args.tr, self.args.c, self.args.f, self.args.p)
        print(f"Self-training done: the model of round {self.args.rounds} is {final} (a stock nnU-Net model "
              f"folder: nnUNetv2_predict -d {model_dataset} -c {self.args.c} -f {self.args.f} -tr {self.args.tr}).",
              flush=True)
        return self.state

    def round(self, r: int, model_dataset: int) -> None:
        folder = join(self.args.o, f"round_{r}")
        pseudo_labels = join(folder, "pseudo_labels")
        quality_json = join(pseudo_labels, "quality.json")
        model_trainer = self.first_trainer if r == 1 else self.args.tr
        self.stage(r, "predict and score the unlabelled cases",
                   lambda: self.score(model_dataset, model_trainer, pseudo_labels), pseudo_labels,
                   done=isfile(quality_json))
        quality = case_quality(quality_json)
        kept = gate(quality, self.args.min_quality, self.args.keep_fraction)
        entry = self.state["rounds"].setdefault(str(r), {})
        entry.update(kept=len(kept), cases=len(quality), dataset=self.target(r),
                     kept_quality_mean=sum(quality[c] for c in kept) / max(1, len(kept)),
                     quality_mean=sum(quality.values()) / max(1, len(quality)))
        if not kept:
            raise SelfTrainingError(f"The gate keeps no unlabelled case (round {r}: predicted Dice from "
                                    f"{min(quality.values()):.3f} to {max(quality.values()):.3f}). Lower --min-quality "
                                    f"or use --keep-fraction.")
        target_raw = join(os.environ["nnUNet_raw"], self.target(r))
        self.stage(r, f"write {self.target(r)} ({len(kept)} of {len(quality)} pseudo-labelled cases kept)",
                   lambda: write_self_training_dataset(self.source_raw, target_raw, pseudo_labels, kept,
                                                       {**self.recipe, "round": r}),
                   target_raw, done=self.ours(r))
        marker = join(folder, "preprocessed.json")
        self.stage(r, "plan with the source's plans and preprocess", lambda: self.preprocess(r, marker),
                   self.target(r), done=isfile(marker))
        self.stage(r, "train", lambda: self.train(self.target_id(r), self.args.tr),
                   f"{self.target(r)} fold {self.args.f}")

    def stage(self, r: int, what: str, work, where: str, done: bool = False) -> None:
        """Run one stage (or say that an earlier run finished it), with its time in the state file."""
        key = "round_0" if r == 0 else f"round_{r}"
        print(f"[round {r}/{self.args.rounds}] {what}: {where}" + (" (done by an earlier run, kept)" if done else ""),
              flush=True)
        if done:
            return
        started = time.time()
        work()
        times = self.state.setdefault("stage_seconds", {}).setdefault(key, {})
        times[what.split(" (")[0]] = times.get(what.split(" (")[0], 0.0) + time.time() - started
        self.save()

    def train(self, dataset: int, trainer: str) -> None:
        """nnUNetv2_train of the fold; a finished fold is kept, an interrupted one continues (--c)."""
        fold = pipeline.model_folder(self.env, dataset, trainer, self.args.c, self.args.f, self.args.p)
        if isfile(join(fold, "checkpoint_final.pth")):
            print(f"      {fold}: trained (kept)", flush=True)
            return
        continuing = isfile(join(fold, "checkpoint_latest.pth"))
        cmd = ["nnUNetv2_train", str(dataset), self.args.c, str(self.args.f), "-tr", trainer, "-p", self.args.p,
               "-device", self.args.device] + (["--c"] if continuing else [])
        pipeline.run_logged(cmd, self.env, join(self.log_dir, f"train_{dataset}.log"), echo=("Epoch ",))

    def score(self, model_dataset: int, trainer: str, out: str) -> None:
        """nnUNetv2_predict_quality: predictions of the unlabelled images (the pseudo-labels) and their
        predicted Dice; calibrated only where a --min-quality threshold reads the value (a ranking does not)."""
        shutil.rmtree(out, ignore_errors=True)
        cmd = ["nnUNetv2_predict_quality", "-i", join(self.source_raw, UNLABELED_RAW_SUBFOLDER), "-o", out,
               "-d", str(model_dataset), "-c", self.args.c, "-f", str(self.args.f), "-tr", trainer,
               "-p", self.args.p, "-device", self.args.device]
        cmd += ["--disable_tta"] if self.args.disable_tta else []
        if self.args.min_quality is None:
            cmd += ["--no-calibration"]
        elif self.args.calibration_cases:
            cmd += ["--calibration-cases", *self.args.calibration_cases]
        pipeline.run_logged(cmd, self.env, join(self.log_dir, f"predict_quality_{model_dataset}.log"))

    def preprocess(self, r: int, marker: str) -> None:
        """nnU-Net's documented plans transfer: fingerprint the new dataset, move the source's plans to it,
        preprocess it with them."""
        target, n = str(self.target_id(r)), str(self.args.np)
        log = join(self.log_dir, f"preprocess_{target}.log")
        plan_env = {**self.env, "nnUNet_n_proc_DA": str(max(1, int(self.env.get("nnUNet_n_proc_DA", "1"))))}
        pipeline.run_logged(["nnUNetv2_extract_fingerprint", "-d", target, "-np", n], plan_env, log)
        pipeline.run_logged(["nnUNetv2_move_plans_between_datasets", "-s", str(self.source_id), "-t", target,
                             "-sp", self.args.p, "-tp", self.args.p], plan_env, log + ".plans")
        # what nnU-Net's planner does beside its plans (the preprocessor and the trainers read this copy)
        shutil.copy(join(os.environ["nnUNet_raw"], self.target(r), "dataset.json"),
                    join(os.environ["nnUNet_preprocessed"], self.target(r), "dataset.json"))
        pipeline.run_logged(["nnUNetv2_preprocess", "-d", target, "-plans_name", self.args.p, "-c", self.args.c,
                             "-np", n], plan_env, log + ".preprocess")
        atomic_write_json({"plans_from": self.source, "plans": self.args.p}, marker)

    def save(self) -> None:
        os.makedirs(self.args.o, exist_ok=True)
        atomic_write_json(self.state, self.state_file)


def parser() -> argparse.ArgumentParser:
    from nnunetv2.configuration import default_num_processes

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("-d", required=True, help="source dataset (name or id): labelled cases and imagesUnlabeled/")
    p.add_argument("-c", required=True, help="configuration, e.g. 3d_fullres or 2d")
    p.add_argument("-f", required=True, help="fold (0-4 or all)")
    p.add_argument("-t", required=True, type=dataset_id,
                   help="dataset id of round 1's new dataset (round r: -t + r - 1); must be free")
    p.add_argument("-o", required=True, help="output folder: logs, pseudo-labels, quality reports, state (to resume)")
    p.add_argument("-tr", default="nnUNetTrainer", help="trainer of every model (but the first with "
                                                        "--first-trainer). Default: nnUNetTrainer")
    p.add_argument("--first-trainer", default=None,
                   help="trainer of the first model, the one whose predictions become round 1's pseudo-labels (e.g. "
                        "nnUNetTrainerBCP: D's labelled and unlabelled cases). Default: -tr")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (moved to every new dataset). Default: "
                                                     "nnUNetPlans")
    p.add_argument("--rounds", type=positive_count, default=1, help="self-training rounds. Default: 1")
    gate_group = p.add_mutually_exclusive_group()
    gate_group.add_argument("--min-quality", type=unit_interval, default=None,
                            help="keep the cases whose every label's predicted Dice reaches this (calibrated where "
                                 "nnUNetv2_predict_quality can calibrate: folds 0-4, or --calibration-cases)")
    gate_group.add_argument("--keep-fraction", type=_fraction, default=None,
                            help="keep this fraction of the cases, best predicted Dice (worst label) first")
    p.add_argument("--calibration-cases", nargs=2, metavar=("IMAGES", "LABELS"), default=None,
                   help="with --min-quality: labelled cases the model did not train on, to calibrate the estimate")
    p.add_argument("--disable_tta", action="store_true", help="predict without test-time mirroring (the quality "
                                                              "estimate is then the network's self-estimate alone)")
    p.add_argument("-np", type=positive_count, default=default_num_processes,
                   help=f"processes for fingerprint and preprocessing. Default: {default_num_processes}")
    p.add_argument("-device", default="cuda", help="cuda, cpu or mps. Default: cuda")
    return p


def _fraction(text: str) -> float:
    value = unit_interval(text)
    if value == 0:
        raise argparse.ArgumentTypeError("0 is not allowed: give a fraction in (0, 1]")
    return value


def entry_point() -> None:
    args = parser().parse_args()
    if args.calibration_cases and args.min_quality is None:
        raise SystemExit("ERROR: --calibration-cases calibrates the --min-quality threshold; give --min-quality too.")
    try:
        SelfTraining(args).run()
    except (SelfTrainingError, UnlabeledDataError, InputError, pipeline.StageError) as e:
        raise SystemExit(f"ERROR: {e}")


if __name__ == "__main__":
    sys.exit(entry_point())
