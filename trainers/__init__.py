"""nnUNetTrainer subclasses of nnunet-qg (installed as `nnunet_qg.trainers`)."""
from nnunet_qg.trainers.nnUNetTrainerSSL import nnUNetTrainerSSL
from nnunet_qg.trainers.nnUNetTrainerSSL_short import nnUNetTrainerSSL_debug, nnUNetTrainerSSL_demo

__all__ = ["nnUNetTrainerSSL", "nnUNetTrainerSSL_debug", "nnUNetTrainerSSL_demo"]
