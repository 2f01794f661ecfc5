"""Image and latent resampling in numpy, as ComfyUI's ``comfy.utils.common_upscale`` does it.

ComfyUI resizes ``[N,C,H,W]`` tensors with ``torch.nn.functional.interpolate(x, size=(h, w),
mode=...)`` (``align_corners`` and ``antialias`` left at their defaults: False) for
``nearest-exact``, ``bilinear``, ``area`` and ``bicubic``, with its own spherical interpolation
for ``bislerp``, and with Pillow for ``lanczos``. This module reimplements those without torch:

* ``nearest-exact``: source index ``min(floor((dst + 0.5) * in/out), in - 1)``.
* ``bilinear``: source coordinate ``(dst + 0.5) * in/out - 0.5`` clamped at 0; two taps.
* ``bicubic``: the same coordinate unclamped, Keys' cubic with ``A = -0.75``, four taps with the
  indices clamped to the border.
* ``area``: ``adaptive_avg_pool2d``: output ``o`` averages input ``floor(o*in/out)`` up to
  ``ceil((o+1)*in/out)``.

Index and weight arithmetic reproduces ATen's float32 computation (``UpSample.h``), including the
multiply-adds that torch's x86 build fuses, so the interpolation weights are bit-identical to
torch's; the taps are summed width first, then height, and the results agree with torch to
float32 rounding (about one ulp, from the order of the sums; the oracle tests check this).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from comfyc.runtime.ops._common import OpError, check_choice

__all__ = [
    "CROP_METHODS",
    "INTERPOLATE_MODES",
    "UPSCALE_METHODS",
    "bislerp",
    "center_crop",
    "common_upscale",
    "interpolate",
    "lanczos",
]

#: Modes of `interpolate` (torch.nn.functional.interpolate names).
INTERPOLATE_MODES = ("nearest-exact", "bilinear", "area", "bicubic")
#: Every method `common_upscale` accepts.
UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp", "lanczos")
#: Crop modes of ComfyUI's upscale nodes.
CROP_METHODS = ("disabled", "center")

_F32 = np.float32


def _scale(in_size: int, out_size: int) -> np.float32:
    # NOTE: ATen compute_scales_value: (float)input_size / output_size when no scale is given.
    return _F32(in_size) / _F32(out_size)


def _nearest_exact_index(in_size: int, out_size: int) -> np.ndarray:
    """Source indices of torch's ``nearest-exact`` (ATen ``nearest_neighbor_exact_...``)."""
    if in_size == out_size:
        return np.arange(out_size)
    scale = np.float64(_scale(in_size, out_size))
    # NOTE: ATen computes (dst + 0.5) * scale in double, then floorf() rounds it to float first.
    src = ((np.arange(out_size, dtype=np.float64) + 0.5) * scale).astype(np.float32)
    return np.minimum(np.floor(src).astype(np.int64), in_size - 1)


def _source_coords(in_size: int, out_size: int) -> np.ndarray:
    """``(dst + 0.5) * scale - 0.5`` in float32 (ATen ``area_pixel_compute_source_index``).

    NOTE: torch's CPU build contracts this multiply-add into one FMA (checked against torch
    2.x: unfused float32 arithmetic is off by up to 1e-6 in the weights). The float64 product
    of two float32 values is exact, so computing in float64 and rounding once emulates the FMA.
    """
    dst = np.arange(out_size, dtype=np.float64) + 0.5
    return (np.float64(_scale(in_size, out_size)) * dst - 0.5).astype(np.float32)


