"""Benchmark trainer: does the quality predictor drift once frozen, and which g follows the network?

Supervised nnU-Net training (no unlabelled loss) with several quality predictors trained and judged
side by side, on the same network run, the same validation patches and the same masks:

- `frozen`: the paper's g (corrupted ground truth + the network's own predictions during the
  warm-up, then frozen): `self.quality`, exactly as in nnUNetTrainerQGSSL_gFrozen.
- `refreshed`: a copy of it at the end of the warm-up that keeps taking one step every
  `drift_refresh_every` iterations on the labelled batch (what nnUNetTrainerQGSSL does).
- `corruptions_only`: trained during the warm-up on corrupted ground truth only (it never sees the
  network's predictions, so it cannot learn what an early prediction looks like), then frozen.
- `ranked`: like `refreshed`, with a pairwise ranking term added to g's loss from the first step.
- `ranked_multiscale`: like `ranked`, and its real predictions also include the network's
  upsampled deep-supervision outputs (realistic predictions of lower quality, at no extra pass).
- `belief`: like `refreshed`, but g also reads the network's softmax next to the mask (built with
  ResearchQualityPredictor(belief=True); its training masks and measurements come with the softmax of the
  network that made them).
- `full_resolution`: like `refreshed`, but g's first stage runs at the patch's resolution (stride 1):
  it sees every voxel of the boundary, where the network's good predictions differ from each other.
- `multistep`: like `refreshed`, but during the warm-up it takes `drift_steps_per_iteration` optimizer
  steps per labelled batch, each on fresh masks (quality_steps_per_iteration): more learning per loaded
  batch, no extra loading.
- `with_self_estimate`: like `refreshed`, but g is also given the network's own expected Dice of the mask
  (ResearchQualityPredictor(self_estimate=True)): it starts from that estimate and learns to calibrate and correct it.
- `self_estimate` (no g): the network's own expected Dice of a mask, the soft Dice between the mask
  and the network's softmax (the teacher's for the teacher's masks): what g has to beat.

The network is also kept after a few early epochs (`drift_stage_fractions`,
`checkpoint_epoch_<e>.pth`): networks of several qualities, whose predictions of held-out cases make
the wide band of qualities on which the paper measures g's accuracy.

At every validation each is judged on the network's real predictions, the EMA teacher's
predictions (what PL-QW weights) and corrupted masks: `quality_drift.json` and `quality_drift.png`
in the fold folder. At the end every g is exported (`quality_predictor_<variant>.pth`) so that
`benchmarks/quality_drift_benchmark.py` can also judge them on whole held-out test cases.
"""
import copy
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_qg.atomic import atomic_path, atomic_write_json
from nnunet_qg.experiments.quality import ResearchQualityPredictorTrainer
from nnunet_qg.experiments.trainers.research_options import ResearchQualityOptions
from nnunet_qg.networks import highest_resolution
from nnunet_qg.plotting import plot_progress_panels
from nnunet_qg.quality.dice import soft_dice_per_label
from nnunet_qg.quality.metrics import pooled_agreement_per_label
from nnunet_qg.quality.network import save_quality_predictor
from nnunet_qg.trainers.nnUNetTrainerQGSSL import nnUNetTrainerQGWarmup
from nnunet_qg.trainers.short_schedule import ShortSchedule

DRIFT_FILE = "quality_drift.json"
DRIFT_PREDICTORS = ("frozen", "refreshed", "corruptions_only", "ranked", "ranked_multiscale", "belief",
                    "full_resolution", "multistep", "with_self_estimate")
DRIFT_VARIANTS = DRIFT_PREDICTORS + ("self_estimate",)


def drift_predictor_file(variant: str) -> str:
    """The file a drift variant's g is exported to at the end of training (in the fold folder)."""
    return f"quality_predictor_{variant}.pth"


def drift_stage_checkpoint(epoch: int) -> str:
    """The checkpoint a drift run keeps of its network after `epoch` (in the fold folder)."""
    return f"checkpoint_epoch_{epoch}.pth"


@dataclass
class ExtraPredictor:
    """A g trained from the warm-up's first step with its own settings, beside the paper's."""

    quality: ResearchQualityPredictorTrainer
    scales: int = 1  # quality_prediction_scales of this g
    refresh: bool = True  # after the warm-up: a step every drift_refresh_every iterations (else frozen)
    steps: int = 1  # optimizer steps per warm-up iteration (quality_steps_per_iteration of this g)


