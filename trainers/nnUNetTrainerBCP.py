"""A strong semi-supervised base with quality guidance as its drop-in: bidirectional copy-paste (BCP).

nnUNetTrainerBCP: after a warm-up of nnU-Net training, every step mixes the labelled and the unlabelled batch as
BCP does (nnunet_qg/copy_paste.py: a box of each labelled patch pasted into an unlabelled one and the other way
round) and trains the student on the mixed images, against the label in the labelled part and the EMA
teacher's pseudo-label in the unlabelled part (weight `copy_paste_unlabeled_weight`, BCP's u_weight 0.5), and, in
the same pass, on the plain labelled batch with nnU-Net's loss (`copy_paste_plain_labelled_weight` 1; BCP's code
trains on mixed images only, which measured worse: issue #36, docs/results.md).
nnUNetTrainerBCP_QG: the same, with the unlabelled part of each mixed image weighted by its pseudo-label's
quality weight (the teacher's mirror agreement, as in nnUNetTrainerQGSSL_PLQW): the same score, weights and
normalisation (sum w l / sum w) as PL-QW, on the pseudo-labelled part of the loss.

The pseudo-labels, their scores and weights come from nnUNetTrainerQGSSL (`unlabeled_targets`,
`plqw_weights`): the base changes how the student's input and target are made, nothing else. Departures from
BCP's code: the warm-up is nnU-Net's own training (BCP pre-trains a separate model on labelled patches mixed with
each other), the student sees nnU-Net's augmentation (the unlabelled part its intensity-augmented view), the loss
is nnU-Net's Dice (without background) + CE with deep supervision, and no largest-connected-component filter
is applied to the pseudo-labels (BCP's ACDC code does).
"""
from typing import Optional

import numpy as np
import torch

from nnunet_qg.copy_paste import bidirectional_copy_paste, box_mask
from nnunet_qg.networks import highest_resolution, split_batch
from nnunet_qg.ssl_losses import per_sample_dice_ce
from nnunet_qg.trainers.nnUNetTrainerQGSSL import PseudoLabels, nnUNetTrainerQGSSL_PLQW
from nnunet_qg.trainers.nnUNetTrainerSSL import UnlabeledBatch


class nnUNetTrainerBCP(nnUNetTrainerQGSSL_PLQW):
    """Bidirectional copy-paste with an EMA teacher, no quality guidance (every pseudo-label weight 1)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.pseudo_label_score = "none"
        self.copy_paste_fraction = 2 / 3  # of every spatial axis (BCP)
        self.copy_paste_unlabeled_weight = 0.5  # weight of the pseudo-labelled part (BCP's u_weight)
        # nnU-Net training until this fraction of the epochs, then mixed images only (BCP pre-trains 10,000 of its
        # 40,000 iterations)
        self.copy_paste_start_fraction = 0.15
        # > 0: the student also sees the plain labelled batch in the same pass, its nnU-Net loss at this weight
        # (BCP's code has no such term after its pre-training: 0 = BCP's mixed images only, which measured worse on
        # one labelled case, the EMA teacher's pseudo-labels 0.49-0.56 true Dice against 0.69-0.70; issue #36)
        self.copy_paste_plain_labelled_weight = 1.0
        self.unlabeled_separate_backward = False  # one pass over the 2B mixed images
        self._box_rng: Optional[np.random.Generator] = None

    def initialize(self):
        super().initialize()  # sets the mirror axes
        if self.pseudo_labels_scored_by_g():
            raise RuntimeError(f"{self.__class__.__name__} scores pseudo-labels with the mirror agreement or not at all "
                               f"(pseudo_label_score 'mirror' with mirror axes, or 'none'); g learns from predictions "
                               f"of labelled patches, which a copy-paste step does not make")

    def on_train_start(self):
        super().on_train_start()
        if self._box_rng is None:
            self._box_rng = np.random.default_rng(self.unlabeled_seed + 1)

    # ------------------------------------------------------------------ schedule
    def copy_paste_start_epoch(self) -> int:
        return max(self.warmup_epochs, int(round(self.copy_paste_start_fraction * self.num_epochs)))

    def component_weights_at(self, epoch: int):
        """PL-QW's weight holds the base's switch: 1 from the start epoch on (BCP has no ramp); no QAR."""
        return {"plqw": 1.0 if epoch >= self.copy_paste_start_epoch() else 0.0, "qar": 0.0}

    # ------------------------------------------------------------------ step
    def forward_backward(self, data: torch.Tensor, target, unlabeled: Optional[UnlabeledBatch]):
        """nnU-Net's step while the base is off; afterwards one pass of the student over the 2B mixed images."""
        if unlabeled is None:
            return super().forward_backward(data, target, None)
        pseudo: PseudoLabels = unlabeled.targets
        labels = highest_resolution(target)
        box = box_mask(data.shape[2:], self.copy_paste_fraction, self._box_rng, data.device)
        mixed = bidirectional_copy_paste(data, labels, unlabeled.view_student, pseudo.channels, box)
        with torch.no_grad():
            true_dice = self.pseudo_label_true_dice(pseudo.mask)
        weights = self.plqw_weights(pseudo, pseudo.quality, true_dice)[mixed.unlabeled_source]
        ds_weights = getattr(self.loss, "weight_factors", None)
        n_mixed, plain = mixed.images.shape[0], self.copy_paste_plain_labelled_weight > 0
        with self._autocast():
            output = self.network(torch.cat((mixed.images, data)) if plain else mixed.images)
            output_mixed = split_batch(output, n_mixed) if plain else output
            labelled_part = per_sample_dice_ce(output_mixed, mixed.target, ds_weights,
                                               region=mixed.labelled_region).mean()
            pseudo_part = self.weighted_pseudo_label_loss(
                per_sample_dice_ce(output_mixed, mixed.target, ds_weights, region=1 - mixed.labelled_region), weights)
            loss = labelled_part + self.copy_paste_unlabeled_weight * pseudo_part
            if plain:
                output_labelled = split_batch(output, n_mixed, second=True)
                loss = loss + self.copy_paste_plain_labelled_weight * self.loss(output_labelled, target)
        self._backward(loss)
        extras = {**self.pseudo_label_stats(pseudo.quality, weights[:data.shape[0]], true_dice),
                  "ssl_loss_plqw": pseudo_part.detach()}
        return loss.detach(), labelled_part.detach(), pseudo_part.detach(), \
            output_labelled if plain else split_batch(output, data.shape[0]), extras

    # ------------------------------------------------------------------ checkpoints
    def ssl_state_dict(self) -> dict:
        return {**super().ssl_state_dict(), "box_rng": None if self._box_rng is None else self._box_rng.bit_generator.state}

    def load_ssl_state_dict(self, state: dict) -> None:
        super().load_ssl_state_dict(state)
        if state.get("box_rng") is not None:
            self._box_rng = np.random.default_rng()
            self._box_rng.bit_generator.state = state["box_rng"]


class nnUNetTrainerBCP_QG(nnUNetTrainerBCP):
    """Bidirectional copy-paste with quality guidance: the pseudo-labelled part of each mixed image weighted by
    its pseudo-label's quality weight (the teacher's mirror agreement, as in nnUNetTrainerQGSSL_PLQW)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.pseudo_label_score = "mirror"
