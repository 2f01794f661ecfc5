"""File helpers: atomic writes with ordinary permissions, and names confined to a folder.

``tempfile.mkstemp`` creates files readable by their owner only (0600); a file renamed into
place from it would keep that mode, so an output, a manifest rewritten by ``comfyc tune`` or a
converted checkpoint would suddenly be unreadable to the group that shares it. These helpers
give the final file the mode an ``open(path, "w")`` would have given it (0666 less the umask).
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path, PurePosixPath

from .errors import Error

__all__ = ["UnsafeName", "atomic_write", "default_mode", "is_inside", "make_readable",
           "make_tree_readable", "relative_name"]

_LOCK = threading.Lock()


def default_mode() -> int:
    """0666 less the process umask (what ``open(path, "w")`` creates)."""
    return 0o666 & ~_umask()


def make_readable(path: str | os.PathLike[str]) -> None:
    """Give a file made by ``mkstemp`` the ordinary mode."""
    os.chmod(path, default_mode())


def make_tree_readable(root: str | os.PathLike[str]) -> None:
    """Give every file under ``root`` the ordinary mode (0666 less the umask; 0777 less the
    umask for an executable) and every folder 0777 less the umask.

    An artifact is written by several libraries, and some create owner-only files (safetensors'
    ``save_file`` writes 0600, ``mkdtemp`` makes 0700 folders): compiled by one user and run by
    a service account, such an artifact would not load. Links are left alone.
    """
    files = default_mode()
    folders = files | (0o111 & ~_umask())
    base = Path(root)
    for path in [base, *base.rglob("*")]:
        if path.is_symlink():
            continue
        if path.is_dir():
            os.chmod(path, folders)
        elif path.is_file():
            executable = path.stat().st_mode & 0o111
            os.chmod(path, folders if executable else files)


def _umask() -> int:
    """The process umask. Reading it means setting it: other threads are kept out meanwhile."""
    with _LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


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


class UnsafeName(Error, ValueError):
    """A name that cannot be used inside a folder; ``reason`` is ``empty``, ``nul``,
    ``absolute`` or ``parent`` (each caller words its own message)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def relative_name(name: str, *, allow_empty: bool = False) -> PurePosixPath:
    """A name from a workflow or a request as a relative POSIX path that cannot leave its
    folder: subfolders and Windows backslashes are fine; an absolute path, a drive letter,
    a ``..`` part or a NUL byte raise :class:`UnsafeName`. Links are the caller's to check
    (with :func:`is_inside` after resolving)."""
    if not allow_empty and name.strip() == "":
        raise UnsafeName("empty")
    if "\0" in name:
        raise UnsafeName("nul")
    posix = name.replace("\\", "/")
    is_drive = len(posix) >= 2 and posix[1] == ":" and posix[0].isalpha()
    if posix.startswith("/") or is_drive:
        raise UnsafeName("absolute")
    parts = PurePosixPath(posix).parts
    if ".." in parts:
        raise UnsafeName("parent")
    return PurePosixPath(*[p for p in parts if p not in ("", ".")])


def is_inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or below it (compare resolved paths)."""
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True
