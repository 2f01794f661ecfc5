"""ControlNets and T2I-Adapters at sampling time: ComfyUI's ``comfy/controlnet.py`` semantics.

A CONTROL_NET value (:class:`ControlNetRef`) is a stage and its facts. ``ControlNetApply`` and
``ControlNetApplyAdvanced`` attach a :class:`Control` to conditioning entries (``"control"``);
applying one to entries that already carry one makes a chain (``previous``). While sampling,
every UNet call whose rows carry a control gets extra inputs (:func:`control_inputs`), the sum
over the chain's links that are active at the step's sigma, each times its strength:

* a ControlNet runs on the UNet's own input ``x / sqrt(σ² + 1)``, timestep, context (and SDXL's
  ``y``) with the hint image resized to the latent size × 8 (``nearest-exact``, centre crop):
  ``control_down_0 … control_down_{n-1}`` (added to the UNet's skip connections) and
  ``control_mid`` (added to the middle block's output);
* a T2I-Adapter runs once per sampling run on its hint (resized to the latent size × 8 rounded
  up to its pixel-unshuffle factor): ``control_intra_0 … control_intra_3`` (added inside the
  down blocks; an SDXL adapter's last one to the middle block).

A link is active when ``σ(end_percent) ≤ σ ≤ σ(start_percent)``. Hints of batch 1 broadcast over
the UNet batch; larger ones follow ComfyUI's ``broadcast_image_to`` per conditioning chunk. The
UNet stages take these inputs by name (diffusers' ``down_block_additional_residuals``,
``mid_block_additional_residual`` and ``down_intrablock_additional_residuals``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ProgramError

__all__ = ["ControlNetRef", "Control", "control_inputs", "broadcast_image_to",
           "CONTROL_INPUT_PREFIX"]

#: UNet stage inputs beginning with this are control residuals (zeros when absent).
CONTROL_INPUT_PREFIX = "control_"
_F32 = np.float32


@dataclass(frozen=True, eq=False)
class ControlNetRef:
    """A CONTROL_NET: a ControlNet or T2I-Adapter stage and what calling it needs.

    Attributes:
        stage: ControlNet ``(x, hint, timestep, context[, y]) -> (down…, mid)`` or T2I-Adapter
            ``(hint) -> (features…)``.
        kind: ``controlnet`` or ``t2i_adapter``.
        family: The UNet family it goes with (``sd1``, ``sdxl`` …).
        takes_y: A ControlNet with SDXL's ADM input.
        hint_multiple: T2I-Adapters: the hint size is rounded up to this (pixel unshuffle).
        residual_channels: ControlNet: channels of each output (downs, then mid).
        residual_halvings: ControlNet: how often each output's size was halved (ceil).
        name: The file, for messages.
    """

    stage: Any
    kind: str
    family: str = "sd1"
    takes_y: bool = False
    hint_multiple: int = 8
    residual_channels: tuple[int, ...] = ()
    residual_halvings: tuple[int, ...] = ()
    name: str = ""

    def output_names(self, count: int) -> list[str]:
        """The UNet input names this control's ``count`` outputs feed."""
        if self.kind == "t2i_adapter":
            return [f"{CONTROL_INPUT_PREFIX}intra_{i}" for i in range(count)]
        return [f"{CONTROL_INPUT_PREFIX}down_{i}" for i in range(count - 1)] + \
            [f"{CONTROL_INPUT_PREFIX}mid"]


