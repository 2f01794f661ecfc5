"""Canny edge detection as ComfyUI's ``Canny`` node computes it (kornia's ``canny``), in numpy.

ComfyUI's node (``comfy_extras/nodes_canny.py``) calls ``kornia.filters.canny(image,
low_threshold, high_threshold)`` with kornia's defaults and returns the edge map as a grey RGB
image. The steps, as kornia 0.9 defines them:

1. RGB to grey with the weights 0.299, 0.587, 0.114 (a one-channel image is used as it is).
2. A 5x5 Gaussian blur, sigma 1, separable (along x, then y), ``reflect`` borders.
3. The *unnormalised* Sobel gradient (``replicate`` borders): a unit step gives a magnitude of
   about 2.6 after the blur, so the node's thresholds (0.01 to 0.99) catch faint edges too.
4. Magnitude ``sqrt(gx² + gy² + 1e-6)``; direction ``round(atan2(gy, gx) / 45°)``.
5. Non-maximum suppression along that direction: along x (y) a pixel must be strictly greater
   than its left (upper) neighbour and at least equal to its right (lower) one; along a
   diagonal strictly greater than both; pixels beyond the image count as ``sqrt(1e-6)``.
6. Double threshold (strict: weak above ``low``, strong above ``high``) and hysteresis: weak
   pixels 8-connected, through weak pixels, to a strong pixel become edges.

kornia iterates the hysteresis round until nothing changes; its fixed point is exactly the
connected-component rule of step 6, which is what :func:`_hysteresis` computes (by union-find
over the candidate pixels, so a long edge chain costs no more than a short one).

Floating-point sums follow kornia's order where it is defined, but torch's convolutions may
add in another order, so magnitudes agree to about 1e-6 and an edge pixel can differ only where
a magnitude sits within that of a threshold or of a neighbour it is compared with.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from comfyc.runtime.ops._common import OpError, as_image

__all__ = ["canny", "canny_image", "gaussian_kernel"]

_F32 = np.float32
#: kornia's ``eps`` inside the magnitude's square root.
_EPS = _F32(1e-6)
#: (dy, dx) of the neighbour in direction k (k·45° from +x towards +y), as kornia numbers them.
_OFFSETS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))


def gaussian_kernel(size: int = 5, sigma: float = 1.0) -> np.ndarray:
    """kornia's ``get_gaussian_kernel1d`` in float32: ``exp(-x²/2σ²)`` at integer offsets,
    divided by its sum (the same float32 steps, so the same bits)."""
    x = np.arange(size, dtype=_F32) - _F32(size // 2)
    g = np.exp(-(x * x) / (_F32(2.0) * _F32(sigma) * _F32(sigma)))
    return (g / g.sum(dtype=_F32)).astype(_F32)


def _correlate_axis(x: np.ndarray, kernel: np.ndarray, axis: int, mode: str) -> np.ndarray:
    """Same-size 1-D correlation of ``[..., H, W]`` along `axis` with `mode` padding."""
    radius = len(kernel) // 2
    pad = [(0, 0)] * x.ndim
    pad[axis] = (radius, radius)
    p = np.pad(x, pad, mode=mode)
    n = x.shape[axis]
    # NOTE: accumulated tap by tap from the first, as kornia's large-image path does.
    out = np.take(p, np.arange(n), axis=axis) * kernel[0]
    for tap in range(1, len(kernel)):
        out += np.take(p, np.arange(tap, tap + n), axis=axis) * kernel[tap]
    return out


def _sobel(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unnormalised Sobel ``(gx, gy)`` of ``[B,H,W]`` with replicated borders (correlation)."""
    p = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
    h, w = x.shape[1:]

    def at(dy: int, dx: int) -> np.ndarray:
        return p[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    two = _F32(2.0)
    gx = (at(-1, 1) - at(-1, -1)) + two * (at(0, 1) - at(0, -1)) + (at(1, 1) - at(1, -1))
    gy = (at(1, -1) - at(-1, -1)) + two * (at(1, 0) - at(-1, 0)) + (at(1, 1) - at(-1, 1))
    return gx.astype(_F32), gy.astype(_F32)


def _find(parent: np.ndarray) -> np.ndarray:
    """Every element's root (pointer jumping until parents are roots)."""
    while True:
        grand = parent[parent]
        if np.array_equal(grand, parent):
            return parent
        parent = grand


def _hysteresis(weak: np.ndarray, strong: np.ndarray) -> np.ndarray:
    """Pixels of 8-connected components of ``weak | strong`` that hold a strong pixel.

    Args:
        weak: bool ``[B,H,W]``, pixels above the low threshold (strong ones included).
        strong: bool ``[B,H,W]``, pixels above the high threshold.
    """
    flat = weak.ravel()
    ids = np.flatnonzero(flat)
    if ids.size == 0:
        return np.zeros_like(weak)
    b, h, w = weak.shape
    index = np.full(flat.size, -1, dtype=np.int64)
    index[ids] = np.arange(ids.size)
    rows, cols = (ids // w) % h, ids % w
    pairs_a, pairs_b = [], []
    # Four of the eight directions are enough: each undirected neighbour pair once.
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):
        ok = (rows + dy < h) & (cols + dx >= 0) & (cols + dx < w)
        other = index[ids[ok] + dy * w + dx]
        linked = other >= 0
        pairs_a.append(np.flatnonzero(ok)[linked])
        pairs_b.append(other[linked])
    a, c = np.concatenate(pairs_a), np.concatenate(pairs_b)
    parent = np.arange(ids.size)
    # Union-find with hooking of roots onto the smaller root, then pointer jumping; the
    # number of rounds grows with the log of a component's size, not with its length.
    while True:
        ra, rc = parent[a], parent[c]
        low = np.minimum(ra, rc)
        hooked = parent.copy()
        np.minimum.at(hooked, ra, low)
        np.minimum.at(hooked, rc, low)
        hooked = _find(hooked)
        if np.array_equal(hooked, parent):
            break
        parent = hooked
    keep = np.zeros(ids.size, dtype=bool)
    keep[parent[strong.ravel()[ids]]] = True
    out = np.zeros(flat.size, dtype=bool)
    out[ids] = keep[parent]
    return out.reshape(weak.shape)


def canny(gray: np.ndarray, low_threshold: float, high_threshold: float,
          hysteresis: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """kornia's ``canny`` on grey ``[B,H,W]`` pictures (5x5 blur, sigma 1, eps 1e-6).

    Args:
        gray: float32 ``[B,H,W]``; both sides at least 3 pixels (reflect padding by 2).
        low_threshold: Weak-edge threshold on the unnormalised Sobel magnitude (> 0).
        high_threshold: Strong-edge threshold (>= low_threshold).
        hysteresis: Track weak edges to strong ones; False gives 0 / 0.5 / 1 edges.

    Returns:
        (magnitude after non-maximum suppression, edges), both float32 ``[B,H,W]``.
    """
    x = np.asarray(gray, dtype=_F32)
    if not 0 < low_threshold <= high_threshold:
        raise OpError(f"low_threshold={low_threshold}, high_threshold={high_threshold}; "
                      "expected 0 < low_threshold <= high_threshold")
    if x.shape[-1] < 3 or x.shape[-2] < 3:
        raise OpError(f"Canny needs a picture of at least 3x3 pixels; got "
                      f"{x.shape[-1]}x{x.shape[-2]}")
    kernel = gaussian_kernel()
    blurred = _correlate_axis(_correlate_axis(x, kernel, -1, "reflect"), kernel, -2, "reflect")
    gx, gy = _sobel(blurred)
    gxp = np.pad(gx, ((0, 0), (1, 1), (1, 1)))
    gyp = np.pad(gy, ((0, 0), (1, 1), (1, 1)))
    padded = np.sqrt(gxp * gxp + gyp * gyp + _EPS)
    h, w = x.shape[1:]
    magnitude = padded[:, 1:1 + h, 1:1 + w]
    # NOTE: angle/45° is rounded half to even as torch.round; atan2(0, 0) is 0 as in kornia.
    direction = np.round(np.arctan2(gy, gx) * _F32(4 / np.pi)).astype(np.int64)
    positive, negative = direction % 8, (direction + 4) % 8
    neighbours = np.stack([padded[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                           for dy, dx in _OFFSETS])

    def beats(k: np.ndarray) -> np.ndarray:
        other = np.take_along_axis(neighbours, k[None], axis=0)[0]
        ties = (k == 0) | (k == 2)
        return (magnitude > other) | (ties & (magnitude == other))

    is_max = beats(positive) & beats(negative) & (magnitude > padded[:, :1, :1])
    magnitude = (magnitude * is_max).astype(_F32)
    weak = magnitude > _F32(low_threshold)
    strong = magnitude > _F32(high_threshold)
    if not hysteresis:
        return magnitude, ((weak.astype(_F32) + strong.astype(_F32)) * _F32(0.5))
    return magnitude, _hysteresis(weak, strong).astype(_F32)


def canny_image(image: Any, low_threshold: float, high_threshold: float) -> np.ndarray:
    """The Canny node: edges of each picture as a grey RGB image of 0s and 1s.

    Args:
        image: IMAGE ``[B,H,W,C]`` with 1 or 3 channels (kornia refuses others).
        low_threshold: Weak-edge threshold (ComfyUI offers 0.01 to 0.99; default 0.4).
        high_threshold: Strong-edge threshold (default 0.8).

    Returns:
        IMAGE ``[B,H,W,3]``.
    """
    img = as_image(image)
    channels = img.shape[-1]
    if channels == 3:
        # NOTE: kornia's rgb_to_grayscale: r*0.299, then two addcmul (unfused multiply-adds).
        gray = img[..., 0] * _F32(0.299)
        gray = gray + img[..., 1] * _F32(0.587)
        gray = gray + img[..., 2] * _F32(0.114)
    elif channels == 1:
        gray = img[..., 0]
    else:
        raise OpError(f"Canny takes RGB or one-channel images; got {channels} channels. Drop "
                      "the alpha first (SplitImageWithAlpha)")
    _, edges = canny(gray, float(low_threshold), float(high_threshold))
    return np.ascontiguousarray(np.broadcast_to(edges[..., None], edges.shape + (3,)))
