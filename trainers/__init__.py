"""nnUNetTrainer subclasses of nnunet-qg (installed as `nnunet_qg.trainers`)."""
from nnunet_qg.trainers.nnUNetTrainerSSL import nnUNetTrainerSSL
from nnunet_qg.trainers.nnUNetTrainerSSL_short import nnUNetTrainerSSL_debug, nnUNetTrainerSSL_demo
from nnunet_qg.trainers.nnUNetTrainerQGWarmup import nnUNetTrainerQGWarmup
from nnunet_qg.trainers.nnUNetTrainerQGWarmup_short import (nnUNetTrainerQGWarmup_cpuBench, nnUNetTrainerQGWarmup_debug,
                                                            nnUNetTrainerQGWarmup_gpuBench)

__all__ = ["nnUNetTrainerSSL", "nnUNetTrainerSSL_debug", "nnUNetTrainerSSL_demo", "nnUNetTrainerQGWarmup",
           "nnUNetTrainerQGWarmup_debug", "nnUNetTrainerQGWarmup_cpuBench", "nnUNetTrainerQGWarmup_gpuBench"]
