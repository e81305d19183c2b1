"""The quality predictor g(image, mask) -> Dice per label: corruptions, network, metrics."""
