"""Index module that nnU-Net imports from the `nnUNet_extTrainer` folder.

It only re-exports the trainer classes from `nnunet_qg.trainers`, so nnU-Net finds the very
same class objects as `import nnunet_qg` (no second copy of any module).
"""
from nnunet_qg.trainers import *  # noqa: F401,F403
from nnunet_qg.trainers import __all__  # noqa: F401
