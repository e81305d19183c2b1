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
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))  # in the checkpoint
        self._updates = None  # the same count on the host: reading the buffer would wait for the GPU

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self._updates = None
        return super().load_state_dict(state_dict, strict, assign)

    def current_decay(self) -> float:
        if self._updates is None:
            self._updates = int(self.num_updates.item())
        return min(self.decay, 1.0 - 1.0 / (self._updates + 1))

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """Move the teacher one EMA step towards `student` (same architecture): t += (1 - d) (s - t),
        as a few multi-tensor kernels instead of two per parameter, without waiting for the GPU."""
        d = self.current_decay()
        teacher_params = list(self.module.parameters())
        student_params = [p.detach() for p in student.parameters()]
        torch._foreach_lerp_(teacher_params, student_params, 1.0 - d)
        teacher_buffers, student_buffers = list(self.module.buffers()), list(student.buffers())
        if teacher_buffers:
            torch._foreach_copy_(teacher_buffers, student_buffers)
        self.num_updates += 1
        self._updates += 1

    def forward(self, x: torch.Tensor):
        return self.module(x)

    def train(self, mode: bool = True):
        # the teacher always predicts in eval mode
        super().train(False)
        return self
