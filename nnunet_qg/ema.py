"""Exponential-moving-average teacher (Mean Teacher) for any nnU-Net network."""
import copy

import torch
from torch import nn


class EMATeacher(nn.Module):
    """A frozen copy of the student whose weights follow the student's as an EMA.

    The decay ramps up as min(decay, 1 - 1 / (step + 1)) so early teachers are not stuck
    at the random initialisation (Tarvainen & Valpola, 2017).
    """

    def __init__(self, student: nn.Module, decay: float = 0.99):
        super().__init__()
        self.module = copy.deepcopy(student)
        self.module.requires_grad_(False)
        self.module.eval()
        self.decay = decay
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        step = int(self.num_updates.item())
        return min(self.decay, 1.0 - 1.0 / (step + 1))

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """Move the teacher one EMA step towards `student` (same architecture)."""
        d = self.current_decay()
        for t, s in zip(self.module.parameters(), student.parameters()):
            t.mul_(d).add_(s.detach(), alpha=1.0 - d)
        for t, s in zip(self.module.buffers(), student.buffers()):
            t.copy_(s)
        self.num_updates += 1

    def forward(self, x: torch.Tensor):
        return self.module(x)

    def train(self, mode: bool = True):
        # the teacher always predicts in eval mode
        super().train(False)
        return self
