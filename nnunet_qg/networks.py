"""Small helpers around nnU-Net networks (DDP / torch.compile wrappers, batch outputs)."""
import torch
from torch import nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel as DDP


def unwrap_network(network: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers."""
    if isinstance(network, DDP):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network


def set_deep_supervision(network: nn.Module, enabled: bool) -> None:
    """Switch deep supervision of an nnU-Net architecture (as nnUNetTrainer does)."""
    unwrap_network(network).decoder.deep_supervision = enabled


def highest_resolution(output):
    """The full-resolution output of a network with or without deep supervision (a list or a tensor)."""
    return output[0] if isinstance(output, (list, tuple)) else output


def split_batch(output, n: int, second: bool = False):
    """The first n samples of a network output (a list with deep supervision, or a tensor), or with
    `second` the rest."""
    part = slice(n, None) if second else slice(None, n)
    return [o[part] for o in output] if isinstance(output, (list, tuple)) else output[part]


def batch_probabilities(logits: torch.Tensor, has_regions: bool) -> torch.Tensor:
    """Per-voxel probabilities of a batch of logits (B, C, ...): softmax over the channel axis, or a
    sigmoid per region; float32 and differentiable.

    Not nnU-Net's LabelManager.apply_inference_nonlin: that one takes a single case (C, ...), so on a
    batch it normalises across the batch axis, and it runs without gradient."""
    logits = logits.float()
    return torch.sigmoid(logits) if has_regions else torch.softmax(logits, 1)
