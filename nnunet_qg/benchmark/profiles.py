"""Benchmark arms and budget profiles."""
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

# arm -> base trainer; "full_supervision" trains on the whole pool with all labels (upper bound)
ARMS: Dict[str, str] = {
    "supervised": "nnUNetTrainer",
    "mean_teacher": "nnUNetTrainerMeanTeacher",
    "fixmatch": "nnUNetTrainerFixMatch",
    "mt_qw": "nnUNetTrainerMTQW",
    "pl_qw": "nnUNetTrainerQGSSL_PLQW_gWeights",  # the paper's PL-QW: g's weights
    "pl_mirror": "nnUNetTrainerQGSSL_PLQW",  # PL-QW as shipped: the teacher's mirror agreement as q
    "qar": "nnUNetTrainerQGSSL_QAR",
    "qg_ssl": "nnUNetTrainerQGSSL",  # as shipped: mirror-agreement PL-QW + QAR, g refreshed after the warm-up
    "qg_ssl_frozen": "nnUNetTrainerQGSSL_gFrozen",  # the paper: g's PL-QW weights, g frozen after the warm-up
    "full_supervision": "nnUNetTrainer",
    # control arms of the evidence profile (trainers/nnUNetTrainerPLControls.py, nnUNetTrainer_evidence.py; its
    # budget only)
    "unweighted_pl": "nnUNetTrainerUnweightedPL",  # every pseudo-label, weight 1
    "oracle_pl": "nnUNetTrainerOraclePL",  # the weights of a perfect g (withheld labels)
    "shuffled_pl": "nnUNetTrainerShuffledPL",  # g's weights permuted within the batch
    "pl_mirror_batch_size": "nnUNetTrainerQGSSL_PLQWbatchSize",  # pl_mirror normalised by B, not by sum w
    "pl_mirror_ema999": "nnUNetTrainerQGSSL_PLQWema999",  # pl_mirror with the paper's EMA decay 0.999 (ours 0.99)
    "pl_mirror_unlabeled2x": "nnUNetTrainerQGSSL_PLQWunlabeled2x",  # pl_mirror, 2 unlabelled patches per labelled
    "pl_mirror_tau08": "nnUNetTrainerQGSSL_PLQWtau08",  # pl_mirror with tau = 0.8
    "pl_mirror_fg33": "nnUNetTrainerQGSSL_PLQWfg33",  # pl_mirror, a third of the unlabelled patches on likely fg
    "pl_qw_refresh_corrupted": "nnUNetTrainerQGSSL_PLQW_gWeightsRefreshCorrupted",  # g refreshed on corrupted only
    "pl_mirror_lean": "nnUNetTrainerQGSSL_PLQWlean",  # pl_mirror re-run after the lean step (#33), paired with it
    "pl_mirror_average": "nnUNetTrainerQGSSL_PLQWmirrorAverage",  # pseudo-label from the mirror-averaged prediction
    "pl_mirror_skip_absent": "nnUNetTrainerQGSSL_PLQWskipAbsent",  # absent labels skipped, empty patches neutral
    "pl_mirror_flip_all": "nnUNetTrainerQGSSL_PLQWflipAll",  # agreement with one image mirrored along every axis
    # the strong base (issue #36): bidirectional copy-paste, without and with quality guidance, and its headroom
    "bcp": "nnUNetTrainerBCP",
    "bcp_qg": "nnUNetTrainerBCP_QG",  # the mirror agreement's weights on the pseudo-labelled part
    "bcp_oracle": "nnUNetTrainerBCPOracle",  # the weights of a perfect score (withheld labels)
    "bcp_qg_labelled": "nnUNetTrainerBCP_QGlabelled",  # bcp_qg + the plain labelled batch's loss in the same pass
    "bcp_labelled": "nnUNetTrainerBCPlabelled",  # bcp + the plain labelled batch's loss (bcp_qg_labelled's control)
    "bcp_oracle_labelled": "nnUNetTrainerBCPOraclelabelled",  # bcp_oracle + the plain labelled batch's loss
    # self-training inside one run (experiments/trainers/nnUNetTrainerSelfTrain.py): every case, the better half by
    # the quality estimate, the better half by the true Dice (withheld labels)
    "self_train": "nnUNetTrainerSelfTrain",
    "self_train_qg": "nnUNetTrainerSelfTrain_QG",
    "self_train_oracle": "nnUNetTrainerSelfTrainOracle",
    # offline self-training (nnUNetv2_qg_self_train): the first model and the retraining are both this trainer
    "offline_pl": "nnUNetTrainer",  # every unlabelled case's prediction kept as its pseudo-label
    "offline_pl_gated": "nnUNetTrainer",  # the half with the best predicted Dice (nnUNetv2_predict_quality) kept
    "offline_pl_gated_2rounds": "nnUNetTrainer",  # the same, a second round from the first round's model
    "offline_pl_gated_from_bcp": "nnUNetTrainer",  # offline_pl_gated whose first model is bcp_labelled's
    "offline_pl_gated_from_bcp_qg": "nnUNetTrainer",  # the same from bcp_qg_labelled's model (nnUNetTrainerBCP_QG's)
    "offline_pl_from_bcp": "nnUNetTrainer",  # offline_pl from bcp_labelled's model (the gate's share on this base)
}
# the offline arms' nnUNetv2_qg_self_train options (keep every case, or a fraction fixed before any run: never chosen
# on test labels); first_arm: the arm whose trainer makes the first model (--first-trainer; that arm's model of the
# same seed is kept where it trained), else the supervised arm's
OFFLINE_ARMS: Dict[str, Dict[str, object]] = {
    "offline_pl": {}, "offline_pl_gated": {"keep_fraction": 0.5},
    "offline_pl_gated_2rounds": {"keep_fraction": 0.5, "rounds": 2},
    "offline_pl_gated_from_bcp": {"keep_fraction": 0.5, "first_arm": "bcp_labelled"},
    "offline_pl_gated_from_bcp_qg": {"keep_fraction": 0.5, "first_arm": "bcp_qg_labelled"},
    "offline_pl_from_bcp": {"first_arm": "bcp_labelled"}}
