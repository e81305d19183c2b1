"""The evidence protocol's trainers (docs/benchmarks.md, profile `evidence`): every arm with one budget.

Hippocampus 2d, 1 labelled case, fold `all`, 2 CPU cores. Every arm trains 60 epochs x 50 iterations at
a FIXED batch of 4 (neither nnU-Net's 5 % cap, which gives 2 for one case, nor the whole-pool plans'
batch: the same images per step in every arm), seeded by `nnUNet_qg_seed`. The semi-supervised arms
that judge g against the truth read the unlabelled patches with their withheld labels (WithheldLabels);
Mean Teacher reads the ordinary unlabelled folder (the same images).
"""
import torch
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_qg.trainers.nnUNetTrainerBaselines import nnUNetTrainerMeanTeacher
from nnunet_qg.trainers.nnUNetTrainerBCP import nnUNetTrainerBCP, nnUNetTrainerBCP_QG
from nnunet_qg.trainers.nnUNetTrainerPLControls import (OracleWeights, WithheldLabels, nnUNetTrainerOraclePL,
                                                        nnUNetTrainerShuffledPL, nnUNetTrainerUnweightedPL)
from nnunet_qg.trainers.nnUNetTrainerQGSSL import (nnUNetTrainerQGSSL, nnUNetTrainerQGSSL_PLQW,
                                                   nnUNetTrainerQGSSL_PLQW_gWeights)
from nnunet_qg.trainers.seeded_training import SeededTraining
from nnunet_qg.trainers.short_schedule import ShortSchedule


class EvidenceBudget(ShortSchedule):
    """60 x 50 iterations at batch 4 (see the module docstring; chosen in docs/results.md)."""

    short_num_epochs = 60
    short_iterations_per_epoch = 50
    short_val_iterations_per_epoch = 10
    short_save_every = 5
    short_batch_size = 4

    def perform_actual_validation(self, save_probabilities: bool = False):
        """Skipped: the protocol scores the held-out test cases with checkpoint_final (saved before this runs);
        nnU-Net's validation of fold `all` would predict the run's own training cases (an offline arm's 100-200
        pseudo-labelled cases: 5-10 minutes on 2 cores, read by nothing)."""
        self.print_to_log_file("Final validation skipped (evidence budget: the benchmark scores the test cases)")


class nnUNetTrainer_evidence(EvidenceBudget, SeededTraining, nnUNetTrainer):
    """supervised (few labels) and full_supervision (the whole pool labelled)."""


class nnUNetTrainerMeanTeacher_evidence(EvidenceBudget, SeededTraining, nnUNetTrainerMeanTeacher):
    """mean_teacher."""


class nnUNetTrainerUnweightedPL_evidence(EvidenceBudget, SeededTraining, WithheldLabels, nnUNetTrainerUnweightedPL):
    """unweighted_pl: every pseudo-label kept, weight 1."""


class nnUNetTrainerQGSSL_PLQW_gWeights_evidence(EvidenceBudget, SeededTraining, WithheldLabels,
                                                nnUNetTrainerQGSSL_PLQW_gWeights):
    """pl_qw: the paper's PL-QW (g's weights)."""


class nnUNetTrainerQGSSL_PLQW_evidence(EvidenceBudget, SeededTraining, WithheldLabels, nnUNetTrainerQGSSL_PLQW):
    """pl_mirror: PL-QW as shipped (the teacher's mirror agreement as q)."""


class nnUNetTrainerQGSSL_evidence(EvidenceBudget, SeededTraining, WithheldLabels, nnUNetTrainerQGSSL):
    """qg_ssl: PL-QW + QAR, as shipped."""


class nnUNetTrainerOraclePL_evidence(EvidenceBudget, SeededTraining, nnUNetTrainerOraclePL):
    """oracle_pl: the weights of a perfect g."""


class nnUNetTrainerShuffledPL_evidence(EvidenceBudget, SeededTraining, WithheldLabels, nnUNetTrainerShuffledPL):
    """shuffled_pl: g's weights permuted within the batch."""


