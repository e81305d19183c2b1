"""The semi-supervised benchmark: every arm on a fixed split, same budget, evaluated on held-out cases."""
