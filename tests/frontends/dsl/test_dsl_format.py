"""``comfyc fmt``: canonical layout, every comment kept, --check, atomic writes; and the
``comfyc convert`` paths that go through the DSL."""

from __future__ import annotations

import json
import os
import stat
import struct
import zlib
from pathlib import Path

import pytest

from comfyc.cli.main import main
from comfyc.frontends.comfy_json.api import graph_to_api
from comfyc.frontends.dsl import parse_dsl
from comfyc.frontends.dsl.format import format_source

REPO = Path(__file__).resolve().parents[3]
CORPUS = (REPO / ".." / "shared" / "corpus" / "comfyui-examples").resolve()

COMMENTED = '''\
# SD txt2img, commented
# second header line

param seed: INT = 42   # the seed
param prompt: STRING = """
a handwritten
digit seven   # not a comment: inside a raw string
"""  # multi-line prompt

# the model
ckpt = CheckpointLoaderSimple(ckpt_name="tiny-digits.safetensors")
positive = CLIPTextEncode(text=prompt, clip=ckpt.CLIP)  # pos
negative = CLIPTextEncode(   # neg prompt
   text="# not a comment either",
   # the clip
   clip=ckpt.CLIP)
latent = EmptyLatentImage(width=64, height=64, batch_size=1)


@3  # pinned id
sampler = KSampler(model=ckpt.MODEL, seed=seed, steps=20, cfg=5.0, sampler_name="euler",  # a
                   scheduler="normal", positive=positive, negative=negative,
                   latent_image=latent, denoise=1.0,
                   # end of args
                   )  # done
image = VAEDecode(samples=sampler, vae=ckpt.VAE)
output image  # the result
SaveImage(images=image, filename_prefix="digit")
# trailing comment

# another
'''

EXPECTED = '''\
# SD txt2img, commented
# second header line

param seed: INT = 42  # the seed
param prompt: STRING = """
a handwritten
digit seven   # not a comment: inside a raw string
"""  # multi-line prompt

# the model
ckpt = CheckpointLoaderSimple(ckpt_name="tiny-digits.safetensors")
positive = CLIPTextEncode(text=prompt, clip=ckpt.CLIP)  # pos
negative = CLIPTextEncode(
    # neg prompt
    text="# not a comment either",
    # the clip
    clip=ckpt.CLIP,
)
latent = EmptyLatentImage(width=64, height=64, batch_size=1)

# pinned id
@3 sampler = KSampler(
    model=ckpt.MODEL,
    seed=seed,
    steps=20,
    cfg=5.0,
    sampler_name="euler",  # a
    scheduler="normal",
    positive=positive,
    negative=negative,
    latent_image=latent,
    denoise=1.0,
    # end of args
)  # done
image = VAEDecode(samples=sampler, vae=ckpt.VAE)
output image  # the result
SaveImage(images=image, filename_prefix="digit")
# trailing comment

# another
'''


def _comments(text: str) -> list[str]:
    """Comment texts, found with the parser's own scanner (so '#' in strings is not one)."""
    from comfyc.frontends.dsl.parse import scan_tokens

    return [t.text.rstrip() for t in scan_tokens(text) if t.kind == "comment"]


def test_format_keeps_every_comment_in_place() -> None:
    """The commented file comes out in canonical layout, each comment next to its statement."""
    assert format_source(COMMENTED, "c.cfy") == EXPECTED
    assert _comments(format_source(COMMENTED, "c.cfy")) == _comments(COMMENTED)


def test_format_is_idempotent_and_meaning_preserving() -> None:
    """Formatting twice changes nothing, and the graph prints the same before and after."""
    once = format_source(COMMENTED, "c.cfy")
    assert format_source(once, "c.cfy") == once
    assert str(parse_dsl(once, "c.cfy")) == str(parse_dsl(COMMENTED, "c.cfy"))


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.cfy")), ids=lambda p: p.name)
def test_examples_are_formatted(path: Path) -> None:
    """The shipped examples are already in canonical layout (fmt --check passes on them)."""
    text = path.read_text(encoding="utf-8")
    assert format_source(text, str(path)) == text