# the pseudo-labelled dataset of an offline run's round r (1, 2, ...): base dataset id + OFFLINE_ID_OFFSET +
# 10 * (offline arm index) + rounds * seed + r - 1
OFFLINE_ID_OFFSET = 20
# the copy-paste arms (issue #36): the base, with quality weights, with perfect weights; each also with the plain
# labelled batch's loss
COPY_PASTE_ARMS = ("bcp", "bcp_qg", "bcp_oracle", "bcp_qg_labelled", "bcp_labelled", "bcp_oracle_labelled")
SELF_TRAIN_ARMS = ("self_train", "self_train_qg", "self_train_oracle")
# the offline arms whose first model is a copy-paste arm's
FROM_COPY_PASTE_ARMS = ("offline_pl_gated_from_bcp", "offline_pl_gated_from_bcp_qg", "offline_pl_from_bcp")
# the evidence budget only
CONTROL_ARMS = ("unweighted_pl", "oracle_pl", "shuffled_pl", "pl_mirror_batch_size", "pl_mirror_ema999",
                "pl_mirror_unlabeled2x", "pl_mirror_tau08", "pl_mirror_fg33", "pl_qw_refresh_corrupted",
                "pl_mirror_lean", "pl_mirror_average", "pl_mirror_skip_absent", "pl_mirror_flip_all") \
    + COPY_PASTE_ARMS + SELF_TRAIN_ARMS
