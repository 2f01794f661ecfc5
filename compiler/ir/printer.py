"""Prints a graph as comfyc DSL (`str(graph)`).

NOTE: minimal interim printer; the DSL issue replaces it with the canonical printer.
"""

from __future__ import annotations

import json

from .core import Graph, Param, Value

__all__ = ["print_graph"]


def print_graph(graph: Graph) -> str:
    """Render the graph as DSL text."""
    lines = []
    for param in graph.params.values():
        lines.append(f"param {param.name}: {param.type} = {json.dumps(param.default)}")
    for node in graph.nodes:
        args = []
        for name, value in node.inputs.items():
            if isinstance(value, Value):
                args.append(f"{name}=n{value.producer.id}[{value.index}]")
            elif isinstance(value, Param):
                args.append(f"{name}={value.name}")
            else:
                args.append(f"{name}={json.dumps(value, ensure_ascii=False)}")
        lines.append(f"@id({node.id}) n{node.id} = {node.class_type}({', '.join(args)})")
    return "\n".join(lines) + "\n"
