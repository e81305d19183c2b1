"""Fixed-budget variants of every benchmark arm (stock nnUNetTrainer included), like nnU-Net's
nnUNetTrainer_Xepochs: `<trainer>_<budget>`, e.g. nnUNetTrainerQGSSL_40epochs.

Every arm of a benchmark profile gets exactly the same schedule (epochs, iterations, validation
iterations, batch-size cap); the semi-supervised ramps are fractions of num_epochs and keep their
shape. `nnUNet_qg_seed=S` seeds a run (same initial weights and labelled patches in every arm;
see seeded_training). The evidence profile's trainers are in nnUNetTrainer_evidence.py.
"""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_qg.trainers.nnUNetTrainerBaselines import nnUNetTrainerFixMatch, nnUNetTrainerMeanTeacher
from nnunet_qg.trainers.nnUNetTrainerQGSSL import (nnUNetTrainerMTQW, nnUNetTrainerQGSSL, nnUNetTrainerQGSSL_gFrozen,
                                                   nnUNetTrainerQGSSL_PLQW, nnUNetTrainerQGSSL_PLQW_gWeights,
                                                   nnUNetTrainerQGSSL_QAR)
from nnunet_qg.trainers.seeded_training import SeededTraining
from nnunet_qg.trainers.short_schedule import ShortSchedule


class Budget40Epochs(ShortSchedule, SeededTraining):
    """The reference budget of ../shared/gpu (stock nnUNetTrainer, 40 x 100 iterations, the plans' batch
    size); checkpoint_latest every 5 epochs, so a run cut off by a time limit continues with --c."""

    short_num_epochs = 40
    short_iterations_per_epoch = 100
    short_val_iterations_per_epoch = 50
    short_save_every = 5
    short_max_batch_size = 10 ** 6


class BudgetCpuSmall(ShortSchedule, SeededTraining):
    """The cpu-small profile: all arms in under an hour on 2 cores (10 x 10 iterations at batch 2)."""

    short_num_epochs = 10
    short_iterations_per_epoch = 10
    short_val_iterations_per_epoch = 3
    short_save_every = 5
    short_max_batch_size = 2


class BudgetCpuMedium(ShortSchedule, SeededTraining):
    """The cpu-medium profile (20 x 30 iterations at batch 2: the quality drift benchmark's CPU budget, which
    reached network validation Dice 0.79-0.86 there), three arms in about 100 minutes on 2 cores."""

    short_num_epochs = 20
    short_iterations_per_epoch = 30
    short_val_iterations_per_epoch = 5
    short_save_every = 5
    short_max_batch_size = 2


class BudgetBenchTiny(ShortSchedule, SeededTraining):
    """The benchmark's pipeline test (2 x 3 iterations at batch 2)."""

    short_num_epochs = 2
    short_iterations_per_epoch = 3
    short_val_iterations_per_epoch = 2
    short_save_every = 1
    short_max_batch_size = 2


# --- 40epochs (Budget40Epochs) ---


class nnUNetTrainer_40epochs(Budget40Epochs, nnUNetTrainer):
    """supervised and full_supervision, budget 40epochs."""


class nnUNetTrainerMeanTeacher_40epochs(Budget40Epochs, nnUNetTrainerMeanTeacher):
    """mean_teacher, budget 40epochs."""


class nnUNetTrainerFixMatch_40epochs(Budget40Epochs, nnUNetTrainerFixMatch):
    """fixmatch, budget 40epochs."""


class nnUNetTrainerMTQW_40epochs(Budget40Epochs, nnUNetTrainerMTQW):
    """mt_qw, budget 40epochs."""


class nnUNetTrainerQGSSL_PLQW_gWeights_40epochs(Budget40Epochs, nnUNetTrainerQGSSL_PLQW_gWeights):
    """pl_qw, budget 40epochs."""


class nnUNetTrainerQGSSL_PLQW_40epochs(Budget40Epochs, nnUNetTrainerQGSSL_PLQW):
    """pl_mirror, budget 40epochs."""


class nnUNetTrainerQGSSL_QAR_40epochs(Budget40Epochs, nnUNetTrainerQGSSL_QAR):
    """qar, budget 40epochs."""


class nnUNetTrainerQGSSL_40epochs(Budget40Epochs, nnUNetTrainerQGSSL):
    """qg_ssl, budget 40epochs."""


class nnUNetTrainerQGSSL_gFrozen_40epochs(Budget40Epochs, nnUNetTrainerQGSSL_gFrozen):
    """qg_ssl_frozen, budget 40epochs."""

# --- cpuSmall (BudgetCpuSmall) ---


class nnUNetTrainer_cpuSmall(BudgetCpuSmall, nnUNetTrainer):
    """supervised and full_supervision, budget cpuSmall."""


class nnUNetTrainerMeanTeacher_cpuSmall(BudgetCpuSmall, nnUNetTrainerMeanTeacher):
    """mean_teacher, budget cpuSmall."""


