"""GUIDER values: a MODEL with its conditionings and how to combine their predictions.

ComfyUI's custom-sampling guiders (``comfy_extras/nodes_custom_sampler.py``): ``BasicGuider``
(one conditioning, no CFG), ``CFGGuider`` (positive, negative, cfg) and ``DualCFGGuider``
(two positive conditionings and a negative, two scales, ``regular`` or ``nested``). A
:class:`Guider` is plain data; :meth:`Guider.denoiser` builds the ``denoiser(x, sigma) -> x0``
the samplers drive, once the latent's shape is known (the family's extra model inputs depend
on it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .cfg import CFGDenoiser, _resolve
from .errors import ProgramError

__all__ = ["Guider", "DualCFGDenoiser"]


@dataclass(frozen=True)
class Guider:
    """A GUIDER.

    Attributes:
        model: The MODEL (:class:`~comfyc.runtime.values.ModelRef`).
        kind: ``basic``, ``cfg`` or ``dual_cfg``.
        positive: The (first) positive conditioning.
        negative: The negative conditioning (None for ``basic``).
        cfg: The guidance scale (``cfg_conds`` for ``dual_cfg``).
        middle: ``dual_cfg``'s second conditioning (``cond2``).
        cfg2: ``dual_cfg``'s second scale (``cfg_cond2_negative``).
        nested: ``dual_cfg``'s ``style == "nested"``.
    """

    model: Any
    kind: str
    positive: list[dict[str, Any]]
    negative: list[dict[str, Any]] | None = None
    cfg: float = 1.0
    middle: list[dict[str, Any]] | None = None
    cfg2: float = 1.0
    nested: bool = False

    def denoiser(self, latent_shape: Sequence[int]) -> Any:
        """The denoiser for a latent of ``latent_shape``.

        Raises:
            ProgramError: The MODEL has no UNet stage.
        """
        from .nodes.sampling import denoiser_for

        if self.kind == "basic":
            return denoiser_for(self.model, self.positive, None, 1.0, latent_shape)
        if self.kind == "cfg":
            return denoiser_for(self.model, self.positive, self.negative, self.cfg,
                                latent_shape)
        base = denoiser_for(self.model, self.positive, self.negative, self.cfg, latent_shape)
        return DualCFGDenoiser(base, self.middle or [], self.cfg, self.cfg2, self.nested,
                               latent_shape, self.model)


class DualCFGDenoiser:
    """``DualCFGGuider``'s prediction (``Guider_DualCFG.predict_noise``).

    With predictions (negative, middle, positive): ``regular`` is
    ``negative + (middle − negative) · cfg2 + (positive − middle) · cfg1``, skipping the
    negative at ``cfg2 == 1`` and the middle too when ``cfg1 == 1`` as well (a skipped side
    predicts zero, as in ComfyUI); ``nested`` is
    ``negative + cfg2 · (middle + (positive − middle) · cfg1 − negative)``. The middle
    conditioning counts as a negative prompt for the model's extra inputs (the refiner's
    aesthetic score), as ComfyUI marks it.
    """

    def __init__(self, base: CFGDenoiser, middle: list[dict[str, Any]], cfg1: float,
                 cfg2: float, nested: bool, latent_shape: Sequence[int], model: Any) -> None:
        from .families import model_conds

        self.base = base
        h, w = int(latent_shape[2]), int(latent_shape[3])
        marked = [{**dict(entry), "prompt_type": "negative"} for entry in middle]
        self.middle = _resolve(marked, "middle", h, w, base.model_sampling,
                               model_conds(model.family), latent_shape)
        if not self.middle:
            raise ProgramError("DualCFGGuider's cond2 is empty; connect a conditioning")
        self.cfg1 = float(cfg1)
        self.cfg2 = float(cfg2)
        self.nested = nested

    def __call__(self, x: np.ndarray, sigma: float) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        negative: Any = self.base.negative
        middle: Any = self.middle
        if not self.nested and math.isclose(self.cfg2, 1.0):
            negative = None
            if math.isclose(self.cfg1, 1.0):
                middle = None
        out = self.base._calc_cond_batch([negative, middle, self.base.positive], x,
                                         float(sigma))
        f32 = np.float32
        if self.nested:
            text = out[1] + (out[2] - out[1]) * f32(self.cfg1)
            return out[0] + f32(self.cfg2) * (text - out[0])
        return out[0] + (out[1] - out[0]) * f32(self.cfg2) + (out[2] - out[1]) * f32(self.cfg1)
