"""Quality-guided semi-supervised trainers (METHOD.md sections 1-5): this file and nnUNetTrainerSSL.py hold
all of their behaviour.

nnUNetTrainerQGWarmup: during the first `warmup_epochs` the segmentation network trains as in nnU-Net (no
unlabelled loss) and the quality predictor g trains alongside it with its own optimizer; then g is frozen (or
refreshed, below). At every validation g is measured on the fold's validation patches, on the network's real
predictions and on corrupted masks. Its unlabelled loss is nnUNetTrainerSSL's Mean Teacher consistency.
g exists only where something reads it (`quality_predictor_read`; `train_quality_predictor` = True forces
it): nnUNetTrainerQGSSL_PLQW, whose score is the mirror agreement, trains none.

nnUNetTrainerQGSSL: that warm-up, then supervised loss + quality-weighted pseudo-labels (PL-QW) +
quality-aware regularisation (QAR), each with its own linear ramp; g keeps learning from the labelled batch
every 2nd step after the warm-up (nnUNetTrainerQGSSL_gFrozen: frozen, as in the paper). PL-QW weights each
pseudo-label by the EMA teacher's agreement with its own mirrored predictions, not by g's score (the paper's,
in the *_gWeights variants): on the evidence protocol g's weights carried no information and the mirror
agreement's did (docs/results.md). QAR is g's. Ablations and the quality-weighted Mean Teacher are small
subclasses. Ramps are fractions of num_epochs (the paper's are epochs
of a 200-epoch run), so short schedules keep their shape.
"""
import itertools
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_qg.atomic import atomic_write_json
from nnunet_qg.mirror_agreement import (MIRROR_MODES, labels_present, mirror_agreement, mirror_images,
                                        mirrored_logits)
from nnunet_qg.networks import batch_probabilities, highest_resolution
from nnunet_qg.plotting import plot_calibration
from nnunet_qg.quality.dice import soft_dice_per_label
from nnunet_qg.quality.metrics import agreement, pooled_agreement_per_label
from nnunet_qg.quality.network import QUALITY_PREDICTOR_FILE, QualityPredictor, save_quality_predictor
from nnunet_qg.quality.training import QualityPredictorTrainer, one_hot_foreground
from nnunet_qg.ramps import linear_rampup, sigmoid_rampup
from nnunet_qg.ssl_losses import (batch_size_weighted_mean, effective_sample_size, neutral_weights,
                                  nonfinite_fraction, per_sample_dice_ce, qar_loss, quality_weights,
                                  softmax_mse_per_sample, weighted_mean)
