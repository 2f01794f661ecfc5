"""Compile rules: the compiler's half of a node registry entry.

Most node classes need nothing from the compiler: the lowering emits one op of their class
with their inputs (:func:`comfyc.compiler.lowering.program.lower_node`), and a class marked
``fold=True`` in the registry is evaluated with its runtime op when its inputs are constants.
A :class:`CompileRule` says what else a class needs, keyed by the same class name:

* ``lower`` — the class becomes other ops and stages (a checkpoint loader becomes
  ``LoadCheckpoint`` over UNet / text-encoder / VAE stages);
* ``fold`` — how it is evaluated at compile time when that takes more than its runtime op
  (a prompt encoding runs the text encoder; a sampler's schedule is precomputed);
* ``origin`` — the weights a MODEL / CLIP / VAE output is made of (loaders);
* ``lora_sides`` — a LoRA loader: which output gets which input's weights plus the LoRA at
  which strength;
* ``clip_layer_input`` — the input that picks the CLIP layer (``CLIPSetLastLayer``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..ir.core import Node

__all__ = ["CompileRule", "LoraSide", "LowerFn", "FoldFn", "OriginFn"]

#: ``lower(node, lowering) -> list of Op``: the ops (and stages, through ``lowering``) a
#: node becomes.
LowerFn = Callable[[Node, Any], list[Any]]
#: ``fold(node, folding) -> bool``: evaluate (part of) a node at compile time; True when the
#: graph changed.
FoldFn = Callable[[Node, Any], bool]
#: ``origin(node, output_name) -> ("checkpoint", name) | None``: the weights an output holds.
OriginFn = Callable[[Node, str], "tuple[str, ...] | None"]


@dataclass(frozen=True, slots=True)
class LoraSide:
    """One side of a LoRA loader: ``output`` = ``input``'s weights + the LoRA at ``strength``.

    Attributes:
        side: ``"model"`` (UNet) or ``"clip"`` (text encoder).
        output: The output name (``MODEL`` / ``CLIP``).
        input: The input whose weights it starts from.
        strength: The input holding this side's strength.
    """

    side: str
    output: str
    input: str
    strength: str


@dataclass(frozen=True, slots=True)
class CompileRule:
    """What the compiler does for one node class beyond the defaults (see module docstring).

    Attributes:
        lower: Lowers the node to ops and stages.
        fold: Evaluates (part of) the node at compile time.
        origin: The weights each model output holds (loaders).
        lora_sides: A LoRA loader's sides.
        lora_name_input: A LoRA loader's file input.
        clip_layer_input: The input choosing the CLIP layer.
    """

    lower: LowerFn | None = None
    fold: FoldFn | None = None
    origin: OriginFn | None = None
    lora_sides: tuple[LoraSide, ...] = ()
    lora_name_input: str = "lora_name"
    clip_layer_input: str | None = None

    @property
    def is_lora(self) -> bool:
        """True for LoRA loaders."""
        return bool(self.lora_sides)
