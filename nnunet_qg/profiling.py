"""Peak tensor memory of a profiled piece of work, on any device (the CPU included).

`torch.cuda.max_memory_allocated` exists on CUDA only; on a machine without a GPU the memory that a
training step needs can still be compared between trainers from the profiler's memory timeline:
every tensor alive during the profiled work (parameters, gradients, optimizer state, activations),
with the sizes the step allocates. Process memory (RSS) cannot show it: the interpreter and the
libraries dwarf a small patch's activations.
"""
import json
import os
import tempfile
import warnings

import torch


def profile_memory() -> torch.profiler.profile:
    """A profiler that records what `peak_tensor_bytes` needs."""
    return torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True,
                                  record_shapes=True, with_stack=True)


def peak_tensor_bytes(prof: torch.profiler.profile, device: str = "cpu") -> int:
    """Largest total size of the live tensors on `device` during the work profiled by `prof`
    (made with `profile_memory()`)."""
    handle, path = tempfile.mkstemp(suffix=".json")
    os.close(handle)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the timeline export is deprecated for CUDA only
            prof.export_memory_timeline(path, device=device)
        with open(path) as f:
            _, sizes = json.load(f)
    finally:
        os.remove(path)
    return int(max((sum(s) for s in sizes), default=0))
