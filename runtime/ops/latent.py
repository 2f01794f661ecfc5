"""LATENT ops: ComfyUI's latent nodes as pure numpy functions.

A LATENT is a dict ``{"samples": float32 [B,4,H/8,W/8]}`` (raw VAE latents, not multiplied by
0.18215) with optional ``"noise_mask"`` (``[B,1,H,W]`` or ``[B,H,W]``, pixel or latent size) and
``"batch_index"`` (list of int: which noise of the seed each item gets, see ``noise.py``).

Every function takes inputs by their ComfyUI input names and returns a new dict; the input dict
and its arrays are never modified. Keys a node does not touch are carried over, as ComfyUI's
``samples.copy()`` does.

| Node | Function |
| --- | --- |
| EmptyLatentImage | `empty_latent_image` |
| LatentUpscale | `latent_upscale` |
| LatentUpscaleBy | `latent_upscale_by` |
| LatentComposite | `latent_composite` |
| LatentFromBatch | `latent_from_batch` |
| RepeatLatentBatch | `repeat_latent_batch` |
| SetLatentNoiseMask | `set_latent_noise_mask` |
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from comfyc.runtime.ops._common import Latent, OpError, as_latent, as_mask, check_choice
from comfyc.runtime.ops.resample import CROP_METHODS, common_upscale

__all__ = [
    "LATENT_CHANNELS",
    "LATENT_UPSCALE_METHODS",
    "empty_latent_image",
    "empty_sd3_latent_image",
    "latent_composite",
    "latent_from_batch",
    "latent_upscale",
    "latent_upscale_by",
    "repeat_latent_batch",
    "set_latent_noise_mask",
]

#: Channels of an SD1.x/SD2.x latent.
LATENT_CHANNELS = 4
#: ``upscale_method`` choices of LatentUpscale / LatentUpscaleBy, in ComfyUI's order.
LATENT_UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")


def _positive_int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < minimum:
        raise OpError(f"{what} is {value!r}; expected an integer >= {minimum}")
    return int(value)


def empty_latent_image(width: int, height: int, batch_size: int = 1) -> Latent:
    """EmptyLatentImage: zeros ``[batch_size, 4, height // 8, width // 8]``.

    Args:
        width: Image width in pixels (floor-divided by 8).
        height: Image height in pixels (floor-divided by 8).
        batch_size: Number of latents.

    Returns:
        ``{"samples": zeros}``.
    """
    width = _positive_int(width, "width", 8)
    height = _positive_int(height, "height", 8)
    batch_size = _positive_int(batch_size, "batch_size", 1)
    # NOTE: nodes.EmptyLatentImage.generate: torch.zeros([batch, 4, height // 8, width // 8]).
    shape = (batch_size, LATENT_CHANNELS, height // 8, width // 8)
    return {"samples": np.zeros(shape, dtype=np.float32)}


def empty_sd3_latent_image(width: int, height: int, batch_size: int = 1) -> Latent:
    """EmptySD3LatentImage: zeros ``[batch_size, 16, height // 8, width // 8]`` (SD3, Flux).

    Args:
        width: Image width in pixels (floor-divided by 8).
        height: Image height in pixels (floor-divided by 8).
        batch_size: Number of latents.

    Returns:
        ``{"samples": zeros}``.
    """
    width = _positive_int(width, "width", 8)
    height = _positive_int(height, "height", 8)
    batch_size = _positive_int(batch_size, "batch_size", 1)
    # NOTE: comfy_extras/nodes_sd3.py EmptySD3LatentImage: torch.zeros([batch, 16, h // 8, w // 8]).
    return {"samples": np.zeros((batch_size, 16, height // 8, width // 8), dtype=np.float32)}


def latent_upscale(
    samples: Latent, upscale_method: str, width: int, height: int, crop: str = "disabled"
) -> Latent:
    """LatentUpscale: resize latents to ``width x height`` pixels (``// 8`` in latent units).

    A side of 0 keeps the aspect ratio from the other side; both 0 returns the input unchanged.
    Each side is at least 64 pixels. ``noise_mask`` and ``batch_index`` are carried over as they
    are (ComfyUI does not resize the mask).

    Args:
        samples: The LATENT.
        upscale_method: One of `LATENT_UPSCALE_METHODS`.
        width: Target width in pixels, or 0.
        height: Target height in pixels, or 0.
        crop: ``"disabled"`` or ``"center"`` (crop to the target aspect ratio first).

    Returns:
        The resized LATENT.
    """
    check_choice(upscale_method, LATENT_UPSCALE_METHODS, "upscale_method")
    check_choice(crop, CROP_METHODS, "crop")
    out, x = as_latent(samples)
    width, height = int(width), int(height)
    if width < 0 or height < 0:
        raise OpError(f"width={width}, height={height}; expected sizes >= 0 (0 keeps aspect)")
    if width == 0 and height == 0:
        return out
    # NOTE: nodes.LatentUpscale.upscale: 0 keeps the aspect ratio, each side clamped to >= 64 px,
    # the aspect taken from the latent's own shape (shape[3] / shape[2]).
    if width == 0:
        height = max(64, height)
        width = max(64, round(x.shape[3] * height / x.shape[2]))
    elif height == 0:
        width = max(64, width)
        height = max(64, round(x.shape[2] * width / x.shape[3]))
    else:
        width = max(64, width)
        height = max(64, height)
    out["samples"] = common_upscale(x, width // 8, height // 8, upscale_method, crop)
    return out


def latent_upscale_by(samples: Latent, upscale_method: str, scale_by: float) -> Latent:
    """LatentUpscaleBy: resize latents by a factor, ``round(dim * scale_by)`` per latent side.

    Args:
        samples: The LATENT.
        upscale_method: One of `LATENT_UPSCALE_METHODS`.
        scale_by: The factor (ComfyUI allows 0.01 to 8).

    Returns:
        The resized LATENT.
    """
    check_choice(upscale_method, LATENT_UPSCALE_METHODS, "upscale_method")
    out, x = as_latent(samples)
    # NOTE: nodes.LatentUpscaleBy.upscale: Python round (ties to even) in latent units.
    width = round(x.shape[3] * scale_by)
    height = round(x.shape[2] * scale_by)
    out["samples"] = common_upscale(x, width, height, upscale_method, "disabled")
    return out


def latent_composite(
    samples_to: Latent, samples_from: Latent, x: int, y: int, feather: int = 0
) -> Latent:
    """LatentComposite: paste `samples_from` into `samples_to` at pixel offset ``(x, y)``.

    Offsets and feather are divided by 8 (floor). The pasted block is clipped at the right and
    bottom edges. With ``feather > 0`` the pasted block fades in linearly over ``feather // 8``
    latent pixels on each side that does not touch the border of `samples_to`.

    Args:
        samples_to: The LATENT pasted into (its other keys are kept).
        samples_from: The LATENT pasted.
        x: Horizontal offset in pixels.
        y: Vertical offset in pixels.
        feather: Fade width in pixels.

    Returns:
        The composited LATENT.
    """
    out, dst = as_latent(samples_to, "samples_to")
    _, src = as_latent(samples_from, "samples_from")
    if min(int(x), int(y), int(feather)) < 0:
        raise OpError(f"x={x}, y={y}, feather={feather}; expected values >= 0")
    x, y, feather = int(x) // 8, int(y) // 8, int(feather) // 8
    result = dst.copy()
    # NOTE: nodes.LatentComposite.composite: the source is cut to what fits right/below (x, y).
    src = src[:, :, : max(dst.shape[2] - y, 0), : max(dst.shape[3] - x, 0)]
    h, w = src.shape[2], src.shape[3]
    if h == 0 or w == 0:
        out["samples"] = result
        return out
    region = result[:, :, y:y + h, x:x + w]
    if src.shape[0] not in (1, region.shape[0]) or src.shape[1] != region.shape[1]:
        raise OpError(
            f"samples_from has shape {tuple(src.shape)} and samples_to {tuple(dst.shape)}; the "
            "batch sizes must match (or samples_from must hold one latent) and the channels "
            "must be equal"
        )
    if feather == 0:
        result[:, :, y:y + h, x:x + w] = src
    else:
        mask = np.ones((h, w), dtype=np.float32)
        for t in range(feather):
            # NOTE: each edge row/column t is multiplied by (t + 1) / feather, only on sides that
            # are inside samples_to (ComfyUI multiplies, so corners get the product).
            f = np.float32((1.0 / feather) * (t + 1))
            if y != 0:
                mask[t:1 + t, :] *= f
            if y + h < dst.shape[2]:
                mask[h - 1 - t:h - t, :] *= f
            if x != 0:
                mask[:, t:1 + t] *= f
            if x + w < dst.shape[3]:
                mask[:, w - 1 - t:w - t] *= f
        rev = np.float32(1) - mask
        result[:, :, y:y + h, x:x + w] = src * mask + region * rev
    out["samples"] = result
    return out


def _repeat_batch(values: np.ndarray, batch: int) -> np.ndarray:
    """Tiles `values` along axis 0 until it has at least `batch` items, then cuts to `batch`."""
    reps = [math.ceil(batch / values.shape[0])] + [1] * (values.ndim - 1)
    return np.tile(values, reps)[:batch]


def latent_from_batch(samples: Latent, batch_index: int, length: int = 1) -> Latent:
    """LatentFromBatch: take ``length`` latents starting at ``batch_index``.

    The index and length are clamped to the batch. ``batch_index`` (the noise positions) is
    sliced too, or created as ``[batch_index, ..., batch_index + length - 1]`` so the taken
    latents keep the noise they had in the full batch. A ``noise_mask`` of one item is kept;
    otherwise it is repeated to the batch size and sliced.

    Args:
        samples: The LATENT.
        batch_index: First item to take (0-based).
        length: Number of items.

    Returns:
        The sliced LATENT.
    """
    out, x = as_latent(samples)
    if int(batch_index) < 0 or int(length) < 1:
        raise OpError(
            f"batch_index={batch_index}, length={length}; expected batch_index >= 0, length >= 1"
        )
    # NOTE: nodes.LatentFromBatch.frombatch.
    start = min(x.shape[0] - 1, int(batch_index))
    length = min(x.shape[0] - start, int(length))
    out["samples"] = x[start:start + length].copy()
    if "noise_mask" in samples:
        masks = np.asarray(samples["noise_mask"], dtype=np.float32)
        if masks.shape[0] == 1:
            out["noise_mask"] = masks.copy()
        else:
            if masks.shape[0] < x.shape[0]:
                masks = _repeat_batch(masks, x.shape[0])
            out["noise_mask"] = masks[start:start + length].copy()
    if "batch_index" not in samples:
        out["batch_index"] = list(range(start, start + length))
    else:
        out["batch_index"] = list(samples["batch_index"])[start:start + length]
    return out


def repeat_latent_batch(samples: Latent, amount: int) -> Latent:
    """RepeatLatentBatch: the batch repeated ``amount`` times.

    An existing ``batch_index`` is extended with copies shifted by its span
    (``max - min + 1``) per repetition, so repeated items get new noise. A ``noise_mask`` with
    more than one item is repeated too; a single mask is kept as it is.

    Args:
        samples: The LATENT.
        amount: How many copies of the batch.

    Returns:
        The repeated LATENT.
    """
    amount = _positive_int(amount, "amount", 1)
    out, x = as_latent(samples)
    out["samples"] = np.tile(x, (amount, 1, 1, 1))
    if "noise_mask" in samples:
        masks = np.asarray(samples["noise_mask"], dtype=np.float32)
        if masks.shape[0] > 1:
            # NOTE: nodes.RepeatLatentBatch.repeat repeats the mask as given, even when it has
            # fewer items than the batch (its padded copy is computed but not used).
            out["noise_mask"] = np.tile(masks, [amount] + [1] * (masks.ndim - 1))
    if "batch_index" in samples:
        index = [int(i) for i in samples["batch_index"]]
        offset = max(index) - min(index) + 1
        out["batch_index"] = index + [i + k * offset for k in range(1, amount) for i in index]
    return out


def set_latent_noise_mask(samples: Latent, mask: Any) -> Latent:
    """SetLatentNoiseMask: attach `mask` as ``noise_mask``, reshaped to ``[B,1,H,W]``.

    Args:
        samples: The LATENT.
        mask: A MASK ``[B,H,W]`` or ``[H,W]`` (any size; the sampler resizes it).

    Returns:
        The LATENT with ``noise_mask`` set.
    """
    out, _ = as_latent(samples)
    m = as_mask(mask)
    # NOTE: nodes.SetLatentNoiseMask.set_mask: mask.reshape((-1, 1, H, W)).
    out["noise_mask"] = m.reshape((-1, 1, m.shape[-2], m.shape[-1])).copy()
    return out
