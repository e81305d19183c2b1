"""Self-training inside one nnU-Net run, with whole cases selected by their estimated quality (issue #36).

What the measurements point to (docs/results.md, offline self-training): the offline recipe gains by keeping
the unlabelled CASES whose predictions quality control rates best (a case's estimate ranks the true Dice at
Pearson 0.78-0.93), where the online trainers' per-patch weights barely discriminate (Pearson about 0.6, an
effective 3.5 of 4 patches). These trainers do the offline recipe in one run, at nnU-Net's own budget:

1. nnU-Net training on the labelled cases until `self_training_start_fraction` of the epochs;
2. the network predicts every preprocessed unlabelled case (sliding window, test-time mirroring), each
   prediction is scored as `nnUNetv2_predict_quality` scores it by default (the mean of the network's expected
   Dice and its agreement with the mirrored predictions, worst label; in the preprocessed space, uncalibrated),
   and written as the case's pseudo-label (experiments/pseudo_labelled_cases.py);
3. the cases the score keeps (`case_score`, `keep_fraction`) join the labelled ones as training cases of
   nnU-Net's own loader and augmentation, with their fixed pseudo-labels, until the end.

The base is (1)-(3) with every case kept (`nnUNetTrainerSelfTrain`); quality guidance is the case score
(`nnUNetTrainerSelfTrain_QG`: the better half by the estimate). Benchmarks: `nnUNetTrainerSelfTrainOracle`
keeps the better half by the true Dice (withheld labels), and the `_evidence` variants record each case's true
Dice beside its score (never used for training but by the oracle). Every case's score, true Dice where known,
and whether it was kept go to `self_training_cases.json` in the fold folder. Resumable with --c: the kept
cases are in the checkpoint, their pseudo-labels in `pseudo_labels/`. One process (not written for DDP: every
rank would predict and write every case). Measured and not adopted (docs/results.md, "Self-training inside one
run").
"""
import time
from os.path import join
from typing import Dict, List, Optional

import numpy as np
import torch
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.utilities.file_and_folder_operations import maybe_mkdir_p
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_qg.atomic import atomic_write_json
from nnunet_qg.benchmark.withheld import require_withheld_cases, withheld_folder
from nnunet_qg.experiments.pseudo_labelled_cases import (WithPseudoLabels, missing_cases, read_unlabeled_case,
                                                         read_unlabeled_seg, write_pseudo_labelled_case)
from nnunet_qg.quality.dice import dice_per_label
from nnunet_qg.quality_control.signals import estimate_preprocessed, mirror_combinations, predict_members
from nnunet_qg.self_training import gate
from nnunet_qg.trainers.checkpoint_extras import CheckpointExtras
from nnunet_qg.trainers.nnUNetTrainer_evidence import EvidenceBudget
from nnunet_qg.trainers.seeded_training import SeededTraining
from nnunet_qg.trainers.short_schedule import ShortSchedule
from nnunet_qg.unlabeled.errors import UnlabeledDataError
from nnunet_qg.unlabeled.paths import preprocessed_unlabeled_folder
from nnunet_qg.unlabeled.preprocess import check_preprocessed_unlabeled

CASES_KEY = "self_training_cases"
CASES_FILE = "self_training_cases.json"
CASE_SCORES = ("none", "quality", "oracle")


def truth_summary(records: Dict[str, dict]) -> Dict[str, float]:
    """Where the records hold true Dice: the mean true Dice (mean over labels, as
    benchmarks/offline_pseudo_label_truth.py reports the offline recipe's) and true worst-label Dice of all, the
    kept and the dropped cases, and the Pearson correlation of the estimated with the true worst-label Dice (None
    where undefined)."""
    cases = [r for r in records.values() if "true_dice" in r]
    if not cases:
        return {}
    worst = np.array([min(r["true_dice"]) for r in cases])
    mean = np.array([np.mean(r["true_dice"]) for r in cases])
    estimate = np.array([min(r["estimated_dice"]) for r in cases])
    kept = np.array([r["kept"] for r in cases])
    out = {"estimate_true_pearson": float(np.corrcoef(estimate, worst)[0, 1])
           if worst.std() > 0 and estimate.std() > 0 else None}
    for name, mask in (("all", np.ones_like(kept)), ("kept", kept), ("dropped", ~kept)):
        out[f"true_dice_{name}"] = float(mean[mask].mean()) if mask.any() else None
        out[f"true_worst_dice_{name}"] = float(worst[mask].mean()) if mask.any() else None
    return out


