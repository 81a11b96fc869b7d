"""Write files atomically: to a temporary file beside the target, then rename over it.

A crash, a full disk or Ctrl-C mid-write leaves the old file (or none), never half a file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from emosteer.errors import BadInputError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed to `path`.

    Example:
        with atomic_path("vectors/joy.safetensors") as tmp:
            save_file(tensors, str(tmp))
    """
    target = Path(path)
    if target.is_dir():
        raise BadInputError(f"{target} is a directory: pass a file path")
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    except OSError as err:
        raise BadInputError(f"cannot write {target} ({err.strerror or err}): choose a "
                            "writable path") from err
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        # mkstemp (and writers such as safetensors) make the file private (0600): give it
        # the target's mode, or the usual 0644
        os.chmod(tmp, target.stat().st_mode & 0o777 if target.exists() else 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write bytes atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