class nnUNetTrainerFixMatch_cpuSmall(BudgetCpuSmall, nnUNetTrainerFixMatch):
    """fixmatch, budget cpuSmall."""


class nnUNetTrainerMTQW_cpuSmall(BudgetCpuSmall, nnUNetTrainerMTQW):
    """mt_qw, budget cpuSmall."""


class nnUNetTrainerQGSSL_PLQW_gWeights_cpuSmall(BudgetCpuSmall, nnUNetTrainerQGSSL_PLQW_gWeights):
    """pl_qw, budget cpuSmall."""


class nnUNetTrainerQGSSL_PLQW_cpuSmall(BudgetCpuSmall, nnUNetTrainerQGSSL_PLQW):
    """pl_mirror, budget cpuSmall."""


class nnUNetTrainerQGSSL_QAR_cpuSmall(BudgetCpuSmall, nnUNetTrainerQGSSL_QAR):
    """qar, budget cpuSmall."""


class nnUNetTrainerQGSSL_cpuSmall(BudgetCpuSmall, nnUNetTrainerQGSSL):
    """qg_ssl, budget cpuSmall."""


class nnUNetTrainerQGSSL_gFrozen_cpuSmall(BudgetCpuSmall, nnUNetTrainerQGSSL_gFrozen):
    """qg_ssl_frozen, budget cpuSmall."""

# --- cpuMedium (BudgetCpuMedium) ---


class nnUNetTrainer_cpuMedium(BudgetCpuMedium, nnUNetTrainer):
    """supervised and full_supervision, budget cpuMedium."""


class nnUNetTrainerMeanTeacher_cpuMedium(BudgetCpuMedium, nnUNetTrainerMeanTeacher):
    """mean_teacher, budget cpuMedium."""


class nnUNetTrainerFixMatch_cpuMedium(BudgetCpuMedium, nnUNetTrainerFixMatch):
    """fixmatch, budget cpuMedium."""


class nnUNetTrainerMTQW_cpuMedium(BudgetCpuMedium, nnUNetTrainerMTQW):
    """mt_qw, budget cpuMedium."""


class nnUNetTrainerQGSSL_PLQW_gWeights_cpuMedium(BudgetCpuMedium, nnUNetTrainerQGSSL_PLQW_gWeights):
    """pl_qw, budget cpuMedium."""


class nnUNetTrainerQGSSL_PLQW_cpuMedium(BudgetCpuMedium, nnUNetTrainerQGSSL_PLQW):
    """pl_mirror, budget cpuMedium."""


class nnUNetTrainerQGSSL_QAR_cpuMedium(BudgetCpuMedium, nnUNetTrainerQGSSL_QAR):
    """qar, budget cpuMedium."""


class nnUNetTrainerQGSSL_cpuMedium(BudgetCpuMedium, nnUNetTrainerQGSSL):
    """qg_ssl, budget cpuMedium."""


class nnUNetTrainerQGSSL_gFrozen_cpuMedium(BudgetCpuMedium, nnUNetTrainerQGSSL_gFrozen):
    """qg_ssl_frozen, budget cpuMedium."""

# --- benchTiny (BudgetBenchTiny) ---


class nnUNetTrainer_benchTiny(BudgetBenchTiny, nnUNetTrainer):
    """supervised and full_supervision, budget benchTiny."""


class nnUNetTrainerMeanTeacher_benchTiny(BudgetBenchTiny, nnUNetTrainerMeanTeacher):
    """mean_teacher, budget benchTiny."""


class nnUNetTrainerFixMatch_benchTiny(BudgetBenchTiny, nnUNetTrainerFixMatch):
    """fixmatch, budget benchTiny."""


class nnUNetTrainerMTQW_benchTiny(BudgetBenchTiny, nnUNetTrainerMTQW):
    """mt_qw, budget benchTiny."""


class nnUNetTrainerQGSSL_PLQW_gWeights_benchTiny(BudgetBenchTiny, nnUNetTrainerQGSSL_PLQW_gWeights):
    """pl_qw, budget benchTiny."""


class nnUNetTrainerQGSSL_PLQW_benchTiny(BudgetBenchTiny, nnUNetTrainerQGSSL_PLQW):
    """pl_mirror, budget benchTiny."""


class nnUNetTrainerQGSSL_QAR_benchTiny(BudgetBenchTiny, nnUNetTrainerQGSSL_QAR):
    """qar, budget benchTiny."""


class nnUNetTrainerQGSSL_benchTiny(BudgetBenchTiny, nnUNetTrainerQGSSL):
    """qg_ssl, budget benchTiny."""


class nnUNetTrainerQGSSL_gFrozen_benchTiny(BudgetBenchTiny, nnUNetTrainerQGSSL_gFrozen):
    """qg_ssl_frozen, budget benchTiny."""


__all__ = sorted(n for n, c in dict(globals()).items()
                 if isinstance(c, type) and c.__module__ == __name__ and n.startswith("nnUNetTrainer"))
