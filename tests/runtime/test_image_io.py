"""Tests for comfyc.runtime.image_io: ComfyUI's LoadImage / LoadImageMask / SaveImage on files."""
from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from comfyc.runtime import image_io
from comfyc.runtime.image_io import (
    ImageIOError,
    load_image,
    load_image_mask,
    resolve_image_path,
    save_image_path,
    save_images,
    save_preview,
)


def _rgb(h: int = 6, w: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture()
def input_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "input"
    folder.mkdir()
    return folder


# ---------------------------------------------------------------------------------------------
# Loading


def test_load_rgb_png(input_dir: Path) -> None:
    """RGB PNG: pixels / 255 as [1,H,W,3]; no alpha gives a 64x64 zero mask."""
    pixels = _rgb()
    Image.fromarray(pixels).save(input_dir / "a.png")
    image, mask = load_image("a.png", input_dir)
    assert image.shape == (1, 6, 10, 3) and image.dtype == np.float32
    np.testing.assert_array_equal(image[0], pixels.astype(np.float32) / 255.0)
    assert mask.shape == (1, 64, 64) and mask.dtype == np.float32 and not mask.any()


def test_load_rgba_png_mask_is_inverted_alpha(input_dir: Path) -> None:
    """RGBA PNG: MASK = 1 - alpha / 255, IMAGE is the RGB part."""
    rgba = np.dstack([_rgb(), np.arange(60, dtype=np.uint8).reshape(6, 10) * 4])
    Image.fromarray(rgba, "RGBA").save(input_dir / "m.png")
    image, mask = load_image("m.png", input_dir)
    np.testing.assert_array_equal(image[0], rgba[:, :, :3] / np.float32(255.0))
    np.testing.assert_array_equal(mask[0], 1.0 - rgba[:, :, 3].astype(np.float32) / 255.0)


def test_load_16bit_png_scaled_by_1_over_255(input_dir: Path) -> None:
    """16-bit grayscale: value v becomes floor(v / 255), clipped to 255, in every channel."""
    values = np.array([[0, 254, 255, 765, 1000, 40000, 65280, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(input_dir / "g16.png")
    image, mask = load_image("g16.png", input_dir)
    want = np.minimum(values.astype(np.int64) // 255, 255).astype(np.float32) / 255.0
    assert image.shape == (1, 1, 8, 3)
    for c in range(3):
        np.testing.assert_array_equal(image[0, :, :, c], want)
    assert mask.shape == (1, 64, 64)


def test_load_exif_rotated_jpeg(input_dir: Path) -> None:
    """EXIF orientation 6 (rotate 90 CW): width and height swap, the left half ends on top."""
    pixels = np.zeros((16, 32, 3), np.uint8)
    pixels[:, :16] = (255, 0, 0)
    pixels[:, 16:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(input_dir / "r.jpg", exif=exif, quality=95)
    image, _ = load_image("r.jpg", input_dir)
    assert image.shape == (1, 32, 16, 3)
    want = np.asarray(ImageOps.exif_transpose(Image.open(input_dir / "r.jpg")).convert("RGB"))
    np.testing.assert_array_equal(image[0], want / np.float32(255.0))
    assert image[0, :12, :, 0].mean() > 0.9 and image[0, 20:, :, 2].mean() > 0.9


def test_load_multiframe_tiff_batches_frames_of_first_size(input_dir: Path) -> None:
    """All frames of the first frame's size are batched; others are skipped."""
    frames = [np.dstack([_rgb(seed=k), np.full((6, 10), 50 * k, np.uint8)]) for k in range(3)]
    pictures = [Image.fromarray(f, "RGBA") for f in frames]
    odd = Image.fromarray(np.zeros((4, 4, 4), np.uint8), "RGBA")
    pictures[0].save(input_dir / "multi.tiff", save_all=True,
                     append_images=[pictures[1], odd, pictures[2]])
    image, mask = load_image("multi.tiff", input_dir)
    assert image.shape == (3, 6, 10, 3) and mask.shape == (3, 6, 10)
    for k in range(3):
        np.testing.assert_array_equal(image[k], frames[k][:, :, :3] / np.float32(255.0))
        np.testing.assert_allclose(mask[k], 1.0 - 50 * k / 255.0, rtol=1e-6)


def test_load_palette_gif_transparency(input_dir: Path) -> None:
    """A palette picture with a transparent colour gets a mask from it."""
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    pal.putpixel((1, 1), 1)
    pal.save(input_dir / "t.gif", transparency=1)
    image, mask = load_image("t.gif", input_dir)
    assert image.shape == (1, 4, 4, 3)
    want = np.zeros((4, 4), np.float32)
    want[1, 1] = 1.0
    np.testing.assert_array_equal(mask[0], want)


def test_load_image_mask_channels(input_dir: Path) -> None:
    """LoadImageMask: alpha gives 1 - alpha, colours are taken as they are; [1,H,W]."""
    rgba = np.dstack([_rgb(), np.full((6, 10), 51, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(input_dir / "m.png")
    np.testing.assert_allclose(load_image_mask("m.png", input_dir, "alpha"), 1 - 0.2, rtol=1e-6)
    green = load_image_mask("m.png", input_dir, "green")
    assert green.shape == (1, 6, 10)
    np.testing.assert_array_equal(green[0], rgba[:, :, 1] / np.float32(255.0))
    Image.fromarray(_rgb()).save(input_dir / "rgb.png")
    assert not load_image_mask("rgb.png", input_dir, "alpha").any()  # opaque: zero mask
    with pytest.raises(ImageIOError, match="channel 'hue'"):
        load_image_mask("m.png", input_dir, "hue")


def test_names_annotation_and_subfolders(tmp_path: Path, input_dir: Path) -> None:
    """'name [input]', subfolders (also with backslashes) and '[output]' with output_dir."""
    (input_dir / "sub").mkdir()
    Image.fromarray(_rgb()).save(input_dir / "sub" / "p.png")
    Image.fromarray(_rgb()).save(input_dir / "p.png")
    assert resolve_image_path("p.png [input]", input_dir) == (input_dir / "p.png").resolve()
    assert resolve_image_path("sub/p.png", input_dir) == (input_dir / "sub" / "p.png").resolve()
    assert resolve_image_path("sub\\p.png", input_dir) == (input_dir / "sub" / "p.png").resolve()
    output = tmp_path / "output"
    output.mkdir()
    Image.fromarray(_rgb()).save(output / "o.png")
    with pytest.raises(ImageIOError, match="asks for the output folder.*output_dir"):
        load_image("o.png [output]", input_dir)
    assert load_image("o.png [output]", input_dir, output_dir=output)[0].shape == (1, 6, 10, 3)


@pytest.mark.parametrize("name, message", [
    ("../x.png", "contains '..'"),
    ("sub/../../x.png", "contains '..'"),
    ("/etc/passwd", "absolute path"),
    ("C:\\x.png", "absolute path"),
    ("", "empty image name"),
])
def test_unsafe_names_refused(input_dir: Path, name: str, message: str) -> None:
    """'..', absolute paths and empty names are refused, saying what was asked."""
    with pytest.raises(ImageIOError, match=message) as info:
        load_image(name, input_dir)
    assert repr(name) in str(info.value)


def test_symlink_out_of_input_refused(tmp_path: Path, input_dir: Path) -> None:
    """A link inside the input folder that resolves outside it is refused; one inside is fine."""
    outside = tmp_path / "secret.png"
    Image.fromarray(_rgb()).save(outside)
    (input_dir / "link.png").symlink_to(outside)
    with pytest.raises(ImageIOError, match="outside the input folder"):
        load_image("link.png", input_dir)
    (input_dir / "dir").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(ImageIOError, match="outside the input folder"):
        load_image("dir/secret.png", input_dir)
    Image.fromarray(_rgb()).save(input_dir / "real.png")
    (input_dir / "alias.png").symlink_to(input_dir / "real.png")
    assert load_image("alias.png", input_dir)[0].shape == (1, 6, 10, 3)


def test_missing_and_unreadable_files(input_dir: Path) -> None:
    """A missing file lists what is there; a non-picture says Pillow cannot read it."""
    Image.fromarray(_rgb()).save(input_dir / "there.png")
    with pytest.raises(ImageIOError, match="not found.*'there.png'"):
        load_image("nope.png", input_dir)
    (input_dir / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ImageIOError, match="cannot read image 'bad.png'"):
        load_image("bad.png", input_dir)
    (input_dir / "folder.png").mkdir()
    with pytest.raises(ImageIOError, match="not a file"):
        load_image("folder.png", input_dir)


# ---------------------------------------------------------------------------------------------
# Saving


def _chunks(path: Path) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk of a PNG file."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, pos = [], 8
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        out.append((data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return out


def test_save_pixels_truncate_and_round_trip(tmp_path: Path) -> None:
    """uint8(clip(255 x)) truncation; one PNG per picture; RGBA stays RGBA."""
    images = np.array([[[[0.999, 0.5, 1.5]], [[-0.2, 0.00393, 1.0]]]], np.float32)  # [1,2,1,3]
    results = save_images(images, tmp_path)
    assert results == [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}]
    back = np.asarray(Image.open(tmp_path / "ComfyUI_00001_.png"))
    np.testing.assert_array_equal(back[:, 0], [[254, 127, 255], [0, 1, 255]])
    rgba = np.random.default_rng(0).random((2, 3, 4, 4)).astype(np.float32)
    res = save_images(rgba, tmp_path, "alpha")
    assert [r["filename"] for r in res] == ["alpha_00001_.png", "alpha_00002_.png"]
    assert Image.open(tmp_path / "alpha_00002_.png").mode == "RGBA"


def test_save_counter_continues_from_largest(tmp_path: Path) -> None:
    """counter = 1 + the largest counter of files named '{name}_...' (other names ignored)."""
    for name in ["ComfyUI_00007_.png", "ComfyUI_00003_.png", "ComfyUI_x.png",
                 "ComfyUIx_00050_.png", "other_00099_.png", "ComfyUI_00005_.latent"]:
        (tmp_path / name).write_bytes(b"")
    results = save_images(np.zeros((2, 2, 2, 3), np.float32), tmp_path)
    assert [r["filename"] for r in results] == ["ComfyUI_00008_.png", "ComfyUI_00009_.png"]
    assert save_image_path("ComfyUI", tmp_path)[2] == 10
    assert save_image_path("fresh", tmp_path)[2] == 1


def test_save_subfolders_and_substitutions(tmp_path: Path) -> None:
    """Subfolders are created and reported; %width% etc. and %batch_num% are substituted."""
    img = np.zeros((2, 3, 5, 3), np.float32)
    results = save_images(img, tmp_path, "sub/deep/%width%x%height%_%year%_b%batch_num%")
    year = time.localtime().tm_year
    assert [r["subfolder"] for r in results] == ["sub/deep", "sub/deep"]
    assert [r["filename"] for r in results] == [
        f"5x3_{year}_b0_00001_.png", f"5x3_{year}_b1_00002_.png"]
    assert (tmp_path / "sub" / "deep" / results[1]["filename"]).is_file()
    month = save_image_path("%month%-%day%-%hour%-%minute%-%second%", tmp_path)[1]
    assert len(month) == 14 and month.replace("-", "").isdigit()


def test_save_makes_the_output_folder_or_says_why_not(tmp_path: Path) -> None:
    """A missing output folder (and the folders above it) is made by the first save, counted
    from 1, then reused; a file in its place is a clear error and nothing is written."""
    out = tmp_path / "new" / "deeper"
    img = np.zeros((1, 2, 2, 3), np.float32)
    assert [r["filename"] for r in save_images(img, out, "x")] == ["x_00001_.png"]
    assert [r["filename"] for r in save_images(img, out, "x")] == ["x_00002_.png"]
    assert save_images(img, tmp_path / "rel" / ".." / "rel", "y")[0]["filename"] == "y_00001_.png"
    blocker = tmp_path / "file"
    blocker.write_bytes(b"keep")
    for folder in (blocker, blocker / "below"):
        with pytest.raises(ImageIOError, match="a file is in its place"):
            save_images(img, folder, "x")
    assert blocker.read_bytes() == b"keep" and sorted(p.name for p in tmp_path.iterdir()) == [
        "file", "new", "rel"]


@pytest.mark.parametrize("prefix", ["../x", "sub/../../x", "/tmp/abs/x"])
def test_save_prefix_escape_refused(tmp_path: Path, prefix: str) -> None:
    """A prefix leaving the output folder is refused and nothing is written."""
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ImageIOError, match="outside the output folder") as info:
        save_images(np.zeros((1, 2, 2, 3), np.float32), out, prefix)
    assert repr(prefix) in str(info.value)
    assert not list(tmp_path.glob("x_*")) and not list(out.iterdir())


def test_save_symlinked_subfolder_out_refused(tmp_path: Path) -> None:
    """A subfolder that is a link to outside the output folder is refused."""
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(ImageIOError, match="outside the output folder"):
        save_images(np.zeros((1, 2, 2, 3), np.float32), out, "link/x")
    assert not list((tmp_path / "elsewhere").iterdir())


def test_save_metadata_chunks(tmp_path: Path) -> None:
    """tEXt 'prompt' = json.dumps(prompt), one tEXt per extra_pnginfo key; ASCII-escaped."""
    prompt = {"3": {"class_type": "KSampler", "inputs": {"seed": 5, "text": "caf\u00e9 \u2603"}}}
    workflow = {"nodes": [{"id": 1, "title": "\u00fcber"}], "links": []}
    save_images(np.zeros((1, 2, 2, 3), np.float32), tmp_path, "meta", prompt,
                {"workflow": workflow, "extra": [1, 2]})
    path = tmp_path / "meta_00001_.png"
    text = Image.open(path).text
    assert json.loads(text["prompt"]) == prompt and json.loads(text["workflow"]) == workflow
    assert text["prompt"] == json.dumps(prompt) and text["extra"] == "[1, 2]"
    chunks = _chunks(path)
    texts = [data for kind, data in chunks if kind == b"tEXt"]
    assert texts[0] == b"prompt\x00" + json.dumps(prompt).encode("ascii")
    assert [t.split(b"\x00")[0] for t in texts] == [b"prompt", b"workflow", b"extra"]
    assert not [k for k, _ in chunks if k in (b"iTXt", b"zTXt")]
    # no prompt, no extra: no text chunks at all
    save_images(np.zeros((1, 2, 2, 3), np.float32), tmp_path, "bare")
    assert not [k for k, _ in _chunks(tmp_path / "bare_00001_.png") if k == b"tEXt"]


def _zlib_level_flag(path: Path) -> int:
    idat = next(data for kind, data in _chunks(path) if kind == b"IDAT")
    return idat[1]  # FLG byte: 0x01 for level 0-1, 0x5E for 2-5, 0x9C for 6, 0xDA for 7-9


def test_save_preview_prefix_type_and_level(tmp_path: Path) -> None:
    """PreviewImage: 'ComfyUI_temp_' + 5 letters, type 'temp', compress level 1 (SaveImage 4)."""
    img = np.random.default_rng(0).random((1, 8, 8, 3)).astype(np.float32)
    results = save_preview(img, tmp_path, rng=random.Random(0))
    name = results[0]["filename"]
    assert results[0]["type"] == "temp" and results[0]["subfolder"] == ""
    assert name.startswith("ComfyUI_temp_") and name.endswith("_00001_.png")
    assert set(name[13:18]) <= set("abcdefghijklmnopqrstuvxyz") and len(name) == 29
    assert _zlib_level_flag(tmp_path / name) == 0x01
    save_images(img, tmp_path, "four")
    assert _zlib_level_flag(tmp_path / "four_00001_.png") == 0x5E


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write failing half way leaves neither the final file nor a temporary file behind."""
    save_images(np.zeros((1, 2, 2, 3), np.float32), tmp_path, "ok")
    assert sorted(os.listdir(tmp_path)) == ["ok_00001_.png"]
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        """The disk takes a few bytes, then is full."""
        real_write(fd, bytes(data[:12]))
        raise OSError("disk full")

    monkeypatch.setattr(image_io.os, "write", full)
    with pytest.raises(OSError, match="disk full"):
        save_images(np.zeros((1, 2, 2, 3), np.float32), tmp_path, "ok")
    assert sorted(os.listdir(tmp_path)) == ["ok_00001_.png"]


@pytest.mark.parametrize("size", [64, 320])
def test_saved_bytes_are_comfyuis(tmp_path: Path, size: int) -> None:
    """SaveImage's file is byte for byte what ComfyUI's ``Image.save(pnginfo, compress_level=4)``
    writes (metadata chunks included)."""
    from PIL.PngImagePlugin import PngInfo

    y, x = np.mgrid[0:size, 0:size] / size
    img = np.stack([x, y, (x + y) / 2], -1)[None].astype(np.float32)
    prompt = {"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI"}}}
    extra = {"workflow": {"nodes": [], "links": []}}
    (result,) = save_images(img, tmp_path, "out", prompt, extra)
    info = PngInfo()
    info.add_text("prompt", json.dumps(prompt))
    info.add_text("workflow", json.dumps(extra["workflow"]))
    reference = tmp_path / "reference.png"
    pixels = np.clip(255.0 * img[0], 0, 255).astype(np.uint8)  # nodes.SaveImage
    Image.fromarray(pixels).save(reference, pnginfo=info, compress_level=4)
    assert (tmp_path / result["filename"]).read_bytes() == reference.read_bytes()


def test_saved_pixels_clip_and_truncate(tmp_path: Path) -> None:
    """uint8(clip(255 * x, 0, 255)) as SaveImage computes it, truncating; NaN is written as 0
    and infinities as 0 and 255."""
    values = np.array([np.nan, -np.inf, np.inf, -0.5, 0.5, 1.5, 1.0, 0.0, 0.99999, 0.2],
                      np.float32)
    img = np.repeat(values[None, None, :, None], 3, axis=3)
    (result,) = save_images(img, tmp_path, "clip")
    with Image.open(tmp_path / result["filename"]) as saved:
        pixels = np.asarray(saved)[0, :, 0]
    assert pixels.tolist() == [0, 0, 255, 0, 127, 255, 255, 0, 254, 51]
