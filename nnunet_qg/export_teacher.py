"""`nnUNetv2_qg_export_teacher`: a checkpoint whose network is the EMA teacher instead of the student.

nnU-Net's checkpoint of a semi-supervised run holds the student in `network_weights` (what
`nnUNetv2_predict` uses) and the EMA teacher in `ssl_state.teacher`. This writes a copy of the
checkpoint with the teacher's weights as `network_weights`, next to it in the fold folder, so
`nnUNetv2_predict ... -chk checkpoint_final_teacher.pth` predicts with the teacher.
"""
import argparse
from os.path import basename, dirname, join

import torch

from nnunet_qg.atomic import atomic_path
from nnunet_qg.dataset_conversion.input_checks import InputError, reading

TEACHER_PREFIX = "module."


CHECKPOINT_FIX = ("Check the path; a damaged checkpoint must be replaced (by checkpoint_latest.pth, or by training "
                  "again).")


def load_checkpoint(checkpoint_file: str) -> dict:
    """An nnU-Net checkpoint, onto the CPU; a missing or damaged file is an InputError."""
    with reading(checkpoint_file, fix=CHECKPOINT_FIX):
        return torch.load(checkpoint_file, map_location="cpu", weights_only=False)


def teacher_weights(checkpoint: dict, checkpoint_file: str) -> dict:
    """The EMA teacher's network weights (ssl_state.teacher without its 'module.' prefix), with the same keys
    as the student's `network_weights`; InputError if the checkpoint has no (complete) teacher."""
    if "teacher" not in (checkpoint.get("ssl_state") or {}):
        raise InputError(f"{checkpoint_file} has no EMA teacher (ssl_state.teacher): it was not written by an "
                         f"nnunet-qg semi-supervised trainer.")
    teacher = {k[len(TEACHER_PREFIX):]: v for k, v in checkpoint["ssl_state"]["teacher"].items()
               if k.startswith(TEACHER_PREFIX)}
    missing = set(checkpoint["network_weights"]) - set(teacher)
    if missing:
        raise InputError(f"the teacher in {checkpoint_file} lacks {len(missing)} network weights "
                         f"(e.g. {sorted(missing)[0]}).")
    return {k: teacher[k] for k in checkpoint["network_weights"]}


def export_teacher(checkpoint_file: str, output_file: str = None) -> str:
    """Write the teacher checkpoint (atomic); returns its path."""
    checkpoint = load_checkpoint(checkpoint_file)
    checkpoint["network_weights"] = teacher_weights(checkpoint, checkpoint_file)
    output_file = output_file or join(dirname(checkpoint_file), basename(checkpoint_file)[:-4] + "_teacher.pth")
    with atomic_path(output_file) as tmp:
        torch.save(checkpoint, tmp)
    return output_file


def entry_point() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="e.g. nnUNet_results/.../fold_0/checkpoint_final.pth")
    parser.add_argument("-o", default=None, help="output file (default: <checkpoint>_teacher.pth beside it)")
    args = parser.parse_args()
    try:
        print(export_teacher(args.checkpoint, args.o))
    except InputError as e:
        raise SystemExit(f"ERROR: {e}")
