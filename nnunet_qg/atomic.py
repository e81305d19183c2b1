"""Write files under a temporary name and rename, so nothing is ever left half-written."""
import json
import os
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary name beside `path` for the block to write to; renamed to `path` when the block ends
    without an error and wrote something there (a writer that writes nothing leaves `path` alone); removed
    when the block fails. The name keeps `path`'s extension, for writers that choose the format by it."""
    tmp = f"{path}.tmp-{os.getpid()}{os.path.splitext(path)[1]}"
    try:
        yield tmp
    except BaseException:
        if os.path.isfile(tmp):
            os.remove(tmp)
        raise
    if os.path.isfile(tmp):
        os.replace(tmp, path)


def atomic_write_json(obj, path: str) -> None:
    """Write `obj` as JSON to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)


def atomic_write_text(text: str, path: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)

