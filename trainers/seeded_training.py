"""A mixin for paired benchmark runs: `nnUNet_qg_seed=S` seeds a training, so arms of one run start alike.

nnU-Net does not seed its training: the network's initial weights come from torch's global
generator, the labelled patches from numpy's in the loader's worker processes, which nnU-Net
starts with `seeds=None` (each worker draws its own). With `nnUNet_qg_seed=S`:

- numpy, torch and `random` are seeded with S before the network is built, so every arm of a
  benchmark run starts from the same weights (architectures equal: same plans);
- nnU-Net's labelled and validation loaders run in the main process (single-threaded, the only way
  its loader is reproducible) and the global generators are seeded again at the end of the
  training's set-up, so arms draw the same labelled patches in the same order;
- the unlabelled loader of the semi-supervised trainers runs in at least one worker of its own,
  seeded from S, so its draws never shift the labelled stream.

A semi-supervised arm then trains exactly as the supervised one until its unlabelled loss starts
(tested for QG-SSL's warm-up), and what differs afterwards is the method, not the luck of the
draw. The global generators' states go into the checkpoint (`qg_rng_state`), and a run resumed with
--c takes them back at its start, so its labelled and validation patches are those of an
uninterrupted run (tested); the unlabelled worker starts its seeded stream again. Unset (the
default), training is nnU-Net's, unseeded.
"""
import os
import random
from contextlib import contextmanager
from typing import Iterator, Optional

import numpy as np
import torch
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

from nnunet_qg.trainers.checkpoint_extras import CheckpointExtras

SEED_ENV = "nnUNet_qg_seed"
N_PROC_DA_ENV = "nnUNet_n_proc_DA"
RNG_STATE_KEY = "qg_rng_state"


def training_seed() -> Optional[int]:
    """The seed from `nnUNet_qg_seed`, or None when it is unset or empty."""
    value = os.environ.get(SEED_ENV, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"{SEED_ENV}={value!r} is not an integer. Set it to a whole number (e.g. "
                           f"{SEED_ENV}=0) or unset it for nnU-Net's unseeded training.") from None


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def rng_states() -> dict:
    """The states of Python's, numpy's and torch's global generators (CUDA's where present)."""
    states = {"random": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    """Put the global generators back where `rng_states()` found them."""
    random.setstate(states["random"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])


@contextmanager
def single_threaded_data_loading() -> Iterator[None]:
    """nnUNet_n_proc_DA=0 inside the block (nnU-Net's get_dataloaders reads it), restored afterwards."""
    before = os.environ.get(N_PROC_DA_ENV)
    os.environ[N_PROC_DA_ENV] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ[N_PROC_DA_ENV]
        else:
            os.environ[N_PROC_DA_ENV] = before


class SeededTraining(CheckpointExtras):
    """Put before the trainer in the bases: honours `nnUNet_qg_seed` (see the module docstring)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.training_seed = training_seed()
        self._resumed_rng_states: Optional[dict] = None
        if self.training_seed is not None and hasattr(self, "unlabeled_seed"):
            # a semi-supervised trainer: its unlabelled loader gets its own seeded worker(s)
            self.unlabeled_seed = self.training_seed
            self.unlabeled_num_processes = max(1, get_allowed_n_proc_DA())

    def initialize(self):
        if self.training_seed is not None and not self.was_initialized:
            seed_everything(self.training_seed)
        super().initialize()

    def get_dataloaders(self):
        if self.training_seed is None:
            return super().get_dataloaders()
        self.print_to_log_file(f"{SEED_ENV}={self.training_seed}: seeded training; nnU-Net's labelled and "
                               f"validation loaders run in the main process")
        with single_threaded_data_loading():
            return super().get_dataloaders()

    def on_train_start(self):
        super().on_train_start()
        if self.training_seed is None:
            return
        if self._resumed_rng_states is not None:  # --c: go on where the checkpoint's run was
            set_rng_states(self._resumed_rng_states)
            self.print_to_log_file(f"{SEED_ENV}: random states taken back from the checkpoint")
        else:  # whatever the set-up drew, every arm starts its patches alike
            seed_everything(self.training_seed + 1)

    def checkpoint_extras(self) -> dict:
        extras = super().checkpoint_extras()
        if self.training_seed is not None:
            extras[RNG_STATE_KEY] = rng_states()
        return extras

    def load_checkpoint_extras(self, checkpoint: dict) -> None:
        super().load_checkpoint_extras(checkpoint)
        if self.training_seed is not None:
            self._resumed_rng_states = checkpoint.get(RNG_STATE_KEY)