class nnUNetTrainerQGDrift(ResearchQualityOptions, nnUNetTrainerQGWarmup):
    """nnU-Net training + several quality predictors and the network's self-estimate judged side by side."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.unlabeled_loss_weight = 0.0  # the network trains as plain nnU-Net: g's drift alone is measured
        self.quality_warmup_fraction = 0.075  # nnUNetTrainerQGSSL's
        self.drift_refresh_every = 2  # nnUNetTrainerQGSSL's quality_refresh_every
        self.drift_ranking_weight = 1.0  # quality_ranking_weight of the `ranked` variants
        self.drift_multiscale = 3  # quality_prediction_scales of `ranked_multiscale`
        self.drift_steps_per_iteration = 4  # quality_steps_per_iteration of `multistep`
        # the network is also kept after these fractions of the epochs (and the last one is checkpoint_final):
        # networks of several qualities, like the paper's weak checkpoints, whose predictions of held-out cases
        # judge g on the wide band of qualities the paper's accuracy is measured on
        self.drift_stage_fractions = (0.05, 0.1, 0.2, 0.4)
        self.extra: Dict[str, ExtraPredictor] = {}
        self.refreshed: Optional[ResearchQualityPredictorTrainer] = None
        self.drift_history: List[dict] = []
        self._drift_val: List[Dict[str, dict]] = []

    def initialize(self):
        if self.is_ddp:
            raise RuntimeError(f"{self.__class__.__name__} is a single-GPU benchmark trainer; run it without -num_gpus.")
        super().initialize()
        real = self.quality_real_fraction
        self.extra = {
            "corruptions_only": ExtraPredictor(self.new_quality_trainer(0.0, seed_offset=1), refresh=False),
            "ranked": ExtraPredictor(self.new_quality_trainer(real, 3, self.drift_ranking_weight)),
            "ranked_multiscale": ExtraPredictor(self.new_quality_trainer(real, 4, self.drift_ranking_weight),
                                                scales=self.drift_multiscale),
            "belief": ExtraPredictor(self.new_quality_trainer(real, 5, belief=True)),
            "full_resolution": ExtraPredictor(self.new_quality_trainer(real, 6, full_resolution=True)),
            "multistep": ExtraPredictor(self.new_quality_trainer(real, 7), steps=self.drift_steps_per_iteration),
            "with_self_estimate": ExtraPredictor(self.new_quality_trainer(real, 8, self_estimate=True))}

    def variants(self) -> Dict[str, ResearchQualityPredictorTrainer]:
        """Every g by name; during the warm-up `refreshed` is still the paper's g itself."""
        return {"frozen": self.quality, "refreshed": self.refreshed or self.quality,
                **{name: extra.quality for name, extra in self.extra.items()}}

    def on_train_epoch_start(self):
        super().on_train_epoch_start()  # freezes self.quality when the warm-up ends
        if self.quality.frozen and self.refreshed is None:
            self.refreshed = self.new_quality_trainer(self.quality_refresh_real_fraction, seed_offset=2)
            # a frozen copy (refresh steps unfreeze it briefly); deep: torch's optimizer would share its buffers
            self.refreshed.load_state_dict(copy.deepcopy(self.quality.state_dict()))
        if self.quality.frozen:
            for extra in self.extra.values():
                if not extra.quality.frozen:
                    extra.quality.freeze()

    def after_train_step(self, data, target, output_labeled) -> Dict[str, float]:
        out = super().after_train_step(data, target, output_labeled)  # trains / keeps frozen the paper's g
        target0 = highest_resolution(target)
        refresh_now = self.quality.frozen and self._steps_since_warmup % self.drift_refresh_every == 0
        for extra in self.extra.values():
            if extra.quality.frozen and not (extra.refresh and refresh_now):
                continue  # no step for this g: its predictions (upsampled for multiscale) are not needed
            logits = self.quality_training_logits(output_labeled, extra.scales)
            if extra.quality.frozen:
                extra.quality.refresh_step(data, target0, logits, self._autocast(), self.quality_refresh_real_fraction)
            else:
                extra.quality.train_steps(data, target0, logits, self._autocast(), extra.steps)
        if refresh_now:
            self.refreshed.refresh_step(data, target0, self.quality_training_logits(output_labeled, 1),
                                        self._autocast(), self.quality_refresh_real_fraction)
        return out

    # ------------------------------------------------------------------ measurement
    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self._drift_val = []

    @staticmethod
    def self_estimates(masks: Dict[str, tuple], beliefs: Dict[str, torch.Tensor]) -> Dict[str, tuple]:
        """Per kind of mask: the soft Dice of each mask against the softmax of the network that made it
        (measurement_beliefs), next to the true Dice."""
        return {kind: (soft_dice_per_label(mask.float(), beliefs[kind]).cpu().numpy(), dice.cpu().numpy())
                for kind, (mask, dice) in masks.items()}

    def measure_quality(self, data, target, logits, teacher_logits) -> Dict[str, tuple]:
        masks = self.quality.measurement_masks(target, logits, teacher_logits)  # the same masks for every g
        beliefs = self.quality.measurement_beliefs(logits, teacher_logits)
        scored: Dict[int, dict] = {}
        for name, variant in self.variants().items():
            if id(variant) not in scored:
                scored[id(variant)] = variant.score_masks(data, masks, self._autocast(), beliefs)
        results = {name: scored[id(variant)] for name, variant in self.variants().items()}
        results["self_estimate"] = self.self_estimates(masks, beliefs)
        self._drift_val.append(results)
        return results["frozen"]

    def on_validation_epoch_end(self, val_outputs):
        super().on_validation_epoch_end(val_outputs)
        names = [str(l) for l in self.label_manager.foreground_labels]
        record = {"epoch": self.current_epoch, "warmup": self.current_epoch < self.warmup_epochs,
                  "val_pseudo_dice": float(self.logger.get_value("mean_fg_dice", step=self.current_epoch))}
        for variant in DRIFT_VARIANTS:
            summary = pooled_agreement_per_label([b[variant] for b in self._drift_val], names)
            record[variant] = {kind: {k: v for k, v in s.items() if k != "pairs"} for kind, s in summary.items()}
        self.drift_history.append(record)
        if self.local_rank == 0:
            atomic_write_json({"warmup_epochs": self.warmup_epochs, "refresh_every": self.drift_refresh_every,
                               "ranking_weight": self.drift_ranking_weight, "multiscale": self.drift_multiscale,
                               "steps_per_iteration": self.drift_steps_per_iteration,
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

    def drift_stage_epochs(self) -> List[int]:
        """The epochs after which the network is kept as drift_stage_checkpoint(epoch)."""
        epochs = {min(self.num_epochs - 2, max(0, round(f * self.num_epochs) - 1)) for f in self.drift_stage_fractions}
        return sorted(e for e in epochs if e >= 0)

    def keep_network(self, epoch: int) -> None:
        """nnU-Net's own checkpoint (network and optimizer, none of the g: a third of the size), enough to
        predict with; written under a temporary name and renamed."""
        with atomic_path(join(self.output_folder, drift_stage_checkpoint(epoch))) as tmp:
            nnUNetTrainer.save_checkpoint(self, tmp)  # writes nothing on other ranks or with checkpointing off

    def on_epoch_end(self):
        if self.current_epoch in self.drift_stage_epochs():  # before nnU-Net counts the epoch as done
            self.keep_network(self.current_epoch)
        super().on_epoch_end()

    def on_train_end(self):
        if self.local_rank == 0:
            for name, variant in self.variants().items():
                save_quality_predictor(variant.model, join(self.output_folder, drift_predictor_file(name)))
        super().on_train_end()  # closes self.quality
        for variant in self.variants().values():
            variant.close()

    # ------------------------------------------------------------------ checkpoints
    def ssl_state_dict(self) -> dict:
        state = {**super().ssl_state_dict(), "drift_history": self.drift_history,
                 "drift_extra": {name: extra.quality.state_dict() for name, extra in self.extra.items()}}
        if self.refreshed is not None:
            state["refreshed"] = self.refreshed.state_dict()
        return state

    def load_ssl_state_dict(self, state: dict) -> None:
        super().load_ssl_state_dict(state)
        self.drift_history = list(state.get("drift_history", []))
        for name, extra_state in state.get("drift_extra", {}).items():
            if name in self.extra:
                self.extra[name].quality.load_state_dict(extra_state)
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