from nnunet_qg.trainers.nnUNetTrainerSSL import StepValue, UnlabeledBatch, nnUNetTrainerSSL


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
        # None: g is built and trained only where something reads it (quality_predictor_read: a loss, or PL-QW's
        # score); True: always, so that g is saved with the model (quality_predictor.pth, for
        # nnUNetv2_predict_quality --estimator g); False: never (a trainer whose loss reads g then fails to start)
        self.train_quality_predictor: Optional[bool] = None
        self._steps_since_warmup = 0
        self._pending_corruptions = None  # this step's corruptions, started before the network's step
        self.quality = None  # QualityPredictorTrainer, set in initialize() where g is trained; else None
        self._quality_val: List[Dict] = []

    @property
    def warmup_epochs(self) -> int:
        return max(1, int(round(self.quality_warmup_fraction * self.num_epochs)))

    @property
    def quality_predictor(self) -> Optional[QualityPredictor]:
        """g (None where this trainer trains none)."""
        return None if self.quality is None else self.quality.model

    @property
    def foreground_channels(self) -> List[int]:
        """The network's output channel of each foreground label."""
        return [self.label_manager.all_labels.index(l) for l in self.label_manager.foreground_labels]

    def channel_one_hot(self, channels: torch.Tensor) -> torch.Tensor:
        """A hard prediction as output channel indices (B, 1, ...) -> one-hot of the foreground labels (B, L, ...),
        the masks g reads and the Dice of pseudo-labels compares."""
        return one_hot_foreground(channels, self.foreground_channels)

    def quality_predictor_read(self) -> bool:
        """Whether anything of this trainer reads g. The warm-up trainer exists to train and measure g: yes."""
        return True

    def initialize(self):
        if self.label_manager.has_regions or self.label_manager.has_ignore_label:
            raise RuntimeError(
                f"{self.__class__.__name__} supports label maps without regions or an ignore label; "
                f"dataset.json of {self.plans_manager.dataset_name} uses "
                f"{'regions' if self.label_manager.has_regions else 'an ignore label'}. Train it with "
                f"nnUNetTrainerSSL or remove them from dataset.json.")
        super().initialize()
        # the mirror axes (nnU-Net sets them again when it builds its loaders) decide whether PL-QW reads g
        self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        read = self.quality_predictor_read()
        if self.train_quality_predictor is False and read:
            raise RuntimeError(f"{self.__class__.__name__} reads the quality predictor g (QAR or g's PL-QW score), "
                               f"but train_quality_predictor is False. Set it to None or True.")
        if self.train_quality_predictor or read:
            self.quality = self.new_quality_trainer(self.quality_real_fraction)
        else:
            self.print_to_log_file("No quality predictor g: nothing of this trainer reads it (set "
                                   "train_quality_predictor = True, e.g. nnUNetTrainerQGSSL_PLQW_withG, to train "
                                   "and save it with the model).")

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
        if self.quality is not None and self.current_epoch >= self.warmup_epochs and not self.quality.frozen:
            self.quality.freeze()
            self.print_to_log_file(f"Quality predictor frozen after {self.warmup_epochs} warm-up epochs.")

    def quality_learns_this_step(self) -> bool:
        """g trains during the warm-up, and afterwards on every `quality_refresh_every`-th step (if > 0)."""
        if self.quality is None:
            return False
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
        if self.quality is None:
            return {"qg_train_loss": np.float64(np.nan)}
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
        if self.quality is None:
            return super().validation_step(batch)
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
        if self.quality is None:  # every epoch logs every key (nan: not measured)
            for kind, metric in itertools.product(self.quality_kinds, self.quality_metrics):
                self.logger.log(f"qg_val_{kind}_{metric}", float("nan"), self.current_epoch)
            return
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
        g = self.quality
        if g is not None and self.local_rank == 0 and g.frozen and self.quality_refresh_every > 0:
            save_quality_predictor(self.quality_predictor, join(self.output_folder, QUALITY_PREDICTOR_FILE))
            self.print_to_log_file(f"Quality predictor as refreshed until the end exported to {QUALITY_PREDICTOR_FILE}.")
        super().on_train_end()
        if g is not None:
            g.close()  # g's corruption threads

    # ------------------------------------------------------------------ checkpoints
    def ssl_state_dict(self) -> dict:
        state = {**super().ssl_state_dict(), "quality_steps_since_warmup": self._steps_since_warmup}
        if self.quality is not None:
            state["quality"] = self.quality.state_dict()
        return state

    def load_ssl_state_dict(self, state: dict) -> None:
        super().load_ssl_state_dict(state)
        if "quality" in state and self.quality is not None:
            self.quality.load_state_dict(state["quality"])
        elif self.quality is not None:
            self.print_to_log_file("The checkpoint holds no quality predictor g: g starts afresh.")
        self._steps_since_warmup = int(state.get("quality_steps_since_warmup", 0))  # refresh steps keep their phase


