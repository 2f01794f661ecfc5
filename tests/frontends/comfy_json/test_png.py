"""PNG text chunks: ComfyUI's metadata is read; truncated and hostile files are PngErrors."""

from __future__ import annotations

import io
import json
import struct
import zlib

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from comfyc.frontends.comfy_json.png import PNG_SIGNATURE, PngError, read_text_chunks


def _png(**texts: str) -> bytes:
    info = PngInfo()
    for key, value in texts.items():
        info.add_text(key, value, zip=key.startswith("z"))
    out = io.BytesIO()
    Image.new("RGB", (4, 4)).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_reads_prompt_and_workflow() -> None:
    """tEXt chunks as ComfyUI writes them; the first of a keyword wins."""
    data = _png(prompt=json.dumps({"1": {}}), workflow="{}")
    assert read_text_chunks(data) == {"prompt": '{"1": {}}', "workflow": "{}"}


def test_reads_compressed_text() -> None:
    """zTXt (Pillow writes it for zip=True) inflates."""
    assert read_text_chunks(_png(zprompt="x" * 1000))["zprompt"] == "x" * 1000


@pytest.mark.parametrize("cut", [9, 20, 40, -5])
def test_truncated_files_are_png_errors(cut: int) -> None:
    """A file cut anywhere gives a PngError naming the problem."""
    with pytest.raises(PngError, match="truncated|IEND"):
        read_text_chunks(_png(prompt="{}")[:cut])


def test_many_compressed_chunks_cannot_inflate_without_bound() -> None:
    """Chunks of distinct keywords that each inflate to 8 MiB stop at the 64 MiB total."""
    bomb = zlib.compress(b"\0" * (8 << 20), 9)
    chunks = b"".join(_chunk(b"zTXt", f"k{i}".encode() + b"\0\0" + bomb) for i in range(40))
    data = PNG_SIGNATURE + chunks + _chunk(b"IEND", b"")
    assert len(data) < 2 << 20
    with pytest.raises(PngError, match="larger than 64 MiB together"):
        read_text_chunks(data)


def test_repeated_keywords_are_not_inflated_again() -> None:
    """Later chunks of one keyword are skipped, so repeating a chunk costs nothing."""
    small = zlib.compress(b"{}")
    bomb = zlib.compress(b"\0" * (8 << 20), 9)
    chunks = _chunk(b"zTXt", b"prompt\0\0" + small) + b"".join(
        _chunk(b"zTXt", b"prompt\0\0" + bomb) for _ in range(40))
    data = PNG_SIGNATURE + chunks + _chunk(b"IEND", b"")
    assert read_text_chunks(data) == {"prompt": "{}"}


def test_itxt_must_be_utf8() -> None:
    """iTXt text is UTF-8 by definition; other bytes are an error."""
    data = PNG_SIGNATURE + _chunk(b"iTXt", b"prompt\0\0\0\0\0\xff\xfe") + _chunk(b"IEND", b"")
    with pytest.raises(PngError, match="not UTF-8"):
        read_text_chunks(data)
