"""Semi-supervised trainer with the quality predictor's warm-up (METHOD.md sections 1-2).

During the first `warmup_epochs` the segmentation network trains as in nnU-Net (no unlabelled
loss) and the quality predictor g trains alongside it with its own optimizer; then g is frozen.
At every validation g is measured on the fold's validation patches, on the network's real
predictions and on corrupted masks. The unlabelled loss (Mean Teacher here; the quality-guided
losses in subclasses) ramps up after the warm-up.
"""
import itertools
from typing import Dict, List

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_qg.networks import highest_resolution
from nnunet_qg.atomic import atomic_write_json
from nnunet_qg.plotting import plot_calibration
from nnunet_qg.quality.metrics import pooled_agreement_per_label
from nnunet_qg.quality.network import QUALITY_PREDICTOR_FILE, QualityPredictor, save_quality_predictor
from nnunet_qg.quality.training import QualityPredictorTrainer
from nnunet_qg.ramps import sigmoid_rampup
from nnunet_qg.trainers.nnUNetTrainerSSL import StepValue, nnUNetTrainerSSL


class nnUNetTrainerQGWarmup(nnUNetTrainerSSL):
    """nnUNetTrainerSSL + quality predictor warm-up, freezing and measurement."""

    ssl_log_keys = nnUNetTrainerSSL.ssl_log_keys + ("qg_train_loss",)
    quality_kinds = ("real", "teacher", "corrupted")  # masks g is judged on at every validation
    quality_metrics = ("mae", "bias", "pearson", "spearman")
    ssl_val_log_keys = nnUNetTrainerSSL.ssl_val_log_keys + tuple(f"qg_val_{kind}_{metric}" for kind, metric in
                             itertools.product(quality_kinds, quality_metrics))

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.quality_warmup_fraction = 0.15  # of num_epochs (the paper's PL-QW starts at 15/200)
        self.quality_lr = 2e-3
        self.quality_weight_decay = 1e-4
        self.quality_real_fraction = 0.2  # share of g's samples that are the network's own predictions
        self.quality_masks_per_sample = 4  # masks g learns from per labelled patch and iteration
        self.quality_soft_fraction = 0.5  # share of those given as softmax maps instead of one-hot
        self.quality_category_probabilities = None  # None: the paper's mixture
        self.quality_features = (16, 32, 64, 128)
        self.quality_seed = 12345
        # 0: g frozen after the warm-up (the paper). k > 0: afterwards g still takes one step every k
        # iterations on the labelled batch, so it follows the network's improving predictions
        self.quality_refresh_every = 0
        self.quality_refresh_real_fraction = 0.5  # share of real predictions in those steps
        self._steps_since_warmup = 0
        self._pending_corruptions = None  # this step's corruptions, started before the network's step
        self.quality = None  # QualityPredictorTrainer, set in initialize()
        self._quality_val: List[Dict] = []

    @property
    def warmup_epochs(self) -> int:
        return max(1, int(round(self.quality_warmup_fraction * self.num_epochs)))

    @property
    def quality_predictor(self) -> QualityPredictor:
        return self.quality.model

    def initialize(self):
        if self.label_manager.has_regions or self.label_manager.has_ignore_label:
            raise RuntimeError(
                f"{self.__class__.__name__} supports label maps without regions or an ignore label; "
                f"dataset.json of {self.plans_manager.dataset_name} uses "
                f"{'regions' if self.label_manager.has_regions else 'an ignore label'}. Train it with "
                f"nnUNetTrainerSSL or remove them from dataset.json.")
        super().initialize()
        self.quality = self.new_quality_trainer(self.quality_real_fraction)

    def new_quality_trainer(self, real_fraction: float, seed_offset: int = 0) -> QualityPredictorTrainer:
        """A fresh g for this plan and its trainer, with the trainer's quality_* settings."""
        model = QualityPredictor(self.num_input_channels, len(self.label_manager.foreground_labels),
                                 self.configuration_manager.patch_size, self.quality_features).to(self.device)
        return QualityPredictorTrainer(model, **self.quality_trainer_settings(model, real_fraction, seed_offset))

    def quality_trainer_settings(self, model: QualityPredictor, real_fraction: float, seed_offset: int) -> dict:
        """QualityPredictorTrainer's arguments after `model`, from the quality_* attributes (under DDP g's
        updates are synchronised)."""
        return dict(labels=self.label_manager.foreground_labels, all_labels=self.label_manager.all_labels,
                    lr=self.quality_lr, weight_decay=self.quality_weight_decay, real_fraction=real_fraction,
                    soft_fraction=self.quality_soft_fraction, category_probabilities=self.quality_category_probabilities,
                    seed=self.quality_seed + seed_offset + 1000 * self.local_rank,
                    train_model=DDP(model, device_ids=[self.local_rank]) if self.is_ddp else model,
                    masks_per_sample=self.quality_masks_per_sample, log=self.print_to_log_file)

    # ------------------------------------------------------------------ schedule
    def unlabeled_weight_at(self, epoch: int) -> float:
        """No unlabelled loss during the warm-up; afterwards the ramp starts from the warm-up's end."""
        if epoch < self.warmup_epochs:
            return 0.0
        return self.unlabeled_loss_weight * sigmoid_rampup(epoch - self.warmup_epochs, self.unlabeled_rampup_epochs())

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        if self.current_epoch >= self.warmup_epochs and not self.quality.frozen:
            self.quality.freeze()
            self.print_to_log_file(f"Quality predictor frozen after {self.warmup_epochs} warm-up epochs.")

    def quality_learns_this_step(self) -> bool:
        """g trains during the warm-up, and afterwards on every `quality_refresh_every`-th step (if > 0)."""
        return not self.quality.frozen or (self.quality_refresh_every > 0 and
                                           (self._steps_since_warmup + 1) % self.quality_refresh_every == 0)

    def before_train_step(self, batch: dict) -> None:
        """Start this step's mask corruptions in g's threads from the loader's CPU target, so they run
        while the GPU computes the network's step."""
        super().before_train_step(batch)
        self._pending_corruptions = None
        if self.quality_learns_this_step():
            target = highest_resolution(batch["target"])
            self._pending_corruptions = self.quality.start_corruptions(target, self.quality_masks_this_step())

    def quality_masks_this_step(self) -> int:
        """How many corrupted masks per patch g's step(s) of this iteration use: started before the network's step."""
        return self.quality.masks_per_sample

    def quality_training_logits(self, output_labeled) -> torch.Tensor:
        """The network's prediction g learns from: its full-resolution logits."""
        return highest_resolution(output_labeled)

    def quality_warmup_step(self, data, target, logits, corruptions) -> torch.Tensor:
        """g's training on one labelled batch of the warm-up: one step."""
        return self.quality.train_step(data, target, logits, self._autocast(), corruptions)

    def after_train_step(self, data, target, output_labeled) -> Dict[str, StepValue]:
        target0 = highest_resolution(target)
        learns, corruptions = self.quality_learns_this_step(), self._pending_corruptions
        self._pending_corruptions = None
        logits0 = self.quality_training_logits(output_labeled) if learns else None
        if not self.quality.frozen:
            return {"qg_train_loss": self.quality_warmup_step(data, target0, logits0, corruptions)}
        self._steps_since_warmup += 1
        if learns:
            return {"qg_train_loss": self.quality.refresh_step(data, target0, logits0, self._autocast(),
                                                               self.quality_refresh_real_fraction, corruptions)}
        return {"qg_train_loss": np.float64(np.nan)}

    # ------------------------------------------------------------------ measurement
    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self._quality_val = []

    def validation_step(self, batch: dict) -> dict:
        captured = []
        handle = self.network.register_forward_hook(lambda module, inputs, output: captured.append(output))
        try:
            result = super().validation_step(batch)
        finally:
            handle.remove()
        logits = highest_resolution(captured[-1])
        data = batch["data"].to(self.device)
        target = highest_resolution(batch["target"])
        # the pseudo-labels PL-QW weights come from the teacher (nnUNetTrainerSSL ran it on this batch)
        self._quality_val.append(self.measure_quality(data, target.to(self.device), logits, self._val_teacher_logits))
        return result

    def measure_quality(self, data: torch.Tensor, target: torch.Tensor, logits: torch.Tensor,
                        teacher_logits: torch.Tensor) -> Dict[str, tuple]:
        """g's predicted vs true Dice on one validation batch, per kind of mask."""
        return self.quality.measure_batch(data, target, logits, self._autocast(), teacher_logits)

    def quality_summary(self) -> Dict[str, Dict]:
        """g on this validation's real, teacher and corrupted masks."""
        return pooled_agreement_per_label(self._quality_val, [str(l) for l in self.label_manager.foreground_labels])

    def on_validation_epoch_end(self, val_outputs):
        super().on_validation_epoch_end(val_outputs)
        summary = self.quality_summary()  # on DDP: rank 0's validation patches (nnU-Net shards val too)
        for kind in self.quality_kinds:
            for metric in self.quality_metrics:
                self.logger.log(f"qg_val_{kind}_{metric}", summary[kind]["mean"][metric], self.current_epoch)
            per_label = ", ".join(f"label {k}: MAE {v['mae']:.3f} bias {v['bias']:+.3f} r {v['pearson']:.3f} "
                                  f"rho {v['spearman']:.3f}"
                                  for k, v in summary[kind].items() if k not in ("mean", "pairs"))
            self.print_to_log_file(f"Quality predictor on validation ({kind} masks): {per_label}")
        if self.local_rank == 0:
            pairs = {k: summary[k]["pairs"] for k in self.quality_kinds}
            names = [str(l) for l in self.label_manager.foreground_labels]
            stage = "warm-up" if self.current_epoch < self.warmup_epochs else \
                f"refreshed every {self.quality_refresh_every} iterations" if self.quality_refresh_every else "frozen"
            plot_calibration(pairs, names, summary, join(self.output_folder, "quality_calibration.png"),
                             f"Quality predictor, epoch {self.current_epoch} ({stage})")
            if self.current_epoch == self.warmup_epochs - 1:
                self._write_warmup_report(summary, pairs, names)

    def _write_warmup_report(self, summary, pairs, names) -> None:
        """At the end of the warm-up: calibration plot, metrics JSON and g's own weights file."""
        plot_calibration(pairs, names, summary, join(self.output_folder, "quality_calibration_warmup_end.png"),
                         f"Quality predictor at the end of warm-up (epoch {self.current_epoch})")
        report = {kind: {k: v for k, v in summary[kind].items() if k != "pairs"} for kind in summary}
        report["epoch"] = self.current_epoch
        atomic_write_json(report, join(self.output_folder, "quality_warmup_metrics.json"))
        save_quality_predictor(self.quality_predictor, join(self.output_folder, QUALITY_PREDICTOR_FILE))
        m = summary["real"]["mean"]
        self.print_to_log_file(f"Quality predictor after warm-up, real predictions: MAE {m['mae']:.4f}, "
                               f"Pearson {m['pearson']:.4f}, Spearman {m['spearman']:.4f}")

    def ssl_progress_panels(self) -> Dict[str, List[str]]:
        panels = super().ssl_progress_panels()
        panels["quality predictor training loss (warm-up, refresh steps)"] = ["qg_train_loss"]
        panels["quality predictor on validation: MAE"] = ["qg_val_real_mae", "qg_val_teacher_mae",
                                                           "qg_val_corrupted_mae"]
        panels["quality predictor on validation: bias (predicted - true)"] = ["qg_val_real_bias",
                                                                              "qg_val_teacher_bias"]
        panels["quality predictor on validation: correlation"] = ["qg_val_real_pearson", "qg_val_real_spearman",
                                                                   "qg_val_teacher_pearson", "qg_val_corrupted_pearson"]
        return panels

    def on_train_end(self):
        """A g refreshed after the warm-up replaces its warm-up export, so nnUNetv2_predict_quality
        scores with the g that followed the network to the end (a frozen g's export is already final)."""
        if self.local_rank == 0 and self.quality.frozen and self.quality_refresh_every > 0:
            save_quality_predictor(self.quality_predictor, join(self.output_folder, QUALITY_PREDICTOR_FILE))
            self.print_to_log_file(f"Quality predictor as refreshed until the end exported to {QUALITY_PREDICTOR_FILE}.")
        super().on_train_end()
        self.quality.close()  # g's corruption threads

    # ------------------------------------------------------------------ checkpoints
    def ssl_state_dict(self) -> dict:
        return {**super().ssl_state_dict(), "quality": self.quality.state_dict(),
                "quality_steps_since_warmup": self._steps_since_warmup}

    def load_ssl_state_dict(self, state: dict) -> None:
        super().load_ssl_state_dict(state)
        if "quality" in state:
            self.quality.load_state_dict(state["quality"])
        self._steps_since_warmup = int(state.get("quality_steps_since_warmup", 0))  # refresh steps keep their phase
