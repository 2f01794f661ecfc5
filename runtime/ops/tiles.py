"""Tiled model upscaling as ComfyUI's ``ImageUpscaleWithModel`` does it, in numpy.

ComfyUI runs an upscale model (``comfy_extras/nodes_upscale_model.py``) through
``comfy.utils.tiled_scale``: 512x512 tiles overlapping by 32 input pixels, each tile's output
weighted by a mask that ramps linearly over ``round(scale * overlap)`` output pixels at every
tile edge, the weighted sum divided by the summed weights, and the result clamped to [0, 1]. An
image no larger than one tile is run whole. Each tile goes through spandrel's model call, which
pads the tile to the model's size requirements (reflect, then replicate beyond what reflect can
reach), clamps the output to [0, 1] and cuts the padding off again.

This module is that arithmetic, bit for bit in float32 (the blending multiplies and adds in
torch's order), around any per-tile function — an onnxruntime session in the lean runtime, a
torch module on the compiler side — so it needs numpy only.

| ComfyUI | Here |
| --- | --- |
| ``comfy.utils.get_tiled_scale_steps`` | `tiled_scale_steps` |
| ``comfy.utils.tiled_scale`` (2-D ``tiled_scale_multidim``) | `tiled_scale` |
| spandrel ``pad_tensor`` / ``SizeRequirements.get_padding`` | `pad_to_requirements` |
| spandrel ``ImageModelDescriptor.__call__`` | `model_call` |
| ``ImageUpscaleWithModel.execute`` | `upscale_with_model` |

ComfyUI halves the tile on out-of-memory errors (down to 128); a CPU run never needs that, and
a caller that wants it can call `upscale_with_model` again with a smaller ``tile``.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from comfyc.runtime.ops._common import OpError, as_image

__all__ = [
    "TILE",
    "OVERLAP",
    "TileFn",
    "model_call",
    "pad_to_multiple",
    "pad_to_requirements",
    "tiled_scale",
    "tiled_scale_steps",
    "upscale_with_model",
]

#: ImageUpscaleWithModel's tile size and overlap (input pixels).
TILE = 512
OVERLAP = 32

#: A per-tile function: float32 ``[1,C,h,w]`` in, float32 ``[1,C',h*s,w*s]`` out.
TileFn = Callable[[np.ndarray], np.ndarray]

_F32 = np.float32


def tiled_scale_steps(width: int, height: int, tile_x: int = TILE, tile_y: int = TILE,
                      overlap: int = OVERLAP) -> int:
    """How many tiles `tiled_scale` runs for one picture (``get_tiled_scale_steps``)."""
    rows = 1 if height <= tile_y else math.ceil((height - overlap) / (tile_y - overlap))
    cols = 1 if width <= tile_x else math.ceil((width - overlap) / (tile_x - overlap))
    return rows * cols


def _feather_mask(shape: tuple[int, int], feathers: tuple[int, int]) -> np.ndarray:
    """The weight of one tile's output: linear ramps of ``feather`` pixels at every edge.

    Position ``t`` from an edge is multiplied by ``(t + 1) / feather`` (float32, in ComfyUI's
    order: start and end of the height axis, then of the width axis, so ramps of a tile
    shorter than two feathers multiply twice).
    """
    mask = np.ones((1, 1) + shape, dtype=_F32)
    for axis, feather in zip((2, 3), feathers):
        length = mask.shape[axis]
        if feather >= length:
            continue
        for t in range(feather):
            a = _F32((t + 1) / feather)
            head = [slice(None)] * 4
            head[axis] = slice(t, t + 1)
            mask[tuple(head)] *= a
            tail = [slice(None)] * 4
            tail[axis] = slice(length - 1 - t, length - t)
            mask[tuple(tail)] *= a
    return mask


def tiled_scale(samples: np.ndarray, function: TileFn, tile_x: int = 64, tile_y: int = 64,
                overlap: int = 8, upscale_amount: float = 4, out_channels: int = 3
                ) -> np.ndarray:
    """``comfy.utils.tiled_scale``: run `function` on overlapping tiles and blend them.

    Args:
        samples: float32 ``[B,C,H,W]``.
        function: The per-tile function (one picture at a time).
        tile_x: Tile width, in input pixels.
        tile_y: Tile height.
        overlap: Overlap between neighbouring tiles, in input pixels.
        upscale_amount: Output pixels per input pixel.
        out_channels: Channels of `function`'s output.

    Returns:
        float32 ``[B,out_channels,round(H*scale),round(W*scale)]``.
    """
    x = np.asarray(samples, dtype=_F32)
    if x.ndim != 4:
        raise OpError(f"tiled_scale needs [B,C,H,W] values; got shape {tuple(x.shape)}")
    tiles = (int(tile_y), int(tile_x))
    if min(tiles) <= overlap:
        raise OpError(f"tile {tile_x}x{tile_y} must be larger than the overlap {overlap}")
    size = x.shape[2:]
    out_size = tuple(round(upscale_amount * s) for s in size)
    output = np.empty((x.shape[0], out_channels) + out_size, dtype=_F32)
    feathers = (round(upscale_amount * overlap),) * 2
    for b in range(x.shape[0]):
        s = x[b:b + 1]
        if all(size[d] <= tiles[d] for d in range(2)):
            output[b:b + 1] = function(s)
            continue
        out = np.zeros((1, out_channels) + out_size, dtype=_F32)
        out_div = np.zeros((1, 1) + out_size, dtype=_F32)
        positions = [range(0, size[d] - overlap, tiles[d] - overlap) if size[d] > tiles[d]
                     else [0] for d in range(2)]
        for it_y in positions[0]:
            for it_x in positions[1]:
                starts, lengths, ups = [], [], []
                for d, it in enumerate((it_y, it_x)):
                    pos = max(0, min(size[d] - overlap, it))
                    starts.append(pos)
                    lengths.append(min(tiles[d], size[d] - pos))
                    ups.append(round(upscale_amount * pos))
                ps = np.asarray(function(s[:, :, starts[0]:starts[0] + lengths[0],
                                           starts[1]:starts[1] + lengths[1]]), dtype=_F32)
                mask = _feather_mask(ps.shape[2:], feathers)
                # Tiles that reach past the output's edge are cut to fit, as ComfyUI's narrow.
                h = min(ps.shape[2], out_size[0] - ups[0])
                w = min(ps.shape[3], out_size[1] - ups[1])
                region = (slice(None), slice(None), slice(ups[0], ups[0] + h),
                          slice(ups[1], ups[1] + w))
                out[region] += ps[:, :, :h, :w] * mask[:, :, :h, :w]
                out_div[region] += mask[:, :, :h, :w]
        output[b:b + 1] = out / out_div
    return output


def pad_to_multiple(x: np.ndarray, multiple: int) -> np.ndarray:
    """Reflect-pads ``[...,H,W]`` on the bottom and right to multiples of `multiple`."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if not (pad_h or pad_w):
        return x
    widths = [(0, 0)] * (x.ndim - 2) + [(0, pad_h), (0, pad_w)]
    return np.pad(x, widths, mode="reflect")


