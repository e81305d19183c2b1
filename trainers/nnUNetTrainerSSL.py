"""Semi-supervised nnU-Net trainer skeleton: labelled + unlabelled batches and an EMA teacher.

Each unlabelled patch comes as two spatially aligned views (see nnunet_qg.unlabeled.two_views):
the student sees the fully augmented one, the EMA teacher the one without intensity augmentation.
The teacher's part of a step (`unlabeled_targets`) runs before the student's pass, the unlabelled loss
(`compute_unlabeled_loss`) after it. Here that is Mean Teacher consistency (softmax MSE between student and
teacher); subclasses replace the two. Hyperparameters are attributes set in __init__,
variants are small subclasses, as in nnU-Net.
"""
import glob
import os
from contextlib import nullcontext
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast
from torch import distributed as dist

from nnunet_qg.ema import EMATeacher
from nnunet_qg.networks import (batch_probabilities, highest_resolution, set_deep_supervision, split_batch,
                               unwrap_network)
from nnunet_qg.plotting import plot_progress_panels
from nnunet_qg.quality.metrics import finite_mean
from nnunet_qg.ramps import sigmoid_rampup
from nnunet_qg.trainers.checkpoint_extras import CheckpointExtras
from nnunet_qg.unlabeled.errors import UnlabeledDataError
from nnunet_qg.unlabeled.data_loader import (make_augmenter, nnUNetUnlabeledDataLoader,
                                             nnUNetUnlabeledDatasetBlosc2, shard_for_rank, unlabeled_workers,
                                             worker_seeds)
from nnunet_qg.unlabeled.foreground_prior import RelativeForegroundPrior
from nnunet_qg.unlabeled.paths import preprocessed_unlabeled_folder
from nnunet_qg.unlabeled.preprocess import check_preprocessed_unlabeled
from nnunet_qg.unlabeled.two_views import TwoViewTransform, split_views
from nnunet_qg.validation_dice import hard_dice_counts, mean_foreground_dice

SSL_STATE_KEY = "ssl_state"

# a value logged from a training step: a number, or a 0-d tensor left on the device until the step ends
StepValue = Union[float, torch.Tensor]


class UnlabeledBatch(NamedTuple):
    """One unlabelled batch inside a training step: the student's view, the teacher's view, and what the
    teacher made of it before the student's pass (`unlabeled_targets`: e.g. Mean Teacher's probabilities,
    QG-SSL's pseudo-labels and their scores)."""

    view_student: torch.Tensor
    view_teacher: torch.Tensor
    targets: Any


def to_host(values: Dict[str, StepValue]) -> Dict[str, np.float64]:
    """Logged step values as numbers, with one device-to-host copy for all tensors (each separate
    read would make the host wait for the GPU mid-step)."""
    keys = [k for k, v in values.items() if isinstance(v, torch.Tensor)]
    out = {k: np.float64(v) for k, v in values.items() if k not in keys}
    if keys:
        copied = torch.stack([values[k].detach().float().reshape(()) for k in keys]).cpu().numpy()
        out.update({k: np.float64(v) for k, v in zip(keys, copied)})
    return out


