"""Benchmark trainer: does the quality predictor drift once frozen, and which g follows the network?

Supervised nnU-Net training (no unlabelled loss) with three quality predictors trained and judged
side by side, on the same network run, the same validation patches and the same masks:

- `frozen`: the paper's g (corrupted ground truth + the network's own predictions during the
  warm-up, then frozen): `self.quality`, exactly as in nnUNetTrainerQGSSL_gFrozen.
- `refreshed`: a copy of it at the end of the warm-up that keeps taking one step every
  `drift_refresh_every` iterations on the labelled batch (what nnUNetTrainerQGSSL does).
- `corruptions_only`: trained during the warm-up on corrupted ground truth only (it never sees the
  network's predictions, so it cannot learn what an early prediction looks like), then frozen.

At every validation each g is judged on the network's real predictions, the EMA teacher's
predictions (what PL-QW weights) and corrupted masks: `quality_drift.json` and `quality_drift.png`
in the fold folder. `benchmarks/quality_drift_benchmark.py` runs it on the shared Hippocampus split.
"""
import copy
from typing import Dict, List, Optional

import torch
from batchgenerators.utilities.file_and_folder_operations import join

from nnunet_qg.atomic import atomic_write_json
from nnunet_qg.plotting import plot_progress_panels
from nnunet_qg.quality.training import QualityPredictorTrainer
from nnunet_qg.trainers.nnUNetTrainerQGWarmup import nnUNetTrainerQGWarmup
from nnunet_qg.trainers.short_schedule import ShortSchedule

DRIFT_FILE = "quality_drift.json"
DRIFT_VARIANTS = ("frozen", "refreshed", "corruptions_only")


