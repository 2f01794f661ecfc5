"""latent2rgb previews: the linear map, the clipping, and a real PNG of the latent's shape."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from comfyc.runtime.preview import SD1_LATENT_RGB, latent_to_rgb, preview_png


def test_latent_to_rgb_is_the_linear_map_clipped() -> None:
    latent = np.zeros((2, 4, 3, 5), np.float32)
    latent[0, :, 1, 2] = [1.0, 0.0, 0.0, 0.0]
    latent[0, 3, 0, 0] = 10.0  # Far out of range: clipped, not wrapped.
    rgb = latent_to_rgb(latent)
    assert rgb.shape == (3, 5, 3) and rgb.dtype == np.uint8
    want = np.round((SD1_LATENT_RGB[0] + 1) / 2 * 255).astype(np.uint8)
    assert np.array_equal(rgb[1, 2], want)
    assert np.array_equal(rgb[0, 0], [0, 0, 0])
    assert np.array_equal(rgb[2, 4], [128, 128, 128])  # Zero latent: mid grey.


def test_preview_png_is_enlarged_to_a_visible_size() -> None:
    latent = np.random.default_rng(0).standard_normal((1, 4, 8, 12)).astype(np.float32)
    image = Image.open(io.BytesIO(preview_png(latent)))
    assert image.format == "PNG" and image.size == (96, 64)
    small = np.asarray(image)[::8, ::8]
    assert np.array_equal(small, latent_to_rgb(latent))


def test_wrong_channel_count_is_refused() -> None:
    with pytest.raises(ValueError, match=r"expected latents \[B, 4, h, w\]"):
        latent_to_rgb(np.zeros((1, 3, 8, 8), np.float32))
