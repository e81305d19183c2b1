"""Short-schedule variants of nnUNetTrainerSSL."""
from nnunet_qg.trainers.nnUNetTrainerSSL import nnUNetTrainerSSL
from nnunet_qg.trainers.short_schedule import ShortSchedule


class nnUNetTrainerSSL_debug(ShortSchedule, nnUNetTrainerSSL):
    """Smoke test: 3 epochs x 3 iterations, batch size at most 2, a checkpoint every epoch."""


class nnUNetTrainerSSL_demo(ShortSchedule, nnUNetTrainerSSL):
    """The CPU demo's budget: 16 epochs x 12 iterations, batch size at most 2."""

    short_num_epochs = 16
    short_iterations_per_epoch = 12
    short_val_iterations_per_epoch = 3
    short_save_every = 5
