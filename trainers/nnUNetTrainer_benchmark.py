"""Fixed-budget variants of every benchmark arm (stock nnUNetTrainer included), like nnU-Net's
nnUNetTrainer_Xepochs: `<trainer>_<budget>`, e.g. nnUNetTrainerQGSSL_40epochs.

Every arm of a benchmark profile gets exactly the same schedule (epochs, iterations, validation
iterations, batch-size cap); the semi-supervised ramps are fractions of num_epochs and keep their
shape. `nnUNet_qg_seed=S` seeds a run (same initial weights and labelled patches in every arm;
see seeded_training).
"""
from typing import Dict

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_qg.trainers.nnUNetTrainerBaselines import nnUNetTrainerFixMatch, nnUNetTrainerMeanTeacher
from nnunet_qg.trainers.nnUNetTrainerQGSSL import (nnUNetTrainerMTQW, nnUNetTrainerQGSSL, nnUNetTrainerQGSSL_gFrozen,
                                                   nnUNetTrainerQGSSL_PLQW, nnUNetTrainerQGSSL_QAR)
from nnunet_qg.trainers.seeded_training import SeededTraining
from nnunet_qg.trainers.short_schedule import ShortSchedule

BENCHMARK_BASES = (nnUNetTrainer, nnUNetTrainerMeanTeacher, nnUNetTrainerFixMatch, nnUNetTrainerMTQW,
                   nnUNetTrainerQGSSL_PLQW, nnUNetTrainerQGSSL_QAR, nnUNetTrainerQGSSL, nnUNetTrainerQGSSL_gFrozen)

# budget suffix -> ShortSchedule attributes
BUDGETS: Dict[str, Dict[str, int]] = {
    # the reference budget of ../shared/gpu (stock nnUNetTrainer, 40 x 100 iterations, the plans' batch size)
    # (checkpoint_latest every 5 epochs, so a run cut off by a time limit continues with --c)
    "40epochs": dict(short_num_epochs=40, short_iterations_per_epoch=100, short_val_iterations_per_epoch=50,
                     short_save_every=5, short_max_batch_size=10 ** 6),
    # the cpu-small benchmark profile: all arms in under an hour on 2 cores
    "cpuSmall": dict(short_num_epochs=10, short_iterations_per_epoch=10, short_val_iterations_per_epoch=3,
                     short_save_every=5, short_max_batch_size=2),
    # the cpu-medium profile: the quality drift benchmark's CPU budget (20 x 30 iterations at batch 2 reached
    # network validation Dice 0.79-0.86 there), three arms in about 100 minutes on 2 cores
    "cpuMedium": dict(short_num_epochs=20, short_iterations_per_epoch=30, short_val_iterations_per_epoch=5,
                      short_save_every=5, short_max_batch_size=2),
    # the benchmark's pipeline test
    "benchTiny": dict(short_num_epochs=2, short_iterations_per_epoch=3, short_val_iterations_per_epoch=2,
                      short_save_every=1, short_max_batch_size=2),
}


def budget_variant(base: type, budget: str) -> type:
    """`<base>_<budget>`: base with the schedule of BUDGETS[budget], seeded by nnUNet_qg_seed if set."""
    name = f"{base.__name__}_{budget}"
    return type(name, (ShortSchedule, SeededTraining, base), {**BUDGETS[budget], "__module__": __name__,
                                              "__doc__": f"{base.__name__} with the '{budget}' benchmark budget."})


for _base in BENCHMARK_BASES:
    for _budget in BUDGETS:
        _cls = budget_variant(_base, _budget)
        globals()[_cls.__name__] = _cls