class nnUNetTrainerQGDrift(nnUNetTrainerQGWarmup):
    """nnU-Net training + three quality predictors (frozen, refreshed, corruptions-only) judged side by side."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.unlabeled_loss_weight = 0.0  # the network trains as plain nnU-Net: g's drift alone is measured
        self.quality_warmup_fraction = 0.075  # nnUNetTrainerQGSSL's
        self.drift_refresh_every = 2  # nnUNetTrainerQGSSL's quality_refresh_every
        self.corruptions_only: Optional[QualityPredictorTrainer] = None
        self.refreshed: Optional[QualityPredictorTrainer] = None
        self.drift_history: List[dict] = []
        self._drift_val: List[Dict[str, dict]] = []

    def initialize(self):
        if self.is_ddp:
            raise RuntimeError(f"{self.__class__.__name__} is a single-GPU benchmark trainer; run it without -num_gpus.")
        super().initialize()
        self.corruptions_only = self.new_quality_trainer(real_fraction=0.0, seed_offset=1)

    def variants(self) -> Dict[str, QualityPredictorTrainer]:
        """The three g; during the warm-up `refreshed` is still the paper's g itself."""
        return {"frozen": self.quality, "refreshed": self.refreshed or self.quality,
                "corruptions_only": self.corruptions_only}

    def on_train_epoch_start(self):
        super().on_train_epoch_start()  # freezes self.quality when the warm-up ends
        if self.quality.frozen and self.refreshed is None:
            self.refreshed = self.new_quality_trainer(self.quality_refresh_real_fraction, seed_offset=2)
            # a frozen copy (refresh steps unfreeze it briefly); deep: torch's optimizer would share its buffers
            self.refreshed.load_state_dict(copy.deepcopy(self.quality.state_dict()))
        if self.quality.frozen and not self.corruptions_only.frozen:
            self.corruptions_only.freeze()

    def after_train_step(self, data, target, output_labeled) -> Dict[str, float]:
        out = super().after_train_step(data, target, output_labeled)  # trains / keeps frozen the paper's g
        target0 = target[0] if isinstance(target, list) else target
        logits0 = output_labeled[0] if isinstance(output_labeled, list) else output_labeled
        if not self.corruptions_only.frozen:
            self.corruptions_only.train_step(data, target0, logits0, self._autocast())
        elif self._steps_since_warmup % self.drift_refresh_every == 0:
            self.refreshed.refresh_step(data, target0, logits0, self._autocast(), self.quality_refresh_real_fraction)
        return out

    # ------------------------------------------------------------------ measurement
    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self._drift_val = []

    def measure_quality(self, data, target, logits, teacher_logits) -> Dict[str, tuple]:
        masks = self.quality.measurement_masks(target, logits, teacher_logits)  # the same masks for every g
        scored: Dict[int, dict] = {}
        for name, variant in self.variants().items():
            if id(variant) not in scored:
                scored[id(variant)] = variant.score_masks(data, masks, self._autocast())
        results = {name: scored[id(variant)] for name, variant in self.variants().items()}
        self._drift_val.append(results)
        return results["frozen"]

    def on_validation_epoch_end(self, val_outputs):
        super().on_validation_epoch_end(val_outputs)
        names = [str(l) for l in self.label_manager.foreground_labels]
        record = {"epoch": self.current_epoch, "warmup": self.current_epoch < self.warmup_epochs,
                  "val_pseudo_dice": float(self.logger.get_value("mean_fg_dice", step=self.current_epoch))}
        for variant in DRIFT_VARIANTS:
            summary = self.summarise_quality([b[variant] for b in self._drift_val], names)
            record[variant] = {kind: {k: v for k, v in s.items() if k != "pairs"} for kind, s in summary.items()}
        self.drift_history.append(record)
        if self.local_rank == 0:
            atomic_write_json({"warmup_epochs": self.warmup_epochs, "refresh_every": self.drift_refresh_every,
                               "epochs": self.drift_history}, join(self.output_folder, DRIFT_FILE))
            self.plot_drift(join(self.output_folder, "quality_drift.png"))

    def plot_drift(self, path: str) -> None:
        """One panel per kind of mask and metric, one line per g, against the epoch."""
        series, panels = {}, {}
        for kind in self.quality_kinds:
            for metric in ("mae", "bias", "pearson"):
                keys = [f"{variant} ({kind} {metric})" for variant in DRIFT_VARIANTS]
                for key, variant in zip(keys, DRIFT_VARIANTS):
                    series[key] = [r[variant][kind]["mean"][metric] for r in self.drift_history]
                panels[f"g on {kind} masks: {metric} (warm-up ends after epoch {self.warmup_epochs - 1})"] = keys
        series["validation pseudo Dice"] = [r["val_pseudo_dice"] for r in self.drift_history]
        panels["the network: nnU-Net's validation pseudo Dice"] = ["validation pseudo Dice"]
        plot_progress_panels(series, panels, path)

    # ------------------------------------------------------------------ checkpoints
    def ssl_state_dict(self) -> dict:
        state = {**super().ssl_state_dict(), "drift_history": self.drift_history,
                 "corruptions_only": self.corruptions_only.state_dict()}
        if self.refreshed is not None:
            state["refreshed"] = self.refreshed.state_dict()
        return state

    def load_ssl_state_dict(self, state: dict) -> None:
        super().load_ssl_state_dict(state)
        self.drift_history = list(state.get("drift_history", []))
        if "corruptions_only" in state:
            self.corruptions_only.load_state_dict(state["corruptions_only"])
        if "refreshed" in state:
            self.refreshed = self.new_quality_trainer(self.quality_refresh_real_fraction, seed_offset=2)
            self.refreshed.load_state_dict(state["refreshed"])


class nnUNetTrainerQGDrift_debug(ShortSchedule, nnUNetTrainerQGDrift):
    """Smoke test: 4 epochs x 3 iterations, the first 2 epochs warm-up."""

    short_num_epochs = 4
    short_overrides = {"quality_warmup_fraction": 0.5}


class nnUNetTrainerQGDrift_cpuBench(ShortSchedule, nnUNetTrainerQGDrift):
    """The drift benchmark on a CPU: 20 epochs x 30 iterations at batch 2, warm-up the first 4 epochs."""

    short_num_epochs = 20
    short_iterations_per_epoch = 30
    short_val_iterations_per_epoch = 25
    short_save_every = 5
    short_max_batch_size = 2
    short_overrides = {"quality_warmup_fraction": 0.2}


class nnUNetTrainerQGDrift_gpuBench(ShortSchedule, nnUNetTrainerQGDrift):
    """The drift benchmark on a GPU: the shared reference budget (40 x 100 iterations), QG-SSL's warm-up."""

    short_num_epochs = 40
    short_iterations_per_epoch = 100
    short_val_iterations_per_epoch = 50
    short_save_every = 50
    short_max_batch_size = 10 ** 6
