"""Quality-guided semi-supervised trainers (METHOD.md sections 3-5).

nnUNetTrainerQGSSL: warm-up (supervised + quality predictor), then supervised loss
+ quality-weighted pseudo-labels (PL-QW) + quality-aware regularisation (QAR), each with its own
linear ramp; g keeps learning from the labelled batch every 2nd step after the warm-up
(nnUNetTrainerQGSSL_gFrozen: frozen, as in the paper). Ablations and the quality-weighted Mean Teacher are small subclasses. Ramps are
fractions of num_epochs (the paper's are epochs of a 200-epoch run), so short schedules keep
their shape.
"""
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from nnunet_qg.networks import highest_resolution
from nnunet_qg.quality.dice import soft_dice_per_label
from nnunet_qg.quality.metrics import agreement
from nnunet_qg.quality.training import one_hot_foreground
from nnunet_qg.ramps import linear_rampup
from nnunet_qg.ssl_losses import (batch_size_weighted_mean, effective_sample_size, nonfinite_fraction,
                                  per_sample_dice_ce, qar_loss, quality_weights, softmax_mse_per_sample,
                                  weighted_mean)
from nnunet_qg.trainers.nnUNetTrainerQGWarmup import nnUNetTrainerQGWarmup
from nnunet_qg.trainers.nnUNetTrainerSSL import StepValue


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
            self.print_to_log_file(f"g on this epoch's pseudo-labels against their withheld labels: Pearson "
                                   f"{figures['pearson']:.4f}, bias {figures['bias']:+.4f}, n {figures['n']}")
        self.logger.log("ssl_quality_true_pearson", figures["pearson"], self.current_epoch)
        self.logger.log("ssl_quality_true_bias", figures["bias"], self.current_epoch)

    # ------------------------------------------------------------------ losses
    def pseudo_labels(self, teacher_probs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The teacher's hard pseudo-label as channel indices (B x 1 x ...) and as the foreground one-hot
        mask g judges (B x L x ...)."""
        pseudo = teacher_probs.argmax(1, keepdim=True)
        return pseudo, self.quality.channel_one_hot(pseudo)

    def pseudo_label_quality(self, view_teacher: torch.Tensor, teacher_probs: torch.Tensor, pseudo_mask: torch.Tensor,
                             g_scores: torch.Tensor) -> torch.Tensor:
        """The quality score q (B,) of each pseudo-label that PL-QW weights and logs: g's (the paper's). Research
        arms score it otherwise (experiments/trainers/pseudo_label_quality.py)."""
        return g_scores

    def quality_weight(self, quality: torch.Tensor) -> torch.Tensor:
        return quality_weights(quality, self.quality_temperature, self.quality_threshold)

    def pseudo_label_weights(self, quality: torch.Tensor, true_dice: Optional[torch.Tensor]) -> torch.Tensor:
        """The weight of each pseudo-label (B,) from g's score `quality` (B,); `true_dice` (benchmarks with
        withheld labels only, else None) is for control arms, never for the shipped trainers."""
        return self.quality_weight(quality)

    def weighted_pseudo_label_loss(self, losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Per-sample losses and weights -> PL-QW, normalised as `quality_weight_normalisation` says."""
        if self.quality_weight_normalisation == "batch":
            return weighted_mean(losses, weights)
        if self.quality_weight_normalisation == "batch_size":
            return batch_size_weighted_mean(losses, weights)
        raise ValueError(f"quality_weight_normalisation must be 'batch' or 'batch_size', not "
                         f"{self.quality_weight_normalisation!r}")

    def pseudo_label_true_dice(self, pseudo_mask: torch.Tensor) -> Optional[torch.Tensor]:
        """Benchmarks only: the Dice (mean over foreground labels, both empty = 1, as g is trained) of each
        pseudo-label (B, L, ...) against the withheld label of its patch; None without withheld labels."""
        if self._unlabeled_target is None:
            return None
        truth = one_hot_foreground(self._unlabeled_target, self.label_manager.foreground_labels)
        return soft_dice_per_label(pseudo_mask, truth).mean(1)

    def pseudo_label_stats(self, quality: torch.Tensor, weights: torch.Tensor,
                           true_dice: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        stats = {"ssl_quality_weight_ess": effective_sample_size(weights)}
        if true_dice is not None:
            stats["ssl_pseudo_label_true_dice"] = true_dice.mean()
            self._quality_truth_pairs.append((quality.detach(), true_dice))
        return {**stats, "ssl_quality_weight_mean": weights.detach().mean(),
                "ssl_pseudo_label_kept": (quality >= self.quality_threshold).float().mean(),
                "ssl_pseudo_label_quality": quality.mean(), "ssl_quality_nonfinite": nonfinite_fraction(quality)}

    def plqw_loss(self, output_unlabeled, teacher_probs: torch.Tensor, pseudo: torch.Tensor,
                  quality: torch.Tensor, true_dice: Optional[torch.Tensor] = None
                  ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Quality-weighted pseudo-labels: per-sample Dice+CE against the teacher's pseudo-labels
        `pseudo`, weighted by g's sample quality `quality` (B,)."""
        weights = self.pseudo_label_weights(quality, true_dice)
        losses = per_sample_dice_ce(output_unlabeled, pseudo, getattr(self.loss, "weight_factors", None))
        return self.weighted_pseudo_label_loss(losses, weights), self.pseudo_label_stats(quality, weights, true_dice)

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
            with torch.no_grad():
                true_dice = self.pseudo_label_true_dice(pseudo_mask)
            scores = self.pseudo_label_quality(view_teacher, teacher_probs, pseudo_mask,
                                               quality[0].detach().float().mean(1))
            loss, info = self.plqw_loss(output_unlabeled, teacher_probs, pseudo, scores, true_dice)
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
        panels["g on pseudo-labels vs withheld labels (benchmarks)"] = ["ssl_quality_true_pearson",
                                                                        "ssl_quality_true_bias"]
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

    def plqw_loss(self, output_unlabeled, teacher_probs, pseudo, quality, true_dice=None):
        """Per-sample softmax MSE to the teacher (its target and g's weights from one teacher pass)."""
        weights = self.pseudo_label_weights(quality, true_dice)
        losses = softmax_mse_per_sample(highest_resolution(output_unlabeled), teacher_probs)
        return self.weighted_pseudo_label_loss(losses, weights), self.pseudo_label_stats(quality, weights, true_dice)
