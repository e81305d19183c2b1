"""Quality control at inference: the trained quality predictor scores every prediction, no ground truth."""
