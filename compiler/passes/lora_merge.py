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

from ..ir.core import MISSING, Graph, Param, Value
from .base import InPlacePass, PassResult

__all__ = ["LoraMergePass", "LORA_NODES"]

LORA_NODES = ("LoraLoader", "LoraLoaderModelOnly")


class LoraMergePass(InPlacePass):
    """Marks LoRA loaders merged or runtime; removes zero-strength ones."""

    name = "lora-merge"

    def call(self, graph: Graph) -> PassResult:
        modified = False
        runtime_all = bool(self.context.options.get("lora_runtime"))
        for node in list(graph.nodes):
            if node.class_type not in LORA_NODES:
                continue
            strengths = [node.inputs.get("strength_model", 1.0)]
            if node.class_type == "LoraLoader":
                strengths.append(node.inputs.get("strength_clip", 1.0))
            if all(not isinstance(s, (Param, Value)) and s is not MISSING and float(s) == 0.0
                   for s in strengths):
                # Identity: consumers read the loader's inputs directly.
                for index, input_name in enumerate(("model", "clip")):
                    source = node.inputs.get(input_name)
                    if index < len(node.outputs) and isinstance(source, Value):
                        graph.replace_all_uses_with(node.outputs[index], source)
                for name in list(node.inputs):
                    graph.remove_input(node, name)
                if not any(v.uses() for v in node.outputs):
                    graph.remove(node)
                    modified = True
                continue
            dynamic = any(isinstance(s, Param) for s in strengths)
            mode = "runtime" if dynamic or runtime_all else "merged"
            if node.meta.get("lora_mode") != mode:
                node.meta["lora_mode"] = mode
                modified = True
        return PassResult(graph, modified)
