"""MASK ops: ComfyUI's mask nodes (``comfy_extras/nodes_mask.py``) in numpy.

A MASK is float32 ``[B,H,W]`` (``[H,W]`` accepted where ComfyUI accepts it); an IMAGE is float32
``[B,H,W,C]``. Every function takes its inputs by their ComfyUI input names, returns new arrays
and never modifies its inputs. The arithmetic is float32 in the order ComfyUI's torch code uses,
so results are bit-identical to ComfyUI's except where a resize is involved (bilinear resizes go
through :func:`comfyc.runtime.ops.resample.interpolate`, within an ulp of torch's).

| Node | Function |
| --- | --- |
| ImageToMask | `image_to_mask` |
| MaskToImage | `mask_to_image` |
| ImageColorToMask | `image_color_to_mask` |
| SolidMask | `solid_mask` |
| InvertMask | `invert_mask` |
| CropMask | `crop_mask` |
| MaskComposite | `mask_composite` |
| FeatherMask | `feather_mask` |
| GrowMask | `grow_mask` |
| ThresholdMask | `threshold_mask` |
| ImageCompositeMasked | `image_composite_masked` (through `composite`) |
| LatentCompositeMasked (samples side) | `composite` with ``multiplier=8`` |
"""
from __future__ import annotations

from typing import Any

import numpy as np

from comfyc.runtime.ops._common import OpError, as_image, check_choice
from comfyc.runtime.ops.resample import interpolate

__all__ = [
    "IMAGE_CHANNELS",
    "MASK_OPERATIONS",
    "composite",
    "crop_mask",
    "feather_mask",
    "grow_mask",
    "image_color_to_mask",
    "image_composite_masked",
    "image_to_mask",
    "invert_mask",
    "mask_composite",
    "mask_to_image",
    "repeat_to_batch_size",
    "solid_mask",
    "threshold_mask",
]

#: ``channel`` choices of ImageToMask, in ComfyUI's order (the index is the channel).
IMAGE_CHANNELS = ("red", "green", "blue", "alpha")
#: ``operation`` choices of MaskComposite, in ComfyUI's order.
MASK_OPERATIONS = ("multiply", "add", "subtract", "and", "or", "xor")

_F32 = np.float32


def _as_masks(mask: Any, what: str = "mask") -> np.ndarray:
    """``mask.reshape(-1, H, W)`` as float32: the batch view every ComfyUI mask node takes."""
    arr = np.asarray(mask, dtype=np.float32)
    if arr.ndim < 2:
        raise OpError(f"{what} has shape {tuple(arr.shape)}; expected a MASK [B,H,W] or [H,W]")
    return arr.reshape((-1, arr.shape[-2], arr.shape[-1]))


