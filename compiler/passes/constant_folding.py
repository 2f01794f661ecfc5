"""ConstantFoldingPass: evaluate at compile time what does not depend on runtime inputs.

Contract: a node is folded when the registry allows it and its inputs are constants; a param
is never folded. What folding a class means comes from the node registry:

* a class with a compile rule ``fold`` (:mod:`comfyc.compiler.nodes`) folds its own way —
  above all ``CLIPTextEncode`` of constant text on a constant CLIP becomes a
  ``FoldedConditioning`` node whose tensor is kept in :attr:`Graph.constants`, so the
  artifact ships no text encoder unless a prompt is a param; samplers with a constant
  schedule get their sigmas precomputed (:attr:`NodeFacts.sigmas`);
* a class marked ``fold=True`` in the registry (the conditioning ops) is evaluated with its
  own runtime op when every input is a literal or a folded value.

Nodes only the folded nodes needed are removed here too (recorded as ``folded_away``).

Before (DSL)::

    pos = CLIPTextEncode(text="a handwritten digit seven", clip=ckpt.CLIP)

After::

    pos = FoldedConditioning(key="cond.6")
"""

from __future__ import annotations

from typing import Any

import numpy as np

from comfyc.runtime.errors import Error as RuntimeFailure
from comfyc.runtime.nodes import registry
from comfyc.runtime.nodes.internal import FOLDED_CLASSES

from ..errors import WorkflowError
from ..ir.core import MISSING, Graph, Node, Param, Value
from ..nodes import compile_rule
from .base import InPlacePass, PassResult

__all__ = ["ConstantFoldingPass"]


