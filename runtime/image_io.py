"""Loading and saving pictures as ComfyUI's LoadImage, LoadImageMask, SaveImage, PreviewImage.

Loading (``nodes.LoadImage``): every frame of the file (multi-page TIFF, animated GIF/WebP/PNG)
is EXIF-transposed, 32-bit integer pictures are divided by 255, and the frame is converted to
RGB; frames whose size differs from the first frame are skipped. The MASK is ``1 - alpha`` when
the frame has an alpha channel (or a palette with a transparent colour), else a 64x64 zero mask.

Names come from workflows and are confined to their folder: a name may use subfolders
(``sub/picture.png``, backslashes accepted) and ComfyUI's annotation suffix (``"name [input]"``,
``[output]``, ``[temp]``), but ``..``, absolute paths and symlinks that resolve outside the
folder are refused with an `ImageIOError` saying what was asked and how to fix it.

Saving (``nodes.SaveImage``, ``folder_paths.get_save_image_path``): one PNG per picture,
pixels ``uint8(clip(255 * x))`` (truncation), named ``f"{name}_{counter:05}_.png"`` where
``counter`` is one more than the largest counter of the files already named ``{name}_...`` in
that folder. The prefix may hold subfolders (confined to the output folder; ``\\`` separates
folders too, so no saved name ever holds a backslash) and the server-side substitutions
``%width%``, ``%height%``, ``%year%``, ``%month%``, ``%day%``, ``%hour%``, ``%minute%``,
``%second%`` and ``%batch_num%``. The workflow is stored in tEXt chunks: ``prompt`` =
``json.dumps(prompt)`` and one chunk per key of ``extra_pnginfo`` (normally ``workflow``).
The bytes are those of ComfyUI's ``PIL.Image.save(..., compress_level=4)``.

No output is ever overwritten, also when several runs (threads, ``comfyc run`` processes,
server workers, Ray replicas on one disk) save into one folder at once: a save holds an
exclusive lock on the output folder (``flock`` on the folder itself: no lock file appears)
while it picks its counter and writes, and each file is written to a temporary name and
*linked* to its final name, which fails instead of replacing a file that exists — the save then
takes the next counter. So a crash never leaves a half-written PNG under the final name, and a
folder where locks do not work (some network filesystems) still loses nothing.
"""
from __future__ import annotations

import contextlib
import errno
import io
import itertools
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import numpy as np
from PIL import Image, ImageFile, ImageOps, ImageSequence, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from comfyc.runtime.files import UnsafeName, is_inside, relative_name
from comfyc.runtime.ops._common import as_image

from .errors import Error

__all__ = [
    "MASK_CHANNELS",
    "ImageIOError",
    "SaveResult",
    "load_image",
    "load_image_mask",
    "png_metadata",
    "resolve_image_path",
    "save_image_path",
    "save_images",
    "save_preview",
]

#: ``channel`` choices of LoadImageMask, in ComfyUI's order.
MASK_CHANNELS = ("alpha", "red", "green", "blue")
#: One saved file as ComfyUI reports it: ``{"filename", "subfolder", "type"}``.
SaveResult = dict[str, str]

# NOTE: 16-bit PNGs open as "I;16*" in current Pillow, as "I" in older ones (whose behaviour
# ComfyUI's `i.mode == 'I'` check was written for); all of them get the 1/255 scaling.
_INT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_ANNOTATIONS = ("input", "output", "temp")
# NOTE: PreviewImage's alphabet, as ComfyUI writes it ("p" twice, no "w").
_PREVIEW_ALPHABET = "abcdefghijklmnopqrstupvxyz"
_T = TypeVar("_T")


class ImageIOError(Error, ValueError):
    """A picture that cannot be loaded or saved; the message says what, where and the fix.

    Attributes:
        name: The name or prefix as written in the workflow.
        folder: The folder it was resolved against (None when none applies).
    """

    def __init__(self, message: str, name: str, folder: Path | None = None) -> None:
        super().__init__(message)
        self.name = name
        self.folder = folder


# ---------------------------------------------------------------------------------------------
# Names


