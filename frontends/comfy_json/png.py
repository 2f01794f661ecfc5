"""Text chunks of PNG files: where ComfyUI stores ``prompt`` and ``workflow``.

Reads ``tEXt``, ``zTXt`` and ``iTXt`` chunks with the standard library only (no Pillow), and
checks chunk lengths so a truncated or hostile file gives a clear error, not a crash. The text
of all chunks together is bounded (:data:`_MAX_TEXT` after decompression), so a small file of
many compressed chunks cannot inflate into gigabytes.
"""

from __future__ import annotations

import struct
import zlib

__all__ = ["PNG_SIGNATURE", "PngError", "is_png", "read_text_chunks"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_TEXT = 64 * 1024 * 1024  # Text chunks (after decompression) larger than this are refused.
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")


class PngError(ValueError):
    """The PNG file is malformed; the message says where."""


def is_png(data: bytes) -> bool:
    """True when ``data`` starts with the PNG signature."""
    return data[:8] == PNG_SIGNATURE


def _inflate(payload: bytes, where: str, budget: int) -> bytes:
    """Decompress at most ``budget`` bytes (what is left of the file's text allowance)."""
    decompressor = zlib.decompressobj()
    try:
        out = decompressor.decompress(payload, max(budget, 0) + 1)
    except zlib.error as exc:
        raise PngError(f"{where}: compressed text does not inflate: {exc}") from None
    if len(out) > budget or decompressor.unconsumed_tail:
        raise PngError(f"{where}: the text chunks are larger than {_MAX_TEXT // 2**20} MiB "
                       f"together")
    return out


def read_text_chunks(data: bytes) -> dict[str, str]:
    """Return the PNG's text chunks by keyword (the first of each keyword wins).

    Args:
        data: The whole PNG file.

    Raises:
        PngError: Not a PNG, or a chunk runs past the end of the file.
    """
    if not is_png(data):
        raise PngError("not a PNG file (bad signature)")
    texts: dict[str, str] = {}
    left = _MAX_TEXT  # Text bytes still allowed (decompressed).
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        start, end = pos + 8, pos + 8 + length
        if end + 4 > len(data):
            raise PngError(f"chunk {kind!r} at byte {pos} runs past the end of the file "
                           f"(truncated PNG)")
        if kind == b"IEND":
            return texts
        where = f"{kind.decode('latin-1')} chunk at byte {pos}"
        key, _, rest = (data[start:end].partition(b"\0") if kind in _TEXT_CHUNKS
                        else (b"", b"", b""))
        name = key.decode("latin-1")
        # NOTE: the first chunk of a keyword wins; later ones are not even inflated.
        if kind in _TEXT_CHUNKS and name not in texts:
            if kind == b"tEXt":
                raw = rest
            elif kind == b"zTXt":
                raw = _inflate(rest[1:], where, left)
            else:
                if len(rest) < 2:
                    raise PngError(f"{where}: truncated iTXt header")
                compressed = rest[0] == 1
                _lang, _, rest = rest[2:].partition(b"\0")
                _translated, _, text = rest.partition(b"\0")
                raw = _inflate(text, where, left) if compressed else text
            left -= len(raw)
            if left < 0:
                raise PngError(f"{where}: the text chunks are larger than "
                               f"{_MAX_TEXT // 2**20} MiB together")
            try:
                texts[name] = raw.decode("utf-8" if kind == b"iTXt" else "latin-1")
            except UnicodeDecodeError:
                raise PngError(f"{where}: iTXt text is not UTF-8") from None
        pos = end + 4
    raise PngError(f"the file ends at byte {len(data)} without an IEND chunk (truncated PNG)")
