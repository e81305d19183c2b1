"""Shared bits of the benchmark scripts: device description and result writing."""
import json
import os
import platform
from datetime import date
from typing import Dict, List

import torch


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA), torch {torch.__version__}"
    return f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def print_table(rows: List[Dict], columns: List[str]) -> str:
    """Markdown table of `rows` (dicts) with `columns`; printed and returned."""
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    text = "\n".join(lines)
    print(text)
    return text


def write_json(result: Dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    result = {"date": date.today().isoformat(), **result}
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2, default=float)
    os.replace(tmp, path)
    print(f"wrote {path}")
