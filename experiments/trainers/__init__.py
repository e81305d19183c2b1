"""The research trainers (installed as `nnunet_qg.experiments.trainers`): nnU-Net finds them by name through
the same index module as the shipped ones (nnunet_qg/_ext_trainers/nnunet_qg_trainer_index.py)."""
from nnunet_qg.experiments.trainers.nnUNetTrainerQGDrift import (nnUNetTrainerQGDrift, nnUNetTrainerQGDrift_cpuBench,
                                                                 nnUNetTrainerQGDrift_debug,
                                                                 nnUNetTrainerQGDrift_gpuBench)
from nnunet_qg.experiments.trainers.research_options import nnUNetTrainerQGWarmup_debug2gSteps
from nnunet_qg.experiments.trainers.nnUNetTrainerSelfTrain import (
    nnUNetTrainerSelfTrain, nnUNetTrainerSelfTrain_evidence, nnUNetTrainerSelfTrain_QG, nnUNetTrainerSelfTrain_QG_debug,
    nnUNetTrainerSelfTrain_QG_evidence, nnUNetTrainerSelfTrainOracle, nnUNetTrainerSelfTrainOracle_evidence)

__all__ = sorted(name for name, obj in dict(globals()).items() if name.startswith("nnUNetTrainer") and isinstance(obj, type))
