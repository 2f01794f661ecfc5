"""Alpha compositing ops: ComfyUI's ``comfy_extras/nodes_compositing.py`` in numpy.

ComfyUI's MASK convention for alpha is inverted: a mask of 1 is *transparent* (a mask marks
what to paint over), so these nodes turn masks into alpha with ``1 - mask`` and back.

| Node | Function |
| --- | --- |
| JoinImageWithAlpha | `join_image_with_alpha` |
| SplitImageWithAlpha | `split_image_with_alpha` |
| PorterDuffImageComposite | `porter_duff_image_composite` |
"""
from __future__ import annotations

from typing import Any

import numpy as np

from comfyc.runtime.ops._common import OpError, as_image, check_choice
from comfyc.runtime.ops.mask import repeat_to_batch_size
from comfyc.runtime.ops.resample import common_upscale, interpolate

__all__ = [
    "PORTER_DUFF_MODES",
    "join_image_with_alpha",
    "porter_duff_composite",
    "porter_duff_image_composite",
    "split_image_with_alpha",
]

#: ``mode`` choices of PorterDuffImageComposite, in ComfyUI's order (its enum's order).
PORTER_DUFF_MODES = ("ADD", "CLEAR", "DARKEN", "DST", "DST_ATOP", "DST_IN", "DST_OUT",
                     "DST_OVER", "LIGHTEN", "MULTIPLY", "OVERLAY", "SCREEN", "SRC", "SRC_ATOP",
                     "SRC_IN", "SRC_OUT", "SRC_OVER", "XOR")

_F32 = np.float32


def split_image_with_alpha(image: Any) -> tuple[np.ndarray, np.ndarray]:
    """SplitImageWithAlpha: the RGB channels, and ``1 - alpha`` as a mask.

    Args:
        image: IMAGE ``[B,H,W,C]``; without a fourth channel the alpha is 1 (mask 0).

    Returns:
        (IMAGE ``[B,H,W,3]``, MASK ``[B,H,W]``).
    """
    img = as_image(image)
    alpha = img[..., 3] if img.shape[-1] > 3 else np.ones(img.shape[:3], dtype=np.float32)
    return np.ascontiguousarray(img[..., :3]), (_F32(1.0) - alpha).astype(np.float32)


def join_image_with_alpha(image: Any, alpha: Any) -> np.ndarray:
    """JoinImageWithAlpha: an RGBA image whose alpha is ``1 - mask``.

    The mask is resized to the image bilinearly; image and mask batches are repeated to the
    larger of the two.

    Args:
        image: IMAGE ``[B,H,W,C]`` (its first three channels are kept).
        alpha: MASK ``[Bm,h,w]`` or ``[h,w]``.

    Returns:
        IMAGE ``[max(B, Bm),H,W,4]``.
    """
    img = as_image(image)
    m = np.asarray(alpha, dtype=np.float32)
    if m.ndim < 2:
        raise OpError(f"alpha has shape {tuple(m.shape)}; expected a MASK [B,H,W] or [H,W]")
    masks = m.reshape((-1, 1, m.shape[-2], m.shape[-1]))
    batch = max(img.shape[0], masks.shape[0])
    # NOTE: nodes_compositing.resize_mask: bilinear interpolate to (H, W), then 1 - mask.
    resized = _F32(1.0) - interpolate(masks, img.shape[1], img.shape[2], "bilinear")[:, 0]
    resized = repeat_to_batch_size(resized, batch)
    img = repeat_to_batch_size(img, batch)
    return np.concatenate([img[..., :3], resized[..., None]], axis=-1).astype(np.float32)


