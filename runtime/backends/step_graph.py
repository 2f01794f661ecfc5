"""A UNet stage that can run a whole sampling step in one graph call.

An artifact's UNet can carry a sampler-step graph (``variants["step"]``, written by
``comfyc.compiler.lowering.step_graph``): the UNet plus the input scaling, the CFG mix and the
Euler, ancestral Euler, DPM-Solver++(2M) and its SDE form's updates, over the same weight file.
:class:`StepGraphUNet` is the ``unet`` stage over both graphs:

* :meth:`StepGraphUNet.step` runs one step of the common case (two CFG rows, whole-latent
  conditioning; :meth:`comfyc.runtime.cfg.CFGDenoiser.stepper` decides) in one call;
* called as a stage (every other use: ControlNet, areas, other samplers, cfg 1) it runs the
  plain graph, whose session is only made on that first call. A program that never needs it
  never holds the weights twice.

Both graphs compute the same bits; ``load(..., step_graph=False)`` ignores the step graph.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .base import BackendError, Stage

__all__ = ["STEP_GRAPH_VERSION", "STEP_GRAPH_VERSIONS", "STEP_INPUTS", "STEP_OUTPUTS",
           "StepGraphUNet"]

#: The step-graph interface the compiler writes (``compiler.lowering.step_graph``).
STEP_GRAPH_VERSION = 3

#: The step-graph versions this runtime runs, each with its ``step_coefs`` length and its
#: number of outputs: version 2 (artifacts of 2026-12-04's afternoon) is version 3 without
#: DPM++ 2M SDE's five coefficients and four heads, which then steps in numpy. A step graph
#: of another version is left unused (the plain graph gives the same results).
STEP_GRAPH_VERSIONS = {2: (12, 5), 3: (17, 9)}

#: The step graph's own inputs (besides the UNet's timestep, context and extras).
STEP_INPUTS = ("step_x", "step_coefs", "step_old", "step_noise")

#: The step graph's outputs, in order (``compiler.lowering.step_graph.OUTPUTS``).
STEP_OUTPUTS = ("denoised", "euler", "dpmpp_2m_first", "dpmpp_2m", "euler_ancestral",
                "sde_first", "sde_second", "sde_first_noise", "sde_second_noise")


class StepGraphUNet(Stage):
    """``unet(sample, timestep, context, **extras) -> eps|v``, plus :meth:`step`.

    Args:
        name: The stage name in the program.
        step: A session (:class:`~comfyc.runtime.backends.ort.OrtSession`) of the step graph.
        plain: Makes the plain UNet stage (an :class:`~comfyc.runtime.backends.ort.OrtUNet`)
            the first time the stage is called.
        info: Facts the program needs (the file's ``comfyc.*`` metadata under them).

    Attributes:
        prediction: What the step graph's x0 formula is for: ``eps`` (also flow models'
            ``const``) or ``v_prediction``.
        step_calls: Steps run through the step graph (since the stage was made).

    Raises:
        BackendError: The step graph lacks its inputs or outputs.
    """

    def __init__(self, name: str, step: Any, plain: Callable[[], Stage],
                 info: dict[str, Any] | None = None) -> None:
        facts = {key.removeprefix("comfyc."): value for key, value in step.metadata.items()
                 if key.startswith("comfyc.")}
        super().__init__(name, "unet", {**facts, **(info or {})})
        missing = [n for n in (*STEP_INPUTS, "timestep", "encoder_hidden_states")
                   if n not in step.inputs]
        shapes = {(count, coefs) for coefs, count in STEP_GRAPH_VERSIONS.values()}
        outputs = list(step.output_names)
        coef_shape = step.inputs["step_coefs"][1] if "step_coefs" in step.inputs else []
        if (missing or outputs != list(STEP_OUTPUTS[:len(outputs)])
                or (len(outputs), *coef_shape) not in shapes):
            raise BackendError(f"{step.path.name} is not a sampler-step graph this runtime "
                               f"knows (inputs {list(step.inputs)}, outputs "
                               f"{step.output_names}); compile the workflow again")
        #: The heads the graph has (:data:`STEP_OUTPUTS`, all or a version's first ones).
        self.heads = frozenset(outputs)
        #: How many ``step_coefs`` the graph takes (the first of ``COEFS``).
        self.coef_count = int(coef_shape[0])
        self.step_session = step
        self.backend = step.backend
        self.prediction = str(step.metadata.get("comfyc.step_prediction", "eps"))
        self.extra_inputs = tuple(n for n in step.inputs
                                  if n not in (*STEP_INPUTS, "timestep", "encoder_hidden_states"))
        self._make_plain = plain
        self._plain: Stage | None = None
        self._lock = threading.Lock()
        self.step_calls = 0

    @property
    def plain(self) -> Stage:
        """The plain UNet stage (its session is made on first use)."""
        if self._plain is None:
            with self._lock:  # one session, also when two runs need it at once
                if self._plain is None:
                    self._plain = self._make_plain()
        return self._plain

    @property
    def session(self) -> Any:
        """The plain graph's session (made on first use)."""
        return self.plain.session  # type: ignore[attr-defined]

    def serves(self, prediction: str) -> bool:
        """Whether the step graph's x0 formula is the one of a model sampling's
        ``prediction`` (``eps``, ``v_prediction`` or ``const``)."""
        return (prediction == "v_prediction") == (self.prediction == "v_prediction")

    def forward(self, sample: np.ndarray, timestep: np.ndarray, context: np.ndarray,
                **extras: np.ndarray) -> np.ndarray:
        return self.plain.forward(sample, timestep, context, **extras)

    def step(self, feeds: dict[str, np.ndarray], checked: bool = False) -> list[np.ndarray]:
        """One sampling step: the outputs of :data:`STEP_OUTPUTS`.

        Args:
            feeds: ``step_x`` (the latent ``[b, C, h, w]``, float32, model space),
                ``step_coefs`` (``compiler.lowering.step_graph.COEFS``, float32),
                ``step_old`` (DPM-Solver++(2M)'s previous x0), ``step_noise`` (the ancestral
                step's noise; both ``step_x`` when unused),
                ``timestep`` ``[2b]``, ``encoder_hidden_states`` ``[2b, T, D]`` and the
                stage's extra inputs (SDXL's ``y``), the negative rows first.
            checked: The caller fed arrays of these shapes and dtypes before (a sampling
                run's later steps): skip the per-input checks.

        Raises:
            BackendError: onnxruntime failed, or an input is missing or has the wrong shape.
        """
        start = time.perf_counter()
        try:
            if checked:
                outputs = self.step_session.run_prepared(feeds)
            else:
                missing = [n for n in self.extra_inputs if n not in feeds]
                if missing:
                    raise BackendError(f"stage {self.name!r} needs inputs {missing}; the "
                                       "program gave none")
                outputs = self.step_session.run(feeds)
            self.step_calls += 1
            return outputs
        finally:
            if self.timer is not None:
                self.timer.add(self.name, time.perf_counter() - start)