class nnUNetTrainerSSL(CheckpointExtras, nnUNetTrainer):
    """Base semi-supervised trainer (Mean Teacher consistency as its unlabelled loss)."""

    # values logged once per epoch besides nnU-Net's own (key -> output of train_step)
    ssl_log_keys: Tuple[str, ...] = ("ssl_loss_supervised", "ssl_loss_unlabeled", "ssl_unlabeled_weight")
    # values logged once per epoch from validation: the EMA teacher's pseudo-Dice next to nnU-Net's
    # mean_fg_dice of the student (subclasses add theirs)
    ssl_val_log_keys: Tuple[str, ...] = ("ssl_teacher_val_dice",)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.unlabeled_batch_size: Optional[int] = None  # None: same as the labelled batch size
        # None: unlabeled_workers(nnUNet_n_proc_DA), half of nnU-Net's workers (at least 1; 0 when nnU-Net's are 0:
        # then in the main process), as the two loaders share the cores; seeded runs set max(1, nnUNet_n_proc_DA)
        self.unlabeled_num_processes: Optional[int] = None
        self.unlabeled_seed: Optional[int] = None  # None: drawn at start; logged and checkpointed
        # share of each unlabelled batch centred where the fold's labelled training cases have foreground (relative
        # to the case's shape: RelativeForegroundPrior), as nnU-Net oversamples labelled foreground (0.33). 0: off,
        # uniform patches, drawn exactly as before the option existed
        self.unlabeled_oversample_foreground_percent = 0.0
        self.ema_decay = 0.99
        self.unlabeled_loss_weight = 1.0
        self.unlabeled_rampup_fraction = 0.2  # sigmoid ramp over this fraction of num_epochs
        self.augment_teacher_intensity = False  # True: the teacher view gets its own intensity draw
        # False: one forward pass over labelled + unlabelled patches (fewest kernel launches: fastest at
        # small patches). True: backpropagate the labelled pass before the unlabelled one runs (about
        # half the activation memory, one more pass of launches: for patches planned near the GPU's limit)
        self.unlabeled_separate_backward = False
        # under DDP on a GPU, a trial joint pass at the start of training chooses separate passes when the joint
        # one would not fit, keeping this share of the GPU's memory free (choose_backward_mode)
        self.joint_pass_memory_margin = 0.1
        # benchmark trainers only: the unlabelled patches carry their withheld labels (spatially augmented
        # with them) as `self._unlabeled_target`, for oracle weights and for judging g; never for a loss
        self.unlabeled_keeps_segmentation = False
        self._unlabeled_target: Optional[torch.Tensor] = None
        self._teacher_val_counts: List[dict] = []
        self._val_teacher_logits: Optional[torch.Tensor] = None

        self.teacher: Optional[EMATeacher] = None
        self.dataloader_unlabeled = None
        self.unlabeled_identifiers: Optional[List[str]] = None
        self._current_unlabeled_weight = 0.0
        for key in self.ssl_log_keys + self.ssl_val_log_keys:
            self.logger.local_logger.my_fantastic_logging.setdefault(key, [])

    # ------------------------------------------------------------------ set-up
    def initialize(self):
        if self.is_cascaded:
            raise RuntimeError(f"{self.__class__.__name__} does not support cascaded configurations "
                               f"('{self.configuration_name}'): unlabelled cases have no previous-stage "
                               f"segmentation. Use 3d_fullres, 3d_lowres or 2d.")
        super().initialize()
        self.teacher = EMATeacher(unwrap_network(self.network), self.ema_decay).to(self.device)
        set_deep_supervision(self.teacher.module, False)

    @property
    def preprocessed_unlabeled_folder(self) -> str:
        return preprocessed_unlabeled_folder(self.plans_manager.dataset_name,
                                             self.configuration_manager.data_identifier)

    def check_unlabeled_data(self) -> List[str]:
        """Preprocessed unlabelled ids; a clear error if missing, stale or leaking labels."""
        labeled = self.dataset_class.get_identifiers(self.preprocessed_dataset_folder)
        return check_preprocessed_unlabeled(self.plans_manager.dataset_name, self.configuration_name,
                                            self.plans_manager.plans, self.dataset_json,
                                            self.configuration_manager.data_identifier, labeled)

    def _training_transforms(self):
        """nnU-Net's training augmentation and initial patch size, exactly as get_dataloaders builds them."""
        rotation_for_DA, do_dummy_2d_data_aug, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        transforms = self.get_training_transforms(
            self.configuration_manager.patch_size, rotation_for_DA, self._get_deep_supervision_scales(),
            mirror_axes, do_dummy_2d_data_aug, use_mask_for_norm=self.configuration_manager.use_mask_for_norm,
            is_cascaded=self.is_cascaded, foreground_labels=self.label_manager.foreground_labels,
            regions=self.label_manager.foreground_regions if self.label_manager.has_regions else None,
            ignore_label=self.label_manager.ignore_label)
        return transforms, initial_patch_size

    def get_unlabeled_dataloader(self):
        """Unlabelled patches through nnU-Net's augmentation, in background workers."""
        world_size = dist.get_world_size() if self.is_ddp else 1
        identifiers = shard_for_rank(self.unlabeled_identifiers, self.local_rank, world_size)
        dataset = nnUNetUnlabeledDatasetBlosc2(self.preprocessed_unlabeled_folder, identifiers)
        transforms, initial_patch_size = self._training_transforms()
        batch_size = self.unlabeled_batch_size or self.batch_size
        oversample = self.unlabeled_oversample_foreground_percent
        loader = nnUNetUnlabeledDataLoader(dataset, batch_size, initial_patch_size,
                                           self.configuration_manager.patch_size, self.label_manager,
                                           transforms=TwoViewTransform(transforms, self.augment_teacher_intensity,
                                                                       self.unlabeled_keeps_segmentation),
                                           oversample_foreground_percent=oversample,
                                           foreground_prior=self.unlabeled_foreground_prior() if oversample > 0
                                           else None)
        n_proc = unlabeled_workers(get_allowed_n_proc_DA()) if self.unlabeled_num_processes is None \
            else self.unlabeled_num_processes
        if self.unlabeled_seed is None:
            self.unlabeled_seed = int(np.random.randint(0, 2 ** 31 - 1))
        seeds = worker_seeds(self.unlabeled_seed, self.local_rank, n_proc)
        self.print_to_log_file(f"Unlabelled data: {len(identifiers)} of {len(self.unlabeled_identifiers)} cases "
                               f"on this rank, batch size {batch_size}, {n_proc} workers, seed "
                               f"{self.unlabeled_seed}, from {self.preprocessed_unlabeled_folder}")
        if oversample > 0:
            forced = sum(loader.get_do_oversample(j) for j in range(batch_size))
            self.print_to_log_file(f"Unlabelled patches: {forced} of each batch of {batch_size} centred on the "
                                   f"foreground prior of the labelled training cases (unlabeled_oversample_"
                                   f"foreground_percent {oversample})")
        augmenter = make_augmenter(loader, n_proc, seeds, pin_memory=self.device.type == "cuda")
        _ = next(augmenter)
        return augmenter

    def unlabeled_foreground_prior(self) -> RelativeForegroundPrior:
        """Where this fold's labelled training cases have foreground, relative to their shape (for
        `unlabeled_oversample_foreground_percent`)."""
        tr_keys, _ = self.do_split()
        dataset = self.dataset_class(self.preprocessed_dataset_folder, tr_keys)
        return RelativeForegroundPrior.from_dataset(dataset, tr_keys)

    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        # fail on bad unlabelled data before any worker starts: one line (the message names the command to
        # run), not a traceback through nnU-Net's run_training
        try:
            self.unlabeled_identifiers = self.check_unlabeled_data()
        except UnlabeledDataError as error:
            self.print_to_log_file(f"ERROR: {error}")
            raise SystemExit(f"ERROR: {error}") from None
        super().on_train_start()
        if self.local_rank == 0:  # a run killed while saving leaves only a temporary file behind
            for stale in glob.glob(join(self.output_folder, "checkpoint_*.pth.tmp-*")):
                os.remove(stale)
        self.dataloader_unlabeled = self.get_unlabeled_dataloader()
        self.choose_backward_mode()

    def choose_backward_mode(self) -> None:
        """Under DDP on a GPU: decide at the start, the same on every rank, whether the joint labelled +
        unlabelled pass fits (joint_pass_fits); if it does not on any rank, train with separate passes from the
        first step. Outside DDP nothing is decided here: a joint pass that runs out of memory switches by itself
        (forward_backward), which under DDP would leave the ranks on different paths, hours into the run."""
        if self.unlabeled_separate_backward or not self.is_ddp or self.device.type != "cuda":
            return
        fits = self.joint_pass_fits()
        too_big = torch.tensor([0 if fits else 1], device=self.device)
        dist.all_reduce(too_big, op=dist.ReduceOp.MAX)
        if too_big.item():
            self.unlabeled_separate_backward = True
        self.print_to_log_file("Trial joint labelled + unlabelled pass: " + (
            "does not fit on every rank, so the two passes run one after the other (unlabeled_separate_backward = "
            "True)" if too_big.item() else "fits; one joint pass per step"))

    def joint_pass_fits(self) -> bool:
        """One trial of the joint pass's memory on random patches of the batches' shapes: the student's forward
        and backward over labelled + unlabelled patches (under DDP without the all-reduce) and the teacher's
        forward. No optimizer step, the gradients are dropped and no loader is read, so training is unchanged.
        True if it ran and (on a GPU) its peak stayed below (1 - joint_pass_memory_margin) of the GPU's memory."""
        shape = (self.num_input_channels, *self.configuration_manager.patch_size)
        cuda = self.device.type == "cuda"
        buffers = {k: v.clone() for k, v in self.network.named_buffers()}  # e.g. batch-norm statistics
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        ran = True
        with torch.random.fork_rng(devices=[self.device] if cuda else []):  # the run's random draws unchanged
            try:
                data = torch.randn((self.batch_size, *shape), device=self.device)
                view = torch.randn(((self.unlabeled_batch_size or self.batch_size), *shape), device=self.device)
                targets = self.unlabeled_targets(view, view)  # held through the student's pass, as in a step
                with self.network.no_sync() if self.is_ddp else nullcontext():
                    with self._autocast():
                        output = self.network(torch.cat((data, view)))
                        outputs = output if isinstance(output, (list, tuple)) else [output]
                        loss = sum(o.float().mean() for o in outputs)
                    loss.backward()
            except torch.OutOfMemoryError:
                ran = False
        data = view = targets = output = outputs = loss = None  # outside the except block: the trial's tensors are freed
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, value in self.network.named_buffers():
                value.copy_(buffers[name])
        if not cuda:
            return ran
        peak = torch.cuda.max_memory_allocated(self.device)
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(self.device).total_memory
        return ran and peak <= (1 - self.joint_pass_memory_margin) * total

    def on_train_end(self):
        super().on_train_end()
        if isinstance(self.dataloader_unlabeled, NonDetMultiThreadedAugmenter):
            self.dataloader_unlabeled._finish()
        self.dataloader_unlabeled = None

    # ------------------------------------------------------------------ training
    def unlabeled_rampup_epochs(self) -> float:
        return self.unlabeled_rampup_fraction * self.num_epochs

    def unlabeled_weight_at(self, epoch: int) -> float:
        """Weight of the unlabelled loss in an epoch: `unlabeled_loss_weight` times a sigmoid ramp."""
        return self.unlabeled_loss_weight * sigmoid_rampup(epoch, self.unlabeled_rampup_epochs())

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._current_unlabeled_weight = self.unlabeled_weight_at(self.current_epoch)

    def _autocast(self):
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    def teacher_probabilities(self, view_teacher: torch.Tensor) -> torch.Tensor:
        """Softmax (or sigmoid for regions) of the EMA teacher on the teacher view, no gradient."""
        with torch.no_grad():
            return batch_probabilities(self.teacher(view_teacher), self.label_manager.has_regions)

    def unlabeled_targets(self, view_student: torch.Tensor, view_teacher: torch.Tensor) -> Any:
        """The teacher's part of a step, run before the student's pass (no gradient; its activations are freed
        before the student's are made): here the teacher's probabilities on its view."""
        with self._autocast():
            return self.teacher_probabilities(view_teacher)

    def compute_unlabeled_loss(self, output_unlabeled, unlabeled: UnlabeledBatch
                               ) -> Tuple[torch.Tensor, Dict[str, StepValue]]:
        """Mean Teacher consistency: softmax MSE between student (strong view) and teacher (weak view).

        `output_unlabeled` is the student's output on the student view (a list with deep supervision);
        `unlabeled.targets` is what `unlabeled_targets` returned.
        """
        logits = highest_resolution(output_unlabeled)
        student_probs = batch_probabilities(logits, self.label_manager.has_regions)
        return F.mse_loss(student_probs, unlabeled.targets), {}

    def unlabeled_batch(self, view_student: torch.Tensor, view_teacher: torch.Tensor) -> UnlabeledBatch:
        """The two views with the teacher's targets."""
        return UnlabeledBatch(view_student, view_teacher, self.unlabeled_targets(view_student, view_teacher))

    def before_train_step(self, batch: dict) -> None:
        """Hook with the loader's batch, still on the CPU, before the network's step (subclasses start
        CPU work here that then overlaps the GPU step)."""

    def after_train_step(self, data: torch.Tensor, target, output_labeled) -> Dict[str, StepValue]:
        """Hook after the optimizer step (subclasses train helpers here); returns values to log."""
        return {}

    def train_step(self, batch: dict) -> dict:
        self.before_train_step(batch)
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        # while the unlabelled loss weight is 0 (ramp or warm-up) no unlabelled batch is drawn
        unlabeled, self._unlabeled_target = None, None
        if self._current_unlabeled_weight > 0:
            batch_u = next(self.dataloader_unlabeled)
            if self.unlabeled_keeps_segmentation:
                self._unlabeled_target = batch_u["target"].to(self.device, non_blocking=True)
            unlabeled = self.unlabeled_batch(*split_views(batch_u["data"].to(self.device, non_blocking=True),
                                                          data.shape[1]))

        self.optimizer.zero_grad(set_to_none=True)
        loss, loss_sup, loss_u, output_l, extras = self.forward_backward(data, target, unlabeled)
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        self.teacher.update(unwrap_network(self.network))
        extras.update(self.after_train_step(data, target, [o.detach() for o in output_l]
                                            if isinstance(output_l, list) else output_l.detach()))
        out = to_host({"loss": loss, "ssl_loss_supervised": loss_sup, "ssl_loss_unlabeled": loss_u,
                       "ssl_unlabeled_weight": self._current_unlabeled_weight, **extras})
        for key in self.ssl_log_keys:  # every value is logged every epoch (nan while it does not apply)
            out.setdefault(key, np.float64(np.nan))
        return out

    def _backward(self, loss: torch.Tensor) -> None:
        (self.grad_scaler.scale(loss) if self.grad_scaler is not None else loss).backward()

    def forward_backward(self, data: torch.Tensor, target, unlabeled: Optional[UnlabeledBatch]):
        """The student's forward and backward passes of one step; gradients are left in the parameters.

        unlabeled: the unlabelled batch (views and the teacher's targets), or None while its loss is off.
        Returns (loss, supervised loss, unlabelled loss, labelled output, values to log). Joint (default):
        one pass over labelled + unlabelled patches. Separate (`unlabeled_separate_backward`): the
        labelled pass is backpropagated before the unlabelled pass runs, so only one batch of
        activations is alive at a time (nnU-Net normalises per instance, so the gradients are the same).
        A joint pass that runs out of GPU memory switches the run to separate passes (not under DDP,
        where every rank must take the same path: there choose_backward_mode decides at the start).
        """
        if unlabeled is None:
            with self._autocast():
                output_l = self.network(data)
                loss_sup = self.loss(output_l, target)
            self._backward(loss_sup)
            return loss_sup, loss_sup, torch.zeros((), device=self.device), output_l, {}
        if not self.unlabeled_separate_backward:
            try:
                return self._joint_pass(data, target, unlabeled)
            except torch.OutOfMemoryError:
                if self.is_ddp:
                    raise
            # outside the except block, so that the failed pass's tensors are freed
            self.optimizer.zero_grad(set_to_none=True)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.unlabeled_separate_backward = True
            self.print_to_log_file("Out of GPU memory in the joint labelled + unlabelled pass: from now on the "
                                   "two passes run one after the other (unlabeled_separate_backward = True, "
                                   "the same gradients with about half the activation memory)")
        return self._separate_passes(data, target, unlabeled)

    def _joint_pass(self, data, target, unlabeled: UnlabeledBatch):
        n = data.shape[0]
        with self._autocast():
            output = self.network(torch.cat((data, unlabeled.view_student)))
            output_l, output_u = split_batch(output, n), split_batch(output, n, second=True)
            loss_sup = self.loss(output_l, target)
            loss_u, extras = self.compute_unlabeled_loss(output_u, unlabeled)
            loss = loss_sup + self._current_unlabeled_weight * loss_u
        self._backward(loss)
        return loss, loss_sup, loss_u, output_l, extras

    def _separate_passes(self, data, target, unlabeled: UnlabeledBatch):
        # under DDP the first backward must not all-reduce (the second one does)
        with self.network.no_sync() if self.is_ddp else nullcontext():
            with self._autocast():
                output_l = self.network(data)
                loss_sup = self.loss(output_l, target)
            self._backward(loss_sup)
        with self._autocast():
            output_u = self.network(unlabeled.view_student)
            loss_u, extras = self.compute_unlabeled_loss(output_u, unlabeled)
            weighted = self._current_unlabeled_weight * loss_u
            if self.is_ddp or not weighted.requires_grad:
                # every output in the graph: DDP's all-reduce waits for a gradient of every parameter,
                # also of the deep-supervision heads that a loss on the full resolution leaves out
                outputs = output_u if isinstance(output_u, (list, tuple)) else [output_u]
                weighted = weighted + 0 * sum(o.float().sum() for o in outputs)
        self._backward(weighted)
        return loss_sup.detach() + weighted.detach(), loss_sup, loss_u, output_l, extras

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        outputs = collate_outputs(train_outputs)
        parts = []
        for key in self.ssl_log_keys:
            value = finite_mean(outputs[key])  # steps where a value does not apply log nan
            if self.is_ddp:
                gathered = [None] * dist.get_world_size()
                dist.all_gather_object(gathered, value)
                value = float(np.mean(gathered))
            self.logger.log(key, value, self.current_epoch)
            parts.append(f"{key[4:] if key.startswith('ssl_') else key} {value:.4f}")
        self.print_to_log_file("SSL: " + ", ".join(parts))

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self._teacher_val_counts = []

    def validation_step(self, batch: dict) -> dict:
        """nnU-Net's validation step of the student, and the same pseudo-Dice counts for the EMA teacher
        (its logits stay in `_val_teacher_logits` for subclasses). The teacher goes first: nnU-Net's step
        may overwrite ignore-label voxels of the target in place."""
        data = batch["data"].to(self.device, non_blocking=True)
        target = highest_resolution(batch["target"]).to(self.device, non_blocking=True)
        with torch.no_grad(), self._autocast():
            self._val_teacher_logits = self.teacher(data)
        self._teacher_val_counts.append(hard_dice_counts(self._val_teacher_logits, target, self.label_manager))
        return super().validation_step(batch)

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        super().on_validation_epoch_end(val_outputs)
        counts = self._teacher_val_counts
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, counts)
            counts = [c for rank in gathered for c in rank]
        teacher_dice = mean_foreground_dice(counts) if counts else float("nan")
        self.logger.log("ssl_teacher_val_dice", teacher_dice, self.current_epoch)
        student = self.logger.local_logger.my_fantastic_logging["mean_fg_dice"][-1]
        self.print_to_log_file(f"Pseudo-Dice on validation: EMA teacher {teacher_dice:.4f}, student {student:.4f}")

    def ssl_progress_panels(self) -> Dict[str, List[str]]:
        """Panels of progress_ssl.png: title -> logged keys."""
        return {"validation pseudo-Dice: EMA teacher and student": ["ssl_teacher_val_dice", "mean_fg_dice"],
                "supervised loss (Dice + CE)": ["ssl_loss_supervised"],
                "unlabelled loss": ["ssl_loss_unlabeled"],
                "unlabelled loss weight (ramp)": ["ssl_unlabeled_weight"]}

    def on_epoch_end(self):
        super().on_epoch_end()
        if self.local_rank == 0:
            plot_progress_panels(self.logger.local_logger.my_fantastic_logging, self.ssl_progress_panels(),
                                 join(self.output_folder, "progress_ssl.png"))

    # ------------------------------------------------------------------ checkpoints
    def ssl_state_dict(self) -> dict:
        """Extra state stored under `ssl_state` in nnU-Net's checkpoint."""
        return {"teacher": self.teacher.state_dict(), "unlabeled_seed": self.unlabeled_seed}

    def load_ssl_state_dict(self, state: dict) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.unlabeled_seed = state["unlabeled_seed"]

    def checkpoint_extras(self) -> dict:
        """`ssl_state` next to nnU-Net's entries; `network_weights` stays the student's, so stock
        `nnUNetv2_predict` loads it unchanged."""
        return {**super().checkpoint_extras(), SSL_STATE_KEY: self.ssl_state_dict()}

    def load_checkpoint_extras(self, checkpoint: dict) -> None:
        super().load_checkpoint_extras(checkpoint)
        # a checkpoint from an older version lacks keys logged today: nan for its epochs, so --c still works
        logging = self.logger.local_logger.my_fantastic_logging
        for key in self.ssl_log_keys + self.ssl_val_log_keys:
            logging.setdefault(key, [float("nan")] * self.current_epoch)
        if SSL_STATE_KEY in checkpoint:
            self.load_ssl_state_dict(checkpoint[SSL_STATE_KEY])
        else:
            self.print_to_log_file("Checkpoint has no semi-supervised state: the teacher starts from the "
                                   "loaded network weights.")
            self.teacher = EMATeacher(unwrap_network(self.network), self.ema_decay).to(self.device)
            set_deep_supervision(self.teacher.module, False)