def porter_duff_composite(src_image: np.ndarray, src_alpha: np.ndarray,
                          dst_image: np.ndarray, dst_alpha: np.ndarray, mode: str
                          ) -> tuple[np.ndarray, np.ndarray]:
    """``nodes_compositing.porter_duff_composite`` on one picture (masks, not alphas, in).

    Args:
        src_image: float32 ``[H,W,C]``.
        src_alpha: float32 ``[H,W,1]`` mask (1 = transparent).
        dst_image: float32 ``[H,W,C]``.
        dst_alpha: float32 ``[H,W,1]`` mask.
        mode: One of `PORTER_DUFF_MODES`.

    Returns:
        (image ``[H,W,C]``, mask ``[H,W,1]``).
    """
    one = _F32(1.0)
    sa, da = one - src_alpha, one - dst_alpha
    # Premultiplied colours; every formula below is ComfyUI's, term for term (float32).
    si, di = src_image * sa, dst_image * da
    if mode == "ADD":
        out_a, out_i = np.clip(sa + da, 0, 1), np.clip(si + di, 0, 1)
    elif mode == "CLEAR":
        out_a, out_i = np.zeros_like(da), np.zeros_like(di)
    elif mode in ("DARKEN", "LIGHTEN"):
        pick = np.minimum if mode == "DARKEN" else np.maximum
        out_a = sa + da - sa * da
        out_i = (one - da) * si + (one - sa) * di + pick(si, di)
    elif mode == "DST":
        out_a, out_i = da, di
    elif mode == "DST_ATOP":
        out_a, out_i = sa, sa * di + (one - da) * si
    elif mode == "DST_IN":
        out_a, out_i = sa * da, di * sa
    elif mode == "DST_OUT":
        out_a, out_i = (one - sa) * da, (one - sa) * di
    elif mode == "DST_OVER":
        out_a, out_i = da + (one - da) * sa, di + (one - da) * si
    elif mode == "MULTIPLY":
        out_a, out_i = sa * da, si * di
    elif mode == "OVERLAY":
        out_a = sa + da - sa * da
        out_i = np.where(_F32(2) * di < da, _F32(2) * si * di,
                         sa * da - _F32(2) * (da - si) * (sa - di))
    elif mode == "SCREEN":
        out_a, out_i = sa + da - sa * da, si + di - si * di
    elif mode == "SRC":
        out_a, out_i = sa, si
    elif mode == "SRC_ATOP":
        out_a, out_i = da, da * si + (one - sa) * di
    elif mode == "SRC_IN":
        out_a, out_i = sa * da, si * da
    elif mode == "SRC_OUT":
        out_a, out_i = (one - da) * sa, (one - da) * si
    elif mode == "SRC_OVER":
        out_a, out_i = sa + (one - sa) * da, si + (one - sa) * di
    else:
        check_choice(mode, PORTER_DUFF_MODES, "mode")
        out_a, out_i = (one - da) * sa + (one - sa) * da, (one - da) * si + (one - sa) * di
    # Back to straight alpha where there is any coverage, then alpha back to a mask.
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = out_i / out_a
    out_i = np.where(out_a > _F32(1e-5), ratio, _F32(0.0))
    return (np.clip(out_i, 0, 1).astype(np.float32), (one - out_a).astype(np.float32))


def _resize_hwc(x: np.ndarray, width: int, height: int) -> np.ndarray:
    """``common_upscale(x[None].permute(0,3,1,2), width, height, "bicubic", "center")``."""
    out = common_upscale(x.transpose(2, 0, 1)[None], width, height, "bicubic", "center")
    return np.ascontiguousarray(out[0].transpose(1, 2, 0))


def porter_duff_image_composite(source: Any, source_alpha: Any, destination: Any,
                                destination_alpha: Any, mode: str = "DST"
                                ) -> tuple[np.ndarray, np.ndarray]:
    """PorterDuffImageComposite: composite picture by picture with a Porter-Duff operator.

    Each picture's destination mask is resized to the destination picture, the source picture
    to the destination picture, and the source mask to the destination mask (bicubic, centre
    crop) when their sizes differ. The batch is the smallest of the four inputs' batches.

    Args:
        source: IMAGE ``[B,H,W,C]``.
        source_alpha: MASK ``[B,h,w]`` (1 = transparent).
        destination: IMAGE ``[B,H',W',C]``.
        destination_alpha: MASK ``[B,h',w']``.
        mode: One of `PORTER_DUFF_MODES`.

    Returns:
        (IMAGE ``[n,H',W',C]``, MASK ``[n,H',W']``).
    """
    check_choice(mode, PORTER_DUFF_MODES, "mode")
    src, dst = as_image(source, "source"), as_image(destination, "destination")
    src_a = np.asarray(source_alpha, dtype=np.float32)
    dst_a = np.asarray(destination_alpha, dtype=np.float32)
    n = min(len(src), len(src_a), len(dst), len(dst_a))
    if src.shape[-1] != dst.shape[-1]:
        raise OpError(f"source has {src.shape[-1]} channels and destination "
                      f"{dst.shape[-1]}; PorterDuffImageComposite needs equal channel counts")
    images, masks = [], []
    for i in range(n):
        s_img, d_img = src[i], dst[i]
        s_a, d_a = src_a[i][..., None], dst_a[i][..., None]
        if d_a.shape[:2] != d_img.shape[:2]:
            d_a = _resize_hwc(d_a, d_img.shape[1], d_img.shape[0])
        if s_img.shape != d_img.shape:
            s_img = _resize_hwc(s_img, d_img.shape[1], d_img.shape[0])
        if s_a.shape != d_a.shape:
            s_a = _resize_hwc(s_a, d_a.shape[1], d_a.shape[0])
        out_i, out_a = porter_duff_composite(s_img, s_a, d_img, d_a, mode)
        images.append(out_i)
        masks.append(out_a[..., 0])
    if not images:
        raise OpError("PorterDuffImageComposite got an empty batch on one of its inputs")
    return np.stack(images), np.stack(masks)
