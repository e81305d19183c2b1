"""Research arms of the evidence protocol (issue #19): PL-QW with the teacher's mirror agreement as the quality
score of each pseudo-label instead of g's (experiments/pseudo_label_quality.py).

Why: on the evidence protocol's unlabelled patches g rated the teacher's pseudo-labels +0.26 above their true
Dice and ranked them at Pearson 0.39, while the mirror agreement ranked them at 0.74 (docs/results.md,
`benchmarks/pseudo_label_check.py`). Everything else is PL-QW's (nnUNetTrainerQGSSL_PLQW): g still trains and is
logged, the weight function is the paper's w = q^T 1[q >= tau], so the arm changes only where q comes from.
"""
import torch

from nnunet_qg.experiments.pseudo_label_quality import mirror_agreement
from nnunet_qg.trainers.nnUNetTrainer_evidence import EvidenceBudget, EvidenceTinyBudget
from nnunet_qg.trainers.nnUNetTrainerPLControls import WithheldLabels
from nnunet_qg.trainers.nnUNetTrainerQGSSL import nnUNetTrainerQGSSL_PLQW
from nnunet_qg.trainers.seeded_training import SeededTraining


class MirrorAgreementQuality:
    """Mixin before a quality-guided trainer: PL-QW's score of a pseudo-label is the teacher's agreement with
    itself under mirroring along each of nnU-Net's mirror axes (one extra teacher pass per axis, no gradient)."""

    def pseudo_label_quality(self, view_teacher: torch.Tensor, teacher_probs: torch.Tensor, pseudo_mask: torch.Tensor,
                             g_scores: torch.Tensor) -> torch.Tensor:
        return mirror_agreement(self.teacher_probabilities, view_teacher, pseudo_mask,
                                self.inference_allowed_mirroring_axes or (), self.quality.channel_one_hot)


class nnUNetTrainerMirrorPL(MirrorAgreementQuality, nnUNetTrainerQGSSL_PLQW):
    """PL-QW with the mirror agreement as q, the paper's T = 2, tau = 0.5."""


class nnUNetTrainerMirrorPL_evidence(EvidenceBudget, SeededTraining, WithheldLabels, nnUNetTrainerMirrorPL):
    """pl_mirror: nnUNetTrainerMirrorPL at the evidence budget."""


class nnUNetTrainerMirrorPLtau08_evidence(nnUNetTrainerMirrorPL_evidence):
    """pl_mirror_tau08: the same with tau = 0.8 (the mirror agreement over-rates pseudo-labels by about +0.16:
    a threshold of 0.8 keeps about as many of them as the oracle's 0.5 on their true Dice)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.quality_threshold = 0.8


class nnUNetTrainerMirrorPL_evidenceTiny(EvidenceTinyBudget, SeededTraining, WithheldLabels, nnUNetTrainerMirrorPL):
    """pl_mirror at the evidence-tiny budget (the test suite)."""
