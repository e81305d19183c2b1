"""Converters to nnU-Net v2 raw datasets with a labelled / unlabelled / test split."""
