"""Whole unlabelled cases with a fixed pseudo-label, as training cases of nnU-Net's own loader.

A pseudo-labelled case keeps its preprocessed image where `nnUNetv2_preprocess_unlabeled` wrote it and gets
two files of its own in a folder of the run: `CASE_seg.b2nd` (the pseudo-label, nnU-Net's seg layout: -1
outside the case's nonzero crop mask, as the preprocessor writes it) and `CASE.pkl` (the unlabelled case's
properties plus the foreground locations nnU-Net's loader oversamples, sampled from the pseudo-label as its
preprocessor samples them from a label). The .pkl is renamed into place last, so it marks a finished case.
`WithPseudoLabels` adds such cases to a labelled nnU-Net dataset: nnU-Net's loader and augmentation then
treat them like labelled cases.
"""
import os
from os.path import isfile, join
from typing import List, Sequence

import blosc2
import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_pickle, write_pickle
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.training.dataloading.nnunet_dataset import (comp_blosc2_params, nnUNetBaseDataset,
                                                          nnUNetDatasetBlosc2)


def read_unlabeled_seg(folder: str, case: str) -> np.ndarray:
    """The seg (1, ...) of a preprocessed unlabelled case: the crop mask, or a benchmark's withheld label."""
    return blosc2.open(urlpath=join(folder, case + "_seg.b2nd"), mode="r")[:]


def read_unlabeled_case(folder: str, case: str):
    """The preprocessed image (C, ...), its seg (read_unlabeled_seg) and properties of an unlabelled case."""
    data = blosc2.open(urlpath=join(folder, case + ".b2nd"), mode="r")[:]
    return data, read_unlabeled_seg(folder, case), load_pickle(join(folder, case + ".pkl"))


def write_pseudo_labelled_case(folder: str, case: str, label_map: np.ndarray, crop_seg: np.ndarray,
                               properties: dict, foreground_labels: Sequence[int], patch_size: Sequence[int]) -> None:
    """`label_map` (spatial, label values) as CASE_seg.b2nd and CASE.pkl in `folder` (see the module
    docstring); `crop_seg` is the unlabelled case's own seg (1, ...), whose -1 voxels stay -1."""
    seg = label_map[None].astype(np.int16 if max(foreground_labels, default=0) > 127 else np.int8)
    seg[crop_seg < 0] = -1
    properties = dict(properties)
    properties["class_locations"] = DefaultPreprocessor._sample_foreground_locations(seg, list(foreground_labels))
    blocks, chunks = comp_blosc2_params(seg.shape, patch_size, seg.itemsize)
    tmp = join(folder, f".tmp-{case}-{os.getpid()}")
    blosc2.asarray(np.ascontiguousarray(seg), urlpath=tmp + "_seg.b2nd", chunks=chunks, blocks=blocks, mode="w",
                   cparams={"codec": blosc2.Codec.LZ4HC, "clevel": 5, "nthreads": 1})
    write_pickle(properties, tmp + ".pkl")
    os.replace(tmp + "_seg.b2nd", join(folder, case + "_seg.b2nd"))
    os.replace(tmp + ".pkl", join(folder, case + ".pkl"))


def missing_cases(folder: str, cases: Sequence[str]) -> List[str]:
    """The cases of `cases` whose pseudo-label files are not (both) in `folder`."""
    return [c for c in cases if not (isfile(join(folder, c + ".pkl")) and isfile(join(folder, c + "_seg.b2nd")))]


class WithPseudoLabels(nnUNetDatasetBlosc2):
    """A labelled nnU-Net dataset plus pseudo-labelled cases: images from the unlabelled folder, pseudo-labels
    and properties from the run's folder (write_pseudo_labelled_case)."""

    def __init__(self, labelled: nnUNetBaseDataset, images_folder: str, pseudo_label_folder: str,
                 cases: Sequence[str]):
        super().__init__(labelled.source_folder, list(labelled.identifiers) + list(cases))
        self.labelled, self.images_folder, self.pseudo_label_folder = labelled, images_folder, pseudo_label_folder
        self.pseudo_labelled = set(cases)

    def load_case(self, identifier):
        if identifier not in self.pseudo_labelled:
            return self.labelled.load_case(identifier)
        data = blosc2.open(urlpath=join(self.images_folder, identifier + ".b2nd"), mode="r", dparams={"nthreads": 1},
                           **self.mmap_kwargs)
        seg = blosc2.open(urlpath=join(self.pseudo_label_folder, identifier + "_seg.b2nd"), mode="r",
                          dparams={"nthreads": 1}, **self.mmap_kwargs)
        return data, seg, None, load_pickle(join(self.pseudo_label_folder, identifier + ".pkl"))