def repeat_to_batch_size(x: np.ndarray, batch_size: int) -> np.ndarray:
    """``comfy.utils.repeat_to_batch_size`` on axis 0: cut, or tile and cut, to `batch_size`."""
    n = x.shape[0]
    if n > batch_size:
        return x[:batch_size]
    if n < batch_size:
        reps = -(-batch_size // n)
        return np.tile(x, (reps,) + (1,) * (x.ndim - 1))[:batch_size]
    return x


def image_to_mask(image: Any, channel: str) -> np.ndarray:
    """ImageToMask: one channel of the image as a mask.

    Args:
        image: IMAGE ``[B,H,W,C]``.
        channel: ``"red"``, ``"green"``, ``"blue"`` or ``"alpha"``.

    Returns:
        MASK ``[B,H,W]`` (a copy).
    """
    check_choice(channel, IMAGE_CHANNELS, "channel")
    img = as_image(image)
    index = IMAGE_CHANNELS.index(channel)
    if index >= img.shape[-1]:
        raise OpError(f"channel {channel!r} asked of an image with {img.shape[-1]} channels; "
                      "an RGB image has no alpha (load it with LoadImage's MASK output, or "
                      "pick red, green or blue)")
    return np.ascontiguousarray(img[..., index])


def mask_to_image(mask: Any) -> np.ndarray:
    """MaskToImage: a grey RGB image from a mask (the mask in all three channels).

    Args:
        mask: MASK ``[B,H,W]`` or ``[H,W]``.

    Returns:
        IMAGE ``[B,H,W,3]``.
    """
    m = _as_masks(mask)
    return np.ascontiguousarray(np.broadcast_to(m[..., None], m.shape + (3,)))


def image_color_to_mask(image: Any, color: int) -> np.ndarray:
    """ImageColorToMask: 1 where the 8-bit RGB colour of a pixel is `color`, else 0.

    Args:
        image: IMAGE ``[B,H,W,C]`` (the first three channels are read).
        color: ``0xRRGGBB``.

    Returns:
        MASK ``[B,H,W]``.
    """
    img = as_image(image)
    # NOTE: nodes_mask.ImageColorToMask: round(clamp(x, 0, 1) * 255) in float32, then packed.
    q = np.round(np.clip(img[..., :3], 0.0, 1.0) * _F32(255.0)).astype(np.int64)
    packed = (q[..., 0] << 16) + (q[..., 1] << 8) + q[..., 2]
    return (packed == int(color)).astype(np.float32)


def solid_mask(value: float, width: int, height: int) -> np.ndarray:
    """SolidMask: a ``[1,height,width]`` mask filled with `value`."""
    width, height = int(width), int(height)
    if width < 1 or height < 1:
        raise OpError(f"width={width}, height={height}; expected sizes >= 1")
    return np.full((1, height, width), value, dtype=np.float32)


def invert_mask(mask: Any) -> np.ndarray:
    """InvertMask: ``1 - mask`` (the input's shape is kept, as ComfyUI keeps it)."""
    return (_F32(1.0) - np.asarray(mask, dtype=np.float32)).astype(np.float32)


def threshold_mask(mask: Any, value: float) -> np.ndarray:
    """ThresholdMask: 1 where ``mask > value`` (compared in float32, as torch does), else 0."""
    return (np.asarray(mask, dtype=np.float32) > _F32(value)).astype(np.float32)


def crop_mask(mask: Any, x: int, y: int, width: int, height: int) -> np.ndarray:
    """CropMask: ``mask[:, y:y+height, x:x+width]`` (cut at the borders, as slicing is).

    Args:
        mask: MASK ``[B,H,W]`` or ``[H,W]``.
        x: Left column.
        y: Top row.
        width: Width of the crop.
        height: Height of the crop.

    Returns:
        MASK ``[B,h,w]`` with ``h <= height``, ``w <= width``.
    """
    m = _as_masks(mask)
    x, y, width, height = int(x), int(y), int(width), int(height)
    return np.ascontiguousarray(m[:, y:y + height, x:x + width])


def mask_composite(destination: Any, source: Any, x: int, y: int, operation: str
                   ) -> np.ndarray:
    """MaskComposite: combine `source` into `destination` at ``(x, y)``, then clamp to [0, 1].

    ``and``/``or``/``xor`` round both masks (half to even) and treat non-zero as true.

    Args:
        destination: MASK ``[B,H,W]`` or ``[H,W]``.
        source: MASK ``[Bs,h,w]`` or ``[h,w]`` (``Bs`` 1 or ``B``).
        x: Column of the source's left edge in the destination.
        y: Row of the source's top edge.
        operation: One of `MASK_OPERATIONS`.

    Returns:
        MASK ``[B,H,W]``.
    """
    check_choice(operation, MASK_OPERATIONS, "operation")
    out = _as_masks(destination, "destination").copy()
    src = _as_masks(source, "source")
    left, top = int(x), int(y)
    # NOTE: the visible part is cut with ComfyUI's own slice arithmetic (so an x past the right
    # edge gives its same, odd, result), then the ops combine in float32.
    right = min(left + src.shape[-1], out.shape[-1])
    bottom = min(top + src.shape[-2], out.shape[-2])
    src_part = src[:, :bottom - top, :right - left]
    dst_part = out[:, top:bottom, left:right]
    try:
        if operation == "multiply":
            result = dst_part * src_part
        elif operation == "add":
            result = dst_part + src_part
        elif operation == "subtract":
            result = dst_part - src_part
        else:
            logic = {"and": np.logical_and, "or": np.logical_or, "xor": np.logical_xor}
            result = logic[operation](np.round(dst_part) != 0, np.round(src_part) != 0)
        out[:, top:bottom, left:right] = result
    except ValueError as error:
        raise OpError(f"source {tuple(src.shape)} cannot be combined into destination "
                      f"{tuple(out.shape)} at x={left}, y={top}: {error}. Pass one source mask "
                      "or one per destination mask") from None
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def feather_mask(mask: Any, left: int, top: int, right: int, bottom: int) -> np.ndarray:
    """FeatherMask: linear ramps from the borders inwards.

    Column ``i`` from the left edge is multiplied by ``(i + 1) / left`` (likewise the other
    sides), so the outermost line keeps ``1/n`` of its value; corners get both factors.

    Args:
        mask: MASK ``[B,H,W]`` or ``[H,W]``.
        left: Width of the left ramp (cut to the mask's width).
        top: Height of the top ramp.
        right: Width of the right ramp.
        bottom: Height of the bottom ramp.

    Returns:
        MASK ``[B,H,W]``.
    """
    out = _as_masks(mask).copy()
    h, w = out.shape[-2:]
    left, right = min(int(left), w), min(int(right), w)
    top, bottom = min(int(top), h), min(int(bottom), h)
    # NOTE: the same float32 multiplications in ComfyUI's order (left, right, top, bottom), so
    # the corners are rounded identically; each factor is the float64 ratio rounded to float32.
    for i in range(left):
        out[:, :, i] *= _F32((i + 1.0) / left)
    for i in range(right):
        out[:, :, w - 1 - i] *= _F32((i + 1) / right)
    for i in range(top):
        out[:, i, :] *= _F32((i + 1) / top)
    for i in range(bottom):
        out[:, h - 1 - i, :] *= _F32((i + 1) / bottom)
    return out


def _extreme_3x3(m: np.ndarray, tapered: bool, reduce: Any) -> np.ndarray:
    """One 3x3 grey dilation (``np.maximum``) or erosion (``np.minimum``) of ``[H,W]``.

    The footprint is a plus sign when `tapered`, else the full square. scipy's ``reflect``
    border repeats the edge pixel, which can never change a max or min over a window that
    holds the pixel itself, so the border is simply left out (edge padding).
    """
    p = np.pad(m, 1, mode="edge")
    h, w = m.shape
    out = m.copy()
    offsets = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if not tapered:
        offsets += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    for dy, dx in offsets:
        reduce(out, p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w], out=out)
    return out