class nnUNetTrainerQGSSL_PLQWbatchSize_evidence(nnUNetTrainerQGSSL_PLQW_evidence):
    """pl_mirror_batch_size: PL-QW as shipped, normalised by the batch size, sum w l / B (absolute weights)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.quality_weight_normalisation = "batch_size"


class nnUNetTrainerQGSSL_PLQWema999_evidence(nnUNetTrainerQGSSL_PLQW_evidence):
    """pl_mirror_ema999: PL-QW as shipped with the paper's EMA decay 0.999 (ours: 0.99; a time constant of 1,000
    iterations instead of 100, a third of this budget)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.ema_decay = 0.999


class nnUNetTrainerQGSSL_PLQWunlabeled2x_evidence(nnUNetTrainerQGSSL_PLQW_evidence):
    """pl_mirror_unlabeled2x: PL-QW as shipped with two unlabelled patches per labelled one (the paper's ratio;
    ours: one)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.unlabeled_batch_size = 2 * self.short_batch_size


class nnUNetTrainerQGSSL_PLQWtau08_evidence(nnUNetTrainerQGSSL_PLQW_evidence):
    """pl_mirror_tau08: PL-QW as shipped with tau = 0.8 (the mirror agreement over-rates pseudo-labels by about
    +0.14: a threshold of 0.8 keeps about as many of them as the oracle's 0.5 on their true Dice)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.quality_threshold = 0.8


class nnUNetTrainerQGSSL_PLQWfg33_evidence(nnUNetTrainerQGSSL_PLQW_evidence):
    """pl_mirror_fg33: PL-QW as shipped with a third of each unlabelled batch centred where the labelled case has
    foreground (unlabeled_oversample_foreground_percent 0.33, nnU-Net's share for labelled patches; ours: 0,
    uniform): a third of the uniform 2d patches hold background only (issue #20, item 7)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.unlabeled_oversample_foreground_percent = 0.33


class EachAxisMirror:
    """The mirror agreement against one mirror image per axis (mirror_agreement_images "each", the default until
    issue #33 measured "all_at_once"): the lean step's arms keep what their ledger rows trained."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mirror_agreement_images = "each"


class nnUNetTrainerQGSSL_PLQWlean_evidence(EachAxisMirror, nnUNetTrainerQGSSL_PLQW_evidence):
    """pl_mirror_lean: PL-QW after the lean step (issue #33: no g, the teacher's part before the student's pass,
    argmax of the logits) with a mirror image per axis, as pl_mirror trained before the change, so its runs pair
    with pl_mirror runs of the old code; the reference of the lean step's options."""


class nnUNetTrainerQGSSL_PLQWmirrorAverage_evidence(EachAxisMirror, nnUNetTrainerQGSSL_PLQW_evidence):
    """pl_mirror_average: pl_mirror_lean with the pseudo-label taken from the teacher's predictions of the patch
    and its mirror images averaged (pseudo_label_mirror_average; default: the plain prediction's argmax)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.pseudo_label_mirror_average = True


class nnUNetTrainerQGSSL_PLQWskipAbsent_evidence(EachAxisMirror, nnUNetTrainerQGSSL_PLQW_evidence):
    """pl_mirror_skip_absent: pl_mirror_lean with its mirror agreement over the labels found in the pseudo-label or a
    mirrored prediction only, background-only patches at the batch's mean weight (mirror_absent_labels "skip";
    default "agree": absent labels agree, so background-only patches score 1 and weigh most)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mirror_absent_labels = "skip"


class nnUNetTrainerQGSSL_PLQWflipAll_evidence(nnUNetTrainerQGSSL_PLQW_evidence):
    """pl_mirror_flip_all: PL-QW, its mirror agreement against one mirror image flipped along every axis at once
    (mirror_agreement_images "all_at_once": one teacher pass instead of one per axis), the default since its
    measurement (issue #33): the same training as pl_mirror today, under the name its ledger rows carry."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.mirror_agreement_images = "all_at_once"


class nnUNetTrainerQGSSL_PLQW_gWeightsRefreshCorrupted_evidence(nnUNetTrainerQGSSL_PLQW_gWeights_evidence):
    """pl_qw_refresh_corrupted: the paper's PL-QW whose g is refreshed after the warm-up on corrupted masks only
    (ours: half the network's own predictions of the labelled patches, which it has fitted: issue #20, item 5)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.quality_refresh_real_fraction = 0.0


class MixedImagesOnly:
    """The copy-paste step as BCP's code trains it, on mixed images only (copy_paste_plain_labelled_weight 0, the
    default when the bcp, bcp_qg and bcp_oracle rows were trained; issue #36)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.copy_paste_plain_labelled_weight = 0.0


class nnUNetTrainerBCPlabelled_evidence(EvidenceBudget, SeededTraining, WithheldLabels, nnUNetTrainerBCP):
    """bcp_labelled: nnUNetTrainerBCP as shipped (the plain labelled batch's loss beside the mixed images), no
    quality weights: bcp_qg_labelled's control, so that bcp_qg_labelled minus it is the weights' share."""


class nnUNetTrainerBCP_QGlabelled_evidence(EvidenceBudget, SeededTraining, WithheldLabels, nnUNetTrainerBCP_QG):
    """bcp_qg_labelled: nnUNetTrainerBCP_QG as shipped, the mirror agreement's weights on the pseudo-labelled part
    (its first rows were trained while the plain labelled loss was a research option this class switched on)."""


class nnUNetTrainerBCPOraclelabelled_evidence(EvidenceBudget, SeededTraining, OracleWeights, WithheldLabels,
                                              nnUNetTrainerBCP):
    """bcp_oracle_labelled: bcp_labelled with the weights of a perfect score (withheld labels): the headroom of
    quality weights on this base."""


class nnUNetTrainerBCP_evidence(MixedImagesOnly, nnUNetTrainerBCPlabelled_evidence):
    """bcp: bidirectional copy-paste on mixed images only, no quality guidance."""


class nnUNetTrainerBCP_QG_evidence(MixedImagesOnly, nnUNetTrainerBCP_QGlabelled_evidence):
    """bcp_qg: bidirectional copy-paste on mixed images only, with the mirror agreement's quality weights."""


class nnUNetTrainerBCPOracle_evidence(MixedImagesOnly, nnUNetTrainerBCPOraclelabelled_evidence):
    """bcp_oracle: bidirectional copy-paste on mixed images only, with the weights of a perfect score."""


class nnUNetTrainer_evidenceCurve(nnUNetTrainer_evidence):
    """Protocol design: the supervised arm, with the network kept after some epochs
    (checkpoint_epoch_<e>.pth), so one run gives test Dice against the budget."""

    keep_epochs = (4, 9, 19, 29, 39, 49, 59)

    def on_epoch_end(self):
        super().on_epoch_end()
        if self.current_epoch - 1 in self.keep_epochs:  # nnU-Net counted the epoch as done
            self.save_checkpoint(join(self.output_folder, f"checkpoint_epoch_{self.current_epoch - 1}.pth"))


class EvidenceTinyBudget(EvidenceBudget):
    """The profile `evidence-tiny` (the test suite's run of the protocol's pipeline): 3 x 4 iterations at batch 2."""

    short_num_epochs = 3
    short_iterations_per_epoch = 4
    short_val_iterations_per_epoch = 2
    short_save_every = 1
    short_batch_size = 2


class nnUNetTrainer_evidenceTiny(EvidenceTinyBudget, SeededTraining, nnUNetTrainer):
    """supervised, tiny budget."""


class nnUNetTrainerUnweightedPL_evidenceTiny(EvidenceTinyBudget, SeededTraining, WithheldLabels,
                                             nnUNetTrainerUnweightedPL):
    """unweighted_pl, tiny budget."""


class nnUNetTrainerOraclePL_evidenceTiny(EvidenceTinyBudget, SeededTraining, nnUNetTrainerOraclePL):
    """oracle_pl, tiny budget."""

