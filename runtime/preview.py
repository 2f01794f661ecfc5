"""Cheap previews of a latent while it is being sampled (ComfyUI's "latent2rgb" method).

Each step's x0 prediction is mapped to RGB by a fixed linear map of its four channels — no
VAE call — so a preview costs microseconds. The factors are the published latent→RGB
approximation for SD1.x's VAE (the numbers ComfyUI's ``SD15`` latent format uses); for
comfyc's tiny model, whose VAE is its own, the colours are only indicative, but shapes and
progress show. The preview has the latent's size (an eighth of the image's), as ComfyUI's.
"""

from __future__ import annotations

import io

import numpy as np

__all__ = ["SD1_LATENT_RGB", "latent_to_rgb", "preview_png"]

#: ``rgb = latent_channels @ SD1_LATENT_RGB`` (rows: the 4 latent channels; columns: R, G, B).
SD1_LATENT_RGB = np.array([
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
], dtype=np.float32)


def latent_to_rgb(latent: np.ndarray, factors: np.ndarray = SD1_LATENT_RGB) -> np.ndarray:
    """uint8 ``[h, w, 3]`` of the first latent of ``[B, C, h, w]`` (raw, unscaled latents)."""
    x = np.asarray(latent, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] != factors.shape[0]:
        raise ValueError(f"expected latents [B, {factors.shape[0]}, h, w], got {x.shape}")
    rgb = np.einsum("chw,cr->hwr", x[0], factors)
    return (np.clip((rgb + 1.0) / 2.0, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def preview_png(latent: np.ndarray, *, min_size: int = 64) -> bytes:
    """A PNG of :func:`latent_to_rgb`, enlarged (nearest) to at least ``min_size`` pixels."""
    from PIL import Image

    rgb = latent_to_rgb(latent)
    h, w = rgb.shape[:2]
    scale = max(1, -(-min_size // max(1, min(h, w))))
    if scale > 1:
        rgb = rgb.repeat(scale, axis=0).repeat(scale, axis=1)
    out = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(out, format="PNG", compress_level=1)
    return out.getvalue()
