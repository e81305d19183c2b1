"""Paired comparison of benchmark arms over seeds: mean difference with a 95 % t-interval, table, plot."""
import textwrap
from typing import Dict, List, Optional

import numpy as np
from scipy import stats

from nnunet_qg.benchmark.profiles import ARMS, LOWER_BOUND
from nnunet_qg.plotting import plt, save_figure

# the lean step's options (issue #33) are judged against pl_mirror_lean, the lean step with its defaults
REFERENCES = {"minus_supervised": LOWER_BOUND, "minus_unweighted": "unweighted_pl", "minus_pl_mirror": "pl_mirror",
              "minus_pl_mirror_lean": "pl_mirror_lean"}


def mean_with_interval(differences: List[float]) -> Dict[str, object]:
    """Mean of paired differences, its 95 % t-interval (None for fewer than 2), n and the differences."""
    d = np.asarray(differences, float)
    out = {"mean": float(d.mean()) if len(d) else None, "ci95": None, "n": int(len(d)),
           "differences": [float(x) for x in d]}
    if len(d) >= 2:
        half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
        out["ci95"] = [out["mean"] - half, out["mean"] + half]
    return out


def dice_by_seed(rows: List[dict], arm: str) -> Dict[int, float]:
    """Test Dice of an arm's finished runs, keyed by seed (by run index if unseeded)."""
    return {(r["seed"] if r.get("seed") is not None else r["repeat"]): r["dice"]
            for r in rows if r["arm"] == arm and "error" not in r}


def paired_summary(rows: List[dict], profile: str, device: str, commit: str) -> dict:
    """{"profile", "commit", "device", "arms": {arm: {"trainer", "seeds", "test_dice", "minus_supervised",
    "minus_unweighted"}}}: each difference over the seeds both arms finished."""
    arms = {}
    for arm in sorted({r["arm"] for r in rows}, key=list(ARMS).index):
        mine = dice_by_seed(rows, arm)
        if not mine:
            continue
        seeds = sorted(mine)
        entry = {"trainer": next(r["trainer"] for r in rows if r["arm"] == arm), "seeds": seeds,
                 "test_dice": [mine[s] for s in seeds]}
        for key, reference in REFERENCES.items():
            theirs = dice_by_seed(rows, reference)
            common = [s for s in seeds if s in theirs]
            if arm != reference and common:
                entry[key] = mean_with_interval([mine[s] - theirs[s] for s in common])
        arms[arm] = entry
    return {"profile": profile, "commit": commit, "device": device, "arms": arms}


def paired_table(summary: dict) -> str:
    """Markdown: per arm, seeds, mean test Dice, and each paired difference with its interval."""
    def cell(d: Optional[dict]) -> str:
        if not d:
            return ""
        ci = "" if d["ci95"] is None else f" [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]"
        return f"{d['mean']:+.4f}{ci} (n={d['n']})"
    lines = ["| arm | seeds | test Dice | " + " | ".join(f"minus {reference} (95 % CI)" for reference in
                                                        REFERENCES.values()) + " |", "|---|---|---|" + "---|" * len(REFERENCES)]
    for arm, e in summary["arms"].items():
        lines.append(f"| {arm} | {len(e['seeds'])} | {np.mean(e['test_dice']):.4f} | "
                     + " | ".join(cell(e.get(key)) for key in REFERENCES) + " |")
    return "\n".join(lines)


# what says which link of quality guidance fails: curve name (runner.CURVES) -> column. q is the score PL-QW weights
# with: the teacher's mirror agreement (pl_mirror*, qg_ssl) or g's (the others); the curves keep their names ("g")
# because the ledger stores them by name
DIAGNOSTICS = {"validation pseudo-Dice": "student val Dice",
               "EMA teacher validation pseudo-Dice": "teacher val Dice",
               "pseudo-labels: true Dice (withheld labels)": "pseudo-label true Dice",
               "g vs true Dice of pseudo-labels: Pearson": "q-truth Pearson",
               "g minus true Dice of pseudo-labels (bias)": "q bias",
               "quality weights: effective sample size": "weight ESS (of B)"}


def diagnostics(rows: List[dict], last_fraction: float = 0.5) -> Dict[str, Dict[str, Optional[float]]]:
    """Per arm, each logged figure of DIAGNOSTICS averaged over the last `last_fraction` of the epochs of
    each run (finite values only), then over its runs; None where the arm does not log it."""
    out: Dict[str, Dict[str, Optional[float]]] = {}
    for arm in sorted({r["arm"] for r in rows if "error" not in r}, key=list(ARMS).index):
        figures = {}
        for curve, column in DIAGNOSTICS.items():
            per_run = []
            for r in rows:
                values = np.asarray(r.get("curves", {}).get(curve, []) if r["arm"] == arm and "error" not in r
                                    else [], float)
                values = values[int(len(values) * (1 - last_fraction)):]
                values = values[np.isfinite(values)]
                if len(values):
                    per_run.append(float(values.mean()))
            figures[column] = float(np.mean(per_run)) if per_run else None
        out[arm] = figures
    return out


def diagnostics_table(figures: Dict[str, Dict[str, Optional[float]]]) -> str:
    """Markdown of diagnostics(): one row per arm."""
    columns = list(DIAGNOSTICS.values())
    lines = ["| arm | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for arm, f in figures.items():
        lines.append(f"| {arm} | " + " | ".join("" if f[c] is None else f"{f[c]:.3f}" for c in columns) + " |")
    return "\n".join(lines)


def plot_paired(summary: dict, filename: str, title: str) -> None:
    """One panel per reference (minus supervised, minus unweighted PL, minus pl_mirror): each arm's paired
    differences (dots) and mean with its 95 % interval (bar)."""
    with plt.style.context("default"):
        fig, axes = plt.subplots(1, len(REFERENCES), figsize=(5.5 * len(REFERENCES), 0.5 * len(summary["arms"]) + 2),
                                 sharey=True)
        names = list(summary["arms"])
        for ax, (key, reference) in zip(axes, REFERENCES.items()):
            for y, arm in enumerate(names):
                d = summary["arms"][arm].get(key)
                if not d:
                    continue
                ax.scatter(d["differences"], [y] * d["n"], s=12, color="grey", alpha=0.6)
                if d["ci95"] is not None:
                    ax.plot(d["ci95"], [y, y], color="C0", linewidth=3)
                ax.plot([d["mean"]], [y], "o", color="C3")
            ax.axvline(0, color="black", linewidth=0.8)
            ax.set_title(f"test Dice minus {reference} (paired by seed)", fontsize=9)
            ax.grid(alpha=0.3)
        axes[0].set_yticks(range(len(names)), names)
        wrapped = textwrap.wrap(title, 130)  # the device line is long: the title must fit the figure's width
        fig.suptitle("\n".join(wrapped), fontsize=9)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.16 * len(wrapped) / fig.get_figheight()))
        save_figure(fig, filename, dpi=100)
