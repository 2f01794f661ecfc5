"""Read ``recording.npz`` (written by ``record.py``) without ComfyUI or torch."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from .analytic import CFGPair, make_models

__all__ = ["RECORDING", "Recording", "box_mask", "image_latent", "load_recording", "pair_for"]

RECORDING = Path(__file__).resolve().parent / "recording.npz"


class Recording:
    """The recorded cases, node outputs and model samplings (see ``record.py``)."""

    def __init__(self, path: Path) -> None:
        with np.load(path, allow_pickle=False) as z:
            self.meta: dict[str, Any] = json.loads(str(z["meta"]))
            self._data = z["data"]
        self._index: dict[str, list[Any]] = self.meta["index"]

    def get(self, key: str) -> np.ndarray:
        """One recorded output (float32)."""
        offset, shape = self._index[key]
        size = int(np.prod(shape)) if shape else 1
        return self._data[offset : offset + size].reshape(shape)

    def cases(self, group: str | None = None) -> list[dict[str, Any]]:
        """Recorded sampler runs, optionally of one group (grid, flux, edge, mask, ...)."""
        return [c for c in self.meta["cases"] if group is None or c["group"] == group]


@functools.lru_cache(maxsize=1)
def load_recording() -> Recording:
    """The recording beside this module (cached)."""
    return Recording(RECORDING)


def image_latent(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """The recorder's non-empty LATENT for img2img cases."""
    return (np.random.default_rng(seed).normal(0.0, 1.0, shape) * 2.0).astype(np.float32)


def box_mask(shape: tuple[int, ...]) -> np.ndarray:
    """The recorder's pixel-space inpainting mask."""
    h, w = shape[2] * 8, shape[3] * 8
    mask = np.zeros((h, w), np.float32)
    mask[h // 4 : 3 * h // 4, w // 8 : 7 * w // 8] = 1.0
    mask[:, : w // 8] = 0.5
    return mask


def pair_for(case: dict[str, Any], shape: tuple[int, ...], flow: bool, cfg: float) -> CFGPair:
    """The CFG denoiser the recorder used for ``case``."""
    cond, uncond = make_models(shape[1], shape[2], shape[3], flow=flow)
    return CFGPair(cond, uncond, case.get("cfg", cfg))
