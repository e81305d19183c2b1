"""Benchmark results: per-arm summary over runs, gap closed, markdown table, JSON and bar plot."""
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import numpy as np

from nnunet_qg.plotting import plt, save_figure

from nnunet_qg.benchmark.profiles import ARMS, LOWER_BOUND, UPPER_BOUND

COLUMNS = ["labelled", "arm", "runs", "Dice", "spread", "per label", "gap closed", "train s", "epoch s",
           "epoch ratio", "g MAE (real)", "g Pearson (real)"]


def summarise(rows: List[dict]) -> List[dict]:
    """One line per (fraction, arm): mean and spread (sample std) of the test Dice over runs, gap closed.

    The gap is that between the supervised arm of the same fraction and full supervision; the upper
    bound's own line is listed under the fraction 'all'. Times are ratios to the supervised arm's."""
    groups: Dict[tuple, List[dict]] = defaultdict(list)
    for r in rows:
        if "error" not in r:
            groups[("all" if r["arm"] == UPPER_BOUND else r["fraction"], r["arm"])].append(r)
    upper = groups.get(("all", UPPER_BOUND))
    upper_dice = float(np.mean([r["dice"] for r in upper])) if upper else None
    lines = []
    order = {a: i for i, a in enumerate(ARMS)}
    for (fraction, arm), runs in sorted(groups.items(), key=lambda kv: (kv[0][0] == "all", kv[0][0],
                                                                         order[kv[0][1]])):
        dice = np.array([r["dice"] for r in runs])
        line = {"labelled": fraction, "arm": arm, "trainer": runs[0]["trainer"], "runs": len(runs),
                "Dice": float(dice.mean()), "spread": float(dice.std(ddof=1)) if len(dice) > 1 else float("nan"),
                "per label": " / ".join(f"{np.mean([r['dice_per_label'][k] for r in runs]):.4f}"
                                        for k in sorted(runs[0]["dice_per_label"], key=int)),
                "train s": float(np.mean([r["train_wall_s"] for r in runs])),
                "epoch s": float(np.mean([r["epoch_s"] for r in runs]))}
        for key, column in (("g_last_real_mae", "g MAE (real)"), ("g_last_real_pearson", "g Pearson (real)")):
            values = [r[key] for r in runs if key in r]
            line[column] = float(np.mean(values)) if values else ""
        lower = groups.get((fraction, LOWER_BOUND))
        if lower:
            lower_dice = float(np.mean([r["dice"] for r in lower]))
            line["epoch ratio"] = line["epoch s"] / float(np.mean([r["epoch_s"] for r in lower]))
            if upper_dice is not None and upper_dice > lower_dice and arm != LOWER_BOUND:
                line["gap closed"] = (line["Dice"] - lower_dice) / (upper_dice - lower_dice)
        lines.append(line)
    return lines


def markdown_table(lines: List[dict]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return "" if np.isnan(v) else f"{v:.4f}" if abs(v) < 10 else f"{v:.0f}"
        return str(v)
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(fmt(line.get(c, "")) for c in COLUMNS) + " |" for line in lines]
    return "\n".join(out)


def plot_bars(lines: List[dict], filename: str, title: str,
              reference: Optional[Dict[str, float]] = None) -> List[Tuple[str, float]]:
    """Bar plot of the test Dice per arm (grouped by labelled fraction) with the spread as error bars. Returns
    the (arm, Dice) of each bar drawn."""
    # a run of the upper bound alone has no fraction of its own: its bar then forms the only group
    fractions = sorted({l["labelled"] for l in lines if l["labelled"] != "all"}) or ["all"]
    drawn: List[Tuple[str, float]] = []
    arms = [a for a in ARMS if any(l["arm"] == a for l in lines)]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(arms) * len(fractions)), 4.5))
    width = 0.8 / len(fractions)
    for i, fraction in enumerate(fractions):
        xs, ys, es = [], [], []
        for j, arm in enumerate(arms):
            match = [l for l in lines if l["arm"] == arm and l["labelled"] == (
                "all" if arm == UPPER_BOUND else fraction)]
            if match:
                xs.append(j + (i - (len(fractions) - 1) / 2) * width)
                ys.append(match[0]["Dice"])
                drawn.append((arm, match[0]["Dice"]))
                es.append(0 if np.isnan(match[0]["spread"]) else match[0]["spread"])
        ax.bar(xs, ys, width, yerr=es, capsize=3, label=f"{fraction} labelled")
        for x, y in zip(xs, ys):
            ax.text(x, y, f"{y:.3f}", ha="center", va="bottom", fontsize=7)
    for name, value in (reference or {}).items():
        ax.axhline(value, ls="--", lw=0.8, color="grey")
        ax.text(len(arms) - 0.5, value, name, fontsize=7, va="bottom", ha="right", color="grey")
    values = [l["Dice"] for l in lines]
    ax.set_ylim(max(0.0, min(values) - 0.05), min(1.0, max(values) + 0.03))
    ax.set_xticks(range(len(arms)))
    ax.set_xticklabels(arms, rotation=20)
    ax.set_ylabel("mean test Dice (foreground labels)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, filename, dpi=120)
    return drawn


def plot_curves(rows: List[dict], filename: str, title: str) -> None:
    """Per-epoch curves of every run (supervised training loss, validation loss, pseudo-Dice), one panel
    each: with --seed, the arms of a run coincide until their unlabelled losses start."""
    rows = [r for r in rows if "curves" in r]
    names = list(dict.fromkeys(name for r in rows for name in r["curves"]))  # every run's, in order
    if not names:  # no run logged a curve (e.g. rows without their model folders): nothing to plot
        return
    with plt.style.context("default"):
        fig, axes = plt.subplots(len(names), 1, figsize=(9, 2.8 * len(names)), squeeze=False)
        for ax, name in zip(axes[:, 0], names):
            for r in sorted(rows, key=lambda r: (r["fraction"], r["repeat"], list(ARMS).index(r["arm"]))):
                if name not in r["curves"]:
                    continue
                values = r["curves"][name]
                seed = "" if r.get("seed") is None else f", seed {r['seed']}"
                ax.plot(range(len(values)), values, marker="o", markersize=2, linewidth=1.5,
                        label=f"{r['arm']} ({r['fraction']}, run {r['repeat']}{seed})")
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        save_figure(fig, filename, dpi=100)
