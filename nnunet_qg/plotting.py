"""Plots written next to nnU-Net's own progress.png."""
from typing import Dict, List, Sequence

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402

from nnunet_qg.atomic import atomic_path  # noqa: E402


def save_figure(fig, path: str, dpi: int = 80) -> None:
    """Save and close a figure, written under a temporary name and renamed."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)


def plot_progress_panels(logged: Dict[str, List[float]], panels: Dict[str, Sequence[str]], path: str) -> None:
    """One panel per entry of `panels` (title -> logged keys), value against epoch; atomic write."""
    # nnU-Net's own plot changes seaborn's global style; draw ours in matplotlib's default style
    with plt.style.context("default"):
        fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.8 * len(panels)), squeeze=False)
        for ax, (title, keys) in zip(axes[:, 0], panels.items()):
            for key in keys:
                values = logged.get(key, [])
                ax.plot(range(len(values)), values, label=key, linewidth=2, marker="o", markersize=3)
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.legend(loc="best", fontsize=9)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        save_figure(fig, path)


def plot_calibration(pairs: Dict[str, "tuple"], label_names: Sequence[str], summary: Dict[str, dict],
                     path: str, title: str) -> None:
    """Predicted vs true Dice scatter, one panel per kind (e.g. 'real', 'teacher', 'corrupted'), a colour per label."""
    with plt.style.context("default"):
        columns = min(len(pairs), 4)
        rows = -(-len(pairs) // columns)
        fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 5 * rows), squeeze=False)
        for ax in axes.ravel()[len(pairs):]:
            ax.set_visible(False)
        for ax, (kind, (predicted, true)) in zip(axes.ravel(), pairs.items()):
            for i, name in enumerate(label_names):
                ax.scatter(true[:, i], predicted[:, i], s=8, alpha=0.5, label=str(name))
            ax.plot([0, 1], [0, 1], "k--", linewidth=1)
            m = summary[kind]["mean"]
            ax.set_title(f"{kind}\nMAE {m['mae']:.3f}, bias {m['bias']:+.3f}, Pearson {m['pearson']:.3f} "
                         f"(n={len(true)})", fontsize=10)
            ax.set_xlabel("true Dice")
            ax.set_ylabel("predicted Dice")
            ax.set_xlim(-0.02, 1.02)
            ax.set_ylim(-0.02, 1.02)
            ax.legend(loc="upper left", fontsize=8)
            ax.grid(alpha=0.3)
        fig.suptitle(title)
        fig.tight_layout()
        save_figure(fig, path)
