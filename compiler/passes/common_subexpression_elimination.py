"""CommonSubexpressionEliminationPass: identical pure nodes become one.

Contract: two pure nodes (catalogue purity; output nodes and impure nodes are never merged)
with the same class and the same inputs — equal literals, the same values, the same params —
are merged: uses of the later node's outputs move to the earlier one and the later node is
removed. Runs to a fixed point in one topological sweep, since merging producers makes their
consumers equal. Two loads of one checkpoint thus become one stage.

Before (DSL)::

    a = CheckpointLoaderSimple(ckpt_name="m.safetensors")
    b = CheckpointLoaderSimple(ckpt_name="m.safetensors")
    pos = CLIPTextEncode(text="seven", clip=a.CLIP)
    neg = CLIPTextEncode(text="", clip=b.CLIP)

After::

    a = CheckpointLoaderSimple(ckpt_name="m.safetensors")
    pos = CLIPTextEncode(text="seven", clip=a.CLIP)
    neg = CLIPTextEncode(text="", clip=a.CLIP)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..ir.core import Graph, Node, Param, Value
from .base import InPlacePass, PassContext, PassResult

__all__ = ["CommonSubexpressionEliminationPass"]


class CommonSubexpressionEliminationPass(InPlacePass):
    """Merges identical pure nodes.

    Args:
        context: The pass context (catalogue).
        is_impure: Overrides the catalogue's purity.
    """

    name = "common-subexpression-elimination"

    def __init__(self, context: PassContext | None = None,
                 is_impure: Callable[[Node], bool] | None = None) -> None:
        super().__init__(context)
        self.is_impure = is_impure or self._impure_from_catalog

    def _impure_from_catalog(self, node: Node) -> bool:
        schema = self.context.catalog.get(node.class_type)
        return schema is None or not schema.pure

    def _key(self, node: Node) -> str:
        parts: list[Any] = [node.class_type]
        for name in sorted(node.inputs):
            value = node.inputs[name]
            if isinstance(value, Value):
                parts.append((name, "v", id(value.producer), value.index))
            elif isinstance(value, Param):
                parts.append((name, "p", value.name))
            else:
                parts.append((name, "l", json.dumps(value, sort_keys=True, default=repr)))
        return repr(parts)

    def call(self, graph: Graph) -> PassResult:
        seen: dict[str, Node] = {}
        merged = 0
        for node in list(graph.nodes):
            if self.is_impure(node):
                continue
            key = self._key(node)
            keep = seen.get(key)
            if keep is None:
                seen[key] = node
                continue
            for old, new in zip(node.outputs, keep.outputs):
                graph.replace_all_uses_with(old, new)
            for name in list(node.inputs):
                graph.remove_input(node, name)
            graph.remove(node)
            self.record("merged", node, into=keep.id, detail=f"merged into #{keep.id} (identical)")
            merged += 1
        return PassResult(graph, merged > 0)
