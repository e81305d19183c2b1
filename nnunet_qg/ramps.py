"""Ramp-up schedules for unlabelled loss weights, in epochs."""
import math


def sigmoid_rampup(epoch: float, rampup_epochs: float) -> float:
    """exp(-5 (1 - t)^2) with t = epoch / rampup_epochs clipped to [0, 1] (Laine & Aila, 2017)."""
    if rampup_epochs <= 0:
        return 1.0
    t = min(max(epoch / rampup_epochs, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def linear_rampup(epoch: float, start: float, length: float) -> float:
    """0 before `start`, then rising linearly to 1 over `length` epochs (the first epoch at 1/length)."""
    if epoch < start:
        return 0.0
    if length <= 0:
        return 1.0
    return float(min(1.0, (epoch - start + 1) / length))
