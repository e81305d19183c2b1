"""nnunet-qg: quality-guided semi-supervised learning for nnU-Net v2.

Importing this package is cheap (it runs at interpreter start through a .pth hook).
Trainer classes are loaded lazily: `from nnunet_qg import nnUNetTrainerSSL` gives the same
class object that `nnUNetv2_train -tr nnUNetTrainerSSL` uses.
"""
from nnunet_qg.ext_trainer_path import register_ext_trainer_path

__version__ = "0.1.0"

register_ext_trainer_path()


def __getattr__(name: str):
    if name.startswith("nnUNetTrainer"):
        from nnunet_qg import trainers

        if name in trainers.__all__:
            return getattr(trainers, name)
    raise AttributeError(f"module 'nnunet_qg' has no attribute {name!r}")
