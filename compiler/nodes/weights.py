"""What a MODEL, CLIP or VAE value is made of, read off the IR.

Constant folding (is this CLIP made of constants only?), the lowering (which stage runs this
MODEL?) and ``comfyc viz`` (which nodes share one stage?) all ask the same question of a
value; :func:`trace_weights` answers it once, from the registry: a loader's compile rule says
where weights come from (``origin``), the registry's ``weights_from`` says which outputs pass
an input's weights through unchanged, a LoRA loader's rule adds a LoRA, and
``CLIPSetLastLayer`` picks the CLIP layer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from comfyc.runtime.nodes import registry

from ..ir.core import MISSING, Node, Param, Value

__all__ = ["LoraUse", "Weights", "trace_weights", "is_constant", "constant_zero"]


def is_constant(value: Any) -> bool:
    """True for a literal (not a link, not a param, not missing)."""
    return not isinstance(value, (Value, Param)) and value is not MISSING


def constant_zero(value: Any) -> bool:
    """True for a literal strength of 0 (that side of a LoRA is an identity)."""
    if not is_constant(value):
        return False
    try:
        return float(value) == 0.0
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True, slots=True)
class LoraUse:
    """One LoRA on the way from a loader to a value.

    Attributes:
        node: The LoRA loader node.
        name: Its ``lora_name`` (a literal, or a link/param when not constant).
        strength: This side's strength (a literal, a :class:`Param` or a :class:`Value`).
        mode: The LoRA pass's decision (``merged`` / ``runtime``), None before it ran.
    """

    node: Node
    name: Any
    strength: Any
    mode: str | None


@dataclass(frozen=True, slots=True)
class Weights:
    """The weights behind a MODEL / CLIP / VAE value.

    Attributes:
        origin: Where they were loaded from: ``("checkpoint", name)``, ``("vae", name)`` …
        source: The loader node.
        loras: LoRAs applied on the way, in order (strength-0 sides left out).
        layer: The CLIP layer a ``CLIPSetLastLayer`` chose (literal, param or link), or None.
    """

    origin: tuple[Any, ...]
    source: Node
    loras: tuple[LoraUse, ...] = ()
    layer: Any = None

    @property
    def constant(self) -> bool:
        """True when every LoRA is merged at a constant strength and the layer is constant."""
        return all(lora.mode == "merged" and is_constant(lora.strength) and
                   is_constant(lora.name) for lora in self.loras) and (
            self.layer is None or is_constant(self.layer))

    def key(self) -> str:
        """A readable key naming these weights (same key, same stage)."""
        parts = [self.source.id] + [lora.node.id for lora in self.loras]
        return "+".join(parts)


def trace_weights(value: Any) -> Weights | None:
    """The weights behind ``value`` (a MODEL / CLIP / VAE output), or None when unknown.

    Args:
        value: An input value (a :class:`Value`; anything else gives None). Which side of a
            LoRA loader applies follows from the output the value is.
    """
    from . import compile_rule

    if not isinstance(value, Value):
        return None
    node = value.producer
    output = value.name
    rule = compile_rule(node.class_type)
    if rule.origin is not None:
        origin = rule.origin(node, output)
        return Weights(origin, node) if origin is not None else None
    definition = registry().get(node.class_type)
    through = definition.weights_input(output) if definition is not None else None
    if through is not None:
        inner = trace_weights(node.inputs.get(through))
        if inner is None or rule.clip_layer_input is None:
            return inner
        # NOTE: the CLIPSetLastLayer nearest to the encoder wins, as ComfyUI's last
        # clip_layer() call on the clone does.
        return replace(inner, layer=node.inputs.get(rule.clip_layer_input, -1))
    for lora_side in rule.lora_sides:
        if lora_side.output != output:
            continue
        inner = trace_weights(node.inputs.get(lora_side.input))
        if inner is None:
            return None
        strength = node.inputs.get(lora_side.strength, MISSING)
        if strength is MISSING:
            spec = definition.schema.input(lora_side.strength) if definition else None
            strength = spec.effective_default() if spec is not None else 1.0
        if constant_zero(strength):
            return inner  # This side of the LoRA changes nothing.
        use = LoraUse(node, node.inputs.get(rule.lora_name_input), strength,
                      node.facts.lora_mode)
        return replace(inner, loras=inner.loras + (use,))
    return None
