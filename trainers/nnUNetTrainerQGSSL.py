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
    def pseudo_labels(self, teacher_probs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The teacher's hard pseudo-label as channel indices (B x 1 x ...) and as the foreground one-hot
        mask g judges (B x L x ...)."""
        pseudo = teacher_probs.argmax(1, keepdim=True)
        return pseudo, self.quality.channel_one_hot(pseudo)

    def quality_weight(self, quality: torch.Tensor) -> torch.Tensor:
        return quality_weights(quality, self.quality_temperature, self.quality_threshold)

    def pseudo_label_stats(self, quality: torch.Tensor, weights: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"ssl_quality_weight_mean": weights.detach().mean(),
                "ssl_pseudo_label_kept": (quality >= self.quality_threshold).float().mean(),
                "ssl_pseudo_label_quality": quality.mean()}

    def plqw_loss(self, output_unlabeled, teacher_probs: torch.Tensor, pseudo: torch.Tensor,
                  quality: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Quality-weighted pseudo-labels: per-sample Dice+CE against the teacher's pseudo-labels
        `pseudo`, weighted by g's sample quality `quality` (B,)."""
        weights = self.quality_weight(quality)
        losses = per_sample_dice_ce(output_unlabeled, pseudo, getattr(self.loss, "weight_factors", None))
        return weighted_mean(losses, weights), self.pseudo_label_stats(quality, weights)

    def compute_unlabeled_loss(self, output_unlabeled, view_student, view_teacher):
        """PL-QW and QAR, with ONE pass of g over both of their (image, mask) pairs: g normalises each
        sample on its own and runs in eval mode, so this equals two passes, with half the kernel launches
        (a step at small patches is bound by launches, not arithmetic). g is frozen: QAR's gradient
        reaches the student through the soft mask, never g's parameters; PL-QW's half is detached."""
        use_plqw, use_qar = self._weights["plqw"] > 0, self._weights["qar"] > 0
        total, extras = torch.zeros((), device=self.device), {}
        if not (use_plqw or use_qar):
            return total, extras
        images, masks = [], []
        if use_plqw:
            teacher_probs = self.teacher_probabilities(view_teacher)
            pseudo, pseudo_mask = self.pseudo_labels(teacher_probs)
            images.append(view_teacher)
            masks.append(pseudo_mask)
        if use_qar:  # 1 - g(x, softmax(f(x))) on the student's own view
            images.append(view_student)
            masks.append(self.quality.foreground_softmax(highest_resolution(output_unlabeled)))
        with torch.set_grad_enabled(use_qar and torch.is_grad_enabled()):
            quality = self.quality_predictor(torch.cat(images), torch.cat(masks)).split(view_student.shape[0])
        if use_plqw:
            loss, info = self.plqw_loss(output_unlabeled, teacher_probs, pseudo, quality[0].detach().float().mean(1))
            total = total + self._weights["plqw"] * loss
            extras.update(info, ssl_loss_plqw=loss.detach())
        if use_qar:
            loss = 1 - quality[-1].mean()
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


class nnUNetTrainerQGSSL_lowMemory(nnUNetTrainerQGSSL):
    """QG-SSL with the labelled pass backpropagated before the unlabelled pass runs: the same gradients,
    about half the activation memory, more kernel launches (for plans made near the GPU's memory)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.unlabeled_separate_backward = True


class nnUNetTrainerMTQW(nnUNetTrainerQGSSL):
    """Mean Teacher with quality weights (the paper's drop-in claim): per-sample consistency x w."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.qar_weight = 0.0
        self.plqw_weight = 1.0  # the consistency term takes PL-QW's place and schedule

    def plqw_loss(self, output_unlabeled, teacher_probs, pseudo, quality):
        """Per-sample softmax MSE to the teacher (its target and g's weights from one teacher pass)."""
        weights = self.quality_weight(quality)
        losses = softmax_mse_per_sample(highest_resolution(output_unlabeled), teacher_probs)
        return weighted_mean(losses, weights), self.pseudo_label_stats(quality, weights)
