"""Primitive nodes (``comfy_extras/nodes_primitive.py``): a widget value as an output."""

from __future__ import annotations

from typing import Any

from .registry import NodeDef
from .schema import bool_input, float_input, int_input, outputs, schema, string_input

__all__ = ["NODES"]

_MAXSIZE = 2**63 - 1
_MODULE = "comfy_extras.nodes_primitive"


def _primitive(ctx: Any, *, value: Any) -> tuple[Any, ...]:
    return (value,)


def _node(class_type: str, spec: Any, type: str, display: str) -> NodeDef:
    return NodeDef(schema(class_type, [spec], outputs(type), display, "utils/primitive",
                          python_module=_MODULE),
                   run=_primitive)


NODES: list[NodeDef] = [
    _node("PrimitiveInt", int_input("value", 0, -_MAXSIZE, _MAXSIZE,
                                    control_after_generate=True), "INT", "Int"),
    _node("PrimitiveFloat", float_input("value", 0.0, -_MAXSIZE, _MAXSIZE), "FLOAT", "Float"),
    _node("PrimitiveString", string_input("value", ""), "STRING", "String"),
    _node("PrimitiveStringMultiline", string_input("value", "", multiline=True), "STRING",
          "String (Multiline)"),
    _node("PrimitiveBoolean", bool_input("value", False), "BOOLEAN", "Boolean"),
]
