"""Make nnU-Net find our trainers through its `nnUNet_extTrainer` variable.

Kept free of heavy imports: it runs at every interpreter start via the installed
`nnunet_qg_ext_trainer.pth` file.
"""
import os

ENV_VAR = "nnUNet_extTrainer"
EXT_TRAINER_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ext_trainers")


def register_ext_trainer_path() -> str:
    """Append our trainer folder to `nnUNet_extTrainer`, keeping what the user set.

    Returns the resulting value of the variable.
    """
    current = os.environ.get(ENV_VAR, "")
    parts = [p for p in current.split(os.pathsep) if p]
    if not any(os.path.abspath(p) == EXT_TRAINER_FOLDER for p in parts):
        parts.append(EXT_TRAINER_FOLDER)
    os.environ[ENV_VAR] = os.pathsep.join(parts)
    return os.environ[ENV_VAR]