def pad_to_requirements(x: np.ndarray, minimum: int = 0, multiple_of: int = 1,
                        square: bool = False) -> tuple[bool, np.ndarray]:
    """spandrel's ``pad_tensor``: pad ``[...,H,W]`` on the bottom/right to a valid size.

    The valid size is at least `minimum` (itself rounded up to `multiple_of`), a multiple of
    `multiple_of`, and square when asked. Up to ``size - 1`` pixels are reflected; the rest
    repeats the edge.

    Returns:
        (whether anything was padded, the padded array).
    """
    h, w = x.shape[-2:]
    multiple_of = max(1, int(multiple_of))
    minimum = -(-int(minimum) // multiple_of) * multiple_of

    def ceil_to(v: int) -> int:
        return -(-v // multiple_of) * multiple_of

    new_w, new_h = ceil_to(max(minimum, w)), ceil_to(max(minimum, h))
    if square:
        new_w = new_h = max(new_w, new_h)
    pad_w, pad_h = new_w - w, new_h - h
    if not (pad_w or pad_h):
        return False, x
    lead = [(0, 0)] * (x.ndim - 2)
    reflect_h, reflect_w = min(pad_h, h - 1), min(pad_w, w - 1)
    x = np.pad(x, lead + [(0, reflect_h), (0, reflect_w)], mode="reflect")
    x = np.pad(x, lead + [(0, pad_h - reflect_h), (0, pad_w - reflect_w)], mode="edge")
    return True, x


def model_call(run: TileFn, tile: np.ndarray, scale: int, minimum: int = 0,
               multiple_of: int = 1, network_multiple: int = 1) -> np.ndarray:
    """One call of an upscale model as spandrel's ``ImageModelDescriptor`` makes it.

    Args:
        run: The bare network (an ONNX session, a torch module) on float32 ``[1,C,h,w]``.
        tile: float32 ``[1,C,h,w]`` in [0, 1].
        scale: The model's scale.
        minimum: The model's minimum input size.
        multiple_of: The size multiple the model requires (spandrel's size requirements).
        network_multiple: A multiple the network pads to itself (SwinIR's window): padded here
            by reflection the same way, for networks exported without their padding.

    Returns:
        float32 ``[1,C',h*scale,w*scale]`` clamped to [0, 1].
    """
    h, w = tile.shape[-2:]
    _, x = pad_to_requirements(tile, minimum, multiple_of)
    if network_multiple > 1:
        x = pad_to_multiple(x, network_multiple)
    out = np.clip(np.asarray(run(np.ascontiguousarray(x, dtype=_F32)), dtype=_F32), 0.0, 1.0)
    return out[..., :h * scale, :w * scale]


def upscale_with_model(image: np.ndarray, run: TileFn, scale: int, *, minimum: int = 0,
                       multiple_of: int = 1, network_multiple: int = 1,
                       out_channels: int | None = None, tile: int = TILE,
                       overlap: int = OVERLAP) -> np.ndarray:
    """``ImageUpscaleWithModel``: upscale an IMAGE with a model, tile by tile.

    Args:
        image: IMAGE ``[B,H,W,C]``.
        run: The bare network on float32 ``[1,C,h,w]`` (see `model_call`).
        scale: The model's scale (ComfyUI's ``upscale_amount``).
        minimum: The model's minimum input size (spandrel's size requirements).
        multiple_of: The model's size multiple.
        network_multiple: See `model_call`.
        out_channels: The model's output channels (default: the image's).
        tile: Tile size (ComfyUI starts at 512).
        overlap: Tile overlap (32).

    Returns:
        IMAGE ``[B,round(H*scale),round(W*scale),C']`` clamped to [0, 1].
    """
    img = as_image(image)
    channels = img.shape[-1] if out_channels is None else int(out_channels)

    def call(t: np.ndarray) -> np.ndarray:
        return model_call(run, t, int(scale), minimum, multiple_of, network_multiple)

    samples = np.ascontiguousarray(img.transpose(0, 3, 1, 2))
    out = tiled_scale(samples, call, tile_x=tile, tile_y=tile, overlap=overlap,
                      upscale_amount=scale, out_channels=channels)
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0).transpose(0, 2, 3, 1))