def _guard(src: np.ndarray, in_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer index and fractional weight (ATen ``guard_index_and_lambda``)."""
    index = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lam = np.clip(src - index.astype(np.float32), _F32(0), _F32(1)).astype(np.float32)
    return index, lam


def _linear_taps(in_size: int, out_size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Indices and weights of the two bilinear taps along one axis."""
    src = np.maximum(_source_coords(in_size, out_size), _F32(0))
    i0, lam = _guard(src, in_size)
    i1 = i0 + (i0 < in_size - 1).astype(np.int64)
    return [i0, i1], [(_F32(1) - lam).astype(np.float32), lam]


def _fma(a: np.ndarray, b: np.ndarray | np.float32, c: np.ndarray | np.float32) -> np.ndarray:
    """``a * b + c`` rounded once to float32, as a fused multiply-add (exact float64 product)."""
    return (np.asarray(a, dtype=np.float64) * b + c).astype(np.float32)


# NOTE: ATen cubic_convolution1/2 with A = -0.75. The multiply-adds that torch's x86 build
# contracts into FMAs were found by comparing the weights with torch 2.x bit for bit.
def _cubic_conv1(x: np.ndarray, a: np.float32) -> np.ndarray:
    """``((A + 2) * x - (A + 3)) * x * x + 1`` for ``|x| <= 1``."""
    inner = _fma(x, a + _F32(2), -(a + _F32(3)))
    return ((inner * x) * x + _F32(1)).astype(np.float32)


def _cubic_conv2(x: np.ndarray, a: np.float32) -> np.ndarray:
    """``((A * x - 5A) * x + 8A) * x - 4A`` for ``1 < |x| < 2``."""
    inner = _fma(_fma(x, a, -_F32(5) * a), x, _F32(8) * a)
    return (inner * x - _F32(4) * a).astype(np.float32)


def _cubic_taps(in_size: int, out_size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Indices and weights of the four bicubic taps along one axis (ATen, ``A = -0.75``)."""
    i, t = _guard(_source_coords(in_size, out_size), in_size)
    a = _F32(-0.75)
    # NOTE: ATen get_cubic_upsample_coefficients: [c2(t + 1), c1(t), c1(1 - t), c2(2 - t)].
    u = (_F32(1) - t).astype(np.float32)
    weights = [_cubic_conv2((t + _F32(1)).astype(np.float32), a), _cubic_conv1(t, a),
               _cubic_conv1(u, a), _cubic_conv2((u + _F32(1)).astype(np.float32), a)]
    indices = [np.clip(i - 1 + k, 0, in_size - 1) for k in range(4)]
    return indices, [w.astype(np.float32) for w in weights]


def _apply_taps(
    x: np.ndarray, axis: int, indices: list[np.ndarray], weights: list[np.ndarray]
) -> np.ndarray:
    """``sum_k x[..., indices[k], ...] * weights[k]`` along `axis` (-1 or -2), in tap order."""
    shape = (-1,) if axis == -1 else (-1, 1)
    out = np.take(x, indices[0], axis=axis) * weights[0].reshape(shape)
    for idx, w in zip(indices[1:], weights[1:]):
        out += np.take(x, idx, axis=axis) * w.reshape(shape)
    return out


def _area_axis(x: np.ndarray, axis: int, in_size: int, out_size: int) -> np.ndarray:
    """``adaptive_avg_pool`` along one axis (-1 or -2), through float64 prefix sums."""
    o = np.arange(out_size, dtype=np.int64)
    # NOTE: ATen adaptive pooling start_index/end_index: floor(o*in/out), ceil((o+1)*in/out).
    start = (o * in_size) // out_size
    end = -((-(o + 1) * in_size) // out_size)
    sums = np.cumsum(x, axis=axis, dtype=np.float64)
    pad = [(0, 0)] * sums.ndim
    pad[axis] = (1, 0)
    sums = np.pad(sums, pad)
    count = (end - start).astype(np.float64)
    shape = (-1,) if axis == -1 else (-1, 1)
    window = np.take(sums, end, axis=axis) - np.take(sums, start, axis=axis)
    return window / count.reshape(shape)


def interpolate(samples: np.ndarray, height: int, width: int, mode: str) -> np.ndarray:
    """``torch.nn.functional.interpolate(samples, size=(height, width), mode=mode)`` in numpy.

    Args:
        samples: float32 ``[N,C,H,W]``.
        height: Output height (>= 1).
        width: Output width (>= 1).
        mode: One of `INTERPOLATE_MODES`.

    Returns:
        float32 ``[N,C,height,width]``.
    """
    check_choice(mode, INTERPOLATE_MODES, "interpolation mode")
    x = np.ascontiguousarray(samples, dtype=np.float32)
    _, _, in_h, in_w = x.shape
    if mode == "nearest-exact":
        out = np.take(x, _nearest_exact_index(in_w, width), axis=-1)
        return np.ascontiguousarray(np.take(out, _nearest_exact_index(in_h, height), axis=-2))
    if mode == "area":
        # NOTE: interpolate(mode="area") is adaptive_avg_pool2d; the box mean is separable.
        out = _area_axis(_area_axis(x, -1, in_w, width), -2, in_h, height)
        return np.ascontiguousarray(out, dtype=np.float32)
    taps = _linear_taps if mode == "bilinear" else _cubic_taps
    out = _apply_taps(x, -1, *taps(in_w, width))
    return _apply_taps(out, -2, *taps(in_h, height)).astype(np.float32)


def _slerp(b1: np.ndarray, b2: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Spherical interpolation of rows of `b1`, `b2` ``[M,C]`` by ratios `r` ``[M,1]``.

    NOTE: comfy.utils.bislerp.slerp: directions are slerped and the norm is lerped; nearly equal
    directions take `b1`, nearly opposite ones a plain lerp.
    """
    n1 = np.linalg.norm(b1, axis=-1, keepdims=True).astype(np.float32)
    n2 = np.linalg.norm(b2, axis=-1, keepdims=True).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        u1 = np.where(n1 == 0, _F32(0), b1 / n1).astype(np.float32)
        u2 = np.where(n2 == 0, _F32(0), b2 / n2).astype(np.float32)
        dot = (u1 * u2).sum(axis=1, dtype=np.float32)
        omega = np.arccos(dot)
        so = np.sin(omega)
        rr = r[:, 0]
        res = (np.sin((_F32(1) - rr) * omega) / so)[:, None] * u1 + (
            np.sin(rr * omega) / so)[:, None] * u2
        res *= n1 * (_F32(1) - r) + n2 * r
    same = dot > _F32(1 - 1e-5)
    res[same] = b1[same]
    opposite = dot < _F32(1e-5 - 1)
    res[opposite] = (b1 * (_F32(1) - r) + b2 * r)[opposite]
    return res.astype(np.float32)


def _bislerp_data(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ratios and the two source indices per output position (bislerp's generate_bilinear_data).

    NOTE: ComfyUI bilinearly resizes ``arange(in)`` and ``arange(in) + 1`` (last entry minus 1)
    and truncates; the fractional part of the first is the ratio.
    """
    indices, weights = _linear_taps(in_size, out_size)
    first = np.arange(in_size, dtype=np.float32)
    second = first + _F32(1)
    second[-1] -= _F32(1)
    v1 = first[indices[0]] * weights[0] + first[indices[1]] * weights[1]
    v2 = second[indices[0]] * weights[0] + second[indices[1]] * weights[1]
    ratios = (v1 - np.floor(v1)).astype(np.float32)
    return ratios, v1.astype(np.int64), v2.astype(np.int64)


def bislerp(samples: np.ndarray, width: int, height: int) -> np.ndarray:
    """ComfyUI's ``bislerp``: bilinear resize with slerp of channel vectors, width then height.

    Args:
        samples: float32 ``[N,C,H,W]``.
        width: Output width.
        height: Output height.

    Returns:
        float32 ``[N,C,height,width]``.
    """
    x = np.asarray(samples, dtype=np.float32)
    n, c, h, _ = x.shape
    ratios, c1, c2 = _bislerp_data(x.shape[3], width)
    p1 = x[:, :, :, c1].transpose(0, 2, 3, 1).reshape(-1, c)
    p2 = x[:, :, :, c2].transpose(0, 2, 3, 1).reshape(-1, c)
    r = np.broadcast_to(ratios, (n, h, width)).reshape(-1, 1)
    x = _slerp(p1, p2, r).reshape(n, h, width, c).transpose(0, 3, 1, 2)
    ratios, c1, c2 = _bislerp_data(h, height)
    p1 = x[:, :, c1, :].transpose(0, 2, 3, 1).reshape(-1, c)
    p2 = x[:, :, c2, :].transpose(0, 2, 3, 1).reshape(-1, c)
    r = np.broadcast_to(ratios[:, None], (n, height, width)).reshape(-1, 1)
    out = _slerp(p1, p2, r).reshape(n, height, width, c).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(out)


def _resize_pil(channels_last: np.ndarray, width: int, height: int) -> np.ndarray:
    """Lanczos-resizes one ``[H,W,C]`` float picture through 8-bit Pillow images."""
    # NOTE: comfy.utils.lanczos: uint8(clip(255 * x)) (truncation), PIL LANCZOS, then / 255.
    pixels = np.clip(_F32(255.0) * channels_last, 0, 255).astype(np.uint8)
    c = pixels.shape[-1]
    size, lanczos_filter = (width, height), Image.Resampling.LANCZOS
    if c in (3, 4):
        # NOTE: a 4-channel picture becomes RGBA, which Pillow resizes premultiplied by alpha,
        # exactly as in ComfyUI (Image.fromarray on the same array).
        planes = [np.asarray(Image.fromarray(pixels).resize(size, lanczos_filter))]
    else:
        # NOTE: ComfyUI squeezes one channel to an "L" picture; other channel counts (which
        # ComfyUI cannot resize) are resized one "L" plane at a time.
        planes = [
            np.asarray(Image.fromarray(pixels[:, :, k]).resize(size, lanczos_filter))
            for k in range(c)
        ]
    stacked = planes[0] if len(planes) == 1 else np.stack(planes, axis=-1)
    return stacked.reshape(height, width, c).astype(np.float32) / _F32(255.0)


def lanczos(samples: np.ndarray, width: int, height: int) -> np.ndarray:
    """ComfyUI's ``lanczos``: each picture quantised to 8 bits and resized by Pillow.

    Args:
        samples: float32 ``[N,C,H,W]`` in [0,1].
        width: Output width.
        height: Output height.

    Returns:
        float32 ``[N,C,height,width]``, multiples of 1/255.
    """
    x = np.asarray(samples, dtype=np.float32)
    pictures = [_resize_pil(p.transpose(1, 2, 0), width, height) for p in x]
    return np.ascontiguousarray(np.stack(pictures).transpose(0, 3, 1, 2))


def center_crop(samples: np.ndarray, width: int, height: int) -> np.ndarray:
    """Crops ``[N,C,H,W]`` around the centre to the aspect ratio ``width / height``.

    NOTE: comfy.utils.common_upscale crop="center": the excess is ``round((old - old * ratio) / 2)``
    on each side of the longer axis (Python's round, ties to even).
    """
    old_h, old_w = samples.shape[-2], samples.shape[-1]
    old_aspect = old_w / old_h
    new_aspect = width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return samples[:, :, y:old_h - y, x:old_w - x]


def common_upscale(
    samples: np.ndarray, width: int, height: int, upscale_method: str, crop: str
) -> np.ndarray:
    """Resizes ``[N,C,H,W]`` to ``[N,C,height,width]`` as ``comfy.utils.common_upscale``.

    Args:
        samples: float32 ``[N,C,H,W]`` (latents or channels-first pictures).
        width: Output width (>= 1).
        height: Output height (>= 1).
        upscale_method: One of `UPSCALE_METHODS`.
        crop: ``"disabled"`` or ``"center"`` (crop to the target aspect ratio first).

    Returns:
        float32 ``[N,C,height,width]``.

    Raises:
        OpError: Unknown method or crop, a size below 1, or an input that is not 4-D.
    """
    check_choice(upscale_method, UPSCALE_METHODS, "upscale_method")
    check_choice(crop, CROP_METHODS, "crop")
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 4:
        raise OpError(f"resampling needs [N,C,H,W] values; got shape {tuple(x.shape)}")
    if int(width) < 1 or int(height) < 1:
        raise OpError(
            f"cannot resize to width={width}, height={height}; both must be at least 1 "
            f"(the input is {x.shape[3]}x{x.shape[2]}). Pick a larger target size or scale"
        )
    width, height = int(width), int(height)
    if crop == "center":
        x = center_crop(x, width, height)
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise OpError(f"cannot resize an empty picture of shape {tuple(x.shape)}")
    if upscale_method == "bislerp":
        return bislerp(x, width, height)
    if upscale_method == "lanczos":
        return lanczos(x, width, height)
    return interpolate(x, height, width, upscale_method)
