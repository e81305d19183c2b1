"""Research-only code of nnunet-qg (installed as `nnunet_qg.experiments`): the quality predictor's options that
the measurements rejected or did not adopt, and the trainers that measured them (README.md here). No shipped
trainer, no default and no quality-control path imports it; nnU-Net still finds its trainers by name."""
