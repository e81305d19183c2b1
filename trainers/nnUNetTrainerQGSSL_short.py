"""Short-schedule (smoke test) variants of the QG-SSL trainers and the baselines.

4 epochs x 3 iterations: warm-up in epoch 0, PL-QW from epoch 1, QAR from epoch 2.
"""
from nnunet_qg.trainers.nnUNetTrainerBaselines import nnUNetTrainerFixMatch, nnUNetTrainerMeanTeacher
from nnunet_qg.trainers.nnUNetTrainerBCP import nnUNetTrainerBCP, nnUNetTrainerBCP_QG
from nnunet_qg.trainers.nnUNetTrainerQGSSL import (nnUNetTrainerMTQW, nnUNetTrainerQGSSL, nnUNetTrainerQGSSL_gFrozen,
                                                   nnUNetTrainerQGSSL_lowMemory, nnUNetTrainerQGSSL_PLQW, nnUNetTrainerQGSSL_QAR)
from nnunet_qg.trainers.short_schedule import ShortSchedule

class QGDebugSchedule(ShortSchedule):
    """4 epochs x 3 iterations: warm-up in epoch 0, PL-QW from epoch 1, QAR from epoch 2. PL-QW keeps every
    pseudo-label (tau = 0, weight q^2): after 3 iterations the teacher's pseudo-labels are poor (mirror agreement
    about 0.3 on the phantom), the shipped tau = 0.5 rightly rejects them all, and a smoke test must run the loss."""

    short_num_epochs = 4
    short_overrides = {"quality_warmup_fraction": 0.25, "plqw_start_fraction": 0.25, "plqw_ramp_fraction": 0.25,
                       "qar_start_fraction": 0.5, "qar_ramp_fraction": 0.25, "quality_threshold": 0.0}


class nnUNetTrainerQGSSL_debug(QGDebugSchedule, nnUNetTrainerQGSSL):
    """Smoke test of nnUNetTrainerQGSSL."""


class nnUNetTrainerQGSSL_PLQW_debug(QGDebugSchedule, nnUNetTrainerQGSSL_PLQW):
    """Smoke test of nnUNetTrainerQGSSL_PLQW."""


class nnUNetTrainerQGSSL_QAR_debug(QGDebugSchedule, nnUNetTrainerQGSSL_QAR):
    """Smoke test of nnUNetTrainerQGSSL_QAR."""


class nnUNetTrainerQGSSL_gFrozen_debug(QGDebugSchedule, nnUNetTrainerQGSSL_gFrozen):
    """Smoke test of nnUNetTrainerQGSSL_gFrozen (the paper's frozen g)."""


class nnUNetTrainerQGSSL_lowMemory_debug(QGDebugSchedule, nnUNetTrainerQGSSL_lowMemory):
    """Smoke test of nnUNetTrainerQGSSL_lowMemory (labelled and unlabelled passes backpropagated apart)."""


class nnUNetTrainerMTQW_debug(QGDebugSchedule, nnUNetTrainerMTQW):
    """Smoke test of nnUNetTrainerMTQW."""


class BCPDebugSchedule(QGDebugSchedule):
    """The QG debug schedule with the copy-paste base from epoch 1."""

    short_overrides = {**QGDebugSchedule.short_overrides, "copy_paste_start_fraction": 0.25}


class nnUNetTrainerBCP_debug(BCPDebugSchedule, nnUNetTrainerBCP):
    """Smoke test of nnUNetTrainerBCP."""


class nnUNetTrainerBCP_QG_debug(BCPDebugSchedule, nnUNetTrainerBCP_QG):
    """Smoke test of nnUNetTrainerBCP_QG."""


class nnUNetTrainerMeanTeacher_debug(ShortSchedule, nnUNetTrainerMeanTeacher):
    short_num_epochs = 4


class nnUNetTrainerFixMatch_debug(ShortSchedule, nnUNetTrainerFixMatch):
    short_num_epochs = 4


class DemoSchedule(ShortSchedule):
    """The CPU demo: 16 epochs x 12 iterations; warm-up 4 epochs, PL-QW from epoch 4, QAR (where on) from epoch 6;
    the shipped tau."""

    short_num_epochs = 16
    short_iterations_per_epoch = 12
    short_val_iterations_per_epoch = 3
    short_save_every = 5
    short_overrides = {"quality_warmup_fraction": 0.25, "plqw_start_fraction": 0.25, "plqw_ramp_fraction": 0.25,
                       "qar_start_fraction": 0.375, "qar_ramp_fraction": 0.25}


class nnUNetTrainerQGSSL_demo(DemoSchedule, nnUNetTrainerQGSSL):
    """The demo schedule of nnUNetTrainerQGSSL (PL-QW + QAR)."""


class nnUNetTrainerQGSSL_PLQW_demo(DemoSchedule, nnUNetTrainerQGSSL_PLQW):
    """The CPU demo's trainer: the demo schedule of nnUNetTrainerQGSSL_PLQW (the README's trainer)."""