# the default arms of the budget profiles (every budget of nnUNetTrainer_benchmark); the offline arms run where asked
# (--arms, the evidence profile): each trains two models
STANDARD_ARMS = tuple(a for a in ARMS if a not in CONTROL_ARMS and a not in OFFLINE_ARMS)
LOWER_BOUND, UPPER_BOUND = "supervised", "full_supervision"
# 2D sources have no split file of their own: the benchmark writes one (seeded) with these sizes
GENERATED_SPLITS = {"ph2": {"num_test": 50, "labelled_sets": {"20labelled": 20}, "seed": 0}}
SUPERVISED_ARMS = (LOWER_BOUND, UPPER_BOUND)
# the evidence profile's arms in the order they run: the two bounds (the gap to close), then the arms that
# decide the claim (6 runs), then the others (3 runs; docs/benchmarks.md)
EVIDENCE_ARMS = ("supervised", UPPER_BOUND, "unweighted_pl", "pl_qw", "oracle_pl", "pl_mirror", "qg_ssl", "shuffled_pl",
                 "mean_teacher", "pl_mirror_batch_size", "pl_mirror_ema999", "pl_mirror_unlabeled2x",
                 "pl_mirror_tau08", "pl_mirror_fg33", "pl_qw_refresh_corrupted", "pl_mirror_lean", "pl_mirror_average",
                 "pl_mirror_skip_absent", "pl_mirror_flip_all", "offline_pl", "offline_pl_gated",
                 "offline_pl_gated_2rounds") + COPY_PASTE_ARMS + FROM_COPY_PASTE_ARMS + SELF_TRAIN_ARMS
EVIDENCE_FEWER_RUNS = {UPPER_BOUND: 3, "qg_ssl": 3, "shuffled_pl": 3, "mean_teacher": 3, "pl_mirror_batch_size": 3,
                       "pl_mirror_ema999": 3, "pl_mirror_unlabeled2x": 3, "pl_mirror_tau08": 3, "pl_mirror_fg33": 3,
                       "pl_qw_refresh_corrupted": 3, "pl_mirror_lean": 3, "pl_mirror_average": 3,
                       "pl_mirror_skip_absent": 3, "pl_mirror_flip_all": 3, "offline_pl": 3, "offline_pl_gated": 3,
                       "offline_pl_gated_2rounds": 3, **{arm: 3 for arm in FROM_COPY_PASTE_ARMS}}

# the ACDC protocol's arms (profile evidence-acdc): the bounds, today's pseudo-label arms (g's weights where g learns
# from 6 labelled volumes: pl_qw), offline self-training, the copy-paste base
ACDC_ARMS = ("supervised", UPPER_BOUND, "unweighted_pl", "pl_mirror", "oracle_pl", "pl_qw", "offline_pl",
             "offline_pl_gated", "offline_pl_gated_2rounds") + COPY_PASTE_ARMS + FROM_COPY_PASTE_ARMS \
    + SELF_TRAIN_ARMS


@dataclass(frozen=True)
class Profile:
    """A budget: the trainer variant suffix (see nnUNetTrainer_benchmark.BUDGETS) and how to run the arms."""

    name: str
    budget: str
    device: str
    concurrency: int  # arms trained at once
    n_proc_DA: int  # nnU-Net data-augmentation workers per training (and per unlabelled loader)
    preprocess_processes: int
    tta: bool
    fractions: Tuple[str, ...] = ("10pct",)
    configuration: str = "3d_fullres"
    source_format: str = "msd"  # see runner.CONVERTERS
    repeats: int = 1
    arms: Tuple[str, ...] = STANDARD_ARMS
    seed: Optional[int] = None  # run r of every arm trains with nnUNet_qg_seed = seed + r (None: unseeded)
    arm_repeats: Dict[str, int] = field(default_factory=dict)  # fewer runs for some arms (runs 0..k-1)
    fold: str = "0"  # "all" where the labelled cases are too few for nnU-Net's 5-fold split
    withheld_labels: bool = False  # also preprocess the unlabelled cases with their labels (control arms)
    max_unlabelled: int = None  # subsets, for the pipeline test only
    max_test: int = None
    extra_env: Dict[str, str] = field(default_factory=dict)

    def trainer(self, arm: str) -> str:
        return f"{ARMS[arm]}_{self.budget}"

    def seed_of(self, repeat: int) -> Optional[int]:
        """nnUNet_qg_seed of run `repeat` (the same for every arm of the run; None: unseeded)."""
        return None if self.seed is None else self.seed + repeat

    def runs_of(self, arm: str) -> int:
        return min(self.repeats, self.arm_repeats.get(arm, self.repeats))