class ConstantFoldingPass(InPlacePass):
    """Folds prompt encodings, conditioning ops on constants and sigma schedules.

    Reads from the context: ``options.fold_prompts``, the model store (text encoders) or
    ``folding_clip`` (an override, e.g. placeholders for ``comfyc viz``).
    """

    name = "constant-folding"

    def call(self, graph: Graph) -> PassResult:
        self.graph = graph
        modified = False
        self._freed: dict[int, tuple[Node, str]] = {}
        for node in list(graph.nodes):
            if node.graph is not graph:
                continue
            try:
                modified |= self._fold(node)
            except RuntimeFailure as exc:
                # What the run would refuse (an unusable prompt, image or param value) is the
                # workflow's problem, said at its node, not a failed pass.
                raise WorkflowError(f"#{node.id} ({node.class_type}): {exc}", node.loc,
                                    kind="invalid_input", class_type=node.class_type,
                                    help="change the node's inputs; `comfyc check` finds "
                                         "the same") from exc
        modified |= self._remove_freed(graph)
        return PassResult(graph, modified)

    # ------------------------------------------------------------- for compile rules
    @property
    def options(self) -> Any:
        """The pass options (fold rules read ``fold_prompts``)."""
        return self.context.options

    @property
    def catalog(self) -> Any:
        """The catalogue (fold rules read defaults from it)."""
        return self.context.catalog

    def clip_ref(self, clip: Any) -> Any:
        """A runtime CLIP for a constant CLIP description (see ``constant_clip``): torch
        text-encoder stages at its layer, LoRAs merged — or the context's stand-in
        (``comfyc viz`` folds with placeholders instead of running a text encoder)."""
        if self.context.folding_clip is not None:
            return self.context.folding_clip(clip)
        from comfyc.runtime.backends.torch import TorchTextEncoder
        from comfyc.runtime.values import ClipRef, TextEncoderRef

        from ..lowering.program import encoder_fields, encoder_info

        store = self.context.model_store()
        loaded = store.checkpoint(clip["checkpoint"])
        encoders = []
        for spec in loaded.text_encoders:
            module = store.component_with_loras(clip["checkpoint"], spec.attribute,
                                                clip["loras"])
            layer = clip["layer"] if clip["layer"] is not None else spec.default_layer
            stage = TorchTextEncoder(spec.name, module, layer, encoder_info(spec))
            fields = encoder_fields(spec)
            encoders.append(TextEncoderRef(spec.name, {layer: stage}, fields["pad_token"],
                                           fields["default_layer"], fields["pooled"],
                                           fields["tokenizer"], fields["min_length"],
                                           fields["width"]))
        return ClipRef(tuple(encoders), clip["layer"], family=loaded.family)

    def encode_context(self) -> Any:
        """What a prompt-encoding op sees as its run context while folding: the
        ``embeddings`` of the compile's models folder (``embedding:NAME``), or none when the
        context folds with stand-ins (``comfyc viz``)."""
        if self.context.folding_clip is not None:
            return None
        if getattr(self, "_encode_context", None) is None:
            from types import SimpleNamespace

            from comfyc.runtime.embeddings import Embeddings

            models_dir = getattr(self.context.model_store(), "models_dir", None)
            self._encode_context = SimpleNamespace(vocab_path=None,
                                                   embeddings=Embeddings(models_dir))
        return self._encode_context

    def replace_with_constant(self, node: Node, value: Any, detail: str) -> bool:
        """Replace ``node`` (one output) by a folded node reading ``value``; True if done."""
        graph = self.graph
        if len(node.outputs) != 1 or node.outputs[0].type not in FOLDED_CLASSES:
            return False
        key = f"{'sigmas' if node.outputs[0].type == 'SIGMAS' else 'cond'}.{node.id}"
        graph.constants[key] = value
        index = graph.nodes.index(node)
        users = node.outputs[0].uses()
        outputs = [k for k, v in graph.outputs.items() if v is node.outputs[0]]
        producers = [v.producer for v in node.inputs.values() if isinstance(v, Value)]
        # Detach the consumers (a placeholder literal), remove the node, then wire them to
        # the folded node, which takes over the id and title so messages and viz still match.
        for use in users:
            graph.set_input(use.node, use.input_name, None)
        for name in outputs:
            del graph.outputs[name]
        for name in list(node.inputs):
            graph.remove_input(node, name)
        graph.remove(node)
        folded = graph.add_node(FOLDED_CLASSES[node.outputs[0].type],
                                [(node.outputs[0].type, node.outputs[0].type)], id=node.id,
                                inputs={"key": key}, title=node.title, loc=node.loc,
                                index=index)
        folded.facts.folded_from = node.class_type
        if "dsl" in node.meta:  # Keep the DSL binding name (and id spelling) for printing.
            folded.meta["dsl"] = node.meta["dsl"]
        for use in users:
            graph.set_input(use.node, use.input_name, folded.outputs[0])
        for name in outputs:
            graph.outputs[name] = folded.outputs[0]
        self.record("folded", folded, node.class_type, into=key, detail=detail)
        for producer in producers:
            self._freed.setdefault(id(producer), (producer, folded.id))
        return True

    def store_schedule(self, node: Node, sigmas: Any) -> bool:
        """Keep a sampler's precomputed sigmas; True when this changed the graph."""
        key = f"sigmas.{node.id}"
        self.graph.constants[key] = (None if sigmas is None
                                     else np.asarray(sigmas, dtype=np.float32))
        if node.facts.sigmas == key:
            return False
        node.facts.sigmas = key
        self.record("schedule", node, detail="sigma schedule precomputed")
        return True

    # --------------------------------------------------------------------- helpers
    def _fold(self, node: Node) -> bool:
        rule = compile_rule(node.class_type)
        if rule.fold is not None:
            return bool(rule.fold(node, self))
        definition = registry().get(node.class_type)
        if definition is not None and definition.fold:
            return self._fold_with_op(node, definition.run)
        return False

    def _fold_with_op(self, node: Node, op: Any) -> bool:
        args = self._constant_args(node)
        if args is None:
            return False
        (value,) = op(None, **args)
        return self.replace_with_constant(node, value, f"{node.class_type} on constants")

    def _constant_args(self, node: Node) -> dict[str, Any] | None:
        """The node's inputs as values when all are literals or folded values, else None."""
        args: dict[str, Any] = {}
        for name, value in node.inputs.items():
            if isinstance(value, Param):
                return None
            if isinstance(value, Value):
                key = value.producer.inputs.get("key")
                if value.producer.facts.folded_from is None or key not in self.graph.constants:
                    return None
                args[name] = self.graph.constants[key]
            else:
                args[name] = value
        schema = self.context.catalog.get(node.class_type)
        if schema is not None:
            for spec in schema.inputs:
                if spec.name not in args and spec.effective_default() is not MISSING:
                    args[spec.name] = spec.effective_default()
        return args

    def _remove_freed(self, graph: Graph) -> bool:
        """Remove pure nodes that only folded nodes used (and what only they used)."""
        removed = False
        stack = list(self._freed.values())
        while stack:
            node, into = stack.pop()
            if node.graph is not graph or any(v.uses() for v in node.outputs) or any(
                    v is out for out in graph.outputs.values() for v in node.outputs):
                continue
            schema = self.context.catalog.get(node.class_type)
            if schema is None or not schema.pure:
                continue
            producers = [v.producer for v in node.inputs.values() if isinstance(v, Value)]
            for name in list(node.inputs):
                graph.remove_input(node, name)
            graph.remove(node)
            self.record("folded_away", node, into=into,
                        detail=f"only folded nodes needed it (folded into #{into}'s constant)")
            removed = True
            stack.extend((p, into) for p in producers)
        return removed