@dataclass(eq=False)
class Control:
    """One link of a control chain on conditioning entries (ComfyUI's ``ControlBase``).

    Attributes:
        net: The CONTROL_NET.
        hint: The hint IMAGE ``[B, H, W, C]`` in [0, 1].
        strength: Multiplies every output.
        start_percent: Active from this fraction of the schedule …
        end_percent: … to this one.
        previous: The link applied before this one (summed with it).
        apply_to_uncond: ``ControlNetApply`` (deprecated): the negative prompt's entries
            without an area get it too.
    """

    net: ControlNetRef
    hint: np.ndarray
    strength: float
    start_percent: float = 0.0
    end_percent: float = 1.0
    previous: Control | None = None
    apply_to_uncond: bool = False
    _hints: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, repr=False)
    _features: dict[tuple[int, int], list[np.ndarray]] = field(default_factory=dict,
                                                               repr=False)

    def links(self) -> list[Control]:
        """This link and every previous one, newest first."""
        out: list[Control] = []
        link: Control | None = self
        while link is not None:
            out.append(link)
            link = link.previous
        return out

    def active(self, sigma: float, model_sampling: Any) -> bool:
        """``σ(end) ≤ σ ≤ σ(start)`` (``ControlBase.get_control``'s timestep range)."""
        start = 999999999.9 if self.start_percent <= 0.0 else \
            float(model_sampling.percent_to_sigma(self.start_percent))
        end = 0.0 if self.end_percent >= 1.0 else \
            float(model_sampling.percent_to_sigma(self.end_percent))
        return end <= float(np.float32(sigma)) <= start

    def _hint_for(self, width: int, height: int) -> np.ndarray:
        """The hint resized for a latent of ``width × height`` (cached per size)."""
        from .ops.resample import common_upscale

        key = (width, height)
        if key not in self._hints:
            image = np.asarray(self.hint, dtype=_F32)
            if image.ndim != 4:
                raise ProgramError(f"the ControlNet hint must be an IMAGE [B, H, W, C]; got "
                                   f"shape {image.shape}")
            nchw = np.ascontiguousarray(image.transpose(0, 3, 1, 2))
            if self.net.kind == "t2i_adapter":
                step = max(1, int(self.net.hint_multiple))
                size = (-(-width * 8 // step) * step, -(-height * 8 // step) * step)
            else:
                size = (width * 8, height * 8)
            self._hints[key] = common_upscale(nchw, size[0], size[1], "nearest-exact",
                                              "center")
        return self._hints[key]

    def outputs(self, x_in: np.ndarray, timestep: np.ndarray, context: np.ndarray,
                y: np.ndarray | None, chunks: int) -> dict[str, np.ndarray]:
        """This link's outputs for UNet rows (before the strength), by UNet input name."""
        rows, _, height, width = x_in.shape
        if self.net.stage is None:
            raise ProgramError(f"the ControlNet {self.net.name or ''} has no stage in this "
                               f"program; compile the workflow again")
        if self.net.kind == "t2i_adapter":
            key = (width, height)
            if key not in self._features:  # Once per sampling run (per latent size).
                self._features[key] = [np.asarray(f, dtype=_F32) for f in
                                       _as_tuple(self.net.stage(self._hint_for(width, height)))]
            values = [broadcast_image_to(f, rows, chunks) for f in self._features[key]]
        else:
            hint = broadcast_image_to(self._hint_for(width, height), rows, chunks)
            if hint.shape[0] != rows:  # A batch-1 hint: the same for every row.
                hint = np.repeat(hint, rows, axis=0)
            args = [x_in, hint, timestep, context]
            if self.net.takes_y:
                if y is None:
                    raise ProgramError("this SDXL ControlNet needs the ADM vector y; it was "
                                       "applied to a conditioning of another model family")
                args.append(y)
            values = [np.asarray(v, dtype=_F32) for v in _as_tuple(self.net.stage(*args))]
        return dict(zip(self.net.output_names(len(values)), values, strict=True))


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def broadcast_image_to(tensor: np.ndarray, target: int, chunks: int) -> np.ndarray:
    """ComfyUI's ``broadcast_image_to``: a batch of 1 is returned as is (it broadcasts);
    otherwise the first ``target / chunks`` images (repeated cyclically if fewer), repeated for
    each conditioning chunk."""
    current = tensor.shape[0]
    if current == 1:
        return tensor
    per_batch = target // max(1, chunks)
    tensor = tensor[:per_batch]
    if per_batch > tensor.shape[0]:
        reps = [tensor] * (per_batch // tensor.shape[0]) + [tensor[: per_batch % tensor.shape[0]]]
        tensor = np.concatenate(reps, axis=0)
    if tensor.shape[0] == target:
        return tensor
    return np.concatenate([tensor] * max(1, chunks), axis=0)


def control_inputs(control: Control, x_in: np.ndarray, timestep: np.ndarray,
                   context: np.ndarray, extras: Mapping[str, np.ndarray], sigma: float,
                   chunks: int, model_sampling: Any) -> dict[str, np.ndarray]:
    """The UNet's control inputs for one call: the active links' outputs times their
    strengths, summed by input name (``ControlBase.control_merge``).

    Args:
        control: The newest link of the rows' chain.
        x_in: The UNet's input for these rows (``calculate_input(σ, x)``).
        timestep: The UNet's timesteps ``[rows]``.
        context: The rows' context.
        extras: The rows' other UNet inputs (SDXL's ``y``).
        sigma: The step's sigma.
        chunks: How many conditioning chunks the rows are (hint batching).
        model_sampling: The MODEL's sampling (timestep ranges).

    Returns:
        Arrays by UNet input name; empty when no link is active.
    """
    out: dict[str, np.ndarray] = {}
    y = extras.get("y")
    rows = x_in.shape[0]
    for link in control.links():
        if not link.active(sigma, model_sampling):
            continue
        for name, value in link.outputs(x_in, timestep, context, y, chunks).items():
            scaled = value * _F32(link.strength)
            if scaled.shape[0] != rows:
                scaled = np.broadcast_to(scaled, (rows, *scaled.shape[1:]))
            out[name] = scaled if name not in out else out[name] + scaled
    return {name: np.ascontiguousarray(value, dtype=_F32) for name, value in out.items()}