@dataclass
class PseudoLabels:
    """What the EMA teacher made of an unlabelled batch before the student's pass (nnUNetTrainerQGSSL.
    unlabeled_targets): its pseudo-labels and, where PL-QW's score is the mirror agreement, their scores."""

    view: torch.Tensor  # the teacher's view (B, C, ...)
    logits: torch.Tensor  # the teacher's logits on it (B, K, ...)
    channels: torch.Tensor  # the hard pseudo-label as output channel indices (B, 1, ...)
    mask: torch.Tensor  # its one-hot of the foreground labels (B, L, ...), as g reads masks
    quality: Optional[torch.Tensor] = None  # the mirror agreement (B,); None where g scores the pseudo-labels
    background_only: Optional[torch.Tensor] = None  # (B,) bool, where such patches get a neutral weight
    averaged_probabilities: Optional[torch.Tensor] = None  # the mirror-averaged probabilities, where averaged

    def probabilities(self, has_regions: bool = False) -> torch.Tensor:
        """The teacher's probabilities behind the pseudo-label (mirror-averaged where it was averaged)."""
        if self.averaged_probabilities is not None:
            return self.averaged_probabilities
        return batch_probabilities(self.logits, has_regions)


class nnUNetTrainerQGSSL(nnUNetTrainerQGWarmup):
    """Supervised + PL-QW + QAR after the quality predictor's warm-up."""

    ssl_log_keys = nnUNetTrainerQGWarmup.ssl_log_keys + (
        "ssl_loss_plqw", "ssl_loss_qar", "ssl_weight_plqw", "ssl_weight_qar", "ssl_quality_weight_mean",
        "ssl_pseudo_label_kept", "ssl_pseudo_label_quality", "ssl_quality_nonfinite", "ssl_quality_weight_ess",
        "ssl_pseudo_label_true_dice")
    # once per epoch, where the unlabelled patches carry withheld labels (benchmarks): g's score of the
    # teacher's pseudo-labels against their true Dice, over the epoch's batches
    ssl_val_log_keys = nnUNetTrainerQGWarmup.ssl_val_log_keys + ("ssl_quality_true_pearson", "ssl_quality_true_bias")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.quality_warmup_fraction = 0.075  # the paper's PL-QW starts at epoch 15 of 200
        self.plqw_weight = 0.25
        self.plqw_start_fraction = 0.075
        self.plqw_ramp_fraction = 0.15  # 30 of 200 epochs
        self.qar_weight = 0.01
        self.qar_start_fraction = 0.15  # 30 of 200 epochs
        self.qar_ramp_fraction = 0.2  # 40 of 200 epochs
        self.quality_temperature = 2.0
        self.quality_threshold = 0.5
        # PL-QW's normalisation: "batch" = sum_j w_j l_j / sum_j w_j (the paper's: weights relative within the
        # batch), "batch_size" = sum_j w_j l_j / B (absolute: see ssl_losses.batch_size_weighted_mean)
        self.quality_weight_normalisation = "batch"
        # PL-QW's score q of a pseudo-label: "mirror" = the EMA teacher's agreement with its own prediction of
        # the patch mirrored along nnU-Net's mirror axes (mirror_agreement_images below; no g pass);
        # "g" = g's score (the paper's; g over-rated and barely ranked the teacher's pseudo-labels on the
        # evidence protocol, docs/results.md); "none" = 1 for every pseudo-label (no quality guidance). Plans
        # without mirror axes fall back from "mirror" to g's score.
        self.pseudo_label_score = "mirror"
        # the pseudo-label: False = the argmax of the teacher's prediction of the patch; True = the argmax of its
        # predictions of the patch and of its mirror images averaged (nnU-Net's test-time mirroring, from the
        # passes the mirror agreement makes anyway)
        self.pseudo_label_mirror_average = False
        # the mirror agreement's labels: "agree" = a label absent from the pseudo-label and a mirrored prediction
        # counts as agreement (Dice 1, METHOD.md's convention, so background-only patches score 1 and weigh most);
        # "skip" = labels absent from the pseudo-label and every mirrored prediction are left out, and
        # background-only patches get the batch's mean weight of the others (ssl_losses.neutral_weights)
        self.mirror_absent_labels = "agree"
        # the mirror images the agreement compares with: "all_at_once" = one image mirrored along every axis (one
        # teacher pass in all); "each" = one per mirror axis (one teacher pass each). "all_at_once" since issue
        # #33: on 3 paired evidence seeds +0.008 [-0.007, +0.022] against "each", at 0.81-0.89x its step time
        self.mirror_agreement_images = "all_at_once"
        # not the paper's (nnUNetTrainerQGSSL_gFrozen is): after the warm-up g still takes one step
        # every 2nd iteration on the labelled batch, so it follows the network's improving predictions.
        # In the CPU drift runs a frozen g over-rated the network's predictions by about 0.1 as the network
        # improved, while the refreshed g stayed within 0.02 of the true Dice (docs/results.md, docs/method.md)
        self.quality_refresh_every = 2
        self.unlabeled_loss_weight = 1.0  # the component weights carry the schedule
        self._weights = {"plqw": 0.0, "qar": 0.0}
        self._quality_truth_pairs: List[Tuple[torch.Tensor, torch.Tensor]] = []  # (g's score, true Dice)

    # ------------------------------------------------------------------ schedule
    def component_weights_at(self, epoch: int) -> Dict[str, float]:
        """Weight of each unlabelled loss in an epoch (never before the warm-up has ended)."""
        weights = {}
        for name in ("plqw", "qar"):
            start = max(self.warmup_epochs, round(getattr(self, f"{name}_start_fraction") * self.num_epochs))
            ramp = getattr(self, f"{name}_ramp_fraction") * self.num_epochs
            weights[name] = getattr(self, f"{name}_weight") * linear_rampup(epoch, start, ramp)
        return weights

    def unlabeled_weight_at(self, epoch: int) -> float:
        return self.unlabeled_loss_weight if any(w > 0 for w in self.component_weights_at(epoch).values()) else 0.0

    def quality_predictor_read(self) -> bool:
        """g is read by QAR and by PL-QW where g scores the pseudo-labels."""
        return self.qar_weight > 0 or (self.plqw_weight > 0 and self.pseudo_labels_scored_by_g())

    def on_train_start(self):
        for name, allowed in (("pseudo_label_score", ("mirror", "g", "none")), ("quality_weight_normalisation",
                                                                          ("batch", "batch_size")),
                              ("mirror_absent_labels", ("agree", "skip")),
                              ("mirror_agreement_images", MIRROR_MODES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{self.__class__.__name__}.{name} must be one of {allowed}, not "
                                 f"{getattr(self, name)!r}")
        super().on_train_start()
        if self.pseudo_label_score == "mirror" and not self.inference_allowed_mirroring_axes:
            self.print_to_log_file("nnU-Net's plans allow no mirroring: PL-QW weights pseudo-labels with g's score")

    def pseudo_labels_scored_by_g(self) -> bool:
        """Whether PL-QW's score q is g's (pseudo_label_score "g", or "mirror" without mirror axes)."""
        return self.pseudo_label_score == "g" or (self.pseudo_label_score == "mirror" and
                                                  not self.inference_allowed_mirroring_axes)

    def pseudo_label_score_name(self) -> str:
        """What q is, for the log."""
        return "g" if self.pseudo_labels_scored_by_g() else {"mirror": "mirror agreement", "none": "none (1)"}[
            self.pseudo_label_score]

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._weights = self.component_weights_at(self.current_epoch)
        self._quality_truth_pairs = []

    def on_train_epoch_end(self, train_outputs):
        super().on_train_epoch_end(train_outputs)
        figures = {"pearson": float("nan"), "bias": float("nan")}
        if self._quality_truth_pairs:
            score, truth = (torch.cat(t).float().cpu().numpy() for t in zip(*self._quality_truth_pairs))
            figures = agreement(score, truth)
            self.print_to_log_file(f"PL-QW's quality score q ({self.pseudo_label_score_name()}) of this epoch's pseudo-labels "
                                   f"against their withheld labels: Pearson {figures['pearson']:.4f}, bias "
                                   f"{figures['bias']:+.4f}, n {figures['n']}")
        self.logger.log("ssl_quality_true_pearson", figures["pearson"], self.current_epoch)
        self.logger.log("ssl_quality_true_bias", figures["bias"], self.current_epoch)

    # ------------------------------------------------------------------ losses
    def mirror_scored(self) -> bool:
        """Whether PL-QW's score is the teacher's mirror agreement (computed in unlabeled_targets)."""
        return self.plqw_weight > 0 and self.pseudo_label_score == "mirror" and not self.pseudo_labels_scored_by_g()

    def unlabeled_targets(self, view_student: torch.Tensor, view_teacher: torch.Tensor) -> Optional[PseudoLabels]:
        """The teacher's pseudo-labels of the batch, before the student's pass: ONE teacher call over the teacher
        view and, where the mirror agreement scores them (or `pseudo_label_mirror_average`), its mirror images
        along nnU-Net's mirror axes; hard labels from the argmax of the logits. None without PL-QW."""
        if self.plqw_weight <= 0:
            return None
        average = self.pseudo_label_mirror_average and bool(self.inference_allowed_mirroring_axes)
        axes = self.inference_allowed_mirroring_axes if (self.mirror_scored() or average) else ()
        flips = mirror_images(axes or (), self.mirror_agreement_images)
        with torch.no_grad(), self._autocast():  # one call on a GPU (launches), one per image on the CPU (measured)
            logits, mirrored = mirrored_logits(self.teacher, view_teacher, flips, self.device.type == "cuda")
        averaged = None
        if average:
            has_regions = self.label_manager.has_regions
            averaged = torch.stack([batch_probabilities(l, has_regions) for l in [logits] + mirrored]).mean(0)
            channels = averaged.argmax(1, keepdim=True)
        else:
            channels = logits.argmax(1, keepdim=True)
        pseudo = PseudoLabels(view_teacher, logits, channels, self.channel_one_hot(channels),
                              averaged_probabilities=averaged)
        if self.pseudo_label_score == "none":
            pseudo.quality = torch.ones(view_teacher.shape[0], device=view_teacher.device)
        elif self.mirror_scored():
            mirrored_masks = [self.channel_one_hot(m.argmax(1, keepdim=True)) for m in mirrored]
            agree = self.mirror_absent_labels == "agree"
            pseudo.quality = mirror_agreement(pseudo.mask, mirrored_masks, absent_labels_agree=agree)
            if not agree:
                pseudo.background_only = ~labels_present(pseudo.mask, mirrored_masks).any(1)
        return pseudo

    def quality_weight(self, quality: torch.Tensor) -> torch.Tensor:
        return quality_weights(quality, self.quality_temperature, self.quality_threshold)

    def pseudo_label_weights(self, quality: torch.Tensor, true_dice: Optional[torch.Tensor]) -> torch.Tensor:
        """The weight of each pseudo-label (B,) from its score `quality` (B,); `true_dice` (benchmarks with
        withheld labels only, else None) is for control arms, never for the shipped trainers."""
        return self.quality_weight(quality)

    def weighted_pseudo_label_loss(self, losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Per-sample losses and weights -> PL-QW, normalised as `quality_weight_normalisation` says."""
        if self.quality_weight_normalisation == "batch_size":
            return batch_size_weighted_mean(losses, weights)
        return weighted_mean(losses, weights)  # "batch" (on_train_start checked the setting)

    def pseudo_label_true_dice(self, pseudo_mask: torch.Tensor) -> Optional[torch.Tensor]:
        """The true Dice of each pseudo-label: None here (no label of an unlabelled case); benchmark trainers with
        withheld labels compute it (nnUNetTrainerPLControls.WithheldLabels)."""
        return None

    def pseudo_label_stats(self, quality: torch.Tensor, weights: torch.Tensor,
                           true_dice: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        stats = {"ssl_quality_weight_ess": effective_sample_size(weights)}
        if true_dice is not None:
            stats["ssl_pseudo_label_true_dice"] = true_dice.mean()
            self._quality_truth_pairs.append((quality.detach(), true_dice))
        return {**stats, "ssl_quality_weight_mean": weights.detach().mean(),
                "ssl_pseudo_label_kept": (quality >= self.quality_threshold).float().mean(),
                "ssl_pseudo_label_quality": quality.mean(), "ssl_quality_nonfinite": nonfinite_fraction(quality)}

    def plqw_weights(self, pseudo: PseudoLabels, quality: torch.Tensor, true_dice: Optional[torch.Tensor]
                     ) -> torch.Tensor:
        """The weight of each pseudo-label: pseudo_label_weights of its score, and where the batch marks
        background-only patches (mirror_absent_labels "skip"), their neutral weight."""
        weights = self.pseudo_label_weights(quality, true_dice)
        if pseudo.background_only is not None:
            weights = neutral_weights(weights, pseudo.background_only)
        return weights

    def plqw_loss(self, output_unlabeled, pseudo: PseudoLabels, quality: torch.Tensor,
                  true_dice: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Quality-weighted pseudo-labels: per-sample Dice+CE against the teacher's pseudo-labels,
        weighted by their quality score `quality` (B,)."""
        weights = self.plqw_weights(pseudo, quality, true_dice)
        losses = per_sample_dice_ce(output_unlabeled, pseudo.channels, getattr(self.loss, "weight_factors", None))
        return self.weighted_pseudo_label_loss(losses, weights), self.pseudo_label_stats(quality, weights, true_dice)

    def compute_unlabeled_loss(self, output_unlabeled, unlabeled: UnlabeledBatch):
        """PL-QW and QAR. Where g scores the pseudo-labels too, ONE pass of g over both of their (image, mask)
        pairs: g normalises each sample on its own and runs in eval mode, so this equals two passes, with half
        the kernel launches (a step at small patches is bound by launches, not arithmetic). g is frozen: QAR's
        gradient reaches the student through the soft mask, never g's parameters; PL-QW's half is detached."""
        use_plqw, use_qar = self._weights["plqw"] > 0, self._weights["qar"] > 0
        total, extras = torch.zeros((), device=self.device), {}
        if not (use_plqw or use_qar):
            return total, extras
        pseudo: PseudoLabels = unlabeled.targets
        g_scores_pseudo_labels = use_plqw and self.pseudo_labels_scored_by_g()
        images, masks = [], []
        if g_scores_pseudo_labels:
            images.append(pseudo.view)
            masks.append(pseudo.mask)
        if use_qar:  # 1 - g(x, softmax(f(x))) on the student's own view
            images.append(unlabeled.view_student)
            masks.append(self.quality.foreground_softmax(highest_resolution(output_unlabeled)))
        quality = ()
        if images:
            with torch.set_grad_enabled(use_qar and torch.is_grad_enabled()):
                quality = self.quality_predictor(torch.cat(images), torch.cat(masks)).split(
                    unlabeled.view_student.shape[0])
        if use_plqw:
            with torch.no_grad():
                true_dice = self.pseudo_label_true_dice(pseudo.mask)
            scores = quality[0].detach().float().mean(1) if g_scores_pseudo_labels else pseudo.quality
            loss, info = self.plqw_loss(output_unlabeled, pseudo, scores, true_dice)
            total = total + self._weights["plqw"] * loss
            extras.update(info, ssl_loss_plqw=loss.detach())
        if use_qar:
            loss = qar_loss(quality[-1], masks[-1])  # finite scores only
            total = total + self._weights["qar"] * loss
            extras["ssl_loss_qar"] = loss.detach()
        return total, extras

    def after_train_step(self, data, target, output_labeled) -> Dict[str, StepValue]:
        return {**super().after_train_step(data, target, output_labeled),
                "ssl_weight_plqw": self._weights["plqw"], "ssl_weight_qar": self._weights["qar"]}

    def ssl_progress_panels(self):
        panels = super().ssl_progress_panels()
        panels["unlabelled losses"] = ["ssl_loss_plqw", "ssl_loss_qar"]
        panels["unlabelled loss weights (ramps)"] = ["ssl_weight_plqw", "ssl_weight_qar"]
        panels["pseudo-labels"] = ["ssl_quality_weight_mean", "ssl_pseudo_label_kept", "ssl_pseudo_label_quality",
                                   "ssl_pseudo_label_true_dice"]
        panels["quality weights: effective sample size per batch"] = ["ssl_quality_weight_ess"]
        panels["PL-QW's score q of pseudo-labels vs withheld labels (benchmarks)"] = ["ssl_quality_true_pearson",
                                                                        "ssl_quality_true_bias"]
        del panels["unlabelled loss weight (ramp)"]
        return panels


class nnUNetTrainerQGSSL_PLQW(nnUNetTrainerQGSSL):
    """Ablation: quality-weighted pseudo-labels only (weighted by the teacher's mirror agreement)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.qar_weight = 0.0


class nnUNetTrainerQGSSL_PLQW_withG(nnUNetTrainerQGSSL_PLQW):
    """nnUNetTrainerQGSSL_PLQW that also trains g (warm-up, refresh) and saves it with the model
    (quality_predictor.pth, for nnUNetv2_predict_quality --estimator g); the student trains the same."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.train_quality_predictor = True


class nnUNetTrainerQGSSL_gWeights(nnUNetTrainerQGSSL):
    """The paper's PL-QW weights: g's score of each pseudo-label instead of the teacher's mirror agreement."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.pseudo_label_score = "g"


class nnUNetTrainerQGSSL_PLQW_gWeights(nnUNetTrainerQGSSL_PLQW):
    """The paper's PL-QW: quality-weighted pseudo-labels only, weighted by g's score."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.pseudo_label_score = "g"


class nnUNetTrainerQGSSL_QAR(nnUNetTrainerQGSSL):
    """Ablation: quality-aware regularisation only."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.plqw_weight = 0.0


class nnUNetTrainerQGSSL_gFrozen(nnUNetTrainerQGSSL_gWeights):
    """QG-SSL exactly as the paper: PL-QW weighted by g's score, g frozen after the warm-up (no refresh steps)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.quality_refresh_every = 0


class nnUNetTrainerQGSSL_lowMemory(nnUNetTrainerQGSSL):
    """QG-SSL with the labelled pass backpropagated before the unlabelled pass runs: the same gradients,
    about half the activation memory, more kernel launches (for plans made near the GPU's memory)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.unlabeled_separate_backward = True


class nnUNetTrainerMTQW(nnUNetTrainerQGSSL_gWeights):
    """Mean Teacher with g's quality weights (the paper's drop-in claim): per-sample consistency x w."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.qar_weight = 0.0
        self.plqw_weight = 1.0  # the consistency term takes PL-QW's place and schedule

    def plqw_loss(self, output_unlabeled, pseudo: PseudoLabels, quality, true_dice=None):
        """Per-sample softmax MSE to the teacher (its target and g's weights from one teacher pass)."""
        weights = self.plqw_weights(pseudo, quality, true_dice)
        losses = softmax_mse_per_sample(highest_resolution(output_unlabeled),
                                        pseudo.probabilities(self.label_manager.has_regions))
        return self.weighted_pseudo_label_loss(losses, weights), self.pseudo_label_stats(quality, weights, true_dice)
