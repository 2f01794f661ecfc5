"""DeadNodeEliminationPass: keep only what reaches an output.

Contract: roots are the declared outputs, every output node (SaveImage, PreviewImage …) and
every impure node (side effects, nondeterminism); a node survives when a root depends on it.
Params no longer used by any node are removed too. The predicate deciding impurity is
injectable, as in torch.fx's ``eliminate_dead_code``.

Before (DSL)::

    ckpt = CheckpointLoaderSimple(ckpt_name="a.safetensors")
    other = CheckpointLoaderSimple(ckpt_name="b.safetensors")
    unused = CLIPTextEncode(text="never used", clip=ckpt.CLIP)
    ...
    SaveImage(images=image)

After::

    ckpt = CheckpointLoaderSimple(ckpt_name="a.safetensors")
    ...
    SaveImage(images=image)
"""

from __future__ import annotations

from collections.abc import Callable

from ..ir.core import Graph, Node, Value
from .base import InPlacePass, PassContext, PassResult

__all__ = ["DeadNodeEliminationPass"]


class DeadNodeEliminationPass(InPlacePass):
    """Removes nodes no output depends on.

    Args:
        context: The pass context (catalogue).
        is_impure: Overrides the catalogue's purity (a node for which it returns True is a
            root).
    """

    name = "dead-node-elimination"

    def __init__(self, context: PassContext | None = None,
                 is_impure: Callable[[Node], bool] | None = None) -> None:
        super().__init__(context)
        self.is_impure = is_impure or self._impure_from_catalog

    def _impure_from_catalog(self, node: Node) -> bool:
        schema = self.context.catalog.get(node.class_type)
        return schema is None or schema.output_node or schema.side_effect or \
            schema.nondeterministic

    def call(self, graph: Graph) -> PassResult:
        live: set[int] = set()
        stack = [n for n in graph.nodes if self.is_impure(n)]
        stack += [v.producer for v in graph.outputs.values()]
        while stack:
            node = stack.pop()
            if id(node) in live:
                continue
            live.add(id(node))
            stack.extend(v.producer for v in node.inputs.values() if isinstance(v, Value))
        removed = 0
        # Consumers before producers, so every removed node is already unused.
        for node in reversed(list(graph.nodes)):
            if id(node) not in live:
                for name in list(node.inputs):
                    graph.remove_input(node, name)
                graph.remove(node)
                self.record("eliminated", node, detail="no output depends on it")
                removed += 1
        for name, param in list(graph.params.items()):
            if not param.uses():
                graph.remove_param(name)
                removed += 1
        return PassResult(graph, removed > 0)
