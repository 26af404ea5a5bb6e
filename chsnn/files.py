"""The package's one atomic file writer: run directories, checkpoints,
exports and data caches all write through :func:`atomic_write`. It imports
nothing from chsnn, so any layer may use it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path, content: str | bytes | Callable[[BinaryIO], None]) -> None:
    """Write ``path`` so that a reader finds the old file or the whole new
    one, never a part of it (a crash, Ctrl-C or a full disk midway).

    ``content`` is text (UTF-8), bytes, or a function that writes into a
    binary file (``lambda f: torch.save(obj, f)``). It goes to a temporary
    file beside ``path``, is flushed to the disk, and is renamed over
    ``path`` in one step; on any failure the temporary file is removed and
    ``path`` is left as it was."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; run files and caches are ordinary data
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
