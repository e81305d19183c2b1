"""One wording for the device a benchmark ran on (stated next to every measured number)."""
import os
import platform

import torch


def describe_device(device_type: str) -> str:
    """'NVIDIA H200 (CUDA), 16 CPU cores, torch 2.x' or 'CPU (x86_64), 2 cores, torch 2.x'."""
    if device_type == "cuda" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA), {os.cpu_count()} CPU cores, torch {torch.__version__}"
    return f"CPU ({platform.processor() or platform.machine()}), {os.cpu_count()} cores, torch {torch.__version__}"
