"""comfyc's own node classes and program ops: what compiling adds to a workflow.

``FoldedConditioning`` is an IR node class made by constant folding (a prompt encoding
computed at compile time); it never appears in a ComfyUI workflow or in ``/object_info``.
The program ops here exist only in compiled programs: ``Constant`` and
``ConditioningConstant`` read stored values, ``Output`` returns a declared output from
:meth:`Program.run <comfyc.runtime.program.Program.run>`.
"""

from __future__ import annotations

from typing import Any

from .registry import NodeDef, OpFn
from .schema import INTERNAL_CATEGORY, outputs, schema, string_input

__all__ = ["NODES", "PROGRAM_OPS", "FOLDED_CLASSES", "is_folded_class"]

#: The class a value folded at compile time becomes, by its type.
FOLDED_CLASSES = {"CONDITIONING": "FoldedConditioning", "SIGMAS": "FoldedSigmas"}


def is_folded_class(class_type: str) -> bool:
    """True for the classes constant folding makes (they read a stored value)."""
    return class_type in FOLDED_CLASSES.values()


def _constant(ctx: Any, *, value: Any) -> tuple[Any, ...]:
    return (value,)


def _conditioning_constant(ctx: Any, *, entries: list[dict[str, Any]]) -> tuple[Any, ...]:
    # A copy per run: ops downstream may add keys to an entry of their own list.
    return ([dict(e) for e in entries],)


def _output(ctx: Any, *, name: str, value: Any) -> tuple[Any, ...]:
    # A declared output (DSL `output NAME`): its value is returned by Program.run.
    if isinstance(value, dict) and "samples" in value:
        value = value["samples"]
    ctx.images[name] = value
    return ()


PROGRAM_OPS: dict[str, OpFn] = {
    "Constant": _constant,
    "ConditioningConstant": _conditioning_constant,
    "Output": _output,
}

NODES: list[NodeDef] = [
    NodeDef(schema("FoldedConditioning", [string_input("key", "")], outputs("CONDITIONING"),
                   "Folded conditioning", INTERNAL_CATEGORY, python_module="comfyc",
                   description="A conditioning computed at compile time (a folded prompt)."),
            lowered_to="ConditioningConstant"),
    NodeDef(schema("FoldedSigmas", [string_input("key", "")], outputs("SIGMAS"),
                   "Folded sigmas", INTERNAL_CATEGORY, python_module="comfyc",
                   description="A sigma schedule computed at compile time."),
            lowered_to="Constant"),
]
