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
    """Encode a constant prompt on a constant CLIP and store the conditioning."""
    if not folding.options.fold_prompts:
        return False
    clip = constant_clip(node.inputs.get("clip"))
    text = node.inputs.get("text", MISSING)
    if clip is None or isinstance(text, (Param, Value)) or text is MISSING:
        return False
    folding.replace_with_constant(node, folding.encode_prompt(clip, str(text)),
                                  f"{node.class_type} → constant conditioning")
    return True


RULES: dict[str, CompileRule] = {
    "CLIPTextEncode": CompileRule(fold=_fold_text_encode),
    "CLIPSetLastLayer": CompileRule(clip_layer_input="stop_at_clip_layer"),
}
