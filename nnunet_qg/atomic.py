"""Write files under a temporary name and rename, so nothing is ever left half-written."""
import json
import os


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

