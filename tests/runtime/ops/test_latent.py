"""Tests for comfyc.runtime.ops.latent: ComfyUI's latent nodes on small hand-made latents."""
from __future__ import annotations

import numpy as np
import pytest

from comfyc.runtime.ops import OpError
from comfyc.runtime.ops.latent import (
    empty_latent_image,
    latent_composite,
    latent_from_batch,
    latent_upscale,
    latent_upscale_by,
    repeat_latent_batch,
    set_latent_noise_mask,
)
from comfyc.runtime.ops.resample import interpolate


def _latent(b: int = 1, h: int = 8, w: int = 8, seed: int = 0) -> dict:
    return {"samples": np.random.default_rng(seed).standard_normal((b, 4, h, w)).astype(np.float32)}


def test_empty_latent_image_floor_divides() -> None:
    """EmptyLatentImage: zeros [B,4,H//8,W//8]; sizes that are not multiples of 8 floor."""
    out = empty_latent_image(512, 768, 2)
    assert out.keys() == {"samples"}
    assert out["samples"].shape == (2, 4, 96, 64) and out["samples"].dtype == np.float32
    assert not out["samples"].any()
    assert empty_latent_image(100, 70)["samples"].shape == (1, 4, 8, 12)
    with pytest.raises(OpError, match="batch_size"):
        empty_latent_image(64, 64, 0)


def test_latent_upscale_sizes_and_aspect() -> None:
    """Pixel sizes // 8; 0 keeps aspect from the other side; each side >= 64 px."""
    lat = _latent(h=8, w=16)  # 128x64 pixels
    assert latent_upscale(lat, "bilinear", 256, 128)["samples"].shape == (1, 4, 16, 32)
    # width 0: width = round(16 * 128 / 8) = 256 -> 32 latent
    assert latent_upscale(lat, "nearest-exact", 0, 128)["samples"].shape == (1, 4, 16, 32)
    # height 0: height = round(8 * 100 / 16) = 50 -> clamped to 64 -> 8 latent; 100 // 8 = 12
    assert latent_upscale(lat, "area", 100, 0)["samples"].shape == (1, 4, 8, 12)
    assert latent_upscale(lat, "bicubic", 8, 8)["samples"].shape == (1, 4, 8, 8)  # min 64 px
    same = latent_upscale(lat, "bilinear", 0, 0)
    assert same is not lat and same["samples"] is lat["samples"]


def test_latent_upscale_values_follow_interpolate() -> None:
    """The latent is resized with the chosen interpolation; other keys are carried over."""
    lat = _latent(h=8, w=8)
    lat["batch_index"] = [3]
    lat["noise_mask"] = np.ones((1, 1, 64, 64), np.float32)
    out = latent_upscale(lat, "bilinear", 96, 128, "disabled")
    np.testing.assert_array_equal(out["samples"], interpolate(lat["samples"], 16, 12, "bilinear"))
    assert out["batch_index"] == [3] and out["noise_mask"] is lat["noise_mask"]
    bislerped = latent_upscale(lat, "bislerp", 128, 128)["samples"]
    assert bislerped.shape == (1, 4, 16, 16) and np.isfinite(bislerped).all()


def test_latent_upscale_center_crop() -> None:
    """crop='center' cuts the latent to the target aspect before resizing."""
    lat = {"samples": np.arange(1 * 4 * 4 * 8, dtype=np.float32).reshape(1, 4, 4, 8)}
    out = latent_upscale(lat, "nearest-exact", 64, 64, "center")["samples"]  # 8x8 latent
    np.testing.assert_array_equal(out, interpolate(lat["samples"][:, :, :, 2:6], 8, 8,
                                                   "nearest-exact"))


def test_latent_upscale_by_rounds() -> None:
    """LatentUpscaleBy: round(dim * scale) with Python's round (ties to even)."""
    lat = _latent(h=5, w=7)
    assert latent_upscale_by(lat, "bilinear", 1.5)["samples"].shape == (1, 4, 8, 10)  # 7.5, 10.5
    assert latent_upscale_by(lat, "nearest-exact", 0.5)["samples"].shape == (1, 4, 2, 4)


def test_latent_composite_plain() -> None:
    """Paste at (x, y) // 8, clipped at the edges; samples_to is not modified."""
    to = {"samples": np.zeros((1, 4, 4, 4), np.float32), "batch_index": [5]}
    src = {"samples": np.ones((1, 4, 3, 3), np.float32)}
    out = latent_composite(to, src, 16, 8)
    want = np.zeros((4, 4), np.float32)
    want[1:4, 2:4] = 1
    np.testing.assert_array_equal(out["samples"][0, 0], want)
    assert out["batch_index"] == [5] and not to["samples"].any()


