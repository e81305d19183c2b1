"""Training batches from preprocessed unlabelled cases, through nnU-Net's own loader and augmentation."""
from typing import List, Optional, Sequence

from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

from nnunet_qg.unlabeled.foreground_prior import RelativeForegroundPrior


class nnUNetUnlabeledDatasetBlosc2(nnUNetDatasetBlosc2):
    """nnU-Net's blosc2 dataset for cases without labels (no foreground locations stored)."""

    def load_case(self, identifier):
        data, seg, seg_prev, properties = super().load_case(identifier)
        properties.setdefault("class_locations", None)
        return data, seg, seg_prev, properties


class nnUNetUnlabeledDataLoader(nnUNetDataLoader):
    """Random patches of unlabelled cases: nnU-Net's loader, by default with foreground oversampling off.

    With `oversample_foreground_percent` > 0, that share of each batch (the last samples, as in nnU-Net) is
    centred on a location of `foreground_prior` (where the labelled cases have foreground) mapped into the
    unlabelled case; never on the case's own labels, even where a benchmark's withheld labels are loaded.
    At 0 (the default) the loader draws exactly what nnU-Net's loader draws without oversampling."""

    def __init__(self, data: nnUNetUnlabeledDatasetBlosc2, batch_size: int, patch_size: Sequence[int],
                 final_patch_size: Sequence[int], label_manager, transforms=None,
                 oversample_foreground_percent: float = 0.0,
                 foreground_prior: Optional[RelativeForegroundPrior] = None):
        if not 0 <= oversample_foreground_percent <= 1:
            raise ValueError(f"oversample_foreground_percent must be in [0, 1], got {oversample_foreground_percent}")
        if oversample_foreground_percent > 0 and foreground_prior is None:
            raise ValueError("Oversampling unlabelled foreground needs a foreground_prior (RelativeForegroundPrior)")
        super().__init__(data, batch_size, patch_size, final_patch_size, label_manager,
                         oversample_foreground_percent=oversample_foreground_percent, transforms=transforms)
        # there is no annotation to sample from, with or without an ignore label
        self.has_ignore = False
        self.foreground_prior = foreground_prior

    def get_bbox(self, data_shape, force_fg: bool, class_locations, overwrite_class=None, verbose: bool = False):
        """nnU-Net's patch choice; a forced-foreground patch reads the prior's locations in this case's shape."""
        if force_fg:
            class_locations = self.foreground_prior.class_locations(data_shape)
        return super().get_bbox(data_shape, force_fg, class_locations, overwrite_class, verbose)


def shard_for_rank(identifiers: Sequence[str], rank: int, world_size: int) -> List[str]:
    """The unlabelled cases of one DDP rank (every rank gets at least one case)."""
    identifiers = sorted(identifiers)
    shard = identifiers[rank::world_size]
    return shard if shard else [identifiers[rank % len(identifiers)]]


def worker_seeds(base_seed: int, rank: int, num_workers: int) -> List[int]:
    """Distinct seeds for every background worker on every DDP rank."""
    return [int((base_seed + 100_003 * rank + 7_919 * w) % (2 ** 31 - 1)) for w in range(max(num_workers, 1))]


def unlabeled_workers(n_proc_da: int) -> int:
    """Background workers of the unlabelled loader by default: half of nnU-Net's `nnUNet_n_proc_DA` (at least
    one), as both loaders share the same cores; 0 (in the main process) when nnU-Net's are 0."""
    return max(1, n_proc_da // 2) if n_proc_da > 0 else 0


def make_augmenter(data_loader: nnUNetDataLoader, num_processes: int, seeds: Optional[List[int]],
                   pin_memory: bool):
    """Background workers as nnU-Net uses them (`nnUNet_n_proc_DA`; 0 = in the main process)."""
    if num_processes == 0:
        # in-process: shares the main process's random state with nnU-Net's labelled loader
        return SingleThreadedAugmenter(data_loader, None)
    return NonDetMultiThreadedAugmenter(data_loader=data_loader, transform=None, num_processes=num_processes,
                                        num_cached=max(6, num_processes // 2), seeds=seeds,
                                        pin_memory=pin_memory, wait_time=0.002)
