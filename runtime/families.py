"""What each model family feeds its diffusion model besides the latent and the context.

ComfyUI computes these per conditioning entry when sampling starts (``encode_model_conds`` →
``BaseModel.extra_conds``): SDXL's ``y`` is the ADM vector — the pooled prompt embedding and
sinusoidal embeddings of the image sizes (``comfy/model_base.py`` ``SDXL.encode_adm``,
``SDXLRefiner.encode_adm``). :func:`model_conds` returns the function that builds them for a
family (None when the family takes none), used by :func:`comfyc.runtime.cfg.make_denoiser`.

The sizes default as ComfyUI's do: ``width`` / ``height`` are the latent's size × 8 unless the
entry sets them (``CLIPTextEncodeSDXL``), crops 0, targets equal to the size, and the refiner's
aesthetic score is 6 for the positive prompt and 2.5 for the negative one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .errors import Error

__all__ = ["ModelCondsFn", "model_conds", "timestep_embedding", "sdxl_adm", "FamilyError"]

#: ``fn(entry options, side ("positive"/"negative"), latent shape) -> {input name: [1, …]}``.
ModelCondsFn = Callable[[Mapping[str, Any], str, Sequence[int]], dict[str, np.ndarray]]

_F32 = np.float32


class FamilyError(Error, ValueError):
    """A conditioning entry lacks what the model family needs (e.g. a pooled output)."""


def timestep_embedding(values: np.ndarray, dim: int = 256, max_period: int = 10000
                       ) -> np.ndarray:
    """ComfyUI's sinusoidal ``timestep_embedding`` in float32: ``[cos(v·f), sin(v·f)]``.

    ``f_i = exp(-ln(max_period) · i / (dim/2))`` computed as torch does (float32 ``arange``,
    the log as a float32 scalar, then ``exp``); cosines first.

    Args:
        values: ``[N]`` values (sizes, scores).
        dim: The embedding width (even).
        max_period: The slowest period.

    Returns:
        float32 ``[N, dim]``.
    """
    half = dim // 2
    scale = _F32(-math.log(max_period))
    freqs = np.exp(scale * np.arange(half, dtype=_F32) / _F32(half)).astype(_F32)
    args = np.asarray(values, dtype=_F32)[:, None] * freqs[None]
    return np.concatenate([np.cos(args), np.sin(args)], axis=-1).astype(_F32)


def sdxl_adm(pooled: np.ndarray, sizes: Sequence[float]) -> np.ndarray:
    """``y = [pooled | emb(size_0) | emb(size_1) | …]`` (256-wide embeddings).

    Args:
        pooled: ``[B, 1280]`` pooled prompt embedding.
        sizes: Base: height, width, crop_h, crop_w, target_height, target_width; refiner:
            height, width, crop_h, crop_w, aesthetic_score.

    Returns:
        float32 ``[B, 1280 + 256·len(sizes)]``.
    """
    flat = timestep_embedding(np.asarray(sizes, dtype=_F32)).reshape(1, -1)
    pooled = np.asarray(pooled, dtype=_F32)
    return np.concatenate([pooled, np.repeat(flat, pooled.shape[0], axis=0)], axis=1)


def _pooled(entry: Mapping[str, Any], side: str) -> np.ndarray:
    pooled = entry.get("pooled_output")
    if pooled is None:
        raise FamilyError(
            f"a {side} conditioning entry has no pooled_output, which SDXL models need; encode "
            f"the prompt with this checkpoint's CLIP (CLIPTextEncode / CLIPTextEncodeSDXL)")
    pooled = np.asarray(pooled, dtype=_F32)
    return pooled.reshape(1, -1) if pooled.ndim == 1 else pooled


def _sizes(entry: Mapping[str, Any], latent_shape: Sequence[int]) -> tuple[float, float]:
    width = entry.get("width")
    height = entry.get("height")
    return (float(height if height is not None else int(latent_shape[2]) * 8),
            float(width if width is not None else int(latent_shape[3]) * 8))


def _sdxl_conds(entry: Mapping[str, Any], side: str, latent_shape: Sequence[int]
                ) -> dict[str, np.ndarray]:
    height, width = _sizes(entry, latent_shape)
    sizes = [height, width, float(entry.get("crop_h", 0)), float(entry.get("crop_w", 0)),
             float(entry.get("target_height", height)), float(entry.get("target_width", width))]
    return {"y": sdxl_adm(_pooled(entry, side), sizes)}


def _refiner_conds(entry: Mapping[str, Any], side: str, latent_shape: Sequence[int]
                   ) -> dict[str, np.ndarray]:
    height, width = _sizes(entry, latent_shape)
    default = 2.5 if entry.get("prompt_type", side) == "negative" else 6.0
    score = float(entry.get("aesthetic_score", default))
    sizes = [height, width, float(entry.get("crop_h", 0)), float(entry.get("crop_w", 0)), score]
    return {"y": sdxl_adm(_pooled(entry, side), sizes)}


def _sd3_conds(entry: Mapping[str, Any], side: str, latent_shape: Sequence[int]
               ) -> dict[str, np.ndarray]:
    """SD3's ``y`` is the pooled output itself (``SD3.encode_adm``)."""
    pooled = entry.get("pooled_output")
    if pooled is None:
        raise FamilyError(
            f"a {side} conditioning entry has no pooled_output, which SD3 models need; encode "
            f"the prompt with an SD3 CLIP (TripleCLIPLoader / CLIPTextEncode)")
    pooled = np.asarray(pooled, dtype=_F32)
    return {"y": pooled.reshape(1, -1) if pooled.ndim == 1 else pooled}


#: Flux's pooled width (``vec_in_dim``): its ``y`` is zeros of it when a conditioning has none.
FLUX_POOLED_WIDTH = 768
#: Flux-dev's guidance when a conditioning does not set one (``Flux.extra_conds``).
FLUX_DEFAULT_GUIDANCE = 3.5


def _flux_conds(entry: Mapping[str, Any], side: str, latent_shape: Sequence[int]
                ) -> dict[str, np.ndarray]:
    """Flux: ``y`` = the pooled CLIP-L output (zeros without one, as the model fills them) and
    ``guidance`` = the entry's guidance (FluxGuidance / CLIPTextEncodeFlux), 3.5 by default;
    ``FluxDisableGuidance``'s None leaves it out (a dev model then refuses to run)."""
    pooled = entry.get("pooled_output")
    if pooled is None:
        y = np.zeros((1, FLUX_POOLED_WIDTH), _F32)
    else:
        y = np.asarray(pooled, dtype=_F32)
        y = y.reshape(1, -1) if y.ndim == 1 else y
    out = {"y": y}
    guidance = entry.get("guidance", FLUX_DEFAULT_GUIDANCE)
    if guidance is not None:
        out["guidance"] = np.array([guidance], dtype=_F32)
    return out


_FAMILIES: dict[str, ModelCondsFn | None] = {
    "sd1": None,
    "sd2": None,
    "sdxl": _sdxl_conds,
    "sdxl_refiner": _refiner_conds,
    "sd3": _sd3_conds,
    "flux": _flux_conds,
}


def model_conds(family: str) -> ModelCondsFn | None:
    """The function that builds a family's extra model inputs (None: it takes none).

    Raises:
        FamilyError: An unknown family.
    """
    if family not in _FAMILIES:
        raise FamilyError(f"unknown model family {family!r}; this runtime knows "
                          f"{', '.join(_FAMILIES)}")
    return _FAMILIES[family]
