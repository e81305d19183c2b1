"""Index module that nnU-Net imports from the `nnUNet_extTrainer` folder.

It only re-exports the trainer classes from `nnunet_qg.trainers` (the shipped ones) and
`nnunet_qg.experiments.trainers` (the research ones, for the benchmarks that train them), so nnU-Net
finds the very same class objects as `import nnunet_qg` (no second copy of any module).
"""
from nnunet_qg.experiments.trainers import *  # noqa: F401,F403
from nnunet_qg.experiments.trainers import __all__ as _experiments
from nnunet_qg.trainers import *  # noqa: F401,F403
from nnunet_qg.trainers import __all__ as _shipped

__all__ = sorted(set(_shipped) | set(_experiments))
