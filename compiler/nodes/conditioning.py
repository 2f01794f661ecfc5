"""Compile rules of the conditioning family: prompt encodings folded at compile time.

``CLIPTextEncode`` of constant text on a constant CLIP (a checkpoint's, maybe with merged
LoRAs and a CLIP layer) is evaluated with the text encoder while compiling and replaced by a
``FoldedConditioning`` node that reads the stored tensor: the artifact then ships no text
encoder unless a prompt is a runtime param. ``CLIPSetLastLayer`` picks the CLIP layer the
encoder stage is exported at.
"""

from __future__ import annotations

from typing import Any

from ..ir.core import MISSING, Node, Param, Value
from .rules import CompileRule
from .weights import trace_weights

__all__ = ["RULES", "ClipDesc"]


class ClipDesc(dict):  # type: ignore[type-arg]
    """A constant CLIP: ``{"checkpoint", "layer", "loras": [(name, sm, sc)]}``."""


def constant_clip(value: Any) -> ClipDesc | None:
    """Describe a CLIP value built only from constants, or None."""
    weights = trace_weights(value)
    if weights is None or weights.origin[0] != "checkpoint" or not weights.constant:
        return None
    layer = weights.layer
    return ClipDesc(checkpoint=str(weights.origin[1]),
                    layer=int(layer) if layer is not None else None,
                    loras=[(str(lora.name), 0.0, float(lora.strength))
                           for lora in weights.loras])


def _fold_text_encode(node: Node, folding: Any) -> bool:
    """Run a prompt encoding (CLIPTextEncode, CLIPTextEncodeSDXL …) on a constant CLIP whose
    other inputs are literals, and store the conditioning."""
    from comfyc.runtime.nodes import registry

    if not folding.options.fold_prompts:
        return False
    clip = constant_clip(node.inputs.get("clip"))
    if clip is None:
        return False
    args: dict[str, Any] = {}
    for name, value in node.inputs.items():
        if name == "clip":
            continue
        if isinstance(value, (Param, Value)) or value is MISSING:
            return False
        args[name] = value
    schema = folding.catalog.get(node.class_type)
    for spec in schema.inputs if schema is not None else []:
        if spec.name not in args and spec.name != "clip":
            default = spec.effective_default()
            if default is MISSING:
                return False
            args[spec.name] = default
    (value,) = registry().op(node.class_type)(folding.encode_context(),
                                              clip=folding.clip_ref(clip), **args)
    return folding.replace_with_constant(node, value,
                                         f"{node.class_type} → constant conditioning")


_TEXT_ENCODE = CompileRule(fold=_fold_text_encode)

RULES: dict[str, CompileRule] = {
    "CLIPTextEncode": _TEXT_ENCODE,
    "CLIPTextEncodeSDXL": _TEXT_ENCODE,
    "CLIPTextEncodeSDXLRefiner": _TEXT_ENCODE,
    "CLIPSetLastLayer": CompileRule(clip_layer_input="stop_at_clip_layer"),
}
