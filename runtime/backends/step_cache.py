"""Step caching at run time: a UNet stage that reuses deep features across adjacent steps.

An artifact compiled with step caching (``CompileOptions.step_cache``; see
``comfyc.compiler.lowering.step_cache``) stores two graphs for its UNet: the full UNet,
which also returns its deep features, and a shallow UNet that takes them as an input.
:class:`StepCacheUNet` is one ``unet`` stage over both: the first call of a sampling run,
and every ``interval``-th step after it, runs the full graph and keeps the deep features;
the steps between run the shallow graph on them. This approximates the exact UNet (the
manifest says so); ``comfyc bench --step-cache`` measures how much.

Steps are told apart by the timestep, which falls during a run: a call at the same timestep
as the previous one is another batch of the same step (CFG groups, areas), one at a lower
timestep is the next step, one at a higher timestep starts a new run (a new image, or the
second pass of a hires-fix workflow) and refreshes. Each batch of a step has its own cache
(by call order and input shapes); a shape never seen before runs the full graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import BackendError, Stage

__all__ = ["StepCacheUNet"]


class StepCacheUNet(Stage):
    """``unet(sample, timestep, context, **extras) -> eps|v`` with step caching.

    Args:
        name: The stage name in the program.
        full: A session (onnxruntime or OpenVINO) of the full graph: the UNet's inputs, and
            outputs ``out_sample`` and ``deep_features``.
        shallow: A session of the shallow graph: the UNet's inputs plus ``deep_features``,
            output ``out_sample``.
        interval: Run the full graph every this many steps (1: always; exact).
        info: Facts the program needs (merged with ``step_cache``).

    Attributes:
        full_calls: Calls that ran the full graph (since the stage was made).
        shallow_calls: Calls that ran the shallow graph.

    Raises:
        BackendError: The graphs lack the inputs or outputs above, or interval < 1.
    """

    def __init__(self, name: str, full: Any, shallow: Any, *, interval: int,
                 info: dict[str, Any] | None = None) -> None:
        super().__init__(name, "unet", info)
        if interval < 1:
            raise BackendError(f"step-cache interval must be >= 1, got {interval}")
        if "deep_features" not in full.output_names or "deep_features" not in shallow.inputs:
            raise BackendError(
                f"stage {name}: step caching needs a full graph with output deep_features and "
                f"a shallow graph with input deep_features; got outputs {full.output_names} "
                f"and inputs {list(shallow.inputs)} (compile with --step-cache again)")
        self.full, self.shallow, self.interval = full, shallow, int(interval)
        self.backend = getattr(full, "backend", "ort-cpu")
        self.session = full
        self._out = full.output_names.index("out_sample")
        self._deep = full.output_names.index("deep_features")
        self._names = [n for n in full.inputs]
        self._cache: dict[tuple[Any, ...], np.ndarray] = {}
        self._last: float | None = None
        self._step = 0
        self._call = 0
        self.full_calls = 0
        self.shallow_calls = 0

    def reset(self) -> None:
        """Forget the cached features (the next call runs the full graph)."""
        self._cache.clear()
        self._last = None
        self._step = self._call = 0

    def forward(self, sample: np.ndarray, timestep: np.ndarray, context: np.ndarray,
                **extras: np.ndarray) -> np.ndarray:
        batch = sample.shape[0]
        steps = np.asarray(timestep, dtype=np.float32).reshape(-1)
        if steps.size == 1:
            steps = np.full((batch,), steps[0], dtype=np.float32)
        now = float(steps.max())
        if self._last is None or now > self._last:
            self.reset()
        elif now < self._last:
            self._step += 1
            self._call = 0
        else:
            self._call += 1
        self._last = now
        feed: dict[str, np.ndarray] = {"sample": sample, "timestep": steps,
                                       "encoder_hidden_states": context}
        for key in self._names:
            if key not in feed:
                if key not in extras:
                    raise BackendError(f"stage {self.name!r} needs input {key!r}; the program "
                                       f"gave none")
                feed[key] = np.ascontiguousarray(extras[key], dtype=np.float32)
        key = (self._call, sample.shape, context.shape)
        cached = self._cache.get(key)
        if cached is None or self._step % self.interval == 0:
            outputs = self.full.run(feed)
            self._cache[key] = outputs[self._deep]
            self.full_calls += 1
            return outputs[self._out]
        self.shallow_calls += 1
        return self.shallow.run({**feed, "deep_features": cached})[0]
