"""LoraMergePass: decide how each LoRA reaches the weights.

Contract: a ``LoraLoader`` / ``LoraLoaderModelOnly`` whose strengths are constants is marked
``merged`` — the lowering folds ``W + strength · (alpha/rank) · up · down`` into a copy of the
UNet (and text encoder) weights, so the artifact has one UNet stage per distinct merged model.
A LoRA whose strength is a param, or any LoRA when the ``lora_runtime`` option is set
(``--lora-runtime``), is marked ``runtime``: the artifact stores its low-rank factors and the
runtime merges them when it creates the stage's session, so a new strength costs a session
reload, not a compile. A LoRA at strength 0 (both strengths) is an identity and is removed.

Before (DSL)::

    lora = LoraLoader(model=ckpt.MODEL, clip=ckpt.CLIP, lora_name="x.safetensors",
                      strength_model=0.0, strength_clip=0.0)
    pos = CLIPTextEncode(text="seven", clip=lora.CLIP)

After::

    pos = CLIPTextEncode(text="seven", clip=ckpt.CLIP)
"""

from __future__ import annotations

from ..ir.core import Graph, Param, Value
from ..nodes import compile_rule
from ..nodes.weights import constant_zero
from .base import InPlacePass, PassResult

__all__ = ["LoraMergePass"]


class LoraMergePass(InPlacePass):
    """Marks LoRA loaders merged or runtime; removes zero-strength ones.

    Which classes are LoRA loaders, and which input is each side's strength, comes from their
    compile rules (``lora_sides``).
    """

    name = "lora-merge"

    def call(self, graph: Graph) -> PassResult:
        modified = False
        runtime_all = self.context.options.lora_runtime
        for node in list(graph.nodes):
            sides = compile_rule(node.class_type).lora_sides
            if not sides:
                continue
            schema = self.context.catalog.get(node.class_type)
            strengths = []
            for side in sides:
                value = node.inputs.get(side.strength)
                if value is None and schema is not None:
                    value = schema.input(side.strength).effective_default()  # type: ignore[union-attr]
                strengths.append(value)
            if all(constant_zero(s) for s in strengths):
                # Identity: consumers read the loader's inputs directly.
                for side in sides:
                    source = node.inputs.get(side.input)
                    if isinstance(source, Value):
                        graph.replace_all_uses_with(node.output(side.output), source)
                for name in list(node.inputs):
                    graph.remove_input(node, name)
                if not any(v.uses() for v in node.outputs):
                    graph.remove(node)
                    self.record("lora_identity", node, detail="LoRA at strength 0 is an identity")
                    modified = True
                continue
            dynamic = any(isinstance(s, Param) for s in strengths)
            mode = "runtime" if dynamic or runtime_all else "merged"
            if node.facts.lora_mode != mode:
                node.facts.lora_mode = mode
                self.record(f"lora_{mode}", node,
                            detail=("LoRA merged into the weights at compile time"
                                    if mode == "merged" else
                                    "runtime LoRA: strength set when the program runs"))
                modified = True
        return PassResult(graph, modified)