def _split_annotation(name: str) -> tuple[str, str]:
    """Splits ``"pic.png [output]"`` into (``"pic.png"``, ``"output"``); default ``"input"``.

    NOTE: folder_paths.annotated_filepath strips the tag and the character before it; only a
    space is stripped here, so ``"pic.png[input]"`` keeps its last letter.
    """
    for tag in _ANNOTATIONS:
        suffix = f"[{tag}]"
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            return (base[:-1] if base.endswith(" ") else base), tag
    return name, "input"


def _relative_name(name: str, original: str, folder: Path) -> PurePosixPath:
    """Turns a workflow name into a relative POSIX path, refusing anything that could escape."""
    try:
        return relative_name(name)
    except UnsafeName as exc:
        messages = {
            "empty": f"empty image name {original!r}; expected a file name such as "
                     f"'example.png' in {str(folder)!r}",
            "nul": f"image name {original!r} contains a NUL character",
            "absolute": f"image name {original!r} is an absolute path; images are loaded from "
                        f"{str(folder)!r} only. Copy the file there and use its name relative "
                        f"to it",
            "parent": f"image name {original!r} contains '..'; names may use subfolders of "
                      f"{str(folder)!r} but may not leave it. Move the file inside that folder",
        }
        raise ImageIOError(messages[exc.reason], original, folder) from None


def _available(folder: Path) -> str:
    """A short list of the files in `folder`, for error messages."""
    try:
        names = sorted(p.name for p in folder.iterdir() if p.is_file())
    except OSError:
        return "none (the folder cannot be read)"
    shown = ", ".join(repr(n) for n in names[:8]) or "none"
    return shown + (f" (and {len(names) - 8} more)" if len(names) > 8 else "")


