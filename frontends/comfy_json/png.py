"""Text chunks of PNG files: where ComfyUI stores ``prompt`` and ``workflow``.

Reads ``tEXt``, ``zTXt`` and ``iTXt`` chunks with the standard library only (no Pillow), and
checks chunk lengths so a truncated or hostile file gives a clear error, not a crash.
"""

from __future__ import annotations

import struct
import zlib

__all__ = ["PNG_SIGNATURE", "PngError", "is_png", "read_text_chunks"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_TEXT = 64 * 1024 * 1024  # A decompressed text chunk larger than this is refused.


class PngError(ValueError):
    """The PNG file is malformed; the message says where."""


def is_png(data: bytes) -> bool:
    """True when ``data`` starts with the PNG signature."""
    return data[:8] == PNG_SIGNATURE


def _inflate(payload: bytes, where: str) -> bytes:
    decompressor = zlib.decompressobj()
    try:
        out = decompressor.decompress(payload, _MAX_TEXT)
    except zlib.error as exc:
        raise PngError(f"{where}: compressed text does not inflate: {exc}") from None
    if decompressor.unconsumed_tail:
        raise PngError(f"{where}: compressed text is larger than {_MAX_TEXT // 2**20} MiB")
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
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        start, end = pos + 8, pos + 8 + length
        if end + 4 > len(data):
            raise PngError(f"chunk {kind!r} at byte {pos} runs past the end of the file "
                           f"(truncated PNG)")
        body = data[start:end]
        where = f"{kind.decode('latin-1')} chunk at byte {pos}"
        if kind == b"tEXt":
            key, _, text = body.partition(b"\0")
            texts.setdefault(key.decode("latin-1"), text.decode("latin-1"))
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\0")
            texts.setdefault(key.decode("latin-1"), _inflate(rest[1:], where).decode("latin-1"))
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            if len(rest) < 2:
                raise PngError(f"{where}: truncated iTXt header")
            compressed = rest[0] == 1
            rest = rest[2:]
            _lang, _, rest = rest.partition(b"\0")
            _translated, _, text = rest.partition(b"\0")
            raw = _inflate(text, where) if compressed else text
            try:
                texts.setdefault(key.decode("latin-1"), raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise PngError(f"{where}: iTXt text is not UTF-8") from None
        elif kind == b"IEND":
            return texts
        pos = end + 4
    raise PngError(f"the file ends at byte {len(data)} without an IEND chunk (truncated PNG)")