def grow_mask(mask: Any, expand: int, tapered_corners: bool = True) -> np.ndarray:
    """GrowMask: ``|expand|`` rounds of 3x3 grey dilation (expand > 0) or erosion (< 0).

    As ``scipy.ndimage.grey_dilation``/``grey_erosion`` with a plus-shaped footprint when
    `tapered_corners`, else a full 3x3 square; values need not be 0/1.

    Args:
        mask: MASK ``[B,H,W]`` or ``[H,W]``.
        expand: Pixels to grow (negative: shrink).
        tapered_corners: Grow along the axes only per round (rounded corners).

    Returns:
        MASK ``[B,H,W]``.
    """
    masks = _as_masks(mask)
    expand = int(expand)
    reduce = np.maximum if expand > 0 else np.minimum
    out = []
    for m in masks:
        m = m.copy()
        for _ in range(abs(expand)):
            m = _extreme_3x3(m, bool(tapered_corners), reduce)
        out.append(m)
    return np.stack(out).astype(np.float32)


def composite(destination: np.ndarray, source: np.ndarray, x: int, y: int,
              mask: Any = None, multiplier: int = 8, resize_source: bool = False
              ) -> np.ndarray:
    """``nodes_mask.composite``: paste ``[B,C,h,w]`` `source` into `destination` at ``(x, y)``.

    ``x`` and ``y`` are in pixels and divided by `multiplier` (8 for latents, 1 for images);
    the mask (any size, resized bilinearly to the source) blends ``mask * source +
    (1 - mask) * destination``. Parts of the source outside the destination are dropped.

    Args:
        destination: float32 ``[B,C,H,W]``; not modified.
        source: float32 ``[Bs,C,h,w]`` (repeated or cut to ``B``).
        x: Left position, in pixels.
        y: Top position, in pixels.
        mask: MASK ``[Bm,h',w']`` or ``[h',w']``, or None (paste everything).
        multiplier: Pixels per element of the arrays.
        resize_source: Resize the source to the destination's size first (bilinear).

    Returns:
        float32 ``[B,C,H,W]``.
    """
    dest = np.array(destination, dtype=np.float32)
    src = np.asarray(source, dtype=np.float32)
    if resize_source:
        src = interpolate(src, dest.shape[-2], dest.shape[-1], "bilinear")
    src = repeat_to_batch_size(src, dest.shape[0])
    x = max(-src.shape[-1] * multiplier, min(int(x), dest.shape[-1] * multiplier))
    y = max(-src.shape[-2] * multiplier, min(int(y), dest.shape[-2] * multiplier))
    left, top = x // multiplier, y // multiplier
    right, bottom = left + src.shape[-1], top + src.shape[-2]
    if mask is None:
        m = np.ones_like(src)
    else:
        m = np.asarray(mask, dtype=np.float32)
        m = m.reshape((-1, 1, m.shape[-2], m.shape[-1]))
        m = interpolate(m, src.shape[-2], src.shape[-1], "bilinear")
        m = repeat_to_batch_size(m, src.shape[0])
    visible_w = dest.shape[-1] - left + min(0, x)
    visible_h = dest.shape[-2] - top + min(0, y)
    m = m[:, :, :visible_h, :visible_w]
    # NOTE: the same slices and float32 products as ComfyUI (mask * source + inverse * dest).
    source_part = m * src[..., :visible_h, :visible_w]
    dest_part = (np.ones_like(m) - m) * dest[..., top:bottom, left:right]
    dest[..., top:bottom, left:right] = source_part + dest_part
    return dest


