"""IMAGE ops: ComfyUI's image nodes, and the pixel preparation of its VAE encode nodes.

An IMAGE is float32 ``[B,H,W,C]`` (RGB, sometimes RGBA) in [0,1]; a MASK is float32 ``[B,H,W]``
(``[H,W]`` accepted). Every function takes inputs by their ComfyUI input names, returns new
arrays and never modifies its inputs.

| Node | Function |
| --- | --- |
| ImageScale | `image_scale` |
| ImageScaleBy | `image_scale_by` |
| ImageScaleToTotalPixels | `image_scale_to_total_pixels` |
| ImageInvert | `image_invert` |
| ImageBatch | `image_batch` |
| ImagePadForOutpaint | `image_pad_for_outpaint` |
| EmptyImage | `empty_image` |
| VAEEncode (pixel side) | `vae_encode_crop` |
| VAEEncodeForInpaint (pixel and mask side) | `inpaint_prepare` |
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from comfyc.runtime.ops._common import OpError, as_image, as_mask, check_choice
from comfyc.runtime.ops.resample import CROP_METHODS, common_upscale, interpolate

__all__ = [
    "IMAGE_UPSCALE_METHODS",
    "VAE_DOWNSCALE",
    "empty_image",
    "image_batch",
    "image_invert",
    "image_pad_for_outpaint",
    "image_scale",
    "image_scale_by",
    "image_scale_to_total_pixels",
    "inpaint_prepare",
    "vae_encode_crop",
]

#: ``upscale_method`` choices of the ImageScale nodes, in ComfyUI's order.
IMAGE_UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
#: Pixels per latent pixel of the SD1.x/SD2.x VAE.
VAE_DOWNSCALE = 8


def _resize(image: np.ndarray, width: int, height: int, method: str, crop: str) -> np.ndarray:
    """Resizes ``[B,H,W,C]`` through the channels-first `common_upscale` (``movedim`` in Comfy)."""
    out = common_upscale(image.transpose(0, 3, 1, 2), width, height, method, crop)
    return np.ascontiguousarray(out.transpose(0, 2, 3, 1))


def image_scale(
    image: Any, upscale_method: str, width: int, height: int, crop: str = "disabled"
) -> np.ndarray:
    """ImageScale: resize to ``width x height``; a side of 0 keeps the aspect ratio.

    Both sides 0 return the image unchanged (as ComfyUI, no copy is needed since nothing is
    modified). A computed side is at least 1 pixel.

    Args:
        image: IMAGE ``[B,H,W,C]``.
        upscale_method: One of `IMAGE_UPSCALE_METHODS`.
        width: Target width, or 0.
        height: Target height, or 0.
        crop: ``"disabled"`` or ``"center"`` (crop to the target aspect ratio first).

    Returns:
        IMAGE ``[B,height,width,C]``.
    """
    check_choice(upscale_method, IMAGE_UPSCALE_METHODS, "upscale_method")
    check_choice(crop, CROP_METHODS, "crop")
    img = as_image(image)
    width, height = int(width), int(height)
    if width < 0 or height < 0:
        raise OpError(f"width={width}, height={height}; expected sizes >= 0 (0 keeps aspect)")
    if width == 0 and height == 0:
        return img.copy()
    # NOTE: nodes.ImageScale.upscale: the missing side is max(1, round(other * ratio)).
    if width == 0:
        width = max(1, round(img.shape[2] * height / img.shape[1]))
    elif height == 0:
        height = max(1, round(img.shape[1] * width / img.shape[2]))
    return _resize(img, width, height, upscale_method, crop)


def image_scale_by(image: Any, upscale_method: str, scale_by: float) -> np.ndarray:
    """ImageScaleBy: resize by a factor, ``round(dim * scale_by)`` per side.

    Args:
        image: IMAGE ``[B,H,W,C]``.
        upscale_method: One of `IMAGE_UPSCALE_METHODS`.
        scale_by: The factor (ComfyUI allows 0.01 to 8).

    Returns:
        The resized IMAGE.
    """
    check_choice(upscale_method, IMAGE_UPSCALE_METHODS, "upscale_method")
    img = as_image(image)
    width = round(img.shape[2] * scale_by)
    height = round(img.shape[1] * scale_by)
    return _resize(img, width, height, upscale_method, "disabled")


def image_scale_to_total_pixels(
    image: Any, upscale_method: str, megapixels: float, resolution_steps: int = 1
) -> np.ndarray:
    """ImageScaleToTotalPixels: resize to about ``megapixels * 1024 * 1024`` pixels.

    Args:
        image: IMAGE ``[B,H,W,C]``.
        upscale_method: One of `IMAGE_UPSCALE_METHODS`.
        megapixels: Target area in units of 1024 * 1024 pixels.
        resolution_steps: Each side is rounded to a multiple of this.

    Returns:
        The resized IMAGE.
    """
    check_choice(upscale_method, IMAGE_UPSCALE_METHODS, "upscale_method")
    img = as_image(image)
    steps = int(resolution_steps)
    if steps < 1 or not megapixels > 0:
        raise OpError(
            f"megapixels={megapixels}, resolution_steps={resolution_steps}; expected "
            "megapixels > 0 and resolution_steps >= 1"
        )
    # NOTE: comfy_extras.nodes_post_processing.ImageScaleToTotalPixels.execute.
    scale_by = math.sqrt(megapixels * 1024 * 1024 / (img.shape[2] * img.shape[1]))
    width = round(img.shape[2] * scale_by / steps) * steps
    height = round(img.shape[1] * scale_by / steps) * steps
    return _resize(img, int(width), int(height), upscale_method, "disabled")


def image_invert(image: Any) -> np.ndarray:
    """ImageInvert: ``1 - image`` (every channel, alpha included, as ComfyUI)."""
    return (np.float32(1.0) - as_image(image)).astype(np.float32)


def image_batch(image1: Any, image2: Any) -> np.ndarray:
    """ImageBatch: `image2` appended to `image1` along the batch axis.

    When the channel counts differ, the one with fewer channels gets one more channel of 1.0
    (RGB + RGBA gives RGBA). When the sizes differ, `image2` is resized to `image1`'s size with
    bilinear interpolation after a centre crop to `image1`'s aspect ratio.

    Args:
        image1: IMAGE ``[B1,H,W,C]``.
        image2: IMAGE ``[B2,H2,W2,C2]``.

    Returns:
        IMAGE ``[B1+B2,H,W,C]``.
    """
    a = as_image(image1, "image1")
    b = as_image(image2, "image2")
    # NOTE: nodes.ImageBatch.batch (current ComfyUI): pad the narrower one by one channel of
    # 1.0, then common_upscale(image2, W1, H1, "bilinear", "center").
    ca, cb = a.shape[-1], b.shape[-1]
    if ca != cb:
        pad = ((0, 0), (0, 0), (0, 0), (0, 1))
        if a.shape[-1] > b.shape[-1]:
            b = np.pad(b, pad, constant_values=1.0)
        else:
            a = np.pad(a, pad, constant_values=1.0)
        if a.shape[-1] != b.shape[-1]:
            raise OpError(
                f"image1 has {ca} channels and image2 {cb}; "
                "ImageBatch can only join images whose channel counts differ by one (RGB and RGBA)"
            )
    if a.shape[1:] != b.shape[1:]:
        b = _resize(b, a.shape[2], a.shape[1], "bilinear", "center")
    return np.concatenate([a, b], axis=0)


def image_pad_for_outpaint(
    image: Any, left: int, top: int, right: int, bottom: int, feathering: int = 40
) -> tuple[np.ndarray, np.ndarray]:
    """ImagePadForOutpaint: pad with 0.5 grey and return the mask of what to paint.

    The mask is 1 on the padding and 0 on the original picture, except for a feathered band of
    ``feathering`` pixels along padded sides, where it is ``((feathering - d) / feathering)**2``
    for the distance ``d`` to the nearest padded side. There is no feathering unless
    ``2 * feathering`` is smaller than both the picture's height and its width.

    Args:
        image: IMAGE ``[B,H,W,C]``.
        left: Pixels added on the left.
        top: Pixels added on the top.
        right: Pixels added on the right.
        bottom: Pixels added on the bottom.
        feathering: Width of the feathered band, in pixels.

    Returns:
        (IMAGE ``[B,H+top+bottom,W+left+right,C]``, MASK ``[1,H+top+bottom,W+left+right]``).
    """
    img = as_image(image)
    left, top, right, bottom, feathering = (int(v) for v in (left, top, right, bottom, feathering))
    if min(left, top, right, bottom, feathering) < 0:
        raise OpError(
            f"left={left}, top={top}, right={right}, bottom={bottom}, feathering={feathering}; "
            "expected values >= 0"
        )
    b, h, w, c = img.shape
    new_image = np.full((b, h + top + bottom, w + left + right, c), 0.5, dtype=np.float32)
    new_image[:, top:top + h, left:left + w, :] = img
    mask = np.ones((h + top + bottom, w + left + right), dtype=np.float32)
    inner = np.zeros((h, w), dtype=np.float64)
    if feathering > 0 and feathering * 2 < h and feathering * 2 < w:
        # NOTE: nodes.ImagePadForOutpaint.expand_image: distance to each padded side (the
        # bottom/right distance is h - i / w - j, so the last row is at distance 1), sides
        # without padding count as far away; squared linear ramp below `feathering`.
        i = np.arange(h, dtype=np.int64)[:, None]
        j = np.arange(w, dtype=np.int64)[None, :]
        far_h = np.full_like(i, h)
        far_w = np.full_like(j, w)
        d = np.minimum.reduce([
            np.broadcast_to(i if top != 0 else far_h, (h, w)),
            np.broadcast_to(h - i if bottom != 0 else far_h, (h, w)),
            np.broadcast_to(j if left != 0 else far_w, (h, w)),
            np.broadcast_to(w - j if right != 0 else far_w, (h, w)),
        ])
        v = (feathering - d) / feathering
        inner = np.where(d < feathering, v * v, 0.0)
    mask[top:top + h, left:left + w] = inner.astype(np.float32)
    return new_image, mask[None]


def empty_image(width: int, height: int, batch_size: int = 1, color: int = 0) -> np.ndarray:
    """EmptyImage: a batch filled with one colour.

    Args:
        width: Width in pixels.
        height: Height in pixels.
        batch_size: Number of pictures.
        color: ``0xRRGGBB``.

    Returns:
        IMAGE ``[batch_size,height,width,3]``.
    """
    width, height, batch_size, color = int(width), int(height), int(batch_size), int(color)
    if min(width, height, batch_size) < 1 or not 0 <= color <= 0xFFFFFF:
        raise OpError(
            f"width={width}, height={height}, batch_size={batch_size}, color={color:#x}; "
            "expected sizes >= 1 and a colour 0x000000..0xFFFFFF"
        )
    rgb = [((color >> shift) & 0xFF) / 0xFF for shift in (16, 8, 0)]
    out = np.empty((batch_size, height, width, 3), dtype=np.float32)
    out[...] = np.asarray(rgb, dtype=np.float32)
    return out


def vae_encode_crop(pixels: Any) -> np.ndarray:
    """The pixels VAEEncode hands to the encoder: RGB, cropped to multiples of 8.

    Each axis whose size is not a multiple of 8 is cut to ``(size // 8) * 8`` starting at
    ``(size % 8) // 2``; an alpha channel is dropped.

    Args:
        pixels: IMAGE ``[B,H,W,C]``.

    Returns:
        IMAGE ``[B,H//8*8,W//8*8,3]`` (a copy).
    """
    img = as_image(pixels, "pixels")
    h, w = _crop_box(img.shape[1], img.shape[2])
    # NOTE: nodes.VAEEncode.encode passes pixels[:, :, :, :3]; comfy.sd.VAE.vae_encode_crop_pixels
    # crops each spatial axis to a multiple of the downscale ratio, offset (dim % 8) // 2.
    return np.ascontiguousarray(img[:, h, w, :3])


def _crop_box(height: int, width: int) -> tuple[slice, slice]:
    if height < VAE_DOWNSCALE or width < VAE_DOWNSCALE:
        raise OpError(
            f"pixels are {width}x{height}; the VAE needs at least {VAE_DOWNSCALE}x{VAE_DOWNSCALE}"
            " pixels. Upscale the image first"
        )
    oh, ow = (height % VAE_DOWNSCALE) // 2, (width % VAE_DOWNSCALE) // 2
    h8, w8 = height // VAE_DOWNSCALE * VAE_DOWNSCALE, width // VAE_DOWNSCALE * VAE_DOWNSCALE
    return slice(oh, oh + h8), slice(ow, ow + w8)


def _grow(mask: np.ndarray, grow: int) -> np.ndarray:
    """``clamp(conv2d(mask, ones(g, g), padding=ceil((g - 1) / 2)), 0, 1)`` on a 0/1 mask.

    The box sum of a 0/1 mask is positive exactly where the box holds a 1, so this is a box
    maximum. For an even `grow` the output is one pixel larger than the input on each axis, as
    in torch (the caller cuts it back to the top-left part).
    """
    pad = math.ceil((grow - 1) / 2)
    n, hh, ww = mask.shape
    padded = np.zeros((n, hh + 2 * pad, ww + 2 * pad), dtype=np.float64)
    padded[:, pad:pad + hh, pad:pad + ww] = mask
    # Box sums through 2-D prefix sums (exact: small integers in float64).
    s = np.zeros((n, padded.shape[1] + 1, padded.shape[2] + 1), dtype=np.float64)
    s[:, 1:, 1:] = padded.cumsum(axis=1).cumsum(axis=2)
    oh, ow = padded.shape[1] - grow + 1, padded.shape[2] - grow + 1
    box = (s[:, grow:grow + oh, grow:grow + ow] - s[:, :oh, grow:grow + ow]
           - s[:, grow:grow + oh, :ow] + s[:, :oh, :ow])
    return np.clip(box, 0, 1).astype(np.float32)


def inpaint_prepare(
    pixels: Any, mask: Any, grow_mask_by: int = 6
) -> tuple[np.ndarray, np.ndarray]:
    """The pixel and mask side of VAEEncodeForInpaint.

    The mask is resized to the image (bilinear), both are cropped like `vae_encode_crop`, the
    RGB channels are set to 0.5 where the rounded mask is 1, and the noise mask is the rounded
    mask grown by a ``grow_mask_by`` box (then rounded again).

    Args:
        pixels: IMAGE ``[B,H,W,C]``.
        mask: MASK ``[B,h,w]`` or ``[h,w]`` (any size; B of 1 applies to every picture).
        grow_mask_by: Box size for growing the noise mask (0: no growing).

    Returns:
        (pixels to encode ``[B,H8,W8,3]``, noise_mask ``[Bm,1,H8,W8]``) where ``H8``, ``W8`` are
        the sizes cropped to multiples of 8. The caller encodes the pixels and stores
        ``{"samples": latents, "noise_mask": noise_mask}``. (ComfyUI hands an alpha channel to
        the encoder too, which an SD VAE cannot take; it is dropped here.)
    """
    img = as_image(pixels, "pixels")
    m = as_mask(mask)
    grow = int(grow_mask_by)
    if grow < 0:
        raise OpError(f"grow_mask_by is {grow_mask_by}; expected an integer >= 0")
    b, height, width, _ = img.shape
    if m.shape[0] not in (1, b):
        raise OpError(
            f"mask holds {m.shape[0]} masks for {b} pictures; expected one mask, or one per "
            "picture"
        )
    # NOTE: nodes.VAEEncodeForInpaint.encode: interpolate(mask[:, None], (H, W), "bilinear").
    m4 = interpolate(m[:, None], height, width, "bilinear")
    rows, cols = _crop_box(height, width)
    img = img[:, rows, cols, :].copy()
    m4 = m4[:, :, rows, cols]
    h8, w8 = img.shape[1], img.shape[2]
    rounded = np.round(m4)
    grown = m4 if grow == 0 else _grow(rounded[:, 0], grow)[:, None]
    keep = (np.float32(1.0) - rounded)[:, 0]
    for ch in range(min(3, img.shape[-1])):
        # NOTE: ComfyUI does -= 0.5, *= m, += 0.5 in float32; the same steps give the same bits.
        img[:, :, :, ch] = (img[:, :, :, ch] - np.float32(0.5)) * keep + np.float32(0.5)
    noise_mask = np.round(grown[:, :, :h8, :w8]).astype(np.float32)
    return np.ascontiguousarray(img[..., :3]), noise_mask
