"""Tests for comfyc.runtime.ops.image: ComfyUI's image nodes and the VAE-encode pixel prep."""
from __future__ import annotations

import math

import numpy as np
import pytest

from comfyc.runtime.ops import OpError
from comfyc.runtime.ops.image import (
    empty_image,
    image_batch,
    image_invert,
    image_pad_for_outpaint,
    image_scale,
    image_scale_by,
    image_scale_to_total_pixels,
    inpaint_prepare,
    vae_encode_crop,
)
from comfyc.runtime.ops.resample import interpolate, lanczos

torch = pytest.importorskip("torch")


def _image(b: int = 1, h: int = 12, w: int = 20, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((b, h, w, c)).astype(np.float32)


@pytest.mark.parametrize("method", ["nearest-exact", "bilinear", "area", "bicubic"])
def test_image_scale_matches_torch(method: str) -> None:
    """ImageScale = interpolate on the channels-first picture (movedim), as ComfyUI."""
    img = _image()
    got = image_scale(img, method, 31, 17, "disabled")
    want = torch.nn.functional.interpolate(torch.from_numpy(img).movedim(-1, 1), size=(17, 31),
                                           mode=method).movedim(1, -1).numpy()
    assert got.shape == (1, 17, 31, 3)
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_image_scale_lanczos_and_zero_sides() -> None:
    """lanczos goes through PIL; 0 keeps aspect (at least 1 px); 0 and 0 is a no-op."""
    img = _image()
    got = image_scale(img, "lanczos", 40, 24)
    np.testing.assert_array_equal(got, lanczos(img.transpose(0, 3, 1, 2), 40, 24)
                                  .transpose(0, 2, 3, 1))
    assert image_scale(img, "bilinear", 0, 6).shape == (1, 6, 10, 3)
    assert image_scale(img, "bilinear", 30, 0).shape == (1, 18, 30, 3)
    assert image_scale(img, "bilinear", 1, 0).shape == (1, 1, 1, 3)  # round(0.6) = 1
    np.testing.assert_array_equal(image_scale(img, "bicubic", 0, 0), img)


def test_image_scale_by_and_total_pixels() -> None:
    """ImageScaleBy rounds each side; ImageScaleToTotalPixels targets megapixels * 2**20."""
    img = _image(h=10, w=30)
    assert image_scale_by(img, "area", 0.25).shape == (1, 2, 8, 3)  # round(2.5) = 2, 7.5 -> 8
    out = image_scale_to_total_pixels(img, "nearest-exact", 300 / 2**20)  # 300 px: 30x10
    assert out.shape == (1, 10, 30, 3)
    scale = math.sqrt(1.0 * 1024 * 1024 / 300)
    out = image_scale_to_total_pixels(img, "bilinear", 1.0, 64)
    assert out.shape == (1, round(10 * scale / 64) * 64, round(30 * scale / 64) * 64, 3)


def test_image_invert() -> None:
    """ImageInvert is 1 - x on every channel."""
    img = _image(c=4)
    np.testing.assert_array_equal(image_invert(img), 1.0 - img)


def test_image_batch_resizes_second() -> None:
    """ImageBatch resizes image2 with bilinear + centre crop to image1's size."""
    a, b = _image(b=2, h=8, w=8), _image(h=8, w=16, seed=1)
    out = image_batch(a, b)
    assert out.shape == (3, 8, 8, 3)
    want = interpolate(b.transpose(0, 3, 1, 2)[:, :, :, 4:12], 8, 8, "bilinear")
    np.testing.assert_allclose(out[2], want.transpose(0, 2, 3, 1)[0], atol=1e-7)
    np.testing.assert_array_equal(out[:2], a)


def test_image_batch_pads_alpha() -> None:
    """RGB + RGBA: the RGB one gets an alpha channel of 1."""
    out = image_batch(_image(c=3), _image(c=4))
    assert out.shape == (2, 12, 20, 4)
    assert (out[0, :, :, 3] == 1.0).all()


def test_image_pad_for_outpaint_hand_computed() -> None:
    """Grey padding; mask 1 outside, squared ramp inside along padded sides only."""
    img = np.zeros((1, 6, 8, 3), np.float32)
    out, mask = image_pad_for_outpaint(img, left=2, top=0, right=0, bottom=1, feathering=2)
    assert out.shape == (1, 7, 10, 3) and mask.shape == (1, 7, 10)
    assert (out[0, :, :2] == 0.5).all() and (out[0, 6] == 0.5).all()
    assert (out[0, :6, 2:] == 0.0).all()
    assert (mask[0, :, :2] == 1).all() and (mask[0, 6] == 1).all()
    inner = mask[0, :6, 2:]
    # distance to the left side is j, to the bottom side is 6 - i; ramp ((2 - d) / 2)**2
    assert inner[0, 0] == 1.0  # d = 0
    assert inner[0, 1] == 0.25  # d = 1
    assert inner[5, 5] == 0.25  # bottom row: d = 6 - 5 = 1
    assert inner[2, 4] == 0.0
    # no feathering when 2 * feathering >= a side
    _, mask = image_pad_for_outpaint(img, 8, 8, 8, 8, feathering=3)
    assert (mask[0, 8:14, 8:16] == 0).all()


def test_empty_image_color() -> None:
    """EmptyImage: 0xRRGGBB split into channels / 255."""
    out = empty_image(3, 2, 2, 0xFF8000)
    assert out.shape == (2, 2, 3, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out[1, 1, 2], np.array([1.0, 128 / 255, 0.0], np.float32))


def test_vae_encode_crop_offsets() -> None:
    """Crop to multiples of 8 starting at (dim % 8) // 2; alpha dropped."""
    img = _image(h=21, w=16, c=4)
    out = vae_encode_crop(img)
    assert out.shape == (1, 16, 16, 3)
    np.testing.assert_array_equal(out, img[:, 2:18, :, :3])
    with pytest.raises(OpError, match="at least 8x8"):
        vae_encode_crop(_image(h=4, w=4))


def _torch_inpaint(pixels: np.ndarray, mask: np.ndarray, grow: int) -> tuple[np.ndarray, ...]:
    """VAEEncodeForInpaint's pixel and mask steps, written with torch as the oracle."""
    p = torch.from_numpy(pixels).clone()
    m = torch.from_numpy(mask)
    h, w = p.shape[1], p.shape[2]
    x, y = h // 8 * 8, w // 8 * 8
    m = torch.nn.functional.interpolate(m.reshape(-1, 1, m.shape[-2], m.shape[-1]), size=(h, w),
                                        mode="bilinear")
    if (h, w) != (x, y):
        ox, oy = (h % 8) // 2, (w % 8) // 2
        p = p[:, ox:x + ox, oy:y + oy, :]
        m = m[:, :, ox:x + ox, oy:y + oy]
    if grow == 0:
        grown = m
    else:
        pad = math.ceil((grow - 1) / 2)
        grown = torch.clamp(torch.nn.functional.conv2d(m.round(), torch.ones(1, 1, grow, grow),
                                                       padding=pad), 0, 1)
    keep = (1.0 - m.round()).squeeze(1)
    for i in range(3):
        p[:, :, :, i] -= 0.5
        p[:, :, :, i] *= keep
        p[:, :, :, i] += 0.5
    return p[..., :3].numpy(), grown[:, :, :x, :y].round().numpy()


@pytest.mark.parametrize("grow", [0, 1, 4, 5, 6])
@pytest.mark.parametrize("shape", [(1, 24, 32, 3, 12, 16), (2, 27, 35, 4, 27, 35)])
def test_inpaint_prepare_matches_torch(grow: int, shape: tuple[int, ...]) -> None:
    """Mask resize, crop, grey fill and grown noise mask equal ComfyUI's torch steps."""
    b, h, w, c, mh, mw = shape
    pixels = _image(b=b, h=h, w=w, c=c)
    mask = (np.random.default_rng(5).random((1, mh, mw)) > 0.7).astype(np.float32)
    got_pixels, got_mask = inpaint_prepare(pixels, mask, grow)
    want_pixels, want_mask = _torch_inpaint(pixels, mask, grow)
    assert got_pixels.shape == want_pixels.shape and got_mask.shape == want_mask.shape
    np.testing.assert_allclose(got_pixels, want_pixels, atol=1e-6)
    # the bilinear resize may differ in the last bit, which can flip a value at exactly 0.5
    assert np.mean(got_mask != want_mask) < 0.01
    assert not np.shares_memory(got_pixels, pixels)


def test_inpaint_prepare_hand_computed() -> None:
    """A single masked pixel turns grey and grows into a 3x3 box with grow_mask_by=3."""
    pixels = np.zeros((1, 8, 8, 3), np.float32)
    mask = np.zeros((8, 8), np.float32)
    mask[4, 4] = 1.0
    out, noise = inpaint_prepare(pixels, mask, 3)
    assert (out[0, 4, 4] == 0.5).all() and out[0].sum() == 1.5
    assert noise.shape == (1, 1, 8, 8)
    want = np.zeros((8, 8), np.float32)
    want[3:6, 3:6] = 1
    np.testing.assert_array_equal(noise[0, 0], want)
    with pytest.raises(OpError, match="2 masks for 1 pictures"):
        inpaint_prepare(pixels, np.zeros((2, 8, 8), np.float32))
