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

TEACHER_PREFIX = "module."


def export_teacher(checkpoint_file: str, output_file: str = None) -> str:
    """Write the teacher checkpoint (atomic); returns its path."""
    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
    if "ssl_state" not in checkpoint or "teacher" not in checkpoint["ssl_state"]:
        raise SystemExit(f"ERROR: {checkpoint_file} has no EMA teacher (ssl_state.teacher): it was not written "
                         f"by an nnunet-qg semi-supervised trainer.")
    teacher = {k[len(TEACHER_PREFIX):]: v for k, v in checkpoint["ssl_state"]["teacher"].items()
               if k.startswith(TEACHER_PREFIX)}
    missing = set(checkpoint["network_weights"]) - set(teacher)
    if missing:
        raise SystemExit(f"ERROR: the teacher in {checkpoint_file} lacks {len(missing)} network weights "
                         f"(e.g. {sorted(missing)[0]}).")
    checkpoint["network_weights"] = teacher
    output_file = output_file or join(dirname(checkpoint_file), basename(checkpoint_file)[:-4] + "_teacher.pth")
    with atomic_path(output_file) as tmp:
        torch.save(checkpoint, tmp)
    return output_file


def entry_point() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="e.g. nnUNet_results/.../fold_0/checkpoint_final.pth")
    parser.add_argument("-o", default=None, help="output file (default: <checkpoint>_teacher.pth beside it)")
    args = parser.parse_args()
    print(export_teacher(args.checkpoint, args.o))
