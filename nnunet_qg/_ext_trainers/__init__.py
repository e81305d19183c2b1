"""Folder named in `nnUNet_extTrainer`; see nnunet_qg_trainer_index.py."""