def image_composite_masked(destination: Any, source: Any, x: int, y: int,
                           resize_source: bool = False, mask: Any = None) -> np.ndarray:
    """ImageCompositeMasked: paste `source` into `destination` at pixel ``(x, y)``.

    Channel counts are matched first (``node_helpers.image_alpha_fix``): a source with more
    channels is cut, one with fewer gains a channel of 1.0.

    Args:
        destination: IMAGE ``[B,H,W,C]``.
        source: IMAGE ``[Bs,h,w,Cs]``.
        x: Left position.
        y: Top position.
        resize_source: Resize the source to the destination's size first.
        mask: Optional MASK blending the source in (resized to the source).

    Returns:
        IMAGE ``[B,H,W,C]``.
    """
    dest = as_image(destination, "destination")
    src = as_image(source, "source")
    if dest.shape[-1] < src.shape[-1]:
        src = src[..., :dest.shape[-1]]
    elif dest.shape[-1] > src.shape[-1]:
        src = np.pad(src, ((0, 0), (0, 0), (0, 0), (0, 1)), constant_values=1.0)
    if dest.shape[-1] != src.shape[-1]:
        raise OpError(f"destination has {dest.shape[-1]} channels and source "
                      f"{np.shape(source)[-1]}; expected counts that differ by at most one "
                      "(RGB and RGBA)")
    out = composite(dest.transpose(0, 3, 1, 2), src.transpose(0, 3, 1, 2), x, y, mask, 1,
                    bool(resize_source))
    return np.ascontiguousarray(out.transpose(0, 2, 3, 1))
