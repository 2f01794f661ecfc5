"""What every backend provides: stages, callables over numpy arrays that time themselves.

Stage signatures (all float32 unless noted; the same for every backend):

* ``unet(sample[B,C,h,w], timestep[B], context[B,T,D]) -> [B,4,h,w]`` (eps or v, by model)
* ``text_encoder(input_ids int64[B,77][, embeds[B,77,D]]) -> (hidden[B,77,D], pooled[B,D])``
  at the model's CLIP layer (fixed when the stage is made); ``embeds`` holds textual-inversion
  vectors, used where ``input_ids`` is -1 (``embedding:NAME``)
* ``vae_decoder(latent[B,4,h,w]) -> image[B,3,H,W]`` in [-1, 1] (raw, unscaled latents)
* ``vae_encoder(image[B,3,H,W] in [-1, 1]) -> latent mean[B,4,h,w]`` (raw)
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from ..errors import Error

__all__ = ["Stage", "StageTimer", "BackendError"]


class BackendError(Error, RuntimeError):
    """A backend cannot run: missing package, provider not active, bad stage file."""


class StageTimer:
    """Accumulates wall time per stage name across calls."""

    __slots__ = ("calls",)

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = {}

    def add(self, name: str, seconds: float) -> None:
        """Record one call."""
        self.calls.setdefault(name, []).append(seconds)

    def total(self) -> float:
        """Seconds spent inside all stage calls."""
        return sum(sum(v) for v in self.calls.values())

    def summary(self) -> dict[str, dict[str, float]]:
        """Per stage: calls, total seconds, median seconds per call."""
        out = {}
        for name, times in self.calls.items():
            out[name] = {"calls": len(times), "total_s": float(sum(times)),
                         "median_s": statistics.median(times) if times else 0.0}
        return out

    def reset(self) -> None:
        """Forget all calls."""
        self.calls.clear()


class Stage:
    """A model stage on some backend.

    Subclasses implement :meth:`forward`; calling the stage times it.

    Attributes:
        name: The stage's name in the program (``unet``, ``unet_1``, ``vae_decoder`` …).
        kind: ``unet``, ``text_encoder``, ``vae_decoder`` or ``vae_encoder``.
        backend: The backend's name (``torch``, ``ort-cpu`` …).
        info: Facts the program needs (prediction type, context dim …).
    """

    backend = "none"

    def __init__(self, name: str, kind: str, info: dict[str, Any] | None = None) -> None:
        self.name = name
        self.kind = kind
        self.info = dict(info or {})
        self.timer: StageTimer | None = None

    def forward(self, *args: np.ndarray) -> Any:
        """Run the stage on numpy inputs."""
        raise NotImplementedError

    def __call__(self, *args: np.ndarray, **extras: np.ndarray) -> Any:
        start = time.perf_counter()
        try:
            return self.forward(*args, **extras)
        finally:
            if self.timer is not None:
                self.timer.add(self.name, time.perf_counter() - start)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.kind}, {self.backend})"
