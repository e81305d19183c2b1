"""Training and measuring the quality predictor on nnU-Net batches (the warm-up of METHOD.md).

g learns from (a) corrupted ground-truth patches of the labelled batch and (b) the segmentation
network's own current predictions on the same patches (detached), each with its exact Dice.
"""
import os
from contextlib import contextmanager
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_qg.networks import batch_probabilities
from nnunet_qg.quality.corruptions import MaskCorruptor
from nnunet_qg.quality.dice import soft_dice_per_label
from nnunet_qg.quality.network import QualityPredictor


def one_hot_foreground(label_map: torch.Tensor, labels: Sequence[int]) -> torch.Tensor:
    """(B, 1, ...) integer label map -> (B, L, ...) float one-hot of the foreground labels."""
    return torch.cat([(label_map == l) for l in labels], 1).float()


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor onto `device`; to a GPU through pinned memory, so the host does not wait."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


@contextmanager
def private_torch_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Inside: torch's generators (the CPU one, and `device`'s) seeded with `seed`; afterwards as they were.
    g's dropout draws from here, so training g never shifts the training's other random draws (nnU-Net's
    augmentation in the main process, the network's initialisation)."""
    cuda = device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
    with torch.random.fork_rng(devices=[index] if cuda else []):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


@contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """float32 inside, also within an enclosing autocast. g trains in it: its optimizer has no loss scaling,
    and in float16 the gradients of its small SmoothL1 losses underflow to 0 (g costs ~1.5 % of the
    network's FLOPs, so float32 costs little)."""
    with torch.autocast(device.type, enabled=False):
        yield


def all_finite(loss: torch.Tensor, parameters: Sequence[torch.Tensor]) -> torch.Tensor:
    """True (a 0-d tensor on the device) when the loss and every gradient of `parameters` are finite."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])) \
        if grads else torch.zeros((), device=loss.device)
    return torch.isfinite(loss) & torch.isfinite(norm)


def _completed(function: Callable, *args) -> Future:
    """`function(*args)`, run now, as a finished Future."""
    future = Future()
    future.set_result(function(*args))
    return future


class QualityPredictorTrainer:
    """Owns g, its optimizer and its random state; trains it and measures it on batches. The research
    options (a ranking term, several predictions or steps per batch, a g that reads the network's softmax)
    are in nnunet_qg.experiments.quality.ResearchQualityPredictorTrainer."""

    def __init__(self, model: QualityPredictor, labels: Sequence[int], all_labels: Sequence[int],
                 lr: float = 1e-3, weight_decay: float = 1e-4, real_fraction: float = 0.5,
                 soft_fraction: float = 0.5, category_probabilities: Optional[Dict[str, float]] = None,
                 seed: int = 0, train_model: Optional[nn.Module] = None, num_threads: Optional[int] = None,
                 masks_per_sample: int = 1, log: Callable[[str], None] = print):
        self.model = model
        self.log = log  # e.g. the nnU-Net trainer's print_to_log_file
        self.train_model = train_model if train_model is not None else model  # e.g. DDP-wrapped g
        self.labels = [int(l) for l in labels]
        self.all_labels = [int(l) for l in all_labels]
        # the network's output channel of each foreground label, and of each label value (device copies cached)
        self.foreground_channels = [self.all_labels.index(l) for l in self.labels]
        first, last = (self.foreground_channels[0], self.foreground_channels[-1]) if self.labels else (0, -1)
        # the usual case, consecutive channels, as a slice: indexing with a list copies it to the device per call
        self._foreground_index = slice(first, last + 1) \
            if self.foreground_channels == list(range(first, last + 1)) else self.foreground_channels
        self._label_values: Dict[torch.device, torch.Tensor] = {}
        self.real_fraction = real_fraction
        self.masks_per_sample = masks_per_sample  # g is cheap next to the network: several masks per patch
        self.soft_fraction = soft_fraction
        self.corruptor = MaskCorruptor(self.labels, category_probabilities)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        self.rng = np.random.default_rng(seed)
        self.frozen = False
        # corruptions run on the CPU beside the GPU step: a few threads keep them off the critical path
        self.num_threads = max(1, (os.cpu_count() or 2) // 2) if num_threads is None else num_threads
        self._pool: Optional[ThreadPoolExecutor] = None
        self.skipped_steps = 0  # optimizer steps skipped for a non-finite loss or gradient

    # ----------------------------------------------------------------- samples
    def predicted_label_map(self, seg_logits: torch.Tensor) -> torch.Tensor:
        """The network's hard prediction as label values (B, 1, ...)."""
        device = seg_logits.device
        if device not in self._label_values:  # copied once: a copy from host memory per call makes the host wait
            self._label_values[device] = torch.as_tensor(self.all_labels, device=device)
        return self._label_values[device][seg_logits.argmax(1, keepdim=True)]

    def channel_one_hot(self, channel: torch.Tensor) -> torch.Tensor:
        """A hard prediction given as output channel indices (B, 1, ...) -> one-hot of the foreground labels
        (B, L, ...), the mask g reads."""
        return one_hot_foreground(channel, self.foreground_channels)

    def foreground_softmax(self, seg_logits: torch.Tensor) -> torch.Tensor:
        """The network's softmax of the foreground labels (B, L, ...): a soft mask."""
        return batch_probabilities(seg_logits, has_regions=False)[:, self._foreground_index]

    def real_samples(self, target: torch.Tensor, seg_logits: torch.Tensor, soft: bool):
        """Masks from the network's predictions (one-hot or softmax) and their true Dice."""
        pred = self.predicted_label_map(seg_logits)
        truth = soft_dice_per_label(one_hot_foreground(pred, self.labels), one_hot_foreground(target, self.labels))
        if soft:
            mask = self.foreground_softmax(seg_logits)
        else:
            mask = one_hot_foreground(pred, self.labels)
        return mask, truth

    def start_corruptions(self, target: torch.Tensor, draws: int) -> List[List[Future]]:
        """Submit `draws` corrupted versions of every patch of `target` (B, 1, ...) to the thread pool,
        all at once. Given the loader's CPU copy of the target, this starts before the GPU step and
        never waits for the device; the results are collected by `corrupted_draws`.

        Each mask gets its own generator seeded from self.rng, so the result does not depend on how
        many threads run the corruptions (scipy releases the GIL in its filters)."""
        maps = target[:, 0].cpu().numpy().astype(np.int16)
        seeds = self.rng.integers(0, 2 ** 63 - 1, size=(draws, len(maps)))

        def corrupt(i: int, seed: int):
            return self.corruptor.corrupt(maps[i], np.random.default_rng(seed),
                                          others=[maps[j] for j in range(len(maps)) if j != i])

        if self.num_threads > 1 and draws * len(maps) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.num_threads)
            submit = self._pool.submit
        else:
            submit = _completed  # one thread: computed right away
        return [[submit(corrupt, i, seeds[d, i]) for i in range(len(maps))] for d in range(draws)]

    def corrupted_draws(self, target: torch.Tensor, draws: int, started: Optional[List[List[Future]]] = None
                        ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """`draws` x (one-hot corrupted masks (B, L, ...), their exact Dice (B, L)) on target's device;
        `started`: what start_corruptions returned for this target, else they are computed now."""
        started = self.start_corruptions(target, draws) if started is None else started
        out = []
        for futures in started:
            results = [f.result() for f in futures]
            label_map = to_device(torch.from_numpy(np.stack([r.mask for r in results])[:, None]), target.device)
            dice = to_device(torch.from_numpy(np.stack([r.dice for r in results])), target.device)
            out.append((one_hot_foreground(label_map, self.labels), dice))
        return out

    def corrupted_samples(self, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One corrupted mask per patch of `target` and its exact Dice."""
        return self.corrupted_draws(target, 1)[0]

    def training_samples(self, target: torch.Tensor, seg_logits: torch.Tensor,
                         corrupted: Tuple[torch.Tensor, torch.Tensor]):
        """Per sample: the network's prediction with probability real_fraction, else the corruption."""
        corrupted_mask, corrupted_dice = corrupted
        real_mask, real_dice = self.real_samples(target, seg_logits, soft=self.rng.random() < self.soft_fraction)
        use_real = to_device(torch.from_numpy(self.rng.random(len(target)) < self.real_fraction), target.device)
        shape = (-1,) + (1,) * (real_mask.ndim - 1)
        mask = torch.where(use_real.view(shape), real_mask, corrupted_mask)
        dice = torch.where(use_real.view(-1, 1), real_dice, corrupted_dice)
        return mask, dice

    # ----------------------------------------------------------------- training
    def train_step(self, images: torch.Tensor, target: torch.Tensor, seg_logits: torch.Tensor, autocast_ctx,
                   corruptions: Optional[List[List[Future]]] = None) -> torch.Tensor:
        """One optimizer step of g (SmoothL1 on Dice) on `masks_per_sample` masks per labelled patch; returns
        the loss, detached, on the device (reading it would make the host wait for the GPU). `seg_logits`:
        the network's full-resolution logits. `corruptions`: start_corruptions(target, masks_per_sample),
        started before the network's step. g trains in float32 whatever `autocast_ctx` is (full_precision;
        the argument stays for the callers); a step with a non-finite loss or gradient is skipped
        (step_if_finite)."""
        corrupted = self.corrupted_draws(target, self.masks_per_sample, corruptions)
        mask, dice = self.training_masks(target, seg_logits, corrupted)
        images = images.repeat((self.masks_per_sample,) + (1,) * (images.ndim - 1))
        inputs = self.training_inputs(images, mask, seg_logits)
        self.train_model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with full_precision(images.device), private_torch_rng(images.device, int(self.rng.integers(2 ** 62))):
            predicted = self.train_model(*inputs)
        loss = self.training_loss(predicted.float(), dice.float())
        loss.backward()
        self.step_if_finite(loss)
        return loss.detach()

    def training_masks(self, target: torch.Tensor, seg_logits: torch.Tensor,
                       corrupted: List[Tuple[torch.Tensor, torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor]:
        """The masks of a step and their Dice: training_samples of every draw of corruptions, concatenated."""
        draws = [self.training_samples(target, seg_logits, c) for c in corrupted]
        return torch.cat([d[0] for d in draws]), torch.cat([d[1] for d in draws])

    def training_inputs(self, images: torch.Tensor, mask: torch.Tensor, seg_logits: torch.Tensor) -> tuple:
        """g's inputs in a training step, in float32."""
        return images.float(), mask.float()

    def training_loss(self, predicted: torch.Tensor, dice: torch.Tensor) -> torch.Tensor:
        return F.smooth_l1_loss(predicted, dice, beta=0.1)

    def step_if_finite(self, loss: torch.Tensor) -> bool:
        """g's optimizer step, unless the loss or a gradient is not finite: then the step is skipped, counted
        (skipped_steps) and logged, as one NaN update would make every later score of g NaN. Under DDP the
        gradients are all-reduced, so every rank decides alike. Reads one value from the device."""
        if bool(all_finite(loss.detach(), list(self.model.parameters()))):
            self.optimizer.step()
            return True
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        self.log(f"Quality predictor: non-finite training loss ({loss.item()}) or gradient, optimizer step "
                 f"skipped ({self.skipped_steps} so far).")
        return False

    def refresh_step(self, images: torch.Tensor, target: torch.Tensor, seg_logits: torch.Tensor, autocast_ctx,
                     real_fraction: Optional[float] = None,
                     corruptions: Optional[List[List[Future]]] = None) -> torch.Tensor:
        """One training step of a frozen g (to follow the network's improving predictions), frozen again
        after; `real_fraction` overrides the share of real predictions for this step."""
        saved = self.real_fraction
        self.real_fraction = saved if real_fraction is None else real_fraction
        self.model.requires_grad_(True)
        try:
            return self.train_step(images, target, seg_logits, autocast_ctx, corruptions)
        finally:
            self.real_fraction = saved
            self.model.eval()
            self.model.requires_grad_(False)

    def close(self) -> None:
        """Shut the corruption threads down; safe to call again (a later corruption starts new threads)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def freeze(self) -> None:
        """Eval mode and no parameter updates; g stays differentiable with respect to its mask input."""
        self.model.eval()
        self.model.requires_grad_(False)
        self.frozen = True

    def measurement_masks(self, target: torch.Tensor, seg_logits: torch.Tensor,
                          teacher_logits: Optional[torch.Tensor] = None) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
        """Masks to judge g on, with their true Dice: the network's real (hard) predictions, the
        teacher's (what PL-QW weights) when given, and corrupted ground truth."""
        masks = {"real": self.real_samples(target, seg_logits, soft=False)}
        if teacher_logits is not None:
            masks["teacher"] = self.real_samples(target, teacher_logits, soft=False)
        masks["corrupted"] = self.corrupted_samples(target)
        return masks

    def score_masks(self, images: torch.Tensor, masks: Dict[str, Tuple[torch.Tensor, torch.Tensor]],
                    autocast_ctx) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
        """g's predicted Dice next to the true Dice, per kind of mask (g in eval mode for this)."""
        return self.scores_of(lambda kind, mask: self.model(images, mask), masks, autocast_ctx)

    @torch.no_grad()
    def scores_of(self, predict: Callable[[str, torch.Tensor], torch.Tensor],
                  masks: Dict[str, Tuple[torch.Tensor, torch.Tensor]], autocast_ctx
                  ) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
        """`predict(kind, mask)`, g's predicted Dice, next to the true Dice, per kind of mask, with g in eval mode."""
        was_training = self.model.training
        self.model.eval()
        with autocast_ctx:
            out = {kind: (predict(kind, mask).float().cpu().numpy(), dice.cpu().numpy())
                   for kind, (mask, dice) in masks.items()}
        self.model.train(was_training and not self.frozen)
        return out

    def measure_batch(self, images: torch.Tensor, target: torch.Tensor, seg_logits: torch.Tensor,
                      autocast_ctx, teacher_logits: Optional[torch.Tensor] = None) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
        """Predicted and true Dice on real predictions (and the teacher's) and on corrupted masks of one batch."""
        return self.score_masks(images, self.measurement_masks(target, seg_logits, teacher_logits), autocast_ctx)

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": self.rng.bit_generator.state, "frozen": self.frozen}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]
        if state["frozen"]:
            self.freeze()
