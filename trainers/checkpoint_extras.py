"""A mixin that adds top-level entries to nnU-Net's checkpoint, for every mixin and trainer at once.

nnU-Net's `save_checkpoint` builds its dictionary and writes it with `torch.save`; it has no hook
for extra entries. Each class that needs some (`nnUNetTrainerSSL`: the teacher and g under
`ssl_state`; `SeededTraining`: the random states under `qg_rng_state`) overrides
`checkpoint_extras()` / `load_checkpoint_extras(checkpoint)` cooperatively (calling `super()`), and
this mixin writes nnU-Net's checkpoint under a temporary name, reads it back once, adds all extras,
writes it once more and renames it: one extra read and write whoever adds entries, and never a
half-written checkpoint. On resume nnU-Net reads the file (its `load_checkpoint` takes only a path
in nnunetv2 2.8) and this mixin reads it once more for the extras, onto the CPU: each taker copies its
tensors to where they belong (module.load_state_dict into the device's parameters and buffers, torch's
Optimizer.load_state_dict to its parameters' device; the random states are CPU tensors anyway).
"""
from typing import Union

import torch

from nnunet_qg.atomic import atomic_path


class CheckpointExtras:
    """Put before nnUNetTrainer in the bases; override `checkpoint_extras` / `load_checkpoint_extras`."""

    def checkpoint_extras(self) -> dict:
        """Top-level entries to add to nnU-Net's checkpoint; subclasses extend `super()`'s."""
        return {}

    def load_checkpoint_extras(self, checkpoint: dict) -> None:
        """Take back what `checkpoint_extras` wrote (called after nnU-Net's `load_checkpoint`)."""

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0 or self.disable_checkpointing:
            return super().save_checkpoint(filename)
        extras = self.checkpoint_extras()  # before writing: nothing between here and the next step draws
        with atomic_path(filename) as tmp:
            super().save_checkpoint(tmp)
            if extras:
                checkpoint = torch.load(tmp, map_location="cpu", weights_only=False)
                checkpoint.update(extras)
                torch.save(checkpoint, tmp)

    def load_checkpoint(self, filename_or_checkpoint: Union[dict, str]) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        checkpoint = torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False) \
            if isinstance(filename_or_checkpoint, str) else filename_or_checkpoint
        self.load_checkpoint_extras(checkpoint)