PROFILES: Dict[str, Profile] = {
    # one H100/H200, all arms at once, nnU-Net's reference budget (40 epochs x 100 iterations)
    "gpu": Profile("gpu", "40epochs", "cuda", concurrency=8, n_proc_DA=2, preprocess_processes=12, tta=True),
    # a 2-core CPU in under an hour: one arm at a time, 10 x 10 iterations, batch 2, no test-time mirroring
    "cpu-small": Profile("cpu-small", "cpuSmall", "cpu", concurrency=1, n_proc_DA=0, preprocess_processes=2,
                         tta=False),
    # a 2-core CPU in about 100 minutes, long enough for the networks to segment (cpu-small is not): the
    # lower bound, Mean Teacher and QG-SSL, 20 x 30 iterations at batch 2, one loader worker each
    "cpu-medium": Profile("cpu-medium", "cpuMedium", "cpu", concurrency=1, n_proc_DA=1, preprocess_processes=2,
                          tta=False, arms=("supervised", "mean_teacher", "qg_ssl")),
    # PH2 (2D dermoscopy, RGB): 20 labelled, 130 unlabelled, 50 test, the 2d configuration
    "ph2-gpu": Profile("ph2-gpu", "40epochs", "cuda", concurrency=8, n_proc_DA=2, preprocess_processes=12, tta=True,
                       fractions=("20labelled",), configuration="2d", source_format="ph2"),
    "ph2-cpu-small": Profile("ph2-cpu-small", "cpuSmall", "cpu", concurrency=1, n_proc_DA=0, preprocess_processes=2,
                             tta=False, fractions=("20labelled",), configuration="2d", source_format="ph2"),
    # the evidence protocol (docs/benchmarks.md): Hippocampus 2d, 1 labelled case, 60 x 50 iterations at batch 4,
    # paired seeds; 6 runs of the arms that decide the claim, 3 of the others
    "evidence": Profile("evidence", "evidence", "cpu", concurrency=1, n_proc_DA=1, preprocess_processes=2, tta=False,
                        fractions=("1labelled",), configuration="2d", fold="all", repeats=6, seed=0,
                        arms=EVIDENCE_ARMS, arm_repeats=EVIDENCE_FEWER_RUNS, withheld_labels=True),
    # the second protocol (issue #36): ACDC at 64 x 64 in plane (../shared/data/acdc), 2d, the SSL4MIS 5 % split
    # (3 labelled patients, 6 volumes), fold all, the evidence budget; today's arms first, 3 seeds each
    "evidence-acdc": Profile("evidence-acdc", "evidence", "cpu", concurrency=1, n_proc_DA=1, preprocess_processes=2,
                             tta=False, fractions=("3patients",), configuration="2d", fold="all", repeats=3, seed=0,
                             arms=ACDC_ARMS, withheld_labels=True),
    # the evidence protocol's pipeline in the test suite: every control path, paired runs, a few cases
    "evidence-tiny": Profile("evidence-tiny", "evidenceTiny", "cpu", concurrency=1, n_proc_DA=0, preprocess_processes=2,
                             tta=False, fractions=("1labelled",), configuration="2d", fold="all", repeats=2, seed=0,
                             arms=("supervised", "unweighted_pl", "oracle_pl", "offline_pl_gated"), withheld_labels=True,
                             max_unlabelled=4, max_test=2),
    # the pipeline test: two arms, a handful of iterations, a few cases
    "tiny": Profile("tiny", "benchTiny", "cpu", concurrency=1, n_proc_DA=0, preprocess_processes=2, tta=False,
                    arms=("supervised", "qg_ssl"), max_unlabelled=4, max_test=2),
    "ph2-tiny": Profile("ph2-tiny", "benchTiny", "cpu", concurrency=1, n_proc_DA=0, preprocess_processes=2, tta=False,
                        fractions=("20labelled",), configuration="2d", source_format="ph2",
                        arms=("supervised", "qg_ssl"), max_unlabelled=4, max_test=2),
}
