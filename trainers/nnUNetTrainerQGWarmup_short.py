"""Short-schedule variants of nnUNetTrainerQGWarmup."""
import torch

from nnunet_qg.trainers.nnUNetTrainerQGSSL import nnUNetTrainerQGWarmup
from nnunet_qg.trainers.short_schedule import ShortSchedule


class nnUNetTrainerQGWarmup_debug(ShortSchedule, nnUNetTrainerQGWarmup):
    """Smoke test: 4 epochs x 3 iterations, the first 2 epochs warm-up, a checkpoint every epoch."""

    short_num_epochs = 4
    short_overrides = {"quality_warmup_fraction": 0.5}


class nnUNetTrainerQGWarmup_cpuBench(ShortSchedule, nnUNetTrainerQGWarmup):
    """The quality predictor benchmark on a CPU: 10 epochs x 25 iterations, all of it warm-up, batch <= 4."""

    short_num_epochs = 10
    short_iterations_per_epoch = 25
    short_val_iterations_per_epoch = 25
    short_save_every = 5
    short_max_batch_size = 4
    short_overrides = {"quality_warmup_fraction": 1.0}


class nnUNetTrainerQGWarmup_gpuBench(nnUNetTrainerQGWarmup):
    """The quality predictor benchmark on a GPU: 20 epochs x 100 iterations (plans' batch), all warm-up."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 20
        self.num_iterations_per_epoch = 100
        self.num_val_iterations_per_epoch = 25
        self.quality_warmup_fraction = 1.0
