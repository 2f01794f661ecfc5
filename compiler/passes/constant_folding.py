"""ConstantFoldingPass: evaluate at compile time what does not depend on runtime inputs.

Contract: a pure, foldable node whose inputs are all constants is evaluated with the
runtime's own ops and replaced by a stored result; a param is never folded. Above all, prompt
encodings: ``CLIPTextEncode`` of constant text on a constant CLIP (a checkpoint, maybe with
merged LoRAs and a CLIPSetLastLayer) becomes a ``FoldedConditioning`` node whose tensor is
kept in ``graph.meta["constants"]`` — the artifact then ships no text encoder at all unless
a prompt is a param. Conditioning ops whose inputs are all folded fold too. Sampler sigma
schedules with constant steps/scheduler/denoise are computed and stored
(``node.meta["sigmas"]``).

Before (DSL)::

    pos = CLIPTextEncode(text="a handwritten digit seven", clip=ckpt.CLIP)

After::

    pos = FoldedConditioning(key="pos.6")
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ir.core import MISSING, Graph, Node, Param, Value
from .base import InPlacePass, PassResult

__all__ = ["ConstantFoldingPass", "CONDITIONING_OPS"]

#: Conditioning nodes folded when every input is a constant.
CONDITIONING_OPS = {
    "ConditioningCombine", "ConditioningConcat", "ConditioningAverage", "ConditioningSetArea",
    "ConditioningSetAreaPercentage", "ConditioningSetAreaStrength", "ConditioningZeroOut",
    "ConditioningSetTimestepRange",
}


class ConstantFoldingPass(InPlacePass):
    """Folds prompt encodings, conditioning ops on constants and sigma schedules.

    Options read from the context: ``model_cache`` (a TorchModelCache; made from
    ``models_dir`` when absent), ``fold_prompts`` (default True).
    """

    name = "constant-folding"

    def call(self, graph: Graph) -> PassResult:
        constants: dict[str, Any] = graph.meta.setdefault("constants", {})
        folded = 0
        for node in list(graph.nodes):
            if node.class_type == "CLIPTextEncode" and self.context.options.get(
                    "fold_prompts", True):
                clip = self._constant_clip(node.inputs.get("clip"))
                text = node.inputs.get("text", MISSING)
                if clip is None or isinstance(text, (Param, Value)) or text is MISSING:
                    continue
                value = self._encode(clip, str(text))
                folded += self._replace(graph, node, value, constants)
            elif node.class_type in CONDITIONING_OPS:
                args = self._constant_args(graph, node)
                if args is None:
                    continue
                from comfyc.runtime.nodes import OPS

                (value,) = OPS[node.class_type](None, **args)
                folded += self._replace(graph, node, value, constants)
            elif node.class_type in ("KSampler", "KSamplerAdvanced"):
                folded += self._fold_sigmas(node, constants)
        self.context.stats["nodes_folded"] = self.context.stats.get("nodes_folded", 0) + folded
        return PassResult(graph, folded > 0)

    # ------------------------------------------------------------------ helpers
    def _replace(self, graph: Graph, node: Node, value: Any, constants: dict[str, Any]) -> int:
        key = f"cond.{node.id}"
        constants[key] = value
        index = graph.nodes.index(node)
        new_id = node.id
        # The folded node takes over the id and title, so messages and viz still match.
        users = node.outputs[0].uses()
        outputs = [k for k, v in graph.outputs.items() if v is node.outputs[0]]
        # Detach the consumers (a placeholder literal), remove the node, then wire them to
        # the folded node that takes over its id.
        for use in users:
            graph.set_input(use.node, use.input_name, None)
        for name in outputs:
            del graph.outputs[name]
        graph.remove(node)
        folded = graph.add_node("FoldedConditioning", [("CONDITIONING", "CONDITIONING")],
                                id=new_id, inputs={"key": key}, title=node.title,
                                loc=node.loc, index=index)
        folded.meta["folded_from"] = node.class_type
        if "dsl" in node.meta:  # Keep the DSL binding name (and id spelling) for printing.
            folded.meta["dsl"] = node.meta["dsl"]
        for use in users:
            graph.set_input(use.node, use.input_name, folded.outputs[0])
        for name in outputs:
            graph.outputs[name] = folded.outputs[0]
        return 1

    def _constant_args(self, graph: Graph, node: Node) -> dict[str, Any] | None:
        args: dict[str, Any] = {}
        for name, value in node.inputs.items():
            if isinstance(value, Param):
                return None
            if isinstance(value, Value):
                if value.producer.class_type != "FoldedConditioning":
                    return None
                args[name] = graph.meta["constants"][value.producer.inputs["key"]]
            else:
                args[name] = value
        schema = self.context.catalog.get(node.class_type)
        if schema is not None:
            for spec in schema.inputs:
                if spec.name not in args and spec.effective_default() is not MISSING:
                    args[spec.name] = spec.effective_default()
        return args

    def _constant_clip(self, value: Any) -> dict[str, Any] | None:
        """Describe a CLIP value built only from constants, or None."""
        layer = None
        loras: list[tuple[str, float, float]] = []
        while isinstance(value, Value):
            node = value.producer
            if node.class_type == "CLIPSetLastLayer":
                stop = node.inputs.get("stop_at_clip_layer", -1)
                if isinstance(stop, (Param, Value)):
                    return None
                layer = int(stop) if layer is None else layer
                value = node.inputs.get("clip")
            elif node.class_type == "LoraLoader":
                if node.meta.get("lora_mode") != "merged":
                    return None
                name = node.inputs.get("lora_name")
                sm, sc = node.inputs.get("strength_model", 1.0), node.inputs.get(
                    "strength_clip", 1.0)
                loras.insert(0, (str(name), float(sm), float(sc)))
                value = node.inputs.get("clip")
            elif node.class_type == "CheckpointLoaderSimple":
                ckpt = node.inputs.get("ckpt_name")
                if isinstance(ckpt, (Param, Value)):
                    return None
                return {"checkpoint": str(ckpt), "layer": layer, "loras": loras}
            else:
                return None
        return None

    def _cache(self) -> Any:
        cache = self.context.options.get("model_cache")
        if cache is None:
            from ..lowering.program import TorchModelCache

            cache = self.context.options["model_cache"] = TorchModelCache(
                self.context.options.get("models_dir"))
        return cache

    def _encode(self, clip: dict[str, Any], text: str) -> list[dict[str, Any]]:
        from comfyc.runtime.backends.torch import TorchTextEncoder
        from comfyc.runtime.nodes import encode_text
        from comfyc.runtime.values import ClipRef

        cache = self._cache()
        loaded = cache.checkpoint(clip["checkpoint"])
        module = cache.text_encoder_with_loras(clip["checkpoint"], clip["loras"])
        layer = clip["layer"] if clip["layer"] is not None else loaded.default_clip_layer
        stage = TorchTextEncoder("text_encoder", module, layer)
        ref = ClipRef({layer: stage}, layer, loaded.default_clip_layer, loaded.clip_pad_token)
        return encode_text(ref, text)

    def _fold_sigmas(self, node: Node, constants: dict[str, Any]) -> int:
        from comfyc.runtime import schedules

        names = (["steps", "scheduler", "denoise", "sampler_name"] if node.class_type ==
                 "KSampler" else ["steps", "scheduler", "sampler_name", "start_at_step",
                                  "end_at_step", "return_with_leftover_noise"])
        schema = self.context.catalog.get(node.class_type)
        values = {}
        for name in names:
            value = node.inputs.get(name, MISSING)
            if value is MISSING and schema is not None:
                value = schema.input(name).effective_default()  # type: ignore[union-attr]
            if isinstance(value, (Param, Value)) or value is MISSING:
                return 0
            values[name] = value
        try:
            if node.class_type == "KSampler":
                sigmas = schedules.ksampler_sigmas(values["scheduler"], int(values["steps"]),
                                                   values["sampler_name"],
                                                   float(values["denoise"]))
            else:
                from comfyc.runtime.nodes import advanced_schedule

                sigmas = advanced_schedule(
                    values["scheduler"], int(values["steps"]), values["sampler_name"],
                    int(values["start_at_step"]), int(values["end_at_step"]),
                    values["return_with_leftover_noise"] == "enable")
        except (ValueError, KeyError):
            return 0
        key = f"sigmas.{node.id}"
        constants[key] = None if sigmas is None else np.asarray(sigmas, dtype=np.float32)
        if node.meta.get("sigmas") == key:
            return 0
        node.meta["sigmas"] = key
        return 1
