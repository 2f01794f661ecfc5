"""Atomic file writes with ordinary permissions.

``tempfile.mkstemp`` creates files readable by their owner only (0600); a file renamed into
place from it would keep that mode, so an output, a manifest rewritten by ``comfyc tune`` or a
converted checkpoint would suddenly be unreadable to the group that shares it. These helpers
give the final file the mode an ``open(path, "w")`` would have given it (0666 less the umask).
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

__all__ = ["atomic_write", "default_mode", "make_readable"]

_LOCK = threading.Lock()


def default_mode() -> int:
    """0666 less the process umask (what ``open(path, "w")`` creates)."""
    with _LOCK:  # Reading the umask means setting it; keep other threads out meanwhile.
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def make_readable(path: str | os.PathLike[str]) -> None:
    """Give a file made by ``mkstemp`` the ordinary mode."""
    os.chmod(path, default_mode())


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename:
    a reader sees the old file or the new one, never half of one."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        make_readable(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
