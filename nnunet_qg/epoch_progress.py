"""One progress line per epoch from nnU-Net's training log (what `nnUNetv2_qg_demo` prints while it trains)."""
import re
from typing import Callable, Dict, Optional

_NUMBER = r"(-?\d+(?:\.\d+)?(?:e-?\d+)?|nan)"


class EpochProgress:
    """Feed it the lines of nnUNetv2_train's output; at each 'Epoch time' it prints one line:
    `epoch 3/16  train loss -0.41  pseudo Dice 0.62  [warm-up | PL-QW weight 0.50, QAR weight 0.00]  5.1 s`."""

    def __init__(self, num_epochs: Optional[int] = None, write: Callable[[str], None] = print,
                 prefix: str = "      "):
        self.num_epochs, self.write, self.prefix = num_epochs, write, prefix
        self.figures: Dict[str, str] = {}
        self.lines_written = 0

    def __call__(self, text: str) -> None:
        if match := re.match(r"Epoch (\d+)$", text):
            self.figures = {"epoch": match.group(1)}
        elif match := re.match(r"train_loss " + _NUMBER, text):
            self.figures["train loss"] = f"{float(match.group(1)):.3f}"
        elif text.startswith("Pseudo dice"):
            values = [float(v) for v in re.findall(r"\((" + _NUMBER[1:-1] + r")\)", text)] or \
                     [float(v) for v in re.findall(_NUMBER, text.split("dice", 1)[1])]
            if values:
                self.figures["pseudo Dice"] = f"{sum(values) / len(values):.3f}"
        elif text.startswith("SSL: "):
            parts = dict(p.strip().split(" ", 1) for p in text[5:].split(",") if " " in p.strip())
            plqw, qar = parts.get("weight_plqw"), parts.get("weight_qar")
            if plqw is not None and qar is not None:
                self.figures["ssl"] = "warm-up" if float(plqw) == 0 and float(qar) == 0 else \
                    f"PL-QW weight {float(plqw):.2f}, QAR weight {float(qar):.2f}"
        elif match := re.match(r"Epoch time: " + _NUMBER + " s", text):
            self._emit(float(match.group(1)))

    def _emit(self, seconds: float) -> None:
        epoch = int(self.figures.get("epoch", -1)) + 1
        total = f"/{self.num_epochs}" if self.num_epochs else ""
        cells = [f"epoch {epoch}{total}"] + [f"{k} {self.figures[k]}" for k in ("train loss", "pseudo Dice")
                                             if k in self.figures]
        if "ssl" in self.figures:
            cells.append(self.figures["ssl"])
        self.write(f"{self.prefix}{'  '.join(cells)}  ({seconds:.1f} s)")
        self.lines_written += 1
