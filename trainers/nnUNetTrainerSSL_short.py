"""Short-schedule variants of nnUNetTrainerSSL (like nnU-Net's nnUNetTrainer_5epochs)."""
import torch

from nnunet_qg.trainers.nnUNetTrainerSSL import nnUNetTrainerSSL


class nnUNetTrainerSSL_debug(nnUNetTrainerSSL):
    """Smoke test: 3 epochs x 3 iterations, batch size at most 2, a checkpoint every epoch."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 3
        self.num_iterations_per_epoch = 3
        self.num_val_iterations_per_epoch = 2
        self.save_every = 1
        self.max_batch_size = 2

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        self.batch_size = min(self.batch_size, self.max_batch_size)


class nnUNetTrainerSSL_demo(nnUNetTrainerSSL_debug):
    """The CPU demo's budget: 16 epochs x 12 iterations, batch size at most 2."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 16
        self.num_iterations_per_epoch = 12
        self.num_val_iterations_per_epoch = 3
        self.save_every = 5