def test_latent_composite_feather_hand_computed() -> None:
    """feather 16 px = 2 latent px: ramps of 1/2, 2/2 on inner sides; corners multiply."""
    to = {"samples": np.zeros((1, 1, 6, 6), np.float32)}
    src = {"samples": np.ones((1, 1, 4, 4), np.float32)}
    out = latent_composite(to, src, 8, 8, feather=16)["samples"][0, 0]
    # source at rows/cols 1..4; all four sides are inside the destination.
    ramp = np.array([0.5, 1.0, 1.0, 0.5], np.float32)
    want = np.zeros((6, 6), np.float32)
    want[1:5, 1:5] = np.outer(ramp, ramp)
    np.testing.assert_allclose(out, want)
    # at the top-left corner only the right and bottom sides fade.
    out = latent_composite(to, src, 0, 0, feather=16)["samples"][0, 0]
    ramp = np.array([1.0, 1.0, 1.0, 0.5], np.float32)
    np.testing.assert_allclose(out[:4, :4], np.outer(ramp, ramp))


def test_latent_from_batch_creates_and_slices_batch_index() -> None:
    """Index and length clamp to the batch; batch_index is created or sliced."""
    lat = _latent(b=4)
    out = latent_from_batch(lat, 1, 2)
    np.testing.assert_array_equal(out["samples"], lat["samples"][1:3])
    assert out["batch_index"] == [1, 2]
    out = latent_from_batch(lat, 10, 5)  # clamps to the last item
    assert out["batch_index"] == [3] and out["samples"].shape[0] == 1
    lat["batch_index"] = [7, 8, 9, 10]
    assert latent_from_batch(lat, 2, 9)["batch_index"] == [9, 10]
    assert "batch_index" not in _latent(b=4)


def test_latent_from_batch_noise_mask() -> None:
    """A single mask is kept; a shorter mask batch is repeated to the batch and sliced."""
    lat = _latent(b=4)
    lat["noise_mask"] = np.full((1, 1, 8, 8), 0.5, np.float32)
    assert latent_from_batch(lat, 2, 1)["noise_mask"].shape == (1, 1, 8, 8)
    lat["noise_mask"] = np.stack([np.full((1, 8, 8), v, np.float32) for v in (0.0, 1.0)])
    out = latent_from_batch(lat, 2, 2)["noise_mask"]  # masks repeat as 0, 1, 0, 1
    np.testing.assert_array_equal(out[:, 0, 0, 0], [0.0, 1.0])


def test_repeat_latent_batch_offsets() -> None:
    """RepeatLatentBatch tiles the batch and shifts batch_index by its span per copy."""
    lat = _latent(b=2)
    out = repeat_latent_batch(lat, 3)
    assert out["samples"].shape == (6, 4, 8, 8)
    np.testing.assert_array_equal(out["samples"][4:], lat["samples"])
    assert "batch_index" not in out
    lat["batch_index"] = [2, 3]
    assert repeat_latent_batch(lat, 3)["batch_index"] == [2, 3, 4, 5, 6, 7]
    lat["batch_index"] = [0, 4]
    assert repeat_latent_batch(lat, 2)["batch_index"] == [0, 4, 5, 9]


def test_repeat_latent_batch_noise_mask() -> None:
    """A single noise mask stays single; a batch of masks is repeated as given."""
    lat = _latent(b=2)
    lat["noise_mask"] = np.ones((1, 1, 8, 8), np.float32)
    assert repeat_latent_batch(lat, 3)["noise_mask"].shape == (1, 1, 8, 8)
    lat["noise_mask"] = np.ones((2, 1, 8, 8), np.float32)
    assert repeat_latent_batch(lat, 3)["noise_mask"].shape == (6, 1, 8, 8)


def test_set_latent_noise_mask_reshapes() -> None:
    """SetLatentNoiseMask stores the mask as [B,1,H,W], accepting [H,W]."""
    lat = _latent()
    out = set_latent_noise_mask(lat, np.ones((16, 24), np.float32))
    assert out["noise_mask"].shape == (1, 1, 16, 24) and "noise_mask" not in lat
    out = set_latent_noise_mask(lat, np.zeros((3, 16, 24), np.float32))
    assert out["noise_mask"].shape == (3, 1, 16, 24)


def test_bad_latent_is_refused() -> None:
    """A value that is not a LATENT dict gets an error naming what was found."""
    with pytest.raises(OpError, match="expected a LATENT dict"):
        latent_upscale_by(np.zeros((1, 4, 8, 8)), "bilinear", 2.0)  # type: ignore[arg-type]
    with pytest.raises(OpError, match=r"\[B,C,H,W\]"):
        latent_upscale_by({"samples": np.zeros((4, 8, 8))}, "bilinear", 2.0)
    with pytest.raises(OpError, match="'lanczos' is not supported"):
        latent_upscale_by(_latent(), "lanczos", 2.0)
