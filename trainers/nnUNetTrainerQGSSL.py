"""Quality-guided semi-supervised trainers (METHOD.md sections 3-5).

nnUNetTrainerQGSSL: warm-up (supervised + quality predictor), then supervised loss
+ quality-weighted pseudo-labels (PL-QW) + quality-aware regularisation (QAR), each with its own
linear ramp; g keeps learning from the labelled batch every 2nd step after the warm-up
(nnUNetTrainerQGSSL_gFrozen: frozen, as in the paper). Ablations and the quality-weighted Mean Teacher are small subclasses. Ramps are
fractions of num_epochs (the paper's are epochs of a 200-epoch run), so short schedules keep
their shape.
"""
from typing import Dict, Tuple

import torch

from nnunet_qg.networks import highest_resolution
from nnunet_qg.quality.training import one_hot_foreground
from nnunet_qg.ramps import linear_rampup
from nnunet_qg.ssl_losses import per_sample_dice_ce, quality_weights, softmax_mse_per_sample, weighted_mean
from nnunet_qg.trainers.nnUNetTrainerQGWarmup import nnUNetTrainerQGWarmup
from nnunet_qg.trainers.nnUNetTrainerSSL import StepValue


class nnUNetTrainerQGSSL(nnUNetTrainerQGWarmup):
    """Supervised + PL-QW + QAR after the quality predictor's warm-up."""

    ssl_log_keys = nnUNetTrainerQGWarmup.ssl_log_keys + (
        "ssl_loss_plqw", "ssl_loss_qar", "ssl_weight_plqw", "ssl_weight_qar", "ssl_quality_weight_mean",
        "ssl_pseudo_label_kept", "ssl_pseudo_label_quality")

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
        # not the paper's (nnUNetTrainerQGSSL_gFrozen is): after the warm-up g still takes one step
        # every 2nd iteration on the labelled batch, so it follows the network's improving predictions.
        # A frozen g went off calibration on the GPU (it scored the teacher's pseudo-labels 0.17-0.34
        # while their Dice was ~0.89, so PL-QW kept almost nothing); the refreshed g stayed calibrated
        # in the drift benchmark (README, Measured)
        self.quality_refresh_every = 2
        self.unlabeled_loss_weight = 1.0  # the component weights carry the schedule
        self._weights = {"plqw": 0.0, "qar": 0.0}

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

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._weights = self.component_weights_at(self.current_epoch)

    # ------------------------------------------------------------------ losses
    def pseudo_labels_and_quality(self, view_teacher: torch.Tensor, teacher_probs: torch.Tensor
                                  ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Teacher's hard pseudo-label (channel index, B x 1 x ...) and g's sample quality (mean over labels)."""
        with torch.no_grad():
            pseudo = teacher_probs.argmax(1, keepdim=True)
            label_map = torch.as_tensor(self.label_manager.all_labels, device=pseudo.device)[pseudo]
            quality = self.quality_predictor(view_teacher, one_hot_foreground(label_map,
                                                                              self.label_manager.foreground_labels))
        return pseudo, quality.float().mean(1)

    def quality_weight(self, quality: torch.Tensor) -> torch.Tensor:
        return quality_weights(quality, self.quality_temperature, self.quality_threshold)

    def pseudo_label_stats(self, quality: torch.Tensor, weights: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"ssl_quality_weight_mean": weights.detach().mean(),
                "ssl_pseudo_label_kept": (quality >= self.quality_threshold).float().mean(),
                "ssl_pseudo_label_quality": quality.mean()}

    def plqw_loss(self, output_unlabeled, view_teacher) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Quality-weighted pseudo-labels: per-sample Dice+CE against the teacher, weighted by g."""
        pseudo, quality = self.pseudo_labels_and_quality(view_teacher, self.teacher_probabilities(view_teacher))
        weights = self.quality_weight(quality)
        losses = per_sample_dice_ce(output_unlabeled, pseudo, getattr(self.loss, "weight_factors", None))
        return weighted_mean(losses, weights), self.pseudo_label_stats(quality, weights)

    def qar_loss(self, output_unlabeled, view_student) -> torch.Tensor:
        """Quality-aware regularisation: 1 - g(x, softmax(f(x))); gradients flow through frozen g into f."""
        probs = self.quality.foreground_softmax(highest_resolution(output_unlabeled))
        return 1 - self.quality_predictor(view_student, probs).mean()

    def after_train_step(self, data, target, output_labeled) -> Dict[str, StepValue]:
        return {**super().after_train_step(data, target, output_labeled),
                "ssl_weight_plqw": self._weights["plqw"], "ssl_weight_qar": self._weights["qar"]}

    def compute_unlabeled_loss(self, output_unlabeled, view_student, view_teacher):
        total = torch.zeros((), device=self.device)
        extras = {}
        if self._weights["plqw"] > 0:
            loss, info = self.plqw_loss(output_unlabeled, view_teacher)
            total = total + self._weights["plqw"] * loss
            extras.update(info, ssl_loss_plqw=loss.detach())
        if self._weights["qar"] > 0:
            loss = self.qar_loss(output_unlabeled, view_student)
            total = total + self._weights["qar"] * loss
            extras["ssl_loss_qar"] = loss.detach()
        return total, extras

    def ssl_progress_panels(self):
        panels = super().ssl_progress_panels()
        panels["unlabelled losses"] = ["ssl_loss_plqw", "ssl_loss_qar"]
        panels["unlabelled loss weights (ramps)"] = ["ssl_weight_plqw", "ssl_weight_qar"]
        panels["pseudo-labels"] = ["ssl_quality_weight_mean", "ssl_pseudo_label_kept", "ssl_pseudo_label_quality"]
        del panels["unlabelled loss weight (ramp)"]
        return panels


class nnUNetTrainerQGSSL_PLQW(nnUNetTrainerQGSSL):
    """Ablation: quality-weighted pseudo-labels only."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.qar_weight = 0.0


class nnUNetTrainerQGSSL_QAR(nnUNetTrainerQGSSL):
    """Ablation: quality-aware regularisation only."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.plqw_weight = 0.0


class nnUNetTrainerQGSSL_gFrozen(nnUNetTrainerQGSSL):
    """QG-SSL exactly as the paper: g frozen after the warm-up (no refresh steps)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.quality_refresh_every = 0


class nnUNetTrainerMTQW(nnUNetTrainerQGSSL):
    """Mean Teacher with quality weights (the paper's drop-in claim): per-sample consistency x w."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.qar_weight = 0.0
        self.plqw_weight = 1.0  # the consistency term takes PL-QW's place and schedule

    def plqw_loss(self, output_unlabeled, view_teacher):
        teacher_probs = self.teacher_probabilities(view_teacher)  # one teacher pass for weights and target
        _, quality = self.pseudo_labels_and_quality(view_teacher, teacher_probs)
        weights = self.quality_weight(quality)
        logits = highest_resolution(output_unlabeled)
        losses = softmax_mse_per_sample(logits, teacher_probs)
        return weighted_mean(losses, weights), self.pseudo_label_stats(quality, weights)
