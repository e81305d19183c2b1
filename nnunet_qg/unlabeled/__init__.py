"""Unlabelled images: raw layout, preprocessing with the dataset's plans, training loader."""