def resolve_image_path(
    name: str,
    input_dir: str | os.PathLike[str],
    *,
    output_dir: str | os.PathLike[str] | None = None,
    temp_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Resolves an image name from a workflow (LoadImage's ``image`` input) to a file.

    Args:
        name: The name as written (``"pic.png"``, ``"sub/pic.png"``, ``"pic.png [output]"``).
        input_dir: The input folder (names without annotation and ``[input]`` names).
        output_dir: The output folder, needed for ``[output]`` names.
        temp_dir: The temp folder, needed for ``[temp]`` names.

    Returns:
        The absolute path of the file (symlinks resolved).

    Raises:
        ImageIOError: An unsafe name, a link leaving the folder, or no such file.
    """
    if not isinstance(name, str):
        raise ImageIOError(
            f"image name {name!r} is a {type(name).__name__}; expected a file name string",
            str(name),
        )
    plain, tag = _split_annotation(name)
    folders = {"input": input_dir, "output": output_dir, "temp": temp_dir}
    chosen = folders[tag]
    if chosen is None:
        raise ImageIOError(
            f"image name {name!r} asks for the {tag} folder, but none was given; pass "
            f"{tag}_dir=..., or copy the file into the input folder and drop ' [{tag}]'",
            name,
        )
    folder = Path(chosen).expanduser()
    rel = _relative_name(plain, name, folder)
    base = folder.resolve()
    candidate = base.joinpath(*rel.parts)
    if not (candidate.exists() or candidate.is_symlink()):
        raise ImageIOError(
            f"image {name!r} not found in the {tag} folder {str(base)!r}; put the file at "
            f"{str(candidate)!r} or use one of: {_available(candidate.parent)}",
            name, base,
        )
    target = candidate.resolve()
    if not is_inside(target, base):
        raise ImageIOError(
            f"image name {name!r} resolves through a symlink to {str(target)!r}, outside the "
            f"{tag} folder {str(base)!r}; comfyc refuses links that leave the folder. Copy the "
            "file into the folder instead",
            name, base,
        )
    if not target.is_file():
        raise ImageIOError(
            f"image name {name!r} is {str(target)!r}, which is not a file; expected a picture "
            "such as 'example.png'",
            name, base,
        )
    return target


# ---------------------------------------------------------------------------------------------
# Loading


def _pillow(fn: Callable[[Any], _T], arg: Any, name: str, path: Path) -> _T:
    """Calls a Pillow function, retrying once with truncated files allowed.

    NOTE: node_helpers.pillow does the same retry (Pillow issues #4472 and #2445).
    """
    try:
        return fn(arg)
    except (OSError, ValueError):
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            return fn(arg)
        except (OSError, ValueError, UnidentifiedImageError) as exc:
            raise ImageIOError(
                f"cannot read image {name!r} ({str(path)!r}): {exc}; expected a picture file "
                "Pillow can open (PNG, JPEG, WebP, GIF, TIFF, ...). Re-export the file",
                name, path.parent,
            ) from exc
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _scale_int_mode(frame: Image.Image) -> Image.Image:
    """Maps 16/32-bit integer pictures to 8-bit range the way LoadImage does (``v * 1/255``)."""
    if frame.mode in _INT_MODES:
        if frame.mode != "I":
            frame = frame.convert("I")
        # NOTE: nodes.LoadImage: i.point(lambda i: i * (1 / 255)) (Pillow truncates to int).
        frame = frame.point(lambda v: v * (1 / 255))
    return frame


def _alpha_mask(frame: Image.Image) -> np.ndarray | None:
    """``1 - alpha`` of a frame, or None when it has no transparency."""
    if "A" in frame.getbands():
        alpha = np.array(frame.getchannel("A")).astype(np.float32) / np.float32(255.0)
    elif frame.mode == "P" and "transparency" in frame.info:
        # NOTE: nodes.LoadImage (2025+): palette pictures with a transparent colour.
        alpha = np.array(frame.convert("RGBA").getchannel("A")).astype(np.float32)
        alpha /= np.float32(255.0)
    else:
        return None
    return (np.float32(1.0) - alpha).astype(np.float32)


def load_image(
    name: str,
    input_dir: str | os.PathLike[str],
    *,
    output_dir: str | os.PathLike[str] | None = None,
    temp_dir: str | os.PathLike[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """LoadImage: a picture file as (IMAGE, MASK).

    Args:
        name: The ``image`` input as written in the workflow.
        input_dir: The input folder names are resolved in.
        output_dir: The output folder, for ``"name [output]"``.
        temp_dir: The temp folder, for ``"name [temp]"``.

    Returns:
        (IMAGE float32 ``[N,H,W,3]``, MASK float32 ``[N,H,W]`` or ``[N,64,64]`` of zeros when
        no frame has transparency), N = number of frames of the first frame's size.

    Raises:
        ImageIOError: The name is unsafe or missing, or the file is not a readable picture.
    """
    path = resolve_image_path(name, input_dir, output_dir=output_dir, temp_dir=temp_dir)
    images: list[np.ndarray] = []
    masks: list[np.ndarray | None] = []
    size: tuple[int, int] | None = None
    with _pillow(Image.open, path, name, path) as img:
        for frame in ImageSequence.Iterator(img):
            frame = _scale_int_mode(_pillow(ImageOps.exif_transpose, frame, name, path))
            rgb = frame.convert("RGB")
            if size is None:
                size = rgb.size
            if rgb.size != size:
                # NOTE: nodes.LoadImage skips frames whose size differs from the first one.
                continue
            images.append(np.array(rgb).astype(np.float32) / np.float32(255.0))
            masks.append(_alpha_mask(frame))
            if img.format == "MPO":
                # NOTE: an MPO (stereo JPEG) yields its first picture only.
                break
    if not images:
        raise ImageIOError(f"image {name!r} ({str(path)!r}) holds no frames", name, path.parent)
    height, width = images[0].shape[:2]
    # NOTE: ComfyUI gives a 64x64 zero mask for a frame without alpha. Frames with and without
    # alpha in one file (where torch.cat would fail in ComfyUI) get full-size zero masks here.
    if all(m is None for m in masks):
        mask_list = [np.zeros((64, 64), dtype=np.float32) for _ in masks]
    else:
        mask_list = [m if m is not None else np.zeros((height, width), np.float32) for m in masks]
    return np.stack(images), np.stack(mask_list)


def load_image_mask(
    name: str,
    input_dir: str | os.PathLike[str],
    channel: str = "alpha",
    *,
    output_dir: str | os.PathLike[str] | None = None,
    temp_dir: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """LoadImageMask: one channel of a picture's first frame as a MASK.

    ``alpha`` gives ``1 - alpha`` (1 where transparent); a colour channel is taken as it is.
    Pictures are converted to RGBA first (no alpha means alpha 1, so a mask of zeros).

    Args:
        name: The ``image`` input as written in the workflow.
        input_dir: The input folder names are resolved in.
        channel: One of `MASK_CHANNELS`.
        output_dir: The output folder, for ``"name [output]"``.
        temp_dir: The temp folder, for ``"name [temp]"``.

    Returns:
        MASK float32 ``[1,H,W]``.
    """
    if channel not in MASK_CHANNELS:
        raise ImageIOError(
            f"channel {channel!r} is not supported; expected one of "
            f"{', '.join(repr(c) for c in MASK_CHANNELS)}",
            name,
        )
    path = resolve_image_path(name, input_dir, output_dir=output_dir, temp_dir=temp_dir)
    with _pillow(Image.open, path, name, path) as img:
        # NOTE: nodes.LoadImageMask.load_image (classic): first frame, EXIF transpose, RGBA.
        frame = _pillow(ImageOps.exif_transpose, img, name, path)
        if frame.getbands() != ("R", "G", "B", "A"):
            frame = _scale_int_mode(frame).convert("RGBA")
        band = channel[0].upper()
        values = np.array(frame.getchannel(band)).astype(np.float32) / np.float32(255.0)
    if band == "A":
        values = (np.float32(1.0) - values).astype(np.float32)
    return values[None]


# ---------------------------------------------------------------------------------------------
# Saving


def _substitute(prefix: str, width: int, height: int, now: time.struct_time) -> str:
    """The server-side ``%...%`` substitutions of folder_paths.get_save_image_path."""
    for key, value in (
        ("%width%", str(width)),
        ("%height%", str(height)),
        ("%year%", str(now.tm_year)),
        ("%month%", str(now.tm_mon).zfill(2)),
        ("%day%", str(now.tm_mday).zfill(2)),
        ("%hour%", str(now.tm_hour).zfill(2)),
        ("%minute%", str(now.tm_min).zfill(2)),
        ("%second%", str(now.tm_sec).zfill(2)),
    ):
        prefix = prefix.replace(key, value)
    return prefix


#: Per (folder, filename): the folder's (device, inode, mtime) right after this process's
#: last save into it, and the counter a scan would then give. See :func:`_next_counter`.
_COUNTERS: dict[tuple[str, str], tuple[tuple[int, int, int], int]] = {}


def _folder_state(folder: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns


def _remember_counter(folder: Path, filename: str, counter: int) -> None:
    """Note the next counter after a save (called under the folder lock)."""
    state = _folder_state(folder)
    if state is not None:
        if len(_COUNTERS) > 1024:
            _COUNTERS.clear()
        _COUNTERS[(os.fspath(folder), filename)] = (state, counter)


def _next_counter(folder: Path, filename: str) -> int:
    """1 + the largest counter of ``{filename}_<digits>...`` files in `folder` (1 if none).

    NOTE: folder_paths.get_save_image_path.map_filename: the first ``len(filename) + 1``
    characters must be ``filename + "_"``; the counter is the int before the next ``_`` (0 when
    not a number). ComfyUI measures ``basename(prefix)``, which is empty for a prefix ending in
    ``/`` (``"sub/"`` saves as ``sub_00001_.png``): no file ever matched and every save got
    counter 1. The name actually written is measured here.

    A folder this process saved into last, unchanged since (same inode and modification
    time), is not listed again: its next counter is known. Listing costs more the fuller the
    folder (about 1 ms per 1,000 files). A file added by another program within the same
    clock tick as that save can go unseen; the save then takes the next free counter (no
    file is ever replaced) instead of one above that file's.
    """
    state = _folder_state(folder)
    known = _COUNTERS.get((os.fspath(folder), filename))
    if state is not None and known is not None and known[0] == state:
        return known[1]
    try:
        entries = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return 1
    n = len(filename)
    best = 0
    for entry in entries:
        head = entry[: n + 1]
        if head[-1:] != "_" or os.path.normcase(head[:-1]) != os.path.normcase(filename):
            continue
        try:
            digits = int(entry[n + 1:].split("_")[0])
        except ValueError:
            digits = 0
        best = max(best, digits)
    return best + 1


def save_image_path(
    filename_prefix: str,
    output_dir: str | os.PathLike[str],
    image_width: int = 0,
    image_height: int = 0,
) -> tuple[Path, str, int, str, str]:
    """Where SaveImage writes: ComfyUI's ``folder_paths.get_save_image_path``.

    Args:
        filename_prefix: The node's prefix (``"ComfyUI"``, ``"sub/%year%/name"``).
        output_dir: The output folder; the prefix's subfolders must stay inside it.
        image_width: Value of ``%width%``.
        image_height: Value of ``%height%``.

    Returns:
        (folder, filename, counter, subfolder, prefix after substitution). The folder exists.

    Raises:
        ImageIOError: The prefix is absolute or leaves the output folder (also through links).
    """
    original = filename_prefix
    base = Path(output_dir).expanduser()
    if not isinstance(filename_prefix, str):
        raise ImageIOError(f"filename_prefix {original!r} is a {type(original).__name__}; "
                           "expected text such as 'ComfyUI'", str(original), base)
    if "\0" in filename_prefix:
        raise ImageIOError(f"filename_prefix {original!r} contains a NUL character", original, base)
    if "%" in filename_prefix:
        filename_prefix = _substitute(filename_prefix, image_width, image_height, time.localtime())
    # NOTE: a backslash separates folders as on Windows (and as the server's /view reads
    # names); kept literally, it made a file name that /view could never serve.
    filename_prefix = filename_prefix.replace("\\", "/")
    normalized = os.path.normpath(filename_prefix)
    subfolder = os.path.dirname(normalized)
    filename = os.path.basename(normalized)
    # NOTE: a bare file name cannot leave the output folder, so only a prefix with folders
    # needs the resolved paths (resolving costs a system call per path component).
    root = base.resolve() if subfolder else base
    folder = root / subfolder if subfolder else base
    parts = normalized.split("/")
    if normalized == ".":
        raise ImageIOError(f"filename_prefix {original!r} names no file; use a prefix such as "
                           "'ComfyUI' or 'sub/ComfyUI'", original, base)
    # NOTE: with no subfolder the folder is the resolved root itself.
    if os.path.isabs(filename_prefix) or ".." in parts or (
            subfolder and not is_inside(folder.resolve(), root)):
        # NOTE: the message names no folder: the output folder's location is the operator's
        # business, and a server passes this message to its clients.
        raise ImageIOError(
            f"filename_prefix {original!r} would save outside the output folder; saving "
            "outside it is not allowed. Use a prefix relative to the output folder, such as "
            "'ComfyUI' or 'sub/ComfyUI'",
            original, root,
        )
    hidden = [part for part in parts if part.startswith(".")]
    if hidden:
        # NOTE: a name starting with "." is hidden: servers do not serve such files (they are
        # temporaries and locks), so an output saved under one could never be fetched.
        raise ImageIOError(
            f"filename_prefix {original!r} names a hidden file or folder ({hidden[0]!r} "
            "starts with '.'); use a prefix such as 'ComfyUI' or 'sub/ComfyUI'", original, base)
    try:
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        if not subfolder:
            raise ImageIOError(
                "the output folder cannot be made: a file is in its place (or in the place of "
                "a folder above it); choose another output folder", original, base) from None
        raise ImageIOError(
            f"filename_prefix {original!r} names the folder {subfolder!r}, but a file of that "
            "name is in the output folder; choose another prefix", original, root) from None
    counter = _next_counter(folder, filename)
    return folder, filename, counter, subfolder, filename_prefix



def _to_pixels(picture: np.ndarray) -> np.ndarray:
    """``uint8(clip(255 * x))`` of one ``[H,W,C]`` picture (C = 1, 2, 3 or 4)."""
    # NOTE: nodes.SaveImage: np.clip(255. * image, 0, 255).astype(np.uint8) truncates. NaN (which
    # numpy casts to an unspecified value) is written as 0.
    if picture.shape[-1] not in (1, 2, 3, 4):
        raise ImageIOError(
            f"cannot save a picture with {picture.shape[-1]} channels; expected 1, 3 (RGB) or 4 "
            "(RGBA)",
            "",
        )
    scaled = np.multiply(picture, np.float32(255.0), dtype=np.float32)
    np.fmax(scaled, np.float32(0.0), out=scaled)  # clip's lower bound; fmax takes 0 over NaN
    np.minimum(scaled, np.float32(255.0), out=scaled)
    return scaled.astype(np.uint8)


def _png_bytes(pixels: np.ndarray, texts: list[tuple[str, str]], compress_level: int
               ) -> bytes:
    """The PNG file of ComfyUI's ``PIL.Image.save(pnginfo=texts, compress_level=...)``."""
    info = PngInfo()
    for key, text in texts:
        info.add_text(key, text)
    buffer = io.BytesIO()
    picture = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    try:
        picture.save(buffer, format="PNG", pnginfo=info, compress_level=compress_level)
    except (ValueError, OSError) as exc:
        raise ImageIOError(f"cannot save the picture as PNG: {exc}", "") from None
    return buffer.getvalue()


def png_metadata(prompt: Any, extra_pnginfo: Mapping[str, Any] | None) -> PngInfo:
    """The tEXt chunks SaveImage writes, for pictures saved another way (``comfyc demo``'s
    digits): ``prompt`` and one per ``extra_pnginfo`` key; pass it as PIL's ``pnginfo``."""
    return _metadata(prompt, extra_pnginfo)


def _metadata(prompt: Any, extra_pnginfo: Mapping[str, Any] | None) -> PngInfo:
    """:func:`_texts` as Pillow's ``pnginfo``."""
    info = PngInfo()
    for key, text in _texts(prompt, extra_pnginfo):
        info.add_text(key, text)
    return info


def _texts(prompt: Any, extra_pnginfo: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """The tEXt chunks ComfyUI writes: ``prompt`` and one per ``extra_pnginfo`` key."""
    from .provenance import json_text

    texts = []
    if prompt is not None:
        texts.append(("prompt", json_text(prompt)))
    if extra_pnginfo is not None:
        for key in extra_pnginfo:
            texts.append((str(key), json_text(extra_pnginfo[key])))
    return texts


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` (``flock`` on the directory itself) while a save picks
    its counter and writes; other processes and threads saving into it wait.

    Where the lock is unavailable (no ``fcntl``, a filesystem that refuses it) saves go ahead
    unlocked: :func:`_publish` still never replaces a file, it only costs retries.
    """
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    try:
        handle = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # Closing the descriptor releases the lock.


def _publish(tmp: str, path: Path) -> bool:
    """Give the finished temporary file its final name unless that name exists.

    Returns False when ``path`` exists (the caller takes the next counter). A hard link is
    atomic and fails on an existing name; where links are not supported the name is claimed
    with ``O_EXCL`` first and the file renamed over the claim.
    """
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV,
                             errno.EMLINK, errno.ENOSYS):
            raise
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            return False
        os.replace(tmp, path)
        return True
    os.unlink(tmp)
    return True


_TEMPORARIES = itertools.count()


def _temporary(folder: Path) -> tuple[int, str]:
    """A new hidden file in ``folder`` for a picture being written: ``(fd, path)``.

    Made with ``O_EXCL`` under a name unique to this process and call (``mkstemp``'s random
    names and its 0600 mode, which needed a ``chmod`` after, cost a tenth of a small picture's
    save), with the mode any file gets (0666 less the umask), like ComfyUI's saves.
    """
    while True:
        path = os.path.join(folder, f".comfyc-{os.getpid()}-{threading.get_ident()}-"
                                    f"{next(_TEMPORARIES)}.png.tmp")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
        except FileExistsError:  # a stale temporary of an earlier process with our pid
            continue


def _write_new(data: bytes, folder: Path, name: Callable[[int], str], counter: int
               ) -> tuple[str, int]:
    """Writes the file ``data`` under ``name(counter)``, or the next free counter; returns
    (name, counter).

    The file is written to a temporary file in the folder first, so no half-written file ever
    appears under a final name.
    """
    fd, tmp = _temporary(folder)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        # NOTE: no fsync: the link already guarantees that no half-written file ever appears
        # under the final name, and an fsync per image costs more than a tiny model's whole
        # sampling step on some disks (ComfyUI does not fsync either).
        while not _publish(tmp, folder / name(counter)):
            counter += 1
        return name(counter), counter
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _save(
    images: Any,
    base_dir: str | os.PathLike[str],
    filename_prefix: str,
    prompt: Any,
    extra_pnginfo: Mapping[str, Any] | None,
    compress_level: int,
    kind: str,
) -> list[SaveResult]:
    batch = as_image(images, "images")
    if batch.shape[0] == 0:
        return []
    texts = _texts(prompt, extra_pnginfo)
    # NOTE: encoded before the folder is locked: the name does not change the bytes, and
    # other saves into the folder wait only for the counter and the writes.
    files = [_png_bytes(_to_pixels(picture), texts, compress_level) for picture in batch]
    root = Path(base_dir).expanduser()
    results: list[SaveResult] = []
    # NOTE: save_image_path makes a missing output folder (the first save into a new folder
    # runs unlocked: _publish still never replaces a file).
    with _folder_lock(root):
        # NOTE: SaveImage passes images[0].shape[1] (width) and shape[0] (height).
        folder, filename, counter, subfolder, _ = save_image_path(
            filename_prefix, root, batch.shape[2], batch.shape[1])
        for batch_number, data in enumerate(files):
            stem = filename.replace("%batch_num%", str(batch_number))
            file, counter = _write_new(data, folder,
                                       lambda c, stem=stem: f"{stem}_{c:05}_.png", counter)
            results.append({"filename": file, "subfolder": subfolder, "type": kind})
            counter += 1
        if "%batch_num%" not in filename:  # (such names never match the scan)
            _remember_counter(folder, filename, counter)
    return results


def save_images(
    images: Any,
    output_dir: str | os.PathLike[str],
    filename_prefix: str = "ComfyUI",
    prompt: Any = None,
    extra_pnginfo: Mapping[str, Any] | None = None,
    compress_level: int = 4,
) -> list[SaveResult]:
    """SaveImage: one PNG per picture in the output folder.

    Args:
        images: IMAGE ``[B,H,W,C]`` in [0,1].
        output_dir: The output folder.
        filename_prefix: The node's prefix (subfolders and ``%...%`` substitutions allowed).
        prompt: The API prompt, stored as the ``prompt`` chunk (None: no chunk).
        extra_pnginfo: Further chunks, normally ``{"workflow": ui_workflow}`` (None: none).
        compress_level: zlib level (ComfyUI uses 4).

    Returns:
        ``[{"filename", "subfolder", "type": "output"}]`` per picture, as ComfyUI's UI result.

    Raises:
        ImageIOError: The prefix leaves the output folder or a picture cannot be encoded.
    """
    return _save(images, output_dir, filename_prefix, prompt, extra_pnginfo, compress_level,
                 "output")


def save_preview(
    images: Any,
    temp_dir: str | os.PathLike[str],
    prompt: Any = None,
    extra_pnginfo: Mapping[str, Any] | None = None,
    *,
    rng: random.Random | None = None,
) -> list[SaveResult]:
    """PreviewImage: SaveImage into the temp folder with a random prefix, compress level 1.

    Args:
        images: IMAGE ``[B,H,W,C]`` in [0,1].
        temp_dir: The temp folder.
        prompt: The API prompt chunk (None: none).
        extra_pnginfo: Further chunks (None: none).
        rng: Source of the 5 random letters (default: the `random` module).

    Returns:
        ``[{"filename", "subfolder", "type": "temp"}]`` per picture.
    """
    choose = (rng or random).choice
    # NOTE: nodes.PreviewImage: prefix "ComfyUI" + "_temp_" + 5 random letters.
    prefix = "ComfyUI_temp_" + "".join(choose(_PREVIEW_ALPHABET) for _ in range(5))
    return _save(images, temp_dir, prefix, prompt, extra_pnginfo, 1, "temp")
