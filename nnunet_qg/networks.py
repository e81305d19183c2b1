"""Small helpers around nnU-Net networks (DDP / torch.compile wrappers)."""
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