class nnUNetTrainerSelfTrain(CheckpointExtras, nnUNetTrainer):
    """Self-training in one run, every unlabelled case kept (the base without quality guidance)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.self_training_start_fraction = 0.5  # of the epochs: nnU-Net training on the labelled cases until then
        self.case_score = "none"  # none (keep all) | quality (the estimate) | oracle (true Dice: benchmarks)
        self.keep_fraction = 1.0  # of the cases, the best by case_score
        self.self_training_mirroring = True  # test-time mirroring of the predictions (and the agreement signal)
        self.withheld_truth = False  # benchmarks: read each case's withheld label for the record (and the oracle)
        self.self_training_cases: Optional[List[str]] = None  # the kept cases, once the switch happened
        self.unlabeled_cases: List[str] = []

    # ------------------------------------------------------------------ set-up
    @property
    def preprocessed_unlabeled_folder(self) -> str:
        return preprocessed_unlabeled_folder(self.plans_manager.dataset_name,
                                             self.configuration_manager.data_identifier)

    @property
    def pseudo_label_folder(self) -> str:
        return join(self.output_folder, "pseudo_labels")

    def initialize(self):
        if self.case_score not in CASE_SCORES:
            raise RuntimeError(f"{self.__class__.__name__}: case_score '{self.case_score}' is not one of "
                               f"{', '.join(CASE_SCORES)}")
        if self.case_score == "oracle" and not self.withheld_truth:
            raise RuntimeError(f"{self.__class__.__name__}: the oracle case score needs withheld_truth (benchmarks)")
        super().initialize()

    def check_unlabeled_data(self) -> List[str]:
        """The preprocessed unlabelled cases; a clear error if missing, stale or leaking labels."""
        folder = self.preprocessed_dataset_folder
        labeled = infer_dataset_class(folder).get_identifiers(folder)
        return check_preprocessed_unlabeled(self.plans_manager.dataset_name, self.configuration_name,
                                            self.plans_manager.plans, self.dataset_json,
                                            self.configuration_manager.data_identifier, labeled)

    def check_pseudo_labels(self) -> None:
        """A resumed run's pseudo-labels are where the switch wrote them."""
        missing = missing_cases(self.pseudo_label_folder, self.self_training_cases or [])
        if missing:
            raise UnlabeledDataError(
                f"{len(missing)} pseudo-labels of this run are missing in {self.pseudo_label_folder} (e.g. "
                f"{missing[0]}). They are written when self-training starts (epoch "
                f"{self.self_training_start_epoch()}); train again without --c.")

    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        # bad unlabelled data or a resumed run without its pseudo-labels: one line, not a traceback
        try:
            self.unlabeled_cases = self.check_unlabeled_data()
            self.check_pseudo_labels()
        except UnlabeledDataError as error:
            self.print_to_log_file(f"ERROR: {error}")
            raise SystemExit(f"ERROR: {error}") from None
        super().on_train_start()

    def self_training_start_epoch(self) -> int:
        return max(1, int(round(self.self_training_start_fraction * self.num_epochs)))

    # ------------------------------------------------------------------ data
    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        if self.self_training_cases:
            dataset_tr = WithPseudoLabels(dataset_tr, self.preprocessed_unlabeled_folder, self.pseudo_label_folder,
                                          self.self_training_cases)
        return dataset_tr, dataset_val

    def on_epoch_start(self):
        if self.self_training_cases is None and self.current_epoch >= self.self_training_start_epoch():
            self.start_self_training()
        super().on_epoch_start()

    def start_self_training(self) -> None:
        """Predict, score and write every unlabelled case, keep the best, and train on them from now on."""
        start = time.time()
        records = self.predict_unlabeled_cases()
        scores = {case: r["score"] for case, r in records.items()}
        kept = gate(scores) if self.case_score == "none" else gate(scores, keep_fraction=self.keep_fraction)
        for case, record in records.items():
            record["kept"] = case in set(kept)
        summary = {"epoch": self.current_epoch, "case_score": self.case_score, "keep_fraction": self.keep_fraction,
                   "num_kept": len(kept), "num_cases": len(records), "seconds": round(time.time() - start, 1),
                   **truth_summary(records)}
        atomic_write_json({"summary": summary, "cases": records}, join(self.output_folder, CASES_FILE))
        self.self_training_cases = kept
        self.print_to_log_file(f"Self-training from epoch {self.current_epoch}: {len(kept)} of {len(records)} "
                               f"unlabelled cases kept (case score '{self.case_score}'), "
                               f"{time.time() - start:.0f} s; {CASES_FILE}")
        self._restart_dataloaders()

    def _restart_dataloaders(self) -> None:
        for loader in (self.dataloader_train, self.dataloader_val):
            if isinstance(loader, (NonDetMultiThreadedAugmenter, MultiThreadedAugmenter)):
                loader._finish()
        self.dataloader_train, self.dataloader_val = self.get_dataloaders()

    @torch.no_grad()
    def predict_unlabeled_cases(self) -> Dict[str, dict]:
        """Every unlabelled case's pseudo-label written to pseudo_label_folder; per case its estimated Dice per
        label, true Dice where withheld labels are read, and the score the gate ranks by."""
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        maybe_mkdir_p(self.pseudo_label_folder)
        self.set_deep_supervision_enabled(False)
        self.network.eval()
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                    perform_everything_on_device=self.device.type == "cuda", device=self.device,
                                    verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        predictor.manual_initialization(self.network, self.plans_manager, self.configuration_manager, None,
                                        self.dataset_json, self.__class__.__name__,
                                        self.inference_allowed_mirroring_axes)
        mirrors = mirror_combinations(self.inference_allowed_mirroring_axes if self.self_training_mirroring else None)
        labels = [int(l) for l in self.label_manager.foreground_labels]
        all_labels = [int(l) for l in self.label_manager.all_labels]
        values = np.asarray(all_labels, dtype=np.int16)
        truth_folder = withheld_folder(self.plans_manager.dataset_name, self.configuration_manager.data_identifier)
        records: Dict[str, dict] = {}
        step = max(1, len(self.unlabeled_cases) // 4)
        for i, case in enumerate(self.unlabeled_cases):
            data, crop_seg, properties = read_unlabeled_case(self.preprocessed_unlabeled_folder, case)
            logits, members = predict_members(predictor, data.astype(np.float32, copy=False), mirrors,
                                              len(self.configuration_manager.patch_size), all_labels)
            label_map = values[logits.argmax(0).numpy()]
            estimate = estimate_preprocessed(logits, members, label_map, labels, all_labels)
            record = {"estimated_dice": [round(float(v), 4) for v in estimate]}
            true_dice = None
            if self.withheld_truth:
                truth = read_unlabeled_seg(truth_folder, case)
                true_dice = dice_per_label(label_map[None], np.maximum(truth, 0), labels)
                record["true_dice"] = [round(float(v), 4) for v in true_dice]
            record["score"] = self.score_of(estimate, true_dice)
            write_pseudo_labelled_case(self.pseudo_label_folder, case, label_map, crop_seg, properties, labels,
                                       self.configuration_manager.patch_size)
            records[case] = record
            if (i + 1) % step == 0 or i + 1 == len(self.unlabeled_cases):
                self.print_to_log_file(f"Self-training: predicted {i + 1} of {len(self.unlabeled_cases)} "
                                       f"unlabelled cases")
        self.set_deep_supervision_enabled(True)
        self.network.train()
        return records

    def score_of(self, estimate: np.ndarray, true_dice: Optional[np.ndarray]) -> float:
        """What the gate ranks a case by: its worst label's estimated (quality) or true (oracle) Dice; 1 (none)."""
        if self.case_score == "none":
            return 1.0
        return float(np.min(estimate if self.case_score == "quality" else true_dice))

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_extras(self) -> dict:
        return {**super().checkpoint_extras(), CASES_KEY: self.self_training_cases}

    def load_checkpoint_extras(self, checkpoint: dict) -> None:
        super().load_checkpoint_extras(checkpoint)
        self.self_training_cases = checkpoint.get(CASES_KEY)


class nnUNetTrainerSelfTrain_QG(nnUNetTrainerSelfTrain):
    """Self-training in one run with quality guidance: the better half of the unlabelled cases by the estimate
    quality control gives their predictions."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.case_score = "quality"
        self.keep_fraction = 0.5


class nnUNetTrainerSelfTrainOracle(nnUNetTrainerSelfTrain):
    """Benchmarks: the better half of the cases by their true Dice (withheld labels), the headroom of any score."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.case_score = "oracle"
        self.keep_fraction = 0.5
        self.withheld_truth = True


class WithheldTruth:
    """Put before a self-training trainer in the bases: each case's true Dice goes into the record."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.withheld_truth = True

    def check_unlabeled_data(self) -> List[str]:
        cases = super().check_unlabeled_data()
        require_withheld_cases(self.__class__.__name__, withheld_folder(
            self.plans_manager.dataset_name, self.configuration_manager.data_identifier), cases)
        return cases


class nnUNetTrainerSelfTrain_evidence(EvidenceBudget, SeededTraining, WithheldTruth, nnUNetTrainerSelfTrain):
    """self_train: every case kept."""


class nnUNetTrainerSelfTrain_QG_evidence(EvidenceBudget, SeededTraining, WithheldTruth, nnUNetTrainerSelfTrain_QG):
    """self_train_qg: the better half by the estimate."""


class nnUNetTrainerSelfTrainOracle_evidence(EvidenceBudget, SeededTraining, WithheldTruth,
                                            nnUNetTrainerSelfTrainOracle):
    """self_train_oracle: the better half by the true Dice."""


class nnUNetTrainerSelfTrain_QG_debug(ShortSchedule, SeededTraining, nnUNetTrainerSelfTrain_QG):
    """Smoke test: 3 epochs x 3 iterations, self-training from epoch 2."""
