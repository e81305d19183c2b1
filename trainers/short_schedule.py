"""A mixin for short-schedule trainer variants (like nnU-Net's nnUNetTrainer_5epochs)."""
from typing import Optional

import torch


class ShortSchedule:
    """Put first in the bases: sets a short schedule and caps the batch size (CPU smoke tests, demos)."""

    short_num_epochs = 3
    short_iterations_per_epoch = 3
    short_val_iterations_per_epoch = 2
    short_save_every = 1
    short_max_batch_size = 2
    # a fixed batch size (neither nnU-Net's 5 % cap nor its floor of 2): equal budgets for datasets of any size
    short_batch_size: Optional[int] = None
    short_overrides: dict = {}  # further attributes to set after the trainer's own __init__

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.short_num_epochs
        self.num_iterations_per_epoch = self.short_iterations_per_epoch
        self.num_val_iterations_per_epoch = self.short_val_iterations_per_epoch
        self.save_every = self.short_save_every
        for name, value in self.short_overrides.items():
            setattr(self, name, value)

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        self.batch_size = min(self.batch_size, self.short_max_batch_size) if self.short_batch_size is None \
            else self.short_batch_size