def test_format_crlf_and_odd_layout() -> None:
    """CRLF input, statements sharing a line, and a comment inside a list are all handled."""
    text = ('x = EmptyLatentImage(width=64, height=64, batch_size=1) y = EmptyLatentImage(\r\n'
            '  width=[1,  # one\r\n    2], height=8)\r\n')
    assert format_source(text, "c.cfy") == (
        'x = EmptyLatentImage(width=64, height=64, batch_size=1)\n'
        'y = EmptyLatentImage(\n'
        '    # one\n'
        '    width=[1, 2],\n'
        '    height=8,\n'
        ')\n')


def test_fmt_cli_check_and_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--check exits 1 and writes nothing; without it the file is rewritten, mode kept."""
    path = tmp_path / "w.cfy"
    path.write_text(COMMENTED, encoding="utf-8")
    os.chmod(path, 0o640)
    assert main(["fmt", "--check", str(path)]) == 1
    assert "would reformat" in capsys.readouterr().err
    assert path.read_text(encoding="utf-8") == COMMENTED
    assert main(["fmt", str(path)]) == 0
    assert path.read_text(encoding="utf-8") == EXPECTED
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert main(["fmt", "--check", str(path)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["w.cfy"]  # No temporary file left.


def test_fmt_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A broken file is reported in the error format and left alone; JSON is refused."""
    bad = tmp_path / "bad.cfy"
    bad.write_text('x = EmptyLatentImage(width=64\ny = X()\n', encoding="utf-8")
    assert main(["fmt", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:1:30: error: missing ')'" in err
    assert bad.read_text(encoding="utf-8") == 'x = EmptyLatentImage(width=64\ny = X()\n'
    api = tmp_path / "w.json"
    api.write_text('{"1": {"class_type": "EmptyLatentImage", "inputs": {}}}', encoding="utf-8")
    assert main(["fmt", str(api)]) == 2
    assert "comfyc convert" in capsys.readouterr().err
    assert main(["fmt", str(tmp_path / "missing.cfy")]) == 2


def _png_with(chunks: dict[str, str]) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
    for key, value in chunks.items():
        out += chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))
    return out + chunk(b"IDAT", zlib.compress(b"\0\0")) + chunk(b"IEND", b"")


def _executed(prompt: dict) -> dict:
    return {k: (v["class_type"], v["inputs"]) for k, v in prompt.items()}


def test_convert_from_every_form(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """convert --to dsl|api works from DSL, API JSON, UI JSON and PNG, and agrees."""
    api_path = CORPUS / "lora__lora.api.json"
    ui_path = CORPUS / "lora__lora.ui.json"
    api = json.loads(api_path.read_text(encoding="utf-8"))
    png = tmp_path / "lora.png"
    png.write_bytes(_png_with({"prompt": json.dumps(api)}))

    texts = {}
    for name, path in (("api", api_path), ("ui", ui_path), ("png", png)):
        assert main(["convert", str(path), "--to", "dsl"]) == 0
        texts[name] = capsys.readouterr().out
    assert texts["api"] == texts["png"]
    for text in texts.values():  # Each DSL text means the very prompt ComfyUI made.
        assert _executed(graph_to_api(parse_dsl(text, "x.cfy"))) == _executed(api)

    dsl = tmp_path / "lora.cfy"
    dsl.write_text(texts["ui"], encoding="utf-8")
    assert main(["convert", str(dsl), "--to", "api"]) == 0
    back = json.loads(capsys.readouterr().out)
    assert _executed(back) == _executed(api)
    assert all(v["_meta"]["title"] for v in back.values())
    assert main(["convert", str(dsl), "--to", "dsl"]) == 0
    assert capsys.readouterr().out == texts["ui"]
    assert main(["check", str(dsl)]) == 0
