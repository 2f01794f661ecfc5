"""ControlNet nodes: the loaders (lowered to a ``LoadControlNet`` op over the net's stage) and
the apply nodes, which attach a :class:`~comfyc.runtime.control.Control` to conditioning
entries as ComfyUI's ``nodes.py`` does; the sampler applies them (:mod:`comfyc.runtime.control`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .registry import NodeDef, OpFn
from .schema import files, float_input, link, optional_link, outputs, schema

if TYPE_CHECKING:
    import numpy as np

__all__ = ["NODES", "PROGRAM_OPS"]

_COND = "CONDITIONING"


def _load_controlnet(ctx: Any, *, stage: Any, kind: str = "controlnet", family: str = "sd1",
                     takes_y: bool = False, hint_multiple: int = 8,
                     residual_channels: Any = (), residual_halvings: Any = (), name: str = ""
                     ) -> tuple[Any, ...]:
    """``LoadControlNet``: a CONTROL_NET over its stage."""
    from ..control import ControlNetRef

    return (ControlNetRef(stage, str(kind), str(family), bool(takes_y), int(hint_multiple),
                          tuple(int(c) for c in residual_channels),
                          tuple(int(h) for h in residual_halvings), name),)


def _controlled(entries: list[Any], control_net: Any, image: np.ndarray, strength: float,
                start: float, end: float, to_uncond: bool, shared: dict[int, Any] | None
                ) -> list[dict[str, Any]]:
    from ..control import Control
    from ..ops.conditioning import _entries

    out = []
    for entry in _entries(entries):
        d = dict(entry)
        previous = d.get("control")
        key = id(previous)
        if shared is not None and key in shared:
            control = shared[key]
        else:
            control = Control(control_net, image, float(strength), float(start), float(end),
                              previous, to_uncond)
            if shared is not None:
                shared[key] = control
        d["control"] = control
        d["control_apply_to_uncond"] = to_uncond
        out.append(d)
    return out


def _controlnet_apply(ctx: Any, *, conditioning: list, control_net: Any, image: np.ndarray,
                      strength: float = 1.0) -> tuple[Any, ...]:
    """``ControlNetApply`` (deprecated): a new control per entry, also for the negative
    prompt's entries without an area (``control_apply_to_uncond``)."""
    if float(strength) == 0.0:
        return (conditioning,)
    return (_controlled(conditioning, control_net, image, strength, 0.0, 1.0, True, None),)


def _controlnet_apply_advanced(ctx: Any, *, positive: list, negative: list, control_net: Any,
                               image: np.ndarray, strength: float = 1.0,
                               start_percent: float = 0.0, end_percent: float = 1.0,
                               vae: Any = None) -> tuple[Any, ...]:
    """``ControlNetApplyAdvanced``: one control per previous control, shared by the positive
    and negative entries (so cond and uncond rows may share a UNet call)."""
    if float(strength) == 0.0:
        return positive, negative
    shared: dict[int, Any] = {}
    return (_controlled(positive, control_net, image, strength, start_percent, end_percent,
                        False, shared),
            _controlled(negative, control_net, image, strength, start_percent, end_percent,
                        False, shared))


PROGRAM_OPS: dict[str, OpFn] = {"LoadControlNet": _load_controlnet}

NODES: list[NodeDef] = [
    NodeDef(schema("ControlNetLoader", [files("control_net_name", "controlnet")],
                   outputs("CONTROL_NET"), "Load ControlNet Model", "model/loaders"),
            lowered_to="LoadControlNet", binding="control_net"),
    NodeDef(schema("DiffControlNetLoader", [
        link("model", "MODEL"), files("control_net_name", "controlnet"),
    ], outputs("CONTROL_NET"), "Load ControlNet Model (diff)", "model/loaders"),
        lowered_to="LoadControlNet", binding="control_net"),
    NodeDef(schema("ControlNetApply", [
        link("conditioning", _COND), link("control_net", "CONTROL_NET"),
        link("image", "IMAGE"), float_input("strength", 1.0, 0.0, 10.0),
    ], outputs(_COND), "Apply ControlNet (OLD)", "conditioning/controlnet", deprecated=True),
        run=_controlnet_apply),
    NodeDef(schema("ControlNetApplyAdvanced", [
        link("positive", _COND), link("negative", _COND),
        link("control_net", "CONTROL_NET"), link("image", "IMAGE"),
        float_input("strength", 1.0, 0.0, 10.0),
        float_input("start_percent", 0.0, 0.0, 1.0, 0.001),
        float_input("end_percent", 1.0, 0.0, 1.0, 0.001),
        optional_link("vae", "VAE"),
    ], outputs("positive:CONDITIONING", "negative:CONDITIONING"), "Apply ControlNet",
        "conditioning/controlnet"),
        run=_controlnet_apply_advanced, binding="control"),
]
