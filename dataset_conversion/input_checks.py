"""What a user hands a command, checked the same way by every command of nnunet-qg: argument ranges
(argparse types), input files (one guard around every read), nnU-Net's folder variables and the
optional packages. Each problem becomes an InputError whose message names what is wrong and the fix;
the console scripts print it as `ERROR: ...` and exit non-zero, without a traceback.
"""
import argparse
import gzip
import importlib
import os
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np

CONVERSION_EXTRA = 'pip install "nnunet-qg[conversion]"'
REPLACE_FIX = "Re-download the file (or restore it), or remove it."
_TRUNCATION_HINTS = ("truncat", "ended before", "failed to read", "end of file")
_KINDS = {".nii.gz": "NIfTI image", ".nii": "NIfTI image", ".jpg": "JPEG image", ".jpeg": "JPEG image",
          ".png": "PNG image", ".bmp": "BMP image", ".tif": "TIFF image", ".tiff": "TIFF image",
          ".h5": "HDF5 file", ".hdf5": "HDF5 file", ".json": "JSON file", ".pth": "PyTorch checkpoint"}
_NNUNET_FOLDERS = {"nnUNet_raw": "nnU-Net's raw datasets (what the converters write)",
                   "nnUNet_preprocessed": "nnU-Net's preprocessed datasets and plans",
                   "nnUNet_results": "nnU-Net's trained models"}


class InputError(RuntimeError):
    """Bad input from the user (file, argument, environment); the message says what is wrong and the fix."""


class UnreadableFileError(InputError):
    """An input file its reader cannot read. `paths`: the file (or the files read together), `problem`:
    what is wrong with it, `fix`: what to do. Picklable (raised in worker processes)."""

    def __init__(self, paths: Sequence[str], problem: str, fix: str = REPLACE_FIX):
        super().__init__(list(paths), problem, fix)
        self.paths, self.problem, self.fix = list(paths), problem, fix

    def __str__(self) -> str:
        return f"Could not read {', '.join(self.paths)}: {self.problem}. {self.fix}"

    def with_fix(self, fix: str) -> "UnreadableFileError":
        """The same error with another fix (the caller knows the file's role)."""
        return UnreadableFileError(self.paths, self.problem, fix)


def file_kind(path: str) -> str:
    """'NIfTI image', 'JPEG image', ... from the file name."""
    lower = path.lower()
    for ending, kind in _KINDS.items():
        if lower.endswith(ending):
            return kind
    return f"{os.path.splitext(path)[1] or 'readable'} file"


def check_complete(path: str) -> None:
    """Refuse a file that is missing, empty or cut short. Some readers accept a cut file without a word
    (SimpleITK fills a truncated NIfTI, compressed or not, with zeros), so a .gz file is read to its end
    (that checks its length and CRC) and a NIfTI's data length is compared with its header."""
    size = os.path.getsize(path)  # FileNotFoundError for a missing file
    if size == 0:
        raise EOFError("0 bytes")
    length = size
    if path.lower().endswith(".gz"):
        length = 0
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                length += len(chunk)
    if path.lower().endswith((".nii", ".nii.gz")):
        import nibabel

        header = nibabel.load(path).header
        needed = int(header.get_data_offset()) + header.get_data_dtype().itemsize * int(
            np.prod(header.get_data_shape()))
        if length < needed:
            raise EOFError(f"expected {needed} bytes of header and data, the file holds {length}")


def describe_read_error(path: str, error: BaseException) -> str:
    """What is wrong with `path`, from its reader's error, in a few words."""
    if isinstance(error, FileNotFoundError):
        return "it does not exist"
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return "it is empty (0 bytes)"
    text = " ".join(str(error).split())[:300] or type(error).__name__
    if isinstance(error, EOFError) or any(h in text.lower() for h in _TRUNCATION_HINTS):
        return f"it is truncated ({text})"
    return f"it is damaged or not a {file_kind(path)} ({type(error).__name__}: {text})"


@contextmanager
def reading(paths: Union[str, Sequence[str]], fix: str = REPLACE_FIX) -> Iterator[None]:
    """The guard around every read of an input file: first each file is checked to be there, non-empty and
    complete (check_complete), then the block reads it; any reader error (truncated, empty, not an image,
    wrong h5 keys, unreadable NIfTI, ...) becomes one UnreadableFileError naming the file, the problem
    and `fix`. InputErrors raised in the block pass unchanged; MemoryError is not the file's fault."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    paths = [os.fspath(p) for p in paths]
    culprit = paths
    try:
        for path in paths:
            culprit = [path]
            check_complete(path)
        culprit = paths
        yield
    except (InputError, MemoryError):
        raise
    except Exception as e:  # readers raise many types: OSError, ValueError, RuntimeError, EOFError, ...
        raise UnreadableFileError(culprit, describe_read_error(culprit[0], e), fix) from None


def optional_module(name: str, purpose: str = "This command"):
    """Import an optional dependency (h5py, tifffile, PIL.Image); missing: an InputError with the pip line."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        package = {"PIL": "Pillow"}.get(name.split(".")[0], name.split(".")[0])
        raise InputError(f"{purpose} needs the Python package {package}, which could not be imported ({e}). "
                         f"Install the converters' extras: {CONVERSION_EXTRA}") from None


def require_nnunet_folders(*names: str) -> None:
    """Refuse to go on when one of nnU-Net's folder variables (nnUNet_raw, ...) is unset, naming it."""
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        what = "; ".join(f"{n}: the folder of {_NNUNET_FOLDERS.get(n, 'nnU-Net')}" for n in missing)
        raise InputError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set ({what}). "
                         f"Set {'it' if len(missing) == 1 else 'them'} before running this command, e.g. "
                         f"export {missing[0]}=/data/{missing[0]} (nnU-Net's documentation/setting_up_paths.md).")


def int_range(minimum: int, maximum: Optional[int] = None) -> Callable[[str], int]:
    """argparse `type=`: a whole number in [minimum, maximum]; the error says the allowed range."""
    allowed = f"a whole number >= {minimum}" if maximum is None else f"a whole number from {minimum} to {maximum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not allowed: give {allowed}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"{value} is not allowed: give {allowed}")
        return value
    parse.__name__ = f"int_range({minimum}, {maximum})"
    return parse


count = int_range(0)  # e.g. --num-test, --max-unlabelled: 0 allowed
positive_count = int_range(1)  # e.g. --num-labelled, --repeats
seed = int_range(0, 2 ** 32 - 1)  # numpy's RandomState range
dataset_id = int_range(1, 999)  # nnU-Net's DatasetXXX


def positive_number(text: str) -> float:
    """argparse `type=`: a number > 0 (e.g. a spacing in mm)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not allowed: give a number > 0") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{value} is not allowed: give a number > 0")
    return value


def number_range(minimum: float, maximum: float) -> Callable[[str], float]:
    """argparse `type=`: a number in [minimum, maximum] (e.g. a Dice threshold in [0, 1]); the error says the
    allowed range."""
    allowed = f"a number from {minimum:g} to {maximum:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not allowed: give {allowed}") from None
        if not minimum <= value <= maximum:  # also refuses nan
            raise argparse.ArgumentTypeError(f"{text} is not allowed: give {allowed}")
        return value
    parse.__name__ = f"number_range({minimum:g}, {maximum:g})"
    return parse


unit_interval = number_range(0.0, 1.0)  # e.g. a Dice threshold
