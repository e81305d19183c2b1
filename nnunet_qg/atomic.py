"""Write files under a temporary name and rename, so nothing is ever left half-written."""
import json
import os
from typing import Callable, Dict


def atomic_write_json(obj, path: str) -> None:
    """Write `obj` as JSON to `path` atomically."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
    os.replace(tmp, path)


def atomic_write_text(text: str, path: str) -> None:
    """Write `text` to `path` atomically."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save_checkpoint_with(save: Callable[[str], None], filename: str, extras: Dict[str, object]) -> None:
    """nnU-Net's checkpoint, written by `save(path)`, with `extras` added as top-level keys; written
    under a temporary name and renamed."""
    import torch

    tmp = f"{filename}.tmp-{os.getpid()}"
    save(tmp)
    checkpoint = torch.load(tmp, map_location="cpu", weights_only=False)
    checkpoint.update(extras)
    torch.save(checkpoint, tmp)
    os.replace(tmp, filename)
