"""Confining client-given file names to a folder (``/view``, ``/upload/image``, LoadImage).

A name from a request may name subfolders (``a/b.png``, Windows backslashes too) but never
leave its folder: absolute paths, drive letters, ``..`` parts, NUL bytes and symlinks whose
target lies outside the folder are refused with :class:`UnsafePathError`.
"""

from __future__ import annotations

from pathlib import Path

from comfyc.runtime.files import UnsafeName, is_inside, relative_name

__all__ = ["UnsafePathError", "safe_join"]


class UnsafePathError(ValueError):
    """A client-given name that would leave its folder."""


def safe_join(root: str | Path, *parts: str) -> Path:
    """``root / parts...``, checked to stay inside ``root`` (after resolving links).

    Raises:
        UnsafePathError: The name is absolute, has ``..``, a drive or NUL, or links out.
    """
    base = Path(root).resolve()
    pieces: list[str] = []
    for part in parts:
        if not isinstance(part, str):
            raise UnsafePathError(f"expected a file name, found {type(part).__name__}")
        try:
            pieces.extend(relative_name(part, allow_empty=True).parts)
        except UnsafeName as exc:
            raise UnsafePathError({
                "nul": "a file name may not contain NUL bytes",
                "absolute": f"{part!r} is an absolute path; give a name inside the folder",
                "parent": f"{part!r} goes up with '..'; give a name inside the folder",
            }[exc.reason]) from None
    resolved = base.joinpath(*pieces).resolve()
    if not is_inside(resolved, base):
        raise UnsafePathError(f"{'/'.join(pieces)!r} leads outside its folder (a symlink)")
    return resolved
