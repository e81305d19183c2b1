"""nnUNetTrainer subclasses of nnunet-qg (installed as `nnunet_qg.trainers`); the research-only ones are in
`nnunet_qg.experiments.trainers`."""
from nnunet_qg.trainers.nnUNetTrainerBaselines import nnUNetTrainerFixMatch, nnUNetTrainerMeanTeacher
from nnunet_qg.trainers.nnUNetTrainerBCP import nnUNetTrainerBCP, nnUNetTrainerBCP_QG
from nnunet_qg.trainers.nnUNetTrainerQGSSL import (nnUNetTrainerMTQW, nnUNetTrainerQGSSL, nnUNetTrainerQGSSL_gFrozen,
                                                   nnUNetTrainerQGSSL_gWeights, nnUNetTrainerQGSSL_lowMemory,
                                                   nnUNetTrainerQGSSL_PLQW, nnUNetTrainerQGSSL_PLQW_gWeights,
                                                   nnUNetTrainerQGSSL_PLQW_withG, nnUNetTrainerQGSSL_QAR)
from nnunet_qg.trainers.nnUNetTrainerQGSSL_short import (nnUNetTrainerFixMatch_debug, nnUNetTrainerMeanTeacher_debug,
                                                         nnUNetTrainerMTQW_debug, nnUNetTrainerQGSSL_debug, nnUNetTrainerQGSSL_demo,
                                                         nnUNetTrainerQGSSL_PLQW_demo, nnUNetTrainerBCP_debug,
                                                         nnUNetTrainerBCP_QG_debug,
                                                         nnUNetTrainerQGSSL_gFrozen_debug, nnUNetTrainerQGSSL_lowMemory_debug,
                                                         nnUNetTrainerQGSSL_PLQW_debug, nnUNetTrainerQGSSL_QAR_debug)
from nnunet_qg.trainers.nnUNetTrainerQGSSL import nnUNetTrainerQGWarmup
from nnunet_qg.trainers.nnUNetTrainerQGWarmup_short import (nnUNetTrainerQGWarmup_cpuBench, nnUNetTrainerQGWarmup_debug,
                                                            nnUNetTrainerQGWarmup_gpuBench)
from nnunet_qg.trainers.nnUNetTrainerPLControls import (nnUNetTrainerOraclePL, nnUNetTrainerShuffledPL,
                                                        nnUNetTrainerUnweightedPL)
from nnunet_qg.trainers.nnUNetTrainerSSL import nnUNetTrainerSSL
from nnunet_qg.trainers.nnUNetTrainer_evidence import (
    nnUNetTrainer_evidence, nnUNetTrainer_evidenceCurve, nnUNetTrainer_evidenceTiny, nnUNetTrainerMeanTeacher_evidence,
    nnUNetTrainerOraclePL_evidence, nnUNetTrainerOraclePL_evidenceTiny, nnUNetTrainerQGSSL_evidence,
    nnUNetTrainerQGSSL_PLQW_evidence, nnUNetTrainerQGSSL_PLQW_gWeights_evidence,
    nnUNetTrainerQGSSL_PLQW_gWeightsRefreshCorrupted_evidence, nnUNetTrainerQGSSL_PLQWbatchSize_evidence,
    nnUNetTrainerQGSSL_PLQWema999_evidence, nnUNetTrainerQGSSL_PLQWfg33_evidence, nnUNetTrainerQGSSL_PLQWtau08_evidence,
    nnUNetTrainerQGSSL_PLQWlean_evidence, nnUNetTrainerQGSSL_PLQWmirrorAverage_evidence,
    nnUNetTrainerQGSSL_PLQWskipAbsent_evidence, nnUNetTrainerQGSSL_PLQWflipAll_evidence, nnUNetTrainerBCP_evidence,
    nnUNetTrainerBCP_QG_evidence, nnUNetTrainerBCP_QGlabelled_evidence, nnUNetTrainerBCPlabelled_evidence,
    nnUNetTrainerBCPOracle_evidence, nnUNetTrainerBCPOraclelabelled_evidence,
    nnUNetTrainerQGSSL_PLQWunlabeled2x_evidence, nnUNetTrainerShuffledPL_evidence, nnUNetTrainerUnweightedPL_evidence,
    nnUNetTrainerUnweightedPL_evidenceTiny)
from nnunet_qg.trainers.nnUNetTrainer_benchmark import *  # noqa: F401,F403  (the <trainer>_<budget> variants)
from nnunet_qg.trainers.nnUNetTrainerSSL_short import nnUNetTrainerSSL_debug, nnUNetTrainerSSL_demo

__all__ = sorted(name for name, obj in dict(globals()).items() if name.startswith("nnUNetTrainer") and isinstance(obj, type))
