"""Shared checks for the runtime ops: the error type and the coercion of IMAGE, MASK and LATENT.

Every op takes numpy values in ComfyUI's layouts (IMAGE ``[B,H,W,C]``, MASK ``[B,H,W]`` or
``[H,W]``, LATENT ``{"samples": [B,C,H,W], ...}``) and refuses anything else with an `OpError`
that says what it found, what it expected and how to fix it.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import Error

__all__ = ["Latent", "OpError", "as_image", "as_latent", "as_mask", "check_choice"]

#: A LATENT value: ``{"samples": float32 [B,4,H/8,W/8]}`` plus optional ``noise_mask`` and
#: ``batch_index``.
Latent = dict[str, Any]


class OpError(Error, ValueError):
    """A runtime op was given a value it cannot use; the message says what, and the fix."""


def as_image(image: Any, what: str = "image") -> np.ndarray:
    """Returns `image` as a float32 ``[B,H,W,C]`` array, refusing other ranks.

    Args:
        image: The IMAGE value.
        what: The input name used in error messages.
    """
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim != 4:
        raise OpError(
            f"{what} has shape {tuple(arr.shape)}; expected an IMAGE of shape [B,H,W,C] "
            "(batch, height, width, channels). Add a batch axis with image[None] if you have "
            "a single [H,W,C] picture"
        )
    return arr


def as_mask(mask: Any, what: str = "mask") -> np.ndarray:
    """Returns `mask` as a float32 ``[B,H,W]`` array; a ``[H,W]`` mask gains a batch axis.

    Args:
        mask: The MASK value (``[B,H,W]`` or ``[H,W]``).
        what: The input name used in error messages.
    """
    arr = np.asarray(mask, dtype=np.float32)
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim != 3:
        raise OpError(
            f"{what} has shape {tuple(arr.shape)}; expected a MASK of shape [B,H,W] or [H,W]"
        )
    return arr


def as_latent(samples: Any, what: str = "samples") -> tuple[Latent, np.ndarray]:
    """Checks a LATENT dict and returns (a shallow copy of it, its float32 ``samples`` array).

    Args:
        samples: The LATENT value.
        what: The input name used in error messages.
    """
    if not isinstance(samples, Mapping) or "samples" not in samples:
        found = type(samples).__name__
        if isinstance(samples, Mapping):
            found = f"a dict with keys {sorted(map(str, samples))}"
        raise OpError(
            f"{what} is {found}; expected a LATENT dict {{'samples': array [B,C,H,W], ...}}. "
            "Pass the LATENT produced by EmptyLatentImage, VAEEncode or a sampler"
        )
    arr = np.asarray(samples["samples"], dtype=np.float32)
    if arr.ndim != 4:
        raise OpError(
            f"{what}['samples'] has shape {tuple(arr.shape)}; expected [B,C,H,W] latents"
        )
    return dict(samples), arr


def check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    """Raises `OpError` unless `value` is one of `choices` (a ComfyUI combo input)."""
    if value not in choices:
        raise OpError(
            f"{what} {value!r} is not supported; expected one of "
            f"{', '.join(repr(c) for c in choices)}"
        )
